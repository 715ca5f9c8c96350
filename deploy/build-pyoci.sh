#!/bin/sh
# The pyoci part of the self-contained tree (see deploy/build-interpreter.sh), in the image's second stage:
#
#   build-pyoci.sh SRC TREE   pyoci from the checkout SRC, its bytecode, the launchers, TREE/VERSION
#                             (<version>-<hash of the whole tree>), then a check that the tree runs on its own
set -eu

src=$1
tree=$2
py=/usr/bin/python3.11
site=$tree/lib/python3.11/site-packages
native=$tree/lib/native
buildtools=/opt/pyoci-buildtools
export PIP_BREAK_SYSTEM_PACKAGES=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONDONTWRITEBYTECODE=1

launcher() { # name, the lean entry script it runs (empty: the bare interpreter)
    args=""
    [ -z "$2" ] || args="-I -S \"\$t/libexec/$2\" "
    cat > "$tree/bin/$1" <<EOF
#!/bin/sh
# $1: pyoci's bundled Python (never the node's), found next to this script's resolved location.
self=\$(readlink -f "\$0") || exit 127
t=\${self%/bin/*}
# the C locale: the bundled glibc then reads no locale or gconv files of the node (Python runs in UTF-8 mode)
export LC_ALL=C
exec "\$t/lib/native/ld-linux-x86-64.so.2" --library-path "\$t/lib/native" --argv0 "\$t/bin/python3.11" \\
    "\$t/libexec/python3.11" $args"\$@"
EOF
    chmod 0755 "$tree/bin/$1"
}

pyoci() {
    rm -rf "$site/pyoci" "$site"/pyoci-*.dist-info "$tree/libexec/containerd-shim-pyoci-v2" "$tree/libexec/pyoci"
    build=$(mktemp -d)
    cp -a "$src/." "$build/"
    PYTHONPATH=$buildtools "$py" -m pip install -q --no-deps --no-index --no-build-isolation --target "$site" "$build"
    rm -rf "$build" "$site/bin"
    for command in containerd-shim-pyoci-v2 pyoci; do
        install -m 0644 "$src/bin/$command" "$tree/libexec/$command"
        launcher "$command" "$command"
    done
    launcher python3.11 ""
    # bytecode, hash-based and unchecked as the stdlib's (build-interpreter.sh): a versioned tree never changes
    "$py" -m compileall -q -f -j 0 --invalidation-mode unchecked-hash "$site/pyoci" >/dev/null
    version=$("$py" -c 'import sys; sys.path.insert(0, sys.argv[1]); from pyoci.runtime import __version__; print(__version__)' "$site")
    digest=$(cd "$tree" && find . \( -type f -o -type l \) ! -name VERSION -print | LC_ALL=C sort | xargs -d '\n' sha256sum | sha256sum)
    echo "$version-$(echo "$digest" | cut -c1-12)" > "$tree/VERSION"
    # the tree must run on its own: no library resolved outside lib/native
    if "$native/ld-linux-x86-64.so.2" --list --library-path "$native" "$tree/libexec/python3.11" | grep -v "$native" | grep -q '=> /'; then
        echo "build-pyoci: the interpreter resolves a library outside $native" >&2
        exit 1
    fi
    "$tree/bin/pyoci" --version
    "$tree/bin/python3.11" -I -c 'import asyncio, ctypes, ssl, google.protobuf, pyoci.shim.main, pyoci.runtime.seccomp as s; s._lib()'
}

pyoci
