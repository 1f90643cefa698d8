//! Host tests of the page tables: round trips, range operations across tables,
//! table freeing (cascade, knob, flush order, walker references), accounting,
//! fault injection, and a model-based random test.

use super::testutil::*;
use super::*;
use crate::fail_page_alloc::FaultAttr;
use crate::gfp::{GFP_KERNEL, GFP_NOWAIT};
use crate::pt_reclaim::Census;
use crate::tlb::{FlushPlan, MmuGather};
use alloc::string::String;
use alloc::vec::Vec;
use std::collections::BTreeMap;

type Space = AddressSpace<'static, PageAlloc<'static, HostPlatform>, FakeMem>;
use crate::sync::HostPlatform;

const K: u64 = PAGE_SIZE;
const M2: u64 = PMD_SIZE;
const G1: u64 = PUD_SIZE;
const RW: PteFlags = PteFlags::WRITABLE;

fn user(env: &Env) -> Space {
    AddressSpace::new_user(env.alloc, env.mem, env.ctl, None, 1, GFP_KERNEL).unwrap()
}

fn finish(env: &Env, tlb: MmuGather) -> (RecTlb, FlushPlan) {
    let t = env.tlb();
    let plan = tlb.finish(&t, env.alloc);
    (t, plan)
}

fn destroy(env: &Env, s: Space) {
    let mut tlb = MmuGather::new();
    s.destroy(&mut tlb);
    finish(env, tlb);
}

#[test]
fn map_translate_unmap_4k_round_trip() {
    let env = Env::new(4096);
    let before_space = env.free();
    let mut s = user(&env);
    let base = env.free();
    s.map(va(0x40_1000), Pfn(0x12345), PageSize::Size4K, RW | PteFlags::NX, GFP_KERNEL).unwrap();
    let t = s.translate(va(0x40_1abc)).unwrap();
    assert_eq!(t.phys_addr, 0x1234_5abc);
    assert_eq!(t.pfn, Pfn(0x12345));
    assert_eq!(t.level, Level::Pte);
    assert!(t.flags.contains(PteFlags::PRESENT | PteFlags::WRITABLE | PteFlags::USER | PteFlags::NX));
    assert!(s.translate(va(0x40_2000)).is_none());
    assert_eq!(env.free(), base - 3, "PUD, PMD and PTE tables");
    assert_eq!(s.census().unwrap().tables, [1, 1, 1]);

    let mut tlb = MmuGather::new();
    s.unmap(va(0x40_1000), K, GFP_KERNEL, &mut tlb).unwrap();
    assert!(s.translate(va(0x40_1000)).is_none());
    assert_eq!(tlb.nr_tables(), 3);
    assert_eq!(env.free(), base - 3, "nothing freed before the flush");
    let (rec, plan) = finish(&env, tlb);
    assert_eq!(rec.free_at_flush.borrow()[0], base - 3);
    assert!(matches!(plan, FlushPlan::Range { .. }), "{plan:?}");
    assert_eq!(env.free(), base);
    assert_eq!(s.census().unwrap(), Census::default());
    destroy(&env, s);
    assert_eq!(env.free(), before_space);
    assert_eq!(env.ctl.nr_pagetable_pages(), 0);
}

#[test]
fn map_translate_unmap_2m_round_trip() {
    let env = Env::new(4096);
    let mut s = user(&env);
    let base = env.free();
    s.map(va(0x60_0000), Pfn(0x20_0000), PageSize::Size2M, RW, GFP_KERNEL).unwrap();
    let t = s.translate(va(0x60_0000 + 0x1_2345)).unwrap();
    assert_eq!(t.level, Level::Pmd);
    assert_eq!(t.phys_addr, 0x20_0000_000 + 0x1_2345);
    assert_eq!(t.pfn, Pfn(0x20_0012));
    assert!(t.flags.contains(PteFlags::HUGE));
    assert_eq!(env.free(), base - 2, "PUD and PMD tables only");
    // A 4 KiB map under the huge page is refused.
    assert_eq!(s.map(va(0x60_1000), Pfn(1), PageSize::Size4K, RW, GFP_KERNEL), Err(MapError::AlreadyMapped));
    assert_eq!(s.map(va(0x60_0000), Pfn(0x40_0000), PageSize::Size2M, RW, GFP_KERNEL), Err(MapError::AlreadyMapped));
    let mut tlb = MmuGather::new();
    s.unmap(va(0x60_0000), M2, GFP_KERNEL, &mut tlb).unwrap();
    assert_eq!(tlb.plan(33), FlushPlan::All, "512 pages exceed the ceiling");
    finish(&env, tlb);
    assert!(s.translate(va(0x60_0000)).is_none());
    assert_eq!(env.free(), base);
    destroy(&env, s);
}

