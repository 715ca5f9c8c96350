"""Exec and Attach streaming through containerd's CRI stream server (WebSocket, v4.channel.k8s.io)."""

from __future__ import annotations

from integration.cri.stream import StreamSession
from pyoci.protos import cri_api_pb2 as cri


async def test_exec_streams_stdin_stdout_stderr_and_the_exit_code(pods):
    pod = await pods.run("exec-stream")
    cid = await pod.start("a", "sleep", "1000")
    request = cri.ExecRequest(
        container_id=cid,
        cmd=["sh", "-c", "read line; echo out:$line; echo err:$line >&2; exit 7"],
        stdin=True,
        stdout=True,
        stderr=True,
    )
    url = (await pods.client.call("Exec", request)).url
    session = await StreamSession.open(url)
    await session.send(b"hello\n")
    result = await session.finish()
    assert (result.stdout, result.stderr, result.exit_code) == (b"out:hello\n", b"err:hello\n", 7), result


async def test_exec_stream_with_a_terminal(pods):
    pod = await pods.run("exec-tty")
    cid = await pod.start("a", "sleep", "1000")
    # (with a terminal but without stdin, containerd 1.6-2.1 deliver no output for either runtime: kubectl's -it)
    request = cri.ExecRequest(
        container_id=cid, cmd=["sh", "-c", "tty; test -t 0 -a -t 1"], tty=True, stdin=True, stdout=True
    )
    session = await StreamSession.open((await pods.client.call("Exec", request)).url)
    result = await session.finish()
    assert result.exit_code == 0 and result.stdout.startswith(b"/dev/pts/"), result
    assert result.stdout.endswith(b"\r\n")  # the terminal's line discipline


async def test_attach_to_a_containers_stdio(pods):
    pod = await pods.run("attach")
    cid = await pod.start("a", "sh", "-c", "read line; echo got:$line; echo bye >&2", stdin=True, stdin_once=True)
    request = cri.AttachRequest(container_id=cid, stdin=True, stdout=True, stderr=True)
    session = await StreamSession.open((await pods.client.call("Attach", request)).url)
    await session.send(b"ping\n")
    result = await session.finish()
    assert (result.stdout, result.stderr) == (b"got:ping\n", b"bye\n"), result
    status = await pod.wait_state(cid, cri.CONTAINER_EXITED)
    assert status.exit_code == 0
