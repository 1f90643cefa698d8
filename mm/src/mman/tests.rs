//! Host tests of the memory-management system calls: every errno rule, the
//! behaviour of each call (split/merge, zeroing, lazy free, populate, shared
//! memory, brk, THP disable), the `/proc/PID/status` lines, and a model-based
//! random test. Every test ends in [`T::finish`], which tears the address space
//! down and checks that every page went back to the allocator.

use super::*;
use crate::addr::Pfn;
use crate::errno::Errno::*;
use crate::fault::ThpMode;
use crate::gfp::GFP_KERNEL;
use crate::page_alloc::PageAlloc;
use crate::pgtable::testutil::*;
use crate::pgtable::{Level, PteFlags, Translation};
use crate::sync::HostPlatform;
use alloc::string::String;
use alloc::vec;
use core::sync::atomic::Ordering::Relaxed;

type Mm = UserMm<'static, PageAlloc<'static, HostPlatform>, FakeMem>;

const K: u64 = PAGE_SIZE;
const M2: u64 = PMD_SIZE;
const RW: u64 = PROT_READ | PROT_WRITE;
const PRIV: u64 = MAP_PRIVATE | MAP_ANONYMOUS;
const SHARED: u64 = MAP_SHARED | MAP_ANONYMOUS;
const FIXED: u64 = PRIV | MAP_FIXED;
/// A 2 MiB aligned address for fixed mappings.
const BASE: u64 = 0x4000_0000;

/// One address space over a fake allocator, with helpers that stand in for the
/// syscall layer (finish the gather after each call) and for the CPU (accesses
/// fault pages in and set the accessed/dirty bits).
struct T {
    env: Env,
    thp: ThpCtl,
    mm: Mm,
    /// Free pages before the address space existed.
    baseline: u64,
}

impl T {
    fn new() -> T {
        T::with_thp(ThpMode::Never)
    }

    fn with_thp(mode: ThpMode) -> T {
        let env = Env::new(8192);
        let baseline = env.free();
        let space = AddressSpace::new_user(env.alloc, env.mem, env.ctl, None, 3, GFP_KERNEL).unwrap();
        T { env, thp: ThpCtl::new(mode), mm: UserMm::new(space), baseline }
    }

    /// A private mapping of `nr_pages` pages at `BASE`, page `i` written with
    /// `first + i`.
    fn written(nr_pages: u64, first: u64) -> T {
        let mut t = T::new();
        t.mmap(BASE, nr_pages * K, RW, FIXED).unwrap();
        for i in 0..nr_pages {
            t.write(BASE + i * K, first + i).unwrap();
        }
        t
    }

