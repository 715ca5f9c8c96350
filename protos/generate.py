#!/usr/bin/env python3
"""Regenerate the committed protobuf modules (``*_pb2.py`` and ``*_pb2.pyi``) from ``src/*.proto``.

Usage: ``python protos/generate.py`` rewrites them in place; ``--check`` regenerates into a temporary
directory and exits 1 (listing the files) when the committed output differs.

protoc writes imports between our files as top-level modules (``import containerd_types_pb2``); they
are rewritten to relative imports so that everything lives under ``pyoci.protos``. Needs grpcio-tools
(pinned in pyproject.toml so that the output is reproducible).
"""

from __future__ import annotations

import argparse
import filecmp
import re
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
SRC = HERE / "src"
_LOCAL_IMPORT = re.compile(r"^import (\w+_pb2) as (\w+)$", re.MULTILINE)
_LOCAL_IMPORT_PYI = re.compile(r"^import (\w+_pb2) as (\w+)$|^from (\w+_pb2) import", re.MULTILINE)


def _local_modules() -> set[str]:
    return {p.stem + "_pb2" for p in SRC.glob("*.proto")}


def _relativize(text: str, local: set[str]) -> str:
    def fix_import(m: re.Match[str]) -> str:
        module, alias = m.group(1), m.group(2)
        return f"from . import {module} as {alias}" if module in local else m.group(0)

    text = _LOCAL_IMPORT.sub(fix_import, text)

    def fix_from(m: re.Match[str]) -> str:
        if m.group(3) and m.group(3) in local:
            return f"from .{m.group(3)} import"
        return m.group(0)

    return _LOCAL_IMPORT_PYI.sub(lambda m: fix_from(m) if m.group(3) else fix_import(m), text)


def generate(out: Path) -> list[Path]:
    import grpc_tools
    from grpc_tools import protoc  # imported here: only the generator needs grpcio-tools

    include = Path(grpc_tools.__file__).parent / "_proto"
    protos = sorted(str(p.name) for p in SRC.glob("*.proto"))
    args = ["protoc", f"-I{SRC}", f"-I{include}", f"--python_out={out}", f"--pyi_out={out}", *protos]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    local = _local_modules()
    written = []
    for path in sorted(out.glob("*_pb2.py*")):
        path.write_text(_relativize(path.read_text(), local))
        written.append(path)
    return written


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if the committed output is stale")
    args = parser.parse_args()
    if not args.check:
        for path in generate(HERE):
            print(path.relative_to(HERE.parent))
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        fresh = {p.name: p for p in generate(Path(tmp))}
        committed = {p.name: p for p in HERE.glob("*_pb2.py*")}
        stale = sorted(
            name
            for name in fresh.keys() | committed.keys()
            if name not in fresh or name not in committed or not filecmp.cmp(fresh[name], committed[name], False)
        )
    for name in stale:
        print(f"stale: protos/{name}", file=sys.stderr)
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main())
