//! What the page allocator knows, as numbers and as Linux-format text.
//!
//! Linux counterpart: `mm/vmstat.c` (`/proc/buddyinfo`, `/proc/pagetypeinfo`,
//! `/proc/vmstat`), `fs/proc/meminfo.c`, and the `CONFIG_DEBUG_VM` consistency
//! checks. Output goes to any `core::fmt::Write`, so the kernel prints it on the
//! serial console and tests compare it with what Linux prints.

use core::fmt::{self, Write};
use core::sync::atomic::Ordering::Relaxed;

use crate::addr::{PAGE_SIZE, Pfn};
use crate::page::{Kind, NONE};
use crate::page_alloc::{NR_PAGE_ORDERS, NR_ZONES, PageAlloc, Zone};
use crate::pageblock::{MIGRATE_TYPES, MigrateType, PAGEBLOCK_NR_PAGES, PAGEBLOCK_ORDER};
use crate::pcp::NR_PCP_LISTS;
use crate::sync::Platform;

/// A snapshot of one zone.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ZoneStats {
    pub name: &'static str,
    pub managed: u64,
    /// Pages in the buddy free lists (including isolated blocks).
    pub free: u64,
    pub pcp: u64,
    pub deferred: u64,
    /// `managed - free - pcp - deferred`.
    pub allocated: u64,
    /// Watermarks min, low, high (pages).
    pub wmark: [u64; 3],
    pub free_by_mt: [u64; MIGRATE_TYPES],
    pub blocks_by_mt: [u64; MIGRATE_TYPES],
    /// Free blocks per (order, type): the `/proc/pagetypeinfo` table.
    pub nr_free: [[u64; MIGRATE_TYPES]; NR_PAGE_ORDERS],
    pub reserved_highatomic: u64,
}

/// A snapshot of the allocator: zones plus `/proc/vmstat`-style event counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AllocStats {
    pub zones: [ZoneStats; NR_ZONES],
    pub pgalloc: u64,
    pub pgfree: u64,
    pub alloc_fail: u64,
    pub allocstall: u64,
    /// Allocations served from a foreign migrate type (claimed or stolen).
    pub fallback: u64,
    /// Page blocks whose type changed to the requester's (claims).
    pub claim_block: u64,
    /// Fallbacks that took pages without claiming the block.
    pub steal: u64,
    /// Allocations placed in a block of another migrate type.
    pub polluting: u64,
    pub compact_stall: u64,
    pub compact_success: u64,
    pub compact_fail: u64,
    pub compact_migrated: u64,
    pub deferred_free: u64,
    pub trylock_fail: u64,
    pub bad_page: u64,
    pub highatomic_reserve: u64,
    /// Reclaim rounds without progress after which the allocation waited a tick.
    pub reclaim_throttle: u64,
    /// Such rounds whose caller could not wait (interrupts off or a lock held).
    pub reclaim_throttle_skipped: u64,
    pub fault_injected: u64,
}

impl AllocStats {
    pub fn free(&self) -> u64 {
        self.zones.iter().map(|z| z.free + z.pcp + z.deferred).sum()
    }
    pub fn allocated(&self) -> u64 {
        self.zones.iter().map(|z| z.allocated).sum()
    }
    pub fn managed(&self) -> u64 {
        self.zones.iter().map(|z| z.managed).sum()
    }
}

/// What `check_consistency` found wrong.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum ConsistencyError {
    /// A free-list entry is not a free head of the list's order, or links are broken.
    BadFreeListEntry(Pfn),
    /// A free block sits on the list of a type other than its page block's.
    WrongListType(Pfn),
    /// A per-CPU list entry is not a per-CPU free head of the list's order.
    BadPcpEntry(Pfn),
    /// A frame is covered by two blocks, or a tail by none.
    Overlap(Pfn),
    /// Counters disagree with what the lists and metadata hold.
    CountMismatch { zone: usize, counter: Counter },
}

/// Which counter `ConsistencyError::CountMismatch` found wrong.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Counter {
    FreeListLength,
    FreePages,
    PcpListLength,
    PcpCount,
    FramesFree,
    FramesPcp,
    Deferred,
    BlocksByType,
    Total,
}

