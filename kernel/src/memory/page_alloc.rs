//! The kernel's physical page allocator: the `mm` crate's buddy allocator
//! instantiated over the bootloader's memory map (Linux `mm_init.c` +
//! `memblock_free_all`), with the hardware plugged in:
//!
//! - `KernelPlatform` (from `arch/`): interrupts off while an allocator lock
//!   is held, CPU id 0 (one CPU for now);
//! - [`DirectMapMem`]: zeroing and copying frames through the direct map;
//! - [`KernelHooks`]: allocation-failure warnings on the console.
//!
//! The `struct page` array ([`mm::page::PageMeta`], 32 bytes per frame) is
//! carved out of the first usable range large enough to hold it, zeroed, and
//! removed from what the buddy allocator manages. Frames below 1 MiB stay
//! reserved (real-mode and BIOS leftovers, and pfn 0 is never handed out).
//!
//! Console commands: `buddyinfo`, `pagetypeinfo`, `pageblocks`, `vmstat`,
//! `compact`, `sysctl vm.defrag_mode[=0|1]`; `meminfo` uses the counters here.

use alloc::vec::Vec;
use core::ops::Range;
use core::sync::atomic::{AtomicU64, Ordering};

use bootloader_api::info::MemoryRegionKind;
use mm::addr::{whole_frames, HumanBytes, Pfn, PAGE_SIZE};
use mm::gfp::Gfp;
use mm::page::{metadata_frames, PageMeta};
use mm::sched_mm::MemallocScope;
use mm::page_alloc::{AllocConfig, AllocError, AllocHooks, PageAlloc, PhysMem};
use spin::Once;

use crate::arch::x86_64::platform::KernelPlatform;
use crate::arch::x86_64::memmap::{self, BootFacts};

/// Frames below this stay reserved (legacy BIOS area; never hand out pfn 0).
const LOW_RESERVED_END: u64 = 1 << 20;

/// Frame contents through the direct map.
pub struct DirectMapMem;

impl PhysMem for DirectMapMem {
    unsafe fn zero_frames(&self, pfn: Pfn, nr_pages: u64) {
        // SAFETY: the caller owns the frames; the direct map covers all RAM.
        unsafe { core::ptr::write_bytes(memmap::phys_to_virt(pfn.phys_addr()), 0, (nr_pages * PAGE_SIZE) as usize) }
    }

    unsafe fn copy_frames(&self, src: Pfn, dst: Pfn, nr_pages: u64) {
        // SAFETY: the caller owns `dst` and keeps `src` stable; distinct
        // frames never overlap; the direct map covers all RAM.
        unsafe {
            core::ptr::copy_nonoverlapping(
                memmap::phys_to_virt(src.phys_addr()),
                memmap::phys_to_virt(dst.phys_addr()),
                (nr_pages * PAGE_SIZE) as usize,
            )
        }
    }
}

/// Allocator callbacks into the kernel.
pub struct KernelHooks;

impl AllocHooks for KernelHooks {
    fn warn_alloc(&self, gfp: Gfp, order: usize, err: AllocError) {
        log::warn!("page allocation failure: order:{}, mode:{:?}: {:?}", order, gfp, err);
    }

    fn bad_page(&self, pfn: Pfn, reason: &'static str) {
        log::error!("BUG: Bad page state: {}: {}", pfn, reason);
    }

    fn direct_reclaim(&self, gfp: Gfp, order: usize) -> u64 {
        crate::memory::shrinker::direct_reclaim(gfp, order)
    }

    fn nofail_stall(&self, gfp: Gfp, order: usize, retries: u64) {
        log::warn!("page allocation loops for long: order:{}, mode:{:?}, {} retries (__GFP_NOFAIL keeps trying)", order, gfp, retries);
    }

    /// A reclaim round freed nothing: sleep one tick, unless the scope forbids
    /// reclaim (a shrinker's own allocation) or the context cannot sleep.
    fn reclaim_throttle(&self, gfp: Gfp) -> bool {
        let gfp = MEMALLOC_SCOPE.current_gfp_context(gfp);
        mm::gfp::gfpflags_allow_blocking(gfp) && SLEEP_HOOK.get().is_some_and(|sleep| sleep(1))
    }
}

/// Sleeps for a number of timer ticks; `false` if the caller cannot sleep
/// (Linux `schedule_timeout_uninterruptible`).
pub type SleepFn = fn(ticks: u64) -> bool;

/// The scheduler's sleep, installed by `main` (the scheduler sits above this
/// layer); until then a reclaim round without progress retries at once.
static SLEEP_HOOK: Once<SleepFn> = Once::new();

/// Installs how a reclaiming allocation waits between rounds.
pub fn set_sleep_hook(sleep: SleepFn) {
    SLEEP_HOOK.call_once(|| sleep);
}

pub type KernelPageAlloc = PageAlloc<'static, KernelPlatform>;

