"""The template key: the installed build's files, so an upgrade reaches the next container."""

import os
import time

from pyoci.shim import paths


def fake_install(tmp_path):
    for sub in paths._PACKAGES:
        (tmp_path / sub).mkdir(parents=True, exist_ok=True)
        (tmp_path / sub / "__init__.py").write_text("")
    (tmp_path / "runtime" / "process.py").write_text("x = 1\n")
    return tmp_path / "shim" / "paths.py"


def test_build_id_follows_the_installed_files(tmp_path, monkeypatch):
    monkeypatch.setattr(paths, "__file__", str(fake_install(tmp_path)))
    first = paths.build_id()
    assert first == paths.build_id() and len(first) == 16
    module = tmp_path / "runtime" / "process.py"
    st = module.stat()
    os.utime(module, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    touched = paths.build_id()
    assert touched != first
    module.write_text("x = 22\n")  # same mtime, other size
    os.utime(module, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    assert paths.build_id() not in (first, touched)
    (tmp_path / "runtime" / "notes.txt").write_text("not a module")
    assert paths.build_id() == paths.build_id()


def test_template_socket_is_keyed_on_address_and_build():
    a = paths.zygote_path("/run/containerd/containerd.sock", "b1")
    assert a != paths.zygote_path("/run/containerd/containerd.sock", "b2")
    assert a != paths.zygote_path("/tmp/other/containerd.sock", "b1")
    assert paths.zygote_record("/run/containerd/containerd.sock").endswith(".zygote")


def test_build_id_of_the_real_install_is_cheap():
    paths.build_id()
    t = time.perf_counter()
    for _ in range(20):
        paths.build_id()
    assert (time.perf_counter() - t) / 20 < 0.005
