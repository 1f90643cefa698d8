//! Host tests of the fault handler: demand paging, access errors, THP with its
//! knobs and fallback, splitting, and allocation failures.

use super::*;
use crate::fail_page_alloc::FaultAttr;
use crate::gfp::Gfp;
use crate::page::{PageMeta, PageState};
use crate::page_alloc::{AllocError, PageAlloc};
use crate::pgtable::testutil::*;
use crate::pgtable::{PgtableCtl, PteFlags};
use crate::sync::HostPlatform;
use crate::vma::{MapFixed, VmaTree, linear_pgoff};
use alloc::vec::Vec;
use core::cell::RefCell;

const K: u64 = 4096;
const M2: u64 = 2 << 20;

/// Records the GFP flags and order of every allocation.
struct RecAlloc {
    inner: &'static PageAlloc<'static, HostPlatform>,
    log: RefCell<Vec<(Gfp, usize)>>,
}

impl PtAlloc for RecAlloc {
    fn alloc_pages(&self, gfp: Gfp, order: usize) -> Result<Pages, AllocError> {
        self.log.borrow_mut().push((gfp, order));
        self.inner.alloc_pages(gfp, order)
    }
    fn free_pages(&self, pages: Pages) {
        self.inner.free_pages(pages)
    }
    fn page(&self, pfn: Pfn) -> Option<&PageMeta> {
        self.inner.page(pfn)
    }
}

struct Fx {
    env: Env,
    alloc: &'static RecAlloc,
    vmas: VmaTree,
    thp: ThpCtl,
    penv: FaultEnv,
}

type Space = AddressSpace<'static, RecAlloc, FakeMem>;

impl Fx {
    fn new() -> Fx {
        let env = Env::new(8192);
        let alloc = alloc::boxed::Box::leak(alloc::boxed::Box::new(RecAlloc { inner: env.alloc, log: RefCell::default() }));
        Fx { env, alloc, vmas: VmaTree::new(), thp: ThpCtl::new(ThpMode::Always), penv: FaultEnv::default() }
    }
    fn space(&self) -> Space {
        let ctl: &'static PgtableCtl = self.env.ctl;
        AddressSpace::new_user(self.alloc, self.env.mem, ctl, None, 5, GFP_KERNEL).unwrap()
    }
    fn mmap(&mut self, start: u64, len: u64, flags: VmFlags) {
        self.vmas
            .mmap_region(start, len, flags, VmaKind::AnonPrivate, linear_pgoff(start), MapFixed::Replace)
            .unwrap();
    }
    fn fault(&mut self, s: &mut Space, addr: u64, write: bool) -> Result<FaultOutcome, FaultError> {
        let access = FaultAccess { write, exec: false, user: true };
        self.fault_with(s, addr, access)
    }
    fn fault_with(&mut self, s: &mut Space, addr: u64, access: FaultAccess) -> Result<FaultOutcome, FaultError> {
        let mut tlb = MmuGather::new();
        let r = handle_mm_fault(s, &mut self.vmas, addr, access, &self.thp, &self.penv, self.env.mem, &mut tlb);
        tlb.finish(&self.env.tlb(), self.alloc);
        r
    }
    fn dontneed(&self, s: &mut Space, addr: u64, len: u64, gfp: Gfp) -> RecTlb {
        let mut tlb = MmuGather::new();
        s.madvise_dontneed(va(addr), len, gfp, &mut tlb).unwrap();
        let t = self.env.tlb();
        tlb.finish(&t, self.alloc);
        t
    }
    fn destroy(&self, s: Space) {
        let mut tlb = MmuGather::new();
        s.destroy(&mut tlb);
        tlb.finish(&self.env.tlb(), self.alloc);
    }
}

fn rw() -> VmFlags {
    VmFlags::READ | VmFlags::WRITE | VmFlags::MAY_ALL
}

