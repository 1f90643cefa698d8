# The two commands a newcomer needs: `make run` and `make test`.
# Both run `make setup` first (idempotent: toolchain, QEMU, OVMF).
CARGO ?= cargo
# Options for the runner, e.g. make run ARGS="--uefi --mem 1G"
ARGS ?=

.PHONY: all setup build run test test-host test-qemu clean

all: build

setup:
	@./scripts/setup.sh

build: setup
	$(CARGO) build -p boot

run: setup
	$(CARGO) run -q -p boot -- $(ARGS)

# The layer rules of kernel/src, the host unit tests, then the QEMU-booted
# kernel tests (BIOS and UEFI).
test: setup test-host test-qemu

test-host:
	$(CARGO) test -p qemu-tests --test layers
	$(CARGO) test -p mm
	$(CARGO) test -p clear
	$(CARGO) test -p exec
	$(CARGO) test -p boot

test-qemu:
	$(CARGO) test -p qemu-tests -- --test-threads=2

clean:
	$(CARGO) clean
