//! Page blocks and migrate types: grouping pages by mobility.
//!
//! Linux counterpart: `include/linux/pageblock-flags.h`, `enum migratetype` in
//! `mmzone.h` and the `fallbacks[]` table in `mm/page_alloc.c`. Memory is divided
//! into blocks of [`PAGEBLOCK_NR_PAGES`] pages; each block has a [`MigrateType`] and
//! the allocator keeps allocations of one mobility together so that movable blocks can
//! later be emptied by compaction and handed out as huge pages. The type of a block is
//! stored in the allocator-owned `pageblock` word of the block's first `PageMeta`.

use crate::addr::Pfn;

/// log2 of the pages per page block (2 MiB blocks, the x86_64 huge page).
pub const PAGEBLOCK_ORDER: usize = 9;
/// Pages per page block.
pub const PAGEBLOCK_NR_PAGES: u64 = 1 << PAGEBLOCK_ORDER;

/// The mobility of an allocation and of a page block (Linux `enum migratetype`).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug, Hash)]
#[repr(u8)]
pub enum MigrateType {
    Unmovable = 0,
    Movable = 1,
    Reclaimable = 2,
    /// Reserve for high-order atomic allocations.
    HighAtomic = 3,
    /// Being emptied by compaction: nothing is allocated from it.
    Isolate = 4,
}

/// Types that have per-CPU lists (Linux `MIGRATE_PCPTYPES`).
pub const MIGRATE_PCPTYPES: usize = 3;
/// Number of migrate types (Linux `MIGRATE_TYPES`).
pub const MIGRATE_TYPES: usize = 5;

impl MigrateType {
    pub const ALL: [MigrateType; MIGRATE_TYPES] = [
        MigrateType::Unmovable,
        MigrateType::Movable,
        MigrateType::Reclaimable,
        MigrateType::HighAtomic,
        MigrateType::Isolate,
    ];

    /// Decodes the value stored in page metadata; unknown values read as Unmovable.
    #[inline]
    pub const fn from_bits(bits: u32) -> MigrateType {
        match bits {
            1 => MigrateType::Movable,
            2 => MigrateType::Reclaimable,
            3 => MigrateType::HighAtomic,
            4 => MigrateType::Isolate,
            _ => MigrateType::Unmovable,
        }
    }

    #[inline]
    pub const fn index(self) -> usize {
        self as usize
    }

    /// Name as printed in `/proc/pagetypeinfo`.
    #[inline]
    pub const fn name(self) -> &'static str {
        match self {
            MigrateType::Unmovable => "Unmovable",
            MigrateType::Movable => "Movable",
            MigrateType::Reclaimable => "Reclaimable",
            MigrateType::HighAtomic => "HighAtomic",
            MigrateType::Isolate => "Isolate",
        }
    }

    /// Letter used by the `pageblocks` map.
    #[inline]
    pub const fn letter(self) -> char {
        match self {
            MigrateType::Unmovable => 'U',
            MigrateType::Movable => 'M',
            MigrateType::Reclaimable => 'R',
            MigrateType::HighAtomic => 'H',
            MigrateType::Isolate => 'I',
        }
    }

    /// Whether a block of this type may be merged with / converted to another type.
    #[inline]
    pub const fn is_mergeable(self) -> bool {
        !matches!(self, MigrateType::HighAtomic | MigrateType::Isolate)
    }
}

/// Fallback order when a type's own free lists are empty (Linux `fallbacks[]`).
#[inline]
pub const fn fallbacks(mt: MigrateType) -> &'static [MigrateType] {
    match mt {
        MigrateType::Unmovable => &[MigrateType::Reclaimable, MigrateType::Movable],
        MigrateType::Movable => &[MigrateType::Reclaimable, MigrateType::Unmovable],
        MigrateType::Reclaimable => &[MigrateType::Unmovable, MigrateType::Movable],
        MigrateType::HighAtomic | MigrateType::Isolate => &[],
    }
}

/// First frame of the page block containing `pfn`.
#[inline]
pub const fn pageblock_start_pfn(pfn: Pfn) -> Pfn {
    Pfn(pfn.0 & !(PAGEBLOCK_NR_PAGES - 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fallback_order_is_linux() {
        use MigrateType::*;
        assert_eq!(fallbacks(Unmovable), &[Reclaimable, Movable]);
        assert_eq!(fallbacks(Movable), &[Reclaimable, Unmovable]);
        assert_eq!(fallbacks(Reclaimable), &[Unmovable, Movable]);
        assert!(fallbacks(Isolate).is_empty());
        for mt in MigrateType::ALL {
            assert_eq!(MigrateType::from_bits(mt as u32), mt);
        }
        assert_eq!(pageblock_start_pfn(Pfn(1000)), Pfn(512));
    }
}