    /// Runs `f` with a fresh gather and finishes it (flush, then free).
    fn gather<R>(&mut self, f: impl FnOnce(&mut Mm, &MmOps<'_, FakeMem>, &mut MmuGather) -> R) -> R {
        let ops = MmOps { thp: &self.thp, clear: self.env.mem };
        let mut tlb = MmuGather::new();
        let r = f(&mut self.mm, &ops, &mut tlb);
        tlb.finish(&self.env.tlb(), self.env.alloc);
        r
    }

    fn mmap(&mut self, addr: u64, len: u64, prot: u64, flags: u64) -> SysResult {
        self.gather(|mm, ops, tlb| mm.mmap(addr, len, prot, flags, -1, 0, ops, tlb))
    }
    fn mmap_full(&mut self, addr: u64, len: u64, prot: u64, flags: u64, fd: i64, off: u64) -> SysResult {
        self.gather(|mm, ops, tlb| mm.mmap(addr, len, prot, flags, fd, off, ops, tlb))
    }
    fn munmap(&mut self, addr: u64, len: u64) -> SysResult {
        self.gather(|mm, _, tlb| mm.munmap(addr, len, tlb))
    }
    fn mprotect(&mut self, addr: u64, len: u64, prot: u64) -> SysResult {
        self.gather(|mm, _, tlb| mm.mprotect(addr, len, prot, tlb))
    }
    fn madvise(&mut self, addr: u64, len: u64, advice: i32) -> SysResult {
        self.madvise_raw(addr, len, advice as u32 as u64)
    }
    fn madvise_raw(&mut self, addr: u64, len: u64, advice: u64) -> SysResult {
        self.gather(|mm, ops, tlb| mm.madvise(addr, len, advice, ops, tlb))
    }
    fn brk(&mut self, addr: u64) -> u64 {
        self.gather(|mm, ops, tlb| mm.brk(addr, ops, tlb))
    }
    fn reclaim(&mut self) -> u64 {
        self.gather(|mm, _, tlb| mm.reclaim_lazyfree(tlb))
    }

    fn translate(&self, addr: u64) -> Option<Translation> {
        self.mm.space.translate(va(addr))
    }

    /// An access as the CPU makes it: fault if the entry does not allow it,
    /// then set accessed (and dirty). Returns the frame.
    fn access(&mut self, addr: u64, write: bool) -> Result<Pfn, FaultError> {
        let ok = |t: Option<Translation>| {
            t.filter(|t| t.flags.contains(PteFlags::PRESENT) && (!write || t.flags.contains(PteFlags::WRITABLE)))
        };
        if ok(self.translate(addr)).is_none() {
            let access = FaultAccess { write, exec: false, user: true };
            self.gather(|mm, ops, tlb| mm.handle_fault(addr, access, ops, tlb))?;
        }
        let t = ok(self.translate(addr)).expect("mapped after a successful fault");
        assert!(self.mm.space.touch(va(addr), write));
        Ok(t.pfn)
    }
    fn read(&mut self, addr: u64) -> Result<u64, FaultError> {
        let pfn = self.access(addr, false)?;
        Ok(self.env.mem.read(pfn, word(addr)))
    }
    fn write(&mut self, addr: u64, value: u64) -> Result<(), FaultError> {
        let pfn = self.access(addr, true)?;
        self.env.mem.write(pfn, word(addr), value);
        Ok(())
    }

    fn faults(&self) -> u64 {
        self.thp.pgfault.load(Relaxed)
    }
    fn vma(&self, addr: u64) -> Vma {
        *self.mm.vmas.vma_lookup(addr).expect("a VMA maps the address")
    }
    fn ranges(&self) -> Vec<(u64, u64)> {
        self.mm.vmas.iter().map(|v| (v.start, v.end)).collect()
    }
    fn status(&self) -> String {
        let mut s = String::new();
        self.mm.write_status(&mut s).unwrap();
        s
    }
    /// Resident pages according to a walk of the page tables.
    fn resident_by_walk(&self) -> u64 {
        let c = self.mm.space.census().expect("page-table counts consistent");
        c.leaves[0] + c.leaves[1] * 512
    }

    /// Tears the address space down; everything must be back in the allocator.
    fn finish(self) {
        let T { env, mm, baseline, .. } = self;
        let mut tlb = MmuGather::new();
        mm.destroy(&mut tlb);
        tlb.finish(&env.tlb(), env.alloc);
        assert_eq!(env.free(), baseline, "pages leaked by the address space");
        assert_eq!(env.ctl.nr_pagetable_pages(), 0);
        assert_eq!(env.ctl.nr_anon_thps(), 0);
    }
}

fn word(addr: u64) -> usize {
    ((addr % K) / 8) as usize
}

fn rw_flags() -> VmFlags {
    VmFlags::READ | VmFlags::WRITE | VmFlags::MAY_ALL | VmFlags::ACCOUNT
}

// ---------------------------------------------------------------------------
// mmap
// ---------------------------------------------------------------------------

#[test]
fn mmap_private_anonymous_maps_zeroed_pages_on_demand() {
    let mut t = T::new();
    let a = t.mmap(0, 5 * K + 1, RW, PRIV).unwrap();
    assert!(is_aligned(a, K) && a >= t.mm.vmas.mmap_min_addr());
    let v = t.vma(a);
    assert_eq!((v.start, v.end, v.flags, v.kind), (a, a + 6 * K, rw_flags(), VmaKind::AnonPrivate), "len rounded up");
    assert_eq!(t.mm.rss_pages(), 0, "nothing resident before the first touch");
    assert_eq!(t.read(a + 5 * K + 8), Ok(0));
    t.write(a + 16, 0xabc).unwrap();
    assert_eq!(t.read(a + 16), Ok(0xabc));
    assert_eq!(t.mm.rss_pages(), 2);
    // A read-only mapping: reads work, writes are refused.
    let r = t.mmap(0, K, PROT_READ, PRIV).unwrap();
    assert_eq!(t.read(r), Ok(0));
    assert_eq!(t.write(r, 1), Err(FaultError::AccessDenied));
    t.finish();
}

#[test]
fn mmap_argument_errors_match_linux() {
    let mut t = T::new();
    let free = t.env.free();
    // sys_mmap: the offset must be page aligned, anonymous or not.
    assert_eq!(t.mmap_full(0, K, RW, PRIV, -1, 1), Err(EINVAL));
    assert_eq!(t.mmap_full(0, K, RW, MAP_PRIVATE, 3, 1), Err(EINVAL));
    // No file can be mapped: every descriptor is a bad one.
    assert_eq!(t.mmap_full(0, K, RW, MAP_PRIVATE, 3, 0), Err(EBADF));
    assert_eq!(t.mmap_full(0, K, RW, MAP_SHARED, -1, 0), Err(EBADF));
    // An anonymous mapping ignores a page-aligned offset.
    assert!(t.mmap_full(0, K, RW, PRIV, 7, 0x1000).is_ok());
    assert_eq!(t.mmap(0, 0, RW, PRIV), Err(EINVAL), "zero length");
    assert_eq!(t.mmap(0, u64::MAX, RW, PRIV), Err(ENOMEM), "length rounds up past 2^64");
    assert_eq!(t.mmap(0, TASK_SIZE + K, RW, PRIV), Err(ENOMEM), "longer than the address space");
    // Exactly one mapping type.
    assert_eq!(t.mmap(0, K, RW, MAP_ANONYMOUS), Err(EINVAL));
    assert_eq!(t.mmap(0, K, RW, MAP_SHARED_VALIDATE | MAP_ANONYMOUS), Err(EINVAL), "validate is for files");
    assert_eq!(t.mmap(0, K, RW, MAP_DROPPABLE | MAP_ANONYMOUS), Err(EINVAL));
    assert_eq!(t.mmap(0, K, RW, 0x0f | MAP_ANONYMOUS), Err(EINVAL));
    assert_eq!(t.mmap(0, K, RW, SHARED | MAP_GROWSDOWN), Err(EINVAL), "a shared stack");
    // MAP_FIXED: alignment, range, mmap_min_addr.
    assert_eq!(t.mmap(BASE + 1, K, RW, FIXED), Err(EINVAL));
    assert_eq!(t.mmap(TASK_SIZE - K, 2 * K, RW, FIXED), Err(ENOMEM));
    assert_eq!(t.mmap(0xffff_8000_0000_0000, K, RW, FIXED), Err(ENOMEM), "kernel half");
    assert_eq!(t.mmap(0x1000, K, RW, FIXED), Err(EPERM), "below vm.mmap_min_addr");
    assert_eq!(t.mmap(0, K, RW, FIXED), Err(EPERM));
    // MAP_HUGETLB: no pool (ENOMEM), or a size without an hstate (EINVAL).
    assert_eq!(t.mmap(0, M2, RW, PRIV | MAP_HUGETLB), Err(ENOMEM));
    assert_eq!(t.mmap(0, M2, RW, PRIV | MAP_HUGETLB | (21 << MAP_HUGE_SHIFT)), Err(ENOMEM));
    assert_eq!(t.mmap(0, M2, RW, PRIV | MAP_HUGETLB | (16 << MAP_HUGE_SHIFT)), Err(EINVAL));
    assert_eq!(t.mm.vmas.map_count(), 1, "only the successful mapping exists");
    assert_eq!(t.env.free(), free, "failed calls allocate nothing");
    t.finish();
}

#[test]
fn mmap_ignores_unknown_prot_bits_and_flags_like_linux() {
    let mut t = T::new();
    // do_mmap never validates prot (only mprotect does): unknown bits are dropped.
    let a = t.mmap(0, K, PROT_READ | 0x10 | PROT_SEM | PROT_GROWSDOWN, PRIV).unwrap();
    assert_eq!(t.vma(a).flags & VmFlags::ACCESS, VmFlags::READ);
    // Unknown and legacy flags are ignored by MAP_PRIVATE and MAP_SHARED.
    let b = t.mmap(0, K, RW, PRIV | MAP_DENYWRITE | MAP_EXECUTABLE | MAP_SYNC | (1 << 40)).unwrap();
    assert_eq!(t.vma(b).flags, rw_flags());
    let c = t.mmap(0, K, RW, SHARED | MAP_UNINITIALIZED | (1 << 33)).unwrap();
    assert!(matches!(t.vma(c).kind, VmaKind::AnonShared(_)));
    t.finish();
}

#[test]
fn mmap_fixed_noreplace_and_fixed_replace() {
    let mut t = T::new();
    assert_eq!(t.mmap(BASE, 4 * K, RW, FIXED), Ok(BASE));
    t.write(BASE + K, 0x55).unwrap();
    assert_eq!(t.mmap(BASE + 3 * K, 2 * K, RW, PRIV | MAP_FIXED_NOREPLACE), Err(EEXIST));
    assert_eq!(t.mmap(BASE + 4 * K, 2 * K, RW, PRIV | MAP_FIXED_NOREPLACE), Ok(BASE + 4 * K));
    assert_eq!(t.ranges(), vec![(BASE, BASE + 6 * K)], "adjacent private mappings merge");
    // MAP_FIXED over the written page replaces it: the data and the page are gone.
    let rss = t.mm.rss_pages();
    assert_eq!(t.mmap(BASE + K, K, PROT_READ, FIXED), Ok(BASE + K));
    assert_eq!(t.mm.rss_pages(), rss - 1);
    assert_eq!(t.read(BASE + K), Ok(0));
    assert_eq!(t.ranges(), vec![(BASE, BASE + K), (BASE + K, BASE + 2 * K), (BASE + 2 * K, BASE + 6 * K)]);
    t.finish();
}

#[test]
fn mmap_placement_hints_and_alignment() {
    let mut t = T::new();
    // A free hint is used (rounded down to a page).
    assert_eq!(t.mmap(BASE + 0x123, K, RW, PRIV), Ok(BASE));
    // An occupied hint is not: the mapping goes elsewhere.
    let b = t.mmap(BASE, K, RW, PRIV).unwrap();
    assert_ne!(b, BASE);
    // A hint below mmap_min_addr is raised to it; one that rounds down to 0 is
    // no hint (Linux round_hint_to_min).
    assert_eq!(t.mmap(0x1000, K, RW, PRIV), Ok(t.mm.vmas.mmap_min_addr()));
    assert_ne!(t.mmap(0x10, K, RW, PRIV), Ok(0x1_1000));
    // Anonymous mappings of a multiple of 2 MiB without a hint are 2 MiB aligned.
    let h = t.mmap(0, 2 * M2, RW, PRIV).unwrap();
    assert!(is_aligned(h, M2), "{h:#x}");
    // MAP_32BIT lands in the second GiB.
    let l = t.mmap(0, K, RW, PRIV | MAP_32BIT).unwrap();
    assert!((0x4000_0000..0x8000_0000).contains(&l), "{l:#x}");
    t.finish();
}

#[test]
fn mmap_flags_become_vma_flags() {
    let mut t = T::new();
    let a = t.mmap(0, K, RW, PRIV | MAP_NORESERVE).unwrap();
    assert_eq!(t.vma(a).flags, VmFlags::READ | VmFlags::WRITE | VmFlags::MAY_ALL | VmFlags::NORESERVE);
    let s = t.mmap(0, K, RW, PRIV | MAP_STACK).unwrap();
    assert!(t.vma(s).flags.contains(VmFlags::NOHUGEPAGE), "MAP_STACK means no THP (Linux 6.7)");
    let r = t.mmap(0, K, PROT_READ, PRIV).unwrap();
    assert_eq!(t.vma(r).flags, VmFlags::READ | VmFlags::MAY_ALL, "read-only is not accounted");
    let sh = t.mmap(0, K, RW, SHARED).unwrap();
    let f = t.vma(sh).flags;
    assert!(f.contains(VmFlags::SHARED | VmFlags::MAYSHARE) && !f.contains(VmFlags::ACCOUNT));
    // MAP_GROWSDOWN: a fault just below grows the VMA down.
    let g = t.mmap(BASE + 64 * K, 4 * K, RW, FIXED | MAP_GROWSDOWN).unwrap();
    assert!(t.vma(g).flags.contains(VmFlags::GROWSDOWN));
    t.write(g - K, 9).unwrap();
    assert_eq!(t.vma(g).start, g - K);
    t.finish();
}

#[test]
fn mmap_respects_max_map_count() {
    let mut t = T::new();
    t.mm.vmas.set_max_map_count(3);
    // Different protections so the mappings do not merge.
    t.mmap(BASE, K, RW, FIXED).unwrap();
    t.mmap(BASE + K, K, PROT_READ, FIXED).unwrap();
    t.mmap(BASE + 2 * K, 3 * K, RW, FIXED).unwrap();
    assert_eq!(t.mmap(BASE + 10 * K, K, RW, FIXED), Err(ENOMEM));
    // Merging into a neighbour needs no new VMA.
    assert_eq!(t.mmap(BASE + 5 * K, K, RW, FIXED), Ok(BASE + 5 * K));
    assert_eq!(t.mm.vmas.map_count(), 3);
    // Splitting one VMA in three would need a fourth: every call refuses.
    assert_eq!(t.munmap(BASE + 3 * K, K), Err(ENOMEM));
    assert_eq!(t.mprotect(BASE + 3 * K, K, PROT_READ), Err(ENOMEM));
    assert_eq!(t.madvise(BASE + 3 * K, K, MADV_HUGEPAGE), Err(ENOMEM));
    assert_eq!(t.ranges(), vec![(BASE, BASE + K), (BASE + K, BASE + 2 * K), (BASE + 2 * K, BASE + 6 * K)]);
    // Removing a whole VMA is fine.
    assert_eq!(t.munmap(BASE, K), Ok(0));
    assert_eq!(t.mm.vmas.map_count(), 2);
    t.finish();
}

#[test]
fn map_populate_prefaults_and_map_locked_too() {
    let mut t = T::new();
    let a = t.mmap(0, 8 * K, RW, PRIV | MAP_POPULATE).unwrap();
    assert_eq!(t.mm.rss_pages(), 8);
    for i in 0..8 {
        let f = t.translate(a + i * K).unwrap().flags;
        assert!(f.contains(PteFlags::PRESENT | PteFlags::WRITABLE | PteFlags::DIRTY), "write-faulted: {f:?}");
    }
    let faults = t.faults();
    for i in 0..8 {
        t.write(a + i * K, i).unwrap();
    }
    assert_eq!(t.faults(), faults, "no fault after MAP_POPULATE");
    // MAP_NONBLOCK cancels it; PROT_NONE is never populated.
    t.mmap(0, 4 * K, RW, PRIV | MAP_POPULATE | MAP_NONBLOCK).unwrap();
    t.mmap(0, 4 * K, PROT_NONE, PRIV | MAP_POPULATE).unwrap();
    assert_eq!(t.mm.rss_pages(), 8);
    // A read-only mapping is populated by read faults.
    let r = t.mmap(0, 2 * K, PROT_READ, PRIV | MAP_POPULATE).unwrap();
    assert!(!t.translate(r).unwrap().flags.contains(PteFlags::DIRTY));
    // MAP_LOCKED: VM_LOCKED, populated, counted in VmLck.
    let l = t.mmap(0, 4 * K, RW, PRIV | MAP_LOCKED).unwrap();
    assert!(t.vma(l).flags.contains(VmFlags::LOCKED));
    assert_eq!(t.mm.rss_pages(), 14);
    assert!(t.status().contains("VmLck:\t      16 kB\n"));
    t.finish();
}

// ---------------------------------------------------------------------------
// munmap
// ---------------------------------------------------------------------------

#[test]
fn munmap_argument_errors() {
    let mut t = T::new();
    t.mmap(BASE, 4 * K, RW, FIXED).unwrap();
    assert_eq!(t.munmap(BASE + 1, K), Err(EINVAL), "unaligned");
    assert_eq!(t.munmap(BASE, 0), Err(EINVAL), "zero length");
    assert_eq!(t.munmap(TASK_SIZE + K, K), Err(EINVAL), "above TASK_SIZE");
    assert_eq!(t.munmap(BASE, TASK_SIZE), Err(EINVAL), "runs past TASK_SIZE");
    assert_eq!(t.munmap(0xffff_8000_0000_0000, K), Err(EINVAL), "kernel half");
    assert_eq!(t.ranges(), vec![(BASE, BASE + 4 * K)]);
    // Holes are fine, including an unmapped range entirely.
    assert_eq!(t.munmap(BASE + 100 * K, 3), Ok(0));
    assert_eq!(t.munmap(BASE - 2 * K, 3 * K), Ok(0), "hole then mapping");
    assert_eq!(t.ranges(), vec![(BASE + K, BASE + 4 * K)]);
    t.finish();
}

#[test]
fn munmap_splits_frees_pages_and_remap_merges() {
    let mut t = T::written(8, 100);
    let free = t.env.free();
    assert_eq!(t.munmap(BASE + 2 * K, 3 * K - 100), Ok(0), "length rounds up");
    assert_eq!(t.ranges(), vec![(BASE, BASE + 2 * K), (BASE + 5 * K, BASE + 8 * K)]);
    assert_eq!(t.env.free(), free + 3, "three pages back after the flush");
    assert_eq!(t.mm.rss_pages(), 5);
    assert_eq!(t.read(BASE + 6 * K), Ok(106), "the rest keeps its data");
    assert_eq!(t.read(BASE + 3 * K), Err(FaultError::NoVma));
    // Mapping the hole again with the same flags merges all three.
    t.mmap(BASE + 2 * K, 3 * K, RW, FIXED).unwrap();
    assert_eq!(t.ranges(), vec![(BASE, BASE + 8 * K)]);
    assert_eq!(t.read(BASE + 3 * K), Ok(0));
    // Unmapping everything frees the page tables as well.
    t.munmap(BASE, 8 * K).unwrap();
    assert_eq!(t.mm.space.pgtables_bytes(), 0);
    assert_eq!(t.mm.rss_pages(), 0);
    t.finish();
}

// ---------------------------------------------------------------------------
// mprotect
// ---------------------------------------------------------------------------

#[test]
fn mprotect_argument_errors() {
    let mut t = T::new();
    t.mmap(BASE, 4 * K, RW, FIXED).unwrap();
    assert_eq!(t.mprotect(BASE + 1, K, PROT_READ), Err(EINVAL), "unaligned");
    assert_eq!(t.mprotect(BASE, 0, PROT_READ), Ok(0), "zero length, even with bad bits");
    assert_eq!(t.mprotect(0x7000_0000, 0, 0x80), Ok(0), "zero length where nothing is mapped");
    assert_eq!(t.mprotect(BASE, K, PROT_READ | 0x10), Err(EINVAL), "unknown prot bit");
    assert_eq!(t.mprotect(BASE, K, PROT_GROWSDOWN | PROT_GROWSUP), Err(EINVAL), "both grow directions");
    assert_eq!(t.mprotect(BASE, u64::MAX - K, PROT_READ), Err(ENOMEM), "range overflows");
    assert_eq!(t.mprotect(BASE + 8 * K, K, PROT_READ), Err(ENOMEM), "unmapped");
    assert_eq!(t.mprotect(BASE - K, 2 * K, PROT_READ), Err(ENOMEM), "hole at the start");
    assert_eq!(t.mprotect(0xffff_8000_0000_0000, K, PROT_READ), Err(ENOMEM), "kernel half");
    assert_eq!(t.mprotect(BASE, K, PROT_READ | PROT_GROWSUP), Err(EINVAL), "no VM_GROWSUP on x86");
    assert_eq!(t.mprotect(BASE, K, PROT_READ | PROT_GROWSDOWN), Err(EINVAL), "not a grows-down VMA");
    assert_eq!(t.ranges(), vec![(BASE, BASE + 4 * K)], "nothing changed so far");
    assert_eq!(t.vma(BASE).flags, rw_flags());
    // PROT_SEM is accepted (and ignored).
    assert_eq!(t.mprotect(BASE, 4 * K, PROT_READ | PROT_SEM), Ok(0));
    assert_eq!(t.vma(BASE).flags & VmFlags::ACCESS, VmFlags::READ);
    t.finish();
}

#[test]
fn mprotect_applies_the_prefix_before_a_hole_then_fails() {
    let mut t = T::new();
    t.mmap(BASE, 2 * K, RW, FIXED).unwrap();
    t.mmap(BASE + 3 * K, 2 * K, RW, FIXED).unwrap();
    assert_eq!(t.mprotect(BASE, 5 * K, PROT_READ), Err(ENOMEM));
    assert_eq!(t.vma(BASE).flags & VmFlags::ACCESS, VmFlags::READ, "before the hole: changed");
    assert_eq!(t.vma(BASE + 3 * K).flags & VmFlags::ACCESS, VmFlags::READ | VmFlags::WRITE, "after: not");
    // A hole at the end: everything mapped is changed, then ENOMEM.
    assert_eq!(t.mprotect(BASE + 4 * K, 3 * K, PROT_READ), Err(ENOMEM));
    assert_eq!(t.vma(BASE + 4 * K).flags & VmFlags::ACCESS, VmFlags::READ);
    assert_eq!(t.mprotect(BASE + 3 * K, 2 * K, RW), Ok(0));
    // A VMA lacking VM_MAYWRITE (like a read-only file mapping) stops the walk
    // with EACCES after the VMAs before it were changed.
    let nomay = VmFlags::READ | VmFlags::MAYREAD;
    t.mm.vmas
        .mmap_region(BASE + 5 * K, K, nomay, VmaKind::AnonPrivate, linear_pgoff(BASE + 5 * K), MapFixed::NoReplace)
        .unwrap();
    assert_eq!(t.mprotect(BASE + 3 * K, 3 * K, PROT_READ | PROT_EXEC), Err(EACCES));
    assert_eq!(t.vma(BASE + 3 * K).flags & VmFlags::ACCESS, VmFlags::READ | VmFlags::EXEC, "changed before the failure");
    assert_eq!(t.vma(BASE + 5 * K).flags, nomay);
    assert_eq!(t.mprotect(BASE + 5 * K, K, PROT_READ), Ok(0), "what VM_MAY* allows");
    t.finish();
}

#[test]
fn mprotect_splits_merges_and_updates_present_entries() {
    let mut t = T::written(8, 1);
    assert_eq!(t.mprotect(BASE + 2 * K, 3 * K, PROT_READ), Ok(0));
    assert_eq!(t.ranges(), vec![(BASE, BASE + 2 * K), (BASE + 2 * K, BASE + 5 * K), (BASE + 5 * K, BASE + 8 * K)]);
    // Downgrade is immediate: the present entry lost its write bit.
    assert!(!t.translate(BASE + 3 * K).unwrap().flags.contains(PteFlags::WRITABLE));
    assert_eq!(t.write(BASE + 3 * K, 0), Err(FaultError::AccessDenied));
    assert_eq!(t.read(BASE + 3 * K), Ok(4));
    // Back to RW: the VMAs merge again (VM_ACCOUNT was kept) and the entries are
    // writable without a fault.
    assert_eq!(t.mprotect(BASE + 2 * K, 3 * K, RW), Ok(0));
    assert_eq!(t.ranges(), vec![(BASE, BASE + 8 * K)]);
    let faults = t.faults();
    t.write(BASE + 3 * K, 44).unwrap();
    assert_eq!(t.faults(), faults);
    // A read-only mapping made writable becomes accountable (Linux mprotect_fixup).
    let r = t.mmap(0, K, PROT_READ, PRIV).unwrap();
    t.mprotect(r, K, RW).unwrap();
    assert!(t.vma(r).flags.contains(VmFlags::ACCOUNT));
    t.finish();
}

#[test]
fn mprotect_none_makes_entries_fault_but_keeps_the_pages() {
    let mut t = T::new();
    t.mmap(BASE, 4 * K, RW, FIXED).unwrap();
    t.write(BASE + K, 0x77).unwrap();
    t.mprotect(BASE, 4 * K, PROT_NONE).unwrap();
    let e = t.translate(BASE + K).unwrap();
    assert!(!e.flags.contains(PteFlags::PRESENT) && e.flags.contains(PteFlags::PROTNONE), "{:?}", e.flags);
    assert_eq!(t.mm.rss_pages(), 1, "still resident");
    assert_eq!(t.read(BASE + K), Err(FaultError::AccessDenied));
    t.mprotect(BASE, 4 * K, PROT_READ).unwrap();
    let f = t.translate(BASE + K).unwrap().flags;
    assert!(f.contains(PteFlags::PRESENT) && !f.contains(PteFlags::WRITABLE));
    assert_eq!(t.read(BASE + K), Ok(0x77));
    // Unmapping a PROT_NONE page frees it.
    t.mprotect(BASE, 4 * K, PROT_NONE).unwrap();
    t.munmap(BASE, 4 * K).unwrap();
    assert_eq!(t.mm.rss_pages(), 0);
    t.finish();
}

#[test]
fn mprotect_growsdown_extends_to_the_start_of_the_stack() {
    let mut t = T::new();
    let top = BASE + 64 * K;
    t.mmap(top - 8 * K, 8 * K, RW, FIXED | MAP_GROWSDOWN).unwrap();
    assert_eq!(t.mprotect(top - K, K, PROT_READ | PROT_GROWSDOWN), Ok(0));
    assert_eq!(t.vma(top - 8 * K).end, top, "applied from the VMA start");
    assert_eq!(t.vma(top - 8 * K).flags & VmFlags::ACCESS, VmFlags::READ);
    t.finish();
}

// ---------------------------------------------------------------------------
// madvise
// ---------------------------------------------------------------------------

#[test]
fn madvise_argument_errors_and_holes() {
    let mut t = T::new();
    t.mmap(BASE, 2 * K, RW, FIXED).unwrap();
    t.mmap(BASE + 3 * K, 2 * K, RW, FIXED).unwrap();
    for bad in [5, 6, 7, 26, 99, 100, 101, 104, -1] {
        assert_eq!(t.madvise(BASE, K, bad), Err(EINVAL), "advice {bad}");
    }
    assert_eq!(t.madvise(BASE + 1, K, MADV_NORMAL), Err(EINVAL), "unaligned");
    assert_eq!(t.madvise(0x7000_0000, 0, MADV_DONTNEED), Ok(0), "zero length, unmapped");
    assert_eq!(t.madvise(BASE, u64::MAX, MADV_NORMAL), Err(EINVAL), "length rounds past 2^64");
    assert_eq!(t.madvise(BASE, u64::MAX - BASE, MADV_NORMAL), Err(EINVAL), "start + len wraps");
    assert_eq!(t.madvise(0x7000_0000, K, MADV_DONTNEED), Err(ENOMEM), "unmapped");
    assert_eq!(t.madvise(0xffff_8000_0000_0000, K, MADV_NORMAL), Err(ENOMEM), "kernel half");
    // Unimplemented but valid advice.
    assert_eq!(t.madvise(BASE, K, MADV_COLLAPSE), Err(EINVAL));
    assert_eq!(t.madvise(BASE, 0, MADV_COLLAPSE), Ok(0), "valid advice with zero length");
    // Holes: the mapped parts get the advice, the call reports ENOMEM.
    assert_eq!(t.madvise(BASE - K, 7 * K, MADV_DONTDUMP), Err(ENOMEM));
    assert!(t.vma(BASE).flags.contains(VmFlags::DONTDUMP));
    assert!(t.vma(BASE + 3 * K).flags.contains(VmFlags::DONTDUMP));
    // Linux's `int behavior`: the upper half of the register is ignored.
    assert_eq!(t.madvise_raw(BASE, 2 * K, (1 << 32) | MADV_DODUMP as u64), Ok(0));
    assert!(!t.vma(BASE).flags.contains(VmFlags::DONTDUMP));
    // WILLNEED and COLD are accepted hints.
    assert_eq!(t.madvise(BASE, 2 * K, MADV_WILLNEED), Ok(0));
    assert_eq!(t.madvise(BASE, 2 * K, MADV_COLD), Ok(0));
    assert_eq!(t.madvise(BASE, 2 * K, MADV_PAGEOUT), Ok(0));
    assert_eq!(t.mm.rss_pages(), 0, "WILLNEED does not prefault anonymous memory");
    t.finish();
}

#[test]
fn madvise_flag_advice_splits_and_merges() {
    let mut t = T::new();
    t.mmap(BASE, 8 * K, RW, FIXED).unwrap();
    assert_eq!(t.madvise(BASE + 2 * K, 2 * K, MADV_HUGEPAGE), Ok(0));
    assert_eq!(t.mm.vmas.map_count(), 3);
    assert!(t.vma(BASE + 2 * K).flags.contains(VmFlags::HUGEPAGE));
    assert_eq!(t.madvise(BASE + 2 * K, 2 * K, MADV_NOHUGEPAGE), Ok(0));
    assert!(t.vma(BASE + 2 * K).flags.contains(VmFlags::NOHUGEPAGE));
    for (on, off, flag) in [
        (MADV_DONTFORK, MADV_DOFORK, VmFlags::DONTCOPY),
        (MADV_RANDOM, MADV_NORMAL, VmFlags::RAND_READ),
        (MADV_SEQUENTIAL, MADV_NORMAL, VmFlags::SEQ_READ),
        (MADV_MERGEABLE, MADV_UNMERGEABLE, VmFlags::MERGEABLE),
        (MADV_WIPEONFORK, MADV_KEEPONFORK, VmFlags::WIPEONFORK),
    ] {
        assert_eq!(t.madvise(BASE, 8 * K, on), Ok(0));
        assert!(t.vma(BASE).flags.contains(flag), "{flag:?}");
        assert_eq!(t.madvise(BASE, 8 * K, off), Ok(0));
        assert!(!t.vma(BASE).flags.contains(flag), "{flag:?}");
    }
    // WIPEONFORK is for private anonymous memory only.
    let s = t.mmap(0, K, RW, SHARED).unwrap();
    assert_eq!(t.madvise(s, K, MADV_WIPEONFORK), Err(EINVAL));
    t.finish();
}

/// The fork and KSM advice only records VMA flags (see the module doc): the
/// pages, the page tables and `/proc/PID/status` do not change, and
/// `/proc/PID/maps` shows the split but not the flags.
#[test]
fn madvise_fork_and_ksm_advice_only_records_vma_flags() {
    let mut t = T::written(4, 0x40);
    let frames: Vec<_> = (0..4).map(|i| t.translate(BASE + i * K)).collect();
    let (status, pgtables) = (t.status(), t.mm.space.pgtables_bytes());
    for advice in [MADV_DONTFORK, MADV_MERGEABLE, MADV_WIPEONFORK] {
        assert_eq!(t.madvise(BASE + K, 2 * K, advice), Ok(0));
    }
    let recorded = VmFlags::DONTCOPY | VmFlags::MERGEABLE | VmFlags::WIPEONFORK;
    assert_eq!(t.ranges(), vec![(BASE, BASE + K), (BASE + K, BASE + 3 * K), (BASE + 3 * K, BASE + 4 * K)]);
    assert_eq!(t.vma(BASE + K).flags, rw_flags() | recorded);
    assert_eq!((t.vma(BASE).flags, t.vma(BASE + 3 * K).flags), (rw_flags(), rw_flags()));
    let mut maps = String::new();
    t.mm.write_maps(&mut maps).unwrap();
    assert_eq!(maps.lines().filter(|l| l.contains(" rw-p 00000000 00:00 0")).count(), 3, "{maps}");
    assert_eq!((0..4).map(|i| t.translate(BASE + i * K)).collect::<Vec<_>>(), frames);
    assert_eq!((t.status(), t.mm.space.pgtables_bytes()), (status, pgtables));
    for i in 0..4 {
        assert_eq!(t.read(BASE + i * K), Ok(0x40 + i));
    }
    // The opposite advice clears the flags and the VMAs merge again.
    for advice in [MADV_DOFORK, MADV_UNMERGEABLE, MADV_KEEPONFORK] {
        assert_eq!(t.madvise(BASE, 4 * K, advice), Ok(0));
    }
    assert_eq!(t.ranges(), vec![(BASE, BASE + 4 * K)]);
    assert_eq!(t.vma(BASE).flags, rw_flags());

    // Shared memory: KSM skips it without an error, WIPEONFORK is EINVAL, the
    // other fork advice is recorded.
    let s = BASE + 5 * K;
    t.mmap(s, K, RW, SHARED | MAP_FIXED).unwrap();
    let shared = t.vma(s).flags;
    assert_eq!(t.madvise(s, K, MADV_MERGEABLE), Ok(0));
    assert_eq!(t.madvise(s, K, MADV_WIPEONFORK), Err(EINVAL));
    assert_eq!(t.vma(s).flags, shared);
    assert_eq!(t.madvise(s, K, MADV_KEEPONFORK), Ok(0));
    assert_eq!(t.madvise(s, K, MADV_DONTFORK), Ok(0));
    assert_eq!(t.vma(s).flags, shared | VmFlags::DONTCOPY);
    // Over a private VMA and then the shared one, the private one is marked
    // before the shared one fails (Linux madvise_walk_vmas).
    t.mmap(s - K, K, RW, FIXED).unwrap();
    assert_eq!(t.madvise(s - K, 2 * K, MADV_WIPEONFORK), Err(EINVAL));
    assert_eq!(t.vma(s - K).flags, rw_flags() | VmFlags::WIPEONFORK);
    assert_eq!(t.vma(s).flags, shared | VmFlags::DONTCOPY);
    t.finish();
}

#[test]
fn madvise_dontneed_zeroes_private_memory_and_frees_tables() {
    let mut t = T::written(16, 0x100);
    let free = t.env.free();
    assert_eq!(t.madvise(BASE + 4 * K, 4 * K, MADV_DONTNEED), Ok(0));
    assert_eq!(t.env.free(), free + 4);
    assert_eq!(t.mm.rss_pages(), 12);
    assert_eq!(t.read(BASE + 5 * K), Ok(0), "next read sees zeroes");
    assert_eq!(t.read(BASE + 8 * K), Ok(0x108));
    assert_eq!(t.ranges(), vec![(BASE, BASE + 16 * K)], "the VMA is untouched");
    t.madvise(BASE, 16 * K, MADV_DONTNEED).unwrap();
    assert_eq!(t.mm.space.pgtables_bytes(), 0, "empty page tables reclaimed");
    // Locked memory refuses DONTNEED, but not DONTNEED_LOCKED.
    let l = t.mmap(0, 2 * K, RW, PRIV | MAP_LOCKED).unwrap();
    assert_eq!(t.madvise(l, 2 * K, MADV_DONTNEED), Err(EINVAL));
    assert_eq!(t.madvise(l, 2 * K, MADV_FREE), Err(EINVAL));
    assert_eq!(t.madvise(l, 2 * K, MADV_COLD), Err(EINVAL));
    assert_eq!(t.madvise(l, 2 * K, MADV_DONTNEED_LOCKED), Ok(0));
    assert_eq!(t.mm.rss_pages(), 0);
    t.finish();
}

#[test]
fn madvise_dontneed_splits_a_partly_covered_huge_page() {
    let mut t = T::with_thp(ThpMode::Always);
    t.mmap(BASE, M2, RW, FIXED).unwrap();
    for i in 0..512 {
        t.write(BASE + i * K, i).unwrap();
    }
    assert_eq!(t.translate(BASE).unwrap().level, Level::Pmd);
    assert_eq!(t.mm.rss_pages(), 512);
    assert_eq!(t.madvise(BASE + 7 * K, K, MADV_DONTNEED), Ok(0));
    assert_eq!(t.translate(BASE + 8 * K).unwrap().level, Level::Pte, "split into PTEs");
    assert_eq!(t.mm.rss_pages(), 511);
    assert_eq!(t.read(BASE + 7 * K), Ok(0));
    assert_eq!(t.read(BASE + 300 * K), Ok(300));
    assert_eq!(t.resident_by_walk(), t.mm.rss_pages());
    t.finish();
}

#[test]
fn madvise_free_drops_clean_pages_on_reclaim_and_keeps_rewritten_ones() {
    let mut t = T::written(8, 0x200);
    assert_eq!(t.madvise(BASE, 8 * K, MADV_FREE), Ok(0));
    assert_eq!(t.mm.lazyfree_pages(), 8);
    assert!(!t.translate(BASE).unwrap().flags.contains(PteFlags::DIRTY), "marked clean");
    // Nothing happens until memory pressure; the data is still readable.
    assert_eq!(t.mm.rss_pages(), 8);
    assert_eq!(t.read(BASE + 2 * K), Ok(0x202));
    // A page written after the advice keeps its data.
    t.write(BASE + 3 * K, 0xbeef).unwrap();
    let free = t.env.free();
    assert_eq!(t.reclaim(), 7);
    assert_eq!(t.env.free(), free + 7);
    assert_eq!(t.mm.rss_pages(), 1);
    assert_eq!(t.read(BASE + 3 * K), Ok(0xbeef));
    assert!(t.translate(BASE + 2 * K).is_none());
    assert_eq!(t.read(BASE + 2 * K), Ok(0), "dropped pages read as zeroes");
    assert_eq!(t.reclaim(), 0, "the ranges were consumed");
    assert_eq!(t.mm.lazyfree_pages(), 0);
    t.finish();
}

#[test]
fn madvise_free_rules() {
    let mut t = T::new();
    // Shared memory is not anonymous in Linux's sense: EINVAL.
    let s = t.mmap(0, 2 * K, RW, SHARED).unwrap();
    t.write(s, 1).unwrap();
    assert_eq!(t.madvise(s, 2 * K, MADV_FREE), Err(EINVAL));
    // Holes: mapped parts are marked, ENOMEM returned.
    t.mmap(BASE, 2 * K, RW, FIXED).unwrap();
    t.write(BASE, 5).unwrap();
    assert_eq!(t.madvise(BASE, 4 * K, MADV_FREE), Err(ENOMEM));
    assert_eq!(t.mm.lazyfree_pages(), 2);
    // DONTNEED, munmap and MAP_FIXED forget lazy-free ranges.
    t.madvise(BASE, 2 * K, MADV_DONTNEED).unwrap();
    assert_eq!(t.mm.lazyfree_pages(), 0);
    t.write(BASE, 6).unwrap();
    t.madvise(BASE, 2 * K, MADV_FREE).unwrap();
    t.munmap(BASE + K, K).unwrap();
    assert_eq!(t.mm.lazyfree_pages(), 1);
    t.mmap(BASE, K, RW, FIXED).unwrap();
    assert_eq!(t.mm.lazyfree_pages(), 0);
    // Nothing resident: nothing recorded.
    t.madvise(BASE, K, MADV_FREE).unwrap();
    assert_eq!(t.mm.lazyfree_pages(), 0);
    assert_eq!(t.reclaim(), 0);
    assert_eq!(t.read(s), Ok(1), "shared data untouched");
    t.finish();
}

#[test]
fn madvise_free_of_huge_pages() {
    let mut t = T::with_thp(ThpMode::Always);
    t.mmap(BASE, 2 * M2, RW, FIXED).unwrap();
    t.write(BASE, 1).unwrap();
    t.write(BASE + M2, 2).unwrap();
    assert_eq!(t.mm.rss_pages(), 1024);
    // Whole first huge page, and one page of the second (which splits).
    t.madvise(BASE, M2 + K, MADV_FREE).unwrap();
    assert_eq!(t.translate(BASE).unwrap().level, Level::Pmd);
    assert_eq!(t.translate(BASE + M2).unwrap().level, Level::Pte);
    let free = t.env.free();
    assert_eq!(t.reclaim(), 513);
    assert_eq!(t.env.free(), free + 513, "the unsplit huge page and its deposited table; the split one keeps 511 mappings");
    assert_eq!(t.mm.rss_pages(), 511);
    assert_eq!(t.read(BASE), Ok(0));
    assert_eq!(t.read(BASE + M2 + K), Ok(0), "untouched sub-page of the split page");
    assert_eq!(t.resident_by_walk(), t.mm.rss_pages());
    t.finish();
}

#[test]
fn madvise_populate_write_maps_every_page_writable() {
    let mut t = T::new();
    let a = t.mmap(0, 64 * K, RW, PRIV).unwrap();
    assert_eq!(t.madvise(a, 64 * K, MADV_POPULATE_WRITE), Ok(0));
    for i in 0..64 {
        let f = t.translate(a + i * K).unwrap().flags;
        assert!(f.contains(PteFlags::PRESENT | PteFlags::WRITABLE | PteFlags::DIRTY), "page {i}: {f:?}");
    }
    assert_eq!(t.mm.rss_pages(), 64);
    let faults = t.faults();
    for i in 0..64 {
        t.write(a + i * K + 8, i).unwrap();
    }
    assert_eq!(t.madvise(a, 64 * K, MADV_POPULATE_WRITE), Ok(0));
    assert_eq!(t.faults(), faults, "populated memory takes no faults");
    // POPULATE_READ maps read-only memory without dirtying it.
    let r = t.mmap(0, 4 * K, PROT_READ, PRIV).unwrap();
    assert_eq!(t.madvise(r, 4 * K, MADV_POPULATE_READ), Ok(0));
    assert!(t.translate(r + 3 * K).unwrap().flags.contains(PteFlags::PRESENT));
    t.finish();
}

#[test]
fn madvise_populate_errors_match_linux() {
    let mut t = T::new();
    let ro = t.mmap(BASE, 2 * K, PROT_READ, FIXED).unwrap();
    let wo = t.mmap(BASE + 4 * K, 2 * K, PROT_WRITE, FIXED).unwrap();
    let none = t.mmap(BASE + 8 * K, 2 * K, PROT_NONE, FIXED).unwrap();
    // check_vma_flags without FOLL_FORCE: the mapping must allow the access.
    assert_eq!(t.madvise(ro, 2 * K, MADV_POPULATE_WRITE), Err(EINVAL));
    assert_eq!(t.madvise(wo, 2 * K, MADV_POPULATE_READ), Err(EINVAL), "write-only is not readable");
    assert_eq!(t.madvise(none, 2 * K, MADV_POPULATE_READ), Err(EINVAL));
    assert_eq!(t.madvise(wo, 2 * K, MADV_POPULATE_WRITE), Ok(0));
    // A hole stops it with ENOMEM after the part before was populated.
    assert_eq!(t.madvise(ro, 4 * K, MADV_POPULATE_READ), Err(ENOMEM));
    assert!(t.translate(ro + K).is_some());
    assert_eq!(t.madvise(BASE + 20 * K, K, MADV_POPULATE_READ), Err(ENOMEM));
    t.finish();
}

#[test]
fn populate_of_a_huge_page_faults_once() {
    let mut t = T::with_thp(ThpMode::Always);
    t.mmap(BASE, M2, RW, FIXED).unwrap();
    let faults = t.faults();
    assert_eq!(t.madvise(BASE, M2, MADV_POPULATE_WRITE), Ok(0));
    assert_eq!(t.faults(), faults + 1);
    assert_eq!(t.translate(BASE + M2 - K).unwrap().level, Level::Pmd);
    assert_eq!(t.mm.rss_pages(), 512);
    t.finish();
}

// ---------------------------------------------------------------------------
// Shared anonymous memory
// ---------------------------------------------------------------------------

#[test]
fn shared_anonymous_keeps_data_across_dontneed() {
    let mut t = T::with_thp(ThpMode::Always);
    let free = t.env.free();
    let s = t.mmap(0, 4 * K, RW, SHARED).unwrap();
    let v = t.vma(s);
    assert!(matches!(v.kind, VmaKind::AnonShared(_)) && v.pgoff == 0);
    t.write(s + K, 0x5a5a).unwrap();
    let pfn = t.translate(s + K).unwrap().pfn;
    assert_eq!(t.translate(s + K).unwrap().level, Level::Pte, "no THP for shared memory");
    assert_eq!(t.mm.space.rss_pages(RssKind::Shmem), 1);
    assert_eq!(t.mm.space.rss_pages(RssKind::Anon), 0);
    assert_eq!(t.madvise(s, 4 * K, MADV_DONTNEED), Ok(0));
    assert!(t.translate(s + K).is_none());
    assert_eq!(t.mm.space.rss_pages(RssKind::Shmem), 0);
    assert_eq!(t.read(s + K), Ok(0x5a5a), "the object kept the data");
    assert_eq!(t.translate(s + K).unwrap().pfn, pfn, "same page");
    assert_eq!(t.mm.shmem().nr_pages(), 1);
    // Splitting the VMA keeps offsets: the page is found through the new pgoff.
    t.mprotect(s, K, PROT_READ).unwrap();
    assert_eq!(t.mm.vmas.map_count(), 2);
    t.madvise(s, 4 * K, MADV_DONTNEED).unwrap();
    assert_eq!(t.read(s + K), Ok(0x5a5a));
    // The object lives until its last mapping goes.
    t.munmap(s, 2 * K).unwrap();
    assert_eq!(t.mm.shmem().nr_objects(), 1);
    assert_eq!(t.mm.shmem().nr_pages(), 1, "pages of unmapped offsets stay with the object");
    t.write(s + 3 * K, 1).unwrap();
    t.munmap(s + 2 * K, 2 * K).unwrap();
    assert_eq!(t.mm.shmem().nr_objects(), 0);
    assert_eq!(t.env.free(), free, "object pages and tables freed");
    t.finish();
}

#[test]
fn madvise_remove_punches_a_hole_in_shared_memory() {
    let mut t = T::new();
    let s = t.mmap(0, 4 * K, RW, SHARED).unwrap();
    for i in 0..4 {
        t.write(s + i * K, 10 + i).unwrap();
    }
    assert_eq!(t.madvise(s + K, 2 * K, MADV_REMOVE), Ok(0));
    assert_eq!(t.mm.shmem().nr_pages(), 2);
    assert_eq!(t.read(s + K), Ok(0));
    assert_eq!(t.read(s + 3 * K), Ok(13));
    // Private memory has no file to punch.
    let p = t.mmap(0, K, RW, PRIV).unwrap();
    assert_eq!(t.madvise(p, K, MADV_REMOVE), Err(EINVAL));
    t.finish();
}

#[test]
fn map_fixed_over_shared_memory_releases_the_object() {
    let mut t = T::new();
    let free = t.env.free();
    let s = t.mmap(BASE, 2 * K, RW, SHARED | MAP_FIXED).unwrap();
    t.write(s, 3).unwrap();
    t.write(s + K, 4).unwrap();
    t.mmap(BASE, 2 * K, RW, FIXED).unwrap();
    assert_eq!(t.mm.shmem().nr_objects(), 0);
    assert_eq!(t.read(BASE), Ok(0));
    t.munmap(BASE, 2 * K).unwrap();
    assert_eq!(t.env.free(), free);
    t.finish();
}

// ---------------------------------------------------------------------------
// brk
// ---------------------------------------------------------------------------

#[test]
fn brk_grows_shrinks_and_reports_the_break() {
    let mut t = T::new();
    let start = 0x60_0000;
    t.mm.set_brk_start(start - 100).unwrap();
    assert_eq!(t.mm.start_brk(), start, "rounded up to a page");
    assert_eq!(t.brk(0), start, "brk(0) reports the break");
    assert_eq!(t.mm.vmas.map_count(), 0);
    assert_eq!(t.brk(start + 100), start + 100);
    let v = t.vma(start);
    assert_eq!((v.start, v.end, v.kind, v.flags), (start, start + K, VmaKind::Heap, rw_flags()));
    t.write(start + 8, 42).unwrap();
    assert_eq!(t.brk(start + 3 * K + 1), start + 3 * K + 1);
    assert_eq!(t.ranges(), vec![(start, start + 4 * K)], "the heap grows in place");
    t.write(start + 3 * K, 7).unwrap();
    // Growth within the last page needs no new memory.
    assert_eq!(t.brk(start + 4 * K), start + 4 * K);
    assert_eq!(t.mm.vmas.map_count(), 1);
    // Shrinking unmaps and frees.
    let free = t.env.free();
    assert_eq!(t.brk(start + 10), start + 10);
    assert_eq!(t.ranges(), vec![(start, start + K)]);
    assert_eq!(t.env.free(), free + 1);
    assert_eq!(t.read(start + 8), Ok(42));
    // Growing again gives zeroed memory.
    t.brk(start + 4 * K);
    assert_eq!(t.read(start + 3 * K), Ok(0));
    // Below the start, or absurd: the old break.
    assert_eq!(t.brk(start - K), start + 4 * K);
    assert_eq!(t.brk(u64::MAX), start + 4 * K);
    assert_eq!(t.brk(TASK_SIZE + K), start + 4 * K);
    assert!(t.status().contains("VmData:\t      16 kB\n"));
    // Shrinking to the start removes the heap.
    assert_eq!(t.brk(start), start);
    assert_eq!(t.mm.vmas.map_count(), 0);
    t.finish();
}

#[test]
fn brk_never_collides_with_other_mappings() {
    let mut t = T::new();
    let start = 0x60_0000;
    t.mm.set_brk_start(start).unwrap();
    t.mmap(start + 5 * K, K, RW, FIXED).unwrap();
    // One page must stay free below the next mapping.
    assert_eq!(t.brk(start + 4 * K + 1), start);
    assert_eq!(t.brk(start + 4 * K), start + 4 * K);
    assert_eq!(t.brk(start + 6 * K), start + 4 * K, "would overlap");
    // A grows-down VMA keeps the stack guard gap free as well.
    t.mm.set_brk_start(BASE).unwrap();
    let gap = t.mm.vmas.stack_guard_gap();
    let stack = BASE + gap + 9 * K;
    t.mmap(stack, 4 * K, RW, FIXED | MAP_GROWSDOWN).unwrap();
    assert_eq!(t.brk(BASE + 8 * K), BASE + 8 * K, "a page and the guard gap stay free");
    assert_eq!(t.brk(BASE + 8 * K + 1), BASE + 8 * K);
    // Shrinking a break whose heap was unmapped fails: nothing is there.
    t.munmap(BASE, 8 * K).unwrap();
    assert_eq!(t.brk(BASE + K), BASE + 8 * K);
    t.finish();
}

#[test]
fn set_brk_start_rejects_addresses_outside_user_space() {
    let mut t = T::new();
    assert_eq!(t.mm.set_brk_start(TASK_SIZE + 1), Err(EINVAL));
    assert_eq!(t.mm.set_brk_start(u64::MAX), Err(EINVAL));
    assert_eq!(t.mm.current_brk(), 0);
    t.finish();
}

// ---------------------------------------------------------------------------
// prctl and THP
// ---------------------------------------------------------------------------

#[test]
fn prctl_thp_disable_arguments() {
    let mut t = T::new();
    let mm = &mut t.mm;
    assert_eq!(mm.prctl_get_thp_disable(0, 0, 0, 0), Ok(0));
    assert_eq!(mm.prctl_set_thp_disable(1, 0, 0, 1), Err(EINVAL), "arg5");
    assert_eq!(mm.prctl_set_thp_disable(1, 0, 1, 0), Err(EINVAL), "arg4");
    assert_eq!(mm.prctl_set_thp_disable(0, PR_THP_DISABLE_EXCEPT_ADVISED, 0, 0), Err(EINVAL), "flags only when disabling");
    assert_eq!(mm.prctl_set_thp_disable(1, 1, 0, 0), Err(EINVAL), "unknown flag");
    assert_eq!(mm.prctl_get_thp_disable(1, 0, 0, 0), Err(EINVAL));
    assert_eq!(mm.prctl_get_thp_disable(0, 0, 0, 7), Err(EINVAL));
    assert_eq!(mm.prctl_set_thp_disable(5, 0, 0, 0), Ok(0), "any non-zero arg2 disables");
    assert_eq!(mm.prctl_get_thp_disable(0, 0, 0, 0), Ok(1));
    assert_eq!(mm.prctl_set_thp_disable(1, PR_THP_DISABLE_EXCEPT_ADVISED, 0, 0), Ok(0));
    assert_eq!(mm.prctl_get_thp_disable(0, 0, 0, 0), Ok(3));
    assert_eq!(mm.prctl(PR_SET_THP_DISABLE as u64, 0, 0, 0, 0), Some(Ok(0)));
    assert_eq!(mm.prctl(PR_GET_THP_DISABLE as u64 | (1 << 32), 0, 0, 0, 0), Some(Ok(0)), "int option");
    assert_eq!(mm.prctl(15, 0, 0, 0, 0), None, "not an MM option");
    t.finish();
}

#[test]
fn thp_disable_is_honoured_by_faults() {
    let mut t = T::with_thp(ThpMode::Always);
    t.mmap(BASE, 2 * M2, RW, FIXED).unwrap();
    t.mm.prctl_set_thp_disable(1, 0, 0, 0).unwrap();
    assert!(t.status().contains("THP_enabled:\t0\n"));
    t.write(BASE, 1).unwrap();
    assert_eq!(t.translate(BASE).unwrap().level, Level::Pte);
    assert_eq!(t.mm.rss_pages(), 1);
    // Except where advised.
    t.mm.prctl_set_thp_disable(1, PR_THP_DISABLE_EXCEPT_ADVISED, 0, 0).unwrap();
    assert!(t.status().contains("THP_enabled:\t1\n"));
    t.write(BASE + M2 + 8, 1).unwrap();
    assert_eq!(t.translate(BASE + M2).unwrap().level, Level::Pte, "not advised");
    t.madvise(BASE + M2, M2, MADV_DONTNEED).unwrap();
    t.madvise(BASE + M2, M2, MADV_HUGEPAGE).unwrap();
    t.write(BASE + M2 + 8, 1).unwrap();
    assert_eq!(t.translate(BASE + M2).unwrap().level, Level::Pmd, "advised");
    // Enabled again: huge pages everywhere.
    t.mm.prctl_set_thp_disable(0, 0, 0, 0).unwrap();
    t.madvise(BASE, M2, MADV_DONTNEED).unwrap();
    t.write(BASE, 1).unwrap();
    assert_eq!(t.translate(BASE).unwrap().level, Level::Pmd);
    assert_eq!(t.mm.rss_pages(), 1024);
    t.finish();
}

// ---------------------------------------------------------------------------
// Reporting and teardown
// ---------------------------------------------------------------------------

#[test]
fn status_lines_follow_linux_format() {
    let mut t = T::new();
    t.mmap(BASE, 16 * K, RW, FIXED).unwrap();
    for i in 0..4 {
        t.write(BASE + i * K, 1).unwrap();
    }
    let s = t.status();
    for line in [
        "VmPeak:\t      64 kB\n",
        "VmSize:\t      64 kB\n",
        "VmLck:\t       0 kB\n",
        "VmHWM:\t      16 kB\n",
        "VmRSS:\t      16 kB\n",
        "RssAnon:\t      16 kB\n",
        "RssFile:\t       0 kB\n",
        "RssShmem:\t       0 kB\n",
        "VmData:\t      64 kB\n",
        "VmStk:\t       0 kB\n",
        "VmPTE:\t      12 kB\n",
        "VmSwap:\t       0 kB\n",
        "THP_enabled:\t1\n",
    ] {
        assert!(s.contains(line), "missing {line:?} in\n{s}");
    }
    let names: Vec<&str> = s.lines().map(|l| l.split(':').next().unwrap()).collect();
    assert_eq!(
        names,
        [
            "VmPeak", "VmSize", "VmLck", "VmPin", "VmHWM", "VmRSS", "RssAnon", "RssFile", "RssShmem", "VmData", "VmStk",
            "VmExe", "VmLib", "VmPTE", "VmSwap", "THP_enabled"
        ]
    );
    // High-water marks survive unmapping.
    t.munmap(BASE, 16 * K).unwrap();
    let s = t.status();
    assert!(s.contains("VmPeak:\t      64 kB\n") && s.contains("VmSize:\t       0 kB\n"), "{s}");
    assert!(s.contains("VmHWM:\t      16 kB\n") && s.contains("VmRSS:\t       0 kB\n"), "{s}");
    assert_eq!((t.mm.rss_pages(), t.mm.hiwater_rss_pages()), (0, 4));
    assert_eq!((t.mm.rss_kb(), t.mm.hiwater_rss_kb(), t.mm.vm_pte_kb()), (0, 16, 0));
    // Stack, exec and shared memory land in their lines.
    t.mmap(BASE, 8 * K, RW, FIXED | MAP_GROWSDOWN).unwrap();
    t.mmap(BASE + M2, 3 * K, PROT_READ | PROT_EXEC, FIXED).unwrap();
    t.mm.set_code_range(BASE + M2, BASE + M2 + 2 * K - 5);
    let sh = t.mmap(0, 2 * K, RW, SHARED).unwrap();
    t.write(sh, 1).unwrap();
    let s = t.status();
    for line in ["VmStk:\t      32 kB\n", "VmExe:\t       8 kB\n", "VmLib:\t       4 kB\n", "RssShmem:\t       4 kB\n"] {
        assert!(s.contains(line), "missing {line:?} in\n{s}");
    }
    t.finish();
}

#[test]
fn maps_show_heap_and_shared_objects() {
    let mut t = T::new();
    t.mm.set_brk_start(0x60_0000).unwrap();
    t.brk(0x60_1000);
    t.mmap(BASE, K, RW, SHARED | MAP_FIXED).unwrap();
    let mut maps = String::new();
    t.mm.write_maps(&mut maps).unwrap();
    let lines: Vec<&str> = maps.lines().collect();
    assert_eq!(lines.len(), 2, "{maps}");
    assert!(lines[0].starts_with("00600000-00601000 rw-p 00000000 00:00 0") && lines[0].ends_with(" [heap]"));
    assert!(lines[1].starts_with("40000000-40001000 rw-s 00000000 00:01 1") && lines[1].ends_with(" /dev/zero (deleted)"));
    t.finish();
}

#[test]
fn destroy_frees_everything() {
    let mut t = T::with_thp(ThpMode::Always);
    // A bit of everything: THP, split THP, shared, lazy-free, PROT_NONE, heap.
    t.mmap(BASE, 2 * M2, RW, FIXED).unwrap();
    t.write(BASE, 1).unwrap();
    t.write(BASE + M2, 1).unwrap();
    t.madvise(BASE + M2 + K, K, MADV_DONTNEED).unwrap();
    let s = t.mmap(0, 8 * K, RW, SHARED | MAP_POPULATE).unwrap();
    t.munmap(s, K).unwrap();
    let p = t.mmap(0, 4 * K, RW, PRIV | MAP_POPULATE).unwrap();
    t.madvise(p, 4 * K, MADV_FREE).unwrap();
    t.mprotect(p, 2 * K, PROT_NONE).unwrap();
    t.mm.set_brk_start(0x60_0000).unwrap();
    t.brk(0x60_8000);
    t.write(0x60_7000, 1).unwrap();
    assert_eq!(t.mm.space.rss_pages(RssKind::Shmem), 7);
    assert_eq!(t.mm.space.rss_pages(RssKind::Anon), 512 + 511 + 4 + 1);
    assert_eq!(t.resident_by_walk(), t.mm.rss_pages());
    t.finish();
}

// ---------------------------------------------------------------------------
// Model-based random test
// ---------------------------------------------------------------------------

/// What the model knows about one page.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Page {
    Unmapped,
    Mapped { prot: u64, val: Val },
}

