//! Host tests of anonymous-page migration: [`UserMm::migrate_anon_page`] driven
//! by the allocator ([`PageAlloc::migrate_page`], `compact_memory`, defrag-mode
//! allocations) through an owner that works like the kernel's `MigrateOps`: it
//! finds the address space by the page's rmap asid (with `try_lock` only), calls
//! the migration and finishes the gather. The fake physical memory is shared by
//! the page tables, the page contents and the allocator's copies, so contents
//! are checked after every move. Every test ends by destroying the address
//! spaces and checking that every page went back to the allocator.

use super::*;
use crate::addr::Pfn;
use crate::compaction::{MigrateError, MigrateOps, Migration};
use crate::fail_page_alloc::FaultAttr;
use crate::fault::ThpMode;
use crate::gfp::{__GFP_NOWARN, GFP_KERNEL, GFP_TRANSHUGE_LIGHT};
use crate::page::{MovableOpsId, PageMeta, PageState, Rmap};
use crate::page_alloc::{AllocConfig, NoHooks, PageAlloc};
use crate::pgtable::testutil::{va, FakeMem};
use crate::pgtable::{Level, MigrateAnonError, PgtableCtl, Translation};
use crate::sync::HostPlatform;
use crate::tlb::TlbFlush;
use alloc::boxed::Box;
use alloc::vec;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Mutex;

type Alloc = PageAlloc<'static, HostPlatform>;
type Mm = UserMm<'static, Alloc, FakeMem>;

const K: u64 = PAGE_SIZE;
const BASE: u64 = 0x4000_0000;
const RW: u64 = PROT_READ | PROT_WRITE;
const FIXED: u64 = MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED;
/// Records flushes as `(start, nr_pages)`; `u64::MAX` pages for a full flush.
struct RecFlush<'r>(&'r Mutex<Vec<(u64, u64)>>);

impl TlbFlush for RecFlush<'_> {
    fn flush_range(&self, start: VirtAddr, nr_pages: u64) {
        self.0.lock().unwrap().push((start.as_u64(), nr_pages));
    }
    fn flush_all(&self) {
        self.0.lock().unwrap().push((0, u64::MAX));
    }
}

/// The owner of anonymous pages, as the kernel's `MigrateOps` does it.
struct AnonOwner {
    alloc: &'static Alloc,
    /// The address spaces (the kernel: the current one and the parked tasks').
    mms: Mutex<Vec<Mm>>,
    /// Test knob: offer the page to every address space, whatever its rmap says
    /// (exercises the checks of `migrate_anon_page` itself).
    any_space: AtomicBool,
    /// Test knob: unmap the page's address just before migrating it (the page is
    /// gone by the time the rmap is followed).
    unmap_first: AtomicBool,
    refusals: Mutex<Vec<MigrateAnonError>>,
    flushes: Mutex<Vec<(u64, u64)>>,
}

impl MigrateOps for AnonOwner {
    fn migrate(&self, m: &Migration<'_>) {
        let rmap = match self.alloc.page(m.old()).map(PageMeta::state) {
            Some(PageState::Anon { rmap, .. }) => Some(rmap),
            _ => None,
        };
        let any = self.any_space.load(Relaxed);
        if rmap.is_none() && !any {
            return;
        }
        // Compaction runs inside allocations: never wait for an address space.
        let Ok(mut mms) = self.mms.try_lock() else { return };
        for mm in mms.iter_mut() {
            if !any && Some(mm.space.asid()) != rmap.map(|r| r.asid) {
                continue;
            }
            let mut tlb = MmuGather::new();
            if self.unmap_first.load(Relaxed)
                && let Some(r) = rmap
            {
                let _ = mm.munmap(r.vpn << PAGE_SHIFT, K, &mut tlb);
            }
            let r = mm.migrate_anon_page(m, &mut tlb);
            tlb.finish(&RecFlush(&self.flushes), self.alloc);
            match r {
                Ok(()) => return,
                Err(e) => self.refusals.lock().unwrap().push(e),
            }
        }
    }
}

