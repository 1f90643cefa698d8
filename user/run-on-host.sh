#!/bin/sh
# Builds the user programs and runs them on this Linux host, the oracle the
# kernel's output is compared with. Usage: user/run-on-host.sh [--release]
#
# Output per program: "=== <prog>", its stdout, then "=== <prog>: exit N".
# Lines starting with INFO carry system-dependent values; every other line is
# stable. The last line is "run-on-host: N passed, M failed", counting
# programs whose exit status was the expected one (0, or 139 for segv).
set -eu

root=$(cd "$(dirname "$0")/.." && pwd)
profile=debug
cargo_flags=""
if [ "${1:-}" = "--release" ]; then
	profile=release
	cargo_flags=--release
fi

# shellcheck disable=SC2086 # cargo_flags is empty or one word
(cd "$root" && cargo build -q -p user --target x86_64-unknown-none $cargo_flags)
bins="${CARGO_TARGET_DIR:-$root/target}/x86_64-unknown-none/$profile"

out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
for p in hello mmap_test madvise_test brk_prctl_test proc_test ptreclaim segv fuzz; do
	cp "$bins/$p" "$out/$p"
done
c_progs=""
if command -v musl-gcc >/dev/null 2>&1; then
	for p in mmap_c madvise_c; do
		musl-gcc -static -O2 -Wall -Wextra -o "$out/$p" "$root/user/c/$p.c"
	done
	c_progs="mmap_c madvise_c"
else
	echo "SKIP C programs (musl-gcc not found: apt-get install musl-tools)"
fi

passed=0
failed=0
# run <prog> <expected exit status> [args...]: empty environment, no stdin.
# The programs write only to stdout; stderr is dropped so the shell's own
# "Segmentation fault" notice does not end up in the output.
run() {
	prog=$1
	want=$2
	shift 2
	echo "=== $prog"
	status=0
	{ env -i "$out/$prog" "$@" </dev/null; } 2>/dev/null || status=$?
	echo "=== $prog: exit $status"
	if [ "$status" -eq "$want" ]; then
		passed=$((passed + 1))
	else
		failed=$((failed + 1))
	fi
}

run hello 0
run mmap_test 0
run madvise_test 0
run brk_prctl_test 0
run proc_test 0
run ptreclaim 0
run fuzz 0 1 20000
for p in $c_progs; do
	run "$p" 0
done
# Killed by SIGSEGV: the shell reports 128 + 11.
run segv 139
echo "run-on-host: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
