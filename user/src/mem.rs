//! Raw memory access helpers for checking mapping contents.

/// The `len` bytes at `addr` as a slice.
///
/// # Safety
/// `[addr, addr + len)` must be mapped readable and not otherwise borrowed.
unsafe fn bytes<'a>(addr: usize, len: usize) -> &'a mut [u8] {
    // SAFETY: guaranteed by the caller.
    unsafe { core::slice::from_raw_parts_mut(addr as *mut u8, len) }
}

/// Sets `len` bytes at `addr` to `v`.
///
/// # Safety
/// `[addr, addr + len)` must be mapped writable and not in use by anything else.
pub unsafe fn fill(addr: usize, len: usize, v: u8) {
    // SAFETY: guaranteed by the caller.
    unsafe { bytes(addr, len) }.fill(v);
}

/// Whether all `len` bytes at `addr` equal `v`.
///
/// # Safety
/// `[addr, addr + len)` must be mapped readable.
pub unsafe fn all(addr: usize, len: usize, v: u8) -> bool {
    // SAFETY: guaranteed by the caller.
    unsafe { bytes(addr, len) }.iter().all(|&b| b == v)
}

/// Reads the byte at `addr`.
///
/// # Safety
/// `addr` must be mapped readable (or the test expects a fault).
pub unsafe fn peek(addr: usize) -> u8 {
    // SAFETY: guaranteed by the caller.
    unsafe { (addr as *const u8).read_volatile() }
}

/// Writes the byte at `addr`.
///
/// # Safety
/// `addr` must be mapped writable and not in use by anything else.
pub unsafe fn poke(addr: usize, v: u8) {
    // SAFETY: guaranteed by the caller.
    unsafe { (addr as *mut u8).write_volatile(v) }
}