#[test]
fn hostile_input_is_refused() {
    let env = Env::new(4096);
    let mut s = user(&env);
    assert!(VirtAddr::try_new(0x0000_8000_0000_0000).is_none());
    assert!(VirtAddr::try_new(0x1234_0000_0000_0000).is_none());
    let kva = va(0xffff_8000_0000_0000);
    assert_eq!(s.map(kva, Pfn(1), PageSize::Size4K, RW, GFP_KERNEL), Err(MapError::OutOfRange));
    assert_eq!(s.map(va(0x1001), Pfn(1), PageSize::Size4K, RW, GFP_KERNEL), Err(MapError::Unaligned));
    assert_eq!(s.map(va(0x20_0000), Pfn(1), PageSize::Size2M, RW, GFP_KERNEL), Err(MapError::Unaligned));
    assert_eq!(s.map(va(0x1000), Pfn(1 << 41), PageSize::Size4K, RW, GFP_KERNEL), Err(MapError::Unaligned));
    let top = va(0x7fff_ffff_f000);
    s.map(top, Pfn(7), PageSize::Size4K, RW, GFP_KERNEL).unwrap();
    let mut tlb = MmuGather::new();
    assert_eq!(s.unmap(top, 2 * K, GFP_KERNEL, &mut tlb), Err(PteRangeError::OutOfRange));
    assert_eq!(s.unmap(top, u64::MAX & !0xfff, GFP_KERNEL, &mut tlb), Err(PteRangeError::OutOfRange));
    assert_eq!(s.unmap(top, 0, GFP_KERNEL, &mut tlb), Err(PteRangeError::ZeroLength));
    assert_eq!(s.unmap(va(0x1000), 5, GFP_KERNEL, &mut tlb), Err(PteRangeError::Unaligned));
    assert_eq!(s.unmap(kva, K, GFP_KERNEL, &mut tlb), Err(PteRangeError::OutOfRange));
    assert_eq!(s.protect(kva, K, RW, GFP_KERNEL, &mut tlb), Err(PteRangeError::OutOfRange));
    assert_eq!(
        s.map_range(va(0x1000), Pfn(u64::MAX - 2), 4 * K, PageSize::Size4K, RW, GFP_KERNEL, &mut tlb),
        Err(MapError::OutOfRange)
    );
    assert_eq!(s.split_huge_pmd(kva, GFP_KERNEL, &mut tlb), Err(SplitError::OutOfRange));
    s.unmap(top, K, GFP_KERNEL, &mut tlb).unwrap();
    finish(&env, tlb);
    destroy(&env, s);

    let mut k = AddressSpace::new_kernel(env.alloc, env.mem, env.ctl, GFP_KERNEL).unwrap();
    assert_eq!(k.map(va(0x1000), Pfn(1), PageSize::Size4K, RW, GFP_KERNEL), Err(MapError::OutOfRange));
    destroy_k(&env, k);
}

fn destroy_k(env: &Env, s: Space) {
    destroy(env, s)
}

#[test]
fn kernel_half_is_shared_and_global() {
    let env = Env::new(4096);
    let before = env.free();
    let mut k = AddressSpace::new_kernel(env.alloc, env.mem, env.ctl, GFP_KERNEL).unwrap();
    let kbase = va(0xffff_8880_0000_0000);
    k.preallocate_top_level(kbase, 512 * G1, GFP_KERNEL).unwrap();
    let mut tlb = MmuGather::new();
    k.map_range(kbase, Pfn(0), 8 * M2, PageSize::Size2M, RW | PteFlags::GLOBAL, GFP_KERNEL, &mut tlb)
        .unwrap();
    let mut u = AddressSpace::new_user(env.alloc, env.mem, env.ctl, Some(k.root()), 3, GFP_KERNEL).unwrap();
    let t = u.translate(va(0xffff_8880_0030_1000)).unwrap();
    assert_eq!(t.pfn, Pfn(0x301));
    assert!(t.flags.contains(PteFlags::GLOBAL) && !t.flags.contains(PteFlags::USER));
    // The kernel later maps more under the preallocated PUD table: user sees it.
    k.map(va(0xffff_8880_4000_0000), Pfn(9), PageSize::Size4K, RW, GFP_KERNEL).unwrap();
    assert_eq!(u.translate(va(0xffff_8880_4000_0000)).unwrap().pfn, Pfn(9));
    // Unmapping everything in the kernel never clears the shared PML4 entry.
    k.unmap(kbase, 2 * G1, GFP_KERNEL, &mut tlb).unwrap();
    assert_eq!(k.nr_tables(Level::Pud), 1);
    assert_eq!(k.nr_tables(Level::Pmd), 0);
    // User leaves are USER and never GLOBAL.
    u.map(va(0x1000), Pfn(5), PageSize::Size4K, RW | PteFlags::GLOBAL, GFP_KERNEL).unwrap();
    let f = u.translate(va(0x1000)).unwrap().flags;
    assert!(f.contains(PteFlags::USER) && !f.contains(PteFlags::GLOBAL));
    finish(&env, tlb);
    destroy(&env, u);
    destroy(&env, k);
    assert_eq!(env.free(), before);
}

#[test]
fn range_ops_span_tables() {
    let env = Env::new(4096);
    let mut s = user(&env);
    let base = env.free();
    // 6 MiB straddling a 1 GiB boundary: 4 PTE tables, 2 PMD tables, 1 PUD table.
    let start = G1 - 3 * M2 + 5 * K;
    let len = 6 * M2 - 10 * K;
    let mut tlb = MmuGather::new();
    s.map_range(va(start), Pfn(0x10_0000), len, PageSize::Size4K, RW, GFP_KERNEL, &mut tlb).unwrap();
    assert!(tlb.is_empty(), "installing into empty slots flushes nothing");
    let c = s.census().unwrap();
    assert_eq!(c.tables, [6, 2, 1]);
    assert_eq!(c.leaves[0], len / K);
    for i in (0..len / K).step_by(97) {
        assert_eq!(s.translate(va(start + i * K)).unwrap().pfn, Pfn(0x10_0000 + i));
    }
    // Protect a middle piece read-only + NX.
    s.protect(va(G1 - M2), 2 * M2, PteFlags::NX, GFP_KERNEL, &mut tlb).unwrap();
    assert!(!s.translate(va(G1)).unwrap().flags.contains(PteFlags::WRITABLE));
    assert!(s.translate(va(G1 - M2 - K)).unwrap().flags.contains(PteFlags::WRITABLE));
    assert_eq!(tlb.plan(33), FlushPlan::All);
    // Unmap across the boundary: two whole PTE tables go, the PMD tables stay.
    s.unmap(va(G1 - M2), 2 * M2, GFP_KERNEL, &mut tlb).unwrap();
    assert_eq!(s.census().unwrap().tables, [4, 2, 1]);
    let (rec, _) = finish(&env, tlb);
    assert_eq!(rec.flushes.borrow().len(), 1, "one flush for the whole batch");
    assert_eq!(env.free(), base - 7);
    let mut tlb = MmuGather::new();
    s.unmap(va(0), G1 * 2, GFP_KERNEL, &mut tlb).unwrap();
    finish(&env, tlb);
    assert_eq!(env.free(), base);
    destroy(&env, s);
}

