"""Packaging: every Python package under the component folders is installed (an editable install would
hide a missing one; a real ``pip install .`` would not), and the installed commands are the lean entry
scripts of ``bin/`` (no pip console-script wrapper, which imports ``re``), working from this venv's bin."""

import _imp
import os
import subprocess
import sys
import sysconfig
import tomllib
from pathlib import Path

import pytest

from pyoci.runtime import __version__

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent  # where pip put the commands (the integration harness looks there too)
COMMANDS = {"containerd-shim-pyoci-v2": "pyoci/shim/main.py", "pyoci": "pyoci/runtime/cli.py"}
SHIM_VERSION = f"containerd-shim-pyoci-v2:\n  Runtime: io.containerd.pyoci.v2\n  Version: {__version__}\n"
# a non-editable install has the packages in site-packages; setuptools' editable finder (a .pth) does not
EDITABLE = not (Path(sysconfig.get_paths()["purelib"]) / "pyoci/shim/main.py").is_file()


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_every_package_is_listed_in_pyproject():
    config = _pyproject()["tool"]["setuptools"]
    listed = set(config["packages"])
    found = set()
    for name, folder in config["package-dir"].items():
        for init in (ROOT / folder).rglob("__init__.py"):
            rel = init.parent.relative_to(ROOT / folder)
            found.add(".".join([name, *rel.parts]))
    assert found == listed


def test_commands_are_script_files_not_console_scripts():
    config = _pyproject()
    assert "scripts" not in config["project"]  # pip would generate wrappers that import re (and clobber ours)
    assert config["tool"]["setuptools"]["script-files"] == [f"bin/{name}" for name in COMMANDS]
    for name in COMMANDS:
        first = (ROOT / "bin" / name).read_text().splitlines()[0]
        assert first == "#!python -IS"  # installers rewrite `#!python` to their interpreter (pip drops the flags)


def _shebang(path: Path) -> list[str]:
    first = path.read_text().split("\n", 1)[0]
    assert first.startswith("#!/"), f"{path}: {first!r}"
    return first[2:].split()


@pytest.mark.parametrize("name", COMMANDS)
def test_installed_command_is_the_lean_script(name):
    installed, source = BIN / name, ROOT / "bin" / name
    assert os.access(installed, os.X_OK)
    interpreter, *flags = _shebang(installed)
    assert os.path.realpath(interpreter) == os.path.realpath(sys.executable)
    assert flags in ([], ["-IS"])
    assert installed.read_text().split("\n", 1)[1] == source.read_text().split("\n", 1)[1]


def _run(argv: list[str], text: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=text, timeout=60, stdin=subprocess.DEVNULL)


def _commands(name: str) -> list[list[str]]:
    """The command as the kernel runs it (its shebang), and run by hand with -IS (the script's own path search)."""
    return [[str(BIN / name)], [sys.executable, "-IS", str(BIN / name)]]


@pytest.mark.parametrize("argv", _commands("containerd-shim-pyoci-v2"), ids=["shebang", "-IS"])
def test_shim_command_works(argv, tmp_path):
    out = _run([*argv, "-v"])
    assert (out.returncode, out.stdout) == (0, SHIM_VERSION), out.stderr
    out = _run([*argv, "-namespace", "ns", "-id", "c1", "nonsense"])
    assert out.returncode == 2 and "unknown action 'nonsense'" in out.stderr
    # containerd's delete after a shim that left nothing behind: the fast path, a DeleteResponse on stdout
    out = _run([*argv, "-namespace", "pyoci-test-packaging", "-id", "gone", "-bundle", str(tmp_path), "delete"], False)
    assert out.returncode == 0 and out.stdout.startswith(b"\x10\x89\x01"), out  # exit_status 137


@pytest.mark.parametrize("argv", _commands("pyoci"), ids=["shebang", "-IS"])
def test_cli_command_works(argv, tmp_path):
    out = _run([*argv, "--version"])
    assert out.returncode == 0 and out.stdout.startswith(f"pyoci version {__version__}\n"), out
    out = _run([*argv, "--help"])
    assert out.returncode == 0 and "usage:" in out.stdout and "create" in out.stdout, out
    out = _run([*argv, "--root", str(tmp_path), "list"])
    assert out.returncode == 0, out.stderr


