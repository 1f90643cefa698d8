//! In-kernel tests of vmalloc over the real kernel page tables: data survives
//! in virtually contiguous memory, `vfree` returns every page and emptied
//! page-table page, an injected failure at any step leaks nothing, and user
//! address spaces created later see vmalloc memory.

use mm::fail_page_alloc::FaultAttr;
use mm::gfp::{GFP_KERNEL, __GFP_NOFAIL, __GFP_NOWARN};
use mm::pgtable::MapError;
use mm::vmalloc::VmallocError;

use crate::lib::ktest::KResult;
use crate::memory::page_alloc::page_alloc;
use crate::memory::pgtable::PGTABLE_CTL;
use crate::memory::vmalloc::{area_bytes, nr_vmalloc_pages, vfree, vmalloc};
use crate::{kassert, kassert_eq};

pub const KTESTS: &[crate::lib::ktest::KTest] = &[
    crate::ktest!(vmalloc_64k_and_1m_hold_data_and_vfree_returns_everything),
    crate::ktest!(vmalloc_failure_at_every_step_leaks_nothing),
    crate::ktest!(vmalloc_larger_than_memory_fails_cleanly),
    crate::ktest!(user_address_spaces_see_vmalloc_memory),
];

/// A few vmalloc/vfree calls so vmalloc's area list has its capacity before
/// a test takes its baseline (the list keeps its heap block).
pub fn warm_up() {
    let areas: alloc::vec::Vec<_> = (0..4).filter_map(|_| vmalloc(4096, GFP_KERNEL).ok()).collect();
    for area in areas {
        vfree(area);
    }
}

fn vmalloc_64k_and_1m_hold_data_and_vfree_returns_everything() -> KResult {
    warm_up();
    let (free0, tables0, vpages0) = (crate::memory::slab::nr_free_pages_settled(), PGTABLE_CTL.nr_pagetable_pages(), nr_vmalloc_pages());
    let mut small = vmalloc(64 << 10, GFP_KERNEL).map_err(|_| "vmalloc 64 KiB")?;
    let mut big = vmalloc(1 << 20, GFP_KERNEL).map_err(|_| "vmalloc 1 MiB")?;
    kassert_eq!(nr_vmalloc_pages(), vpages0 + 16 + 256);
    kassert!(big.addr().as_u64() >= small.addr().as_u64() + (64 << 10) + 4096, "no guard page between the areas");
    for (area, seed) in [(&mut small, 3u8), (&mut big, 7u8)] {
        // SAFETY: the test owns the area.
        let bytes = unsafe { area_bytes(area) };
        for (i, b) in bytes.iter_mut().enumerate() {
            *b = (i as u8).wrapping_mul(seed);
        }
    }
    let mut intact = true;
    for (area, seed) in [(&mut small, 3u8), (&mut big, 7u8)] {
        // SAFETY: the test owns the area.
        let bytes = unsafe { area_bytes(area) };
        intact &= bytes.iter().enumerate().all(|(i, &b)| b == (i as u8).wrapping_mul(seed));
    }
    vfree(small);
    vfree(big);
    kassert!(intact, "vmalloc memory did not keep its contents");
    kassert_eq!(nr_vmalloc_pages(), vpages0);
    kassert_eq!(PGTABLE_CTL.nr_pagetable_pages(), tables0);
    kassert_eq!(crate::memory::slab::nr_free_pages_settled(), free0);
    Ok(())
}

fn vmalloc_failure_at_every_step_leaks_nothing() -> KResult {
    let a = page_alloc();
    let free0 = crate::memory::slab::nr_free_pages_settled();
    let tables0 = PGTABLE_CTL.nr_pagetable_pages();
    let (mut failed, mut succeeded, mut pt_failed) = (0, 0, 0);
    // 16 data pages + at least one page-table page: fail each allocation in turn.
    for k in 1..=24 {
        a.fail.configure(FaultAttr { times: 1, ..FaultAttr::every_nth(k) });
        let r = vmalloc(64 << 10, GFP_KERNEL | __GFP_NOWARN);
        a.fail.disable();
        match r {
            Ok(area) => {
                succeeded += 1;
                vfree(area);
            }
            Err(VmallocError::Map(MapError::NoMemory)) => {
                failed += 1;
                pt_failed += 1;
            }
            Err(_) => failed += 1,
        }
        kassert_eq!(crate::memory::slab::nr_free_pages_settled(), free0);
        kassert_eq!(PGTABLE_CTL.nr_pagetable_pages(), tables0);
    }
    // Steps 1..=16 hit data pages, 17 the page-table page (vfree freed the emptied
    // table of the previous round, so each round needs a new one); later ones succeed.
    kassert!(failed >= 17, "only {} injected failures surfaced", failed);
    kassert!(pt_failed >= 1, "no injected failure hit a page-table allocation");
    kassert!(succeeded >= 1, "vmalloc never succeeded once the injection passed");
    Ok(())
}

fn vmalloc_larger_than_memory_fails_cleanly() -> KResult {
    let a = page_alloc();
    let free0 = crate::memory::slab::nr_free_pages_settled();
    // More than all managed memory: refused up front, whatever the flags (Linux
    // "vmalloc error: size ..., exceeds total pages").
    let too_big = (a.managed_pages() as usize + 1) * 4096;
    let r = vmalloc(too_big, GFP_KERNEL | __GFP_NOFAIL | __GFP_NOWARN);
    let too_large = matches!(r, Err(VmallocError::TooLarge));
    if let Ok(area) = r {
        vfree(area);
    }
    // Just under it: vmalloc allocates data pages until memory runs out, then undoes
    // everything.
    let r = vmalloc((a.managed_pages() as usize - 1) * 4096, GFP_KERNEL | __GFP_NOWARN);
    let no_memory = matches!(r, Err(VmallocError::NoMemory(_)));
    if let Ok(area) = r {
        vfree(area);
    }
    kassert!(too_large, "vmalloc of more than all memory was not refused as TooLarge");
    kassert!(no_memory, "vmalloc of nearly all memory did not fail with NoMemory");
    kassert_eq!(crate::memory::slab::nr_free_pages_settled(), free0);
    Ok(())
}

fn user_address_spaces_see_vmalloc_memory() -> KResult {
    let mut area = vmalloc(4096, GFP_KERNEL).map_err(|_| "vmalloc")?;
    // SAFETY: the test owns the area.
    unsafe { area_bytes(&mut area)[100] = 0x5c };
    let mm = crate::memory::mm_struct::Mm::new(GFP_KERNEL).map_err(|_| "new address space")?;
    crate::memory::mm_struct::activate(mm);
    // SAFETY: the area is mapped in the kernel half, which the user space shares.
    let seen = unsafe { area_bytes(&mut area)[100] };
    if let Some(mm) = crate::memory::mm_struct::deactivate() {
        mm.destroy();
    }
    vfree(area);
    kassert_eq!(seen, 0x5c);
    Ok(())
}
