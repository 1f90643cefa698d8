//! Host tests of the VMA tree: unit tests per operation and edge case, and
//! property tests against a per-page model driven by a deterministic PRNG.

use super::*;
use alloc::vec;
use std::string::String;

const P: u64 = PAGE_SIZE;
const MIB: u64 = 1 << 20;
const THP: u64 = 2 * MIB;

fn rw() -> VmFlags {
    VmFlags::READ | VmFlags::WRITE | VmFlags::MAY_ALL
}
fn ro() -> VmFlags {
    VmFlags::READ | VmFlags::MAY_ALL
}
fn shared_rw() -> VmFlags {
    rw() | VmFlags::SHARED | VmFlags::MAYSHARE
}

/// Maps `pages` private anonymous pages at `start` (MAP_FIXED).
fn anon(t: &mut VmaTree, start: u64, pages: u64, flags: VmFlags) -> Mapped {
    t.mmap_region(
        start,
        pages * P,
        flags,
        VmaKind::AnonPrivate,
        linear_pgoff(start),
        MapFixed::Replace,
    )
    .expect("test mapping")
}

fn ranges(t: &VmaTree) -> Vec<(u64, u64)> {
    t.iter().map(|v| (v.start, v.end)).collect()
}

/// Every structural invariant the module promises.
fn check_invariants(t: &VmaTree) {
    let mut prev: Option<&Vma> = None;
    let mut pages = 0;
    for (key, v) in &t.vmas {
        assert_eq!(*key, v.start, "key is vm_start");
        assert!(v.start < v.end, "non-empty {v:?}");
        assert!(
            is_aligned(v.start, P) && is_aligned(v.end, P),
            "aligned {v:?}"
        );
        assert!(v.end <= TASK_SIZE, "user half {v:?}");
        if let Some(p) = prev {
            assert!(p.end <= v.start, "sorted, non-overlapping {p:?} {v:?}");
            assert!(!p.can_merge_with(v), "unmerged neighbours {p:?} {v:?}");
        }
        pages += v.nr_pages();
        prev = Some(v);
    }
    assert_eq!(t.map_count(), t.vmas.len());
    assert_eq!(t.total_vm_pages(), pages);
}

fn snapshot(t: &VmaTree) -> Vec<Vma> {
    t.iter().copied().collect()
}

// ----- Vma helpers -------------------------------------------------------------

#[test]
fn split_at_checks_boundaries_and_adjusts_pgoff() {
    let v = Vma {
        start: 0x10000,
        end: 0x14000,
        flags: rw(),
        kind: VmaKind::AnonPrivate,
        pgoff: 100,
    };
    assert_eq!(v.split_at(0x10000), None, "at start");
    assert_eq!(v.split_at(0x14000), None, "at end");
    assert_eq!(v.split_at(0x11800), None, "unaligned");
    assert_eq!(v.split_at(0x20000), None, "outside");
    let (a, b) = v.split_at(0x11000).unwrap();
    assert_eq!((a.start, a.end, a.pgoff), (0x10000, 0x11000, 100));
    assert_eq!((b.start, b.end, b.pgoff), (0x11000, 0x14000, 101));
    assert!(a.can_merge_with(&b));
    assert_eq!(v.pgoff_at(0x13fff), Some(103));
    assert_eq!(v.pgoff_at(0x14000), None);
}

#[test]
fn merge_rules() {
    let a = Vma {
        start: 0x10000,
        end: 0x12000,
        flags: rw(),
        kind: VmaKind::AnonPrivate,
        pgoff: 0x10,
    };
    let b = Vma {
        start: 0x12000,
        end: 0x13000,
        pgoff: 0x12,
        ..a
    };
    assert!(a.can_merge_with(&b));
    assert!(!b.can_merge_with(&a), "order matters");
    assert!(!a.can_merge_with(&Vma { pgoff: 0x13, ..b }), "pgoff gap");
    assert!(!a.can_merge_with(&Vma { flags: ro(), ..b }), "flags");
    assert!(
        !a.can_merge_with(&Vma {
            kind: VmaKind::Heap,
            ..b
        }),
        "kind"
    );
    assert!(
        !a.can_merge_with(&Vma {
            start: 0x13000,
            end: 0x14000,
            pgoff: 0x13,
            ..b
        }),
        "not adjacent"
    );
    let special = VmFlags::DONTEXPAND | rw();
    assert!(
        !Vma {
            flags: special,
            ..a
        }
        .can_merge_with(&Vma {
            flags: special,
            ..b
        }),
        "VM_SPECIAL"
    );
    let huge = Vma {
        pgoff: u64::MAX - 1,
        ..a
    };
    assert!(
        !huge.can_merge_with(&Vma { pgoff: 0, ..b }),
        "pgoff overflow is no wrap-around"
    );
}

// ----- lookups -----------------------------------------------------------------

#[test]
fn vma_lookup_hint_never_outlives_the_vma() {
    let mut t = VmaTree::new();
    anon(&mut t, 0x20000, 4, rw());
    assert_eq!(t.vma_lookup(0x21000).unwrap().start, 0x20000); // sets the hint
    // Split: the hinted key now ends at 0x22000; 0x23000 lies in the new VMA.
    t.mprotect_fixup(0x22000, 2 * P, VmFlags::READ).unwrap();
    assert_eq!(t.vma_lookup(0x23000).map(|v| (v.start, v.end)), Some((0x22000, 0x24000)));
    assert_eq!(t.vma_lookup(0x21000).map(|v| (v.start, v.end)), Some((0x20000, 0x22000)));
    // Unmapped: the hint's key is gone.
    t.do_munmap(0x20000, 0x2000).unwrap();
    assert!(t.vma_lookup(0x21000).is_none());
    // Mapped again with another start covering the old address.
    anon(&mut t, 0x1f000, 3, ro());
    assert_eq!(t.vma_lookup(0x21000).map(|v| v.start), Some(0x1f000));
    check_invariants(&t);
}

#[test]
fn lookups_on_empty_and_populated_tree() {
    let mut t = VmaTree::new();
    assert!(t.find_vma(0).is_none());
    assert!(t.vma_lookup(u64::MAX).is_none());
    assert!(t.find_vma_intersection(0, u64::MAX).is_none());
    anon(&mut t, 0x10000, 2, rw());
    anon(&mut t, 0x20000, 1, ro());
    assert_eq!(t.find_vma(0).unwrap().start, 0x10000);
    assert_eq!(t.find_vma(0x11fff).unwrap().start, 0x10000);
    assert_eq!(
        t.find_vma(0x12000).unwrap().start,
        0x20000,
        "end is exclusive"
    );
    assert!(t.find_vma(0x21000).is_none());
    assert!(t.find_vma(u64::MAX).is_none());
    assert!(t.vma_lookup(0x12000).is_none());
    assert_eq!(t.vma_lookup(0x20fff).unwrap().start, 0x20000);
    assert!(t.find_vma_intersection(0x12000, 0x20000).is_none());
    assert_eq!(
        t.find_vma_intersection(0x12000, 0x20001).unwrap().start,
        0x20000
    );
    assert!(
        t.find_vma_intersection(0x20000, 0x20000).is_none(),
        "empty range"
    );
    assert!(t.range_is_free(0x12000, 0xe000));
    assert!(!t.range_is_free(0x12000, 0xe001), "len rounds up");
    assert!(!t.range_is_free(TASK_SIZE, 1));
    assert!(!t.range_is_free(u64::MAX, 1));
    assert_eq!(t.first_unmapped(0x10000, 0x12000), None);
    assert_eq!(t.first_unmapped(0x10000, 0x13000), Some(0x12000));
    assert_eq!(t.first_unmapped(0x0, 0x11000), Some(0));
}

