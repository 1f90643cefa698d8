//! Shared helpers for the QEMU integration tests live in `boot::qemu`; this crate only hosts the tests.
