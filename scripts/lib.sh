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

# need_cross_arm64: what cross-building for arm64 (aarch64-unknown-linux-gnu) needs: Debian's
# cross linker and C library (gcc-aarch64-linux-gnu, libc6-dev-arm64-cross; the linker is set in
# .cargo/config.toml) and rustup's standard library for the target. Installs what is missing
# (apt as root; otherwise it says what to run).
need_cross_arm64() {
    local p missing=
    for p in gcc-aarch64-linux-gnu libc6-dev-arm64-cross; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing="$missing $p"
    done
    if [ -n "$missing" ]; then
        if [ "$(id -u)" -ne 0 ]; then
            echo "cross-building for arm64 needs Debian's cross toolchain: sudo apt-get install$missing" >&2
            exit 1
        fi
        echo "installing$missing (the arm64 cross linker)" >&2
        # shellcheck disable=SC2086 # a list of package names
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing >/dev/null ||
            { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing >/dev/null; }
    fi
    if ! rustup target list --installed 2>/dev/null | grep -qx aarch64-unknown-linux-gnu; then
        command -v rustup >/dev/null 2>&1 ||
            { echo "cross-building for arm64 needs rustup (https://rustup.rs) for the aarch64-unknown-linux-gnu target" >&2; exit 1; }
        echo "adding the Rust target aarch64-unknown-linux-gnu (rustup)" >&2
        rustup target add aarch64-unknown-linux-gnu >&2
    fi
}