#[test]
fn vmas_in_range_yields_intersecting_vmas() {
    let mut t = VmaTree::new();
    anon(&mut t, 0x10000, 4, rw());
    anon(&mut t, 0x20000, 4, ro());
    anon(&mut t, 0x30000, 4, rw());
    let starts = |s, e| t.vmas_in_range(s, e).map(|v| v.start).collect::<Vec<_>>();
    assert_eq!(starts(0x12000, 0x31000), vec![0x10000, 0x20000, 0x30000]);
    assert_eq!(starts(0x14000, 0x20000), Vec::<u64>::new());
    assert_eq!(starts(0x13fff, 0x20001), vec![0x10000, 0x20000]);
    assert_eq!(
        starts(0x30000, 0x20000),
        Vec::<u64>::new(),
        "reversed range"
    );
    assert_eq!(starts(0, u64::MAX).len(), 3);
}

// ----- mmap ----------------------------------------------------------------------

#[test]
fn mmap_validates_arguments_without_changing_the_tree() {
    let mut t = VmaTree::new();
    anon(&mut t, 0x10000, 1, rw());
    let before = snapshot(&t);
    let k = VmaKind::AnonPrivate;
    let r = MapFixed::Replace;
    assert_eq!(
        t.mmap_region(0x20000, 0, rw(), k, 0, r),
        Err(MapError::ZeroLength)
    );
    assert_eq!(
        t.mmap_region(0x20001, P, rw(), k, 0, r),
        Err(MapError::Unaligned)
    );
    assert_eq!(
        t.mmap_region(0x20000, u64::MAX, rw(), k, 0, r),
        Err(MapError::OutOfRange)
    );
    assert_eq!(
        t.mmap_region(TASK_SIZE, P, rw(), k, 0, r),
        Err(MapError::OutOfRange)
    );
    assert_eq!(
        t.mmap_region(TASK_SIZE - P, 2 * P, rw(), k, 0, r),
        Err(MapError::OutOfRange)
    );
    assert_eq!(
        t.mmap_region(0xffff_8000_0000_0000, P, rw(), k, 0, r),
        Err(MapError::OutOfRange)
    );
    assert_eq!(
        t.mmap_region(0x20000, P, rw(), k, u64::MAX, r),
        Err(MapError::PgoffOverflow)
    );
    assert_eq!(
        t.mmap_region(0, P, rw(), k, 0, r),
        Err(MapError::BelowMmapMinAddr)
    );
    assert_eq!(
        t.mmap_region(0xf000, P, rw(), k, 0, r),
        Err(MapError::BelowMmapMinAddr)
    );
    assert_eq!(
        t.mmap_region(0x10000, P, rw(), k, 0x10, MapFixed::NoReplace),
        Err(MapError::Exists)
    );
    assert_eq!(snapshot(&t), before);
    // The last page of the user half is fine; len is rounded up.
    let m = t
        .mmap_region(TASK_SIZE - P, 1, rw(), k, linear_pgoff(TASK_SIZE - P), r)
        .unwrap();
    assert_eq!((m.vma.start, m.vma.end), (TASK_SIZE - P, TASK_SIZE));
    t.set_mmap_min_addr(0);
    assert!(
        t.mmap_region(0, P, rw(), k, 0, r).is_ok(),
        "mmap_min_addr = 0 allows page 0"
    );
    check_invariants(&t);
}

#[test]
fn mmap_merges_with_previous_next_and_both() {
    let mut t = VmaTree::new();
    anon(&mut t, 0x10000, 2, rw());
    let m = anon(&mut t, 0x12000, 1, rw());
    assert_eq!(
        (m.vma.start, m.vma.end),
        (0x10000, 0x13000),
        "merged with prev"
    );
    anon(&mut t, 0x15000, 1, rw());
    let m = anon(&mut t, 0x14000, 1, rw());
    assert_eq!(
        (m.vma.start, m.vma.end),
        (0x14000, 0x16000),
        "merged with next"
    );
    assert_eq!(t.map_count(), 2);
    let m = anon(&mut t, 0x13000, 1, rw());
    assert_eq!(
        (m.vma.start, m.vma.end, m.vma.pgoff),
        (0x10000, 0x16000, 0x10),
        "merged both sides"
    );
    assert_eq!(t.map_count(), 1);
    assert_eq!(t.total_vm_pages(), 6);
    check_invariants(&t);
}

#[test]
fn mmap_does_not_merge_incompatible_neighbours() {
    let mut t = VmaTree::new();
    anon(&mut t, 0x10000, 1, rw());
    anon(&mut t, 0x11000, 1, ro()); // flags differ
    t.mmap_region(
        0x12000,
        P,
        ro(),
        VmaKind::Heap,
        linear_pgoff(0x12000),
        MapFixed::Replace,
    )
    .unwrap();
    t.mmap_region(0x13000, P, ro(), VmaKind::AnonPrivate, 7, MapFixed::Replace)
        .unwrap(); // pgoff gap
    let special = ro() | VmFlags::DONTEXPAND;
    anon(&mut t, 0x14000, 1, special);
    anon(&mut t, 0x15000, 1, special);
    assert_eq!(t.map_count(), 6);
    check_invariants(&t);
}

#[test]
fn shared_anon_merges_only_with_same_object_and_contiguous_offset() {
    let mut t = VmaTree::new();
    let s1 = VmaKind::AnonShared(ShmId(1));
    let s2 = VmaKind::AnonShared(ShmId(2));
    let r = MapFixed::Replace;
    t.mmap_region(0x10000, 2 * P, shared_rw(), s1, 0, r)
        .unwrap();
    let m = t.mmap_region(0x12000, P, shared_rw(), s1, 2, r).unwrap();
    assert_eq!((m.vma.start, m.vma.end, m.vma.pgoff), (0x10000, 0x13000, 0));
    t.mmap_region(0x13000, P, shared_rw(), s1, 0, r).unwrap(); // same object, offset 0 again
    t.mmap_region(0x14000, P, shared_rw(), s2, 1, r).unwrap(); // other object
    assert_eq!(t.map_count(), 3);
    check_invariants(&t);
}

#[test]
fn mmap_fixed_replaces_and_reports_replaced_parts() {
    let mut t = VmaTree::new();
    anon(&mut t, 0x10000, 8, rw());
    let m = t
        .mmap_region(
            0x12000,
            2 * P,
            shared_rw(),
            VmaKind::AnonShared(ShmId(9)),
            5,
            MapFixed::Replace,
        )
        .unwrap();
    assert_eq!(m.replaced.len(), 1);
    assert_eq!(
        (m.replaced[0].start, m.replaced[0].end, m.replaced[0].pgoff),
        (0x12000, 0x14000, 0x12)
    );
    assert_eq!(
        ranges(&t),
        vec![(0x10000, 0x12000), (0x12000, 0x14000), (0x14000, 0x18000)]
    );
    assert_eq!(t.vma_lookup(0x14000).unwrap().pgoff, 0x14);
    // Replacing with a compatible mapping merges everything back.
    let m = anon(&mut t, 0x12000, 2, rw());
    assert_eq!((m.vma.start, m.vma.end), (0x10000, 0x18000));
    assert_eq!(m.replaced[0].kind, VmaKind::AnonShared(ShmId(9)));
    assert_eq!(t.map_count(), 1);
    // Replacing across several VMAs and holes.
    anon(&mut t, 0x20000, 1, ro());
    anon(&mut t, 0x22000, 1, rw());
    let m = anon(&mut t, 0x17000, 0x10, ro());
    assert_eq!(
        m.replaced
            .iter()
            .map(|v| (v.start, v.end))
            .collect::<Vec<_>>(),
        vec![(0x17000, 0x18000), (0x20000, 0x21000), (0x22000, 0x23000)]
    );
    assert_eq!(ranges(&t), vec![(0x10000, 0x17000), (0x17000, 0x27000)]);
    check_invariants(&t);
}

// ----- munmap --------------------------------------------------------------------

