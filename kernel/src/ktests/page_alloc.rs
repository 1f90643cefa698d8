//! In-kernel tests of the page allocator over real memory: every order, bulk free,
//! `__GFP_ZERO`, exhaustion, and the NMI-safety proof of
//! `try_alloc_pages()` / `free_pages_nolock()` with a real NMI (self-IPI
//! through the local APIC) and with the PIT hammering both calls while normal
//! allocations run — as a timer interrupt and, through the I/O APIC, as an NMI
//! that also lands inside the allocator's locked sections.

use alloc::vec::Vec;
use core::sync::atomic::{AtomicU64, Ordering::SeqCst};

use bootloader_api::info::MemoryRegionKind;
use mm::addr::{Pfn, PAGE_SIZE};
use mm::gfp::{GFP_ATOMIC, GFP_KERNEL, __GFP_MEMALLOC, __GFP_NORETRY, __GFP_NOWARN, __GFP_ZERO};
use mm::page_alloc::{AllocError, Pages, MAX_ORDER, NUMA_NO_NODE, PCP_MAX_ORDER};
use mm::page_alloc_bulk::DrainVec;
use mm::rng::XorShift64;

use crate::arch::x86_64::ioapic::{IoApic, PIT_IRQ};
use crate::arch::x86_64::{apic, nmi, pit};
use crate::lib::ktest::KResult;
use crate::memory::page_alloc::{metadata_frames_range, page_alloc};
use crate::{kassert, kassert_eq, arch::x86_64::memmap};

pub const KTESTS: &[crate::lib::ktest::KTest] = &[
    crate::ktest!(every_order_comes_from_usable_ram_and_holds_data),
    crate::ktest!(every_free_frame_is_usable_ram_outside_the_struct_page_array),
    crate::ktest!(gfp_zero_returns_zeroed_pages),
    crate::ktest!(bulk_free_of_a_shuffled_batch_merges_and_loses_nothing),
    crate::ktest!(exhaustion_is_an_error_and_everything_comes_back),
    crate::ktest!(nmi_on_top_of_held_locks_fails_fast_and_defers_the_free),
    crate::ktest!(timer_irq_hammers_nolock_pair_while_allocating),
    crate::ktest!(console_tables_use_linux_formats),
];

fn check_consistent() -> KResult {
    match page_alloc().check_consistency() {
        Ok(_) => Ok(()),
        Err(e) => Err(alloc::format!("allocator inconsistent: {:?}", e).as_str().into()),
    }
}

fn in_usable_ram(pages: &Pages) -> bool {
    let (start, end) = (pages.phys_addr(), pages.phys_addr() + pages.nr_pages() * PAGE_SIZE);
    memmap::facts().regions.iter().any(|r| r.kind == MemoryRegionKind::Usable && r.start <= start && end <= r.end)
}

fn fill(pages: &Pages, byte: u8) {
    let ptr = memmap::phys_to_virt(pages.phys_addr());
    // SAFETY: the test owns the block; the direct map covers it.
    unsafe { core::ptr::write_bytes(ptr, byte, (pages.nr_pages() * PAGE_SIZE) as usize) }
}

fn all_bytes_are(pages: &Pages, byte: u8) -> bool {
    let ptr = memmap::phys_to_virt(pages.phys_addr());
    // SAFETY: the test owns the block; the direct map covers it.
    let bytes = unsafe { core::slice::from_raw_parts(ptr, (pages.nr_pages() * PAGE_SIZE) as usize) };
    bytes.iter().all(|&b| b == byte)
}

fn every_order_comes_from_usable_ram_and_holds_data() -> KResult {
    let a = page_alloc();
    let free_before = crate::memory::slab::nr_free_pages_settled();
    let meta = metadata_frames_range();
    for order in 0..=MAX_ORDER {
        let pages = a.alloc_pages(GFP_KERNEL, order).map_err(|_| "allocation failed on a fresh allocator")?;
        let ok_align = pages.pfn().0 % (1 << order) == 0;
        let ok_ram = in_usable_ram(&pages);
        let ok_meta = pages.pfn_range().all(|p| !meta.contains(&p));
        let ok_low = pages.phys_addr() >= 1 << 20;
        fill(&pages, 0x5a ^ order as u8);
        let ok_data = all_bytes_are(&pages, 0x5a ^ order as u8);
        let pfn = pages.pfn();
        a.free_pages(pages);
        kassert!(ok_align, "order {} block at {} misaligned", order, pfn);
        kassert!(ok_ram && ok_low, "order {} block at {} outside usable RAM above 1 MiB", order, pfn);
        kassert!(ok_meta, "order {} block at {} overlaps the struct page array", order, pfn);
        kassert!(ok_data, "order {} block at {} did not keep its contents", order, pfn);
    }
    kassert_eq!(crate::memory::slab::nr_free_pages_settled(), free_before);
    check_consistent()
}

