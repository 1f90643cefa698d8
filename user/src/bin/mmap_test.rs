//! `mmap_test`: the mmap/munmap/mprotect rules of the man pages, with Linux
//! as the oracle for the error codes.
#![no_std]
#![no_main]

use user::fs::count_lines;
use user::mem::{all, fill, peek, poke};
use user::sys::{errno::*, *};
use user::{check, check_ok, check_ret, check_with, println};

user::entry!(main);

const P: usize = PAGE_SIZE;
/// A user address far from anything the loader or the kernel places by default.
const FAR: usize = 0x10_0000_0000;

fn main() {
    anon_private();
    anon_shared();
    fixed_replaces();
    fixed_noreplace();
    populate();
    hint();
    prot_none();
    invalid_args();
    out_of_range();
    munmap_rules();
    mprotect_split_merge();
    mprotect_rules();
    map_count_limit();
}

/// Maps `len` bytes at exactly `addr` without replacing anything.
fn map_at(addr: usize, len: usize, prot: usize) -> isize {
    // SAFETY: MAP_FIXED_NOREPLACE never replaces an existing mapping.
    unsafe { mmap(addr, len, prot, MAP_ANON_PRIVATE | MAP_FIXED_NOREPLACE, usize::MAX, 0) }
}

fn anon_private() {
    let a = map(4 * P, PROT_RW, MAP_ANON_PRIVATE);
    check_ok("anon_private_map", a);
    if a < 0 {
        return;
    }
    let a = a as usize;
    check("anon_private_page_aligned", a % P == 0);
    // SAFETY: `a` is a fresh 4-page RW mapping owned by this function.
    unsafe {
        check("anon_private_zeroed", all(a, 4 * P, 0));
        for i in 0..4 {
            fill(a + i * P, P, 0x10 + i as u8);
        }
        check("anon_private_readback", (0..4).all(|i| all(a + i * P, P, 0x10 + i as u8)));
        check_ret("anon_private_munmap", munmap(a, 4 * P), 0);
    }
}

fn anon_shared() {
    let a = map(4 * P, PROT_RW, MAP_SHARED | MAP_ANONYMOUS);
    check_ok("anon_shared_map", a);
    if a < 0 {
        return;
    }
    let a = a as usize;
    // SAFETY: `a` is a fresh 4-page shared RW mapping owned by this function.
    unsafe {
        check("anon_shared_zeroed", all(a, 4 * P, 0));
        fill(a, 4 * P, 0x5a);
        check("anon_shared_readback", all(a, 4 * P, 0x5a));
        check_ret("anon_shared_mprotect_read", mprotect(a, 4 * P, PROT_READ), 0);
        check("anon_shared_data_kept_after_mprotect", all(a, 4 * P, 0x5a));
        check_ret("anon_shared_munmap", munmap(a, 4 * P), 0);
    }
}

fn fixed_replaces() {
    let a = map(3 * P, PROT_RW, MAP_ANON_PRIVATE);
    check_ok("fixed_setup", a);
    if a < 0 {
        return;
    }
    let a = a as usize;
    // SAFETY: MAP_FIXED only replaces the middle page of our own mapping.
    unsafe {
        fill(a, 3 * P, 0xaa);
        let r = mmap(a + P, P, PROT_RW, MAP_ANON_PRIVATE | MAP_FIXED, usize::MAX, 0);
        check_ret("fixed_returns_addr", r, (a + P) as isize);
        check("fixed_new_page_zeroed", all(a + P, P, 0));
        check("fixed_neighbours_kept", all(a, P, 0xaa) && all(a + 2 * P, P, 0xaa));
        check_ret("fixed_munmap", munmap(a, 3 * P), 0);
    }
}

fn fixed_noreplace() {
    let a = map(2 * P, PROT_RW, MAP_ANON_PRIVATE);
    check_ok("noreplace_setup", a);
    if a < 0 {
        return;
    }
    let a = a as usize;
    // SAFETY: `a` is ours; NOREPLACE cannot destroy it, munmap only touches it.
    unsafe {
        poke(a + P, 7);
        check_ret("noreplace_overlap_eexist", map_at(a + P, P, PROT_RW), -EEXIST);
        check_ret("noreplace_partial_overlap_eexist", map_at(a - P, 2 * P, PROT_RW), -EEXIST);
        check("noreplace_kept_data", peek(a + P) == 7);
        check_ret("noreplace_punch_hole", munmap(a + P, P), 0);
        check_ret("noreplace_into_hole", map_at(a + P, P, PROT_RW), (a + P) as isize);
        check("noreplace_new_page_zeroed", peek(a + P) == 0);
        check_ret("noreplace_munmap", munmap(a, 2 * P), 0);
    }
}