#[test]
fn munmap_validates_arguments() {
    let mut t = VmaTree::new();
    anon(&mut t, 0x10000, 1, rw());
    let before = snapshot(&t);
    assert_eq!(t.do_munmap(0x10001, P), Err(UnmapError::Unaligned));
    assert_eq!(t.do_munmap(0x10000, 0), Err(UnmapError::ZeroLength));
    assert_eq!(t.do_munmap(TASK_SIZE + P, P), Err(UnmapError::OutOfRange));
    assert_eq!(t.do_munmap(0x10000, TASK_SIZE), Err(UnmapError::OutOfRange));
    assert_eq!(t.do_munmap(0x10000, u64::MAX), Err(UnmapError::OutOfRange));
    assert_eq!(t.do_munmap(!(P - 1), P), Err(UnmapError::OutOfRange));
    assert_eq!(snapshot(&t), before);
    assert_eq!(t.do_munmap(0x10000, 1).unwrap().len(), 1, "len rounds up");
    assert_eq!(t.map_count(), 0);
    assert_eq!(
        t.do_munmap(0, TASK_SIZE),
        Ok(vec![]),
        "whole user half, nothing mapped"
    );
}

#[test]
fn munmap_head_tail_middle_and_exact() {
    let mut t = VmaTree::new();
    anon(&mut t, 0x10000, 8, rw());
    let removed = t.do_munmap(0x10000, 2 * P).unwrap(); // head
    assert_eq!(
        (removed[0].start, removed[0].end, removed[0].pgoff),
        (0x10000, 0x12000, 0x10)
    );
    assert_eq!(ranges(&t), vec![(0x12000, 0x18000)]);
    t.do_munmap(0x17000, P).unwrap(); // tail
    assert_eq!(ranges(&t), vec![(0x12000, 0x17000)]);
    let removed = t.do_munmap(0x14000, P).unwrap(); // middle
    assert_eq!(removed[0].pgoff, 0x14);
    assert_eq!(ranges(&t), vec![(0x12000, 0x14000), (0x15000, 0x17000)]);
    assert_eq!(t.vma_lookup(0x15000).unwrap().pgoff, 0x15);
    t.do_munmap(0x15000, 2 * P).unwrap(); // exact
    assert_eq!(ranges(&t), vec![(0x12000, 0x14000)]);
    assert_eq!(t.total_vm_pages(), 2);
    check_invariants(&t);
}

#[test]
fn munmap_across_several_vmas_and_holes() {
    let mut t = VmaTree::new();
    anon(&mut t, 0x10000, 4, rw());
    anon(&mut t, 0x16000, 2, ro());
    anon(&mut t, 0x1a000, 1, rw());
    anon(&mut t, 0x1c000, 4, ro());
    let removed = t.do_munmap(0x12000, 0xc000).unwrap(); // [0x12000, 0x1e000)
    let got: Vec<_> = removed.iter().map(|v| (v.start, v.end)).collect();
    assert_eq!(
        got,
        vec![
            (0x12000, 0x14000),
            (0x16000, 0x18000),
            (0x1a000, 0x1b000),
            (0x1c000, 0x1e000)
        ]
    );
    assert_eq!(ranges(&t), vec![(0x10000, 0x12000), (0x1e000, 0x20000)]);
    assert_eq!(t.do_munmap(0x13000, 0x5000), Ok(vec![]), "hole only");
    check_invariants(&t);
}

#[test]
fn map_count_limit_refuses_without_changes() {
    let mut t = VmaTree::new();
    anon(&mut t, 0x10000, 8, rw());
    anon(&mut t, 0x20000, 8, ro());
    t.set_max_map_count(2);
    let before = snapshot(&t);
    // Punching a hole needs a third VMA.
    assert_eq!(t.do_munmap(0x12000, P), Err(UnmapError::MapCountExceeded));
    assert_eq!(
        t.mprotect_fixup(0x12000, P, VmFlags::READ),
        Err(ProtectError::MapCountExceeded)
    );
    assert_eq!(
        t.madvise_update_vma(0x12000, P, FlagAdvice::HugePage),
        Err(MadviseError::MapCountExceeded)
    );
    assert_eq!(anon_err(&mut t, 0x30000), MapError::MapCountExceeded);
    assert_eq!(snapshot(&t), before);
    // Operations that do not add VMAs still work at the limit.
    t.do_munmap(0x10000, P).unwrap(); // head
    t.do_munmap(0x27000, P).unwrap(); // tail
    anon(&mut t, 0x18000, 1, rw()); // merges with prev
    anon(&mut t, 0x19000, 7, ro()); // fills the hole, merges with next
    t.mprotect_fixup(0x11000, 8 * P, VmFlags::READ).unwrap(); // whole VMA: merges with next
    assert_eq!(ranges(&t), vec![(0x11000, 0x27000)]);
    // Lowering the limit below the count keeps shrinking operations working.
    t.set_max_map_count(10);
    anon(&mut t, 0x40000, 1, rw());
    anon(&mut t, 0x50000, 1, rw());
    t.set_max_map_count(1);
    assert_eq!(anon_err(&mut t, 0x60000), MapError::MapCountExceeded);
    assert_eq!(t.do_munmap(0x12000, P), Err(UnmapError::MapCountExceeded));
    t.do_munmap(0x40000, P).unwrap();
    assert_eq!(t.map_count(), 2);
    check_invariants(&t);
}

fn anon_err(t: &mut VmaTree, start: u64) -> MapError {
    t.mmap_region(
        start,
        P,
        rw(),
        VmaKind::AnonPrivate,
        linear_pgoff(start),
        MapFixed::Replace,
    )
    .unwrap_err()
}

#[test]
fn default_limit_is_65530_and_enforced() {
    let mut t = VmaTree::new();
    assert_eq!(t.max_map_count(), DEFAULT_MAX_MAP_COUNT);
    t.set_max_map_count(100);
    for i in 0..100 {
        anon(&mut t, 0x10000 + i * 2 * P, 1, rw());
    }
    assert_eq!(
        anon_err(&mut t, 0x10000 + 200 * 2 * P),
        MapError::MapCountExceeded
    );
    // Filling a hole merges two VMAs into one: allowed at the limit.
    anon(&mut t, 0x11000, 1, rw());
    assert_eq!(t.map_count(), 99);
    check_invariants(&t);
}

// ----- mprotect ------------------------------------------------------------------

#[test]
fn mprotect_validates_arguments() {
    let mut t = VmaTree::new();
    anon(&mut t, 0x10000, 2, rw());
    let before = snapshot(&t);
    assert_eq!(
        t.mprotect_fixup(0x10001, P, ro()),
        Err(ProtectError::Unaligned)
    );
    assert_eq!(
        t.mprotect_fixup(0x10000, 0, VmFlags::READ),
        Ok(()),
        "zero length"
    );
    assert_eq!(
        t.mprotect_fixup(0x10000, u64::MAX, VmFlags::READ),
        Err(ProtectError::OutOfRange)
    );
    assert_eq!(
        t.mprotect_fixup(!(P - 1), P, VmFlags::READ),
        Err(ProtectError::OutOfRange)
    );
    assert_eq!(
        t.mprotect_fixup(0x10000, P, VmFlags::SHARED),
        Err(ProtectError::InvalidProt)
    );
    assert_eq!(
        t.mprotect_fixup(TASK_SIZE, P, VmFlags::READ),
        Err(ProtectError::Unmapped)
    );
    assert_eq!(snapshot(&t), before);
}

