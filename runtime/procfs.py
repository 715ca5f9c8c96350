"""The one parser each for ``/proc/PID/stat``, ``/proc/PID/mountinfo`` and wait statuses.

A leaf module (``os`` only): the shim's ``delete`` and ``zygote`` import it on their lean paths too.
"""

from __future__ import annotations

import os


def stat_fields(pid: int | str = "self") -> list[str]:
    """The fields of ``/proc/PID/stat`` after the command name: index 0 is proc(5)'s field 3 (state), index
    N its field N + 3. Empty if the process is gone. (The name may hold spaces and parentheses: it ends at
    the last ``)``.)"""
    try:
        with open(f"/proc/{pid}/stat") as f:
            data = f.read()
    except OSError:
        return []
    return data.rpartition(")")[2].split()


def process_state(pid: int | str) -> str:
    """The state letter (R, S, D, Z, T, ...) of a process, "" if it is gone."""
    fields = stat_fields(pid)
    return fields[0] if fields else ""


def start_time(pid: int | str) -> int:
    """When a process started, in clock ticks since boot (proc(5) field 22); 0 if it is gone."""
    fields = stat_fields(pid)
    try:
        return int(fields[19])
    except (IndexError, ValueError):
        return 0


def unescape(field: str) -> str:
    r"""A mountinfo path with the kernel's octal escapes undone (``\040`` space, ``\011`` tab, ``\012``
    newline, ``\134`` backslash): the kernel's ``seq_path`` escapes these characters, nothing else."""
    if "\\" not in field:
        return field
    out = []
    i = 0
    while i < len(field):
        chunk = field[i + 1 : i + 4]
        if field[i] == "\\" and len(chunk) == 3 and all(c in "01234567" for c in chunk):
            out.append(chr(int(chunk, 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


class Mount:
    """One line of mountinfo (proc(5)): paths unescaped, the optional fields skipped."""

    __slots__ = (
        "device",
        "fs_type",
        "mount_id",
        "mount_point",
        "options",
        "parent_id",
        "root",
        "source",
        "super_options",
    )

    def __init__(self, line: str) -> None:
        fields = line.split()
        try:
            sep = fields.index("-", 6)
            self.mount_id, self.parent_id = int(fields[0]), int(fields[1])
            self.device = fields[2]
            self.root, self.mount_point = unescape(fields[3]), unescape(fields[4])
            self.options = fields[5]
            self.fs_type = fields[sep + 1]
            self.source = unescape(fields[sep + 2])
            self.super_options = fields[sep + 3] if len(fields) > sep + 3 else ""
        except (ValueError, IndexError):
            raise ValueError(f"malformed mountinfo line: {line!r}") from None

    def __repr__(self) -> str:
        return f"Mount({self.source!r} on {self.mount_point!r} type {self.fs_type})"


def mounts(pid: int | str = "self") -> list[Mount]:
    """The mount table of a process (its mount namespace), in mount order."""
    with open(f"/proc/{pid}/mountinfo") as f:
        return [Mount(line) for line in f if line.strip()]


def mount_points(pid: int | str = "self") -> list[str]:
    """Just the mount points of ``mounts(pid)``, unescaped."""
    return [m.mount_point for m in mounts(pid)]


def exit_code(wait_status: int) -> int:
    """A wait status as a shell reports it: the exit code, or 128 + the signal number that killed it."""
    if os.WIFSIGNALED(wait_status):
        return 128 + os.WTERMSIG(wait_status)
    return os.WEXITSTATUS(wait_status)
