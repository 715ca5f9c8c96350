"""The shim's bootstrap modules import each other without cycles, nothing imports ``main``, and ``start`` stays lean."""

import ast
import subprocess
import sys
from pathlib import Path

SHIM = Path(__file__).resolve().parents[2] / "shim"
BOOTSTRAP = ("main", "flags", "paths", "start", "daemon", "delete", "zygote", "info")


def _shim_imports(module: str) -> set[str]:
    """The shim modules ``module`` imports, at the top or inside functions (``from .x`` / ``from pyoci.shim.x``)."""
    found = set()
    for node in ast.walk(ast.parse((SHIM / f"{module}.py").read_text())):
        if isinstance(node, ast.ImportFrom):
            name = node.module or ""
            if node.level == 1:
                found.add(name.split(".")[0])
            elif name.startswith("pyoci.shim."):
                found.add(name.split(".")[2])
    return found


def test_nothing_imports_main():
    importers = [m for m in BOOTSTRAP if "main" in _shim_imports(m) and m != "main"]
    assert importers == []


def test_bootstrap_modules_have_no_import_cycle():
    graph = {m: _shim_imports(m) & set(BOOTSTRAP) for m in BOOTSTRAP}

    def reaches(start: str, target: str, seen: set[str]) -> bool:
        for nxt in graph[start]:
            if nxt == target or (nxt not in seen and reaches(nxt, target, seen | {nxt})):
                return True
        return False

    cycles = [m for m in BOOTSTRAP if reaches(m, m, {m})]
    assert cycles == []


def test_start_imports_only_builtin_modules():
    """containerd waits for ``start`` on every container: until the template answers it needs nothing but its
    own leaf modules and the interpreter's C modules (compiled in, frozen, or the stdlib's extension modules),
    no Python-source stdlib module (``socket``, ``hashlib``, ``json`` import ``enum`` and ``re``)."""
    probe = (
        "import sys; before = set(sys.modules); import pyoci.shim.main, pyoci.shim.start; "
        "new = set(sys.modules) - before; "
        "print(' '.join(f'{m}={getattr(sys.modules[m].__spec__, \"origin\", None)}' for m in sorted(new)))"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout.split()
    origins = dict(entry.split("=", 1) for entry in out)
    # `array` (fd passing) imports collections.abc, a 3-line re-export of the already loaded _collections_abc
    python_source = [
        name
        for name, origin in origins.items()
        if origin.endswith(".py") and not name.startswith("pyoci.") and name != "collections.abc"
    ]
    assert python_source == []
    assert {"pyoci.shim.start", "pyoci.shim.paths", "pyoci.shim.flags"} <= origins.keys()