#[test]
fn mprotect_splits_at_boundaries_and_remerges() {
    let mut t = VmaTree::new();
    anon(&mut t, 0x10000, 8, rw());
    t.mprotect_fixup(0x12000, 2 * P, VmFlags::READ).unwrap(); // middle
    assert_eq!(
        ranges(&t),
        vec![(0x10000, 0x12000), (0x12000, 0x14000), (0x14000, 0x18000)]
    );
    assert_eq!(t.vma_lookup(0x12000).unwrap().flags, ro());
    assert_eq!(t.vma_lookup(0x13000).unwrap().pgoff, 0x12);
    t.mprotect_fixup(0x10000, P, VmFlags::READ).unwrap(); // head
    assert_eq!(
        ranges(&t),
        vec![
            (0x10000, 0x11000),
            (0x11000, 0x12000),
            (0x12000, 0x14000),
            (0x14000, 0x18000)
        ]
    );
    t.mprotect_fixup(0x11000, P, VmFlags::READ).unwrap(); // fills the gap: three merge
    assert_eq!(ranges(&t), vec![(0x10000, 0x14000), (0x14000, 0x18000)]);
    t.mprotect_fixup(0x17000, P, VmFlags::READ).unwrap(); // tail
    assert_eq!(
        ranges(&t),
        vec![(0x10000, 0x14000), (0x14000, 0x17000), (0x17000, 0x18000)]
    );
    t.mprotect_fixup(0x10000, 8 * P, rw() & VmFlags::ACCESS)
        .unwrap(); // whole: one VMA again
    assert_eq!(ranges(&t), vec![(0x10000, 0x18000)]);
    assert_eq!(t.vma_lookup(0x17000).unwrap().flags, rw());
    t.mprotect_fixup(0x10000, 8 * P, rw() & VmFlags::ACCESS)
        .unwrap(); // no-op
    assert_eq!(t.map_count(), 1);
    check_invariants(&t);
}

#[test]
fn mprotect_over_several_vmas_merges_them() {
    let mut t = VmaTree::new();
    anon(&mut t, 0x10000, 2, rw());
    anon(&mut t, 0x12000, 2, ro());
    anon(&mut t, 0x14000, 2, VmFlags::MAY_ALL); // PROT_NONE
    t.mprotect_fixup(0x11000, 4 * P, VmFlags::READ | VmFlags::EXEC)
        .unwrap();
    assert_eq!(
        ranges(&t),
        vec![(0x10000, 0x11000), (0x11000, 0x15000), (0x15000, 0x16000)]
    );
    t.mprotect_fixup(0x10000, 6 * P, VmFlags::empty()).unwrap();
    assert_eq!(ranges(&t), vec![(0x10000, 0x16000)]);
    assert_eq!(t.vma_lookup(0x10000).unwrap().flags, VmFlags::MAY_ALL);
    check_invariants(&t);
}

#[test]
fn mprotect_over_hole_fails_and_changes_nothing() {
    let mut t = VmaTree::new();
    anon(&mut t, 0x10000, 2, rw());
    anon(&mut t, 0x13000, 2, rw());
    let before = snapshot(&t);
    assert_eq!(
        t.mprotect_fixup(0x11000, 3 * P, VmFlags::READ),
        Err(ProtectError::Unmapped)
    );
    assert_eq!(
        t.mprotect_fixup(0x12000, P, VmFlags::READ),
        Err(ProtectError::Unmapped)
    );
    assert_eq!(
        t.mprotect_fixup(0x14000, 2 * P, VmFlags::READ),
        Err(ProtectError::Unmapped),
        "tail hole"
    );
    assert_eq!(
        t.mprotect_fixup(0xf000, 2 * P, VmFlags::READ),
        Err(ProtectError::Unmapped),
        "head hole"
    );
    assert_eq!(snapshot(&t), before);
    // The syscall layer can still get Linux's prefix behaviour.
    assert_eq!(t.first_unmapped(0x11000, 0x14000), Some(0x12000));
}

#[test]
fn mprotect_respects_may_bits() {
    let mut t = VmaTree::new();
    let no_maywrite = VmFlags::READ | VmFlags::MAYREAD | VmFlags::MAYEXEC;
    anon(&mut t, 0x10000, 2, rw());
    anon(&mut t, 0x12000, 2, no_maywrite);
    let before = snapshot(&t);
    let rw_prot = VmFlags::READ | VmFlags::WRITE;
    assert_eq!(
        t.mprotect_fixup(0x11000, 2 * P, rw_prot),
        Err(ProtectError::AccessDenied)
    );
    assert_eq!(
        snapshot(&t),
        before,
        "first VMA untouched although it would allow it"
    );
    t.mprotect_fixup(0x12000, 2 * P, VmFlags::READ | VmFlags::EXEC)
        .unwrap();
    assert_eq!(VmFlags::WRITE.missing_may_bits(), VmFlags::WRITE);
    assert!(rw().missing_may_bits().is_empty());
}

// ----- madvise -------------------------------------------------------------------

#[test]
fn madvise_hugepage_splits_and_merges_back() {
    let mut t = VmaTree::new();
    anon(&mut t, 0x10000, 8, rw());
    let a = t
        .madvise_update_vma(0x12000, 2 * P, FlagAdvice::HugePage)
        .unwrap();
    assert!(!a.had_holes);
    assert_eq!(t.map_count(), 3);
    assert!(
        t.vma_lookup(0x12000)
            .unwrap()
            .flags
            .contains(VmFlags::HUGEPAGE)
    );
    assert!(
        !t.madvise_update_vma(0x12000, 2 * P, FlagAdvice::NoHugePage)
            .unwrap()
            .had_holes
    );
    let f = t.vma_lookup(0x12000).unwrap().flags;
    assert!(f.contains(VmFlags::NOHUGEPAGE) && !f.contains(VmFlags::HUGEPAGE));
    let a = t
        .madvise_with(0x12000, 2 * P, |v| Ok(v.flags - VmFlags::NOHUGEPAGE))
        .unwrap();
    assert!(!a.had_holes);
    assert_eq!(ranges(&t), vec![(0x10000, 0x18000)]);
    check_invariants(&t);
}

#[test]
fn madvise_applies_to_mapped_parts_and_reports_holes() {
    let mut t = VmaTree::new();
    anon(&mut t, 0x10000, 2, rw());
    anon(&mut t, 0x13000, 2, rw());
    let a = t
        .madvise_update_vma(0x11000, 3 * P, FlagAdvice::Random)
        .unwrap();
    assert!(a.had_holes);
    assert!(
        t.vma_lookup(0x11000)
            .unwrap()
            .flags
            .contains(VmFlags::RAND_READ)
    );
    assert!(
        t.vma_lookup(0x13000)
            .unwrap()
            .flags
            .contains(VmFlags::RAND_READ)
    );
    assert!(
        !t.vma_lookup(0x10000)
            .unwrap()
            .flags
            .contains(VmFlags::RAND_READ)
    );
    assert!(
        !t.vma_lookup(0x14000)
            .unwrap()
            .flags
            .contains(VmFlags::RAND_READ)
    );
    let before = snapshot(&t);
    let a = t
        .madvise_update_vma(0x20000, P, FlagAdvice::Sequential)
        .unwrap();
    assert!(a.had_holes, "entirely unmapped");
    assert_eq!(snapshot(&t), before);
    check_invariants(&t);
}

#[test]
fn madvise_validates_arguments() {
    let mut t = VmaTree::new();
    anon(&mut t, 0x10000, 2, rw());
    let before = snapshot(&t);
    assert_eq!(
        t.madvise_update_vma(0x10001, P, FlagAdvice::Normal),
        Err(MadviseError::Unaligned)
    );
    assert_eq!(
        t.madvise_update_vma(0x10000, u64::MAX, FlagAdvice::Normal),
        Err(MadviseError::OutOfRange)
    );
    assert_eq!(
        t.madvise_update_vma(!(P - 1), P, FlagAdvice::Normal),
        Err(MadviseError::OutOfRange)
    );
    assert_eq!(
        t.madvise_update_vma(0x10000, 0, FlagAdvice::Normal),
        Ok(Advised { had_holes: false })
    );
    assert_eq!(snapshot(&t), before);
}