/// Totals found by `check_consistency`.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct ConsistencyReport {
    pub free: u64,
    pub pcp: u64,
    pub deferred: u64,
    pub allocated: u64,
    /// Largest free block order seen (None if nothing is free).
    pub max_free_order: Option<usize>,
}

impl<'a, P: Platform> PageAlloc<'a, P> {
    fn zone_stats(&self, z: &Zone<P>) -> ZoneStats {
        let (pcp, _, _) = self.pcp_totals(z);
        let a = self.lock_zone(z);
        let deferred = z.nr_deferred.load(Relaxed);
        ZoneStats {
            name: z.ztype.name(),
            managed: z.managed_pages,
            free: a.nr_free_pages,
            pcp,
            deferred,
            allocated: z.managed_pages - a.nr_free_pages - pcp - deferred,
            wmark: z.wmark,
            free_by_mt: a.nr_free_by_mt,
            blocks_by_mt: a.nr_blocks_by_mt,
            nr_free: a.nr_free,
            reserved_highatomic: a.nr_reserved_highatomic,
        }
    }

    /// A snapshot of zones and counters (takes each lock briefly).
    pub fn stats(&self) -> AllocStats {
        let e = &self.events;
        let (mut pcp_alloc, mut pcp_free) = (0, 0);
        for z in &self.zones {
            let (_, a, f) = self.pcp_totals(z);
            pcp_alloc += a;
            pcp_free += f;
        }
        AllocStats {
            zones: [self.zone_stats(&self.zones[0]), self.zone_stats(&self.zones[1])],
            pgalloc: e.pgalloc.load(Relaxed) + pcp_alloc,
            pgfree: e.pgfree.load(Relaxed) + pcp_free,
            alloc_fail: e.alloc_fail.load(Relaxed),
            allocstall: e.allocstall.load(Relaxed),
            fallback: e.fallback.load(Relaxed),
            claim_block: e.claim_block.load(Relaxed),
            steal: e.steal.load(Relaxed),
            polluting: e.polluting.load(Relaxed),
            compact_stall: e.compact_stall.load(Relaxed),
            compact_success: e.compact_success.load(Relaxed),
            compact_fail: e.compact_fail.load(Relaxed),
            compact_migrated: e.compact_migrated.load(Relaxed),
            deferred_free: e.deferred_free.load(Relaxed),
            trylock_fail: e.trylock_fail.load(Relaxed),
            bad_page: e.bad_page.load(Relaxed),
            highatomic_reserve: e.highatomic_reserve.load(Relaxed),
            reclaim_throttle: e.reclaim_throttle.load(Relaxed),
            reclaim_throttle_skipped: e.reclaim_throttle_skipped.load(Relaxed),
            fault_injected: self.fail.injected(),
        }
    }

    /// `/proc/buddyinfo`.
    pub fn buddyinfo(&self, out: &mut impl Write) -> fmt::Result {
        for z in self.zones.iter().filter(|z| z.managed_pages > 0) {
            let s = self.zone_stats(z);
            write!(out, "Node 0, zone {:>8} ", s.name)?;
            for o in 0..NR_PAGE_ORDERS {
                write!(out, "{:>6} ", s.nr_free[o].iter().sum::<u64>())?;
            }
            writeln!(out)?;
        }
        Ok(())
    }

