//! `ptreclaim`: page-table reclaim on MADV_DONTNEED, seen from user space.
//!
//! Reserves 64 GiB (MAP_NORESERVE, MADV_NOHUGEPAGE), and for each 2 MiB chunk
//! (all 32768, or the count given as argv[1]) touches one byte — allocating a
//! PTE table — then MADV_DONTNEEDs the chunk. A kernel that reclaims empty PTE
//! tables on DONTNEED (Linux CONFIG_PT_RECLAIM) keeps VmPTE flat; one that
//! does not grows it by 4 kB per chunk (128 MiB for all chunks).
#![no_std]
#![no_main]

use user::fs::proc_field;
use user::io::Ret;
use user::mem::{peek, poke};
use user::sys::*;
use user::{check, check_ok, check_ret, check_with, println, rt};

user::entry!(main);

const REGION: usize = 64 << 30;
const CHUNK: usize = 2 << 20;
/// Address range one page-middle-directory table (PMD) covers.
const PMD_SPAN: usize = 1 << 30;

/// The process's page-table size in kB (`VmPTE` of /proc/self/status).
fn vmpte() -> u64 {
    proc_field(c"/proc/self/status", b"VmPTE:").unwrap_or(u64::MAX)
}

fn main() {
    let chunks = (rt::arg_u64(1, (REGION / CHUNK) as u64) as usize).clamp(1, REGION / CHUNK);
    println!("chunks: {chunks} (2 MiB each)");
    let base = map(REGION, PROT_RW, MAP_ANON_PRIVATE | MAP_NORESERVE);
    check_ok("reserve_64gib", base);
    if base < 0 {
        return;
    }
    let base = base as usize;
    // SAFETY: the region is ours; only its bytes are touched and discarded.
    unsafe {
        check_ret("madv_nohugepage", madvise(base, REGION, MADV_NOHUGEPAGE), 0);
        let before = vmpte();
        let mut failed = 0;
        for i in 0..chunks {
            let chunk = base + i * CHUNK;
            poke(chunk, 1);
            let r = madvise(chunk, CHUNK, MADV_DONTNEED);
            if r != 0 {
                if failed == 0 {
                    println!("INFO first DONTNEED failure at chunk {i}: {}", Ret(r));
                }
                failed += 1;
            }
        }
        let after = vmpte();
        check_with("dontneed_all_chunks", failed == 0, format_args!("{failed} failed"));
        check("touched_bytes_zeroed", peek(base) == 0 && peek(base + (chunks - 1) * CHUNK) == 0);
        println!("INFO VmPTE before {before} kB, after {after} kB");
        // Upper-level tables stay: one PMD table per GiB touched, plus a PUD
        // table, plus 16 kB of slack.
        let pmds = (base + chunks * CHUNK).div_ceil(PMD_SPAN) - base / PMD_SPAN;
        let bound = before + 4 * (pmds as u64 + 1) + 16;
        let details = format_args!("VmPTE {after} kB > bound {bound} kB");
        check_with("ptreclaim_vmpte_bounded", after <= bound, details);
        check_ret("munmap_region", munmap(base, REGION), 0);
        let unmapped = vmpte();
        println!("INFO VmPTE after munmap {unmapped} kB");
        // Tables shared with neighbouring ranges at either end may remain.
        let slack = before + 16;
        let details = format_args!("{unmapped} kB > {slack} kB");
        check_with("vmpte_released_by_munmap", unmapped <= slack, details);
    }
}
