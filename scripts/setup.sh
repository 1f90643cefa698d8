#!/usr/bin/env bash
# Idempotent set-up for `make run` / `make test`: the pinned Rust toolchain
# (rustup auto-install is off on some machines), QEMU with UEFI firmware, and
# musl-tools for the C user programs.
set -euo pipefail
cd "$(dirname "$0")/.."

toolchain=$(sed -n 's/^channel *= *"\(.*\)"/\1/p' rust-toolchain.toml)
if ! rustup run "$toolchain" rustc --version >/dev/null 2>&1 \
   || ! rustup component list --toolchain "$toolchain" --installed 2>/dev/null | grep -q '^rust-src' \
   || ! rustup target list --toolchain "$toolchain" --installed 2>/dev/null | grep -q '^x86_64-unknown-none$'; then
    echo "setup: installing Rust toolchain $toolchain (from rust-toolchain.toml)"
    # With no argument, rustup installs what rust-toolchain.toml names,
    # including its components and targets.
    rustup toolchain install
fi

need_packages=()
command -v qemu-system-x86_64 >/dev/null 2>&1 || need_packages+=(qemu-system-x86)
[ -f /usr/share/OVMF/OVMF_CODE.fd ] || need_packages+=(ovmf)
# musl-gcc builds the C test programs of the initramfs (user/c).
command -v musl-gcc >/dev/null 2>&1 || need_packages+=(musl-tools)
if [ ${#need_packages[@]} -gt 0 ]; then
    cmd="apt-get update && apt-get install -y ${need_packages[*]}"
    if [ "$(id -u)" -eq 0 ]; then
        echo "setup: installing ${need_packages[*]}"
        sh -c "$cmd"
    elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
        echo "setup: installing ${need_packages[*]} with sudo"
        sudo sh -c "$cmd"
    else
        echo "setup: missing ${need_packages[*]}; please run as root:" >&2
        echo "    $cmd" >&2
        exit 1
    fi
fi