    /// `/proc/pagetypeinfo`.
    pub fn pagetypeinfo(&self, out: &mut impl Write) -> fmt::Result {
        writeln!(out, "Page block order: {PAGEBLOCK_ORDER}")?;
        writeln!(out, "Pages per block:  {PAGEBLOCK_NR_PAGES}")?;
        writeln!(out)?;
        write!(out, "{:<43} ", "Free pages count per migrate type at order")?;
        for o in 0..NR_PAGE_ORDERS {
            write!(out, "{o:>6} ")?;
        }
        writeln!(out)?;
        let zones: [ZoneStats; NR_ZONES] = core::array::from_fn(|i| self.zone_stats(&self.zones[i]));
        for s in zones.iter().filter(|s| s.managed > 0) {
            for mt in MigrateType::ALL {
                write!(out, "Node {:>4}, zone {:>8}, type {:>12} ", 0, s.name, mt.name())?;
                for o in 0..NR_PAGE_ORDERS {
                    write!(out, "{:>6} ", s.nr_free[o][mt.index()])?;
                }
                writeln!(out)?;
            }
        }
        writeln!(out)?;
        write!(out, "{:<23}", "Number of blocks type ")?;
        for mt in MigrateType::ALL {
            write!(out, "{:>12} ", mt.name())?;
        }
        writeln!(out)?;
        for s in zones.iter().filter(|s| s.managed > 0) {
            write!(out, "Node {}, zone {:>8} ", 0, s.name)?;
            for mt in MigrateType::ALL {
                write!(out, "{:>12} ", s.blocks_by_mt[mt.index()])?;
            }
            writeln!(out)?;
        }
        Ok(())
    }

    /// `/proc/meminfo`-style summary plus per-type free pages.
    pub fn meminfo(&self, out: &mut impl Write) -> fmt::Result {
        let s = self.stats();
        let kb = |pages: u64| pages * (PAGE_SIZE / 1024);
        let line = |out: &mut dyn Write, name: &str, pages: u64| writeln!(out, "{:<16}{:>8} kB", name, kb(pages));
        line(out, "MemTotal:", s.managed())?;
        line(out, "MemFree:", s.free())?;
        line(out, "MemUsed:", s.allocated())?;
        line(out, "PcpFree:", s.zones.iter().map(|z| z.pcp).sum())?;
        line(out, "DeferredFree:", s.zones.iter().map(|z| z.deferred).sum())?;
        line(out, "HighAtomicRsv:", s.zones.iter().map(|z| z.reserved_highatomic).sum())?;
        for mt in MigrateType::ALL {
            let pages = s.zones.iter().map(|z| z.free_by_mt[mt.index()]).sum();
            let name = alloc::format!("Free{}:", mt.name());
            line(out, &name, pages)?;
        }
        Ok(())
    }

    /// `/proc/vmstat`-style event counters.
    pub fn vmstat(&self, out: &mut impl Write) -> fmt::Result {
        let s = self.stats();
        let rows: [(&str, u64); 19] = [
            ("pgalloc", s.pgalloc),
            ("pgfree", s.pgfree),
            ("pgalloc_fail", s.alloc_fail),
            ("allocstall", s.allocstall),
            ("extfrag_fallback", s.fallback),
            ("extfrag_claim_block", s.claim_block),
            ("extfrag_steal", s.steal),
            ("extfrag_polluting", s.polluting),
            ("compact_stall", s.compact_stall),
            ("compact_success", s.compact_success),
            ("compact_fail", s.compact_fail),
            ("compact_migrate_scanned", s.compact_migrated),
            ("free_deferred", s.deferred_free),
            ("trylock_fail", s.trylock_fail),
            ("bad_page", s.bad_page),
            ("highatomic_reserve", s.highatomic_reserve),
            ("reclaim_throttle", s.reclaim_throttle),
            ("reclaim_throttle_skipped", s.reclaim_throttle_skipped),
            ("fail_page_alloc", s.fault_injected),
        ];
        for (name, v) in rows {
            writeln!(out, "{name} {v}")?;
        }
        Ok(())
    }

    /// The page-block map, one character per block, 64 per line:
    /// `.` wholly free, lower-case type letter = less than half used, upper-case =
    /// half or more used, `!` = block holds pages of a foreign mobility (polluted),
    /// space = no managed frames.
    pub fn pageblocks(&self, out: &mut impl Write) -> fmt::Result {
        writeln!(out, "# . free  u/m/r/h/i <50% used  U/M/R/H/I >=50% used  ! mixed mobility")?;
        let span = self.pfn_span();
        let mut block = span.start.0;
        let mut col = 0;
        while block < span.end.0 {
            if col == 0 {
                write!(out, "{:#012x} ", block)?;
            }
            write!(out, "{}", self.block_char(block))?;
            col += 1;
            block += PAGEBLOCK_NR_PAGES;
            if col == 64 || block >= span.end.0 {
                writeln!(out)?;
                col = 0;
            }
        }
        Ok(())
    }

