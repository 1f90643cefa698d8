//! `brk_prctl_test`: the program break (brk) rules, prctl THP-disable and
//! the matching `/proc/self/status` fields.
#![no_std]
#![no_main]

use user::fs::proc_field;
use user::mem::{all, fill, peek, poke};
use user::sys::{errno::*, *};
use user::{check, check_ret, check_with, println};

user::entry!(main);

const P: usize = PAGE_SIZE;
const MIB: usize = 1 << 20;

fn main() {
    brk_checks();
    prctl_checks();
}

fn brk_checks() {
    // SAFETY: this program has no heap; the break region is used only here.
    unsafe {
        let b0 = brk(0);
        check("brk0_nonzero", b0 > 0);
        check_ret("brk0_stable", brk(0), b0);
        check("brk0_page_aligned", b0 as usize % P == 0);
        let b0 = b0 as usize;

        check_ret("brk_grow_1mib", brk(b0 + MIB), (b0 + MIB) as isize);
        check("brk_grown_zeroed", all(b0, MIB, 0));
        fill(b0, MIB, 0xbb);
        check("brk_grown_writable", all(b0, MIB, 0xbb));
        check_ret("brk_shrink", brk(b0), b0 as isize);
        check_ret("brk_regrow", brk(b0 + MIB), (b0 + MIB) as isize);
        check("brk_regrow_zeroed", all(b0, MIB, 0));

        fill(b0, MIB, 0xcc);
        check_ret("brk_partial_shrink", brk(b0 + MIB / 2), (b0 + MIB / 2) as isize);
        check("brk_partial_shrink_keeps_rest", all(b0, MIB / 2, 0xcc));
        // An unaligned break is returned as given; its page stays mapped.
        check_ret("brk_unaligned", brk(b0 + 100), (b0 + 100) as isize);
        poke(b0 + 99, 1);
        check("brk_unaligned_page_usable", peek(b0 + 99) == 1 && peek(b0 + 100) == 0xcc);

        let cur = (b0 + 100) as isize;
        check_ret("brk_below_start_returns_old", brk(b0 - P), cur);
        check_ret("brk_1_returns_old", brk(1), cur);
        check_ret("brk_kernel_half_returns_old", brk(KERNEL_HALF), cur);
        check_ret("brk_noncanonical_returns_old", brk(1 << 47), cur);

        // Growing into an existing mapping fails and leaves the mapping intact.
        let wall = b0 + 2 * MIB;
        let r = mmap(wall, P, PROT_RW, MAP_ANON_PRIVATE | MAP_FIXED_NOREPLACE, usize::MAX, 0);
        check_ret("brk_wall_mapped", r, wall as isize);
        if r == wall as isize {
            poke(wall, 0x42);
            check_ret("brk_into_mapping_returns_old", brk(b0 + 4 * MIB), cur);
            check("brk_wall_intact", peek(wall) == 0x42);
            check_ret("brk_up_to_gap_ok", brk(wall - P), (wall - P) as isize);
            // Linux keeps a one-page gap below the next mapping.
            check_ret("brk_no_gap_returns_old", brk(wall), (wall - P) as isize);
            munmap(wall, P);
        }
        check_ret("brk_restore", brk(b0), b0 as isize);
    }
}

/// `/proc/self/status` field `key`.
fn status(key: &[u8]) -> Option<u64> {
    proc_field(c"/proc/self/status", key)
}

fn prctl_checks() {
    // SAFETY (all prctl calls): the THP options take no pointers.
    let thp = |opt, a2, a3, a4, a5| unsafe { prctl(opt, a2, a3, a4, a5) };
    let initial = thp(PR_GET_THP_DISABLE, 0, 0, 0, 0);
    check_ret("thp_disable_initially_0", initial, 0);
    println!("INFO THP_enabled before: {:?}", status(b"THP_enabled:"));
    check_ret("thp_set_disable", thp(PR_SET_THP_DISABLE, 1, 0, 0, 0), 0);
    check_ret("thp_get_disable_1", thp(PR_GET_THP_DISABLE, 0, 0, 0, 0), 1);
    check_with(
        "status_thp_enabled_0",
        status(b"THP_enabled:") == Some(0),
        format_args!("{:?}", status(b"THP_enabled:")),
    );
    check_ret("thp_set_extra_arg_einval", thp(PR_SET_THP_DISABLE, 1, 0, 1, 0), -EINVAL);
    check_ret("thp_set_extra_arg5_einval", thp(PR_SET_THP_DISABLE, 0, 0, 0, 1), -EINVAL);
    check_ret("thp_get_extra_arg_einval", thp(PR_GET_THP_DISABLE, 1, 0, 0, 0), -EINVAL);
    check_ret("thp_still_disabled", thp(PR_GET_THP_DISABLE, 0, 0, 0, 0), 1);
    check_ret("thp_set_enable", thp(PR_SET_THP_DISABLE, 0, 0, 0, 0), 0);
    check_ret("thp_get_disable_0", thp(PR_GET_THP_DISABLE, 0, 0, 0, 0), 0);
    check_with(
        "status_thp_enabled_1",
        status(b"THP_enabled:") == Some(1),
        format_args!("{:?}", status(b"THP_enabled:")),
    );
    check_ret("prctl_unknown_einval", thp(9999, 0, 0, 0, 0), -EINVAL);

    let rss = status(b"VmRSS:");
    check("status_vmrss_present", rss.is_some_and(|kb| kb > 0));
    check("status_vmpte_present", status(b"VmPTE:").is_some());
    println!("INFO VmRSS {:?} kB, VmPTE {:?} kB", rss, status(b"VmPTE:"));
}
