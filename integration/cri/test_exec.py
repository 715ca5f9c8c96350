"""ExecSync through the CRI: output, exit codes, a missing binary, and the timeout."""

from __future__ import annotations

import time

import pytest
from grpclib.exceptions import GRPCError


async def test_exec_sync_output_and_exit_codes(pods):
    pod = await pods.run("exec")
    cid = await pod.start("a", "sleep", "1000")
    result = await pod.exec(cid, "sh", "-c", "echo out; echo err >&2; exit 7")
    assert (result.stdout, result.stderr, result.exit_code) == (b"out\n", b"err\n", 7)
    assert (await pod.exec(cid, "true")).exit_code == 0
    assert (await pod.exec(cid, "sh", "-c", "kill -KILL $$")).exit_code == 137
    big = await pod.exec(cid, "sh", "-c", "head -c 1048576 /dev/zero")
    assert big.exit_code == 0 and len(big.stdout) == 1048576


async def test_exec_sync_of_a_missing_binary_fails(pods):
    pod = await pods.run("exec-missing")
    cid = await pod.start("a", "sleep", "1000")
    started = time.monotonic()
    with pytest.raises(GRPCError) as failure:
        await pod.exec(cid, "/no/such/binary")
    assert time.monotonic() - started < 10
    assert "no such file" in failure.value.message.lower() or "not found" in failure.value.message.lower()
    assert (await pod.exec(cid, "true")).exit_code == 0  # the container is still usable


async def test_exec_sync_timeout_kills_the_command(pods):
    pod = await pods.run("exec-timeout")
    cid = await pod.start("a", "sleep", "1000")
    started = time.monotonic()
    with pytest.raises(GRPCError) as failure:
        await pod.exec(cid, "sleep", "30", timeout=1)
    elapsed = time.monotonic() - started
    assert "timeout" in failure.value.message.lower() or "deadline" in failure.value.message.lower()
    assert 1 <= elapsed < 15, elapsed
    # the timed-out command is gone
    assert "sleep 30" not in await pod.sh(cid, "ps -o args")
