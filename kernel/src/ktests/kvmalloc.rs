//! kvmalloc: contiguous first, vmalloc when memory is fragmented (by fault
//! injection and for real), and the overflow-checked size helpers.

use mm::gfp::Gfp;
use mm::page_alloc::{Pages, MAX_ORDER};

use crate::memory::kvmalloc::*;
use crate::memory::page_alloc::page_alloc;

pub const KTESTS: &[crate::lib::ktest::KTest] = &[
    crate::ktest!(kvmalloc_prefers_contiguous_memory),
    crate::ktest!(kvmalloc_falls_back_to_vmalloc_when_memory_is_fragmented),
    crate::ktest!(kvmalloc_falls_back_to_vmalloc_under_real_fragmentation),
    crate::ktest!(kvmalloc_helpers_refuse_overflowing_sizes),
];

fn kvmalloc_prefers_contiguous_memory() -> crate::lib::ktest::KResult {
    use mm::gfp::GFP_KERNEL;
    let mut small = kvmalloc(200, GFP_KERNEL).map_err(|_| "kvmalloc 200 B")?;
    let mut big = kvmalloc(64 << 10, GFP_KERNEL).map_err(|_| "kvmalloc 64 KiB")?;
    let kinds = (matches!(small, KvMem::Slab { .. }), matches!(big, KvMem::Pages { .. }));
    small.as_mut_slice().fill(1);
    big.as_mut_slice().fill(2);
    let sizes = (small.size(), big.size());
    kvfree(small);
    kvfree(big);
    crate::kassert_eq!(kinds, (true, true));
    crate::kassert_eq!(sizes, (200, 64 << 10));
    Ok(())
}

/// `kvmalloc(size, gfp)`, every byte written, `kvfree`: whether it was vmalloc
/// memory and its size (`(false, 0)` if it failed).
fn kvmalloc_use_and_free(size: usize, gfp: Gfp) -> (bool, usize) {
    match kvmalloc(size, gfp) {
        Ok(mut m) => {
            let kind = (m.is_vmalloc(), m.size());
            m.as_mut_slice().fill(0x5a);
            kvfree(m);
            kind
        }
        Err(_) => (false, 0),
    }
}

fn kvmalloc_falls_back_to_vmalloc_when_memory_is_fragmented() -> crate::lib::ktest::KResult {
    use mm::fail_page_alloc::FaultAttr;
    use mm::gfp::{GFP_KERNEL, __GFP_NORETRY, __GFP_NOWARN};
    let a = page_alloc();
    crate::ktests::vmalloc::warm_up();
    let free0 = crate::memory::slab::nr_free_pages_settled();
    // Fragmentation as kvmalloc sees it: no block of order >= 4 (64 KiB) can
    // be had, while single pages can (fail_page_alloc with a minimum order,
    // the way Linux tests this fallback).
    a.fail.configure(FaultAttr { min_order: 4, ..FaultAttr::every_nth(1) });
    let contiguous = a.alloc_pages(GFP_KERNEL | __GFP_NORETRY | __GFP_NOWARN, 4);
    let fragmented = contiguous.is_err();
    if let Ok(p) = contiguous {
        a.free_pages(p);
    }
    let (is_vmalloc, size) = kvmalloc_use_and_free(64 << 10, GFP_KERNEL);
    a.fail.disable();
    crate::kassert!(fragmented, "the order-4 allocation was not refused");
    crate::kassert!(is_vmalloc && size == 64 << 10, "kvmalloc did not fall back to vmalloc ({} bytes)", size);
    crate::kassert!(crate::memory::slab::nr_free_pages_settled() >= free0, "pages lost");
    Ok(())
}

/// The same fallback with memory really fragmented: every page allocated
/// (unmovable, so compaction cannot help), then only the even pfns freed, so no
/// two buddies are free and no block above order 0 exists anywhere.
fn kvmalloc_falls_back_to_vmalloc_under_real_fragmentation() -> crate::lib::ktest::KResult {
    use mm::gfp::GFP_KERNEL;
    let a = page_alloc();
    crate::ktests::vmalloc::warm_up();
    let mut held: alloc::vec::Vec<Pages> = alloc::vec::Vec::new();
    held.try_reserve(a.managed_pages() as usize).map_err(|_| "no heap for the handles")?;
    let free0 = crate::memory::slab::nr_free_pages_settled();
    // Every frame, so that no free block is left anywhere.
    crate::ktests::page_alloc::take_every_frame(&mut held);
    // Free the even pfns in place (no allocation while memory is exhausted).
    let mut i = 0;
    while i < held.len() {
        if held[i].pfn().0 % 2 == 0 {
            a.free_pages(held.swap_remove(i));
        } else {
            i += 1;
        }
    }
    let kept = held.len();
    a.drain_all_pages();
    let s = a.stats();
    let high_order_free: u64 = s.zones.iter().map(|z| (1..=MAX_ORDER).map(|o| z.nr_free[o].iter().sum::<u64>()).sum::<u64>()).sum();
    let order0_free: u64 = s.zones.iter().map(|z| z.nr_free[0].iter().sum::<u64>()).sum();
    let (is_vmalloc, size) = kvmalloc_use_and_free(64 << 10, GFP_KERNEL);
    for p in held.drain(..) {
        a.free_pages(p);
    }
    crate::kassert!(kept > 1000, "only {} pages kept", kept);
    crate::kassert!(high_order_free == 0, "{} blocks above order 0 still free", high_order_free);
    crate::kassert!(order0_free > 1000, "only {} free pages", order0_free);
    crate::kassert!(is_vmalloc && size == 64 << 10, "kvmalloc did not fall back to vmalloc ({} bytes)", size);
    crate::kassert_eq!(crate::memory::slab::nr_free_pages_settled(), free0);
    Ok(())
}

fn kvmalloc_helpers_refuse_overflowing_sizes() -> crate::lib::ktest::KResult {
    use mm::gfp::GFP_KERNEL;
    crate::kassert!(matches!(kvmalloc_array(usize::MAX / 8 + 1, 16, GFP_KERNEL), Err(KvmallocError::Overflow)), "array overflow accepted");
    crate::kassert!(matches!(kvmalloc_struct(64, usize::MAX / 4, 8, GFP_KERNEL), Err(KvmallocError::Overflow)), "struct overflow accepted");
    let mut m = kvmalloc_struct(16, 100, 8, GFP_KERNEL).map_err(|_| "kvmalloc_struct")?;
    let size = m.size();
    m.as_mut_slice()[size - 1] = 0xff;
    kvfree(m);
    crate::kassert_eq!(size, 16 + 800);
    Ok(())
}