#[test]
fn first_touch_maps_zeroed_page_second_touch_allocates_nothing() {
    let mut fx = Fx::new();
    fx.thp.set_mode(ThpMode::Never);
    let before = fx.env.free();
    let mut s = fx.space();
    fx.mmap(0x10_0000, 16 * K, rw());
    let addr = 0x10_3123;
    let Ok(FaultOutcome::MappedPage(pfn)) = fx.fault(&mut s, addr, false) else { panic!() };
    assert!(fx.env.mem.is_zero(pfn));
    let t = s.translate(va(addr)).unwrap();
    assert_eq!(t.pfn, pfn);
    assert!(t.flags.contains(PteFlags::USER | PteFlags::WRITABLE | PteFlags::NX | PteFlags::SOFT_ANON));
    assert_eq!(
        fx.env.alloc.page(pfn).unwrap().state(),
        PageState::Anon { mapcount: 1, rmap: Rmap { asid: 5, vpn: 0x103 }, movable: false }
    );
    let (gfp, order) = *fx.alloc.log.borrow().last().unwrap();
    assert_eq!((gfp, order), (GFP_HIGHUSER_MOVABLE, 0), "anonymous pages are movable");
    let free = fx.env.free();
    assert_eq!(fx.fault(&mut s, addr + 8, true), Ok(FaultOutcome::Spurious));
    assert_eq!(fx.env.free(), free, "second touch allocates nothing");
    // Unmap: the page goes back after the flush along with all tables.
    let rec = fx.dontneed(&mut s, 0x10_0000, 16 * K, GFP_KERNEL);
    assert_eq!(rec.free_at_flush.borrow()[0], free, "not freed before the flush");
    fx.destroy(s);
    assert_eq!(fx.env.free(), before);
}

#[test]
fn access_errors_are_typed() {
    let mut fx = Fx::new();
    let mut s = fx.space();
    fx.mmap(0x10_0000, 4 * K, VmFlags::READ | VmFlags::MAY_ALL);
    fx.mmap(0x20_0000, 4 * K, VmFlags::empty() | VmFlags::MAY_ALL);
    let free = fx.env.free();
    assert_eq!(fx.fault(&mut s, 0x10_0000, true), Err(FaultError::AccessDenied));
    assert_eq!(FaultError::AccessDenied.segv_code(), Some(2));
    let exec = FaultAccess { write: false, exec: true, user: true };
    assert_eq!(fx.fault_with(&mut s, 0x10_0000, exec), Err(FaultError::AccessDenied));
    assert_eq!(fx.fault(&mut s, 0x20_0000, false), Err(FaultError::AccessDenied), "PROT_NONE");
    assert_eq!(fx.fault(&mut s, 0x30_0000, false), Err(FaultError::NoVma));
    assert_eq!(FaultError::NoVma.segv_code(), Some(1));
    assert_eq!(fx.fault(&mut s, 0xffff_8000_0000_0000, false), Err(FaultError::BadAddress));
    assert_eq!(fx.fault(&mut s, 0x0000_8000_0000_0000, false), Err(FaultError::BadAddress));
    assert_eq!(fx.fault(&mut s, u64::MAX, true), Err(FaultError::BadAddress));
    assert_eq!(fx.env.free(), free, "refused faults allocate nothing");
    // A read of the read-only VMA works and maps a read-only, NX page.
    assert!(matches!(fx.fault(&mut s, 0x10_0000, false), Ok(FaultOutcome::MappedPage(_))));
    let f = s.translate(va(0x10_0000)).unwrap().flags;
    assert!(!f.contains(PteFlags::WRITABLE) && f.contains(PteFlags::NX));
    assert_eq!(FaultAccess::from_error_code(0b10110), FaultAccess { write: true, user: true, exec: true });
    fx.destroy(s);
}

#[test]
fn write_after_mprotect_upgrades_present_entry() {
    let mut fx = Fx::new();
    fx.thp.set_mode(ThpMode::Never);
    let mut s = fx.space();
    fx.mmap(0x10_0000, 4 * K, rw());
    fx.fault(&mut s, 0x10_0000, false).unwrap();
    let mut tlb = MmuGather::new();
    s.protect(va(0x10_0000), 4 * K, PteFlags::NX, GFP_KERNEL, &mut tlb).unwrap();
    tlb.finish(&fx.env.tlb(), fx.alloc);
    assert_eq!(fx.fault(&mut s, 0x10_0000, true), Ok(FaultOutcome::Upgraded));
    assert!(s.translate(va(0x10_0000)).unwrap().flags.contains(PteFlags::WRITABLE));
    fx.destroy(s);
}

