//! `ptreclaim-demo`: Qi Zheng's experiment, the case for freeing empty
//! page-table pages. A 64 GiB sparse anonymous mapping is touched 2 MiB at a
//! time with 4 KiB pages, and each 2 MiB is given back with `MADV_DONTNEED`
//! before moving on; with `vm.pt_reclaim` on, the page tables stay flat, with
//! it off every step leaves its PTE table behind. The ktests run it shorter.

use mm::addr::PAGE_SIZE;
use mm::fault::ThpMode;
use mm::gfp::GFP_KERNEL;
use mm::pgtable::{VirtAddr, PMD_SIZE};
use mm::tlb::MmuGather;
use mm::vma::VmFlags;

use crate::arch::x86_64::cpu::rdtsc;
use crate::entry::fault::RESOLVED_FAULTS;
use crate::lib::command::Command;
use crate::memory::mm_struct::{activate_anon, destroy_current, put_user_u64, with_current, ActivateError};
use crate::memory::pgtable::{tlb_finish, PGTABLE_CTL, THP};
use crate::println;

/// Iterations of Zheng's experiment run by `ptreclaim-demo` by default.
pub const PT_RECLAIM_DEMO_ITERATIONS: u64 = 25_600;

pub const COMMANDS: &[Command] = &[Command {
    name: "ptreclaim-demo",
    args: "[ITERATIONS] [on|off|both]",
    help: "Zheng's test: touch + MADV_DONTNEED 2 MiB steps over 64 GiB",
    run: cmd_ptreclaim_demo,
}];

/// Why a run stopped.
#[derive(Debug)]
pub enum PtReclaimError {
    Activate(ActivateError),
    NoCurrentMm,
    Dontneed(mm::pgtable::PteRangeError),
}

impl core::fmt::Display for PtReclaimError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::Activate(e) => write!(f, "a 64 GiB anonymous address space: {}", e),
            Self::NoCurrentMm => write!(f, "no current address space"),
            Self::Dontneed(e) => write!(f, "MADV_DONTNEED: {:?}", e),
        }
    }
}

/// Result of one run of Zheng's experiment.
pub struct PtReclaimRun {
    pub iterations: u64,
    pub faults: u64,
    pub pt_bytes_before: u64,
    pub pt_bytes_after: u64,
    /// TSC ticks spent in the touch loops (instructions under `--icount`).
    pub touch_cycles: u64,
    /// TSC ticks spent in `MADV_DONTNEED` (zap + flush + freeing).
    pub dontneed_cycles: u64,
}

/// Zheng's test: reserve a 64 GiB sparse anonymous region, then
/// `iterations` times touch 2 MiB with 4 KiB pages and `MADV_DONTNEED` it,
/// moving on to the next 2 MiB each time.
pub fn pt_reclaim_run(iterations: u64, reclaim: bool) -> Result<PtReclaimRun, PtReclaimError> {
    const BASE: u64 = 0x10_0000_0000; // 64 GiB, 1 GiB aligned
    const LEN: u64 = 64 << 30;
    let iterations = iterations.min(LEN / PMD_SIZE);
    let saved_reclaim = PGTABLE_CTL.pt_reclaim();
    let saved_thp = THP.mode();
    PGTABLE_CTL.set_pt_reclaim(reclaim);
    THP.set_mode(ThpMode::Never);
    let result = (|| {
        activate_anon(BASE, LEN, VmFlags::NOHUGEPAGE).map_err(PtReclaimError::Activate)?;
        let pt_bytes_before = with_current(|mm| mm.space.pgtables_bytes()).unwrap_or(0);
        let faults_before = RESOLVED_FAULTS.load(core::sync::atomic::Ordering::Relaxed);
        let (mut touch_cycles, mut dontneed_cycles) = (0, 0);
        for i in 0..iterations {
            let start = BASE + i * PMD_SIZE;
            let t0 = rdtsc();
            for p in 0..PMD_SIZE / PAGE_SIZE {
                // SAFETY: inside the writable VMA of the current address space.
                unsafe { put_user_u64(start + p * PAGE_SIZE, p) };
            }
            let t1 = rdtsc();
            touch_cycles += t1 - t0;
            let tlb = with_current(|mm| {
                let mut tlb = MmuGather::new();
                let r = mm.space.madvise_dontneed(VirtAddr::try_new(start).unwrap(), PMD_SIZE, GFP_KERNEL, &mut tlb);
                (r, tlb)
            });
            let (r, tlb) = tlb.ok_or(PtReclaimError::NoCurrentMm)?;
            tlb_finish(tlb);
            dontneed_cycles += rdtsc() - t1;
            r.map_err(PtReclaimError::Dontneed)?;
        }
        let pt_bytes_after = with_current(|mm| mm.space.pgtables_bytes()).unwrap_or(0);
        let faults = RESOLVED_FAULTS.load(core::sync::atomic::Ordering::Relaxed) - faults_before;
        Ok(PtReclaimRun { iterations, faults, pt_bytes_before, pt_bytes_after, touch_cycles, dontneed_cycles })
    })();
    destroy_current();
    PGTABLE_CTL.set_pt_reclaim(saved_reclaim);
    THP.set_mode(saved_thp);
    result
}


fn cmd_ptreclaim_demo(args: &str) {
    let mut words = args.split_whitespace();
    let iterations = match words.next().map(str::parse::<u64>) {
        None => PT_RECLAIM_DEMO_ITERATIONS,
        Some(Ok(n)) if n > 0 => n,
        Some(_) => return println!("ptreclaim-demo: ITERATIONS must be a positive number"),
    };
    let modes: &[bool] = match words.next() {
        None | Some("on") => &[true],
        Some("off") => &[false],
        Some("both") => &[true, false],
        Some(other) => return println!("ptreclaim-demo: unknown mode '{}' (on, off, both)", other),
    };
    for &reclaim in modes {
        println!("ptreclaim-demo: {} x (touch 2 MiB, MADV_DONTNEED 2 MiB), reclaim {}", iterations, if reclaim { "on" } else { "off" });
        match pt_reclaim_run(iterations, reclaim) {
            Ok(r) => println!(
                "  iterations {}  faults {}  page tables before {} kB  after {} kB  TSC per fault {}  TSC per MADV_DONTNEED {}",
                r.iterations,
                r.faults,
                r.pt_bytes_before / 1024,
                r.pt_bytes_after / 1024,
                r.touch_cycles / r.faults.max(1),
                r.dontneed_cycles / r.iterations.max(1)
            ),
            Err(e) => println!("  failed: {}", e),
        }
    }
}