#[test]
fn madvise_flag_rules_follow_linux() {
    let v = |flags| Vma {
        start: 0x10000,
        end: 0x11000,
        flags,
        kind: VmaKind::AnonPrivate,
        pgoff: 0x10,
    };
    let n = |a: FlagAdvice, f| a.new_flags(&v(f));
    assert_eq!(
        n(FlagAdvice::Mergeable, rw()),
        Ok(rw() | VmFlags::MERGEABLE)
    );
    assert_eq!(
        n(FlagAdvice::Mergeable, shared_rw()),
        Ok(shared_rw()),
        "KSM skips shared"
    );
    assert_eq!(
        n(FlagAdvice::Unmergeable, rw() | VmFlags::MERGEABLE),
        Ok(rw())
    );
    assert_eq!(
        n(FlagAdvice::Sequential, rw() | VmFlags::RAND_READ),
        Ok(rw() | VmFlags::SEQ_READ)
    );
    assert_eq!(n(FlagAdvice::Normal, rw() | VmFlags::SEQ_READ), Ok(rw()));
    assert_eq!(n(FlagAdvice::DontFork, rw()), Ok(rw() | VmFlags::DONTCOPY));
    assert_eq!(n(FlagAdvice::DoFork, rw() | VmFlags::DONTCOPY), Ok(rw()));
    assert_eq!(
        n(FlagAdvice::DoFork, rw() | VmFlags::IO),
        Err(MadviseError::InvalidForVma)
    );
    assert_eq!(n(FlagAdvice::DontDump, rw()), Ok(rw() | VmFlags::DONTDUMP));
    assert_eq!(
        n(FlagAdvice::DoDump, rw() | VmFlags::DONTEXPAND),
        Err(MadviseError::InvalidForVma)
    );
    assert_eq!(
        n(FlagAdvice::HugePage, rw() | VmFlags::NOHUGEPAGE),
        Ok(rw() | VmFlags::HUGEPAGE)
    );

    // An error on any VMA leaves the whole range unchanged.
    let mut t = VmaTree::new();
    anon(&mut t, 0x10000, 2, rw() | VmFlags::DONTDUMP);
    anon(&mut t, 0x12000, 2, rw() | VmFlags::DONTEXPAND);
    let before = snapshot(&t);
    assert_eq!(
        t.madvise_update_vma(0x10000, 4 * P, FlagAdvice::DoDump),
        Err(MadviseError::InvalidForVma)
    );
    assert_eq!(snapshot(&t), before);
}

// ----- get_unmapped_area ---------------------------------------------------------

#[test]
fn get_unmapped_area_is_top_down_below_mmap_base() {
    let mut t = VmaTree::new();
    let base = t.mmap_base();
    assert_eq!(t.get_unmapped_area(0, 3 * P, 0), Ok(base - 3 * P));
    anon(&mut t, base - 3 * P, 3, rw());
    assert_eq!(
        t.get_unmapped_area(0, 1, 0),
        Ok(base - 4 * P),
        "len rounds up"
    );
    anon(&mut t, base - 8 * P, 4, rw()); // leaves a 1-page hole at base - 4P
    assert_eq!(
        t.get_unmapped_area(0, P, 0),
        Ok(base - 4 * P),
        "fills the hole"
    );
    assert_eq!(
        t.get_unmapped_area(0, 2 * P, 0),
        Ok(base - 10 * P),
        "too big for the hole"
    );
    assert_eq!(
        t.get_unmapped_area(0, 0, 0),
        Err(UnmappedAreaError::ZeroLength)
    );
    assert_eq!(
        t.get_unmapped_area(0, P, 3 * P),
        Err(UnmappedAreaError::BadAlignment)
    );
    assert_eq!(
        t.get_unmapped_area(0, TASK_SIZE, 0),
        Err(UnmappedAreaError::TooLarge)
    );
    assert_eq!(
        t.get_unmapped_area(0, u64::MAX, 0),
        Err(UnmappedAreaError::TooLarge)
    );
}

#[test]
fn get_unmapped_area_honours_free_hints() {
    let mut t = VmaTree::new();
    anon(&mut t, 0x40_0000, 4, rw());
    assert_eq!(t.get_unmapped_area(0x50_0000, P, 0), Ok(0x50_0000));
    assert_eq!(
        t.get_unmapped_area(0x50_0123, P, 0),
        Ok(0x50_0000),
        "rounded down"
    );
    assert_eq!(
        t.get_unmapped_area(0x1000, P, 0),
        Ok(0x10000),
        "raised to mmap_min_addr"
    );
    assert_eq!(
        t.get_unmapped_area(0x3f_f000, P, 0),
        Ok(0x3f_f000),
        "just below a VMA"
    );
    let base = t.mmap_base();
    assert_eq!(
        t.get_unmapped_area(0x3f_f000, 2 * P, 0),
        Ok(base - 2 * P),
        "overlaps: ignored"
    );
    assert_eq!(
        t.get_unmapped_area(0x40_1000, P, 0),
        Ok(base - P),
        "inside: ignored"
    );
    assert_eq!(
        t.get_unmapped_area(TASK_SIZE, P, 0),
        Ok(base - P),
        "kernel half: ignored"
    );
    assert_eq!(
        t.get_unmapped_area(TASK_SIZE - P, 2 * P, 0),
        Ok(base - 2 * P),
        "crosses TASK_SIZE"
    );
    assert_eq!(t.get_unmapped_area(u64::MAX, P, 0), Ok(base - P));
    assert_eq!(
        t.get_unmapped_area(TASK_SIZE - P, P, 0),
        Ok(TASK_SIZE - P),
        "above mmap_base is fine"
    );
}

#[test]
fn get_unmapped_area_aligns_for_thp() {
    let mut t = VmaTree::new();
    let base = t.mmap_base(); // not 2 MiB aligned
    assert!(!is_aligned(base, THP));
    let a = t.get_unmapped_area(0, 4 * MIB, THP).unwrap();
    assert!(is_aligned(a, THP));
    assert_eq!(a, align_down(base - 4 * MIB, THP));
    anon(&mut t, a, (4 * MIB) / P, rw());
    let b = t.get_unmapped_area(0, THP, THP).unwrap();
    assert_eq!(b, a - THP);
    // No aligned room anywhere: falls back to page alignment.
    let mut t = VmaTree::new();
    t.set_mmap_base(0x10000 + 3 * P);
    anon(
        &mut t,
        TASK_UNMAPPED_BASE,
        (TASK_SIZE - TASK_UNMAPPED_BASE) / P,
        rw(),
    );
    assert_eq!(t.get_unmapped_area(0, 2 * P, THP), Ok(0x10000 + P));
    assert_eq!(
        t.get_unmapped_area(0, 4 * P, THP),
        Err(UnmappedAreaError::NoSpace)
    );
}

#[test]
fn get_unmapped_area_falls_back_bottom_up() {
    let mut t = VmaTree::new();
    t.set_mmap_base(0x20000);
    anon(&mut t, 0x10000, 0x10, rw()); // fills [mmap_min_addr, mmap_base)
    assert_eq!(t.get_unmapped_area(0, P, 0), Ok(TASK_UNMAPPED_BASE));
    anon(&mut t, TASK_UNMAPPED_BASE, 1, rw());
    assert_eq!(t.get_unmapped_area(0, P, 0), Ok(TASK_UNMAPPED_BASE + P));
}

#[test]
fn get_unmapped_area_keeps_the_stack_guard_gap() {
    let mut t = VmaTree::new();
    let gap = t.stack_guard_gap();
    let top = t.mmap_base() + 16 * P;
    let stack = VmFlags::GROWSDOWN | rw();
    t.mmap_region(
        top - 4 * P,
        4 * P,
        stack,
        VmaKind::Stack,
        linear_pgoff(top - 4 * P),
        MapFixed::Replace,
    )
    .unwrap();
    // The stack starts above mmap_base but its guard gap reaches below it.
    assert_eq!(t.get_unmapped_area(0, P, 0), Ok(top - 4 * P - gap - P));
    assert_eq!(
        t.get_unmapped_area(top - 4 * P - P, P, 0),
        Ok(top - 4 * P - gap - P),
        "hint in guard"
    );
    assert_eq!(
        t.get_unmapped_area(top - 4 * P - gap - P, P, 0),
        Ok(top - 4 * P - gap - P)
    );
    t.set_stack_guard_gap(0);
    assert_eq!(t.get_unmapped_area(top - 5 * P, P, 0), Ok(top - 5 * P));
}

// ----- expand_stack ----------------------------------------------------------------