/// Allocates order-0 pages into `held` until none is left at all, the reserves
/// below `min` included (`__GFP_MEMALLOC` ignores the watermarks). Reserve
/// `held`'s capacity first: no heap allocation may be needed once memory is gone.
pub fn take_every_frame(held: &mut Vec<Pages>) {
    let a = page_alloc();
    for gfp in [GFP_KERNEL | __GFP_NORETRY, GFP_ATOMIC, GFP_ATOMIC | __GFP_MEMALLOC] {
        while let Ok(p) = a.alloc_pages(gfp | __GFP_NOWARN, 0) {
            held.push(p);
        }
    }
}

/// Every frame the allocator hands out — all of them, reserves included — lies in
/// `Usable` RAM above 1 MiB (so not in the kernel image, boot structures or
/// firmware ranges, which the bootloader reports as other kinds) and outside the
/// struct page array; the number handed out equals the free count before.
fn every_free_frame_is_usable_ram_outside_the_struct_page_array() -> KResult {
    let a = page_alloc();
    let mut held: Vec<Pages> = Vec::new();
    held.try_reserve(a.managed_pages() as usize).map_err(|_| "no heap for the handles")?;
    let free_before = crate::memory::slab::nr_free_pages_settled();
    take_every_frame(&mut held);
    let meta = metadata_frames_range();
    let got = held.len() as u64;
    let outside_ram = held.iter().filter(|p| !in_usable_ram(p) || p.phys_addr() < 1 << 20).count();
    let in_meta = held.iter().filter(|p| meta.contains(&p.pfn().0)).count();
    for p in held.drain(..) {
        a.free_pages(p);
    }
    kassert_eq!(outside_ram, 0);
    kassert_eq!(in_meta, 0);
    kassert!(got == free_before, "{} frames handed out, {} were free", got, free_before);
    kassert_eq!(crate::memory::slab::nr_free_pages_settled(), free_before);
    check_consistent()
}

/// `free_pages_bulk` over real memory: 16 MiB of order-0 pages (far more than
/// the per-CPU lists take, so most of it goes through the run map), freed in a
/// shuffled order with one double free forged in; the double free is refused,
/// the rest comes back, and after a drain the high-order free blocks are there again.
fn bulk_free_of_a_shuffled_batch_merges_and_loses_nothing() -> KResult {
    const NR: usize = 4096;
    let a = page_alloc();
    let free_before = crate::memory::slab::nr_free_pages_settled();
    let bad_before = a.stats().bad_page;
    let mut batch = Vec::new();
    batch.try_reserve_exact(NR + 1).map_err(|_| "no memory for the batch")?;
    let max_order_blocks = || {
        a.drain_all_pages();
        a.stats().zones.iter().map(|z| z.nr_free[MAX_ORDER].iter().sum::<u64>()).sum::<u64>()
    };
    let max_before = max_order_blocks();
    for _ in 0..NR {
        batch.push(a.alloc_pages(GFP_KERNEL, 0).map_err(|_| "allocation failed")?);
    }
    XorShift64(0x9e37_79b9_7f4a_7c15).shuffle(&mut batch);
    // SAFETY (test): a second handle to a block that is in the batch, to check that
    // the bulk path refuses the double free instead of freeing the block twice.
    batch.push(unsafe { Pages::from_raw(batch[7].pfn(), 0) });
    a.free_pages_bulk(DrainVec(&mut batch));
    kassert_eq!(a.stats().bad_page, bad_before + 1);
    kassert_eq!(max_order_blocks(), max_before);
    drop(batch);
    kassert_eq!(crate::memory::slab::nr_free_pages_settled(), free_before);
    check_consistent()
}

fn gfp_zero_returns_zeroed_pages() -> KResult {
    let a = page_alloc();
    let dirty = a.alloc_pages(GFP_KERNEL, 2).map_err(|_| "alloc")?;
    fill(&dirty, 0xaa);
    a.free_pages(dirty);
    for _ in 0..8 {
        let pages = a.alloc_pages(GFP_KERNEL | __GFP_ZERO, 2).map_err(|_| "alloc")?;
        let zero = all_bytes_are(&pages, 0);
        a.free_pages(pages);
        kassert!(zero, "__GFP_ZERO block not zeroed");
    }
    Ok(())
}

