//! `madvise_test`: madvise(2) advice values, their effect on anonymous
//! memory, and the argument/range error rules.
#![no_std]
#![no_main]

use user::io::Ret;
use user::mem::{all, fill, peek, poke};
use user::sys::{errno::*, *};
use user::{check, check_ok, check_ret, check_ret_in, println};

user::entry!(main);

const P: usize = PAGE_SIZE;

fn main() {
    hints_accepted();
    dontneed();
    free();
    populate();
    feature_advice();
    arg_rules();
    hole();
}

/// A fresh `pages`-page anonymous mapping filled with `v` (panics on failure:
/// every check depends on it).
fn filled(pages: usize, prot: usize, flags: usize, v: u8) -> usize {
    let a = map(pages * P, prot, flags);
    assert!(a > 0, "mmap failed: {}", Ret(a));
    if prot & PROT_WRITE != 0 {
        // SAFETY: fresh writable mapping owned by the caller.
        unsafe { fill(a as usize, pages * P, v) };
    }
    a as usize
}

fn hints_accepted() {
    let a = filled(4, PROT_RW, MAP_ANON_PRIVATE, 1);
    // SAFETY: non-destructive advice on our own mapping.
    unsafe {
        check_ret("madv_normal", madvise(a, 4 * P, MADV_NORMAL), 0);
        check_ret("madv_random", madvise(a, 4 * P, MADV_RANDOM), 0);
        check_ret("madv_sequential", madvise(a, 4 * P, MADV_SEQUENTIAL), 0);
        check_ret("madv_willneed", madvise(a, 4 * P, MADV_WILLNEED), 0);
        check("hints_keep_data", all(a, 4 * P, 1));
        munmap(a, 4 * P);
    }
}

fn dontneed() {
    let a = filled(4, PROT_RW, MAP_ANON_PRIVATE, 0x11);
    let s = filled(4, PROT_RW, MAP_SHARED | MAP_ANONYMOUS, 0x22);
    // SAFETY: destructive advice only on our own mappings, whose contents we check.
    unsafe {
        check_ret("dontneed_private", madvise(a + P, 2 * P, MADV_DONTNEED), 0);
        check("dontneed_private_zeroes", all(a + P, 2 * P, 0));
        check("dontneed_private_outside_kept", all(a, P, 0x11) && all(a + 3 * P, P, 0x11));
        poke(a + P, 5);
        check("dontneed_private_writable_after", peek(a + P) == 5);
        check_ret("dontneed_shared", madvise(s, 4 * P, MADV_DONTNEED), 0);
        check("dontneed_shared_keeps_data", all(s, 4 * P, 0x22));
        check_ret("dontneed_unaligned_len", madvise(a, P + 1, MADV_DONTNEED), 0);
        check("dontneed_unaligned_len_rounds_up", all(a, 2 * P, 0) && all(a + 3 * P, P, 0x11));
        munmap(a, 4 * P);
        munmap(s, 4 * P);
    }
}

fn free() {
    let a = filled(4, PROT_RW, MAP_ANON_PRIVATE, 0x33);
    let s = filled(1, PROT_RW, MAP_SHARED | MAP_ANONYMOUS, 0x44);
    // SAFETY: destructive advice only on our own mappings.
    unsafe {
        check_ret("free_private", madvise(a, 4 * P, MADV_FREE), 0);
        // Without memory pressure the data may or may not survive; a page
        // written after the advice must keep the new data.
        fill(a, P, 0x55);
        check("free_written_after_keeps_data", all(a, P, 0x55));
        let untouched = peek(a + P);
        check("free_untouched_old_or_zero", untouched == 0x33 || untouched == 0);
        check_ret("free_shared_einval", madvise(s, P, MADV_FREE), -EINVAL);
        check("free_shared_keeps_data", all(s, P, 0x44));
        munmap(a, 4 * P);
        munmap(s, P);
    }
}