    /// Usage of one block: (managed, free, used, foreign-mobility used).
    pub(crate) fn block_usage(&self, start: u64) -> (u64, u64, u64, u64) {
        let end = (start + PAGEBLOCK_NR_PAGES).min(self.pfn_span().end.0);
        let bmt = self.block_mt(start);
        let (mut managed, mut free, mut used, mut foreign) = (0, 0, 0, 0);
        let movable = |t: MigrateType| t == MigrateType::Movable;
        if self.meta(start).kind() == Kind::Tail {
            // The second half of an order-10 block whose head is in the previous block.
            let head = self.meta(start & !((1 << crate::page_alloc::MAX_ORDER) - 1));
            let n = end - start;
            return match head.kind() {
                Kind::Buddy | Kind::Pcp | Kind::Deferred => (n, n, 0, 0),
                _ if movable(head.alloc_migratetype()) != movable(bmt) => (n, 0, n, n),
                _ => (n, 0, n, 0),
            };
        }
        let mut p = start;
        while p < end {
            let m = self.meta(p);
            let kind = m.kind();
            let n = match kind {
                Kind::Reserved => 1,
                Kind::Tail => 1, // not reached: heads skip their tails
                _ => (1u64 << m.order()).min(end - p),
            };
            if kind != Kind::Reserved && kind != Kind::Tail {
                managed += n;
                if matches!(kind, Kind::Buddy | Kind::Pcp | Kind::Deferred) {
                    free += n;
                } else {
                    used += n;
                    let mt = m.alloc_migratetype();
                    if movable(mt) != movable(bmt) && bmt != MigrateType::HighAtomic {
                        foreign += n;
                    }
                }
            }
            p += n;
        }
        (managed, free, used, foreign)
    }

    fn block_char(&self, start: u64) -> char {
        let (managed, free, used, foreign) = self.block_usage(start);
        if managed == 0 {
            ' '
        } else if used == 0 {
            '.'
        } else if foreign > 0 {
            '!'
        } else if used * 2 < managed {
            self.block_mt(start).letter().to_ascii_lowercase()
        } else {
            let _ = free;
            self.block_mt(start).letter()
        }
    }

