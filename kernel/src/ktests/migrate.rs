//! Migration and compaction of anonymous pages of running and parked
//! address spaces, with their contents checked ([`crate::memory::migrate`]).

pub const KTESTS: &[crate::lib::ktest::KTest] = &[
    crate::ktest!(address_spaces_get_unique_ids),
    crate::ktest!(migrate_page_moves_anon_pages_of_the_running_mm),
    crate::ktest!(compaction_moves_anon_pages_and_keeps_contents),
    crate::ktest!(parked_task_pages_move_and_the_program_still_runs),
];

use alloc::vec::Vec;
use core::sync::atomic::Ordering::Relaxed;

use mm::addr::{Pfn, PAGE_SIZE};
use mm::compaction::MigrateError;
use mm::gfp::GFP_KERNEL;
use mm::pgtable::{Level, VirtAddr, PMD_SIZE};
use mm::vma::VmFlags;

use crate::lib::ktest::{KResult, TestFailure};
use crate::memory::migrate::*;
use crate::memory::page_alloc::page_alloc;
use crate::memory::pgtable::tlb_finish;
use crate::task::sched;
use crate::memory::mm_struct::{self, activate_anon, destroy_current, get_user_u64, put_user_u64, with_current, Mm};
use crate::{kassert, kassert_eq};

const BASE: u64 = 0x6000_0000;

fn fail(what: &str) -> TestFailure {
    what.into()
}

/// A fresh current address space with one anonymous VMA of `len` bytes at
/// `BASE` (`extra`: THP advice).
fn activate_with_vma(len: u64, extra: VmFlags) -> KResult {
    activate_anon(BASE, len, extra).map_err(|e| fail(&alloc::format!("activate_anon: {}", e)))
}

fn teardown() {
    destroy_current();
}

fn translate(addr: u64) -> Option<(Pfn, Level)> {
    let va = VirtAddr::try_new(addr)?;
    with_current(|mm| mm.space.translate(va)).flatten().map(|t| (t.pfn, t.level))
}

/// The value stored in word `w` of page `i` of the test.
fn pattern(i: u64, w: u64) -> u64 {
    0x5eed_0000_0000 ^ (i << 16) ^ w
}

/// Writes a known pattern into a few words of each of `nr` pages from `BASE`.
fn fill(nr: u64) {
    for i in 0..nr {
        for w in [0, 1, 255, 511] {
            // SAFETY: inside the writable VMA of the current address space.
            unsafe { put_user_u64(BASE + i * PAGE_SIZE + w * 8, pattern(i, w)) };
        }
    }
}

/// Whether page `i` from `BASE` still holds its pattern.
fn page_intact(i: u64) -> bool {
    [0, 1, 255, 511].iter().all(|&w| {
        // SAFETY: the callers' pages are mapped in the current address space.
        let v = unsafe { get_user_u64(BASE + i * PAGE_SIZE + w * 8) };
        v == pattern(i, w)
    })
}

/// Whether every one of `nr` pages still holds its pattern.
fn intact(nr: u64) -> bool {
    (0..nr).all(page_intact)
}

fn address_spaces_get_unique_ids() -> KResult {
    let a = Mm::new(GFP_KERNEL).map_err(|_| fail("new address space"))?;
    let b = Mm::new(GFP_KERNEL).map_err(|_| fail("new address space"))?;
    let (ida, idb) = (a.space.asid(), b.space.asid());
    let movable = a.space.anon_movable_ops();
    a.destroy();
    b.destroy();
    kassert!(ida != idb && ida != 0 && idb != 0, "asids {} and {}", ida, idb);
    kassert!(movable.is_some(), "anonymous pages are not registered as movable");
    Ok(())
}

fn migrate_page_moves_anon_pages_of_the_running_mm() -> KResult {
    let free_before = crate::memory::slab::nr_free_pages_settled();
    let migrated_before = PGMIGRATE_SUCCESS.load(Relaxed);
    let thp = crate::memory::pgtable::THP.mode();
    crate::memory::pgtable::THP.set_mode(mm::fault::ThpMode::Madvise);
    let r = migrate_running_mm_pages();
    crate::memory::pgtable::THP.set_mode(thp);
    let nr_migrated = r?;
    kassert_eq!(PGMIGRATE_SUCCESS.load(Relaxed) - migrated_before, nr_migrated);
    // The test's vectors are gone: their slab pages come back too.
    kassert_eq!(crate::memory::slab::nr_free_pages_settled(), free_before);
    Ok(())
}