fn exhaustion_is_an_error_and_everything_comes_back() -> KResult {
    let a = page_alloc();
    let mut held: Vec<Pages> = Vec::new();
    held.try_reserve(a.managed_pages() as usize).map_err(|_| "no heap for the handles")?;
    let free_before = crate::memory::slab::nr_free_pages_settled();
    let err = loop {
        match a.alloc_pages(GFP_KERNEL | __GFP_NOWARN, 0) {
            Ok(p) => held.push(p),
            Err(e) => break e,
        }
        if held.len() as u64 > a.managed_pages() {
            break AllocError::InvalidOrder; // more pages than exist: impossible
        }
    };
    let n = held.len() as u64;
    // The consistency walk itself needs a little kernel heap: give back a
    // few pages first (memory stays all but exhausted).
    for p in held.drain(held.len().saturating_sub(16)..) {
        a.free_pages(p);
    }
    let consistent_when_full = a.check_consistency().is_ok();
    for p in held.drain(..) {
        a.free_pages(p);
    }
    kassert_eq!(err, AllocError::NoMemory);
    kassert!(n > a.managed_pages() / 2, "only {} of {} pages before failure", n, a.managed_pages());
    kassert!(consistent_when_full, "inconsistent when memory was exhausted");
    kassert_eq!(crate::memory::slab::nr_free_pages_settled(), free_before);
    check_consistent()
}

/// pfn + 1 of an order-0 block for the NMI to free (0: none).
static NMI_PAGE: AtomicU64 = AtomicU64::new(0);
/// 1: the NMI's try_alloc_pages returned None; 2: it returned pages.
static NMI_ALLOC_RESULT: AtomicU64 = AtomicU64::new(0);

fn nmi_alloc_and_free() {
    let a = page_alloc();
    match a.try_alloc_pages(NUMA_NO_NODE, 0) {
        None => NMI_ALLOC_RESULT.store(1, SeqCst),
        Some(p) => {
            NMI_ALLOC_RESULT.store(2, SeqCst);
            a.free_pages_nolock(p);
        }
    }
    let raw = NMI_PAGE.swap(0, SeqCst);
    if raw != 0 {
        // SAFETY: the test leaked exactly this order-0 block and stored its pfn here.
        a.free_pages_nolock(unsafe { Pages::from_raw(Pfn(raw - 1), 0) });
    }
}

fn nmi_on_top_of_held_locks_fails_fast_and_defers_the_free() -> KResult {
    kassert!(apic::is_enabled(), "no local APIC for the self-NMI");
    let a = page_alloc();
    let free_before = crate::memory::slab::nr_free_pages_settled();
    let before = a.stats();
    let page = a.alloc_pages(GFP_KERNEL, 0).map_err(|_| "alloc")?;
    NMI_PAGE.store(page.leak().0 + 1, SeqCst);
    NMI_ALLOC_RESULT.store(0, SeqCst);
    let nmis = nmi::NMIS.load(SeqCst);
    {
        let _locks = a.hold_locks(0);
        nmi::set_nmi_hook(Some(nmi_alloc_and_free));
        apic::send_self_nmi();
        let mut spins = 0u64;
        while nmi::NMIS.load(SeqCst) == nmis && spins < 100_000_000 {
            spins += 1;
            core::hint::spin_loop();
        }
        nmi::set_nmi_hook(None);
    }
    kassert_eq!(nmi::NMIS.load(SeqCst), nmis + 1);
    kassert_eq!(NMI_ALLOC_RESULT.load(SeqCst), 1);
    kassert_eq!(NMI_PAGE.load(SeqCst), 0);
    let after = a.stats();
    kassert_eq!(after.deferred_free, before.deferred_free + 1);
    kassert!(after.trylock_fail > before.trylock_fail, "the NMI's allocation did not see the held lock");
    // The next locked operation drains the deferred list.
    let p = a.alloc_pages(GFP_KERNEL, 0).map_err(|_| "alloc")?;
    a.free_pages(p);
    let drained = a.stats();
    kassert_eq!(drained.zones.iter().map(|z| z.deferred).sum::<u64>(), 0);
    kassert_eq!(crate::memory::slab::nr_free_pages_settled(), free_before);
    check_consistent()
}

