"""Device rules on cgroup v2: an eBPF program (BPF_PROG_TYPE_CGROUP_DEVICE) attached to the cgroup.

cgroup v2 has no devices.allow/deny files; the kernel asks a program attached to the cgroup instead,
with ``struct bpf_cgroup_dev_ctx { u32 access_type; u32 major; u32 minor; }`` (access_type = access << 16
| type). The program is assembled here from the OCI rules the way runc's devicefilter does: rules are
tried last-to-first (the last matching rule decides, as with v1's allow/deny lists), no match denies.
"""

from __future__ import annotations

import ctypes
import errno
import os
import struct

from ..spec import DeviceRule
from .base import CgroupError

_libc = ctypes.CDLL(None, use_errno=True)
_BPF_NR = 321 if os.uname().machine == "x86_64" else 280
BPF_PROG_LOAD, BPF_PROG_ATTACH = 5, 8
BPF_PROG_TYPE_CGROUP_DEVICE = 15
BPF_CGROUP_DEVICE = 6
BPF_F_ALLOW_MULTI = 2
DEV_BLOCK, DEV_CHAR = 1, 2
ACC_MKNOD, ACC_READ, ACC_WRITE = 1, 2, 4

# the default devices every container may use (runc's AllowedDevices), after the spec's rules
DEFAULT_RULES = (
    DeviceRule(True, "c", None, None, "m"),
    DeviceRule(True, "b", None, None, "m"),
    DeviceRule(True, "c", 1, 3, "rwm"),
    DeviceRule(True, "c", 1, 8, "rwm"),
    DeviceRule(True, "c", 1, 7, "rwm"),
    DeviceRule(True, "c", 5, 0, "rwm"),
    DeviceRule(True, "c", 1, 5, "rwm"),
    DeviceRule(True, "c", 1, 9, "rwm"),
    DeviceRule(True, "c", 136, None, "rwm"),
    DeviceRule(True, "c", 5, 2, "rwm"),
    DeviceRule(True, "c", 10, 200, "rwm"),
)


def _insn(code: int, dst: int = 0, src: int = 0, off: int = 0, imm: int = 0) -> bytes:
    return struct.pack("<BBhi", code, (src << 4) | dst, off, imm)


_LDX_W, _AND32_K, _RSH32_K, _MOV64_K, _JNE_K, _EXIT = 0x61, 0x54, 0x74, 0xB7, 0x55, 0x95
_MOV32_X = 0xBC


def _access_mask(access: str) -> int:
    return (
        (ACC_MKNOD if "m" in access else 0) | (ACC_READ if "r" in access else 0) | (ACC_WRITE if "w" in access else 0)
    )


def assemble(rules: tuple[DeviceRule, ...]) -> bytes:
    """The program for ``rules`` (in OCI order); registers: r2 type, r3 access, r4 major, r5 minor."""
    code = [
        _insn(_LDX_W, 2, 1, 0),
        _insn(_AND32_K, 2, imm=0xFFFF),  # r2 = access_type & 0xffff (type)
        _insn(_LDX_W, 3, 1, 0),
        _insn(_RSH32_K, 3, imm=16),  # r3 = access_type >> 16 (access)
        _insn(_LDX_W, 4, 1, 4),
        _insn(_LDX_W, 5, 1, 8),  # r4 = major, r5 = minor
    ]
    unconditional = False
    for rule in reversed(rules):
        checks: list[tuple[int, int, int]] = []  # (kind, register/..., value): each jumps to the next rule on mismatch
        if rule.type in ("c", "b"):
            checks.append((0, 2, DEV_CHAR if rule.type == "c" else DEV_BLOCK))
        mask = _access_mask(rule.access)
        if mask != ACC_MKNOD | ACC_READ | ACC_WRITE:
            checks.append((1, 3, mask))
        if rule.major is not None and rule.major >= 0:
            checks.append((0, 4, rule.major))
        if rule.minor is not None and rule.minor >= 0:
            checks.append((0, 5, rule.minor))
        block: list[list] = []
        for kind, reg, value in checks:
            if kind == 0:
                block.append(["jne", reg, value])
            else:  # all requested access bits must be in the rule's: (access & mask) == access
                block += [["mov", 1, reg], ["and", 1, value], ["jner", 1, reg]]
        block += [["ret", 1 if rule.allow else 0]]
        unconditional = not checks
        size = sum(2 if op[0] == "ret" else 1 for op in block)
        pos = 0
        for op in block:
            if op[0] == "ret":
                code += [_insn(_MOV64_K, 0, imm=op[1]), _insn(_EXIT)]
                pos += 2
                continue
            pos += 1
            skip = size - pos  # to the first instruction after this rule's block
            if op[0] == "jne":
                code.append(_insn(_JNE_K, op[1], off=skip, imm=op[2]))
            elif op[0] == "mov":
                code.append(_insn(_MOV32_X, op[1], op[2]))
            elif op[0] == "and":
                code.append(_insn(_AND32_K, op[1], imm=op[2]))
            elif op[0] == "jner":
                code.append(_insn(0x5D, op[1], op[2], off=skip))  # JNE X
        if unconditional:
            break  # it matches everything: earlier rules could never decide (and the verifier refuses dead code)
    if not unconditional:
        code += [_insn(_MOV64_K, 0, imm=0), _insn(_EXIT)]  # no rule matched: deny
    return b"".join(code)


def _bpf(cmd: int, attr: bytes) -> int:
    buf = ctypes.create_string_buffer(attr, 128)
    result = _libc.syscall(_BPF_NR, ctypes.c_int(cmd), buf, ctypes.c_uint(128))
    if result < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return result


def attach(cgroup_dir: str, rules: tuple[DeviceRule, ...]) -> None:
    """Load the program for ``rules`` (+ the default devices) and attach it to ``cgroup_dir``."""
    program = assemble(tuple(rules) + DEFAULT_RULES)
    insns = ctypes.create_string_buffer(program, len(program))
    license = ctypes.create_string_buffer(b"Apache")
    log = ctypes.create_string_buffer(65536)
    attr = struct.pack(
        "<IIQQIIQ",
        BPF_PROG_TYPE_CGROUP_DEVICE,
        len(program) // 8,
        ctypes.addressof(insns),
        ctypes.addressof(license),
        1,
        len(log),
        ctypes.addressof(log),
    )
    try:
        prog = _bpf(BPF_PROG_LOAD, attr)
    except OSError as exc:
        detail = log.value.decode(errors="replace").strip().splitlines()[-1:] or [""]
        raise CgroupError(
            f"linux.resources.devices: loading the eBPF device program: {exc.strerror} {detail[0]}"
        ) from None
    try:
        cg = os.open(cgroup_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            _bpf(BPF_PROG_ATTACH, struct.pack("<IIII", cg, prog, BPF_CGROUP_DEVICE, BPF_F_ALLOW_MULTI))
        finally:
            os.close(cg)
    except OSError as exc:
        if exc.errno == errno.EPERM:
            raise CgroupError(
                f"linux.resources.devices: attaching the eBPF device program to {cgroup_dir}: not permitted"
            ) from None
        raise CgroupError(f"linux.resources.devices: attaching to {cgroup_dir}: {exc.strerror}") from None
    finally:
        os.close(prog)
