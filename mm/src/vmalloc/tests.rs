//! Host tests of vmalloc: real buddy allocator, real page tables over fake memory,
//! failure injection at every allocation.

use alloc::string::String;
use alloc::vec::Vec;
use core::cell::{Cell, RefCell};
use std::boxed::Box;

use super::*;
use crate::gfp::*;
use crate::page::{PageMeta, PageState};
use crate::page_alloc::PageAlloc;
use crate::pgtable::testutil::{Env, FakeMem, RecTlb};
use crate::pgtable::{Level, PgtableCtl};

/// A `PtAlloc` that records every request's flags and can fail the k-th.
struct FailAt {
    inner: &'static PageAlloc<'static>,
    calls: Cell<usize>,
    fail_at: Cell<Option<usize>>,
    gfps: RefCell<Vec<Gfp>>,
}

impl FailAt {
    fn new(inner: &'static PageAlloc<'static>) -> &'static FailAt {
        Box::leak(Box::new(FailAt { inner, calls: Cell::new(0), fail_at: Cell::new(None), gfps: RefCell::default() }))
    }
    fn arm(&self, k: Option<usize>) {
        self.calls.set(0);
        self.fail_at.set(k);
        self.gfps.borrow_mut().clear();
    }
}

impl PtAlloc for FailAt {
    fn alloc_pages(&self, gfp: Gfp, order: usize) -> Result<Pages, AllocError> {
        let n = self.calls.get();
        self.calls.set(n + 1);
        self.gfps.borrow_mut().push(gfp);
        if self.fail_at.get() == Some(n) {
            return Err(AllocError::Injected);
        }
        self.inner.alloc_pages(gfp, order)
    }
    fn free_pages(&self, pages: Pages) {
        self.inner.free_pages(pages)
    }
    fn page(&self, pfn: Pfn) -> Option<&PageMeta> {
        self.inner.page(pfn)
    }
    fn totalram_pages(&self) -> u64 {
        self.inner.totalram_pages()
    }
}

/// Bookkeeping that records flags and can fail the k-th request, or the first n.
#[derive(Default)]
struct Book {
    calls: Cell<usize>,
    fail_at: Cell<Option<usize>>,
    fail_first: Cell<usize>,
    stalls: Cell<u64>,
    gfps: RefCell<Vec<Gfp>>,
}

impl Book {
    fn arm(&self, k: Option<usize>) {
        self.calls.set(0);
        self.fail_at.set(k);
        self.fail_first.set(0);
        self.stalls.set(0);
        self.gfps.borrow_mut().clear();
    }
    fn fail_first(&self, n: usize) {
        self.arm(None);
        self.fail_first.set(n);
    }
}

impl VmallocBookkeeping for Book {
    fn try_vec<T>(&self, gfp: Gfp, capacity: usize) -> Result<Vec<T>, AllocError> {
        let n = self.calls.get();
        self.calls.set(n + 1);
        self.gfps.borrow_mut().push(gfp);
        if self.fail_at.get() == Some(n) || n < self.fail_first.get() {
            return Err(AllocError::Injected);
        }
        let mut v = Vec::new();
        v.try_reserve_exact(capacity).map_err(|_| AllocError::NoMemory)?;
        Ok(v)
    }
    fn nofail_stall(&self, _gfp: Gfp, _capacity: usize, tries: u64) {
        assert_eq!(tries % NOFAIL_STALL_INTERVAL, 0);
        self.stalls.set(self.stalls.get() + 1);
    }
}

type Space = AddressSpace<'static, FailAt, FakeMem>;

struct Fx {
    env: Env,
    pt: &'static FailAt,
    data: &'static FailAt,
    ks: RefCell<Space>,
    book: Book,
    tlb: RecTlb,
    vm: Vmalloc,
    /// Free pages right after creating the space (for the final teardown check).
    initial_free: u64,
}

impl Fx {
    fn new() -> Fx {
        Self::with(Vmalloc::new())
    }