#[test]
fn empty_tables_cascade_to_pud_and_flush_first() {
    let env = Env::new(4096);
    let mut s = user(&env);
    let base = env.free();
    // Pages in three PML4 slots, several PUD and PMD slots.
    let addrs = [0x1000, 0x20_0000, 0x4000_0000, 0x80_0000_0000, 0x80_4000_0000, 0x7f00_0000_0000];
    for (i, &a) in addrs.iter().enumerate() {
        s.map(va(a), Pfn(100 + i as u64), PageSize::Size4K, RW, GFP_KERNEL).unwrap();
    }
    let c = s.census().unwrap();
    assert_eq!(c.tables, [6, 5, 3]);
    assert_eq!(s.pgtables_bytes(), 14 * K);
    let mut tlb = MmuGather::new();
    s.unmap(va(0), KERNEL_HALF, GFP_KERNEL, &mut tlb).unwrap();
    assert_eq!(tlb.nr_tables(), 14);
    assert_eq!(env.free(), base - 14);
    assert!(tlb.freed_tables());
    let (rec, plan) = finish(&env, tlb);
    assert_eq!(plan, FlushPlan::All);
    assert_eq!(*rec.free_at_flush.borrow(), [base - 14], "flush happened before any free");
    assert_eq!(env.free(), base);
    assert_eq!([s.nr_tables(Level::Pte), s.nr_tables(Level::Pmd), s.nr_tables(Level::Pud)], [0, 0, 0]);
    assert_eq!(s.live_entries(s.root()), 0);
    destroy(&env, s);
}

#[test]
fn reclaim_knob_off_keeps_tables_until_teardown() {
    let env = Env::new(4096);
    let before = env.free();
    let mut s = user(&env);
    let base = env.free();
    env.ctl.set_pt_reclaim(false);
    let mut tlb = MmuGather::new();
    s.map_range(va(0x40_0000), Pfn(0x1000), 4 * M2, PageSize::Size4K, RW, GFP_KERNEL, &mut tlb).unwrap();
    s.unmap(va(0x40_0000), 4 * M2, GFP_KERNEL, &mut tlb).unwrap();
    assert_eq!(tlb.nr_tables(), 0);
    finish(&env, tlb);
    let c = s.census().unwrap();
    assert_eq!(c.tables, [4, 1, 1]);
    assert_eq!(c.empty_tables, 4, "the PTE tables; PMD and PUD still point at them");
    assert_eq!(env.free(), base - 6);
    // Re-faulting the range reuses the kept tables.
    s.map(va(0x40_0000), Pfn(1), PageSize::Size4K, RW, GFP_KERNEL).unwrap();
    assert_eq!(env.free(), base - 6);
    env.ctl.set_pt_reclaim(true);
    destroy(&env, s);
    assert_eq!(env.free(), before);
}

#[test]
fn split_on_partial_unmap_keeps_other_511_pages() {
    let env = Env::new(4096);
    let mut s = user(&env);
    let base = env.free();
    let hpfn = 0x40_0000;
    s.map(va(0x20_0000), Pfn(hpfn), PageSize::Size2M, RW | PteFlags::NX, GFP_KERNEL).unwrap();
    let mut tlb = MmuGather::new();
    s.unmap(va(0x20_0000 + 7 * K), K, GFP_KERNEL, &mut tlb).unwrap();
    assert_eq!(tlb.plan(33), FlushPlan::All, "the whole 2 MiB is flushed");
    finish(&env, tlb);
    for i in 0..512u64 {
        let t = s.translate(va(0x20_0000 + i * K));
        if i == 7 {
            assert!(t.is_none());
            continue;
        }
        let t = t.unwrap();
        assert_eq!((t.pfn, t.level), (Pfn(hpfn + i), Level::Pte));
        assert_eq!(t.flags - PteFlags::ACCESSED - PteFlags::DIRTY, PteFlags::PRESENT | RW | PteFlags::USER | PteFlags::NX);
    }
    assert_eq!(s.census().unwrap().tables, [1, 1, 1]);
    assert_eq!(s.live_entries(s.find_entry(0x20_0000, Level::Pte).unwrap().0), 511);
    assert_eq!(env.free(), base - 3);
    // Explicit split of a second huge page, then protect a part of a third.
    s.map(va(0x40_0000), Pfn(hpfn), PageSize::Size2M, RW, GFP_KERNEL).unwrap();
    let mut tlb = MmuGather::new();
    assert_eq!(s.split_huge_pmd(va(0x40_1000), GFP_KERNEL, &mut tlb), Ok(true));
    assert_eq!(s.split_huge_pmd(va(0x40_1000), GFP_KERNEL, &mut tlb), Ok(false));
    s.map(va(0x60_0000), Pfn(hpfn), PageSize::Size2M, RW, GFP_KERNEL).unwrap();
    s.protect(va(0x60_0000), K, PteFlags::empty(), GFP_KERNEL, &mut tlb).unwrap();
    assert!(!s.translate(va(0x60_0000)).unwrap().flags.contains(PteFlags::WRITABLE));
    assert!(s.translate(va(0x60_1000)).unwrap().flags.contains(PteFlags::WRITABLE));
    // A split that cannot get a table fails cleanly.
    s.map(va(0x80_0000), Pfn(hpfn), PageSize::Size2M, RW, GFP_KERNEL).unwrap();
    env.alloc.fail.configure(FaultAttr::every_nth(1));
    assert_eq!(s.unmap(va(0x80_0000), K, GFP_NOWAIT, &mut tlb), Err(PteRangeError::NoMemory));
    env.alloc.fail.disable();
    assert_eq!(s.translate(va(0x80_0000)).unwrap().level, Level::Pmd);
    s.census().unwrap();
    s.unmap(va(0), G1, GFP_KERNEL, &mut tlb).unwrap();
    finish(&env, tlb);
    assert_eq!(env.free(), base);
    destroy(&env, s);
}

