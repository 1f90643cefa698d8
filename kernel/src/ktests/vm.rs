//! In-kernel tests of virtual memory on real hardware paging: demand faults,
//! `invlpg` after a remap, 2 MiB THP faults and their split, page-table pages
//! returning to the allocator, the page-table reclaim experiment, and the
//! kernel's own mappings (direct map with 1 GiB pages, W^X image).

use mm::addr::PAGE_SIZE;
use mm::gfp::GFP_KERNEL;
use mm::pgtable::{Level, PageSize, PteFlags, VirtAddr, PMD_SIZE};
use mm::tlb::MmuGather;
use mm::vma::{linear_pgoff, MapFixed, VmFlags, VmaKind};

use crate::console::ptreclaim::pt_reclaim_run;
use crate::lib::ktest::KResult;
use crate::memory::mm_struct::{activate, activate_anon, destroy_current, get_user_u64, put_user_u64, with_current, Mm};
use crate::memory::page_alloc::page_alloc;
use crate::memory::pgtable::{tlb_finish, PGTABLE_CTL};
use crate::{kassert, kassert_eq};

pub const KTESTS: &[crate::lib::ktest::KTest] = &[
    crate::ktest!(first_touch_maps_zeroed_pages_on_demand),
    crate::ktest!(invlpg_makes_a_remap_visible),
    crate::ktest!(thp_fault_maps_2mib_and_dontneed_splits_it),
    crate::ktest!(unmapping_everything_returns_page_tables_to_the_allocator),
    crate::ktest!(pt_reclaim_experiment_keeps_page_tables_flat),
    crate::ktest!(emptied_page_tables_are_reused_from_the_quicklist),
    crate::ktest!(kernel_page_tables_are_mm_owned_and_counted),
    crate::ktest!(kernel_image_is_write_xor_execute),
];

const RW: VmFlags = VmFlags::READ.union(VmFlags::WRITE).union(VmFlags::MAYREAD).union(VmFlags::MAYWRITE);

fn err<E: core::fmt::Debug>(what: &str, e: E) -> crate::lib::ktest::TestFailure {
    alloc::format!("{}: {:?}", what, e).as_str().into()
}

/// A fresh address space with one anonymous VMA, made current.
fn activate_with_vma(start: u64, len: u64, extra: VmFlags) -> KResult {
    activate_anon(start, len, extra).map_err(|e| err("activate_anon", e))
}

fn teardown() {
    destroy_current();
}

fn first_touch_maps_zeroed_pages_on_demand() -> KResult {
    const BASE: u64 = 0x4000_0000;
    let free_before = crate::memory::slab::nr_free_pages_settled();
    activate_with_vma(BASE, 16 * PAGE_SIZE, VmFlags::NOHUGEPAGE)?;
    let faults = crate::entry::fault::RESOLVED_FAULTS.load(core::sync::atomic::Ordering::Relaxed);
    let mut ok = true;
    for i in 0..16 {
        let addr = BASE + i * PAGE_SIZE + 8 * i;
        // SAFETY: inside the writable VMA of the current address space.
        unsafe {
            ok &= get_user_u64(addr) == 0;
            put_user_u64(addr, 0x1000 + i);
        }
    }
    for i in 0..16 {
        // SAFETY: as above; these pages are now mapped.
        ok &= unsafe { get_user_u64(BASE + i * PAGE_SIZE + 8 * i) } == 0x1000 + i;
    }
    let new_faults = crate::entry::fault::RESOLVED_FAULTS.load(core::sync::atomic::Ordering::Relaxed) - faults;
    let mapped = with_current(|mm| mm.space.translate(VirtAddr::try_new(BASE + 15 * PAGE_SIZE).unwrap()));
    teardown();
    kassert!(ok, "pages not zero on first read or lost their data");
    kassert_eq!(new_faults, 16);
    kassert!(matches!(mapped, Some(Some(t)) if t.level == Level::Pte), "page not mapped at PTE level: {:?}", mapped);
    kassert_eq!(crate::memory::slab::nr_free_pages_settled(), free_before);
    Ok(())
}

/// Rounds of `invlpg_makes_a_remap_visible`: each one after the first checks one
/// flush of a translation that is cached in the TLB.
const REMAP_ROUNDS: usize = 8;