    fn with(vm: Vmalloc) -> Fx {
        let env = Env::new(8192);
        let initial_free = env.free();
        let pt = FailAt::new(env.alloc);
        let data = FailAt::new(env.alloc);
        let ctl: &'static PgtableCtl = env.ctl;
        let mut ks = AddressSpace::new_kernel(pt, env.mem, ctl, GFP_KERNEL).unwrap();
        vm.preallocate_page_tables(&mut ks, GFP_KERNEL).unwrap();
        let tlb = env.tlb();
        Fx { env, pt, data, ks: RefCell::new(ks), book: Book::default(), tlb, vm, initial_free }
    }

    fn deps(&self) -> VmallocDeps<'_, FailAt, RefCell<Space>, Book, RecTlb> {
        VmallocDeps { alloc: self.data, kernel_pt: &self.ks, book: &self.book, tlb: &self.tlb }
    }

    fn alloc(&self, size: usize, gfp: Gfp) -> Result<VmArea, VmallocError> {
        self.vm.vmalloc(size, gfp, Caller::Symbol("test_caller"), &self.deps())
    }

    fn free(&self, a: VmArea) {
        self.vm.vfree(a, &self.deps()).expect("our area");
    }

    fn tables(&self, level: Level) -> u64 {
        self.ks.borrow().nr_tables(level)
    }

    fn translate(&self, va: u64) -> Option<Pfn> {
        self.ks.borrow().translate(VirtAddr::try_new(va).unwrap()).map(|t| t.pfn)
    }

    /// Tears the kernel space down and checks every page came back.
    fn finish(self) {
        assert!(self.vm.areas().is_empty(), "areas left: {:?}", self.vm.areas());
        let mut tlb = MmuGather::new();
        self.ks.into_inner().destroy(&mut tlb);
        let _ = tlb.finish(&self.tlb, self.env.alloc);
        assert_eq!(self.env.free(), self.initial_free, "pages leaked");
    }
}

fn va(x: u64) -> VirtAddr {
    VirtAddr::try_new(x).unwrap()
}

#[test]
fn vmalloc_maps_every_page_and_vfree_returns_everything() {
    let fx = Fx::new();
    let baseline = fx.env.free();
    let a = fx.alloc(4 * 4096, GFP_KERNEL).unwrap();
    assert_eq!(a.addr(), va(VMALLOC_START));
    assert_eq!(a.nr_pages(), 4);
    for i in 0..4 {
        assert_eq!(fx.translate(VMALLOC_START + i * 4096), a.pfn(i as usize));
        let pfn = a.pfn(i as usize).unwrap();
        assert_eq!(fx.env.alloc.page(pfn).unwrap().state(), PageState::Vmalloc { area: VMALLOC_START });
        let t = fx.ks.borrow().translate(va(VMALLOC_START + i * 4096)).unwrap();
        assert!(t.flags.contains(PteFlags::WRITABLE | PteFlags::NX | PteFlags::GLOBAL));
        assert!(!t.flags.contains(PteFlags::USER));
    }
    assert_eq!(fx.translate(VMALLOC_START + 4 * 4096), None, "guard page unmapped");
    assert_eq!(fx.vm.nr_vmalloc_pages(), 4);
    assert_eq!(fx.tables(Level::Pte), 1);
    assert_eq!(fx.tables(Level::Pmd), 1);
    // 4 data pages + PMD table + PTE table.
    assert_eq!(fx.env.free(), baseline - 6);

    let flushes_before = fx.tlb.flushes.borrow().len();
    fx.free(a);
    assert_eq!(fx.tlb.flushes.borrow().len(), flushes_before + 1, "one flush per vfree");
    assert!(
        fx.tlb.free_at_flush.borrow().last().copied().unwrap() <= baseline - 6,
        "nothing freed before the flush"
    );
    assert_eq!(fx.translate(VMALLOC_START), None);
    assert_eq!(fx.tables(Level::Pte), 0, "vfree freed the emptied PTE table");
    assert_eq!(fx.tables(Level::Pmd), 0, "and the emptied PMD table");
    assert_eq!(fx.env.free(), baseline);
    assert_eq!(fx.vm.nr_vmalloc_pages(), 0);
    fx.finish();
}