#[test]
fn flush_threshold_small_ranges_use_invlpg() {
    let env = Env::new(4096);
    let mut s = user(&env);
    let mut tlb = MmuGather::new();
    s.map_range(va(0x10_0000), Pfn(0x5000), 64 * K, PageSize::Size4K, RW, GFP_KERNEL, &mut tlb).unwrap();
    s.unmap(va(0x10_0000), 2 * K, GFP_KERNEL, &mut tlb).unwrap();
    let (rec, _) = finish(&env, tlb);
    assert_eq!(*rec.flushes.borrow(), [Flush::Range(va(0x10_0000), 2)]);
    let mut tlb = MmuGather::new();
    s.protect(va(0x10_2000), 40 * K, PteFlags::empty(), GFP_KERNEL, &mut tlb).unwrap();
    let (rec, _) = finish(&env, tlb);
    assert_eq!(*rec.flushes.borrow(), [Flush::All]);
    // Protecting to the same permissions changes nothing and flushes nothing.
    let mut tlb = MmuGather::new();
    s.protect(va(0x10_2000), 40 * K, PteFlags::empty(), GFP_KERNEL, &mut tlb).unwrap();
    assert!(tlb.is_empty());
    let (rec, _) = finish(&env, tlb);
    assert!(rec.flushes.borrow().is_empty());
    destroy(&env, s);
}

#[test]
fn range_walks_stop_at_the_count_but_never_before_the_last_entry() {
    let env = Env::new(4096);
    let mut s = user(&env);
    // Three pages of one PTE table: two inside the range, one after it.
    for (i, idx) in [5u64, 400, 450].into_iter().enumerate() {
        s.map(va(0x20_0000 + idx * K), Pfn(100 + i as u64), PageSize::Size4K, RW, GFP_KERNEL).unwrap();
    }
    let mut tlb = MmuGather::new();
    s.unmap(va(0x20_0000), 420 * K, GFP_KERNEL, &mut tlb).unwrap();
    finish(&env, tlb);
    assert!(s.translate(va(0x20_0000 + 5 * K)).is_none());
    assert!(s.translate(va(0x20_0000 + 400 * K)).is_none(), "an entry after the first was skipped");
    assert_eq!(s.translate(va(0x20_0000 + 450 * K)).map(|t| t.pfn), Some(Pfn(102)));
    assert_eq!(s.census().unwrap().leaves, [1, 0, 0]);
    // With a walker reference the count is above the entries: the walk scans on.
    let r = s.pte_table_get(va(0x20_0000)).unwrap();
    let mut tlb = MmuGather::new();
    s.protect(va(0x20_0000), M2, PteFlags::empty(), GFP_KERNEL, &mut tlb).unwrap();
    assert!(!s.translate(va(0x20_0000 + 450 * K)).unwrap().flags.contains(PteFlags::WRITABLE));
    s.pt_put(r, &mut tlb);
    finish(&env, tlb);
    destroy(&env, s);
}

#[test]
fn emptied_tables_come_back_from_the_quicklist_after_the_flush() {
    let env = Env::new(4096);
    let mut s = user(&env);
    let base_free = env.free();
    // A page in a fresh 2 MiB slot: PUD, PMD and PTE tables.
    s.map(va(0x4000_0000), Pfn(9), PageSize::Size4K, RW, GFP_KERNEL).unwrap();
    let tables = env.ctl.nr_pagetable_pages();
    let mut tlb = MmuGather::new();
    s.madvise_dontneed(va(0x4000_0000), M2, GFP_KERNEL, &mut tlb).unwrap();
    assert_eq!(tlb.nr_tables(), 3, "PTE, PMD and PUD tables unlinked");
    assert!(env.ctl.quicklist.is_empty(), "nothing is kept before the flush");
    let t = env.tlb();
    let plan = tlb.finish_into(&t, env.alloc, Some(&env.ctl.quicklist));
    assert_ne!(plan, FlushPlan::None, "unlinked tables always flush");
    assert_eq!(env.ctl.quicklist.len(), 3);
    assert_eq!(env.ctl.nr_pagetable_pages(), tables - 3, "kept pages are not page tables");
    assert_eq!(env.free(), base_free - 3, "the three tables are kept, not freed");
    // The next slot takes them back, zero-filled, without the allocator.
    let before = env.free();
    s.map(va(0x8000_0000), Pfn(10), PageSize::Size4K, RW, GFP_KERNEL).unwrap();
    assert!(env.ctl.quicklist.is_empty());
    assert_eq!(env.free(), before, "no page came from the allocator");
    assert_eq!(s.translate(va(0x8000_0000)).map(|t| t.pfn), Some(Pfn(10)));
    assert_eq!(s.census().unwrap().tables, [1, 1, 1], "one table per level, counts consistent");
    // A table with a stray non-zero word is never kept.
    let mut tlb = MmuGather::new();
    let (pte_table, idx) = s.find_entry(0x8000_0000, Level::Pte).unwrap();
    env.mem.write(pte_table, (idx + 1) % 512, 0x8000_0000_0000_0000); // NX alone: not present
    s.madvise_dontneed(va(0x8000_0000), M2, GFP_KERNEL, &mut tlb).unwrap();
    tlb.finish_into(&env.tlb(), env.alloc, Some(&env.ctl.quicklist));
    assert_eq!(env.ctl.quicklist.len(), 2, "PMD and PUD kept, the dirty PTE table freed");
    let n = env.ctl.quicklist.drain(|p| env.alloc.free_pages(p));
    assert_eq!(n, 2);
    assert_eq!(env.free(), base_free);
    destroy(&env, s);
}

