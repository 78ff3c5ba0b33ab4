"""The bpf(2) calls the project needs, through ctypes: load a tc (SCHED_CLS) program and keep a
one-slot array map that running programs read.

Programs are a few hand-assembled instructions (`insn`), so nothing needs clang, libbpf or bpffs.
"""

from __future__ import annotations

import ctypes
import os
import platform
import re
import struct

_NR_BPF = {"x86_64": 321, "aarch64": 280}.get(platform.machine(), 321)
_BPF_MAP_CREATE, _BPF_MAP_UPDATE_ELEM, _BPF_PROG_LOAD = 0, 2, 5
_BPF_MAP_TYPE_ARRAY = 2
_BPF_PROG_TYPE_SCHED_CLS = 3
_BPF_PSEUDO_MAP_FD = 1
_BPF_ATTR_SIZE = 128

# opcodes (64-bit ALU, 32-bit word loads and stores, jumps against an immediate)
MOV64_IMM, MOV64_REG, ADD64_IMM, AND64_IMM = 0xB7, 0xBF, 0x07, 0x57
LDX_W, ST_W, LD_IMM64 = 0x61, 0x62, 0x18
JEQ_IMM, JNE_IMM, CALL, EXIT = 0x15, 0x55, 0x85, 0x95
R10 = 10  # the read-only frame pointer

HELPER_MAP_LOOKUP_ELEM = 1
TC_ACT_UNSPEC, TC_ACT_SHOT = -1, 2

_libc = ctypes.CDLL(None, use_errno=True)


def insn(code: int, dst: int = 0, src: int = 0, off: int = 0, imm: int = 0) -> bytes:
    return struct.pack("<BBhi", code, (src << 4) | dst, off, imm)


def load_map_fd(dst: int, map_fd: int) -> bytes:
    """`dst = &map` (two instruction slots); the kernel swaps the fd for the map at load."""
    return insn(LD_IMM64, dst, _BPF_PSEUDO_MAP_FD, imm=map_fd) + insn(0)


def _bpf(cmd: int, attr: ctypes.Array) -> int:
    result = _libc.syscall(_NR_BPF, cmd, attr, _BPF_ATTR_SIZE)
    if result < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return result


def load_program(program: bytes, name: str) -> int:
    """BPF_PROG_LOAD a SCHED_CLS program; returns its fd."""
    log = ctypes.create_string_buffer(16384)
    license_ = ctypes.create_string_buffer(b"GPL")
    insns = ctypes.create_string_buffer(program, len(program))
    attr = ctypes.create_string_buffer(_BPF_ATTR_SIZE)
    struct.pack_into("<IIQQIIQII16s", attr, 0, _BPF_PROG_TYPE_SCHED_CLS, len(program) // 8,
                     ctypes.addressof(insns), ctypes.addressof(license_), 1, len(log), ctypes.addressof(log),
                     0, 0, re.sub(r"[^A-Za-z0-9_.]", "_", name)[:15].encode())  # the kernel's charset for program names
    try:
        return _bpf(_BPF_PROG_LOAD, attr)
    except OSError as exc:
        raise OSError(exc.errno, f"loading the eBPF program {name} failed: {exc.strerror}: "
                                 f"{log.value.decode(errors='replace').strip()}") from None


def create_flag_map() -> int:
    """An array map of one u32 (zero at first); returns its fd."""
    attr = ctypes.create_string_buffer(_BPF_ATTR_SIZE)
    struct.pack_into("<IIIII", attr, 0, _BPF_MAP_TYPE_ARRAY, 4, 4, 1, 0)
    return _bpf(_BPF_MAP_CREATE, attr)


def set_flag(map_fd: int, value: int) -> None:
    """One syscall: every program reading the map sees the new value from its next packet on."""
    key = ctypes.c_uint32(0)
    val = ctypes.c_uint32(value)
    attr = ctypes.create_string_buffer(_BPF_ATTR_SIZE)
    struct.pack_into("<IIQQQ", attr, 0, map_fd, 0, ctypes.addressof(key), ctypes.addressof(val), 0)
    _bpf(_BPF_MAP_UPDATE_ELEM, attr)