fn populate() {
    let len = 64 * P;
    let a = map(len, PROT_RW, MAP_ANON_PRIVATE | MAP_POPULATE);
    check_ok("populate_map", a);
    if a >= 0 {
        // SAFETY: fresh RW mapping owned by this function.
        unsafe {
            check("populate_zeroed", all(a as usize, len, 0));
            check_ret("populate_munmap", munmap(a as usize, len), 0);
        }
    }
    let a = map(len, PROT_NONE, MAP_ANON_PRIVATE | MAP_POPULATE);
    check_ok("populate_prot_none_map", a);
    // SAFETY: unmapping the mapping just created.
    unsafe { munmap(a as usize, len) };
}

fn hint() {
    // SAFETY: no MAP_FIXED: a hint never replaces mappings.
    let hinted = |addr| unsafe { mmap(addr, 2 * P, PROT_RW, MAP_ANON_PRIVATE, usize::MAX, 0) };
    let a = hinted(FAR);
    check_ret("hint_honored_when_free", a, FAR as isize);
    let b = hinted(FAR);
    check_with(
        "hint_taken_gives_other_range",
        b > 0 && (b as usize + 2 * P <= FAR || b as usize >= FAR + 2 * P),
        format_args!("got {b:#x}"),
    );
    // x86 Linux rounds an unaligned hint down (`addr &= PAGE_MASK`).
    let c = hinted(FAR + 0x10_0000 + 123);
    check_ret("hint_unaligned_rounded_down", c, (FAR + 0x10_0000) as isize);
    let d = hinted(KERNEL_HALF);
    let user = d > 0 && (d as usize) < KERNEL_HALF;
    check_with("hint_kernel_half_ignored", user, format_args!("got {d:#x}"));
    let e = hinted(0x1000);
    let above_min = e > 0 && e as usize >= 0x10000;
    check_with("hint_below_min_addr_ignored", above_min, format_args!("got {e:#x}"));
    for r in [a, b, c, d, e] {
        if r > 0 {
            // SAFETY: unmapping the mappings just created.
            unsafe { munmap(r as usize, 2 * P) };
        }
    }
}

fn prot_none() {
    let a = map(P, PROT_NONE, MAP_ANON_PRIVATE);
    check_ok("prot_none_map", a);
    if a < 0 {
        return;
    }
    let a = a as usize;
    // SAFETY: the page is only accessed after being made RW.
    unsafe {
        check_ret("prot_none_to_rw", mprotect(a, P, PROT_RW), 0);
        poke(a + 100, 42);
        check("prot_none_then_rw_usable", peek(a + 100) == 42);
        check_ret("prot_none_munmap", munmap(a, P), 0);
    }
}

fn invalid_args() {
    // SAFETY (all calls below): every call is invalid and must fail without
    // creating or removing mappings.
    unsafe {
        let r = mmap(0, 0, PROT_RW, MAP_ANON_PRIVATE, usize::MAX, 0);
        check_ret("mmap_len0_einval", r, -EINVAL);
        let r = mmap(FAR + 123, P, PROT_RW, MAP_ANON_PRIVATE | MAP_FIXED, usize::MAX, 0);
        check_ret("mmap_fixed_unaligned_einval", r, -EINVAL);
        let r = mmap(0, P, PROT_RW, MAP_ANON_PRIVATE, usize::MAX, 123);
        check_ret("mmap_offset_unaligned_einval", r, -EINVAL);
        let r = mmap(0, P, PROT_RW, MAP_ANONYMOUS, usize::MAX, 0);
        check_ret("mmap_no_private_or_shared_einval", r, -EINVAL);
        let r = mmap(0, P, PROT_RW, MAP_SHARED_VALIDATE | MAP_ANONYMOUS, usize::MAX, 0);
        check_ret("mmap_anon_shared_validate_einval", r, -EINVAL);
        let r = mmap(0, P, PROT_RW, MAP_PRIVATE, usize::MAX, 0);
        check_ret("mmap_file_bad_fd_ebadf", r, -EBADF);
        // Unlike mprotect, Linux mmap ignores unknown prot bits.
        let r = mmap(0, P, 0x10 | PROT_READ, MAP_ANON_PRIVATE, usize::MAX, 0);
        check_ok("mmap_unknown_prot_bit_ignored", r);
        if r > 0 {
            munmap(r as usize, P);
        }
    }
}