const SLOTS: usize = 32;
static HAMMER_SLOTS: [AtomicU64; SLOTS] = [const { AtomicU64::new(0) }; SLOTS];
static HAMMER_SKIPS: AtomicU64 = AtomicU64::new(0);
static HAMMER_TICKS: AtomicU64 = AtomicU64::new(0);
static HAMMER_ALLOCS: AtomicU64 = AtomicU64::new(0);
static HAMMER_MISSES: AtomicU64 = AtomicU64::new(0);
static HAMMER_FREES: AtomicU64 = AtomicU64::new(0);

fn encode(pages: Pages) -> u64 {
    let order = pages.order() as u64;
    ((pages.leak().0 << 4) | order) + 1
}

fn decode(raw: u64) -> Pages {
    let v = raw - 1;
    // SAFETY: `raw` was produced by `encode` from a leaked block and is
    // removed from its slot (swap) before decoding, so the handle is unique.
    unsafe { Pages::from_raw(Pfn(v >> 4), (v & 0xf) as usize) }
}

/// A slot claimed by a call that is running (and may be interrupted by the NMI).
const SLOT_BUSY: u64 = u64::MAX;

/// Tick hook: allocate into an empty slot, free a full one, with the nolock pair.
/// A call claims its slot first, so a nested call (an NMI inside the timer
/// interrupt's call) that lands on the same slot — 32 calls later, which a host
/// that deschedules QEMU for a few milliseconds makes possible — leaves it alone
/// instead of overwriting a block (the cause of a lost order-3 block once in CI).
fn hammer_tick() {
    let a = page_alloc();
    let tick = HAMMER_TICKS.fetch_add(1, SeqCst) as usize;
    let slot = &HAMMER_SLOTS[tick % SLOTS];
    let raw = slot.swap(SLOT_BUSY, SeqCst);
    if raw == SLOT_BUSY {
        HAMMER_SKIPS.fetch_add(1, SeqCst);
    } else if raw == 0 {
        match a.try_alloc_pages(NUMA_NO_NODE, tick % (PCP_MAX_ORDER + 1)) {
            Some(p) => {
                slot.store(encode(p), SeqCst);
                HAMMER_ALLOCS.fetch_add(1, SeqCst);
            }
            None => {
                slot.store(0, SeqCst);
                HAMMER_MISSES.fetch_add(1, SeqCst);
            }
        }
    } else {
        a.free_pages_nolock(decode(raw));
        slot.store(0, SeqCst);
        HAMMER_FREES.fetch_add(1, SeqCst);
    }
}

