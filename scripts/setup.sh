#!/usr/bin/env bash
# Idempotent set-up for `make run` / `make test`: the pinned Rust toolchain
# (rustup auto-install is off on some machines), QEMU with UEFI firmware,
# musl-tools for the C user programs, and the pinned Linux kernel that
# `boot --linux` boots as the peer (cached in target/linux, not in git).
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

# Runs "$@" as root: directly, with passwordless sudo, or not at all (then
# prints the command and fails).
as_root() {
    if [ "$(id -u)" -eq 0 ]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
        sudo "$@"
    else
        echo "setup: need root for: $*; please run as root:" >&2
        echo "    $*" >&2
        return 1
    fi
}

need_packages=()
command -v qemu-system-x86_64 >/dev/null 2>&1 || need_packages+=(qemu-system-x86)
[ -f /usr/share/OVMF/OVMF_CODE.fd ] || need_packages+=(ovmf)
# musl-gcc builds the C test programs of the initramfs (user/c).
command -v musl-gcc >/dev/null 2>&1 || need_packages+=(musl-tools)
if [ ${#need_packages[@]} -gt 0 ]; then
    echo "setup: installing ${need_packages[*]}"
    # Without --no-install-recommends, qemu-system-x86 pulls ~170 packages
    # (GUI, audio, speech data) that a serial-console guest never uses.
    as_root apt-get update
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${need_packages[@]}"
fi

# The Linux peer: Linux itself booted in the same QEMU with the same programs
# (boot --linux, the oracle test in tests/boot.rs). One pinned Debian cloud
# kernel (serial console, initramfs, THP, KSM built in; no modules needed),
# unpacked into a cache outside git. Debian keeps only recent ABIs on its
# mirror: if the pinned one is gone, take the newest 6.1 cloud kernel and say
# so; target/linux/VERSION records which one it is.
LINUX_ABI=6.1.0-50
linux_dir=${LINUX_PEER_DIR:-target/linux}
linux_package() { echo "linux-image-$1-cloud-amd64-unsigned"; }
# Prints the candidate version of package $1 from the local apt lists (empty
# if apt does not know it).
candidate() { apt-cache policy "$1" 2>/dev/null | sed -n 's/^ *Candidate: *//p' | grep -v '^(none)$' || true; }
newest_linux_abi() {
    apt-cache search --names-only '^linux-image-6\.1\.0-[0-9]+-cloud-amd64-unsigned$' 2>/dev/null \
        | sed -n 's/^linux-image-\(6\.1\.0-[0-9]*\)-cloud-amd64-unsigned .*/\1/p' | sort -V | tail -n 1
}
cached_release=$(head -n 1 "$linux_dir/VERSION" 2>/dev/null || true)
if [ "$cached_release" = "$LINUX_ABI-cloud-amd64" ] && [ -s "$linux_dir/vmlinuz" ]; then
    :   # the pinned kernel is there
elif [ -n "$cached_release" ] && [ -s "$linux_dir/vmlinuz" ] && [ -z "$(candidate "$(linux_package "$LINUX_ABI")")" ]; then
    :   # a fallback kernel is there and the pinned one is still unavailable
else
    abi=$LINUX_ABI
    if [ -z "$(candidate "$(linux_package "$abi")")" ]; then
        as_root apt-get update || true
    fi
    if [ -z "$(candidate "$(linux_package "$abi")")" ]; then
        abi=$(newest_linux_abi)
        [ -n "$abi" ] || { echo "setup: no linux-image-6.1.0-*-cloud-amd64-unsigned in the apt lists" >&2; exit 1; }
        echo "setup: pinned Linux peer $LINUX_ABI is gone from the mirror; using $abi instead" >&2
    fi
    package=$(linux_package "$abi")
    echo "setup: fetching the Linux peer $package"
    download=$(mktemp -d)
    trap 'rm -rf "$download"' EXIT
    # apt-get download writes into the current directory and works as
    # non-root; a stale list (package since removed from the mirror) is
    # refreshed once.
    if ! (cd "$download" && apt-get download "$package"); then
        as_root apt-get update || true
        (cd "$download" && apt-get download "$package")
    fi
    deb=$(ls "$download"/*.deb)
    dpkg-deb -x "$deb" "$download/root"
    release=$abi-cloud-amd64
    mkdir -p "$linux_dir"
    cp "$download/root/boot/vmlinuz-$release" "$linux_dir/vmlinuz"
    cp "$download/root/boot/config-$release" "$linux_dir/config"
    echo "$release" > "$linux_dir/VERSION"
    dpkg-deb -f "$deb" Package Version | sed 's/^[A-Za-z]*: //' | paste -sd ' ' >> "$linux_dir/VERSION"
    rm -rf "$download"
    trap - EXIT
    echo "setup: Linux peer $(paste -sd ' ' "$linux_dir/VERSION") in $linux_dir"
fi
