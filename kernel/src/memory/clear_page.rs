//! Clearing page frames in the kernel: the `clear` crate's routines applied
//! to frames through the direct map, with the policy as a runtime knob
//! (`sysctl vm.clear_huge_policy=auto|cached|nt`).
//!
//! 4 KiB pages are cleared with cached stores (`rep stosb`). Huge pages are
//! cleared by `clear_huge_page` with the faulting sub-page last and, under
//! the default `auto` policy, non-temporal stores for everything else
//! (`clzero` where the CPU has it, else `movnti`; chosen once at boot).
//! Linux counterparts: `clear_page_erms`, `clear_huge_page`,
//! `process_huge_page`, and the 2021 `clear_page_uncached` patches.

use core::sync::atomic::{AtomicU8, Ordering};

use clear::{ClearPolicy, NtStore};
use mm::addr::{Pfn, PAGE_SIZE};

use crate::arch::x86_64::memmap;

const POLICY_AUTO: u8 = 0;
const POLICY_CACHED: u8 = 1;
const POLICY_NT: u8 = 2;

static POLICY: AtomicU8 = AtomicU8::new(POLICY_AUTO);

/// Picks the non-temporal store instruction for this CPU.
pub fn init() {
    let store = NtStore::detect();
    // `detect` only returns supported instructions, so this cannot fail.
    let _ = clear::set_nt_store(store);
    log::info!("clear_page: huge pages cleared with {:?} non-temporal stores, policy {}", store, policy_name());
}

/// The current huge-page clearing policy.
pub fn policy() -> ClearPolicy {
    match POLICY.load(Ordering::Relaxed) {
        POLICY_CACHED => ClearPolicy::Cached,
        POLICY_NT => ClearPolicy::NonTemporal,
        _ => ClearPolicy::DEFAULT,
    }
}

fn policy_name() -> &'static str {
    match POLICY.load(Ordering::Relaxed) {
        POLICY_CACHED => "cached",
        POLICY_NT => "nt",
        _ => "auto",
    }
}

/// `vm.clear_huge_policy`: how huge pages are cleared.
pub const SYSCTL_CLEAR_HUGE_POLICY: crate::lib::sysctl::Sysctl = crate::lib::sysctl::Sysctl {
    name: "vm.clear_huge_policy",
    values: "auto (non-temporal from 2 MiB), cached, nt",
    get: || alloc::string::String::from(policy_name()),
    set: |v| {
        let p = match v {
            "auto" => POLICY_AUTO,
            "cached" => POLICY_CACHED,
            "nt" => POLICY_NT,
            _ => return Err(()),
        };
        POLICY.store(p, Ordering::Relaxed);
        Ok(())
    },
};

/// Zeroes `2^order` frames starting at `pfn`; sub-page `hint` (the one that
/// faulted, if any) is cleared last with cached stores.
///
/// # Safety
/// The caller owns the frames exclusively.
pub unsafe fn clear_frames(pfn: Pfn, order: usize, hint: Option<usize>) {
    let base = memmap::phys_to_virt(pfn.phys_addr());
    if order == 0 {
        // SAFETY: one owned, page-aligned frame, mapped by the direct map.
        unsafe { clear::clear_page(base) };
        return;
    }
    let nr = 1usize << order;
    // SAFETY: `nr` owned, contiguous, page-aligned frames, mapped by the direct map.
    unsafe { clear::clear_huge_page(base, nr, hint.unwrap_or(nr), policy()) };
}

pub const KTESTS: &[crate::lib::ktest::KTest] = &[crate::ktest!(every_policy_clears_a_2mib_page_completely)];

fn every_policy_clears_a_2mib_page_completely() -> crate::lib::ktest::KResult {
    use mm::gfp::GFP_KERNEL;
    let a = crate::memory::page_alloc::page_alloc();
    let pages = a.alloc_pages(GFP_KERNEL, 9).map_err(|_| "no order-9 block")?;
    let bytes = (pages.nr_pages() * PAGE_SIZE) as usize;
    let base = memmap::phys_to_virt(pages.phys_addr());
    let saved = POLICY.load(Ordering::Relaxed);
    let mut result = Ok(());
    for (policy, hint) in [("nt", Some(7)), ("cached", Some(511)), ("auto", None)] {
        let _ = (SYSCTL_CLEAR_HUGE_POLICY.set)(policy);
        // SAFETY: the test owns the block; the direct map covers it.
        let mem = unsafe { core::slice::from_raw_parts_mut(base, bytes) };
        mem.fill(0xc3);
        // SAFETY: the test owns the frames.
        unsafe { clear_frames(pages.pfn(), 9, hint) };
        if let Some(pos) = mem.iter().position(|&b| b != 0) {
            result = Err(alloc::format!("policy {}: byte {} not cleared", policy, pos).as_str().into());
            break;
        }
    }
    POLICY.store(saved, Ordering::Relaxed);
    a.free_pages(pages);
    result
}
