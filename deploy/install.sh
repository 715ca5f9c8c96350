#!/bin/sh
# Installs pyoci onto a node (kata-deploy style): the installer image's entrypoint; POSIX sh, no Python.
#
#   install.sh install      copy the tree to $NODE_ROOT/opt/pyoci/versions/<version>-<hash>/ (once: a
#                           re-install of the same build is a no-op, a new build is a new directory), switch
#                           $NODE_ROOT/opt/pyoci/current to it with one rename(2), link the commands into
#                           $NODE_ROOT/usr/local/bin, write containerd's drop-in, print/apply the RuntimeClass,
#                           remove old versions that no running process maps
#   install.sh uninstall    remove everything install added (a version a running process maps is kept)
#   install.sh daemonset    install, then sleep until SIGTERM/SIGINT (then uninstall if PYOCI_UNINSTALL_ON_EXIT=1)
#   install.sh config       print the containerd configuration for this node (drop-in or 1.6 snippet + patch)
#   install.sh runtimeclass print the RuntimeClass
#
# Environment: NODE_ROOT (default /host: the node's / as a DaemonSet mounts it), CONTAINERD_VERSION (1.6,
# 1.7, 2.x; default: asked from the node's containerd, else from config.toml's version), PYOCI_PRUNE
# (auto: remove old versions only when /proc shows the node's processes, i.e. hostPID; always; never),
# PYOCI_RUNTIMECLASS_APPLY=1 applies the RuntimeClass with kubectl when kubectl and credentials are there.
set -eu

NODE_ROOT=${NODE_ROOT:-/host}
NODE_ROOT=${NODE_ROOT%/}
PREFIX=/opt/pyoci                       # as the node sees it
TREE=$(dirname "$(readlink -f "$0")")/tree
BASE=$NODE_ROOT$PREFIX
BIN=$NODE_ROOT/usr/local/bin
COMMANDS="containerd-shim-pyoci-v2 pyoci"
CONFD=/etc/containerd/conf.d
DROPIN=$CONFD/pyoci.toml
CREATED=$BASE/created-dirs              # directories install made outside $BASE, removed by uninstall
made=""

log() { echo "pyoci-install: $*" >&2; }
die() { log "$*"; exit 1; }

version() { cat "$TREE/VERSION"; }

# --- containerd's version and config --------------------------------------------------------------------
containerd_version() {
    if [ -n "${CONTAINERD_VERSION:-}" ]; then echo "$CONTAINERD_VERSION"; return; fi
    for bin in /usr/bin/containerd /usr/local/bin/containerd /bin/containerd; do
        if [ -x "$NODE_ROOT$bin" ]; then
            out=$(chroot "$NODE_ROOT" "$bin" --version 2>/dev/null || true)
            v=$(echo "$out" | sed -n 's/.* v\{0,1\}\([0-9][0-9]*\.[0-9][0-9]*\).*/\1/p' | head -n1)
            if [ -n "$v" ]; then echo "$v"; return; fi
        fi
    done
    if grep -qs '^version *= *3' "$NODE_ROOT/etc/containerd/config.toml"; then echo 2.x; else echo 1.7; fi
}

config_version() { # 2 for containerd 1.x, 3 for 2.x
    case $1 in 1.*) echo 2 ;; *) echo 3 ;; esac
}

runtime_toml() { # the runtimes.pyoci table for containerd $1
    case $(config_version "$1") in
    2) section='plugins."io.containerd.grpc.v1.cri".containerd.runtimes.pyoci' ;;
    *) section='plugins."io.containerd.cri.v1.runtime".containerd.runtimes.pyoci' ;;
    esac
    cat <<EOF
[$section]
  runtime_type = "io.containerd.pyoci.v2"
[$section.options]
  SystemdCgroup = ${PYOCI_SYSTEMD_CGROUP:-true}
EOF
}

dropin() { # the whole drop-in file
    cat <<EOF
# Written by the pyoci installer ($(version)); removed by its uninstall.
version = $(config_version "$1")

EOF
    runtime_toml "$1"
}