#[test]
fn expand_stack_grows_down_within_limits() {
    let mut t = VmaTree::new();
    let top = 0x7fff_0000_0000;
    let stack = VmFlags::GROWSDOWN | rw();
    let limit = 8 * MIB;
    t.mmap_region(
        top - 4 * P,
        4 * P,
        stack,
        VmaKind::Stack,
        linear_pgoff(top - 4 * P),
        MapFixed::Replace,
    )
    .unwrap();
    let v = t.expand_stack(top - 1, limit).unwrap();
    assert_eq!(v.start, top - 4 * P, "already inside");
    let v = t.expand_stack(top - 6 * P - 8, limit).unwrap();
    assert_eq!(
        (v.start, v.end, v.pgoff),
        (top - 7 * P, top, linear_pgoff(top - 7 * P))
    );
    assert_eq!(t.map_count(), 1);
    assert_eq!(t.total_vm_pages(), 7);
    assert_eq!(
        t.expand_stack(top - limit - P, limit),
        Err(ExpandStackError::StackLimit)
    );
    // Guard gap against an accessible mapping below.
    let below = top - 7 * P - t.stack_guard_gap() - 2 * P;
    anon(&mut t, below, 1, rw());
    assert_eq!(
        t.expand_stack(below + 2 * P, limit),
        Err(ExpandStackError::GuardGap)
    );
    assert_eq!(
        t.expand_stack(below + P + t.stack_guard_gap(), limit)
            .unwrap()
            .start,
        below + P + t.stack_guard_gap()
    );
    // A PROT_NONE mapping below is not protected by the gap.
    t.mprotect_fixup(below, P, VmFlags::empty()).unwrap();
    assert_eq!(t.expand_stack(below + P, limit).unwrap().start, below + P);
    check_invariants(&t);
    // Not a stack, nothing above, hostile addresses.
    assert_eq!(
        t.expand_stack(below - P, limit),
        Err(ExpandStackError::NoStack)
    );
    assert_eq!(t.expand_stack(top, limit), Err(ExpandStackError::NoStack));
    assert_eq!(
        t.expand_stack(u64::MAX, limit),
        Err(ExpandStackError::NoStack)
    );
}

#[test]
fn expand_stack_refuses_low_addresses_and_pgoff_underflow() {
    let mut t = VmaTree::new();
    t.set_stack_guard_gap(0);
    let stack = VmFlags::GROWSDOWN | rw();
    t.mmap_region(0x20000, P, stack, VmaKind::Stack, 1, MapFixed::Replace)
        .unwrap();
    assert_eq!(
        t.expand_stack(0xf000, u64::MAX),
        Err(ExpandStackError::BelowMmapMinAddr)
    );
    assert_eq!(
        t.expand_stack(0x1e000, u64::MAX),
        Err(ExpandStackError::PgoffUnderflow)
    );
    assert_eq!(t.expand_stack(0x1f000, u64::MAX).unwrap().pgoff, 0);
    // With no guard gap, growing onto an adjacent compatible stack merges.
    let mut t = VmaTree::new();
    t.set_stack_guard_gap(0);
    t.mmap_region(0x20000, P, stack, VmaKind::Stack, 0x20, MapFixed::Replace)
        .unwrap();
    t.mmap_region(0x22000, P, stack, VmaKind::Stack, 0x22, MapFixed::Replace)
        .unwrap();
    let v = t.expand_stack(0x21000, u64::MAX).unwrap();
    assert_eq!((v.start, v.end), (0x20000, 0x23000));
    check_invariants(&t);
}

// ----- /proc/PID/maps --------------------------------------------------------------

#[test]
fn vma_stays_small() {
    // The tree holds up to max_map_count VMAs and operations copy windows
    // of them into vectors: a kernel heap of a few MiB must hold 65530.
    assert!(core::mem::size_of::<Vma>() <= 48, "{}", core::mem::size_of::<Vma>());
}

#[test]
fn write_maps_matches_linux_format() {
    let mut t = VmaTree::new();
    let rx = VmFlags::READ | VmFlags::EXEC | VmFlags::MAY_ALL;
    anon(&mut t, 0x40_0000, 0x52, rx);
    t.mmap_region(
        0x65_0000,
        0x21 * P,
        rw(),
        VmaKind::Heap,
        linear_pgoff(0x65_0000),
        MapFixed::Replace,
    )
    .unwrap();
    t.mmap_region(
        0x7f01_51a7_9000,
        2 * P,
        shared_rw(),
        VmaKind::AnonShared(ShmId(1024)),
        3,
        MapFixed::Replace,
    )
    .unwrap();
    anon(&mut t, 0x7f01_51a8_0000, 1, VmFlags::MAY_ALL);
    let sp = 0x7ffe_3d63_e000;
    t.mmap_region(
        sp,
        0x21 * P,
        VmFlags::GROWSDOWN | rw(),
        VmaKind::Stack,
        linear_pgoff(sp),
        MapFixed::Replace,
    )
    .unwrap();
    static VVAR: SpecialMapping = SpecialMapping { name: "[vvar]", pfn: crate::addr::Pfn(0x100), nr_pages: 1 };
    static VDSO: SpecialMapping = SpecialMapping { name: "[vdso]", pfn: crate::addr::Pfn(0x101), nr_pages: 1 };
    let (vvar, vdso) = (&VVAR, &VDSO);
    let special = VmFlags::IO | VmFlags::PFNMAP | VmFlags::DONTEXPAND;
    t.mmap_region(0x7ffe_3d6f_0000, P, VmFlags::READ | special, VmaKind::Special(vvar), 0, MapFixed::Replace).unwrap();
    t.mmap_region(0x7ffe_3d6f_1000, P, rx | special, VmaKind::Special(vdso), 0, MapFixed::Replace).unwrap();
    let mut s = String::new();
    t.write_maps(&mut s).unwrap();
    let expected = "\
00400000-00452000 r-xp 00000000 00:00 0 
00650000-00671000 rw-p 00000000 00:00 0                                  [heap]
7f0151a79000-7f0151a7b000 rw-s 00003000 00:01 1024                       /dev/zero (deleted)
7f0151a80000-7f0151a81000 ---p 00000000 00:00 0 
7ffe3d63e000-7ffe3d65f000 rw-p 00000000 00:00 0                          [stack]
7ffe3d6f0000-7ffe3d6f1000 r--p 00000000 00:00 0                          [vvar]
7ffe3d6f1000-7ffe3d6f2000 r-xp 00000000 00:00 0                          [vdso]
";
    assert_eq!(s, expected);
    for line in s.lines().filter(|l| l.ends_with(']') || l.ends_with(')')) {
        let name_at = line.find(['[', '/']).unwrap();
        assert_eq!(name_at, 73, "name column as in Linux: {line}");
    }
}

// ----- hostile inputs --------------------------------------------------------------

#[test]
fn hostile_inputs_never_panic_and_keep_invariants() {
    let values = [
        0,
        1,
        P - 1,
        P,
        0x10000,
        0x10001,
        0x7fff_ffff,
        TASK_SIZE / 2,
        TASK_SIZE - 2 * P,
        TASK_SIZE - P,
        TASK_SIZE - 1,
        TASK_SIZE,
        TASK_SIZE + P,
        1 << 47,
        1 << 63,
        0xffff_8000_0000_0000,
        u64::MAX - P + 1,
        u64::MAX - 1,
        u64::MAX,
    ];
    let mut t = VmaTree::new();
    anon(&mut t, 0x10000, 4, rw());
    anon(&mut t, TASK_SIZE - 4 * P, 4, rw());
    t.mmap_region(
        TASK_SIZE - 64 * P,
        4 * P,
        VmFlags::GROWSDOWN | rw(),
        VmaKind::Stack,
        0,
        MapFixed::Replace,
    )
    .unwrap();
    for &a in &values {
        for &l in &values {
            let mut scratch = t.clone();
            let _ = scratch.mmap_region(
                a,
                l,
                rw(),
                VmaKind::AnonPrivate,
                a >> PAGE_SHIFT,
                MapFixed::Replace,
            );
            let _ = scratch.mmap_region(
                a,
                l,
                rw(),
                VmaKind::AnonShared(ShmId(1)),
                l,
                MapFixed::NoReplace,
            );
            check_invariants(&scratch);
            let _ = scratch.mprotect_fixup(a, l, VmFlags::READ);
            check_invariants(&scratch);
            let _ = scratch.madvise_update_vma(a, l, FlagAdvice::HugePage);
            check_invariants(&scratch);
            let _ = scratch.do_munmap(a, l);
            check_invariants(&scratch);
            let _ = scratch.expand_stack(a, l);
            check_invariants(&scratch);
            let _ = t.get_unmapped_area(a, l, 0);
            let _ = t.get_unmapped_area(a, l, THP);
            let _ = t.range_is_free(a, l);
            let _ = t.first_unmapped(a, l);
            let _ = t.find_vma_intersection(a, l);
            let _ = t.vmas_in_range(a, l).count();
            let _ = t.get_unmapped_area(a, P, l);
            scratch.set_mmap_base(a);
            scratch.set_mmap_min_addr(l);
            scratch.set_stack_guard_gap(l);
            let _ = scratch.get_unmapped_area(a, l, P);
            let _ = scratch.get_unmapped_area(0, P, 0);
        }
    }
}

