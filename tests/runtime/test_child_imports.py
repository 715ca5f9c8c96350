"""The forked child imports nothing: after entering a user namespace it may not be able to read the
interpreter's or the venv's files (CI's venv is a 0700 directory), so every module on its path is imported
at the top of the modules the parent has loaded before it forks."""

import ast
from pathlib import Path

RUNTIME = Path(__file__).resolve().parents[2] / "runtime"
CHILD_PATH = ("process.py", "rootfs.py", "kernel.py", "security.py", "hooks.py", "procfs.py", "errors.py", "records.py")
PARENT_ONLY = {("security.py", "check_lsm")}  # runs before the fork


def test_no_function_on_the_childs_path_imports_a_module():
    lazy = []
    for name in CHILD_PATH:
        tree = ast.parse((RUNTIME / name).read_text())
        for func in ast.walk(tree):
            if not isinstance(func, ast.FunctionDef | ast.AsyncFunctionDef) or (name, func.name) in PARENT_ONLY:
                continue
            for node in ast.walk(func):
                if isinstance(node, ast.Import | ast.ImportFrom):
                    lazy.append(f"{name}:{node.lineno} in {func.name}()")
    assert lazy == []