/// The allocation scope of the (single) kernel task: `memalloc_nofs_save()`
/// and friends narrow every allocation made while their guard lives.
pub static MEMALLOC_SCOPE: MemallocScope = MemallocScope::new();

static PAGE_ALLOC: Once<KernelPageAlloc> = Once::new();
static DIRECT_MAP_MEM: DirectMapMem = DirectMapMem;
static HOOKS: KernelHooks = KernelHooks;
/// Physical frames that hold the metadata array.
static METADATA_PFNS: AtomicU64 = AtomicU64::new(0);
static METADATA_FIRST_PFN: AtomicU64 = AtomicU64::new(0);

/// The page allocator; panics before [`init`] (a kernel bug).
pub fn page_alloc() -> &'static KernelPageAlloc {
    PAGE_ALLOC.get().expect("page_alloc::init runs during boot")
}

/// Whether the allocator is up.
pub fn is_ready() -> bool {
    PAGE_ALLOC.get().is_some()
}

/// Usable frame ranges of the memory map, minus the low reserved area.
fn usable_frames(facts: &BootFacts) -> Vec<Range<u64>> {
    let low = LOW_RESERVED_END / PAGE_SIZE;
    facts
        .regions
        .iter()
        .filter(|r| r.kind == MemoryRegionKind::Usable)
        .map(|r| whole_frames(r.start, r.end))
        .map(|f| f.start.max(low)..f.end)
        .filter(|f| f.start < f.end)
        .collect()
}

/// Why the allocator could not be set up.
#[derive(Debug)]
pub enum InitError {
    NoUsableMemory,
    NoRoomForMetadata { frames_needed: u64 },
    Allocator(mm::page_alloc::InitError),
}

impl core::fmt::Display for InitError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            InitError::NoUsableMemory => write!(f, "the memory map has no usable RAM above 1 MiB"),
            InitError::NoRoomForMetadata { frames_needed } => {
                write!(f, "no usable range can hold the struct page array ({} frames)", frames_needed)
            }
            InitError::Allocator(e) => write!(f, "the buddy allocator refused the memory map: {:?}", e),
        }
    }
}

/// Builds the page allocator from the memory map. Call once, after `memmap::init`.
pub fn init(facts: &BootFacts) -> Result<&'static KernelPageAlloc, InitError> {
    let mut usable = usable_frames(facts);
    let end_pfn = usable.iter().map(|r| r.end).max().ok_or(InitError::NoUsableMemory)?;
    // The metadata describes frames 0..end_pfn (first_pfn must be MAX_ORDER aligned).
    let meta_frames = metadata_frames(end_pfn);
    let slot = usable
        .iter()
        .position(|r| r.end - r.start >= meta_frames)
        .ok_or(InitError::NoRoomForMetadata { frames_needed: meta_frames })?;
    let meta_pfn = usable[slot].start;
    usable[slot].start += meta_frames;

    let meta_ptr = memmap::phys_to_virt(meta_pfn * PAGE_SIZE) as *mut PageMeta;
    // SAFETY: the frames are usable RAM that nothing else owns (they were just
    // taken out of the buddy's ranges), mapped by the direct map, page aligned
    // (so aligned for PageMeta). Zeroed bytes are a valid PageMeta array.
    let meta: &'static [PageMeta] = unsafe {
        core::ptr::write_bytes(meta_ptr as *mut u8, 0, (meta_frames * PAGE_SIZE) as usize);
        core::slice::from_raw_parts(meta_ptr, end_pfn as usize)
    };
    METADATA_FIRST_PFN.store(meta_pfn, Ordering::Relaxed);
    METADATA_PFNS.store(meta_frames, Ordering::Relaxed);

    let ranges: Vec<Range<Pfn>> = usable.iter().filter(|r| r.start < r.end).map(|r| Pfn(r.start)..Pfn(r.end)).collect();
    let alloc = PageAlloc::new(meta, Pfn(0), &ranges, &DIRECT_MAP_MEM, &HOOKS, AllocConfig::default())
        .map_err(InitError::Allocator)?;
    let alloc = PAGE_ALLOC.call_once(|| alloc);
    log::info!(
        "page_alloc: {} frames managed ({}), struct page array {} at pfn {:#x} ({} bytes/frame)",
        alloc.managed_pages(),
        HumanBytes(alloc.managed_pages() * PAGE_SIZE),
        HumanBytes(meta_frames * PAGE_SIZE),
        meta_pfn,
        core::mem::size_of::<PageMeta>()
    );
    Ok(alloc)
}

/// Frames that hold the `struct page` array.
pub fn metadata_frames_range() -> Range<u64> {
    let first = METADATA_FIRST_PFN.load(Ordering::Relaxed);
    first..first + METADATA_PFNS.load(Ordering::Relaxed)
}

// ------------------------------------------------------------ console