#[test]
fn stack_grows_down_on_fault() {
    let mut fx = Fx::new();
    let mut s = fx.space();
    let top = 0x7ff0_0000_0000u64;
    fx.vmas
        .mmap_region(top - 16 * K, 16 * K, rw() | VmFlags::GROWSDOWN, VmaKind::Stack, linear_pgoff(top - 16 * K), MapFixed::Replace)
        .unwrap();
    assert!(matches!(fx.fault(&mut s, top - 20 * K, true), Ok(FaultOutcome::MappedPage(_))));
    assert_eq!(fx.vmas.vma_lookup(top - 20 * K).unwrap().start, top - 20 * K);
    fx.destroy(s);
}

#[test]
fn thp_maps_aligned_region_at_pmd_level() {
    let mut fx = Fx::new();
    let before = fx.env.free();
    let mut s = fx.space();
    fx.mmap(0x4000_0000, 2 * M2, rw());
    let addr = 0x4000_0000 + 5 * K + 17;
    let Ok(FaultOutcome::MappedHuge(pfn)) = fx.fault(&mut s, addr, true) else { panic!() };
    assert_eq!(pfn.0 % 512, 0);
    let t = s.translate(va(addr)).unwrap();
    assert_eq!((t.level, t.pfn), (Level::Pmd, Pfn(pfn.0 + 5)));
    assert!(t.flags.contains(PteFlags::HUGE | PteFlags::DIRTY | PteFlags::WRITABLE));
    assert_eq!(*fx.env.mem.huge_clears.lock().unwrap(), [(pfn, 512, 5)], "faulting sub-page is the hint");
    assert!((0..512).all(|i| fx.env.mem.is_zero(Pfn(pfn.0 + i))));
    let log = fx.alloc.log.borrow().clone();
    let huge = log.iter().find(|(_, o)| *o == 9).unwrap();
    assert!(huge.0.contains(Gfp::MOVABLE), "THP allocated movable: {:?}", huge.0);
    assert_eq!(fx.env.ctl.nr_anon_thps(), 1);
    assert_eq!(fx.thp.thp_fault_alloc.load(Relaxed), 1);
    // Second touch anywhere in the 2 MiB: nothing allocated.
    let free = fx.env.free();
    assert_eq!(fx.fault(&mut s, 0x4000_0000 + M2 - 1, true), Ok(FaultOutcome::Spurious));
    assert_eq!(fx.env.free(), free);
    // Tables: PUD + PMD + the deposited PTE table.
    assert_eq!(s.pgtables_bytes(), 3 * K);
    // Unmapping the whole 2 MiB frees page, deposit and tables after the flush.
    let rec = fx.dontneed(&mut s, 0x4000_0000, M2, GFP_KERNEL);
    assert_eq!(rec.free_at_flush.borrow()[0], free);
    assert_eq!(fx.env.ctl.nr_anon_thps(), 0);
    assert_eq!(s.pgtables_bytes(), 0);
    fx.destroy(s);
    assert_eq!(fx.env.free(), before);
}

#[test]
fn thp_knobs_select_4k() {
    let cases: [(ThpMode, VmFlags, bool, bool); 7] = [
        (ThpMode::Always, VmFlags::empty(), false, true),
        (ThpMode::Always, VmFlags::NOHUGEPAGE, false, false),
        (ThpMode::Always, VmFlags::empty(), true, false),
        (ThpMode::Madvise, VmFlags::empty(), false, false),
        (ThpMode::Madvise, VmFlags::HUGEPAGE, false, true),
        (ThpMode::Madvise, VmFlags::HUGEPAGE, true, false),
        (ThpMode::Never, VmFlags::HUGEPAGE, false, false),
    ];
    for (mode, extra, disabled, huge) in cases {
        let mut fx = Fx::new();
        fx.thp.set_mode(mode);
        fx.penv.thp_disabled = disabled;
        let mut s = fx.space();
        fx.mmap(0x4000_0000, M2, rw() | extra);
        let r = fx.fault(&mut s, 0x4000_1000, false).unwrap();
        assert_eq!(matches!(r, FaultOutcome::MappedHuge(_)), huge, "{mode:?} {extra:?} {disabled}");
        if huge {
            let gfp = fx.alloc.log.borrow().iter().find(|(_, o)| *o == 9).unwrap().0;
            let want = if extra.contains(VmFlags::HUGEPAGE) { GFP_TRANSHUGE } else { GFP_TRANSHUGE_LIGHT };
            assert_eq!(gfp, want);
        }
        fx.destroy(s);
    }
    // A VMA that covers no aligned 2 MiB range never gets a huge page.
    let mut fx = Fx::new();
    let mut s = fx.space();
    fx.mmap(0x4000_1000, M2, rw());
    assert!(matches!(fx.fault(&mut s, 0x4010_0000, false), Ok(FaultOutcome::MappedPage(_))));
    assert_eq!(fx.thp.mode_str(), "[always] madvise never");
    fx.destroy(s);
}