#[test]
fn walker_reference_keeps_table_alive() {
    let env = Env::new(4096);
    let mut s = user(&env);
    let base = env.free();
    s.map(va(0x30_0000), Pfn(3), PageSize::Size4K, RW, GFP_KERNEL).unwrap();
    let r = s.pte_table_get(va(0x30_0000)).unwrap();
    assert_eq!(s.live_entries(r.table()), 2, "one entry + one walker");
    // A concurrent MADV_DONTNEED (modelled: the walker dropped the lock).
    let mut tlb = MmuGather::new();
    s.madvise_dontneed(va(0x20_0000), 4 * M2, GFP_KERNEL, &mut tlb).unwrap();
    assert_eq!(tlb.nr_tables(), 0, "the referenced table and its parents stay");
    assert!(s.translate(va(0x30_0000)).is_none());
    assert_eq!(s.find_entry(0x30_0000, Level::Pte).map(|(t, _)| t), Some(r.table()));
    assert_eq!(s.live_entries(r.table()), 1);
    s.pt_put(r, &mut tlb);
    assert_eq!(tlb.nr_tables(), 3, "last reference frees PTE, PMD and PUD tables");
    finish(&env, tlb);
    assert_eq!(env.free(), base);
    assert!(s.pte_table_get(va(0x30_0000)).is_none());
    destroy(&env, s);
}

#[test]
fn accounting_vm_pte_and_meminfo() {
    let env = Env::new(4096);
    let mut s = user(&env);
    s.map(va(0x1000), Pfn(1), PageSize::Size4K, RW, GFP_KERNEL).unwrap();
    let mut out = String::new();
    s.write_vm_pte(&mut out).unwrap();
    assert_eq!(out, "VmPTE:\t      12 kB\n");
    let mut out = String::new();
    env.ctl.meminfo(&mut out).unwrap();
    assert_eq!(out, "PageTables:           16 kB\nQuicklists:            0 kB\nAnonHugePages:         0 kB\n");
    let mut out = String::new();
    s.ptdump(va(0x1000), &mut out).unwrap();
    assert!(out.contains("PML4[  0]") && out.contains("PTE [  1]") && out.contains("(leaf)"), "{out}");
    let mut out = String::new();
    s.write_ptstat(&mut out).unwrap();
    assert!(out.starts_with("pml4 1 pud 1 pmd 1 pte 1"), "{out}");
    destroy(&env, s);
    assert_eq!(env.ctl.nr_pagetable_pages(), 0);
}

#[test]
fn table_allocation_failure_leaves_no_leak() {
    let env = Env::new(4096);
    let mut s = user(&env);
    let base = env.free();
    // map: fail the 1st, 2nd or 3rd table allocation.
    for nth in 1..=3 {
        env.alloc.fail.configure(FaultAttr { times: 1, ..FaultAttr::every_nth(nth) });
        assert_eq!(s.map(va(0x7000_0000_0000), Pfn(1), PageSize::Size4K, RW, GFP_KERNEL), Err(MapError::NoMemory));
        assert_eq!(env.free(), base, "nth {nth}");
        assert_eq!(s.census().unwrap(), Census::default());
    }
    // map_range over 5 PTE tables: fail in the middle, everything is rolled back.
    for nth in 1..=7 {
        env.alloc.fail.configure(FaultAttr { times: 1, ..FaultAttr::every_nth(nth) });
        let mut tlb = MmuGather::new();
        let r = s.map_range(va(G1 - 2 * M2 - K), Pfn(0x9000), 4 * M2 + 2 * K, PageSize::Size4K, RW, GFP_KERNEL, &mut tlb);
        finish(&env, tlb);
        env.alloc.fail.disable();
        if r.is_ok() {
            assert!(nth > 7);
        } else {
            assert_eq!(r, Err(MapError::NoMemory));
            assert_eq!(env.free(), base, "nth {nth}");
            assert_eq!(s.census().unwrap(), Census::default());
            assert!(s.translate(va(G1 - 2 * M2 - K)).is_none());
        }
    }
    // A conflict in the middle of map_range rolls back too.
    s.map(va(G1 + M2), Pfn(1), PageSize::Size4K, RW, GFP_KERNEL).unwrap();
    let mut tlb = MmuGather::new();
    let r = s.map_range(va(G1 - M2), Pfn(0x9000), 4 * M2, PageSize::Size4K, RW, GFP_KERNEL, &mut tlb);
    assert_eq!(r, Err(MapError::AlreadyMapped));
    finish(&env, tlb);
    assert!(s.translate(va(G1 - M2)).is_none());
    assert_eq!(s.translate(va(G1 + M2)).unwrap().pfn, Pfn(1));
    assert_eq!(s.census().unwrap().tables, [1, 1, 1]);
    destroy(&env, s);
}

/// The model: vpn -> (pfn, writable, nx).
type Model = BTreeMap<u64, (u64, bool, bool)>;

fn check_model(s: &Space, model: &Model, windows: &[u64]) {
    let census = s.census().expect("counts exact");
    assert_eq!(census.tables, [s.nr_tables(Level::Pte), s.nr_tables(Level::Pmd), s.nr_tables(Level::Pud)]);
    for &w in windows {
        for vpn in (w / K)..(w + 4 * M2) / K {
            let got = s.translate(va(vpn * K)).map(|t| {
                (t.pfn.0, t.flags.contains(PteFlags::WRITABLE), t.flags.contains(PteFlags::NX))
            });
            assert_eq!(got, model.get(&vpn).copied(), "vpn {vpn:#x}");
        }
    }
}