def _imports(argv: list[str]) -> list[tuple[int, str]]:
    """(depth, module) in -X importtime order (a module is listed after the modules it imported)."""
    out = _run([argv[0], "-X", "importtime", *argv[1:]])
    assert out.returncode == 0, out.stderr
    found = []
    for line in out.stderr.splitlines():
        if line.startswith("import time:") and "|" in line and "imported package" not in line:
            name = line.rsplit("|", 1)[1]
            found.append(((len(name) - len(name.lstrip())) // 2, name.strip()))
    return found


def _before_pyoci(imports: list[tuple[int, str]]) -> list[str]:
    """What the entry script itself imported before handing over to pyoci (nested imports are its imports')."""
    names = [name for _, name in imports]
    first = next(i for i, name in enumerate(names) if name.startswith("pyoci"))
    return [name for depth, name in imports[:first] if depth == 0]


@pytest.fixture(scope="module")
def interpreter_startup() -> set[str]:
    """What the interpreter imports before any script runs (its own startup, not ours to judge)."""
    return {name for _, name in _imports([sys.executable, "-IS", "-c", "pass"])}


def _builtin_or_frozen(name: str) -> bool:
    return name in sys.builtin_module_names or _imp.is_frozen(name)


@pytest.mark.parametrize("name", COMMANDS)
def test_entry_script_imports_only_builtin_modules_before_main(name, interpreter_startup):
    interpreter, *flags = _shebang(BIN / name)
    imports = _imports([interpreter, *flags, str(BIN / name), "--help" if name == "pyoci" else "-v"])
    own = [m for m in _before_pyoci(imports) if m not in interpreter_startup]
    assert all(_builtin_or_frozen(m) for m in own), own  # `site` is frozen; what it imports is nested under it


def test_shim_start_path_never_imports_re():
    """pip's wrapper imported ``re`` (10-12 ms) on every shim start; neither the script nor main does. An
    editable install's finder imports ``re`` inside ``site`` (development only)."""
    interpreter, *flags = _shebang(BIN / "containerd-shim-pyoci-v2")
    imports = _imports([interpreter, *flags, str(BIN / "containerd-shim-pyoci-v2"), "-v"])
    names = [name for _, name in imports]
    after_site = names[names.index("site") + 1 :] if "site" in names else names
    assert "re" not in after_site
    if not EDITABLE:
        assert "re" not in names


def test_isolated_run_finds_its_own_site_packages():
    """Run with -IS, the script adds this venv's site-packages itself and imports no `site`; an editable
    install has no packages there, so the script runs `site` to get setuptools' finder."""
    imports = [name for _, name in _imports([sys.executable, "-IS", str(BIN / "containerd-shim-pyoci-v2"), "-v"])]
    if EDITABLE:
        assert "site" in imports
    else:
        assert "site" not in imports and "re" not in imports
    probe = "import sys; print(sys.prefix)"
    script = BIN / "containerd-shim-pyoci-v2"
    code = script.read_text().split("from pyoci.shim.main import main")[0] + probe
    out = _run([sys.executable, "-IS", "-c", code])
    assert out.returncode == 0 and out.stdout.strip() == sys.prefix, out  # the venv, as site.venv() would set


def test_runtime_dependencies_are_what_the_product_imports():
    """Every third-party module the installed packages import is a runtime dependency, and nothing else is one
    (test-only libraries such as grpclib and psutil belong to the ``test`` extra)."""
    import ast

    imported = set()
    for folder in ("shim", "runtime", "ttrpc", "protos"):
        for path in (ROOT / folder).rglob("*.py"):
            if path == ROOT / "protos" / "generate.py":
                continue  # the developers' regeneration script (grpcio-tools, in the test extra)
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Import):
                    imported.update(alias.name.split(".")[0] for alias in node.names)
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    imported.add(node.module.split(".")[0])
    third_party = imported - set(sys.stdlib_module_names) - {"pyoci", "__future__", "_sha2"}  # _sha2: CPython 3.12+
    distributions = {"google": "protobuf"}  # module -> the distribution that provides it
    declared = {
        dep.split(">")[0].split("<")[0].split("=")[0].strip() for dep in _pyproject()["project"]["dependencies"]
    }
    assert {distributions.get(module, module) for module in third_party} == declared


@pytest.mark.parametrize(
    "args", [["--version"], ["-v"], ["--root", "/nonexistent", "--log-format=json", "--debug", "--version"]]
)
def test_cli_version_answers_before_argparse_and_logging(args):
    """``pyoci --version`` (after any global options) is answered before the parser is built."""
    imports = {name for _, name in _imports([sys.executable, "-IS", str(BIN / "pyoci"), *args])}
    assert "pyoci.runtime.cli" in imports
    assert not imports & {"argparse", "logging", "json", "signal"}, imports & {"argparse", "logging", "json", "signal"}


def test_cli_builds_only_the_parser_of_the_command_given(tmp_path):
    out = _run([str(BIN / "pyoci"), "--root", str(tmp_path), "state", "--help"])
    assert out.returncode == 0 and out.stdout.startswith("usage: pyoci state [-h] id"), out
    out = _run([str(BIN / "pyoci"), "--root", str(tmp_path), "nosuch"])
    assert out.returncode == 2 and "invalid choice: 'nosuch'" in out.stderr and "'events'" in out.stderr, out
    out = _run([str(BIN / "pyoci"), "--root", str(tmp_path), "state", "gone"])
    assert out.returncode == 1 and "gone" in out.stderr, out