#[test]
fn thp_falls_back_to_4k_when_order9_fails() {
    let mut fx = Fx::new();
    let mut s = fx.space();
    fx.mmap(0x4000_0000, M2, rw());
    fx.env.alloc.fail.configure(FaultAttr { min_order: 9, ..FaultAttr::every_nth(1) });
    let r = fx.fault(&mut s, 0x4000_3000, true);
    fx.env.alloc.fail.disable();
    assert!(matches!(r, Ok(FaultOutcome::MappedPage(_))), "{r:?}");
    assert_eq!(s.translate(va(0x4000_3000)).unwrap().level, Level::Pte);
    assert_eq!(fx.thp.thp_fault_fallback.load(Relaxed), 1);
    assert_eq!(fx.env.ctl.nr_anon_thps(), 0);
    // The PMD slot now holds a PTE table: later faults there stay 4 KiB.
    assert!(matches!(fx.fault(&mut s, 0x4000_0000, true), Ok(FaultOutcome::MappedPage(_))));
    fx.destroy(s);
}

#[test]
fn partial_dontneed_splits_huge_page_with_deposit() {
    let mut fx = Fx::new();
    let before = fx.env.free();
    let mut s = fx.space();
    fx.mmap(0x4000_0000, M2, rw());
    let Ok(FaultOutcome::MappedHuge(head)) = fx.fault(&mut s, 0x4000_0000, true) else { panic!() };
    let tables_before = s.pgtables_bytes();
    // Every allocation fails: the split uses the deposited table.
    fx.env.alloc.fail.configure(FaultAttr::every_nth(1));
    fx.dontneed(&mut s, 0x4000_0000 + 100 * K, K, GFP_KERNEL);
    fx.env.alloc.fail.disable();
    assert_eq!(s.pgtables_bytes(), tables_before, "deposit became the PTE table");
    for i in 0..512 {
        let t = s.translate(va(0x4000_0000 + i * K));
        if i == 100 {
            assert!(t.is_none());
        } else {
            let t = t.unwrap();
            assert_eq!((t.level, t.pfn), (Level::Pte, Pfn(head.0 + i)));
        }
    }
    let PageState::Anon { mapcount, .. } = fx.env.alloc.page(head).unwrap().state() else { panic!() };
    assert_eq!(mapcount, 511);
    assert_eq!(fx.env.ctl.nr_anon_thps(), 0, "no longer PMD-mapped");
    s.census().unwrap();
    // The rest goes in two steps; the 2 MiB returns only with its last mapping.
    let free = fx.env.free();
    fx.dontneed(&mut s, 0x4000_0000, 50 * K, GFP_KERNEL);
    assert_eq!(fx.env.free(), free);
    fx.dontneed(&mut s, 0x4000_0000, M2, GFP_KERNEL);
    assert_eq!(fx.env.free(), free + 512 + 3, "huge page + PTE, PMD, PUD tables");
    fx.destroy(s);
    assert_eq!(fx.env.free(), before);
}

#[test]
fn allocation_failures_in_fault_leave_no_leak() {
    // 3 table allocations + the data page; fail each in turn.
    for nth in 1..=4 {
        let mut fx = Fx::new();
        fx.thp.set_mode(ThpMode::Never);
        let mut s = fx.space();
        fx.mmap(0x10_0000, 4 * K, rw());
        let base = fx.env.free();
        fx.env.alloc.fail.configure(FaultAttr { times: 1, ..FaultAttr::every_nth(nth) });
        assert_eq!(fx.fault(&mut s, 0x10_0000, true), Err(FaultError::OutOfMemory), "nth {nth}");
        fx.env.alloc.fail.disable();
        assert_eq!(fx.env.free(), base, "nth {nth}");
        assert_eq!(s.census().unwrap(), Default::default());
        assert!(matches!(fx.fault(&mut s, 0x10_0000, true), Ok(FaultOutcome::MappedPage(_))));
        fx.destroy(s);
    }
    // THP: the deposit or a table fails -> OOM, the huge page is given back.
    for nth in 1..=3 {
        let mut fx = Fx::new();
        let mut s = fx.space();
        fx.mmap(0x4000_0000, M2, rw());
        let base = fx.env.free();
        fx.env.alloc.fail.configure(FaultAttr { times: 1, ..FaultAttr::every_nth(nth + 1) });
        let r = fx.fault(&mut s, 0x4000_0000, true);
        fx.env.alloc.fail.disable();
        assert_eq!(r, Err(FaultError::OutOfMemory), "nth {nth}");
        assert_eq!(fx.env.free(), base, "nth {nth}");
        fx.destroy(s);
    }
}