fn random_ops(seed: u64, reclaim: bool) {
    let env = Env::new(4096);
    env.ctl.set_pt_reclaim(reclaim);
    let before = env.free();
    let mut s = user(&env);
    let base = env.free();
    let windows = [0u64, G1 - 2 * M2, 512 * G1 - 2 * M2];
    let mut model = Model::new();
    let mut rng = Rng(seed);
    let mut tlb = MmuGather::new();
    for step in 0..160 {
        let w = windows[rng.below(3) as usize];
        let page = rng.below(4 * M2 / K);
        let addr = w + page * K;
        let perms = |r: &mut Rng| {
            let mut f = PteFlags::empty();
            f.set(PteFlags::WRITABLE, r.below(2) == 0);
            f.set(PteFlags::NX, r.below(2) == 0);
            f
        };
        match rng.below(6) {
            0 | 1 => {
                let pfn = 0x10_0000 + rng.below(1 << 20);
                let f = perms(&mut rng);
                let r = s.map(va(addr), Pfn(pfn), PageSize::Size4K, f, GFP_KERNEL);
                if model.contains_key(&(addr / K)) {
                    assert_eq!(r, Err(MapError::AlreadyMapped), "step {step}");
                } else {
                    assert_eq!(r, Ok(()), "step {step}");
                    model.insert(addr / K, (pfn, f.contains(RW), f.contains(PteFlags::NX)));
                }
            }
            2 => {
                let haddr = addr & !(M2 - 1);
                let pfn = (0x20_0000 + rng.below(1 << 20)) & !511;
                let f = perms(&mut rng);
                let r = s.map(va(haddr), Pfn(pfn), PageSize::Size2M, f, GFP_KERNEL);
                let any = model.range(haddr / K..(haddr + M2) / K).next().is_some();
                if any {
                    assert_eq!(r, Err(MapError::AlreadyMapped), "step {step}");
                } else if r.is_ok() {
                    for i in 0..512 {
                        model.insert(haddr / K + i, (pfn + i, f.contains(RW), f.contains(PteFlags::NX)));
                    }
                } else {
                    // Only an empty table kept by the knob may be in the way.
                    assert!(!reclaim, "step {step}: {r:?}");
                }
            }
            3 | 4 => {
                let max = if rng.below(4) == 0 { 1500 } else { 40 };
                let len = (1 + rng.below(max)) * K;
                let len = len.min(w + 4 * M2 - addr);
                s.unmap(va(addr), len, GFP_KERNEL, &mut tlb).unwrap();
                let keys: alloc::vec::Vec<u64> = model.range(addr / K..(addr + len) / K).map(|(k, _)| *k).collect();
                for k in keys {
                    model.remove(&k);
                }
            }
            _ => {
                let len = ((1 + rng.below(700)) * K).min(w + 4 * M2 - addr);
                let f = perms(&mut rng);
                s.protect(va(addr), len, f, GFP_KERNEL, &mut tlb).unwrap();
                for (_, v) in model.range_mut(addr / K..(addr + len) / K) {
                    v.1 = f.contains(RW);
                    v.2 = f.contains(PteFlags::NX);
                }
            }
        }
        if rng.below(4) == 0 {
            finish(&env, core::mem::take(&mut tlb));
        }
        if step % 5 == 0 {
            check_model(&s, &model, &windows);
        } else {
            s.census().expect("counts exact");
        }
    }
    check_model(&s, &model, &windows);
    s.unmap(va(0), KERNEL_HALF, GFP_KERNEL, &mut tlb).unwrap();
    finish(&env, tlb);
    if reclaim {
        assert_eq!(env.free(), base, "every table freed");
    }
    destroy(&env, s);
    assert_eq!(env.free(), before);
    assert_eq!(env.ctl.nr_pagetable_pages(), 0);
}

#[test]
fn random_ops_match_model_with_reclaim() {
    for seed in [1, 0x1234_5678, 0xdead_beef] {
        random_ops(seed, true);
    }
}

#[test]
fn random_ops_match_model_without_reclaim() {
    for seed in [7, 99] {
        random_ops(seed, false);
    }
}

/// Physical memory whose next exchange sees the dirty bit set first, as if the
/// CPU wrote through the entry between a walker's read and its `xchg`.
struct RacyMem {
    inner: &'static FakeMem,
    dirty_on_next_xchg: core::cell::Cell<bool>,
}

impl PtMem for RacyMem {
    fn read_entry(&self, table: Pfn, index: usize) -> u64 {
        self.inner.read(table, index)
    }
    fn write_entry(&self, table: Pfn, index: usize, value: u64) {
        self.inner.write(table, index, value)
    }
    fn zero_table(&self, table: Pfn) {
        self.inner.zero(table)
    }
    fn xchg_entry(&self, table: Pfn, index: usize, value: u64) -> u64 {
        let mut old = self.inner.read(table, index);
        if self.dirty_on_next_xchg.replace(false) {
            old |= PteFlags::DIRTY.bits();
        }
        self.inner.write(table, index, value);
        old
    }
}

