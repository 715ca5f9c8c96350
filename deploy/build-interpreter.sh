#!/bin/sh
# The interpreter part of pyoci's self-contained tree, in the installer image's first build stage (bookworm):
#
#   build-interpreter.sh SRC TREE   Debian's python3.11 (ELF, stdlib, lib-dynload, bytecode), pyoci's runtime
#                                   dependencies from SRC/pyproject.toml, the shared libraries all of it needs
#                                   and the dynamic loader; depends on nothing else of the checkout, so it is
#                                   a cached image layer (deploy/build-pyoci.sh adds pyoci)
#
# The tree runs through its own loader (lib/native/ld-linux-x86-64.so.2 --library-path lib/native), so it
# uses nothing of the node's userland but /bin/sh and readlink (the launchers); any directory works:
#   bin/containerd-shim-pyoci-v2, bin/pyoci   launchers: find the tree from their own resolved path
#   bin/python3.11                            launcher of the bare interpreter (sys.executable: the shim
#                                             re-executes it to start its template)
#   libexec/python3.11                        Debian's python3.11 ELF; libexec/<command> the lean entry scripts
#   lib/python3.11/                           stdlib, lib-dynload, site-packages (pyoci, protobuf)
#   lib/native/                               the loader, libc and every shared library reached from the above
set -eu

src=$1
tree=$2
py=/usr/bin/python3.11
site=$tree/lib/python3.11/site-packages
native=$tree/lib/native
buildtools=/opt/pyoci-buildtools
export PIP_BREAK_SYSTEM_PACKAGES=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONDONTWRITEBYTECODE=1

# every shared library the ELF files given need (ldd's resolved paths), copied under their soname
bundle_libraries() {
    for elf in "$@"; do
        ldd "$elf" 2>/dev/null | awk '$2 == "=>" && $3 ~ /^\// { print $3 }'
    done | sort -u | while read -r lib; do
        [ -e "$native/$(basename "$lib")" ] || cp -L "$lib" "$native/$(basename "$lib")"
    done
}

interpreter() {
    if ! "$py" -m pip --version >/dev/null 2>&1; then # a registry's debian:bookworm (the offline base has them)
        apt-get update -qq
        apt-get install -y -qq --no-install-recommends python3.11 python3-pip libseccomp2 ca-certificates >/dev/null
        rm -rf /var/lib/apt/lists/*
    fi
    rm -rf "$tree"
    mkdir -p "$tree/bin" "$tree/libexec" "$native" "$buildtools"
    cp -L "$py" "$tree/libexec/python3.11"
    cp -a /usr/lib/python3.11 "$tree/lib/python3.11"
    # what a runtime never imports: tests, IDLE, Tk, 2to3, ensurepip, the static libpython; Debian's own
    # dist-packages path stays out of sys.path anyway (it is /usr/lib/python3/dist-packages)
    rm -rf "$tree/lib/python3.11/test" "$tree/lib/python3.11/idlelib" "$tree/lib/python3.11/tkinter" \
        "$tree/lib/python3.11/turtledemo" "$tree/lib/python3.11/lib2to3" "$tree/lib/python3.11/ensurepip" \
        "$tree/lib/python3.11/config-3.11-x86_64-linux-gnu" "$tree/lib/python3.11/site-packages"
    find "$tree/lib/python3.11" -name __pycache__ -prune -exec rm -rf {} +
    # Debian's sitecustomize.py is a symlink into /etc/python3.11 (the node's!); ours puts the tree's own
    # site-packages on sys.path for the bare interpreter (Debian's site.py adds only dist-packages
    # directories); the lean entry scripts run without site and add it themselves
    rm -f "$tree/lib/python3.11/sitecustomize.py"
    cat > "$tree/lib/python3.11/sitecustomize.py" <<'EOF'
"""The bundled interpreter's site-packages (Debian's site.py adds only dist-packages directories)."""

import os
import site
import sys

site.addsitedir(os.path.join(sys.prefix, "lib", f"python{sys.version_info[0]}.{sys.version_info[1]}", "site-packages"))
EOF
    # stdlib modules that are also scripts (`#! /usr/bin/env python3`) would run the node's Python if executed
    find "$tree/lib/python3.11" -type f -perm /111 -name '*.py' -exec chmod a-x {} +
    outside=$(find "$tree" -type l -lname '/*')
    [ -z "$outside" ] || { echo "build-interpreter: symlinks out of the tree: $outside" >&2; exit 1; }
    mkdir -p "$site"
    deps=$("$py" -c 'import sys, tomllib; print("\n".join(tomllib.load(open(sys.argv[1], "rb"))["project"]["dependencies"]))' "$src/pyproject.toml")
    echo "$deps" | xargs -d '\n' "$py" -m pip install -q --target "$site" --only-binary :all:
    # the build backend pyproject.toml asks for (Debian's setuptools is older), for the pyoci stage
    "$py" -m pip install -q --target "$buildtools" "setuptools>=68" wheel
    rm -rf "$site/bin"
    # the loader and libc first, then what the interpreter, its extension modules and libseccomp need
    cp -L /lib64/ld-linux-x86-64.so.2 "$native/ld-linux-x86-64.so.2"
    libseccomp=$(ldconfig -p | awk '/libseccomp\.so\.2 .*x86-64/ { print $NF; exit }')
    [ -n "$libseccomp" ] || { echo "build-interpreter: libseccomp.so.2 not found (apt-get install libseccomp2)" >&2; exit 1; }
    cp -L "$libseccomp" "$native/libseccomp.so.2"
    # libgcc_s: glibc dlopens it for pthread_exit/pthread_cancel (thread unwinding)
    libgcc=$(ldconfig -p | awk '/libgcc_s\.so\.1 .*x86-64/ { print $NF; exit }')
    [ -z "$libgcc" ] || cp -L "$libgcc" "$native/libgcc_s.so.1"
    # bytecode for the stdlib and the dependencies, hash-based and unchecked: a versioned tree never changes
    # after install, so no source is stat'ed at import
    "$py" -m compileall -q -f -j 0 --invalidation-mode unchecked-hash "$tree/lib/python3.11" >/dev/null
    bundle_libraries "$tree/libexec/python3.11" "$native/libseccomp.so.2" "$native/libgcc_s.so.1" \
        $(find "$tree/lib/python3.11" -name '*.so')
}

interpreter