/// The fixture: allocator, memory, the owner with its address spaces.
struct Fx {
    alloc: &'static Alloc,
    mem: &'static FakeMem,
    ctl: &'static PgtableCtl,
    thp: &'static ThpCtl,
    owner: &'static AnonOwner,
    id: MovableOpsId,
    baseline: u64,
}

fn leak<T>(v: T) -> &'static T {
    Box::leak(Box::new(v))
}

impl Fx {
    fn new(nr_frames: u64, thp: ThpMode) -> Fx {
        Fx::with_config(nr_frames, thp, AllocConfig { min_free_kbytes: Some(0), pcp_batch: Some(15), ..AllocConfig::default() })
    }

    fn with_config(nr_frames: u64, thp: ThpMode, cfg: AllocConfig) -> Fx {
        let meta: &'static [PageMeta] =
            Box::leak((0..nr_frames).map(|_| PageMeta::new()).collect::<Vec<_>>().into_boxed_slice());
        let mem: &'static FakeMem = leak(FakeMem::default());
        let alloc: &'static Alloc =
            leak(PageAlloc::new(meta, Pfn(0), &[Pfn(0)..Pfn(nr_frames)], mem, leak(NoHooks), cfg).expect("allocator"));
        let owner = leak(AnonOwner {
            alloc,
            mms: Mutex::new(Vec::new()),
            any_space: AtomicBool::new(false),
            unmap_first: AtomicBool::new(false),
            refusals: Mutex::new(Vec::new()),
            flushes: Mutex::new(Vec::new()),
        });
        let id = alloc.register_movable_ops(owner).expect("a free movable-ops slot");
        let baseline = alloc.stats().free();
        Fx { alloc, mem, ctl: leak(PgtableCtl::new()), thp: leak(ThpCtl::new(thp)), owner, id, baseline }
    }

    /// A new address space with id `asid` whose anonymous pages are movable;
    /// returns its index.
    fn add_mm(&self, asid: u16) -> usize {
        let mut space = AddressSpace::new_user(self.alloc, self.mem, self.ctl, None, asid, GFP_KERNEL).unwrap();
        space.set_anon_movable_ops(Some(self.id));
        let mut mms = self.owner.mms.lock().unwrap();
        mms.push(UserMm::new(space));
        mms.len() - 1
    }