fn populate() {
    let rw = filled(8, PROT_RW, MAP_ANON_PRIVATE, 0);
    let ro = filled(8, PROT_READ, MAP_ANON_PRIVATE, 0);
    let none = filled(8, PROT_NONE, MAP_ANON_PRIVATE, 0);
    // SAFETY: populating never changes contents; mappings are ours.
    unsafe {
        check_ret("populate_read_rw", madvise(rw, 8 * P, MADV_POPULATE_READ), 0);
        check_ret("populate_write_rw", madvise(rw, 8 * P, MADV_POPULATE_WRITE), 0);
        check("populate_rw_zeroed", all(rw, 8 * P, 0));
        check_ret("populate_read_ro", madvise(ro, 8 * P, MADV_POPULATE_READ), 0);
        let r = madvise(ro, 8 * P, MADV_POPULATE_WRITE);
        println!("INFO madvise(PROT_READ, MADV_POPULATE_WRITE) = {}", Ret(r));
        check_ret("populate_write_ro_einval", r, -EINVAL);
        let r = madvise(none, 8 * P, MADV_POPULATE_READ);
        println!("INFO madvise(PROT_NONE, MADV_POPULATE_READ) = {}", Ret(r));
        check_ret("populate_read_none_einval", r, -EINVAL);
        let r = madvise(none, 8 * P, MADV_POPULATE_WRITE);
        println!("INFO madvise(PROT_NONE, MADV_POPULATE_WRITE) = {}", Ret(r));
        check_ret("populate_write_none_einval", r, -EINVAL);
        check("populate_ro_zeroed", all(ro, 8 * P, 0));
        munmap(rw, 8 * P);
        munmap(ro, 8 * P);
        munmap(none, 8 * P);
    }
}

fn feature_advice() {
    let a = filled(512, PROT_RW, MAP_ANON_PRIVATE, 9);
    // SAFETY: non-destructive advice on our own mapping.
    unsafe {
        check_ret("madv_hugepage", madvise(a, 512 * P, MADV_HUGEPAGE), 0);
        check_ret("madv_nohugepage", madvise(a, 512 * P, MADV_NOHUGEPAGE), 0);
        let r = madvise(a, 512 * P, MADV_MERGEABLE);
        // EINVAL means a kernel built without KSM.
        println!("INFO madvise(MADV_MERGEABLE) = {}", Ret(r));
        check_ret_in("madv_mergeable_0_or_einval", r, &[0, -EINVAL]);
        let r = madvise(a, 512 * P, MADV_UNMERGEABLE);
        check_ret_in("madv_unmergeable_0_or_einval", r, &[0, -EINVAL]);
        check("feature_advice_keeps_data", all(a, 512 * P, 9));
        munmap(a, 512 * P);
    }
}

fn arg_rules() {
    let a = filled(2, PROT_RW, MAP_ANON_PRIVATE, 3);
    // SAFETY: every call is invalid or has no effect; the mapping is ours.
    unsafe {
        check_ret("madv_unknown_einval", madvise(a, P, 999), -EINVAL);
        check_ret("madv_unknown_26_einval", madvise(a, P, 26), -EINVAL);
        check_ret("madv_unaligned_einval", madvise(a + 1, P, MADV_DONTNEED), -EINVAL);
        check_ret("madv_len0_ok", madvise(a, 0, MADV_DONTNEED), 0);
        check_ret("madv_len0_unmapped_ok", madvise(0x1000, 0, MADV_DONTNEED), 0);
        check_ret("madv_len_wraps_einval", madvise(a, usize::MAX - P, MADV_DONTNEED), -EINVAL);
        check_ret("madv_kernel_half_enomem", madvise(KERNEL_HALF, P, MADV_DONTNEED), -ENOMEM);
        check("madv_invalid_kept_data", all(a, 2 * P, 3));
        munmap(a, 2 * P);
        check_ret("madv_unmapped_enomem", madvise(a, 2 * P, MADV_NORMAL), -ENOMEM);
        check_ret("madv_unmapped_dontneed_enomem", madvise(a, 2 * P, MADV_DONTNEED), -ENOMEM);
    }
}

/// Advice over [mapped, hole, mapped] fails with ENOMEM but still applies to
/// the mapped parts.
fn hole() {
    let a = filled(3, PROT_RW, MAP_ANON_PRIVATE, 0x66);
    // SAFETY: all ranges are inside our own mapping (and its hole).
    unsafe {
        check_ret("hole_setup", munmap(a + P, P), 0);
        check_ret("hole_dontneed_enomem", madvise(a, 3 * P, MADV_DONTNEED), -ENOMEM);
        check("hole_dontneed_zeroes_first", all(a, P, 0));
        check("hole_dontneed_zeroes_last", all(a + 2 * P, P, 0));
        check_ret("hole_normal_enomem", madvise(a, 3 * P, MADV_NORMAL), -ENOMEM);
        check_ok("hole_cleanup", munmap(a, 3 * P));
    }
}