#[test]
fn vmalloc_guard_page_between_areas() {
    let fx = Fx::new();
    let sizes = [1usize, 4096, 4097, 3 * 4096, 100_000, 1, 8192];
    let areas: Vec<VmArea> = sizes.iter().map(|&s| fx.alloc(s, GFP_KERNEL).unwrap()).collect();
    for w in areas.windows(2) {
        let last_mapped = w[0].addr().as_u64() + (w[0].nr_pages() - 1) * 4096;
        let guard = last_mapped + 4096;
        assert!(w[1].addr().as_u64() > guard, "next area starts after the guard page");
        assert_ne!(w[1].addr().as_u64(), last_mapped + 4096);
        assert_eq!(fx.translate(guard), None, "guard page is not mapped");
        match fx.vm.classify(va(guard)) {
            VmallocAddr::Guard(info) => {
                assert_eq!(info.start, w[0].addr());
                assert_eq!(info.caller, Caller::Symbol("test_caller"));
            }
            other => panic!("guard classified as {other:?}"),
        }
        assert!(matches!(fx.vm.classify(va(last_mapped)), VmallocAddr::Mapped(_)));
    }
    assert_eq!(fx.vm.classify(va(0xffff_8880_0000_0000)), VmallocAddr::Outside);
    assert_eq!(fx.vm.classify(va(VMALLOC_END - 4096)), VmallocAddr::Unallocated);
    for a in areas {
        fx.free(a);
    }
    fx.finish();
}

/// Fails the k-th data page, page-table page and bookkeeping allocation for every
/// k, in a request that needs two PTE tables (it crosses a 2 MiB boundary) and a
/// busy list that must grow; each failure must leave exactly the baseline behind.
#[test]
fn vmalloc_failure_injection_at_every_step_leaks_nothing() {
    let fx = Fx::new();
    // Fill the busy list to its growth point and push the next area to just below
    // a 2 MiB boundary.
    let mut keep = Vec::new();
    let len_cap = || {
        let a = fx.vm.areas.lock();
        (a.len(), a.capacity())
    };
    keep.push(fx.alloc(4096, GFP_KERNEL).unwrap());
    while len_cap().0 + 1 < len_cap().1 {
        keep.push(fx.alloc(4096, GFP_KERNEL).unwrap());
    }
    // The last slot: an area ending (guard included) at page 509 of the range.
    let cursor_pages = keep.len() as u64 * 2;
    keep.push(fx.alloc(((509 - cursor_pages - 1) * 4096) as usize, GFP_KERNEL).unwrap());
    assert_eq!(len_cap().0, len_cap().1, "busy list full: the next vmalloc must grow it");
    let nr = 8usize;
    let baseline = fx.env.free();
    let areas_before = fx.vm.areas();
    let tables_before = (fx.tables(Level::Pte), fx.tables(Level::Pmd));
    let mut injected = [0usize; 3];

    // Bookkeeping first: the list growth happens only once (capacity is kept).
    for which in [2, 1, 0] {
        for k in 0.. {
            fx.data.arm(None);
            fx.pt.arm(None);
            fx.book.arm(None);
            match which {
                0 => fx.data.arm(Some(k)),
                1 => fx.pt.arm(Some(k)),
                _ => fx.book.arm(Some(k)),
            }
            match fx.alloc(nr * 4096, GFP_KERNEL) {
                Err(e) => {
                    injected[which] += 1;
                    let expect_ok = match which {
                        0 => matches!(e, VmallocError::NoMemory(AllocError::Injected)),
                        1 => e == VmallocError::Map(MapError::NoMemory),
                        _ => e == VmallocError::NoBookkeepingMemory,
                    };
                    assert!(expect_ok, "step {which}/{k}: {e:?}");
                    assert_eq!(fx.env.free(), baseline, "leak after failing step {which}/{k}");
                    assert_eq!(fx.vm.areas(), areas_before, "area left after {which}/{k}");
                    assert_eq!((fx.tables(Level::Pte), fx.tables(Level::Pmd)), tables_before);
                    assert_eq!(fx.vm.nr_vmalloc_pages(), keep.iter().map(|a| a.nr_pages()).sum::<u64>());
                }
                Ok(a) => {
                    // k is past the last allocation of this kind: undo and move on.
                    fx.data.arm(None);
                    fx.pt.arm(None);
                    fx.book.arm(None);
                    fx.free(a);
                    assert_eq!(fx.env.free(), baseline);
                    break;
                }
            }
        }
    }
    // 8 data pages; 1 new PTE table (crossing into the next 2 MiB); the list
    // growth plus the page array.
    assert_eq!(injected, [nr, 1, 2], "every allocation was failed once");
    for a in keep {
        fx.free(a);
    }
    fx.finish();
}