    /// Runs `f` on address space `i` with a gather that is finished afterwards.
    fn with_mm<R>(&self, i: usize, f: impl FnOnce(&mut Mm, &MmOps<'_, FakeMem>, &mut MmuGather) -> R) -> R {
        let ops = MmOps { thp: self.thp, clear: self.mem };
        let mut tlb = MmuGather::new();
        let r = f(&mut self.owner.mms.lock().unwrap()[i], &ops, &mut tlb);
        tlb.finish(&RecFlush(&Mutex::new(Vec::new())), self.alloc);
        r
    }

    fn mmap(&self, i: usize, addr: u64, len: u64, flags: u64) {
        let r = self.with_mm(i, |mm, ops, tlb| mm.mmap(addr, len, RW, flags, -1, 0, ops, tlb));
        assert_eq!(r, Ok(addr));
    }

    fn translate(&self, i: usize, addr: u64) -> Option<Translation> {
        self.owner.mms.lock().unwrap()[i].space.translate(va(addr))
    }

    /// A write as the CPU makes it: fault the page in, set accessed + dirty,
    /// store `value` at `addr`.
    fn write(&self, i: usize, addr: u64, value: u64) {
        if self.translate(i, addr).is_none() {
            let access = FaultAccess { write: true, exec: false, user: true };
            self.with_mm(i, |mm, ops, tlb| mm.handle_fault(addr, access, ops, tlb)).expect("fault");
        }
        assert!(self.owner.mms.lock().unwrap()[i].space.touch(va(addr), true));
        let t = self.translate(i, addr).unwrap();
        self.mem.write(t.pfn, word(addr), value);
    }

    /// A read as the CPU makes it of a mapped page (sets accessed).
    fn read(&self, i: usize, addr: u64) -> u64 {
        assert!(self.owner.mms.lock().unwrap()[i].space.touch(va(addr), false), "{addr:#x} mapped");
        self.mem.read(self.translate(i, addr).unwrap().pfn, word(addr))
    }

    fn dontneed(&self, i: usize, addr: u64, len: u64) {
        let r = self.with_mm(i, |mm, ops, tlb| mm.madvise(addr, len, MADV_DONTNEED as u64, ops, tlb));
        assert_eq!(r, Ok(0));
    }

    fn state(&self, pfn: Pfn) -> PageState {
        self.alloc.page(pfn).unwrap().state()
    }

    fn free(&self) -> u64 {
        self.alloc.stats().free()
    }

    fn refusals(&self) -> Vec<MigrateAnonError> {
        core::mem::take(&mut *self.owner.refusals.lock().unwrap())
    }

    fn check(&self) {
        self.alloc.check_consistency().unwrap_or_else(|e| panic!("inconsistent: {e:?}"));
    }

    /// Tears every address space down and checks that everything came back.
    fn finish(self) {
        let mms = core::mem::take(&mut *self.owner.mms.lock().unwrap());
        for mm in mms {
            let mut tlb = MmuGather::new();
            mm.destroy(&mut tlb);
            tlb.finish(&RecFlush(&Mutex::new(Vec::new())), self.alloc);
        }
        self.alloc.fail.disable();
        self.alloc.drain_all_pages();
        self.check();
        assert_eq!(self.free(), self.baseline, "pages leaked");
        assert_eq!(self.ctl.nr_pagetable_pages(), 0);
        assert_eq!(self.ctl.nr_anon_thps(), 0);
    }
}

fn word(addr: u64) -> usize {
    ((addr % K) / 8) as usize
}

fn anon(fx: &Fx, pfn: Pfn) -> (u32, Rmap, bool) {
    match fx.state(pfn) {
        PageState::Anon { mapcount, rmap, movable } => (mapcount, rmap, movable),
        s => panic!("{pfn} is not anonymous: {s:?}"),
    }
}

#[test]
fn faulted_anon_pages_are_movable_only_with_registered_ops() {
    let fx = Fx::new(4096, ThpMode::Never);
    let a = fx.add_mm(3);
    fx.mmap(a, BASE, 2 * K, FIXED);
    fx.write(a, BASE, 1);
    let pfn = fx.translate(a, BASE).unwrap().pfn;
    assert_eq!(anon(&fx, pfn), (1, Rmap { asid: 3, vpn: BASE >> PAGE_SHIFT }, true));
    // A space without ops (the default) faults unmovable anonymous pages.
    fx.owner.mms.lock().unwrap()[a].space.set_anon_movable_ops(None);
    fx.write(a, BASE + K, 2);
    let pfn2 = fx.translate(a, BASE + K).unwrap().pfn;
    assert!(!anon(&fx, pfn2).2);
    assert_eq!(fx.alloc.migrate_page(pfn2), Err(MigrateError::NotMovable));
    assert_eq!(fx.read(a, BASE + K), 2);
    fx.finish();
}

#[test]
fn migrate_4k_anon_page_keeps_contents_flags_and_rmap() {
    let fx = Fx::new(4096, ThpMode::Never);
    let a = fx.add_mm(5);
    fx.mmap(a, BASE, 4 * K, FIXED);
    for i in 0..4 {
        fx.write(a, BASE + i * K + 8 * i, 0x1000 + i);
    }
    // Page 1 clean (as after MADV_FREE): the dirty bit must not appear.
    let r = fx.with_mm(a, |mm, ops, tlb| mm.madvise(BASE + K, K, MADV_FREE as u64, ops, tlb));
    assert_eq!(r, Ok(0));
    // Page 2 read-only: flags other than A/D survive too.
    fx.with_mm(a, |mm, _, tlb| mm.mprotect(BASE + 2 * K, K, PROT_READ, tlb)).unwrap();
    for i in 0..3 {
        let addr = BASE + i * K;
        let before = fx.translate(a, addr).unwrap();
        let contents = fx.mem.frame(before.pfn);
        let (mapcount, rmap, movable) = anon(&fx, before.pfn);
        let free = fx.free();
        fx.owner.flushes.lock().unwrap().clear();

        let new = fx.alloc.migrate_page(before.pfn).expect("migrated");

        assert_ne!(new, before.pfn);
        let after = fx.translate(a, addr).unwrap();
        assert_eq!(after.pfn, new, "translate shows the new frame");
        assert_eq!(after.flags, before.flags, "flags (dirty/accessed included) preserved");
        assert_eq!(after.level, Level::Pte);
        assert_eq!(fx.mem.frame(new), contents, "contents copied");
        assert_eq!(anon(&fx, new), (mapcount, rmap, movable), "owner state moved");
        assert!(
            matches!(fx.state(before.pfn), PageState::Free { .. } | PageState::PcpFree { .. }),
            "old frame freed: {:?}",
            fx.state(before.pfn)
        );
        assert_eq!(fx.free(), free, "one page taken, one given back");
        assert_eq!(*fx.owner.flushes.lock().unwrap(), vec![(addr, 1)], "the address is flushed");
        assert_eq!(fx.read(a, addr + 8 * i), 0x1000 + i);
    }
    assert!(!fx.translate(a, BASE + K).unwrap().flags.contains(PteFlags::DIRTY), "clean page stays clean");
    assert!(fx.translate(a, BASE).unwrap().flags.contains(PteFlags::DIRTY));
    assert!(!fx.translate(a, BASE + 2 * K).unwrap().flags.contains(PteFlags::WRITABLE));
    // The clean lazily freed page can still be reclaimed from its new frame.
    let rss = fx.owner.mms.lock().unwrap()[a].rss_pages();
    assert_eq!(fx.with_mm(a, |mm, _, tlb| mm.reclaim_lazyfree(tlb)), 1);
    assert_eq!(fx.owner.mms.lock().unwrap()[a].rss_pages(), rss - 1);
    assert!(fx.refusals().is_empty());
    fx.check();
    fx.finish();
}

#[test]
fn migrate_thp_moves_the_pmd_mapping() {
    let fx = Fx::new(8192, ThpMode::Always);
    let a = fx.add_mm(6);
    fx.mmap(a, BASE, PMD_SIZE, FIXED);
    fx.write(a, BASE + 5 * K + 8, 55);
    fx.write(a, BASE + PMD_SIZE - 8, 77);
    let before = fx.translate(a, BASE).unwrap();
    assert_eq!(before.level, Level::Pmd);
    let head = before.pfn;
    let contents: Vec<[u64; 512]> = (0..512).map(|i| fx.mem.frame(Pfn(head.0 + i))).collect();
    let (rss, pt_pages) = {
        let mms = fx.owner.mms.lock().unwrap();
        (mms[a].rss_pages(), fx.ctl.nr_pagetable_pages())
    };
    let free = fx.free();

    let new = fx.alloc.migrate_page(head).expect("huge page migrated");

    let after = fx.translate(a, BASE).unwrap();
    assert_eq!((after.pfn, after.level, after.flags), (new, Level::Pmd, before.flags));
    assert_eq!(fx.translate(a, BASE + 5 * K).unwrap().pfn, Pfn(new.0 + 5));
    for (i, c) in contents.iter().enumerate() {
        assert_eq!(&fx.mem.frame(Pfn(new.0 + i as u64)), c, "sub-page {i}");
    }
    assert_eq!(anon(&fx, new), (1, Rmap { asid: 6, vpn: BASE >> PAGE_SHIFT }, true));
    assert!(matches!(fx.state(head), PageState::Free { .. }), "old huge page freed: {:?}", fx.state(head));
    assert_eq!(fx.free(), free);
    assert_eq!(*fx.owner.flushes.lock().unwrap(), vec![(0, u64::MAX)], "512 pages: a full flush");
    assert_eq!(fx.ctl.nr_anon_thps(), 1);
    assert_eq!(fx.ctl.nr_pagetable_pages(), pt_pages, "the deposited table stays");
    assert_eq!(fx.owner.mms.lock().unwrap()[a].rss_pages(), rss);
    // The deposit still works: a partial MADV_DONTNEED splits the moved page.
    fx.dontneed(a, BASE, K);
    assert_eq!(fx.translate(a, BASE), None);
    assert_eq!(fx.read(a, BASE + 5 * K + 8), 55);
    assert_eq!(fx.read(a, BASE + PMD_SIZE - 8), 77);
    assert_eq!(fx.translate(a, BASE + 5 * K).unwrap().pfn, Pfn(new.0 + 5));
    fx.finish();
}

#[test]
fn refusals_change_nothing_and_leak_nothing() {
    let fx = Fx::new(8192, ThpMode::Always);
    let a = fx.add_mm(7);
    fx.mmap(a, BASE, 4 * K, FIXED);
    fx.mmap(a, BASE + 2 * PMD_SIZE, PMD_SIZE, FIXED);
    fx.mmap(a, BASE + 4 * PMD_SIZE, K, MAP_SHARED | MAP_ANONYMOUS | MAP_FIXED);
    for i in 0..4 {
        fx.write(a, BASE + i * K, 0x10 + i);
    }
    fx.write(a, BASE + 2 * PMD_SIZE + 8, 0x20);
    fx.write(a, BASE + 4 * PMD_SIZE, 0x30);
    let snapshot = |fx: &Fx| -> Vec<(Option<Translation>, Option<PageState>)> {
        [BASE, BASE + K, BASE + 2 * K, BASE + 3 * K, BASE + 2 * PMD_SIZE, BASE + 4 * PMD_SIZE]
            .iter()
            .map(|&addr| {
                let t = fx.translate(a, addr);
                (t, t.map(|t| fx.state(t.pfn)))
            })
            .collect()
    };
    let pfn_at = |addr| fx.translate(a, addr).unwrap().pfn;
    let before = snapshot(&fx);
    let free = fx.free();
    let unchanged = |fx: &Fx, what: &str| {
        assert_eq!(snapshot(fx), before, "{what}: mappings and page states unchanged");
        assert_eq!(fx.free(), free, "{what}: nothing allocated or leaked");
        fx.check();
    };

    // Not movable at all: free frames, tail frames, page tables, shmem pages.
    let shm = pfn_at(BASE + 4 * PMD_SIZE);
    assert!(matches!(fx.state(shm), PageState::Allocated { .. }), "shmem pages are plain allocated");
    let root = fx.owner.mms.lock().unwrap()[a].space.root();
    let free_frame = (0..8192).map(Pfn).find(|&p| matches!(fx.state(p), PageState::Free { .. })).unwrap();
    for pfn in [free_frame, Pfn(pfn_at(BASE + 2 * PMD_SIZE).0 + 1), root, shm, Pfn(1 << 40)] {
        assert_eq!(fx.alloc.migrate_page(pfn), Err(MigrateError::NotMovable), "{pfn}");
    }
    unchanged(&fx, "not movable");

    // The address space is locked (the kernel: a fault in progress): refused.
    {
        let _held = fx.owner.mms.lock().unwrap();
        assert_eq!(fx.alloc.migrate_page(pfn_at_locked(&_held, a, BASE)), Err(MigrateError::Refused));
    }
    unchanged(&fx, "locked");
    assert!(fx.refusals().is_empty());

    // No memory for the copy.
    fx.alloc.fail.configure(FaultAttr::every_nth(1));
    assert_eq!(fx.alloc.migrate_page(pfn_at(BASE)), Err(MigrateError::NoMemory));
    fx.alloc.fail.disable();
    unchanged(&fx, "no memory");

    // Checks of migrate_anon_page itself, with the owner offering every page
    // to every address space.
    fx.owner.any_space.store(true, Relaxed);
    // A shmem page somebody marked movable: not anonymous. (It stays marked:
    // plain allocated pages have no transition back; freeing clears it.)
    fx.alloc.page(shm).unwrap().set_movable(fx.id).unwrap();
    assert_eq!(fx.alloc.migrate_page(shm), Err(MigrateError::Refused));
    assert_eq!(fx.refusals(), vec![MigrateAnonError::NotAnon]);
    unchanged(&fx, "shmem");
    // Another address space holds no such page.
    let _b = fx.add_mm(8);
    let mm_a = fx.owner.mms.lock().unwrap().swap_remove(a); // like a task whose mm is taken
    let (a_pfn, a_t) = (pfn_at_mm(&mm_a, BASE), mm_a.space.translate(va(BASE)));
    let f0 = fx.free();
    assert_eq!(fx.alloc.migrate_page(a_pfn), Err(MigrateError::Refused));
    assert_eq!(fx.refusals(), vec![MigrateAnonError::OtherSpace]);
    assert_eq!(fx.free(), f0);
    // Two address spaces with the same id (a wrapped counter): only the one
    // whose entry really maps the page may move it.
    let c = fx.add_mm(7);
    fx.mmap(c, BASE, K, FIXED);
    fx.write(c, BASE, 0xc0);
    let c_before = fx.translate(c, BASE);
    let f0 = fx.free();
    assert_eq!(fx.alloc.migrate_page(a_pfn), Err(MigrateError::Refused));
    assert_eq!(fx.refusals(), vec![MigrateAnonError::OtherSpace, MigrateAnonError::NotMapped]);
    assert_eq!(fx.free(), f0);
    assert_eq!(fx.translate(c, BASE), c_before);
    assert_eq!(fx.read(c, BASE), 0xc0);
    assert_eq!(mm_a.space.translate(va(BASE)), a_t);
    {
        let mut mms = fx.owner.mms.lock().unwrap();
        mms.push(mm_a);
        let last = mms.len() - 1;
        mms.swap(a, last); // back at index `a`
    }
    fx.owner.any_space.store(false, Relaxed);
    assert_eq!(snapshot(&fx), before, "wrong space: mappings and page states unchanged");

    // A split huge page (one mapcount per PTE) is not migrated.
    let huge = pfn_at(BASE + 2 * PMD_SIZE);
    fx.dontneed(a, BASE + 2 * PMD_SIZE + PMD_SIZE - K, K);
    assert_eq!(fx.alloc.migrate_page(huge), Err(MigrateError::Refused));
    // (Both spaces with asid 7 were asked: `c` too.)
    assert_refused(&fx, MigrateAnonError::Shared);
    // ... nor when only its first sub-page is left (mapcount 1, but a PTE).
    fx.dontneed(a, BASE + 2 * PMD_SIZE + K, PMD_SIZE - 2 * K);
    assert_eq!(anon(&fx, huge).0, 1);
    assert_eq!(fx.alloc.migrate_page(huge), Err(MigrateError::Refused));
    assert_refused(&fx, MigrateAnonError::NotMapped);
    assert_eq!(fx.read(a, BASE + 2 * PMD_SIZE + 8), 0x20);
    assert_eq!(fx.translate(a, BASE + 2 * PMD_SIZE).unwrap().pfn, huge);

    // Unmapped while migration was on its way: the owner finds the entry gone,
    // refuses, and the page is freed by the unmap; the copy target goes back.
    let victim = pfn_at(BASE + 3 * K);
    let free = fx.free();
    fx.owner.unmap_first.store(true, Relaxed);
    assert_eq!(fx.alloc.migrate_page(victim), Err(MigrateError::Refused));
    fx.owner.unmap_first.store(false, Relaxed);
    assert_refused(&fx, MigrateAnonError::NotAnon);
    assert_eq!(fx.translate(a, BASE + 3 * K), None);
    assert!(!matches!(fx.state(victim), PageState::Anon { .. }));
    assert_eq!(fx.free(), free + 1, "only the unmapped page came back");
    fx.check();
    for i in 0..3 {
        assert_eq!(fx.read(a, BASE + i * K), 0x10 + i);
    }
    assert_eq!(fx.read(a, BASE + 4 * PMD_SIZE), 0x30);
    fx.finish();
}

/// Every address space asked refused with `e`.
fn assert_refused(fx: &Fx, e: MigrateAnonError) {
    let r = fx.refusals();
    assert!(!r.is_empty() && r.iter().all(|&x| x == e), "{r:?}, expected {e:?}");
}

fn pfn_at_mm(mm: &Mm, addr: u64) -> Pfn {
    mm.space.translate(va(addr)).unwrap().pfn
}

fn pfn_at_locked(mms: &[Mm], i: usize, addr: u64) -> Pfn {
    pfn_at_mm(&mms[i], addr)
}

/// Fills memory with anonymous pages of one address space (value = page
/// index), then drops three of every four: every page block is a quarter used.
/// Returns the addresses kept.
fn fragment(fx: &Fx, a: usize, nr: u64) -> Vec<u64> {
    fx.mmap(a, BASE, nr * K, FIXED);
    for i in 0..nr {
        fx.write(a, BASE + i * K, i);
    }
    let mut kept = Vec::new();
    for i in 0..nr {
        if i % 4 == 0 {
            kept.push(BASE + i * K);
        } else {
            fx.dontneed(a, BASE + i * K, K);
        }
    }
    kept
}

#[test]
fn compact_memory_moves_anon_pages_out_of_a_block() {
    let fx = Fx::new(4096, ThpMode::Never);
    let a = fx.add_mm(9);
    let nr = fx.free() - 64; // leave room for the page tables
    let kept = fragment(&fx, a, nr);
    let pfns_before: Vec<Pfn> = kept.iter().map(|&addr| fx.translate(a, addr).unwrap().pfn).collect();
    let rss = fx.owner.mms.lock().unwrap()[a].rss_pages();
    fx.alloc.drain_all_pages();
    assert!(fx.alloc.alloc_pages(GFP_TRANSHUGE_LIGHT | __GFP_NOWARN, 9).is_err(), "fragmented");
    let migrated = fx.alloc.stats().compact_migrated;

    let freed = fx.alloc.compact_memory();

    assert!(freed >= 1, "compaction freed {freed} blocks");
    assert!(fx.refusals().is_empty(), "{:?}", fx.refusals());
    let moved = kept
        .iter()
        .zip(&pfns_before)
        .filter(|&(&addr, &old)| fx.translate(a, addr).unwrap().pfn != old)
        .count();
    // A page may move twice (its new frame's block compacted later).
    assert!(moved >= 1 && moved as u64 <= fx.alloc.stats().compact_migrated - migrated, "moved {moved}");
    for &addr in &kept {
        assert_eq!(fx.read(a, addr), (addr - BASE) / K, "contents follow the page at {addr:#x}");
        let t = fx.translate(a, addr).unwrap();
        assert_eq!(anon(&fx, t.pfn), (1, Rmap { asid: 9, vpn: addr >> PAGE_SHIFT }, true));
    }
    assert_eq!(fx.owner.mms.lock().unwrap()[a].rss_pages(), rss);
    fx.check();
    let huge = fx.alloc.alloc_pages(GFP_TRANSHUGE_LIGHT | __GFP_NOWARN, 9).expect("a whole free block");
    fx.alloc.free_pages(huge);
    fx.finish();
}

#[test]
fn defrag_mode_allocation_moves_anon_pages_instead_of_polluting() {
    let cfg = AllocConfig { min_free_kbytes: Some(0), pcp_batch: Some(1), defrag_mode: true, ..AllocConfig::default() };
    let fx = Fx::with_config(4096, ThpMode::Never, cfg);
    let a = fx.add_mm(10);
    let nr = fx.free() - 64;
    let kept = fragment(&fx, a, nr);
    fx.alloc.drain_all_pages();
    let before = fx.alloc.stats();
    let mut held = Vec::new();
    for _ in 0..400 {
        held.push(fx.alloc.alloc_pages(GFP_KERNEL, 0).expect("unmovable page"));
    }
    let s = fx.alloc.stats();
    assert!(s.compact_success > before.compact_success, "direct compaction freed a block");
    assert_eq!(s.polluting, before.polluting, "defrag mode never pollutes");
    for &addr in &kept {
        assert_eq!(fx.read(a, addr), (addr - BASE) / K);
    }
    for p in held {
        fx.alloc.free_pages(p);
    }
    fx.finish();
}