#[test]
fn dirty_bits_set_during_an_update_are_not_lost() {
    let env = Env::new(4096);
    let before = env.free();
    let mem: &'static RacyMem =
        alloc::boxed::Box::leak(alloc::boxed::Box::new(RacyMem { inner: env.mem, dirty_on_next_xchg: core::cell::Cell::new(false) }));
    let mut s = AddressSpace::new_user(env.alloc, mem, env.ctl, None, 1, GFP_KERNEL).unwrap();
    let page = env.alloc.alloc_pages(GFP_KERNEL, 0).unwrap();
    env.alloc.page(page.pfn()).unwrap().set_anon(crate::page::Rmap { asid: 1, vpn: 0x40 }).unwrap();
    let pfn = page.leak(); // owned by the entry
    s.map(va(0x4_0000), pfn, PageSize::Size4K, RW | PteFlags::SOFT_ANON, GFP_KERNEL).unwrap();
    assert_eq!(s.rss_pages(RssKind::Anon), 1);
    // MADV_FREE reclaim: the page was dirtied between the check and the exchange,
    // so the entry is put back and the page stays.
    mem.dirty_on_next_xchg.set(true);
    let mut tlb = MmuGather::new();
    assert_eq!(s.zap_clean_anon(va(0x4_0000), K, &mut tlb), Ok(0));
    finish(&env, tlb);
    let t = s.translate(va(0x4_0000)).unwrap();
    assert_eq!(t.pfn, pfn);
    assert!(t.flags.contains(PteFlags::DIRTY));
    // mprotect: a dirty bit set during the rewrite survives it.
    let mut tlb = MmuGather::new();
    assert_eq!(s.mkclean_anon(va(0x4_0000), K, GFP_KERNEL, &mut tlb), Ok(1));
    mem.dirty_on_next_xchg.set(true);
    s.protect(va(0x4_0000), K, PteFlags::NX, GFP_KERNEL, &mut tlb).unwrap();
    finish(&env, tlb);
    let f = s.translate(va(0x4_0000)).unwrap().flags;
    assert!(f.contains(PteFlags::DIRTY | PteFlags::NX) && !f.contains(PteFlags::WRITABLE), "{f:?}");
    // Clean and unraced: reclaim drops the page, its tables and its RSS count.
    let mut tlb = MmuGather::new();
    s.mkclean_anon(va(0x4_0000), K, GFP_KERNEL, &mut tlb).unwrap();
    assert_eq!(s.zap_clean_anon(va(0x4_0000), K, &mut tlb), Ok(1));
    finish(&env, tlb);
    assert!(s.translate(va(0x4_0000)).is_none());
    assert_eq!((s.rss_pages(RssKind::Anon), s.hiwater_rss_pages(), s.pgtables_bytes()), (0, 1, 0));
    let mut tlb = MmuGather::new();
    s.destroy(&mut tlb);
    finish(&env, tlb);
    assert_eq!(env.free(), before);
}

#[test]
fn protnone_leaves_are_mapped_but_not_present() {
    let env = Env::new(4096);
    let mut s = user(&env);
    s.map(va(0x40_0000), Pfn(0x777), PageSize::Size4K, RW | PteFlags::PROTNONE, GFP_KERNEL).unwrap();
    let t = s.translate(va(0x40_0000)).unwrap();
    assert!(t.flags.contains(PteFlags::PROTNONE) && !t.flags.contains(PteFlags::PRESENT));
    assert_eq!(s.map(va(0x40_0000), Pfn(1), PageSize::Size4K, RW, GFP_KERNEL), Err(MapError::AlreadyMapped));
    assert!(!s.touch(va(0x40_0000), false), "no access through a PROT_NONE entry");
    let mut tlb = MmuGather::new();
    s.protect(va(0x40_0000), K, RW, GFP_KERNEL, &mut tlb).unwrap();
    let f = s.translate(va(0x40_0000)).unwrap().flags;
    assert!(f.contains(PteFlags::PRESENT | PteFlags::WRITABLE) && !f.contains(PteFlags::PROTNONE), "{f:?}");
    s.protect(va(0x40_0000), K, PteFlags::PROTNONE, GFP_KERNEL, &mut tlb).unwrap();
    assert!(!s.translate(va(0x40_0000)).unwrap().flags.contains(PteFlags::PRESENT));
    s.unmap(va(0x40_0000), K, GFP_KERNEL, &mut tlb).unwrap();
    finish(&env, tlb);
    assert!(s.translate(va(0x40_0000)).is_none());
    assert_eq!(s.census().unwrap().leaves, [0, 0, 0]);
    // Only user spaces have PROT_NONE entries; both software page kinds at once
    // are refused.
    assert_eq!(
        s.map(va(0x40_0000), Pfn(2), PageSize::Size4K, PteFlags::SOFT_ANON | PteFlags::SOFT_SHMEM, GFP_KERNEL),
        Err(MapError::InvalidFlags)
    );
    destroy(&env, s);
}

std::thread_local! {
    static BATCHES: core::cell::RefCell<alloc::vec::Vec<MmuGather>> = const { core::cell::RefCell::new(alloc::vec::Vec::new()) };
}

fn stash_batch(tlb: &mut MmuGather) {
    BATCHES.with(|b| b.borrow_mut().push(tlb.take_batch()));
}

#[test]
fn batch_flush_bounds_what_a_large_unmap_queues() {
    use crate::tlb::GATHER_BATCH;
    let env = Env::new(4096);
    let mut s = user(&env);
    let base = env.free();
    // 600 PTE tables: one 4 KiB page in each 2 MiB slot (plus PMD/PUD tables).
    let slots = 600u64;
    for i in 0..slots {
        s.map(va(0x4000_0000 + i * M2), Pfn(0x10_0000 + i), PageSize::Size4K, RW, GFP_KERNEL).unwrap();
    }
    let mut tlb = MmuGather::with_batch_flush(stash_batch);
    s.unmap(va(0x4000_0000), slots * M2, GFP_KERNEL, &mut tlb).unwrap();
    let batches = BATCHES.with(|b| core::mem::take(&mut *b.borrow_mut()));
    assert_eq!(batches.len(), 1, "one early flush after {GATHER_BATCH} tables");
    assert_eq!(batches[0].nr_tables(), GATHER_BATCH);
    assert!(batches[0].range().is_some(), "the early batch carries its flush range");
    assert!(tlb.nr_tables() < GATHER_BATCH, "the gather never holds a full batch");
    // 600 PTE tables, two PMD tables (1.2 GiB from 1 GiB crosses 2 GiB), the PUD.
    assert_eq!(batches[0].nr_tables() + tlb.nr_tables(), (slots + 3) as usize);
    for b in batches {
        finish(&env, b);
    }
    finish(&env, tlb);
    assert_eq!(env.free(), base);
    destroy(&env, s);
}