/// Fills a few pages of a `MADV_HUGEPAGE` region, migrates them (the 2 MiB page
/// if the fault got one, else each 4 KiB page) and checks translations and
/// contents. Returns the number of migrations.
fn migrate_running_mm_pages() -> Result<u64, TestFailure> {
    const NR: u64 = 8;
    activate_with_vma(PMD_SIZE, VmFlags::HUGEPAGE)?;
    fill(NR);
    let before: Vec<_> = (0..NR).map(|i| translate(BASE + i * PAGE_SIZE)).collect();
    let mut results = Vec::new();
    match before[0] {
        Some((head, Level::Pmd)) => results.push((head, page_alloc().migrate_page(head))),
        _ => {
            for t in before.iter().flatten() {
                results.push((t.0, page_alloc().migrate_page(t.0)));
            }
        }
    }
    let after: Vec<_> = (0..NR).map(|i| translate(BASE + i * PAGE_SIZE)).collect();
    let ok = intact(NR);
    teardown();
    log::info!("migrate: moved {} block(s) of a {} mapping", results.len(), if results.len() == 1 { "2 MiB" } else { "4 KiB" });
    kassert!(!results.is_empty(), "nothing mapped");
    for (old, r) in &results {
        kassert!(matches!(r, Ok(new) if new != old), "migrating {} gave {:?}", old, r);
    }
    for i in 0..NR as usize {
        kassert!(after[i].is_some() && after[i].map(|t| t.1) == before[i].map(|t| t.1), "page {} level", i);
        kassert!(after[i] != before[i], "page {}: translate still shows {:?}", i, before[i]);
    }
    kassert!(ok, "contents changed by the migration");
    Ok(results.len() as u64)
}

fn compaction_moves_anon_pages_and_keeps_contents() -> KResult {
    let free_before = crate::memory::slab::nr_free_pages_settled();
    compact_running_mm()?;
    kassert_eq!(crate::memory::slab::nr_free_pages_settled(), free_before);
    Ok(())
}

/// Fills 16 MiB (past the small free fragments the allocator hands out first,
/// which sit in page blocks with holes or at the end of RAM that compaction
/// cannot empty), drops every odd page, migrates one page directly, then runs
/// compaction and checks that pages moved with their contents.
fn compact_running_mm() -> KResult {
    const NR: u64 = 4096;
    activate_with_vma(NR * PAGE_SIZE, VmFlags::NOHUGEPAGE)?;
    fill(NR);
    // Drop every odd page: the blocks holding the others are half free, in
    // fragments that compaction can fill (it never splits a whole free block).
    let dropped = with_current(|mm| {
        let mut tlb = crate::memory::pgtable::tlb_gather();
        let ops = mm_struct::mm_ops();
        let ok = (1..NR).step_by(2).all(|i| {
            mm.madvise(BASE + i * PAGE_SIZE, PAGE_SIZE, mm::mman::MADV_DONTNEED as u64, &ops, &mut tlb) == Ok(0)
        });
        tlb_finish(tlb);
        ok
    });
    let kept: Vec<u64> = (0..NR).step_by(2).collect();
    let before: Vec<Option<(Pfn, Level)>> = kept.iter().map(|i| translate(BASE + i * PAGE_SIZE)).collect();
    // One migration through the allocator's API, then compaction.
    let first = before[0].map(|t| t.0).unwrap_or(Pfn(0));
    let direct = page_alloc().migrate_page(first);
    let mid: Vec<Option<(Pfn, Level)>> = kept.iter().map(|i| translate(BASE + i * PAGE_SIZE)).collect();
    let migrated = PGMIGRATE_SUCCESS.load(Relaxed);
    let blocks = page_alloc().compact_memory();
    let by_compaction = PGMIGRATE_SUCCESS.load(Relaxed) - migrated;
    let after: Vec<Option<(Pfn, Level)>> = kept.iter().map(|i| translate(BASE + i * PAGE_SIZE)).collect();
    let moved = mid.iter().zip(&after).filter(|(b, a)| b != a).count();
    let all_mapped = after.iter().all(|t| matches!(t, Some((_, Level::Pte))));
    let ok = kept.iter().all(|&i| page_intact(i));
    // A page that is not anonymous is refused without harm.
    let refused = page_alloc().migrate_page(crate::memory::pgtable::kernel_root());
    teardown();
    log::info!(
        "migrate: compaction freed {} page blocks, moved {} of the test's {} anonymous pages ({} migrations)",
        blocks,
        moved,
        kept.len(),
        by_compaction
    );
    kassert_eq!(dropped, Some(true));
    kassert!(before[0].is_some(), "page 0 not mapped");
    kassert!(matches!(direct, Ok(new) if new != first), "migrate_page: {:?}", direct);
    kassert!(mid[0] != before[0], "translate still shows the old frame");
    kassert!(moved >= 1 && by_compaction >= moved as u64, "compaction moved {} pages ({} migrations)", moved, by_compaction);
    kassert!(blocks >= 1, "no page block freed");
    kassert!(all_mapped, "a page lost its mapping");
    kassert!(ok, "contents changed by compaction");
    kassert_eq!(refused, Err(MigrateError::NotMovable));
    Ok(())
}