/// The PIT at 1 kHz calls the nolock pair on every tick as a timer interrupt
/// (which can never see a held allocator lock: the locks disable interrupts) and,
/// routed through the I/O APIC in NMI mode, as NMIs (about two per tick under
/// QEMU), which do land inside the locked sections of the normal allocations
/// running meanwhile: there the try-locks fail, allocations return `None` and
/// frees are deferred. Afterwards every page is accounted for.
fn timer_irq_hammers_nolock_pair_while_allocating() -> KResult {
    const RUN_NS: u64 = 2_000_000_000;
    kassert!(apic::is_enabled(), "no local APIC to receive the NMIs");
    let (io, pit_pin) = IoApic::for_isa_irq(PIT_IRQ).map_err(|e| alloc::format!("no I/O APIC pin for the PIT: {:?}", e))?;
    let a = page_alloc();
    let free_before = crate::memory::slab::nr_free_pages_settled();
    let slab_before = crate::memory::slab::KMALLOC.stats().nr_slab_pages;
    for c in [&HAMMER_TICKS, &HAMMER_ALLOCS, &HAMMER_MISSES, &HAMMER_FREES, &HAMMER_SKIPS] {
        c.store(0, SeqCst);
    }
    let (before, nmis0) = (a.stats(), nmi::NMIS.load(SeqCst));
    // The hook first, then the route (an NMI may come at once), then the rate; all
    // undone below, and nothing in between can return early.
    nmi::set_nmi_hook(Some(hammer_tick));
    if io.route_as_nmi(pit_pin, apic::id() as u8).is_err() {
        nmi::set_nmi_hook(None);
        return Err("the I/O APIC has no PIT pin".into());
    }
    pit::set_frequency(1000);
    pit::set_tick_hook(Some(hammer_tick));
    let start = crate::arch::x86_64::time::uptime_ns().unwrap_or(0);
    let mut rng = XorShift64(0x2545_f491_4f6c_dd1d);
    let mut held: Vec<Pages> = Vec::with_capacity(64);
    let mut normal_ops = 0u64;
    while crate::arch::x86_64::time::uptime_ns().unwrap_or(u64::MAX) - start < RUN_NS {
        let r = rng.next();
        if held.len() < 64 && (r & 1 == 0 || held.is_empty()) {
            if let Ok(p) = a.alloc_pages(GFP_KERNEL | __GFP_NOWARN, (r >> 8) as usize % 5) {
                held.push(p);
            }
        } else {
            let i = (r >> 16) as usize % held.len();
            a.free_pages(held.swap_remove(i));
        }
        normal_ops += 1;
    }
    pit::set_tick_hook(None);
    io.mask(pit_pin);
    nmi::set_nmi_hook(None);
    pit::set_frequency(pit::HZ);
    let nmis = nmi::NMIS.load(SeqCst) - nmis0;
    for p in held {
        a.free_pages(p);
    }
    let mut stuck = 0;
    for slot in &HAMMER_SLOTS {
        match slot.swap(0, SeqCst) {
            0 => {}
            SLOT_BUSY => stuck += 1, // no call is running any more: a bug
            raw => a.free_pages(decode(raw)),
        }
    }
    let (ticks, allocs, misses, frees, skips) = (
        HAMMER_TICKS.load(SeqCst),
        HAMMER_ALLOCS.load(SeqCst),
        HAMMER_MISSES.load(SeqCst),
        HAMMER_FREES.load(SeqCst),
        HAMMER_SKIPS.load(SeqCst),
    );
    let after = a.stats();
    let (trylock_fails, deferred) = (after.trylock_fail - before.trylock_fail, after.deferred_free - before.deferred_free);
    crate::println!(
        "    hammer: {} normal ops; {} calls ({} from NMIs, {} on a busy slot): {} nolock allocs, {} misses, {} nolock frees; {} zone try-locks failed, {} frees deferred",
        normal_ops, ticks, nmis, skips, allocs, misses, frees, trylock_fails, deferred
    );
    kassert_eq!(stuck, 0);
    kassert!(ticks >= 200, "only {} hammer calls in 2 s", ticks);
    kassert!(nmis >= 100, "only {} PIT NMIs in 2 s", nmis);
    kassert!(allocs > 0 && frees > 0, "the interrupt side did no work");
    kassert!(trylock_fails + deferred > 0, "no NMI landed inside a locked section");
    let free_after = crate::memory::slab::nr_free_pages_settled();
    if free_after != free_before {
        // Everything the allocator knows, to tell a lost block from a counter slip.
        let s = a.stats();
        // A kmalloc object still alive keeps its slab (order 3 from 1 KiB up).
        let slab_after = crate::memory::slab::KMALLOC.stats().nr_slab_pages;
        crate::println!(
            "    hammer: free {} -> {}; bad pages {} -> {}; slab pages {} -> {}",
            free_before, free_after, before.bad_page, s.bad_page, slab_before, slab_after
        );
        let _ = crate::memory::slab::KMALLOC.slabinfo(&mut crate::lib::printk::Writer);
        for z in s.zones.iter().filter(|z| z.managed > 0) {
            crate::println!("    zone {}: buddy {} pcp {} deferred {} allocated {}", z.name, z.free, z.pcp, z.deferred, z.allocated);
        }
        if let Err(e) = a.check_consistency() {
            crate::println!("    inconsistent: {:?}", e);
        }
    }
    kassert_eq!(free_after, free_before);
    check_consistent()
}

fn console_tables_use_linux_formats() -> KResult {
    let a = page_alloc();
    let mut buddy = alloc::string::String::new();
    a.buddyinfo(&mut buddy).map_err(|_| "fmt")?;
    kassert!(buddy.starts_with("Node 0, zone"), "buddyinfo: {}", buddy);
    kassert!(buddy.lines().any(|l| l.contains("DMA32")), "buddyinfo has no DMA32 zone: {}", buddy);
    let mut types = alloc::string::String::new();
    a.pagetypeinfo(&mut types).map_err(|_| "fmt")?;
    kassert!(types.contains("Free pages count per migrate type at order"), "pagetypeinfo: {}", types);
    kassert!(types.contains("Movable") && types.contains("Unmovable"), "pagetypeinfo: {}", types);
    let mut meminfo = alloc::string::String::new();
    a.meminfo(&mut meminfo).map_err(|_| "fmt")?;
    kassert!(meminfo.starts_with("MemTotal:"), "meminfo: {}", meminfo);
    Ok(())
}
