"""The ``pyoci`` CLI's cold path stays cheap: ``--version`` imports no runtime module, and the modules every
container command imports define their dataclasses as records (``@dataclass`` compiles ~1.5 ms of methods a class,
paid by every call containerd's runc shim and the runtime-tools suite make)."""

import json
import subprocess
import sys


def _run(code: str):
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    return json.loads(out.stdout.splitlines()[-1])


def test_version_imports_no_runtime_module():
    loaded = _run(
        "import json, sys\n"
        "from pyoci.runtime.cli import main\n"
        "main(['--version'])\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.startswith('pyoci'))))"
    )
    assert loaded == ["pyoci", "pyoci.runtime", "pyoci.runtime.cli"]


def test_the_container_commands_define_no_compiled_dataclass():
    compiled = _run(
        "import json, sys\n"
        "import pyoci.runtime.cli, pyoci.runtime.container, pyoci.runtime.cgroups.systemd\n"
        "found = []\n"
        "for name, mod in list(sys.modules.items()):\n"
        "    if name.startswith('pyoci.'):\n"
        "        for cls in vars(mod).values():\n"
        "            if isinstance(cls, type) and cls.__module__ == name and '__dataclass_fields__' in vars(cls)\\\n"
        "                    and '__init__' in vars(cls):\n"
        "                found.append(f'{name}.{cls.__qualname__}')\n"
        "print(json.dumps(sorted(found)))"
    )
    assert compiled == []


def test_state_imports_no_shutil(tmp_path):
    """argparse's default formatter and ``Store`` imported shutil (with bz2, lzma, zlib) for every command."""
    loaded = _run(
        "import json, sys\n"
        "from pyoci.runtime.cli import main\n"
        f"assert main(['--root', {str(tmp_path)!r}, 'state', 'missing']) == 1\n"
        "print(json.dumps(sorted(m for m in ('shutil', 'bz2', 'lzma') if m in sys.modules)))"
    )
    assert loaded == []


def test_the_container_commands_import_no_typing_platform_or_shutil():
    """Each was a few ms of every command: typing (dbus's NamedTuple, spec's Any), platform (the machine's name),
    shutil (argparse's formatter, Store)."""
    loaded = _run(
        "import json, sys\n"
        "import pyoci.runtime.cli, pyoci.runtime.container, pyoci.runtime.cgroups.systemd\n"
        "print(json.dumps([m for m in ('typing', 'platform', 'shutil') if m in sys.modules]))"
    )
    assert loaded == []
