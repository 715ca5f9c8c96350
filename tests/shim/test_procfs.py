"""The one /proc/PID/stat, mountinfo and wait-status parser (runtime/procfs.py), on real processes and mounts."""

import os
import signal
import subprocess
import sys

from pyoci.runtime import procfs


def _gone_pid() -> int:
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)
    return pid


def test_stat_of_a_live_and_a_gone_process():
    assert procfs.process_state("self") == "R"
    assert procfs.start_time(os.getpid()) > 0
    gone = _gone_pid()
    assert procfs.stat_fields(gone) == [] and procfs.process_state(gone) == "" and procfs.start_time(gone) == 0


def test_command_name_with_parentheses_and_spaces():
    code = "import sys, time; open('/proc/self/comm', 'w').write('a) Z (b'); print(flush=True); time.sleep(30)"
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE)
    try:
        child.stdout.readline()
        assert procfs.process_state(child.pid) in ("R", "S")  # a parser splitting at the first ')' says Z
        assert procfs.start_time(child.pid) >= procfs.start_time(os.getpid())
    finally:
        child.kill()
        child.wait()


def test_mountinfo_line_unescapes_octal_and_skips_optional_fields():
    line = r"36 35 98:0 /a\134b /mnt/x\040y\011z rw,noatime master:1 shared:2 - ext3 /dev/r\040oot rw,errors=continue"
    m = procfs.Mount(line)
    assert (m.mount_id, m.parent_id, m.device) == (36, 35, "98:0")
    assert (m.root, m.mount_point, m.source) == ("/a\\b", "/mnt/x y\tz", "/dev/r oot")
    assert (m.fs_type, m.options, m.super_options) == ("ext3", "rw,noatime", "rw,errors=continue")
    assert procfs.unescape(r"no\escape\0") == r"no\escape\0"  # only three octal digits are an escape


def test_real_mount_point_with_a_space(tmp_path):
    """A tmpfs on a directory named with a space, in a private mount namespace (gone with the process)."""
    target = tmp_path / "with space"
    target.mkdir()
    code = "import sys; from pyoci.runtime.procfs import mount_points; print(sys.argv[1] in mount_points())"
    out = subprocess.run(
        [
            "unshare",
            "-m",
            "--propagation",
            "private",
            "sh",
            "-c",
            'mount -t tmpfs t "$1" && exec "$2" -c "$3" "$1"',
            "sh",
            str(target),
            sys.executable,
            code,
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert out.strip() == "True"
    assert str(target) not in procfs.mount_points()


def test_exit_code_of_an_exit_and_a_signal():
    for status, expected in ((3, 3), (None, 128 + signal.SIGKILL)):
        pid = os.fork()
        if pid == 0:
            if status is None:
                os.kill(os.getpid(), signal.SIGKILL)
            os._exit(status or 0)
        assert procfs.exit_code(os.waitpid(pid, 0)[1]) == expected