/// A page's content: known, or lazily freed (either still `v` or zero).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Val {
    Known(u64),
    ZeroOr(u64),
}

/// Random mmap/munmap/mprotect/madvise/reclaim/access sequences over 4 MiB
/// against a per-page model: data, errors and RSS must agree with it, the page
/// tables must stay consistent, and teardown must free everything. With THP
/// the dirty bit covers 512 pages, so lazily freed pages stay "zero or old".
#[test]
fn random_operations_agree_with_a_page_model() {
    for (seed, mode) in [(1u64, ThpMode::Never), (2, ThpMode::Never), (3, ThpMode::Always), (4, ThpMode::Always)] {
        let mut t = T::with_thp(mode);
        let exact = mode == ThpMode::Never;
        let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
        const PAGES: u64 = 1024;
        let mut model = vec![Page::Unmapped; PAGES as usize];
        let addr = |p: u64| BASE + p * K;
        for step in 0..600 {
            let first = rng.below(PAGES);
            let n = (1 + rng.below(96)).min(PAGES - first);
            let range = first as usize..(first + n) as usize;
            let what = rng.below(100);
            let ctx = || alloc::format!("seed {seed} step {step} op {what} pages {first}+{n}");
            match what {
                0..=11 => {
                    let prot = if rng.below(3) == 0 { PROT_READ } else { RW };
                    assert_eq!(t.mmap(addr(first), n * K, prot, FIXED), Ok(addr(first)), "{}", ctx());
                    model[range].fill(Page::Mapped { prot, val: Val::Known(0) });
                }
                12..=17 => {
                    assert_eq!(t.munmap(addr(first), n * K), Ok(0), "{}", ctx());
                    model[range].fill(Page::Unmapped);
                }
                18..=27 => {
                    let prot = [PROT_NONE, PROT_READ, RW][rng.below(3) as usize];
                    let hole = model[range.clone()].iter().position(|p| *p == Page::Unmapped);
                    let want = if hole.is_some() { Err(ENOMEM) } else { Ok(0) };
                    assert_eq!(t.mprotect(addr(first), n * K, prot), want, "{}", ctx());
                    for p in &mut model[range.start..range.start + hole.unwrap_or(n as usize)] {
                        if let Page::Mapped { prot: old, .. } = p {
                            *old = prot;
                        }
                    }
                }
                28..=35 => {
                    let hole = model[range.clone()].contains(&Page::Unmapped);
                    let want = if hole { Err(ENOMEM) } else { Ok(0) };
                    assert_eq!(t.madvise(addr(first), n * K, MADV_DONTNEED), want, "{}", ctx());
                    for p in &mut model[range] {
                        if let Page::Mapped { val, .. } = p {
                            *val = Val::Known(0);
                        }
                    }
                }
                36..=45 => {
                    let hole = model[range.clone()].contains(&Page::Unmapped);
                    let want = if hole { Err(ENOMEM) } else { Ok(0) };
                    assert_eq!(t.madvise(addr(first), n * K, MADV_FREE), want, "{}", ctx());
                    for p in &mut model[range] {
                        if let Page::Mapped { val: val @ Val::Known(_), .. } = p {
                            let Val::Known(v) = *val else { unreachable!() };
                            *val = Val::ZeroOr(v);
                        }
                    }
                }
                46..=50 => {
                    t.reclaim();
                    if exact {
                        for p in &mut model {
                            if let Page::Mapped { val: val @ Val::ZeroOr(_), .. } = p {
                                *val = Val::Known(0);
                            }
                        }
                    }
                }
                51..=75 => {
                    let p = first as usize;
                    let a = addr(first) + 8 * rng.below(512);
                    let got = t.read(a);
                    match model[p] {
                        Page::Unmapped => assert_eq!(got, Err(FaultError::NoVma), "{}", ctx()),
                        Page::Mapped { prot: PROT_NONE, .. } => assert_eq!(got, Err(FaultError::AccessDenied), "{}", ctx()),
                        Page::Mapped { prot, val } => {
                            let got = got.unwrap_or_else(|e| panic!("{}: {e:?}", ctx()));
                            match val {
                                Val::Known(v) => assert_eq!(got, if a % K == 0 { v } else { 0 }, "{}", ctx()),
                                Val::ZeroOr(v) => {
                                    assert!(got == 0 || (a % K == 0 && got == v), "{}: {got}", ctx());
                                    if got == 0 && v != 0 && a % K == 0 {
                                        model[p] = Page::Mapped { prot, val: Val::Known(0) };
                                    }
                                }
                            }
                        }
                    }
                }
                _ => {
                    let p = first as usize;
                    let v = rng.next() | 1;
                    let got = t.write(addr(first), v);
                    match model[p] {
                        Page::Unmapped => assert_eq!(got, Err(FaultError::NoVma), "{}", ctx()),
                        Page::Mapped { prot, .. } if prot != RW => assert_eq!(got, Err(FaultError::AccessDenied), "{}", ctx()),
                        Page::Mapped { prot, .. } => {
                            assert_eq!(got, Ok(()), "{}", ctx());
                            model[p] = Page::Mapped { prot, val: Val::Known(v) };
                        }
                    }
                }
            }
            assert_eq!(t.resident_by_walk(), t.mm.rss_pages(), "{}", ctx());
            let mapped = model.iter().filter(|p| **p != Page::Unmapped).count() as u64;
            assert_eq!(t.mm.vmas.total_vm_pages(), mapped, "{}", ctx());
            assert!(t.mm.rss_pages() <= mapped, "{}", ctx());
        }
        t.finish();
    }
}