#[test]
fn vmalloc_failure_in_first_tables_frees_the_pmd_table_too() {
    let fx = Fx::new();
    let baseline = fx.env.free();
    for k in 0..2 {
        fx.pt.arm(Some(k)); // 0: the PMD table, 1: the PTE table under it
        assert_eq!(fx.alloc(3 * 4096, GFP_NOFS).unwrap_err(), VmallocError::Map(MapError::NoMemory));
        assert_eq!(fx.env.free(), baseline, "k={k}");
        assert_eq!(fx.tables(Level::Pmd), 0);
    }
    fx.pt.arm(None);
    fx.finish();
}

#[test]
fn vmalloc_honours_caller_gfp_for_every_allocation() {
    let fx = Fx::new();
    for gfp in [GFP_KERNEL, GFP_NOFS, GFP_NOIO, GFP_NOFS | __GFP_NOFAIL, GFP_NOWAIT] {
        fx.data.arm(None);
        fx.pt.arm(None);
        fx.book.arm(None);
        let a = fx.alloc(3 * 4096, gfp).unwrap();
        let data = fx.data.gfps.borrow().clone();
        let pt = fx.pt.gfps.borrow().clone();
        let book = fx.book.gfps.borrow().clone();
        assert_eq!(data, [gfp; 3], "data pages");
        assert!(!pt.is_empty(), "page tables were allocated");
        for g in &pt {
            // alloc_table strips only MOVABLE/HIGHMEM.
            assert_eq!(*g, gfp, "page-table pages with the caller's flags, not GFP_KERNEL");
        }
        assert!(!book.is_empty());
        for g in &book {
            assert_eq!(*g, gfp & GFP_RECLAIM_MASK, "bookkeeping with the caller's reclaim flags");
        }
        fx.free(a);
    }
    // vzalloc: zeroed data pages; tables get the same reclaim flags.
    fx.data.arm(None);
    fx.pt.arm(None);
    let a = fx.vm.vzalloc(4096, GFP_NOIO, Caller::here(), &fx.deps()).unwrap();
    assert_eq!(*fx.data.gfps.borrow(), [GFP_NOIO | __GFP_ZERO]);
    assert!(fx.pt.gfps.borrow().iter().all(|g| *g == GFP_NOIO));
    fx.free(a);
    fx.finish();
}

#[test]
fn vmalloc_vmallocinfo_and_meminfo_format() {
    let fx = Fx::new();
    let a = fx.vm.vmalloc(4 * 4096, GFP_KERNEL, Caller::Symbol("caller"), &fx.deps()).unwrap();
    let b = fx.vm.vmalloc(100, GFP_KERNEL, Caller::Symbol("load_module"), &fx.deps()).unwrap();
    let mut s = String::new();
    fx.vm.vmallocinfo(&mut s).unwrap();
    assert_eq!(
        s,
        "0xffffc90000000000-0xffffc90000005000   20480 caller+0x0/0x0 pages=4 vmalloc\n\
         0xffffc90000005000-0xffffc90000007000    8192 load_module+0x0/0x0 pages=1 vmalloc\n"
    );
    let mut m = String::new();
    fx.vm.meminfo(&mut m).unwrap();
    assert_eq!(m, "VmallocTotal:   34359738368 kB\nVmallocUsed:          20 kB\nVmallocChunk:          0 kB\n");
    let c = fx.vm.vmalloc(1, GFP_KERNEL, Caller::here(), &fx.deps()).unwrap();
    let mut s = String::new();
    fx.vm.vmallocinfo(&mut s).unwrap();
    assert!(s.lines().nth(2).unwrap().contains("vmalloc/tests.rs:"), "{s}");
    for x in [a, b, c] {
        fx.free(x);
    }
    fx.finish();
}