fn invlpg_makes_a_remap_visible() -> KResult {
    const VA: u64 = 0x5000_0000;
    let a = page_alloc();
    let free_before = crate::memory::slab::nr_free_pages_settled();
    // Two frames with different contents, mapped in turn at the same address.
    let frames = [a.alloc_pages(GFP_KERNEL, 0).map_err(|e| err("alloc", e))?, a.alloc_pages(GFP_KERNEL, 0).map_err(|e| err("alloc", e))?];
    for (i, f) in frames.iter().enumerate() {
        // SAFETY: the test owns the frames; the direct map covers them.
        unsafe { (crate::arch::x86_64::memmap::phys_to_virt(f.phys_addr()) as *mut u64).write_volatile(0xaaaa_0000 + i as u64) };
    }
    activate_with_vma(VA, PAGE_SIZE, VmFlags::NOHUGEPAGE)?;
    let va = VirtAddr::try_new(VA).ok_or("bad va")?;
    let flags = PteFlags::PRESENT | PteFlags::WRITABLE | PteFlags::USER | PteFlags::NX;
    // Round 0 maps frame 0 into the empty slot (nothing can be stale: the CPU
    // never caches a not-present entry). Every later round first reads VA, so
    // the TLB holds VA -> the other frame, then remaps VA and flushes only
    // through the gather: without its `invlpg` the read after the remap hits
    // the stale entry (QEMU TCG keeps it, as hardware may) and sees the
    // previous round's frame. Kernel code does not switch tasks here (the
    // timer preempts only on return to user mode), so no CR3 reload hides a
    // missing flush.
    let mut cached = [0u64; REMAP_ROUNDS];
    let mut seen = [0u64; REMAP_ROUNDS];
    let mut plans = [mm::tlb::FlushPlan::None; REMAP_ROUNDS];
    for round in 0..REMAP_ROUNDS {
        if round > 0 {
            // SAFETY: VA is mapped to frame (round - 1) % 2.
            cached[round] = unsafe { get_user_u64(VA) };
        }
        let pfn = frames[round % 2].pfn();
        let mapped = with_current(|mm| {
            let mut tlb = MmuGather::new();
            let r = mm.space.unmap(va, PAGE_SIZE, GFP_KERNEL, &mut tlb).map_err(|e| err("unmap", e));
            let r = r.and_then(|_| mm.space.map(va, pfn, PageSize::Size4K, flags, GFP_KERNEL).map_err(|e| err("map", e)));
            (r, tlb)
        });
        let (r, tlb) = mapped.ok_or("no current mm")?;
        // The gather's flush (of the unmapped page) is the only invalidation.
        plans[round] = tlb_finish(tlb);
        r?;
        // SAFETY: VA is mapped to frame round % 2 now.
        seen[round] = unsafe { get_user_u64(VA) };
    }
    // Unmap before teardown so the frames (not owned by the VMA) are not freed twice.
    if let Some(tlb) = with_current(|mm| {
        let mut tlb = MmuGather::new();
        let _ = mm.space.unmap(va, PAGE_SIZE, GFP_KERNEL, &mut tlb);
        tlb
    }) {
        tlb_finish(tlb);
    }
    teardown();
    for f in frames {
        a.free_pages(f);
    }
    let expected: [u64; REMAP_ROUNDS] = core::array::from_fn(|round| 0xaaaa_0000 + (round % 2) as u64);
    let expected_cached: [u64; REMAP_ROUNDS] = core::array::from_fn(|round| if round == 0 { 0 } else { expected[round - 1] });
    kassert!(seen == expected, "stale translation after a remap: read {:x?}, expected {:x?} (gather flushes: {:?})", seen, expected, plans);
    kassert_eq!(cached, expected_cached);
    kassert_eq!(crate::memory::slab::nr_free_pages_settled(), free_before);
    Ok(())
}