#[test]
fn giant_pages_map_translate_and_refuse_partial_changes() {
    let env = Env::new(4096);
    let before = env.free();
    let mut k = AddressSpace::new_kernel(env.alloc, env.mem, env.ctl, GFP_KERNEL).unwrap();
    const BASE: u64 = 0xffff_8880_0000_0000;
    let mut tlb = MmuGather::new();
    // 4 GiB of direct map in four entries of one PUD table: no PMD or PTE table.
    let flags = RW | PteFlags::NX | PteFlags::GLOBAL;
    k.map_range(va(BASE), Pfn(0), 4 * G1, PageSize::Size1G, flags, GFP_KERNEL, &mut tlb).unwrap();
    assert!(tlb.is_empty());
    let c = k.census().unwrap();
    assert_eq!(c.tables, [0, 0, 1]);
    assert_eq!(c.leaves, [0, 0, 4]);
    let t = k.translate(va(BASE + 3 * G1 + 0x12_3456)).unwrap();
    assert_eq!(t.level, Level::Pud);
    assert_eq!(t.phys_addr, 3 * G1 + 0x12_3456);
    assert_eq!(t.pfn, Pfn((3 * G1 + 0x12_3000) >> PAGE_SHIFT));
    assert!(t.flags.contains(PteFlags::HUGE | PteFlags::NX | PteFlags::WRITABLE | PteFlags::GLOBAL));
    // A frame that is not 1 GiB aligned, and a smaller page inside a giant one.
    assert_eq!(k.map(va(BASE + 5 * G1), Pfn(512), PageSize::Size1G, RW, GFP_KERNEL), Err(MapError::Unaligned));
    assert_eq!(k.map(va(BASE + G1 + K), Pfn(1), PageSize::Size4K, RW, GFP_KERNEL), Err(MapError::AlreadyMapped));
    assert_eq!(k.map(va(BASE + G1), Pfn(0), PageSize::Size1G, RW, GFP_KERNEL), Err(MapError::AlreadyMapped));
    // Giant pages are never split: partial changes fail and change nothing.
    assert_eq!(k.unmap(va(BASE + G1), M2, GFP_KERNEL, &mut tlb), Err(PteRangeError::PartialGiantPage));
    assert_eq!(k.protect(va(BASE + G1 + M2), K, PteFlags::NX, GFP_KERNEL, &mut tlb), Err(PteRangeError::PartialGiantPage));
    assert!(k.translate(va(BASE + G1 + M2)).unwrap().flags.contains(PteFlags::WRITABLE));
    assert_eq!(k.census().unwrap().leaves, [0, 0, 4]);
    // Whole giant pages can be protected and unmapped.
    k.protect(va(BASE + 2 * G1), G1, PteFlags::NX, GFP_KERNEL, &mut tlb).unwrap();
    let t = k.translate(va(BASE + 2 * G1 + 5)).unwrap();
    assert!(!t.flags.contains(PteFlags::WRITABLE) && t.flags.contains(PteFlags::HUGE));
    k.unmap(va(BASE), G1, GFP_KERNEL, &mut tlb).unwrap();
    assert!(k.translate(va(BASE + 0x1000)).is_none());
    assert_eq!(k.census().unwrap().leaves, [0, 0, 3]);
    let (rec, _) = finish(&env, tlb);
    assert!(!rec.flushes.borrow().is_empty(), "the protect and the unmap are flushed");
    destroy(&env, k);
    assert_eq!(env.free(), before);
}

#[test]
fn walk_leaves_finds_every_leaf_of_a_foreign_tree() {
    let env = Env::new(4096);
    let mut k = AddressSpace::new_kernel(env.alloc, env.mem, env.ctl, GFP_KERNEL).unwrap();
    const BASE: u64 = 0xffff_8880_0000_0000;
    const IMAGE: u64 = 0xffff_ffff_8000_0000;
    let mut tlb = MmuGather::new();
    k.map_range(va(BASE), Pfn(0), 2 * G1, PageSize::Size1G, RW, GFP_KERNEL, &mut tlb).unwrap();
    k.map(va(BASE + 4 * G1), Pfn(512), PageSize::Size2M, RW, GFP_KERNEL).unwrap();
    k.map(va(IMAGE), Pfn(7), PageSize::Size4K, PteFlags::empty(), GFP_KERNEL).unwrap();
    k.map(va(IMAGE + 3 * K), Pfn(9), PageSize::Size4K, RW | PteFlags::NX, GFP_KERNEL).unwrap();
    let mut seen = Vec::new();
    walk_leaves(env.mem, k.root(), KERNEL_PML4_START..PTRS_PER_TABLE, &mut |l| seen.push((l.va.as_u64(), l.pfn, l.size)));
    assert_eq!(
        seen,
        [
            (BASE, Pfn(0), PageSize::Size1G),
            (BASE + G1, Pfn(G1 >> PAGE_SHIFT), PageSize::Size1G),
            (BASE + 4 * G1, Pfn(512), PageSize::Size2M),
            (IMAGE, Pfn(7), PageSize::Size4K),
            (IMAGE + 3 * K, Pfn(9), PageSize::Size4K),
        ]
    );
    let mut flags = Vec::new();
    walk_leaves(env.mem, k.root(), 511..512, &mut |l| flags.push(l.flags & (RW | PteFlags::NX)));
    assert_eq!(flags, [PteFlags::empty(), RW | PteFlags::NX]);
    finish(&env, tlb);
    destroy(&env, k);
}
