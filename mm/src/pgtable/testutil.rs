//! Host fakes shared by the page-table, fault, mman and migration tests:
//! HashMap-backed physical memory (also the allocator's `PhysMem` and the fault
//! handler's `ClearPages`), a recording TLB, and an allocator over fake frames.

use alloc::boxed::Box;
use alloc::vec::Vec;
use core::cell::RefCell;
use core::sync::atomic::AtomicU64;
use std::collections::HashMap;
use std::sync::Mutex;

use crate::addr::Pfn;
use crate::page::PageMeta;
use crate::page_alloc::{AllocConfig, NoHooks, NoPhysMem, PageAlloc, PhysMem};
use crate::pgtable::{PgtableCtl, PtMem, VirtAddr};
use crate::sync::HostPlatform;
use crate::tlb::TlbFlush;

/// What an untouched frame reads as: present bit set, so a table that was not
/// zeroed would show garbage mappings.
pub(crate) const GARBAGE: u64 = 0xdead_beef_dead_beef;

/// Physical memory as 512 u64 words per frame, materialised on first write.
/// `Sync`, so it can also be the allocator's [`PhysMem`] (migration copies).
#[derive(Default)]
pub(crate) struct FakeMem {
    frames: Mutex<HashMap<u64, Box<[u64; 512]>>>,
    /// `(base, nr_subpages, hint)` of every clear_huge_page call.
    pub(crate) huge_clears: Mutex<Vec<(Pfn, u64, u64)>>,
    pub(crate) page_clears: AtomicU64,
}

impl FakeMem {
    pub(crate) fn read(&self, pfn: Pfn, index: usize) -> u64 {
        self.frames.lock().unwrap().get(&pfn.0).map_or(GARBAGE, |f| f[index])
    }
    pub(crate) fn write(&self, pfn: Pfn, index: usize, value: u64) {
        self.frames.lock().unwrap().entry(pfn.0).or_insert_with(|| Box::new([GARBAGE; 512]))[index] = value;
    }
    pub(crate) fn zero(&self, pfn: Pfn) {
        self.frames.lock().unwrap().insert(pfn.0, Box::new([0; 512]));
    }
    pub(crate) fn is_zero(&self, pfn: Pfn) -> bool {
        self.frames.lock().unwrap().get(&pfn.0).is_some_and(|f| f.iter().all(|&w| w == 0))
    }
    /// A copy of the whole frame.
    pub(crate) fn frame(&self, pfn: Pfn) -> [u64; 512] {
        self.frames.lock().unwrap().get(&pfn.0).map_or([GARBAGE; 512], |f| **f)
    }
}

impl PtMem for FakeMem {
    fn read_entry(&self, table: Pfn, index: usize) -> u64 {
        self.read(table, index)
    }
    fn write_entry(&self, table: Pfn, index: usize, value: u64) {
        self.write(table, index, value)
    }
    fn zero_table(&self, table: Pfn) {
        self.zero(table)
    }
}

impl PhysMem for FakeMem {
    unsafe fn zero_frames(&self, pfn: Pfn, nr_pages: u64) {
        for i in 0..nr_pages {
            self.zero(Pfn(pfn.0 + i));
        }
    }
    unsafe fn copy_frames(&self, src: Pfn, dst: Pfn, nr_pages: u64) {
        let mut frames = self.frames.lock().unwrap();
        for i in 0..nr_pages {
            match frames.get(&(src.0 + i)).cloned() {
                Some(f) => frames.insert(dst.0 + i, f),
                None => frames.remove(&(dst.0 + i)),
            };
        }
    }
}

/// Zeroes like the kernel and records every call.
impl crate::fault::ClearPages for FakeMem {
    fn clear_page(&self, pfn: Pfn) {
        self.zero(pfn);
        self.page_clears.fetch_add(1, core::sync::atomic::Ordering::Relaxed);
    }
    fn clear_huge_page(&self, base: Pfn, nr_subpages: u64, hint_subpage: u64) {
        for i in 0..nr_subpages {
            self.zero(Pfn(base.0 + i));
        }
        self.huge_clears.lock().unwrap().push((base, nr_subpages, hint_subpage));
    }
}

/// The test fixture: allocator, memory and knobs, leaked for `'static`.
pub(crate) struct Env {
    pub(crate) alloc: &'static PageAlloc<'static, HostPlatform>,
    pub(crate) mem: &'static FakeMem,
    pub(crate) ctl: &'static PgtableCtl,
}

impl Env {
    /// An allocator over `nr_frames` frames at pfn 0 (a multiple of 1024).
    pub(crate) fn new(nr_frames: u64) -> Env {
        let meta: &'static [PageMeta] =
            Box::leak((0..nr_frames).map(|_| PageMeta::new()).collect::<Vec<_>>().into_boxed_slice());
        let cfg = AllocConfig { min_free_kbytes: Some(0), pcp_batch: Some(15), ..AllocConfig::default() };
        let alloc = PageAlloc::new(meta, Pfn(0), &[Pfn(0)..Pfn(nr_frames)], &NoPhysMem, &NoHooks, cfg)
            .expect("test allocator");
        Env { alloc: Box::leak(Box::new(alloc)), mem: Box::leak(Box::default()), ctl: Box::leak(Box::default()) }
    }

    /// Free pages in the allocator (buddy + per-CPU + deferred).
    pub(crate) fn free(&self) -> u64 {
        self.alloc.stats().free()
    }

    pub(crate) fn tlb(&self) -> RecTlb {
        RecTlb { alloc: self.alloc, flushes: RefCell::default(), free_at_flush: RefCell::default() }
    }
}

/// One recorded flush.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Flush {
    Range(VirtAddr, u64),
    All,
}

/// A TLB that records flushes and the allocator's free count at flush time, so
/// tests can prove nothing was freed before the flush.
pub(crate) struct RecTlb {
    alloc: &'static PageAlloc<'static, HostPlatform>,
    pub(crate) flushes: RefCell<Vec<Flush>>,
    pub(crate) free_at_flush: RefCell<Vec<u64>>,
}

impl TlbFlush for RecTlb {
    fn flush_range(&self, start: VirtAddr, nr_pages: u64) {
        self.free_at_flush.borrow_mut().push(self.alloc.stats().free());
        self.flushes.borrow_mut().push(Flush::Range(start, nr_pages));
    }
    fn flush_all(&self) {
        self.free_at_flush.borrow_mut().push(self.alloc.stats().free());
        self.flushes.borrow_mut().push(Flush::All);
    }
}

/// A canonical address (panics on a bad literal: test input only).
pub(crate) fn va(addr: u64) -> VirtAddr {
    VirtAddr::try_new(addr).expect("canonical test address")
}

/// The tests' deterministic PRNG.
pub(crate) use crate::rng::XorShift64Star as Rng;