// ----- property tests against a per-page model -------------------------------------

use crate::rng::XorShift64Star as Rng;

/// What the model knows about one page of the window.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
struct PageState {
    flags: VmFlags,
    kind: VmaKind,
    pgoff: u64,
}

const NPAGES: usize = 48;
const WBASE: u64 = 0x40_0000;

/// Per-page model of the window `[WBASE, WBASE + NPAGES pages)`. `gen`
/// identifies the VMA a page belongs to; it only matters for `VM_SPECIAL`
/// pages, whose VMAs never merge, so their boundaries are not implied by
/// the page states.
#[derive(Clone, PartialEq, Eq, Debug)]
struct Model {
    pages: [Option<(PageState, u64)>; NPAGES],
    next_gen: u64,
}

impl Model {
    fn new() -> Self {
        Model {
            pages: [None; NPAGES],
            next_gen: 1,
        }
    }

    fn state(&self, i: usize) -> Option<PageState> {
        self.pages[i].map(|(s, _)| s)
    }

    /// Number of VMAs a fully merged tree needs for the model.
    fn count(&self) -> usize {
        let mut count = 0;
        for i in 0..NPAGES {
            if let Some((s, g)) = &self.pages[i] {
                let continues = i > 0
                    && self.pages[i - 1]
                        .as_ref()
                        .is_some_and(|(p, pg)| continues(p, *pg, s, *g));
                count += usize::from(!continues);
            }
        }
        count
    }

    /// Gives every page in `range` whose state differs from `old` a new
    /// generation: one per old generation, as one VMA stays one piece.
    fn renumber_changed(&mut self, old: &Model, range: core::ops::Range<usize>) {
        let mut map: Vec<(u64, u64)> = Vec::new();
        for i in range {
            let (Some((s, g)), Some((os, og))) = (&mut self.pages[i], old.pages[i]) else {
                continue;
            };
            if *s == os {
                continue;
            }
            let new = match map.iter().find(|(o, _)| *o == og) {
                Some(&(_, n)) => n,
                None => {
                    map.push((og, old.next_gen + map.len() as u64));
                    old.next_gen + map.len() as u64 - 1
                }
            };
            *g = new;
        }
        self.next_gen = old.next_gen + map.len() as u64;
    }
}

/// Whether page state `b` (generation `gb`) continues the VMA of the page
/// `a` right before it.
fn continues(a: &PageState, ga: u64, b: &PageState, gb: u64) -> bool {
    let same = a.flags == b.flags && a.kind == b.kind && a.pgoff + 1 == b.pgoff;
    same && (ga == gb || !a.flags.intersects(VmFlags::SPECIAL))
}

fn page_addr(i: usize) -> u64 {
    WBASE + i as u64 * P
}

fn assert_matches_model(t: &VmaTree, m: &Model, ctx: &str) {
    check_invariants(t);
    for i in 0..NPAGES {
        let a = page_addr(i);
        let got = t.vma_lookup(a).map(|v| PageState {
            flags: v.flags,
            kind: v.kind,
            pgoff: v.pgoff_at(a).unwrap(),
        });
        assert_eq!(got, m.state(i), "page {i} ({a:#x}) after {ctx}");
    }
    assert_eq!(t.map_count(), m.count(), "count after {ctx}");
    assert!(
        t.iter()
            .all(|v| v.start >= WBASE && v.end <= page_addr(NPAGES))
    );
}

/// Pages of the returned (removed or replaced) VMA parts, in order.
fn flatten(parts: &[Vma]) -> Vec<(u64, PageState)> {
    let mut out = Vec::new();
    for v in parts {
        for a in (v.start..v.end).step_by(P as usize) {
            out.push((
                a,
                PageState {
                    flags: v.flags,
                    kind: v.kind,
                    pgoff: v.pgoff_at(a).unwrap(),
                },
            ));
        }
    }
    out
}

fn mapped_pages(m: &Model, range: core::ops::Range<usize>) -> Vec<(u64, PageState)> {
    range
        .filter_map(|i| m.state(i).map(|s| (page_addr(i), s)))
        .collect()
}

fn random_flags(rng: &mut Rng) -> VmFlags {
    let access = [
        VmFlags::empty(),
        VmFlags::READ,
        VmFlags::READ | VmFlags::WRITE,
        VmFlags::READ | VmFlags::EXEC,
    ][rng.below(4) as usize];
    let mut f = access | VmFlags::MAY_ALL;
    if rng.chance(8) {
        f -= VmFlags::WRITE | VmFlags::MAYWRITE;
    }
    if rng.chance(10) {
        f |= VmFlags::DONTEXPAND;
    }
    if rng.chance(6) {
        f |= VmFlags::HUGEPAGE;
    }
    f
}

fn random_advice(rng: &mut Rng) -> FlagAdvice {
    use FlagAdvice::*;
    [
        Normal,
        Random,
        Sequential,
        DontFork,
        DoFork,
        DontDump,
        DoDump,
        HugePage,
        NoHugePage,
        Mergeable,
        Unmergeable,
    ][rng.below(11) as usize]
}

/// Whether going from `old` to `new` breaks the map-count limit.
fn exceeds(old: &Model, new: &Model, max: usize) -> bool {
    let (o, n) = (old.count(), new.count());
    n > o && n > max
}

fn model_mmap(m: &Model, p: usize, n: usize, state: PageState) -> Model {
    let mut new = m.clone();
    for i in p..p + n {
        new.pages[i] = Some((
            PageState {
                pgoff: state.pgoff + (i - p) as u64,
                ..state
            },
            m.next_gen,
        ));
    }
    new.next_gen += 1;
    new
}

