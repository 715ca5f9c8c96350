"""What the shim template and the cold path (no template yet) must get right, through the harness containerd:
the cold path writes shim.pid (containerd 1.6 passes the bundle only as the working directory), the shim's
listening socket never reaches a container, and a shim's shutdown logs no CancelledError into containerd's log.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path

import psutil

PYOCI = "io.containerd.pyoci.v2"


def bundle_dir(containerd, ctr, cid: str) -> Path:
    return containerd.state / "io.containerd.runtime.v2.task" / ctr.namespace / cid


def socket_inodes(pid: int, path: str) -> set[str]:
    """``socket:[inode]`` links of the fds of ``pid`` bound to the unix socket ``path`` (listener and accepted)."""
    fds = {c.fd for c in psutil.Process(pid).net_connections("unix") if c.laddr == path}
    return {os.readlink(f"/proc/{pid}/fd/{fd}") for fd in fds}


def fd_links(pid: int) -> dict[str, str]:
    base = f"/proc/{pid}/fd"
    links = {}
    for fd in os.listdir(base):
        with contextlib.suppress(OSError):
            links[fd] = os.readlink(f"{base}/{fd}")
    return links


def end_templates(containerd) -> None:
    """SIGKILL this containerd's templates (started for this test session): the next start is a cold one."""
    for pid in containerd.template_pids():
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while containerd.template_pids() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not containerd.template_pids()


def test_template_cold_path_writes_shim_pid(ctr, containerd, busybox_image, container_id):
    end_templates(containerd)
    try:
        ctr("run", "-d", "--runtime", PYOCI, busybox_image, container_id, "sleep", "1000")
        bundle = bundle_dir(containerd, ctr, container_id)
        assert (bundle / "shim.pid").exists(), "the cold path wrote no shim.pid"
        pid = int((bundle / "shim.pid").read_text())
        address = (bundle / "address").read_text().removeprefix("unix://")
        assert socket_inodes(pid, address), "shim.pid names a process that does not serve the shim's socket"
    finally:
        ctr.remove(container_id)


def not_close_on_exec(pid: int) -> dict[str, str]:
    """The fds >= 3 of ``pid`` without O_CLOEXEC (from /proc/PID/fdinfo), with what they are."""
    found = {}
    for fd, link in fd_links(pid).items():
        if int(fd) < 3:
            continue
        with contextlib.suppress(OSError), open(f"/proc/{pid}/fdinfo/{fd}") as f:
            flags = next(int(line.split()[1], 8) for line in f if line.startswith("flags:"))
            if not flags & os.O_CLOEXEC:
                found[fd] = link
    return found


def _runs_sleep(proc: psutil.Process) -> bool:
    try:
        return proc.cmdline()[:1] == ["sleep"]
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return False


def test_template_listening_socket_is_not_inherited_by_containers(ctr, containerd, busybox_image, container_id):
    """Through the template (warm path) and with an exec: every fd of the shim is close-on-exec (the listening
    socket it receives from start over SCM_RIGHTS included), and no fd of the container's processes is the
    shim's socket (a container holding the listener could accept containerd's next requests for its pod)."""
    ids = [f"{container_id[:50]}-{n}" for n in ("a", "b")]
    try:
        for cid in ids:  # the first may take the cold path; the second is forked by the template
            ctr("run", "-d", "--runtime", PYOCI, busybox_image, cid, "sleep", "1000")
        with ctr.background("tasks", "exec", "--exec-id", "e1", ids[1], "sleep", "1000"):
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline:
                # both running sleep: while the exec starts, a child can be the short-lived intermediate process
                # of the fork sequence, gone before its fds are read
                if sum(_runs_sleep(p) for p in psutil.Process(ctr.task_pid(ids[1])).parent().children()) >= 2:
                    break
                time.sleep(0.05)
            for cid in ids:
                bundle = bundle_dir(containerd, ctr, cid)
                shim = int((bundle / "shim.pid").read_text())
                address = (bundle / "address").read_text().removeprefix("unix://")
                shim_sockets = socket_inodes(shim, address)
                assert shim_sockets
                assert not not_close_on_exec(shim), f"{cid}: shim fds without O_CLOEXEC: {not_close_on_exec(shim)}"
                for proc in psutil.Process(shim).children():
                    leaked = {fd: link for fd, link in fd_links(proc.pid).items() if link in shim_sockets}
                    assert not leaked, f"{cid}: process {proc.pid} {proc.cmdline()} holds the shim's socket: {leaked}"
    finally:
        ctr.remove(*ids)


def test_template_shim_shutdown_logs_no_cancelled_error(ctr, containerd, busybox_image, container_id):
    log = containerd.log_path
    offset = log.stat().st_size
    ctr("run", "-d", "--runtime", PYOCI, busybox_image, container_id, "sleep", "1000")
    shim = int((bundle_dir(containerd, ctr, container_id) / "shim.pid").read_text())
    ctr("tasks", "exec", "--exec-id", "e1", container_id, "true")
    ctr.remove(container_id)
    with contextlib.suppress(psutil.NoSuchProcess):
        psutil.Process(shim).wait(15)  # the shim has shut down and written its last lines
    time.sleep(0.5)
    with open(log, "rb") as f:
        f.seek(offset)
        text = f.read().decode(errors="replace")
    assert "CancelledError" not in text and "Traceback" not in text, text[-3000:]


def test_template_shim_sigterm_while_containerd_is_connected_logs_no_cancelled_error(
    ctr, containerd, busybox_image, container_id
):
    """SIGTERM ends the shim while containerd's connection is open: its connection task is cancelled, which
    asyncio 3.11 logged as a CancelledError traceback (into containerd's log, through the shim's log FIFO)."""
    log = containerd.log_path
    offset = log.stat().st_size
    ctr("run", "-d", "--runtime", PYOCI, busybox_image, container_id, "sleep", "1000")
    try:
        shim = psutil.Process(int((bundle_dir(containerd, ctr, container_id) / "shim.pid").read_text()))
        shim.send_signal(signal.SIGTERM)
        with contextlib.suppress(psutil.NoSuchProcess):
            shim.wait(15)
        time.sleep(1)
    finally:
        ctr.remove(container_id)
    with open(log, "rb") as f:
        f.seek(offset)
        text = f.read().decode(errors="replace")
    assert "CancelledError" not in text and "Traceback" not in text, text[-3000:]