#[test]
fn reclaim_experiment_in_miniature() {
    // Zheng's test: touch 2 MiB with 4 KiB pages, MADV_DONTNEED it, repeat over a
    // sparse region. With reclaim on, page tables return to the baseline.
    let mut fx = Fx::new();
    fx.thp.set_mode(ThpMode::Never);
    let mut s = fx.space();
    let region = 64 * M2 * 512; // 64 GiB sparse
    fx.mmap(0x10_0000_0000, region, rw());
    let baseline = s.pgtables_bytes();
    for i in 0..40u64 {
        let start = 0x10_0000_0000 + i * (region / 40) & !(M2 - 1);
        for p in (0..M2).step_by(64 * K as usize) {
            fx.fault(&mut s, start + p, true).unwrap();
        }
        fx.dontneed(&mut s, start, M2, GFP_KERNEL);
    }
    assert_eq!(s.pgtables_bytes(), baseline);
    // Off: one PTE table (and its parents) stays per 2 MiB touched.
    fx.env.ctl.set_pt_reclaim(false);
    for i in 0..4u64 {
        let start = 0x10_0000_0000 + i * M2;
        fx.fault(&mut s, start, true).unwrap();
        fx.dontneed(&mut s, start, M2, GFP_KERNEL);
    }
    assert_eq!(s.pgtables_bytes(), 6 * K);
    fx.env.ctl.set_pt_reclaim(true);
    fx.destroy(s);
}

#[test]
fn special_mapping_maps_kernel_frames_without_owning_them() {
    let mut fx = Fx::new();
    fx.thp.set_mode(ThpMode::Always);
    // Two kernel frames, e.g. the vDSO's data and code pages.
    let frames = fx.env.alloc.alloc_pages(GFP_KERNEL, 1).unwrap();
    let m = &*alloc::boxed::Box::leak(alloc::boxed::Box::new(SpecialMapping { name: "[vdso]", pfn: frames.pfn(), nr_pages: 2 }));
    let before = fx.env.free();
    let mut s = fx.space();
    let start = 0x40_0000;
    let flags = VmFlags::READ | VmFlags::EXEC | VmFlags::MAYREAD | VmFlags::MAYEXEC;
    fx.vmas.mmap_region(start, 2 * K, flags, VmaKind::Special(m), 0, MapFixed::NoReplace).unwrap();
    let Ok(FaultOutcome::MappedPage(pfn)) = fx.fault(&mut s, start + K + 5, false) else { panic!() };
    assert_eq!(pfn, Pfn(frames.pfn().0 + 1), "the frame at the page offset, no THP");
    let t = s.translate(va(start + K)).unwrap();
    assert!(!t.flags.intersects(PteFlags::SOFT_ANON | PteFlags::SOFT_SHMEM | PteFlags::WRITABLE | PteFlags::NX));
    assert_eq!(fx.fault(&mut s, start + K, true), Err(FaultError::AccessDenied), "read-only");
    assert_eq!(fx.fault(&mut s, start + K, false), Ok(FaultOutcome::Spurious));
    // Zapping drops the entry only; the next fault maps the same frame again.
    fx.dontneed(&mut s, start, 2 * K, GFP_KERNEL);
    assert!(s.translate(va(start + K)).is_none());
    assert_eq!(fx.fault(&mut s, start + K, false), Ok(FaultOutcome::MappedPage(pfn)));
    let Ok(FaultOutcome::MappedPage(first)) = fx.fault(&mut s, start, false) else { panic!() };
    assert_eq!(first, frames.pfn());
    fx.destroy(s);
    assert_eq!(fx.env.free(), before, "the frames stay with their owner");
    fx.env.alloc.free_pages(frames);
}
