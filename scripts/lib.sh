# Sourced by the scripts: run as root (re-running through sudo when not),
# and find the Rust toolchain under sudo's reset PATH.

# as_root NAME "$@": re-executes the calling script through sudo unless root.
as_root() {
    local name=$1; shift
    [ "$(id -u)" -eq 0 ] && return 0
    if command -v sudo >/dev/null 2>&1; then
        echo "$name: needs root (namespaces, cgroups, eBPF, apt); re-running through sudo" >&2
        exec sudo -- "$0" "$@"
    fi
    echo "$name: needs root (namespaces, cgroups, eBPF, apt) and sudo is not installed; run it as root" >&2
    exit 2
}

# with_cargo: puts cargo on PATH when sudo's secure_path left it out.
with_cargo() {
    command -v cargo >/dev/null 2>&1 && return 0
    local dir
    for dir in "${CARGO_HOME:-$HOME/.cargo}/bin" "$(getent passwd root | cut -d: -f6)/.cargo/bin"; do
        if [ -x "$dir/cargo" ]; then
            PATH="$dir:$PATH"
            export PATH
            return 0
        fi
    done
    echo "cargo not found: install Rust with rustup (https://rustup.rs) first" >&2
    exit 1
}