# containerd 1.6 merges an imported file's plugin table over the main one (the CRI plugin's whole table
# would be replaced): the runtime goes into config.toml itself, by hand
print_16_patch() {
    config=$NODE_ROOT/etc/containerd/config.toml
    log "containerd 1.6: imports cannot add a runtime to the CRI plugin; add this to /etc/containerd/config.toml:"
    runtime_toml 1.6
    if [ -f "$config" ]; then
        tmp=$(mktemp)
        { cat "$config"; echo; runtime_toml 1.6; } > "$tmp"
        log "as a patch (apply with: patch -d / -p1 < this.patch, then restart containerd):"
        diff -u "$config" "$tmp" | sed "1s|^--- $NODE_ROOT|--- |;2s|^+++ $tmp.*|+++ /etc/containerd/config.toml|" || true
        rm -f "$tmp"
    fi
}

imports_dropin() { # does config.toml import conf.d (containerd 2.x's default config does without a file)
    config=$NODE_ROOT/etc/containerd/config.toml
    [ -f "$config" ] || return 1
    grep -Eq "^[[:space:]]*imports[[:space:]]*=.*($CONFD/\\*\\.toml|$DROPIN)" "$config"
}

write_config() {
    cv=$(containerd_version)
    case $cv in
    1.6 | 1.5 | 1.4) print_16_patch; return ;;
    esac
    dir=$NODE_ROOT$CONFD
    if [ ! -d "$dir" ]; then
        mkdirs "$dir"
    fi
    tmp=$dir/.pyoci.toml.$$
    dropin "$cv" > "$tmp"
    mv -f "$tmp" "$NODE_ROOT$DROPIN"
    log "wrote $DROPIN (containerd $cv, config version $(config_version "$cv"))"
    if ! imports_dropin; then
        log "note: /etc/containerd/config.toml must import it: imports = [\"$CONFD/*.toml\"] (top level)"
    fi
    log "restart containerd to load it (running containers are not affected)"
}

mkdirs() { # mkdir -p, recording each directory it creates (for uninstall)
    missing=""
    d=$1
    while [ ! -d "$d" ]; do
        missing="$d $missing"
        d=$(dirname "$d")
    done
    for d in $missing; do
        mkdir "$d"
        [ "$d" = "$BASE" ] || made="$made ${d#"$NODE_ROOT"}"
    done
}

# --- RuntimeClass -----------------------------------------------------------------------------------------
runtimeclass() {
    cat <<'EOF'
apiVersion: node.k8s.io/v1
kind: RuntimeClass
metadata:
  name: pyoci
handler: pyoci
EOF
}

apply_runtimeclass() {
    if [ "${PYOCI_RUNTIMECLASS_APPLY:-0}" = 1 ] && command -v kubectl >/dev/null 2>&1; then
        runtimeclass | kubectl apply -f - >&2 && return
        log "kubectl apply failed; apply this RuntimeClass yourself:"
    else
        log "apply this RuntimeClass (kubectl apply -f -):"
    fi
    runtimeclass
}

# --- versions in use --------------------------------------------------------------------------------------
sees_node_processes() {
    case ${PYOCI_PRUNE:-auto} in
    always) return 0 ;;
    never) return 1 ;;
    esac
    # hostPID: /proc/1 is the node's init, whose root is the node's /
    [ "$(stat -Lc %d:%i /proc/1/root/ 2>/dev/null)" = "$(stat -Lc %d:%i "$NODE_ROOT/")" ]
}

in_use() { # does a process map a file of version $1 (its path as the node sees it)? A maps file root cannot
    # read (no CAP_SYS_PTRACE; a sandbox's init) falls back to the process's command line, and is reported
    pattern="$PREFIX/versions/$1/"
    for maps in /proc/[0-9]*/maps; do
        rc=0
        grep -qF -e "$pattern" "$maps" 2>/dev/null || rc=$?
        case $rc in
        0) return 0 ;;
        1) ;;
        *)
            [ -e "$maps" ] || continue # gone meanwhile
            log "cannot read $maps (needs CAP_SYS_PTRACE): judged by its command line"
            if tr '\0' ' ' < "${maps%/maps}/cmdline" 2>/dev/null | grep -qF -e "$pattern"; then return 0; fi
            ;;
        esac
    done
    return 1
}

