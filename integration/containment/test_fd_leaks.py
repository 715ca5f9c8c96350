"""Attack: fds of the shim, of other containers and of the caller reaching a container (CVE-2024-21626 class).

An attacker program (``attackers/fdscan.c``) lists every fd it holds and tries ``accept()`` on each
listening socket (the shim's ttrpc socket would let it answer containerd's next CreateTask) and
TIOCGPTN on each (another container's pty master would let it type into that container's shell). It
runs as the init and as an exec, with and without a terminal, while another terminal container of the
same shim is running. Only 0, 1 and 2 may be there. Mirrored with the runc shim.

Through the ``pyoci`` CLI: a host directory fd of the caller must not reach the container unless
``--preserve-fds`` passes it, and ``process.cwd=/proc/self/fd/N`` must be refused.
"""

from __future__ import annotations

import os
import uuid

import pytest

from integration.containment.attackers import build
from integration.test_terminal import screen_lines, under_a_terminal

PYOCI = "io.containerd.pyoci.v2"
RUNC = "io.containerd.runc.v2"


def _fds(output: str) -> list[str]:
    lines = [line for line in output.replace("\x00", "").splitlines() if line.startswith("fds:")]
    assert lines, f"the attacker printed no fd list:\n{output}"
    return lines[-1].split()[1:]


def _assert_clean(what: str, output: str) -> None:
    assert "LISTENING" not in output, f"{what}: a listening socket reached the container:\n{output}"
    assert "PTMX" not in output, f"{what}: a pty master reached the container:\n{output}"
    assert _fds(output) == ["0", "1", "2"], f"{what}: fds beyond stdio:\n{output}"


@pytest.mark.parametrize("runtime", [PYOCI, RUNC], ids=["pyoci", "runc"])
def test_no_fd_of_the_shim_or_of_another_container_reaches_a_container(ctr, containerd, busybox_image, runtime):
    scan = build("fdscan")
    tag = uuid.uuid4().hex[:8]
    group = f"--annotation=io.containerd.runc.v2.group=fd-{tag}"
    mount = f"type=bind,src={scan},dst=/fdscan,options=rbind:ro"
    victim, plain, term = f"fd-victim-{tag}", f"fd-plain-{tag}", f"fd-term-{tag}"
    try:
        # a terminal container left running in the shim: its pty master is held there
        started = under_a_terminal(
            ctr, containerd, "run", "-d", "-t", "--runtime", runtime, group, "--mount", mount,
            busybox_image, victim, "sleep", "600",
        )  # fmt: skip
        assert started.returncode == 0, started.stderr
        ctr.wait_task_status(victim, "RUNNING")
        shims = {pid for pid in containerd.shim_pids()}

        init_plain = ctr("run", "--rm", "--runtime", runtime, group, "--mount", mount, busybox_image, plain, "/fdscan")
        _assert_clean("init without a terminal", init_plain.stdout)
        init_term = under_a_terminal(
            ctr, containerd, "run", "--rm", "-t", "--runtime", runtime, group, "--mount", mount,
            busybox_image, term, "/fdscan",
        )  # fmt: skip
        _assert_clean("init with a terminal", "\n".join(screen_lines(init_term)))
        exec_plain = ctr("task", "exec", "--exec-id", f"e1-{tag}", victim, "/fdscan")
        _assert_clean("exec without a terminal", exec_plain.stdout)
        exec_term = under_a_terminal(ctr, containerd, "task", "exec", "-t", "--exec-id", f"e2-{tag}", victim, "/fdscan")
        _assert_clean("exec with a terminal", "\n".join(screen_lines(exec_term)))
        # all of it went through one shim (the group), which holds the victim's pty and its own socket
        assert {pid for pid in containerd.shim_pids()} == shims
    finally:
        ctr.remove(victim, plain, term)


def test_cli_passes_no_fd_of_the_caller_but_the_preserved_ones(bundle):
    scan = build("fdscan")
    host_dir = os.open("/", os.O_RDONLY | os.O_DIRECTORY)  # what an attacker would want to find
    try:
        os.set_inheritable(host_dir, True)
        bundle.config["mounts"].append(
            {"destination": "/fdscan", "type": "bind", "source": str(scan), "options": ["rbind", "ro"]}
        )
        bundle.config["process"]["args"] = ["/fdscan"]
        bundle.write()
        result = bundle.pyoci("run", "--bundle", str(bundle.path), bundle.id, pass_fds=(host_dir,))
        assert result.returncode == 0, result.stderr
        _assert_clean("pyoci run", result.stdout)

        # --preserve-fds N passes exactly fds 3 .. 3+N-1 (here: the caller's fd 3)
        result = bundle.pyoci(
            "run", "--preserve-fds", "1", "--bundle", str(bundle.path), bundle.id,
            pass_fds=(3, host_dir), preexec_fn=lambda: os.dup2(host_dir, 3),
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        assert _fds(result.stdout) == ["0", "1", "2", "3"], result.stdout
    finally:
        os.close(host_dir)


def test_cwd_through_a_leaked_fd_is_refused(bundle):
    host_dir = os.open("/", os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.set_inheritable(host_dir, True)
        bundle.config["process"]["cwd"] = f"/proc/self/fd/{host_dir}"
        bundle.config["process"]["args"] = ["sh", "-c", "ls; echo escaped"]
        bundle.write()
        result = bundle.pyoci("run", "--bundle", str(bundle.path), bundle.id, pass_fds=(host_dir,))
        assert result.returncode != 0, result.stdout
        assert "escaped" not in result.stdout
        assert "chdir" in result.stderr and "outside the container's root" in result.stderr, result.stderr
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    finally:
        os.close(host_dir)