/// The first anonymous page of each VMA of a parked task that is mapped, as
/// (address, pfn), at most 8.
fn parked_pages(pid: crate::task::sched::Pid) -> Vec<(u64, Pfn)> {
    sched::with_task(pid, |t| {
        let Some(mm) = t.mm.as_ref() else { return Vec::new() };
        mm.vmas
            .iter()
            .filter_map(|v| {
                let t = mm.space.translate(VirtAddr::try_new(v.start)?)?;
                (t.level == Level::Pte).then_some((v.start, t.pfn))
            })
            .take(8)
            .collect()
    })
    .unwrap_or_default()
}

/// A checksum of a frame's contents through the direct map.
fn frame_sum(pfn: Pfn) -> u64 {
    let p = crate::arch::x86_64::memmap::phys_to_virt(pfn.phys_addr()) as *const u64;
    (0..512).fold(0u64, |acc, i| {
        // SAFETY: `pfn` is a RAM frame mapped by the direct map; the caller
        // keeps it allocated (a parked task's page) while reading.
        let w = unsafe { p.add(i).read_volatile() };
        acc.rotate_left(7) ^ w
    })
}

fn parked_task_pages_move_and_the_program_still_runs() -> KResult {
    // Warm up once: the first process grows kernel caches (slab, vmalloc).
    let _ = crate::init::userland::run_program(&["/bin/hello"]);
    let free_before = crate::memory::slab::nr_free_pages_settled();
    let outcome = migrate_parked_task();
    kassert_eq!(crate::memory::slab::nr_free_pages_settled(), free_before);
    outcome
}

/// Loads `/bin/hello` without running it (its address space is parked in its
/// task), migrates the anonymous pages of its segments and stack, then lets it
/// run: it must print and exit 0 from the new frames.
fn migrate_parked_task() -> KResult {
    let pid = crate::entry::binfmt_elf::spawn(&["/bin/hello"], &[]).map_err(|_| fail("spawn /bin/hello"))?;
    let pages = parked_pages(pid);
    let mut moved = Vec::new();
    for &(addr, pfn) in &pages {
        let sum = frame_sum(pfn);
        let r = page_alloc().migrate_page(pfn);
        let now = parked_pages(pid).iter().find(|p| p.0 == addr).map(|p| p.1);
        moved.push((addr, pfn, r, now, sum, now.map(frame_sum)));
    }
    let status = crate::task::process::wait(pid);
    log::info!("migrate: moved {} of {} pages of parked pid {}", moved.iter().filter(|m| m.2.is_ok()).count(), pages.len(), pid);
    kassert!(!pages.is_empty(), "no anonymous page in the parked task");
    for (addr, old, r, now, sum, sum_now) in moved {
        kassert!(matches!(r, Ok(new) if Some(new) == now && new != old), "{:#x}: {} -> {:?}, maps {:?}", addr, old, r, now);
        kassert_eq!(sum_now, Some(sum));
    }
    kassert_eq!(status, Some(crate::task::process::ExitStatus::Exited(0)));
    Ok(())
}