fn out_of_range() {
    // SAFETY (all calls below): every call is out of the user range and must
    // fail without touching existing mappings.
    unsafe {
        let fixed =
            |addr, len| mmap(addr, len, PROT_RW, MAP_ANON_PRIVATE | MAP_FIXED, usize::MAX, 0);
        check_ret("mmap_len_huge_enomem", map(1 << 48, PROT_RW, MAP_ANON_PRIVATE), -ENOMEM);
        check_ret("mmap_len_max_enomem", map(usize::MAX, PROT_RW, MAP_ANON_PRIVATE), -ENOMEM);
        check_ret("mmap_fixed_len_wraps_enomem", fixed(FAR, 0usize.wrapping_sub(FAR) + P), -ENOMEM);
        check_ret("mmap_fixed_kernel_half_enomem", fixed(KERNEL_HALF, P), -ENOMEM);
        check_ret("mmap_fixed_top_page_enomem", fixed(0xffff_ffff_ffff_f000, P), -ENOMEM);
        check_ret("mmap_fixed_noncanonical_enomem", fixed(1 << 47, P), -ENOMEM);
        let top = (1usize << 47) - P;
        check_ret("mmap_noreplace_last_user_page_enomem", map_at(top, P, PROT_RW), -ENOMEM);
        let r = map_at(top - 4 * P, 8 * P, PROT_RW);
        check_ret("mmap_noreplace_crossing_top_enomem", r, -ENOMEM);
        check_ret("munmap_kernel_half_einval", munmap(KERNEL_HALF, P), -EINVAL);
        check_ret("munmap_crossing_top_einval", munmap(top - 4 * P, 1 << 47), -EINVAL);
        check_ret("mprotect_kernel_half_enomem", mprotect(KERNEL_HALF, P, PROT_READ), -ENOMEM);
    }
}

fn munmap_rules() {
    let a = map(3 * P, PROT_RW, MAP_ANON_PRIVATE);
    check_ok("munmap_setup", a);
    if a < 0 {
        return;
    }
    let a = a as usize;
    // SAFETY: all ranges are within our own 3-page mapping or already unmapped.
    unsafe {
        fill(a, 3 * P, 0x33);
        check_ret("munmap_unaligned_einval", munmap(a + 1, P), -EINVAL);
        check_ret("munmap_len0_einval", munmap(a, 0), -EINVAL);
        // A length of P + 1 rounds up to two pages.
        check_ret("munmap_len_rounded_up", munmap(a, P + 1), 0);
        let r = map_at(a + P, P, PROT_RW);
        check_ret("munmap_rounded_len_freed_second_page", r, (a + P) as isize);
        check("munmap_third_page_kept", all(a + 2 * P, P, 0x33));
        check_ret("munmap_rest", munmap(a + P, 2 * P), 0);
        check_ret("munmap_hole_ok", munmap(a, 3 * P), 0);
    }
}

/// VMA count of this process (lines of /proc/self/maps).
fn vmas() -> isize {
    count_lines(c"/proc/self/maps")
}