pub const COMMANDS: &[crate::lib::command::Command] = &[
    crate::lib::command::Command { name: "buddyinfo", args: "", help: "free blocks per order, like /proc/buddyinfo", run: cmd_buddyinfo },
    crate::lib::command::Command { name: "pagetypeinfo", args: "", help: "free blocks per order and migrate type, like /proc/pagetypeinfo", run: cmd_pagetypeinfo },
    crate::lib::command::Command { name: "pageblocks", args: "", help: "page-block map: one character per 2 MiB block", run: cmd_pageblocks },
    crate::lib::command::Command { name: "vmstat", args: "", help: "allocator event counters, like /proc/vmstat", run: cmd_vmstat },
    crate::lib::command::Command { name: "compact", args: "", help: "compact memory now (migrate movable pages)", run: cmd_compact },
    crate::lib::command::Command {
        name: "fragmentation",
        args: "[ROUNDS] [full]",
        help: "the Weiner/Gorman experiment on a private allocator (simulation: page metadata only)",
        run: cmd_fragmentation,
    },
];

/// Most rounds `fragmentation` accepts (each costs seconds under emulation).
const FRAG_MAX_ROUNDS: usize = 50;

/// `fragmentation [ROUNDS] [full]`: the Weiner / Gorman experiment of
/// `mm::fragtest`, the same code as `cargo run --release -p mm --example
/// fragmentation`, on a private allocator over page metadata only (never the
/// kernel's own allocator), ROUNDS (default 15) rounds per configuration, with
/// progress after each round. By default a quarter of the host's memory and
/// steps with a smaller spike (`FragConfig::quarter`: about a minute under TCG;
/// it shows defrag mode keeping every block pure, as the full size does); `full`
/// runs the host's size, four times longer, and prints the host's tables number
/// for number.
fn cmd_fragmentation(args: &str) {
    use mm::fragtest::{self, FragConfig};
    let mut words = args.split_whitespace();
    let Some(rounds) = crate::lib::command::count_arg("fragmentation", "ROUNDS", words.next(), 15, FRAG_MAX_ROUNDS) else {
        return;
    };
    let cfg = match (words.next(), words.next()) {
        (None, _) => FragConfig::quarter(rounds),
        (Some("full"), None) => FragConfig { rounds, ..FragConfig::default() },
        _ => return crate::println!("fragmentation: usage: fragmentation [ROUNDS] [full]"),
    };
    crate::println!(
        "fragmentation: simulation on a private allocator ({} MiB of page metadata only; the kernel's allocator is not touched), {} rounds of {} steps, {} order-9 requests per round; same code as the host program",
        cfg.nr_pages * 4096 >> 20,
        cfg.rounds,
        cfg.steps_per_round,
        cfg.thp_burst
    );
    let mut results = alloc::vec::Vec::new();
    for (name, config) in fragtest::configurations() {
        crate::print!("{name}: round");
        let run = fragtest::run(name, &cfg, config, |r| crate::print!(" {r}"));
        crate::println!();
        match run {
            Ok(r) => results.push(r),
            Err(e) => return crate::println!("fragmentation: {name}: {e:?}"),
        }
    }
    let _ = fragtest::report(&results, cfg.thp_burst, &mut crate::lib::printk::Writer);
}

fn print_with(f: impl FnOnce(&mut crate::lib::printk::Writer) -> core::fmt::Result) {
    if !is_ready() {
        crate::println!("page allocator not initialised");
        return;
    }
    let _ = f(&mut crate::lib::printk::Writer);
}

fn cmd_buddyinfo(_: &str) {
    print_with(|w| page_alloc().buddyinfo(w));
}

fn cmd_pagetypeinfo(_: &str) {
    print_with(|w| page_alloc().pagetypeinfo(w));
}

fn cmd_pageblocks(_: &str) {
    print_with(|w| page_alloc().pageblocks(w));
}

fn cmd_vmstat(_: &str) {
    print_with(|w| page_alloc().vmstat(w));
}

fn cmd_compact(_: &str) {
    print_with(|w| {
        let before = page_alloc().stats().compact_migrated;
        let blocks = page_alloc().compact_memory();
        let migrated = page_alloc().stats().compact_migrated - before;
        core::fmt::Write::write_fmt(w, format_args!("compacted: {} page blocks freed, {} pages migrated\n", blocks, migrated))
    });
}

/// `vm.defrag_mode`: compact before falling back to a block of another type.
pub const SYSCTL_DEFRAG_MODE: crate::lib::sysctl::Sysctl = crate::lib::sysctl::Sysctl {
    name: "vm.defrag_mode",
    values: "0, 1",
    get: || alloc::format!("{}", page_alloc().defrag_mode() as u8),
    set: |v| {
        let on = match v {
            "0" => false,
            "1" => true,
            _ => return Err(()),
        };
        page_alloc().set_defrag_mode(on);
        Ok(())
    },
};
