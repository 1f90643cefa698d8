//! Memory reclaim: the kernel's shrinker registry (Linux `mm/shrinker.c`),
//! called by the page allocator's direct reclaim with the allocation's GFP
//! flags narrowed by the current `memalloc_nofs/noio` scope, and
//! `drop_caches`: the console command and the sysctl `/proc/sys/vm/drop_caches`
//! that user programs write, both logging who asked — "console (1)" or the
//! process's "comm (pid)" — and the value (the 2013 patch).
//!
//! Rules: an FS shrinker runs only for allocations with `__GFP_FS`, an IO
//! shrinker only with `__GFP_IO` (`GFP_NOIO` implies no FS). Reclaim runs
//! inside a no-reclaim scope, so a shrinker's own allocations never recurse.

use core::sync::atomic::{AtomicBool, Ordering};

use mm::gfp::Gfp;
use mm::sched_mm::ScopeKind;
use mm::shrinker::{DropCachesError, Shrinker, ShrinkerId, ShrinkerRegistry};

use crate::arch::x86_64::platform::KernelPlatform;
use crate::memory::page_alloc::MEMALLOC_SCOPE;

pub static SHRINKERS: ShrinkerRegistry<'static, KernelPlatform> = ShrinkerRegistry::new();

/// Registers a cache's shrinker for the life of the kernel.
pub fn register(shrinker: &'static dyn Shrinker) -> Option<ShrinkerId> {
    match SHRINKERS.register(shrinker) {
        Ok(id) => Some(id),
        Err(e) => {
            log::error!("shrinker {}: cannot register: {:?}", shrinker.name(), e);
            None
        }
    }
}

/// The page allocator's direct-reclaim hook.
pub fn direct_reclaim(gfp: Gfp, order: usize) -> u64 {
    if MEMALLOC_SCOPE.in_reclaim() {
        return 0;
    }
    let gfp = MEMALLOC_SCOPE.current_gfp_context(gfp);
    let _no_recursion = MEMALLOC_SCOPE.save(ScopeKind::NoReclaim);
    SHRINKERS.direct_reclaim(gfp, order)
}

pub const COMMANDS: &[crate::lib::command::Command] = &[
    crate::lib::command::Command {
        name: "drop_caches",
        args: "N",
        help: "1 page cache, 2 slab objects, 3 both; +4 silences the log line",
        run: cmd_drop_caches,
    },
    crate::lib::command::Command { name: "shrinkers", args: "", help: "registered shrinkers and their counts", run: cmd_shrinkers },
];

/// Linux's sticky `stfu`: once a write had bit 4, the sysctl logs no more.
static DROP_CACHES_STFU: AtomicBool = AtomicBool::new(false);

/// A write of `value` to `/proc/sys/vm/drop_caches` by `who` ("comm (pid)"),
/// exactly as Linux's `drop_caches_sysctl_handler`: 1..=4 (else `Err`), bit 1 the
/// page cache, bit 2 slab objects, and the line "who: drop_caches: value" unless a
/// write with bit 4 came before (sticky; the console command's bit 4 silences only
/// its own call instead). Returns the objects the shrinkers freed.
pub fn drop_caches_sysctl(value: u32, who: &str) -> Result<u64, DropCachesError> {
    if !(1..=4).contains(&value) {
        return Err(DropCachesError::InvalidValue);
    }
    // Quiet here: the log line follows the sysctl's own (sticky) rule.
    let report = SHRINKERS.drop_caches(value | 4, who)?;
    if !DROP_CACHES_STFU.load(Ordering::Relaxed) {
        log::info!("{}: drop_caches: {}", who, value);
    }
    if value & 4 != 0 {
        DROP_CACHES_STFU.store(true, Ordering::Relaxed);
    }
    Ok(report.slab_freed)
}

fn cmd_drop_caches(args: &str) {
    let Ok(value) = args.trim().parse::<u32>() else {
        return crate::println!("drop_caches: need a number 1-7 (1 page cache, 2 slab, 3 both, +4 quiet)");
    };
    match SHRINKERS.drop_caches(value, "console (1)") {
        Ok(report) => {
            if let Some(line) = &report.log {
                log::info!("{}", line);
            }
            crate::println!("drop_caches: {} objects freed by the shrinkers", report.slab_freed);
        }
        Err(_) => crate::println!("drop_caches: invalid value {} (1-7)", value),
    }
}

fn cmd_shrinkers(_: &str) {
    let _ = SHRINKERS.shrinker_info(&mut crate::lib::printk::Writer);
    let _ = SHRINKERS.vmstat(&mut crate::lib::printk::Writer);
}
