//! Copying to and from user memory (Linux `copy_from_user`, `copy_to_user`,
//! `strncpy_from_user`).
//!
//! Every user pointer is first checked to lie entirely in the user half
//! ([`access_ok`]): without that check a hostile pointer into the kernel half
//! would be copied without any fault. The copy itself is one `rep movsb` in
//! `copy_user_generic` with SMAP opened (`stac`/`clac`). A fault on a user
//! page goes to the page-fault handler like any other; if it cannot be
//! resolved (no VMA, no permission, no memory), the handler finds the faulting
//! RIP in this module's one-entry exception table ([`fixup`]) and resumes at
//! the end of the copy with RCX = bytes not copied, so the system call
//! returns `EFAULT` instead of oopsing.

use core::arch::global_asm;

use mm::errno::Errno;
use mm::vma::TASK_SIZE;

use crate::arch::x86_64::cpu;
use crate::arch::x86_64::frame::TrapFrame;

global_asm!(
    r#"
    .section .text
    .global copy_user_generic
    // rdi = destination, rsi = source, rdx = length; returns bytes NOT copied.
copy_user_generic:
    mov rcx, rdx
    .global copy_user_insn
copy_user_insn:
    rep movsb
    .global copy_user_fixup
copy_user_fixup:
    mov rax, rcx
    ret
    "#
);

unsafe extern "C" {
    fn copy_user_generic(dst: *mut u8, src: *const u8, len: usize) -> usize;
    static copy_user_insn: u8;
    static copy_user_fixup: u8;
}

/// Whether `[addr, addr + len)` lies in the user half (Linux `access_ok`).
pub fn access_ok(addr: u64, len: usize) -> bool {
    addr.checked_add(len as u64).is_some_and(|end| end <= TASK_SIZE)
}

/// Exception-table lookup for a kernel-mode fault the page-fault handler
/// could not resolve: if it hit the user copy, resume after it. RCX already
/// holds the bytes left (`rep movsb` updates it per byte).
pub fn fixup(frame: &mut TrapFrame) -> bool {
    if frame.rip == &raw const copy_user_insn as u64 {
        frame.rip = &raw const copy_user_fixup as u64;
        true
    } else {
        false
    }
}

/// Copies `dst.len()` bytes from user address `src`.
pub fn copy_from_user(dst: &mut [u8], src: u64) -> Result<(), Errno> {
    if !access_ok(src, dst.len()) {
        return Err(Errno::EFAULT);
    }
    cpu::user_access_begin();
    // SAFETY: `dst` is a kernel buffer of `dst.len()` bytes; the source range
    // was checked to be in the user half, and faults on it are fixed up.
    let left = unsafe { copy_user_generic(dst.as_mut_ptr(), src as *const u8, dst.len()) };
    cpu::user_access_end();
    if left == 0 { Ok(()) } else { Err(Errno::EFAULT) }
}

/// Copies `src` to user address `dst`.
pub fn copy_to_user(dst: u64, src: &[u8]) -> Result<(), Errno> {
    if !access_ok(dst, src.len()) {
        return Err(Errno::EFAULT);
    }
    cpu::user_access_begin();
    // SAFETY: as in `copy_from_user`, with the roles swapped.
    let left = unsafe { copy_user_generic(dst as *mut u8, src.as_ptr(), src.len()) };
    cpu::user_access_end();
    if left == 0 { Ok(()) } else { Err(Errno::EFAULT) }
}

/// Copies as much of `src` to user address `dst` as the user mapping allows
/// and returns how many bytes went (all of them, or fewer if a fault stopped
/// the copy; 0 if the range is not in the user half). Linux `copy_to_user`
/// returns the complement; `read` uses this to return a short count.
pub fn copy_to_user_partial(dst: u64, src: &[u8]) -> usize {
    if !access_ok(dst, src.len()) {
        return 0;
    }
    cpu::user_access_begin();
    // SAFETY: as in `copy_to_user`; `rep movsb` stops at the faulting byte and
    // the fixup returns the count left.
    let left = unsafe { copy_user_generic(dst as *mut u8, src.as_ptr(), src.len()) };
    cpu::user_access_end();
    src.len() - left
}

/// Reads a plain-old-data value from user memory.
pub fn get_user<T: Copy + Default>(src: u64) -> Result<T, Errno> {
    let mut value = T::default();
    // SAFETY: T is Copy (plain data); its bytes are overwritten as a whole.
    let bytes = unsafe { core::slice::from_raw_parts_mut(&mut value as *mut T as *mut u8, size_of::<T>()) };
    copy_from_user(bytes, src)?;
    Ok(value)
}

/// Writes a plain-old-data value to user memory.
pub fn put_user<T: Copy>(dst: u64, value: &T) -> Result<(), Errno> {
    // SAFETY: viewing a Copy value as its bytes.
    let bytes = unsafe { core::slice::from_raw_parts(value as *const T as *const u8, size_of::<T>()) };
    copy_to_user(dst, bytes)
}

/// Copies a NUL-terminated string of at most `max` bytes (without the NUL)
/// from user memory (Linux `strncpy_from_user` + `getname`):
/// `ENAMETOOLONG` if there is no NUL within `max`, `EFAULT` on a bad pointer,
/// `ENOMEM` if the kernel heap cannot hold the copy.
pub fn strncpy_from_user(src: u64, max: usize) -> Result<alloc::string::String, Errno> {
    let mut out = alloc::vec::Vec::new();
    let mut byte = [0u8; 1];
    for i in 0..=max as u64 {
        copy_from_user(&mut byte, src.checked_add(i).ok_or(Errno::EFAULT)?)?;
        if byte[0] == 0 {
            return alloc::string::String::from_utf8(out).map_err(|_| Errno::ENOENT);
        }
        out.try_reserve(1).map_err(|_| Errno::ENOMEM)?;
        out.push(byte[0]);
    }
    Err(Errno::ENAMETOOLONG)
}