fn thp_fault_maps_2mib_and_dontneed_splits_it() -> KResult {
    const BASE: u64 = 0x6000_0000; // 2 MiB aligned
    let free_before = crate::memory::slab::nr_free_pages_settled();
    let thps_before = PGTABLE_CTL.nr_anon_thps();
    activate_with_vma(BASE, 2 * PMD_SIZE, VmFlags::HUGEPAGE)?;
    // SAFETY: inside the writable VMA of the current address space.
    unsafe { put_user_u64(BASE + 5 * PAGE_SIZE, 0x7777) };
    let va = VirtAddr::try_new(BASE).ok_or("bad va")?;
    let huge = with_current(|mm| mm.space.translate(va)).flatten();
    let thps = PGTABLE_CTL.nr_anon_thps();
    // Write a marker into every sub-page, then drop one with MADV_DONTNEED.
    for i in 0..512 {
        // SAFETY: inside the mapped huge page.
        unsafe { put_user_u64(BASE + i * PAGE_SIZE, i) };
    }
    let split = with_current(|mm| {
        let mut tlb = MmuGather::new();
        let r = mm.space.madvise_dontneed(VirtAddr::try_new(BASE + 7 * PAGE_SIZE).unwrap(), PAGE_SIZE, GFP_KERNEL, &mut tlb);
        (r, tlb)
    });
    let (r, tlb) = split.ok_or("no current mm")?;
    tlb_finish(tlb);
    r.map_err(|e| err("madvise_dontneed", e))?;
    let after_split = with_current(|mm| mm.space.translate(VirtAddr::try_new(BASE + 8 * PAGE_SIZE).unwrap())).flatten();
    let mut kept = true;
    for i in (0..512).filter(|&i| i != 7) {
        // SAFETY: still mapped (split into 4 KiB pages).
        kept &= unsafe { get_user_u64(BASE + i * PAGE_SIZE) } == i;
    }
    // SAFETY: the dropped page refaults as a zero page.
    let dropped = unsafe { get_user_u64(BASE + 7 * PAGE_SIZE) };
    teardown();
    kassert!(matches!(huge, Some(t) if t.level == Level::Pmd), "no PMD mapping after the fault: {:?}", huge);
    kassert_eq!(thps, thps_before + 1);
    kassert!(matches!(after_split, Some(t) if t.level == Level::Pte), "not split to PTEs: {:?}", after_split);
    kassert!(kept, "sub-pages lost data in the split");
    kassert_eq!(dropped, 0);
    kassert_eq!(PGTABLE_CTL.nr_anon_thps(), thps_before);
    kassert_eq!(crate::memory::slab::nr_free_pages_settled(), free_before);
    Ok(())
}

fn unmapping_everything_returns_page_tables_to_the_allocator() -> KResult {
    let free_before = crate::memory::slab::nr_free_pages_settled();
    let tables_before = PGTABLE_CTL.nr_pagetable_pages();
    // One page in each of several PUD/PMD slots: every level gets tables.
    let addrs: [u64; 4] = [0x1_0000_0000, 0x1_4020_0000, 0x80_0000_0000, 0x7f00_0000_0000];
    let mut mm = Mm::new(GFP_KERNEL).map_err(|e| err("new address space", e))?;
    for &addr in &addrs {
        mm.vmas
            .mmap_region(addr, PAGE_SIZE, RW, VmaKind::AnonPrivate, linear_pgoff(addr), MapFixed::NoReplace)
            .map_err(|e| err("mmap_region", e))?;
    }
    activate(mm);
    for &addr in &addrs {
        // SAFETY: each address is in a writable VMA.
        unsafe { put_user_u64(addr, addr) };
    }
    let tables_full = PGTABLE_CTL.nr_pagetable_pages();
    let outcome = with_current(|mm| {
        let mut tlb = MmuGather::new();
        for &addr in &addrs {
            let _ = mm.space.unmap(VirtAddr::try_new(addr).unwrap(), PAGE_SIZE, GFP_KERNEL, &mut tlb);
        }
        let pte_tables = mm.space.nr_tables(Level::Pte);
        (tlb.nr_tables(), pte_tables, tlb)
    });
    let (queued, pte_left, tlb) = outcome.ok_or("no current mm")?;
    tlb_finish(tlb);
    let tables_after_unmap = PGTABLE_CTL.nr_pagetable_pages();
    teardown();
    kassert!(tables_full >= tables_before + 1 + 4 + 3, "expected root + 4 PTE + PMD/PUD tables, got {}", tables_full - tables_before);
    kassert!(queued >= 4 + 3, "only {} tables queued for freeing", queued);
    kassert_eq!(pte_left, 0);
    kassert_eq!(tables_after_unmap, tables_before + 1); // only the root is left
    kassert_eq!(PGTABLE_CTL.nr_pagetable_pages(), tables_before);
    kassert_eq!(crate::memory::slab::nr_free_pages_settled(), free_before);
    Ok(())
}