fn mprotect_split_merge() {
    let a = map(3 * P, PROT_RW, MAP_ANON_PRIVATE);
    check_ok("split_setup", a);
    if a < 0 {
        return;
    }
    let a = a as usize;
    let n = vmas();
    check("maps_readable", n > 0);
    // SAFETY: protection changes and unmapping stay within our own mapping.
    unsafe {
        fill(a, 3 * P, 0x77);
        check_ret("split_mprotect_middle", mprotect(a + P, P, PROT_READ), 0);
        check_ret("split_middle_gives_3_vmas", vmas(), n + 2);
        check("split_data_kept", all(a, 3 * P, 0x77));
        check_ret("merge_mprotect_back", mprotect(a + P, P, PROT_RW), 0);
        check_ret("merge_back_gives_1_vma", vmas(), n);
        check_ret("split_mprotect_first", mprotect(a, P, PROT_READ), 0);
        check_ret("split_first_gives_2_vmas", vmas(), n + 1);
        check_ret("merge_all_read", mprotect(a, 3 * P, PROT_READ), 0);
        check_ret("merge_all_gives_1_vma", vmas(), n);
        check_ret("split_munmap_middle", munmap(a + P, P), 0);
        check_ret("split_munmap_middle_gives_2_vmas", vmas(), n + 1);
        check_ret("split_munmap_all", munmap(a, 3 * P), 0);
        check_ret("split_munmap_all_gives_0_vmas", vmas(), n - 1);
    }
}

fn mprotect_rules() {
    let a = map(3 * P, PROT_RW, MAP_ANON_PRIVATE);
    check_ok("mprotect_setup", a);
    if a < 0 {
        return;
    }
    let a = a as usize;
    // SAFETY: all ranges are within our own mapping (or its hole); nothing in
    // it is accessed after protections are reduced.
    unsafe {
        check_ret("mprotect_unknown_bit_einval", mprotect(a, P, 0x10 | PROT_READ), -EINVAL);
        check_ret("mprotect_unaligned_einval", mprotect(a + 1, P, PROT_READ), -EINVAL);
        check_ret("mprotect_len0_ok", mprotect(a, 0, PROT_READ), 0);
        check_ret("mprotect_len_wraps_enomem", mprotect(a, usize::MAX, PROT_READ), -ENOMEM);
        check_ret("mprotect_unaligned_len_ok", mprotect(a, P + 1, PROT_RW), 0);
        check_ret("mprotect_hole_setup", munmap(a + P, P), 0);
        check_ret("mprotect_over_hole_enomem", mprotect(a, 3 * P, PROT_READ), -ENOMEM);
        check_ret("mprotect_in_hole_enomem", mprotect(a + P, P, PROT_READ), -ENOMEM);
        check_ret("mprotect_munmap", munmap(a, 3 * P), 0);
        check_ret("mprotect_unmapped_enomem", mprotect(a, 3 * P, PROT_READ), -ENOMEM);
    }
}

/// Splits a large PROT_NONE reservation into alternately protected pages
/// until the kernel refuses with ENOMEM at vm.max_map_count.
fn map_count_limit() {
    const PAGES: usize = 70_000;
    let base = map(PAGES * P, PROT_NONE, MAP_ANON_PRIVATE | MAP_NORESERVE);
    check_ok("map_count_setup", base);
    if base < 0 {
        return;
    }
    let base = base as usize;
    let mut splits = 0;
    let mut err = 0;
    // SAFETY: all ranges are inside the PROT_NONE reservation made above,
    // which nothing accesses.
    unsafe {
        for i in (1..PAGES - 1).step_by(2) {
            let r = mprotect(base + i * P, P, PROT_READ);
            if r < 0 {
                err = r;
                break;
            }
            splits += 1;
        }
        println!("INFO map count limit reached after {splits} splits");
        check_ret("map_count_limit_enomem", err, -ENOMEM);
        let plausible = (30_000..=32_766).contains(&splits);
        check_with("map_count_limit_plausible", plausible, format_args!("{splits} splits"));
        // The alternating splits stop one or two VMAs short of the limit
        // (the program's own VMAs decide which): split off the last page so
        // the count is exactly max_map_count (or already was).
        let _ = mprotect(base + (PAGES - 1) * P, P, PROT_READ);
        // The untouched tail is one VMA: unmapping its middle would split it.
        let tail_mid = base + (PAGES - 4) * P;
        check_ret("munmap_split_at_limit_enomem", munmap(tail_mid, P), -ENOMEM);
        check_ret("map_count_munmap_all", munmap(base, PAGES * P), 0);
    }
    let a = map(P, PROT_RW, MAP_ANON_PRIVATE);
    check_ok("map_after_limit_released", a);
    // SAFETY: unmapping the page just mapped.
    unsafe { munmap(a as usize, P) };
}