/// One random operation checked against the model; returns a label of the
/// outcome so the test can assert every path was exercised.
fn step(t: &mut VmaTree, m: &mut Model, rng: &mut Rng, n_step: usize) -> &'static str {
    let p = rng.below(NPAGES as u64) as usize;
    let n = 1 + rng.below(8.min(NPAGES - p) as u64) as usize;
    let start = page_addr(p);
    // Lengths that are not page multiples round up to the same pages.
    let len = n as u64 * P - if rng.chance(4) { rng.below(P) } else { 0 };
    let before = m.clone();
    let snap = snapshot(t);
    let op = rng.below(12);
    let ctx = std::format!("step {n_step} op {op} pages {p}+{n}");
    let outcome = match op {
        0..=3 => {
            let mut flags = random_flags(rng);
            let (kind, pgoff) = match rng.below(10) {
                0..=5 => (VmaKind::AnonPrivate, linear_pgoff(start)),
                6 => (VmaKind::Heap, linear_pgoff(start)),
                _ => {
                    flags |= VmFlags::SHARED | VmFlags::MAYSHARE;
                    let pgoff = if rng.chance(2) {
                        p as u64
                    } else {
                        rng.below(4)
                    };
                    (VmaKind::AnonShared(ShmId(1 + rng.below(2))), pgoff)
                }
            };
            let fixed = if rng.chance(3) {
                MapFixed::NoReplace
            } else {
                MapFixed::Replace
            };
            let new = model_mmap(m, p, n, PageState { flags, kind, pgoff });
            let res = t.mmap_region(start, len, flags, kind, pgoff, fixed);
            let occupied = (p..p + n).any(|i| m.pages[i].is_some());
            if fixed == MapFixed::NoReplace && occupied {
                assert_eq!(res, Err(MapError::Exists), "{ctx}");
                "mmap exists"
            } else if exceeds(m, &new, t.max_map_count()) {
                assert_eq!(res, Err(MapError::MapCountExceeded), "{ctx}");
                "mmap limit"
            } else {
                let mapped = res.unwrap_or_else(|e| panic!("{ctx}: {e:?}"));
                assert_eq!(
                    flatten(&mapped.replaced),
                    mapped_pages(m, p..p + n),
                    "{ctx}"
                );
                assert!(
                    mapped.vma.contains(start) && mapped.vma.flags == flags,
                    "{ctx}"
                );
                *m = new;
                if mapped.replaced.is_empty() {
                    "mmap"
                } else {
                    "mmap replace"
                }
            }
        }
        4..=6 => {
            let mut new = m.clone();
            new.pages[p..p + n].fill(None);
            let res = t.do_munmap(start, len);
            if exceeds(m, &new, t.max_map_count()) {
                assert_eq!(res, Err(UnmapError::MapCountExceeded), "{ctx}");
                "munmap limit"
            } else {
                let removed = res.unwrap_or_else(|e| panic!("{ctx}: {e:?}"));
                assert_eq!(flatten(&removed), mapped_pages(m, p..p + n), "{ctx}");
                *m = new;
                "munmap"
            }
        }
        7..=9 => {
            let prot = VmFlags::from_bits_truncate(rng.below(8));
            let res = t.mprotect_fixup(start, len, prot);
            let mut new = m.clone();
            let mut err = None;
            for page in &mut new.pages[p..p + n] {
                match page {
                    None => err = Some(ProtectError::Unmapped),
                    Some((s, _)) => {
                        s.flags = (s.flags - VmFlags::ACCESS) | prot;
                        if !s.flags.missing_may_bits().is_empty() && err.is_none() {
                            err = Some(ProtectError::AccessDenied);
                        }
                    }
                }
            }
            new.renumber_changed(m, p..p + n);
            if err.is_none() && exceeds(m, &new, t.max_map_count()) {
                err = Some(ProtectError::MapCountExceeded);
            }
            assert_eq!(res, err.map_or(Ok(()), Err), "{ctx}");
            match err {
                Some(ProtectError::Unmapped) => "mprotect hole",
                Some(ProtectError::AccessDenied) => "mprotect eacces",
                Some(_) => "mprotect limit",
                None => {
                    *m = new;
                    "mprotect"
                }
            }
        }
        _ => {
            let advice = random_advice(rng);
            let res = t.madvise_update_vma(start, len, advice);
            let mut new = m.clone();
            let mut err = None;
            for (page, _) in new.pages[p..p + n].iter_mut().flatten() {
                let v = Vma {
                    start: 0x10000,
                    end: 0x11000,
                    flags: page.flags,
                    kind: page.kind,
                    pgoff: 0,
                };
                match advice.new_flags(&v) {
                    Ok(f) => page.flags = f,
                    Err(e) => err = Some(e),
                }
            }
            new.renumber_changed(m, p..p + n);
            if err.is_none() && exceeds(m, &new, t.max_map_count()) {
                err = Some(MadviseError::MapCountExceeded);
            }
            let had_holes = m.pages[p..p + n].iter().any(Option::is_none);
            assert_eq!(res, err.map_or(Ok(Advised { had_holes }), Err), "{ctx}");
            match err {
                Some(MadviseError::InvalidForVma) => "madvise einval",
                Some(_) => "madvise limit",
                None => {
                    *m = new;
                    if had_holes {
                        "madvise holes"
                    } else {
                        "madvise"
                    }
                }
            }
        }
    };
    if *m == before {
        assert_eq!(snapshot(t), snap, "unchanged on error/no-op: {ctx}");
    }
    assert_matches_model(t, m, &ctx);
    outcome
}

#[test]
fn property_random_operations_match_page_model() {
    let mut seen = std::collections::BTreeSet::new();
    for seed in 1..=24u64 {
        let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
        let mut t = VmaTree::new();
        let mut m = Model::new();
        let mut max_count = 0;
        for n_step in 0..1500 {
            if rng.chance(50) {
                // Alternate between tight limits (errors happen) and none.
                let max = if rng.chance(2) {
                    1 + rng.below(8) as usize
                } else {
                    DEFAULT_MAX_MAP_COUNT
                };
                t.set_max_map_count(max);
            }
            seen.insert(step(&mut t, &mut m, &mut rng, n_step));
            max_count = max_count.max(t.map_count());
        }
        assert!(
            max_count >= 8,
            "seed {seed} built only {max_count} VMAs at most"
        );
    }
    let all = [
        "mmap",
        "mmap replace",
        "mmap exists",
        "mmap limit",
        "munmap",
        "munmap limit",
        "mprotect",
        "mprotect hole",
        "mprotect eacces",
        "mprotect limit",
        "madvise",
        "madvise holes",
        "madvise einval",
        "madvise limit",
    ];
    for label in all {
        assert!(seen.contains(label), "outcome {label:?} never exercised");
    }
}

/// Brute-force model of `get_unmapped_area`'s acceptance test for `[a, a+len)`:
/// inside the user half and ending at or below the start gap of the first VMA
/// that ends above `a` (Linux checks only that next VMA's guard gap).
fn model_fits(t: &VmaTree, a: u64, len: u64) -> bool {
    let end = a + len;
    end <= TASK_SIZE
        && t.iter()
            .find(|v| v.end > a)
            .is_none_or(|v| end <= v.start_gap(t.stack_guard_gap()))
}

#[test]
fn property_get_unmapped_area_matches_brute_force() {
    let mut rng = Rng(0x1234_5678_9abc_def1);
    let top = page_addr(NPAGES);
    for round in 0..400 {
        let mut t = VmaTree::new();
        t.set_mmap_min_addr(WBASE);
        t.set_mmap_base(top - rng.below(4) * P);
        t.set_stack_guard_gap(rng.below(4) * P);
        for _ in 0..rng.below(10) {
            let p = rng.below(NPAGES as u64);
            let n = 1 + rng.below(4.min(NPAGES as u64 - p));
            let start = page_addr(p as usize);
            let (flags, kind) = if rng.chance(4) {
                (VmFlags::GROWSDOWN | rw(), VmaKind::Stack)
            } else {
                (random_flags(&mut rng), VmaKind::AnonPrivate)
            };
            t.mmap_region(
                start,
                n * P,
                flags,
                kind,
                linear_pgoff(start),
                MapFixed::Replace,
            )
            .unwrap();
        }
        for _ in 0..20 {
            let len = (1 + rng.below(6)) * P;
            let align = if rng.chance(2) { P } else { 4 * P };
            let hint = if rng.chance(2) {
                0
            } else {
                WBASE - 2 * P + rng.below(NPAGES as u64 + 8) * P + rng.below(P)
            };
            let got = t.get_unmapped_area(hint, len, align).unwrap();
            let hinted = (hint != 0)
                .then(|| align_down(hint, P).max(WBASE))
                .filter(|&a| model_fits(&t, a, len));
            let want = hinted.unwrap_or_else(|| {
                let mut a = align_down(t.mmap_base().saturating_sub(len), align);
                while a >= WBASE && !model_fits(&t, a, len) {
                    a -= align;
                }
                if a >= WBASE && a + len <= t.mmap_base() {
                    a
                } else {
                    align_up(TASK_UNMAPPED_BASE, align).unwrap()
                }
            });
            assert_eq!(
                got,
                want,
                "round {round} hint {hint:#x} len {len:#x} align {align:#x}: {:?}",
                snapshot(&t)
            );
        }
    }
}