#[test]
fn vmalloc_bad_sizes_full_range_and_merging() {
    // A 64 KiB range: 16 pages.
    let start = va(VMALLOC_START);
    let end = va(VMALLOC_START + 16 * 4096);
    let fx = Fx::with(Vmalloc::with_range(start, end).unwrap());
    assert_eq!(fx.alloc(0, GFP_KERNEL).unwrap_err(), VmallocError::InvalidSize);
    assert_eq!(fx.alloc(usize::MAX, GFP_KERNEL).unwrap_err(), VmallocError::InvalidSize);
    assert_eq!(fx.alloc(16 * 4096, GFP_KERNEL).unwrap_err(), VmallocError::TooLarge, "no room for the guard");
    // Three areas of 4 pages (+guard) fill 15 of 16 pages.
    let a = fx.alloc(4 * 4096, GFP_KERNEL).unwrap();
    let b = fx.alloc(4 * 4096, GFP_KERNEL).unwrap();
    let c = fx.alloc(4 * 4096, GFP_KERNEL).unwrap();
    assert_eq!(fx.alloc(4096, GFP_KERNEL).unwrap_err(), VmallocError::NoVirtualSpace);
    let b_addr = b.addr();
    fx.free(b);
    let b2 = fx.alloc(2 * 4096, GFP_KERNEL).unwrap();
    assert_eq!(b2.addr(), b_addr, "first fit reuses the hole");
    fx.free(b2);
    fx.free(a);
    // a and b's ranges merged: 10 pages fit below c.
    let big = fx.alloc(9 * 4096, GFP_KERNEL).unwrap();
    assert_eq!(big.addr(), start);
    fx.free(big);
    fx.free(c);
    let whole = fx.alloc(15 * 4096, GFP_KERNEL).unwrap();
    fx.free(whole);
    fx.finish();

    assert!(Vmalloc::<HostPlatform>::with_range(va(0x1000), va(0x2000)).is_none(), "user half");
    assert!(Vmalloc::<HostPlatform>::with_range(end, start).is_none());
}

#[test]
fn vmalloc_vfree_of_foreign_area_is_refused() {
    let fx = Fx::new();
    let other: Vmalloc = Vmalloc::new();
    let a = fx.alloc(4096, GFP_KERNEL).unwrap();
    let a = other.vfree(a, &fx.deps()).unwrap_err();
    assert_eq!(fx.translate(a.addr().as_u64()), a.pfn(0), "still mapped");
    fx.free(a);
    fx.finish();
}

#[test]
fn vmalloc_many_areas_grow_the_list_outside_the_lock() {
    let fx = Fx::new();
    fx.book.arm(None);
    let areas: Vec<VmArea> = (0..40).map(|_| fx.alloc(4096, GFP_NOFS).unwrap()).collect();
    // 40 page arrays + growth to 16, 32, 64.
    assert_eq!(fx.book.calls.get(), 43);
    let starts: Vec<u64> = fx.vm.areas().iter().map(|a| a.start.as_u64()).collect();
    assert!(starts.windows(2).all(|w| w[0] + 2 * 4096 == w[1]), "sorted, one guard page apart");
    for a in areas.into_iter().rev() {
        fx.free(a);
    }
    fx.finish();
}

#[test]
fn vmalloc_scoped_heap_bookkeeping() {
    let scope = MemallocScope::new();
    let heap = ScopedHeap { scope: &scope, nofail_stall: |_, _, _| {} };
    let v: Vec<u64> = heap.try_vec(GFP_NOFS, 10).unwrap();
    assert!(v.capacity() >= 10);
    assert_eq!(scope.switch_state(0), 0, "every scope closed again (NoReserve has no PF_ bit)");
    // An impossible size fails instead of aborting, as "can never be allocated",
    // which a __GFP_NOFAIL caller does not retry forever.
    assert_eq!(heap.try_vec::<u64>(GFP_KERNEL, usize::MAX / 4).unwrap_err(), AllocError::InvalidOrder);
    assert_eq!(try_vec_nofail::<u64, _>(&heap, GFP_KERNEL | __GFP_NOFAIL, usize::MAX / 4).unwrap_err(), AllocError::InvalidOrder);
}

