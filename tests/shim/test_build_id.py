"""The template key: the installed build's files, so an upgrade reaches the next container."""

import os
import time

from pyoci.shim import start


def fake_install(tmp_path):
    for sub in start._PACKAGES:
        (tmp_path / sub).mkdir(parents=True, exist_ok=True)
        (tmp_path / sub / "__init__.py").write_text("")
    (tmp_path / "runtime" / "process.py").write_text("x = 1\n")
    return tmp_path / "shim" / "start.py"


def test_build_id_follows_the_installed_files(tmp_path, monkeypatch):
    monkeypatch.setattr(start, "__file__", str(fake_install(tmp_path)))
    first = start.build_id()
    assert first == start.build_id() and len(first) == 16
    module = tmp_path / "runtime" / "process.py"
    st = module.stat()
    os.utime(module, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    touched = start.build_id()
    assert touched != first
    module.write_text("x = 22\n")  # same mtime, other size
    os.utime(module, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    assert start.build_id() not in (first, touched)
    (tmp_path / "runtime" / "notes.txt").write_text("not a module")
    assert start.build_id() == start.build_id()


def test_template_socket_is_keyed_on_address_and_build():
    a = start.zygote_path("/run/containerd/containerd.sock", "b1")
    assert a != start.zygote_path("/run/containerd/containerd.sock", "b2")
    assert a != start.zygote_path("/tmp/other/containerd.sock", "b1")
    assert start.zygote_record("/run/containerd/containerd.sock").endswith(".zygote")


def test_build_id_of_the_real_install_is_cheap():
    start.build_id()
    t = time.perf_counter()
    for _ in range(20):
        start.build_id()
    assert (time.perf_counter() - t) / 20 < 0.005