    /// Walks every list and every frame and checks the allocator's invariants (Linux
    /// `CONFIG_DEBUG_VM`): list links and types, no frame in two blocks, counters equal
    /// to what the lists hold, `managed = free + pcp + deferred + allocated`.
    /// Takes every lock; meant for tests and the console, not hot paths. Call it
    /// quiescent: an NMI that frees during the frame walk defers its block (the locks
    /// are held), which can show as a transient `Deferred` / `Total` mismatch.
    pub fn check_consistency(&self) -> Result<ConsistencyReport, ConsistencyError> {
        let mut rep = ConsistencyReport::default();
        for (zi, z) in self.zones.iter().enumerate() {
            // On CPU-local platforms only this CPU's lists may be walked (`None` for the
            // others: their counters are trusted, and the frame scan below can race with them).
            let pcps: alloc::vec::Vec<_> = (0..self.nr_cpus).map(|cpu| (cpu, self.pcp_lock_cpu(z, cpu))).collect();
            let a = z.area.lock();
            let mismatch = |counter| ConsistencyError::CountMismatch { zone: zi, counter };
            // Buddy free lists.
            let mut free = 0;
            let mut by_mt = [0u64; MIGRATE_TYPES];
            for o in 0..NR_PAGE_ORDERS {
                for mt in MigrateType::ALL {
                    let (mut idx, mut prev, mut n) = (a.head[o][mt.index()], NONE, 0);
                    while idx != NONE {
                        let pfn = self.pfn_of(idx);
                        let m = self.meta(pfn);
                        if m.kind() != Kind::Buddy || m.order() != o || m.prev() != prev || n > self.meta.len() {
                            return Err(ConsistencyError::BadFreeListEntry(Pfn(pfn)));
                        }
                        let blocks = 1u64 << o.saturating_sub(PAGEBLOCK_ORDER);
                        for b in 0..blocks {
                            if self.block_mt(pfn + b * PAGEBLOCK_NR_PAGES) != mt {
                                return Err(ConsistencyError::WrongListType(Pfn(pfn)));
                            }
                        }
                        n += 1;
                        free += 1 << o;
                        by_mt[mt.index()] += 1 << o;
                        rep.max_free_order = rep.max_free_order.max(Some(o));
                        prev = idx;
                        idx = m.next();
                    }
                    if n as u64 != a.nr_free[o][mt.index()] {
                        return Err(mismatch(Counter::FreeListLength));
                    }
                }
            }
            if free != a.nr_free_pages || by_mt != a.nr_free_by_mt {
                return Err(mismatch(Counter::FreePages));
            }
            // The lock-free mirrors the watermark checks read.
            let (usable, highatomic) = a.watermark_free();
            if z.nr_free.load(Relaxed) != usable || z.nr_free_highatomic.load(Relaxed) != highatomic {
                return Err(mismatch(Counter::FreePages));
            }
            // Per-CPU lists.
            let mut pcp_pages = 0;
            for (cpu, locked) in &pcps {
                let Some((slot, pcp)) = locked else {
                    pcp_pages += z.pcp[*cpu].count.load(Relaxed) as u64;
                    continue;
                };
                let mut cpu_pages = 0;
                for pi in 0..NR_PCP_LISTS {
                    let order = pi / crate::pageblock::MIGRATE_PCPTYPES;
                    let (mut idx, mut n) = (pcp.lists[pi], 0usize);
                    while idx != NONE {
                        let m = &self.meta[idx as usize];
                        if m.kind() != Kind::Pcp || m.order() != order {
                            return Err(ConsistencyError::BadPcpEntry(Pfn(self.pfn_of(idx))));
                        }
                        n += 1;
                        cpu_pages += 1 << order;
                        idx = m.next();
                        if n > self.meta.len() {
                            return Err(mismatch(Counter::PcpListLength)); // a cycle
                        }
                    }
                }
                if cpu_pages != slot.count.load(Relaxed) as u64 {
                    return Err(mismatch(Counter::PcpCount));
                }
                pcp_pages += cpu_pages;
            }
            // Every frame: heads cover their tails exactly once.
            let (mut owned, mut deferred, mut counted_free, mut counted_pcp) = (0u64, 0u64, 0u64, 0u64);
            let mut blocks = [0u64; MIGRATE_TYPES];
            let mut b = z.start_pfn;
            while b < z.end_pfn {
                blocks[self.block_mt(b).index()] += 1;
                b += PAGEBLOCK_NR_PAGES;
            }
            let mut p = z.start_pfn;
            while p < z.end_pfn {
                let m = self.meta(p);
                let kind = m.kind();
                if kind == Kind::Reserved {
                    p += 1;
                    continue;
                }
                if kind == Kind::Tail {
                    return Err(ConsistencyError::Overlap(Pfn(p)));
                }
                let n = 1u64 << m.order();
                if p % n != 0 || p + n > z.end_pfn {
                    return Err(ConsistencyError::Overlap(Pfn(p)));
                }
                for t in p + 1..p + n {
                    if self.meta(t).kind() != Kind::Tail {
                        return Err(ConsistencyError::Overlap(Pfn(t)));
                    }
                }
                match kind {
                    Kind::Buddy => counted_free += n,
                    Kind::Pcp => counted_pcp += n,
                    Kind::Deferred => deferred += n,
                    _ => owned += n,
                }
                p += n;
            }
            let checks = [
                (counted_free == free, Counter::FramesFree),
                (counted_pcp == pcp_pages, Counter::FramesPcp),
                (deferred == z.nr_deferred.load(Relaxed), Counter::Deferred),
                (blocks == a.nr_blocks_by_mt, Counter::BlocksByType),
                (free + pcp_pages + deferred + owned == z.managed_pages, Counter::Total),
            ];
            if let Some(&(_, c)) = checks.iter().find(|(ok, _)| !ok) {
                return Err(mismatch(c));
            }
            rep.free += free;
            rep.pcp += pcp_pages;
            rep.deferred += deferred;
            rep.allocated += owned;
        }
        Ok(rep)
    }
}