#[test]
fn vmalloc_spinlocked_kernel_space_works_too() {
    let env = Env::new(4096);
    let before = env.free();
    let ks = AddressSpace::new_kernel(env.alloc, env.mem, env.ctl, GFP_KERNEL).unwrap();
    let ks: SpinLock<_> = SpinLock::new(ks);
    let vm: Vmalloc = Vmalloc::new();
    let scope = MemallocScope::new();
    let heap = ScopedHeap { scope: &scope, nofail_stall: |_, _, _| {} };
    let tlb = env.tlb();
    let deps = VmallocDeps { alloc: env.alloc, kernel_pt: &ks, book: &heap, tlb: &tlb };
    vm.preallocate_page_tables(&mut ks.lock(), GFP_KERNEL).unwrap();
    let a = vm.vmalloc(5 * 4096, GFP_KERNEL, Caller::here(), &deps).unwrap();
    assert!(is_vmalloc_addr(a.addr()));
    vm.vfree(a, &deps).unwrap();
    // SpinLock has no into_inner: swap in a fresh space and destroy both.
    let fresh = AddressSpace::new_kernel(env.alloc, env.mem, env.ctl, GFP_KERNEL).unwrap();
    let space = core::mem::replace(&mut *ks.lock(), fresh);
    let mut g = MmuGather::new();
    space.destroy(&mut g);
    let fresh = core::mem::replace(&mut *ks.lock(), AddressSpace::new_kernel(env.alloc, env.mem, env.ctl, GFP_KERNEL).unwrap());
    fresh.destroy(&mut g);
    core::mem::forget(ks); // the third, empty root is leaked on purpose (1 page)
    let _ = g.finish(&tlb, env.alloc);
    assert_eq!(env.free(), before - 1);
}

#[test]
fn nofail_bookkeeping_is_retried_until_it_succeeds() {
    let fx = Fx::new();
    // 1 500 failures: one stall report (at 1 000 tries), then success.
    fx.book.fail_first(1500);
    let a = fx.alloc(3 * 4096, GFP_KERNEL | __GFP_NOFAIL).expect("__GFP_NOFAIL with reclaim never fails for memory");
    assert_eq!(fx.book.calls.get(), 1500 + 2, "every failure retried, then the page array");
    assert_eq!(fx.book.stalls.get(), 1);
    fx.free(a);
    // The same failures without __GFP_NOFAIL: one try, a clean error.
    fx.book.fail_first(1500);
    assert_eq!(fx.alloc(3 * 4096, GFP_KERNEL).unwrap_err(), VmallocError::NoBookkeepingMemory);
    assert_eq!(fx.book.calls.get(), 1);
    // __GFP_NOFAIL without reclaim (Linux does not support it either): bounded tries.
    fx.book.fail_first(usize::MAX);
    assert_eq!(fx.alloc(4096, GFP_NOWAIT | __GFP_NOFAIL).unwrap_err(), VmallocError::NoBookkeepingMemory);
    assert_eq!(fx.book.calls.get() as u64, NOFAIL_NORECLAIM_TRIES);
    assert_eq!(fx.book.stalls.get(), 0);
    fx.book.arm(None);
    fx.finish();
}

#[test]
fn size_beyond_all_memory_fails_even_with_nofail() {
    let fx = Fx::new();
    let total = fx.data.totalram_pages();
    assert!(total > 0 && total < u64::MAX);
    fx.data.arm(None);
    let too_big = (total as usize + 1) * 4096;
    assert_eq!(fx.alloc(too_big, GFP_KERNEL | __GFP_NOFAIL).unwrap_err(), VmallocError::TooLarge);
    assert_eq!(fx.data.calls.get(), 0, "refused before allocating anything");
    fx.finish();
}