prune() { # remove versions other than $1 that nothing maps
    sees_node_processes || {
        log "old versions kept (cannot see the node's processes: run with hostPID, or PYOCI_PRUNE=always)"
        return 0
    }
    for dir in "$BASE"/versions/*; do
        [ -d "$dir" ] || continue
        old=$(basename "$dir")
        [ "$old" != "$1" ] || continue
        if in_use "$old"; then
            log "version $old kept: a running process maps it"
        else
            remove_version "$old"
        fi
    done
}

remove_version() { # rename out of versions/ first: never a half-removed directory under its own name
    gone=$BASE/versions/.removing-$1-$$
    mv -T "$BASE/versions/$1" "$gone" && rm -rf "$gone"
    log "removed version $1"
}

# --- install / uninstall ----------------------------------------------------------------------------------
install_tree() {
    v=$(version)
    [ -d "$NODE_ROOT" ] || die "NODE_ROOT $NODE_ROOT is not a directory (mount the node's / there)"
    made=""
    if [ ! -d "$BASE" ]; then
        mkdirs "$BASE"
    fi
    mkdir -p "$BASE/versions"
    rm -rf "$BASE"/versions/.tmp-* "$BASE"/versions/.removing-*
    if [ -d "$BASE/versions/$v" ]; then
        log "version $v already installed (left as is)"
    else
        tmp=$BASE/versions/.tmp-$v-$$
        cp -a "$TREE" "$tmp"
        mv -T "$tmp" "$BASE/versions/$v"
        log "installed version $v"
    fi
    # the switch: a new symlink renamed over `current` (rename(2) is atomic)
    ln -sfn "versions/$v" "$BASE/.current-$$"
    mv -T "$BASE/.current-$$" "$BASE/current"
    [ -d "$BIN" ] || mkdirs "$BIN"
    for command in $COMMANDS; do
        link=$BIN/$command
        target=../../..$PREFIX/current/bin/$command
        if [ -e "$link" ] || [ -L "$link" ]; then
            [ "$(readlink "$link")" = "$target" ] || die "$link exists and is not pyoci's link (remove it first)"
        else
            ln -s "$target" "$BIN/.$command.$$"
            mv -T "$BIN/.$command.$$" "$link"
        fi
    done
    write_config
    for d in $made; do echo "$d" >> "$CREATED"; done
    apply_runtimeclass
    prune "$v"
    log "pyoci $v installed: $PREFIX/current -> versions/$v; containerd-shim-pyoci-v2 and pyoci in /usr/local/bin"
}

uninstall() {
    for command in $COMMANDS; do
        link=$BIN/$command
        if [ -L "$link" ] && [ "$(readlink "$link")" = "../../..$PREFIX/current/bin/$command" ]; then
            rm -f "$link"
        fi
    done
    if [ -f "$NODE_ROOT$DROPIN" ] && grep -qs '^# Written by the pyoci installer' "$NODE_ROOT$DROPIN"; then
        rm -f "$NODE_ROOT$DROPIN"
        log "removed $DROPIN (restart containerd to drop the runtime)"
    fi
    [ -d "$BASE" ] || { log "nothing installed under $PREFIX"; return 0; }
    rm -f "$BASE/current"
    kept=""
    for dir in "$BASE"/versions/* "$BASE"/versions/.tmp-* "$BASE"/versions/.removing-*; do
        [ -d "$dir" ] || continue
        old=$(basename "$dir")
        if sees_node_processes && in_use "$old"; then
            kept="$kept $old"
            log "version $old kept: a running process maps it (uninstall again once its containers are gone)"
        else
            rm -rf "$dir"
        fi
    done
    [ -n "$kept" ] && return 0
    # directories install created outside $PREFIX, deepest first, if empty
    if [ -f "$CREATED" ]; then
        sort -r "$CREATED" | while read -r d; do rmdir "$NODE_ROOT$d" 2>/dev/null || true; done
    fi
    rm -rf "$BASE"
    log "pyoci removed"
}

daemonset() {
    install_tree
    trap 'stop=1' TERM INT
    stop=0
    log "installed; waiting for SIGTERM"
    while [ "$stop" = 0 ]; do
        sleep 3600 &
        wait $! || true
        kill $! 2>/dev/null || true
    done
    if [ "${PYOCI_UNINSTALL_ON_EXIT:-0}" = 1 ]; then
        uninstall
    fi
    log "stopped"
}

case ${1:-daemonset} in
install) install_tree ;;
uninstall) uninstall ;;
daemonset) daemonset ;;
config)
    cv=$(containerd_version)
    case $cv in 1.6 | 1.5 | 1.4) print_16_patch ;; *) dropin "$cv" ;; esac
    ;;
runtimeclass) runtimeclass ;;
version) version ;;
*) die "usage: install.sh install|uninstall|daemonset|config|runtimeclass|version" ;;
esac