/// A slot emptied by `MADV_DONTNEED` gives its emptied tables to the
/// quicklist after the flush; the next faults link them again instead of
/// allocating, and the hardware walks them to the right pages.
fn emptied_page_tables_are_reused_from_the_quicklist() -> KResult {
    const BASE: u64 = 0x40_0000_0000; // 256 GiB: own PUD entry, 1 GiB span
    let free_before = crate::memory::slab::nr_free_pages_settled();
    activate_with_vma(BASE, 4 * PMD_SIZE, VmFlags::NOHUGEPAGE)?;
    let addr = |slot: u64| BASE + slot * PMD_SIZE + 8 * slot;
    // SAFETY (all accesses): inside the writable VMA of the current address space.
    unsafe { put_user_u64(addr(0), 0xa0) };
    let dontneed = |slot: u64| {
        with_current(|mm| {
            let mut tlb = MmuGather::new();
            let r = mm.space.madvise_dontneed(VirtAddr::try_new(BASE + slot * PMD_SIZE).unwrap(), PMD_SIZE, GFP_KERNEL, &mut tlb);
            (r, tlb)
        })
    };
    let (r, tlb) = dontneed(0).ok_or("no current mm")?;
    tlb_finish(tlb);
    let kept = PGTABLE_CTL.quicklist.len();
    let free_mid = page_alloc().stats().free();
    // SAFETY: see above.
    let (zero, ok) = unsafe {
        let zero = get_user_u64(addr(0)) == 0;
        put_user_u64(addr(1), 0xb1);
        (zero, get_user_u64(addr(1)) == 0xb1)
    };
    let kept_after = PGTABLE_CTL.quicklist.len();
    let free_after = page_alloc().stats().free();
    teardown();
    kassert!(r.is_ok(), "MADV_DONTNEED failed: {:?}", r);
    kassert!(kept >= 1, "no emptied table reached the quicklist");
    kassert!(zero, "the dropped page did not read back as zero");
    kassert!(ok, "a write through reused tables did not read back");
    // The refault of slot 0 needs its tables again: they come from the
    // quicklist, so the allocator gives at most the two data pages and a
    // table that did not fit in the list.
    kassert!(kept_after < kept, "quicklist {} -> {}: no table reused", kept, kept_after);
    kassert!(free_mid - free_after <= 3, "{} pages taken from the allocator", free_mid - free_after);
    kassert_eq!(crate::memory::slab::nr_free_pages_settled(), free_before);
    Ok(())
}

/// Iterations the in-kernel test runs (a tenth of the demo's, to keep the
/// suite short under emulation; the page-table bound does not depend on the count).
const PT_RECLAIM_TEST_ITERATIONS: u64 = 2_560;

fn pt_reclaim_experiment_keeps_page_tables_flat() -> KResult {
    let free_before = crate::memory::slab::nr_free_pages_settled();
    let iterations = PT_RECLAIM_TEST_ITERATIONS;
    let on = pt_reclaim_run(iterations, true).map_err(|e| alloc::format!("reclaim on: {}", e))?;
    let off = pt_reclaim_run(iterations.min(256), false).map_err(|e| alloc::format!("reclaim off: {}", e))?;
    crate::println!(
        "    pt_reclaim: {} iterations, {} faults: page tables {} -> {} bytes (reclaim on); off: {} -> {} bytes after {} iterations",
        on.iterations, on.faults, on.pt_bytes_before, on.pt_bytes_after, off.pt_bytes_before, off.pt_bytes_after, off.iterations
    );
    kassert_eq!(on.faults, on.iterations * 512);
    kassert!(on.pt_bytes_after <= on.pt_bytes_before + 32 * 1024, "page tables grew by {} bytes", on.pt_bytes_after - on.pt_bytes_before);
    // Without reclaim every iteration leaves its PTE table behind.
    kassert!(off.pt_bytes_after >= off.pt_bytes_before + off.iterations * PAGE_SIZE, "reclaim-off run freed tables");
    kassert_eq!(crate::memory::slab::nr_free_pages_settled(), free_before);
    Ok(())
}

/// Every table of the kernel half is an mm page-table page whose live-entry
/// count matches its entries (the boot tables would fail: mm keeps no count
/// for them), and the direct map uses 1 GiB leaves where the CPU has them.
fn kernel_page_tables_are_mm_owned_and_counted() -> KResult {
    let census = crate::memory::init_64::with_kernel_space(|k| k.census()).map_err(|e| err("kernel census", e))?;
    kassert!(census.tables[2] > 0 && census.tables[0] > 0, "PUD and PTE tables exist: {:?}", census.tables);
    let direct = crate::memory::init_64::with_kernel_space(|k| k.translate(VirtAddr::try_new(crate::arch::x86_64::memmap::phys_to_virt(0x5000) as u64)?));
    let direct = direct.ok_or("the direct map does not map physical 0x5000")?;
    kassert_eq!(direct.phys_addr, 0x5000);
    kassert!(direct.flags.contains(PteFlags::WRITABLE | PteFlags::NX), "direct map flags {:?}", direct.flags);
    if crate::arch::x86_64::cpu::features().gbpages {
        kassert_eq!(direct.level, Level::Pud);
        kassert!(census.leaves[2] >= 4, "at least 4 GiB of 1 GiB leaves: {:?}", census.leaves);
    }
    // The local APIC's MMIO page, just below 4 GiB, is in the direct map.
    let apic = crate::memory::init_64::with_kernel_space(|k| k.translate(VirtAddr::try_new(crate::arch::x86_64::memmap::phys_to_virt(0xfee0_0000) as u64)?));
    kassert_eq!(apic.map(|t| t.phys_addr), Some(0xfee0_0000));
    Ok(())
}

static IMAGE_RODATA: [u64; 4] = [1, 2, 3, 4];
static IMAGE_DATA: core::sync::atomic::AtomicU64 = core::sync::atomic::AtomicU64::new(7);

/// Text is read-only and executable, rodata read-only and never executable,
/// data writable and never executable; no leaf of the image is both writable
/// and executable.
fn kernel_image_is_write_xor_execute() -> KResult {
    let tr = |addr: usize| crate::memory::init_64::with_kernel_space(|k| k.translate(VirtAddr::try_new(addr as u64)?));
    let text = tr(kernel_image_is_write_xor_execute as *const () as usize).ok_or("text unmapped")?;
    kassert!(!text.flags.contains(PteFlags::WRITABLE) && !text.flags.contains(PteFlags::NX), "text {:?}", text.flags);
    let ro = tr(core::hint::black_box(&IMAGE_RODATA) as *const _ as usize).ok_or("rodata unmapped")?;
    kassert!(!ro.flags.contains(PteFlags::WRITABLE) && ro.flags.contains(PteFlags::NX), "rodata {:?}", ro.flags);
    let rw = tr(&IMAGE_DATA as *const _ as usize).ok_or("data unmapped")?;
    kassert!(rw.flags.contains(PteFlags::WRITABLE | PteFlags::NX), "data {:?}", rw.flags);
    IMAGE_DATA.fetch_add(1, core::sync::atomic::Ordering::Relaxed);
    let mut wx = 0u64;
    let mut image_pages = 0u64;
    let root = crate::memory::pgtable::kernel_root();
    mm::pgtable::walk_leaves(&crate::memory::pgtable::DirectMapPt, root, 256..512, &mut |l| {
        if l.va.as_u64() >= crate::arch::x86_64::layout::KERNEL_IMAGE_BASE {
            image_pages += 1;
            wx += (l.flags.contains(PteFlags::WRITABLE) && !l.flags.contains(PteFlags::NX)) as u64;
        }
    });
    kassert!(image_pages > 0, "no image leaves found");
    kassert_eq!(wx, 0);
    Ok(())
}
