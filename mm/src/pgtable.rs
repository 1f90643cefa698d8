//! x86_64 4-level page tables, generic over a physical-memory accessor.
//!
//! Linux counterparts: `mm/memory.c` (`__pte_alloc`, `zap_pte_range` /
//! `zap_pmd_range` / `unmap_page_range`, `vmap_range`), `mm/mprotect.c`
//! (`change_protection`), `mm/pgtable-generic.c` and `mm/huge_memory.c`
//! (`pgtable_trans_huge_deposit` / `withdraw`, `__split_huge_pmd_locked`),
//! `arch/x86/include/asm/pgtable_types.h` (the entry bits).
//!
//! # What this module owns
//!
//! * [`Pte`] / [`PteFlags`]: the hardware entry format (present, writable, user,
//!   PWT, PCD, accessed, dirty, PS, global, NX at bit 63, physical address in bits
//!   12..51) plus three software bits: [`PteFlags::SOFT_ANON`] (the entry owns a
//!   mapcount of an anonymous page), [`PteFlags::SOFT_SHMEM`] (it maps a page of a
//!   shared anonymous object, owned by [`crate::shmem`]) and [`PteFlags::PROTNONE`]
//!   (a `PROT_NONE` leaf: hardware-present bit clear, page still mapped).
//! * Resident-set counters per space (Linux `mm->rss_stat`: `MM_ANONPAGES`,
//!   `MM_SHMEMPAGES`, and the `hiwater_rss` high-water mark), kept exact by every
//!   operation that installs or clears a leaf.
//! * [`AddressSpace`]: one PML4. A user space copies the kernel's PML4 entries
//!   256..511 at creation (the kernel half is shared) and refuses kernel-half
//!   addresses; the kernel space refuses user-half addresses and never unlinks a
//!   PML4 entry (others copied it: pre-allocate the top level of every kernel
//!   range, Linux `preallocate_vmalloc_pages`, before creating user spaces).
//! * Map / unmap / protect / translate / split at 4 KiB and 2 MiB. Range operations
//!   walk from the root once per table and then loop over that table's entries.
//! * Migration of anonymous pages ([`AddressSpace::migrate_anon_page`], Linux
//!   `try_to_migrate_one` + `folio_migrate_copy` + `remove_migration_pte`): the
//!   entry at the page's reverse-map address is checked, the contents copied and
//!   the entry pointed at the new frame; compaction calls it through the kernel's
//!   [`MigrateOps`](crate::compaction::MigrateOps).
//!
//! Every change that can leave stale translations records into a
//! [`MmuGather`](crate::tlb::MmuGather); pages are freed only after its flush.
//! Freeing empty page-table pages (Qi Zheng's design, cascading to PMD and PUD
//! tables) lives in [`crate::pt_reclaim`].
//!
//! # Hardware access
//!
//! mm never touches memory itself. The kernel implements [`PtMem`] over its direct
//! map; host tests implement it over a `Vec`. Allocation goes through [`PtAlloc`]
//! (implemented for [`PageAlloc`]) so tests can inject failures; every operation
//! that may allocate a table takes the caller's [`Gfp`].
//!
//! # Locking
//!
//! An `AddressSpace` is mutated through `&mut self`: the kernel keeps it behind the
//! mm lock. Walkers that must keep a table alive across a sleep take a
//! [`PtRef`](crate::pt_reclaim::PtRef) (see `pt_reclaim`).

use alloc::collections::BTreeMap;
use alloc::vec::Vec;
use core::fmt::{self, Write};
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};

use crate::addr::{PAGE_SHIFT, PAGE_SIZE, Pfn};
use crate::compaction::Migration;
use crate::gfp::Gfp;
use crate::page::{MovableOpsId, PageMeta, PageState};
use crate::page_alloc::{AllocError, PageAlloc, Pages};
use crate::pt_reclaim::TableAllocError;
use crate::sync::Platform;
use crate::tlb::MmuGather;

/// Entries per table at every level.
pub const PTRS_PER_TABLE: usize = 512;
/// Bytes mapped by one PMD entry (2 MiB).
pub const PMD_SIZE: u64 = 1 << 21;
/// Bytes mapped by one PUD entry (1 GiB).
pub const PUD_SIZE: u64 = 1 << 30;
/// Order of a PMD-mapped huge page (Linux `HPAGE_PMD_ORDER`).
pub const HPAGE_PMD_ORDER: usize = 9;
/// Base pages in a PMD-mapped huge page (Linux `HPAGE_PMD_NR`).
pub const HPAGE_PMD_NR: u64 = 1 << HPAGE_PMD_ORDER;

/// Size of the 48-bit linear address space (sign bits stripped).
pub(crate) const LINEAR_END: u64 = 1 << 48;
/// First linear address of the kernel half.
pub(crate) const KERNEL_HALF: u64 = 1 << 47;
/// First PML4 index of the kernel half.
pub const KERNEL_PML4_START: usize = 256;

// ---------------------------------------------------------------------------
// Addresses
// ---------------------------------------------------------------------------

/// A canonical 48-bit virtual address (bits 63..47 all equal).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub struct VirtAddr(u64);

impl VirtAddr {
    /// `None` unless `addr` is canonical.
    #[inline]
    pub const fn try_new(addr: u64) -> Option<VirtAddr> {
        let top = addr >> 47;
        if top == 0 || top == (1 << 17) - 1 { Some(VirtAddr(addr)) } else { None }
    }

    /// The address as a number.
    #[inline]
    pub const fn as_u64(self) -> u64 {
        self.0
    }

    /// Whether the address lies in the kernel half.
    #[inline]
    pub const fn is_kernel_half(self) -> bool {
        self.linear() >= KERNEL_HALF
    }

    /// The address without its sign-extension bits: `0 .. 2^48`.
    #[inline]
    pub(crate) const fn linear(self) -> u64 {
        self.0 & (LINEAR_END - 1)
    }

    /// Sign-extends a linear address (`< 2^48`).
    #[inline]
    pub(crate) const fn from_linear(lin: u64) -> VirtAddr {
        let lin = lin & (LINEAR_END - 1);
        if lin >= KERNEL_HALF { VirtAddr(lin | !(LINEAR_END - 1)) } else { VirtAddr(lin) }
    }
}

impl fmt::Display for VirtAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#018x}", self.0)
    }
}

// ---------------------------------------------------------------------------
// Entries
// ---------------------------------------------------------------------------

bitflags::bitflags! {
    /// x86_64 page-table entry bits (Linux `_PAGE_*`).
    #[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
    pub struct PteFlags: u64 {
        /// `_PAGE_PRESENT`.
        const PRESENT = 1 << 0;
        /// `_PAGE_RW`.
        const WRITABLE = 1 << 1;
        /// `_PAGE_USER`.
        const USER = 1 << 2;
        /// `_PAGE_PWT`: write-through.
        const PWT = 1 << 3;
        /// `_PAGE_PCD`: cache disable.
        const PCD = 1 << 4;
        /// `_PAGE_ACCESSED`.
        const ACCESSED = 1 << 5;
        /// `_PAGE_DIRTY`.
        const DIRTY = 1 << 6;
        /// `_PAGE_PSE`: a leaf at PMD (2 MiB) or PUD (1 GiB) level.
        const HUGE = 1 << 7;
        /// `_PAGE_GLOBAL`.
        const GLOBAL = 1 << 8;
        /// Software bit 9: the entry holds a mapcount reference on an anonymous
        /// page (Linux: a "normal" page, as opposed to `pte_special`); unmapping
        /// drops it and frees the page after the flush when it was the last.
        const SOFT_ANON = 1 << 9;
        /// Software bit 10: the leaf maps a page of a shared anonymous object
        /// ([`crate::shmem`]); the object owns the page, unmapping only drops the
        /// entry (Linux: a file-backed `pte`, counted in `MM_SHMEMPAGES`).
        const SOFT_SHMEM = 1 << 10;
        /// Software bit 11: a `PROT_NONE` user leaf (Linux `_PAGE_PROTNONE`). The
        /// hardware present bit is clear so every access faults, but the entry still
        /// maps its page: [`Pte::is_present`] is true and unmapping releases it.
        const PROTNONE = 1 << 11;
        /// `_PAGE_NX`.
        const NX = 1 << 63;
    }
}

impl PteFlags {
    /// The bits [`AddressSpace::protect`] may change.
    pub const PERMISSIONS: PteFlags = PteFlags::WRITABLE
        .union(PteFlags::USER)
        .union(PteFlags::PWT)
        .union(PteFlags::PCD)
        .union(PteFlags::GLOBAL)
        .union(PteFlags::NX);

    /// What [`AddressSpace::protect`] rewrites: the permissions plus the present /
    /// `PROT_NONE` state of the leaf.
    pub(crate) const PROTECT_BITS: PteFlags = PteFlags::PERMISSIONS
        .union(PteFlags::PRESENT)
        .union(PteFlags::PROTNONE);

    /// Software bits that only user leaves may carry.
    pub(crate) const USER_SOFT: PteFlags = PteFlags::SOFT_ANON
        .union(PteFlags::SOFT_SHMEM)
        .union(PteFlags::PROTNONE);
}

/// Physical-address bits 12..51 of an entry (Linux `PTE_PFN_MASK`).
pub const PTE_PFN_MASK: u64 = 0x000f_ffff_ffff_f000;

/// One page-table entry at any level.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Pte(pub u64);

impl Pte {
    /// The empty entry (Linux `pte_none`).
    pub const NONE: Pte = Pte(0);

    /// An entry pointing at `pfn` with `flags`.
    #[inline]
    pub const fn new(pfn: Pfn, flags: PteFlags) -> Pte {
        Pte((pfn.0 << PAGE_SHIFT) & PTE_PFN_MASK | flags.bits())
    }
    /// Whether the entry maps something (Linux `pte_present`): the hardware
    /// present bit, or a [`PteFlags::PROTNONE`] leaf.
    #[inline]
    pub const fn is_present(self) -> bool {
        self.0 & (PteFlags::PRESENT.bits() | PteFlags::PROTNONE.bits()) != 0
    }
    /// Whether the hardware present bit is set (accesses may use the entry).
    #[inline]
    pub const fn is_hw_present(self) -> bool {
        self.0 & PteFlags::PRESENT.bits() != 0
    }
    /// Whether this is a PS leaf (only meaningful above PTE level).
    #[inline]
    pub const fn is_huge(self) -> bool {
        self.0 & PteFlags::HUGE.bits() != 0
    }
    /// The frame the entry points at.
    #[inline]
    pub const fn pfn(self) -> Pfn {
        Pfn((self.0 & PTE_PFN_MASK) >> PAGE_SHIFT)
    }
    /// The flag bits (address bits removed).
    #[inline]
    pub const fn flags(self) -> PteFlags {
        PteFlags::from_bits_retain(self.0 & !PTE_PFN_MASK)
    }
}

impl fmt::Debug for Pte {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Pte({:#x}, {:?})", self.pfn().0, self.flags())
    }
}

/// A paging level (Linux `pgd` / `pud` / `pmd` / `pte`; the p4d is folded).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub enum Level {
    /// A table of 4 KiB leaves.
    Pte = 1,
    /// Entries map 2 MiB.
    Pmd = 2,
    /// Entries map 1 GiB.
    Pud = 3,
    /// The root; entries map 512 GiB.
    Pml4 = 4,
}

impl Level {
    /// log2 of the bytes one entry maps.
    #[inline]
    pub const fn shift(self) -> u32 {
        PAGE_SHIFT + 9 * (self as u32 - 1)
    }
    /// Bytes one entry maps.
    #[inline]
    pub const fn entry_span(self) -> u64 {
        1 << self.shift()
    }
    /// Bytes the whole table maps.
    #[inline]
    pub(crate) const fn table_span(self) -> u64 {
        1 << (self.shift() + 9)
    }
    /// Index of linear address `lin` in a table of this level.
    #[inline]
    pub const fn index(self, lin: u64) -> usize {
        ((lin >> self.shift()) & 511) as usize
    }
    /// The level below, `None` for PTE.
    #[inline]
    pub const fn child(self) -> Option<Level> {
        match self {
            Level::Pml4 => Some(Level::Pud),
            Level::Pud => Some(Level::Pmd),
            Level::Pmd => Some(Level::Pte),
            Level::Pte => None,
        }
    }
    /// The level above, `None` for the root.
    #[inline]
    pub const fn parent(self) -> Option<Level> {
        match self {
            Level::Pte => Some(Level::Pmd),
            Level::Pmd => Some(Level::Pud),
            Level::Pud => Some(Level::Pml4),
            Level::Pml4 => None,
        }
    }
    /// Linux's name for a table of this level.
    #[inline]
    pub const fn name(self) -> &'static str {
        match self {
            Level::Pte => "PTE",
            Level::Pmd => "PMD",
            Level::Pud => "PUD",
            Level::Pml4 => "PML4",
        }
    }
}

/// Size of one mapping.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum PageSize {
    /// A PTE-level 4 KiB page.
    Size4K,
    /// A PMD-level 2 MiB page.
    Size2M,
    /// A PUD-level 1 GiB page (Linux `pud_mkhuge`; the CPU must have
    /// `pdpe1gb`). Only the kernel's direct map uses it: it is never split, so
    /// an unmap or protect that covers one partly fails.
    Size1G,
}

impl PageSize {
    /// Bytes.
    #[inline]
    pub const fn bytes(self) -> u64 {
        match self {
            PageSize::Size4K => PAGE_SIZE,
            PageSize::Size2M => PMD_SIZE,
            PageSize::Size1G => PUD_SIZE,
        }
    }
    /// The level whose entries are leaves of this size.
    #[inline]
    pub const fn level(self) -> Level {
        match self {
            PageSize::Size4K => Level::Pte,
            PageSize::Size2M => Level::Pmd,
            PageSize::Size1G => Level::Pud,
        }
    }
}

// ---------------------------------------------------------------------------
// What the kernel provides
// ---------------------------------------------------------------------------

/// Access to page-table pages in physical memory. The kernel implements it over
/// the direct map (the `unsafe` lives there), host tests over a `Vec`.
///
/// Contract: mm calls these only with `table` a page-table page it allocated
/// through [`PtAlloc`] (or the kernel root it was given) and `index < 512`; the
/// implementation may rely on that. `write_entry` must be a single 64-bit store
/// (the hardware walker may read the entry concurrently).
pub trait PtMem {
    /// Reads entry `index` of table `table`.
    fn read_entry(&self, table: Pfn, index: usize) -> u64;
    /// Writes entry `index` of table `table`.
    fn write_entry(&self, table: Pfn, index: usize, value: u64);
    /// Fills a freshly allocated table with zeroes.
    fn zero_table(&self, table: Pfn);
    /// Whether every entry of `table` is zero (a table unlinked because it was
    /// empty, before it may go to the [`Quicklist`]).
    fn table_is_zero(&self, table: Pfn) -> bool {
        (0..PTRS_PER_TABLE).all(|i| self.read_entry(table, i) == 0)
    }
    /// Writes entry `index` of `table` and returns what it held, as one atomic
    /// exchange (`xchg`) where the hardware may update the entry concurrently
    /// (Linux `ptep_get_and_clear`). The default reads, then writes: enough on one
    /// CPU with the address space's lock held; the kernel should override it with a
    /// real `xchg` once other CPUs run user code.
    fn xchg_entry(&self, table: Pfn, index: usize, value: u64) -> u64 {
        let old = self.read_entry(table, index);
        self.write_entry(table, index, value);
        old
    }
}

/// Page allocation as the page tables and the fault handler need it; implemented
/// for [`PageAlloc`], and by test wrappers that inject failures.
pub trait PtAlloc {
    /// Allocates `2^order` frames.
    fn alloc_pages(&self, gfp: Gfp, order: usize) -> Result<Pages, AllocError>;
    /// Frees a block.
    fn free_pages(&self, pages: Pages);
    /// Frees every block of `pages`, leaving the vector empty with its buffer.
    fn free_pages_bulk(&self, pages: &mut Vec<Pages>) {
        pages.drain(..).for_each(|p| self.free_pages(p));
    }
    /// Metadata of a frame (the live-entry count of page-table pages, anon mapcounts).
    fn page(&self, pfn: Pfn) -> Option<&PageMeta>;
    /// Frames the allocator manages (Linux `totalram_pages()`); vmalloc refuses larger
    /// requests. Unknown: `u64::MAX`.
    fn totalram_pages(&self) -> u64 {
        u64::MAX
    }
}

impl<P: Platform> PtAlloc for PageAlloc<'_, P> {
    fn alloc_pages(&self, gfp: Gfp, order: usize) -> Result<Pages, AllocError> {
        PageAlloc::alloc_pages(self, gfp, order)
    }
    fn free_pages(&self, pages: Pages) {
        PageAlloc::free_pages(self, pages)
    }
    fn free_pages_bulk(&self, pages: &mut Vec<Pages>) {
        PageAlloc::free_pages_bulk(self, crate::page_alloc_bulk::DrainVec(pages))
    }
    fn page(&self, pfn: Pfn) -> Option<&PageMeta> {
        PageAlloc::page(self, pfn)
    }
    fn totalram_pages(&self) -> u64 {
        PageAlloc::managed_pages(self)
    }
}

/// System-wide page-table knobs and counters; the kernel owns one instance.
#[derive(Debug)]
pub struct PgtableCtl {
    /// Free empty page-table pages on unmap / `MADV_DONTNEED` (`pt_reclaim`).
    pt_reclaim: AtomicBool,
    /// Page-table pages of all address spaces, roots included (meminfo `PageTables:`).
    nr_pagetable_pages: AtomicU64,
    /// PMD-mapped anonymous huge pages (meminfo `AnonHugePages:`).
    nr_anon_thps: AtomicU64,
    /// Zeroed page-table pages kept for the next table (meminfo `Quicklists:`).
    pub quicklist: Quicklist,
}

impl Default for PgtableCtl {
    fn default() -> Self {
        Self::new()
    }
}

impl PgtableCtl {
    /// Reclaim on, counters zero.
    pub const fn new() -> PgtableCtl {
        PgtableCtl {
            pt_reclaim: AtomicBool::new(true),
            nr_pagetable_pages: AtomicU64::new(0),
            nr_anon_thps: AtomicU64::new(0),
            quicklist: Quicklist::new(),
        }
    }
    /// Turns freeing of empty page-table pages on or off (teardown always frees).
    pub fn set_pt_reclaim(&self, on: bool) {
        self.pt_reclaim.store(on, Relaxed)
    }
    /// Whether empty page-table pages are freed.
    pub fn pt_reclaim(&self) -> bool {
        self.pt_reclaim.load(Relaxed)
    }
    /// Page-table pages in use system-wide.
    pub fn nr_pagetable_pages(&self) -> u64 {
        self.nr_pagetable_pages.load(Relaxed)
    }
    /// PMD-mapped anonymous huge pages system-wide.
    pub fn nr_anon_thps(&self) -> u64 {
        self.nr_anon_thps.load(Relaxed)
    }
    pub(crate) fn add_anon_thps(&self, delta: i64) {
        self.nr_anon_thps.fetch_add(delta as u64, Relaxed);
    }
    /// The `PageTables:`, `Quicklists:` and `AnonHugePages:` lines of `/proc/meminfo`.
    pub fn meminfo(&self, out: &mut impl Write) -> fmt::Result {
        writeln!(out, "PageTables:     {:>8} kB", self.nr_pagetable_pages() * (PAGE_SIZE >> 10))?;
        writeln!(out, "Quicklists:     {:>8} kB", self.quicklist.len() as u64 * (PAGE_SIZE >> 10))?;
        writeln!(out, "AnonHugePages:  {:>8} kB", self.nr_anon_thps() * (PMD_SIZE >> 10))
    }
}

// ---------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------

/// Errors of [`AddressSpace::map`] and [`AddressSpace::map_range`].
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum MapError {
    /// Address, length or frame not aligned to the page size.
    Unaligned,
    /// Zero length.
    ZeroLength,
    /// Outside this address space's half, or the range overflows.
    OutOfRange,
    /// Flags this operation cannot map (e.g. `SOFT_ANON` in `map_range`, or both
    /// `SOFT_ANON` and `SOFT_SHMEM`).
    InvalidFlags,
    /// Something is already mapped there.
    AlreadyMapped,
    /// A page-table page could not be allocated; nothing was left mapped.
    NoMemory,
}

/// Errors of the page-table range operations (Linux `zap_pte_range` /
/// `change_pte_range` and their callers): [`AddressSpace::unmap`] (and
/// `MADV_DONTNEED`), [`AddressSpace::protect`], [`AddressSpace::mkclean_anon`]
/// and [`AddressSpace::zap_clean_anon`]. `Unaligned`, `ZeroLength` and
/// `OutOfRange` are found before anything changes; `NoMemory` and
/// `PartialGiantPage` stop a walk that has already unmapped, changed or marked
/// the part of the range below the huge page it stopped at.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum PteRangeError {
    /// Address or length not page aligned.
    Unaligned,
    /// Zero length.
    ZeroLength,
    /// Outside this address space's half, or the range overflows.
    OutOfRange,
    /// A partially covered 2 MiB mapping needed a PTE table to split into and none
    /// could be allocated.
    NoMemory,
    /// The range covers a 1 GiB mapping only partly (1 GiB pages are never split).
    PartialGiantPage,
}

/// Errors of [`AddressSpace::split_huge_pmd`].
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum SplitError {
    /// Outside this address space's half.
    OutOfRange,
    /// No PTE table could be allocated.
    NoMemory,
}

/// Why [`AddressSpace::migrate_anon_page`] refused; nothing was changed.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum MigrateAnonError {
    /// Not a user address space.
    NotUser,
    /// The order is neither 0 nor [`HPAGE_PMD_ORDER`].
    Unsupported,
    /// The old page is not an anonymous page of that order: freed, unmapped and
    /// waiting for its TLB flush, or a page of a shared anonymous object (those
    /// belong to [`crate::shmem`] and are never marked movable).
    NotAnon,
    /// Its reverse map names another address space.
    OtherSpace,
    /// Mapped more than once: a split huge page (one mapcount per PTE) is not
    /// migrated.
    Shared,
    /// The entry at the reverse-map address does not map the page as its owner
    /// (unmapped or replaced meanwhile, or at another level: a split huge page).
    NotMapped,
    /// The migration had already been committed.
    AlreadyMigrated,
}

/// Errors of creating an address space.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum NewSpaceError {
    /// The root could not be allocated.
    NoMemory,
}

/// A validated range problem, converted into each operation's own error.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum BadRange {
    Unaligned,
    ZeroLength,
    OutOfRange,
}

macro_rules! from_bad_range {
    ($t:ident) => {
        impl From<BadRange> for $t {
            fn from(b: BadRange) -> $t {
                match b {
                    BadRange::Unaligned => $t::Unaligned,
                    BadRange::ZeroLength => $t::ZeroLength,
                    BadRange::OutOfRange => $t::OutOfRange,
                }
            }
        }
    };
}
from_bad_range!(MapError);
from_bad_range!(PteRangeError);

/// Which half an address space manages.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum SpaceKind {
    /// A process: PML4 entries 0..256; the kernel half is copied in.
    User,
    /// The kernel's own mappings: PML4 entries 256..512.
    Kernel,
}

/// The result of [`AddressSpace::translate`].
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Translation {
    /// Physical address of the translated byte.
    pub phys_addr: u64,
    /// The frame of the 4 KiB page containing it.
    pub pfn: Pfn,
    /// Flags of the leaf entry.
    pub flags: PteFlags,
    /// Level of the leaf (PTE, PMD for 2 MiB, PUD for 1 GiB).
    pub level: Level,
}

/// Walks the four levels from `root` towards `va` and prints each level's
/// entry and flags (the `ptdump ADDR` console command). `live` gives a table's
/// live-entry count where one is kept (`None` for tables mm does not own,
/// such as the boot page tables).
pub fn ptdump_walk<M: PtMem>(
    mem: &M,
    root: Pfn,
    va: VirtAddr,
    live: impl Fn(Pfn) -> Option<u32>,
    out: &mut impl Write,
) -> fmt::Result {
    let lin = va.linear();
    let mut table = root;
    let mut level = Level::Pml4;
    writeln!(out, "ptdump {va} (root {root})")?;
    loop {
        let idx = level.index(lin);
        let e = Pte(mem.read_entry(table, idx));
        write!(out, "  {:<4}[{idx:3}] = {:#018x} {:?}", level.name(), e.0, e.flags())?;
        if !e.is_present() {
            return writeln!(out, " (not present)");
        }
        if level == Level::Pte || (level != Level::Pml4 && e.is_huge()) {
            return writeln!(out, " -> {} (leaf)", e.pfn());
        }
        match live(e.pfn()) {
            Some(n) => writeln!(out, " -> table {} live {}", e.pfn(), n)?,
            None => writeln!(out, " -> table {}", e.pfn())?,
        }
        table = e.pfn();
        match level.child() {
            Some(c) => level = c,
            None => return Ok(()),
        }
    }
}

/// A present leaf found by [`walk_leaves`].
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Leaf {
    pub va: VirtAddr,
    pub pfn: Pfn,
    pub size: PageSize,
    pub flags: PteFlags,
}

/// Visits, in address order, every present leaf reachable from PML4 entries
/// `slots` of the tree at `root`. Read-only and needs no metadata, so it also
/// walks tables mm does not own: the kernel adopts the bootloader's mappings
/// with it (Linux reads the early page tables the same way in `init_64.c`).
pub fn walk_leaves<M: PtMem>(mem: &M, root: Pfn, slots: core::ops::Range<usize>, f: &mut impl FnMut(Leaf)) {
    for slot in slots.start..slots.end.min(PTRS_PER_TABLE) {
        walk_table(mem, root, Level::Pml4, slot as u64 * Level::Pml4.entry_span(), slot, f);
    }
}

fn walk_table<M: PtMem>(mem: &M, table: Pfn, level: Level, lin: u64, idx: usize, f: &mut impl FnMut(Leaf)) {
    let e = Pte(mem.read_entry(table, idx));
    if !e.is_present() {
        return;
    }
    let size = match level {
        Level::Pte => Some(PageSize::Size4K),
        Level::Pmd if e.is_huge() => Some(PageSize::Size2M),
        Level::Pud if e.is_huge() => Some(PageSize::Size1G),
        _ => None,
    };
    match (size, level.child()) {
        (Some(size), _) => f(Leaf { va: VirtAddr::from_linear(lin), pfn: e.pfn(), size, flags: e.flags() }),
        (None, Some(child)) => {
            for i in 0..PTRS_PER_TABLE {
                walk_table(mem, e.pfn(), child, lin + i as u64 * child.entry_span(), i, f);
            }
        }
        (None, None) => {}
    }
}

// ---------------------------------------------------------------------------
// The address space
// ---------------------------------------------------------------------------

/// One page-table tree (one PML4) with its accounting (Linux: `mm->pgd` plus
/// `mm->pgtables_bytes`).
pub struct AddressSpace<'a, A: PtAlloc, M: PtMem> {
    pub(crate) root: Pfn,
    pub(crate) kind: SpaceKind,
    pub(crate) asid: u16,
    pub(crate) alloc: &'a A,
    pub(crate) mem: &'a M,
    pub(crate) ctl: &'a PgtableCtl,
    /// Tables per level: [PTE, PMD, PUD] (Linux `nr_ptes`, `nr_pmds`, `nr_puds`).
    pub(crate) nr_tables: [u64; 3],
    /// PTE tables deposited for PMD-mapped anonymous huge pages so a split never
    /// fails (Linux `pgtable_trans_huge_deposit`), keyed by linear address.
    pub(crate) deposited: BTreeMap<u64, Pfn>,
    /// Resident pages (Linux `mm->rss_stat`): [`RssKind::Anon`] counts anonymous
    /// pages mapped (a PMD-mapped huge page as 512), [`RssKind::Shmem`] pages of
    /// shared anonymous objects mapped here.
    pub(crate) rss: [u64; 2],
    /// Highest `rss` sum seen (Linux `hiwater_rss`, kept eagerly).
    pub(crate) hiwater_rss: u64,
    /// Movable-ops id given to the anonymous pages faulted in here (Linux: anon
    /// folios are movable through the rmap), `None`: they are not movable.
    pub(crate) anon_movable: Option<MovableOpsId>,
    pub(crate) destroyed: bool,
}

/// A resident-set counter (Linux `MM_ANONPAGES`, `MM_SHMEMPAGES`).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum RssKind {
    /// Anonymous private pages (`RssAnon:`).
    Anon = 0,
    /// Pages of shared anonymous objects (`RssShmem:`).
    Shmem = 1,
}

impl<'a, A: PtAlloc, M: PtMem> AddressSpace<'a, A, M> {
    /// A user address space (Linux `pgd_alloc`): a new PML4 whose entries 256..511
    /// are copied from `kernel_root` (if given). `asid` goes into the reverse map
    /// of anonymous pages.
    pub fn new_user(
        alloc: &'a A,
        mem: &'a M,
        ctl: &'a PgtableCtl,
        kernel_root: Option<Pfn>,
        asid: u16,
        gfp: Gfp,
    ) -> Result<Self, NewSpaceError> {
        let mut this = Self::empty(alloc, mem, ctl, SpaceKind::User, asid);
        this.root = this.alloc_table(gfp, Level::Pml4).map_err(|_| NewSpaceError::NoMemory)?;
        if let Some(k) = kernel_root {
            for i in KERNEL_PML4_START..PTRS_PER_TABLE {
                mem.write_entry(this.root, i, mem.read_entry(k, i));
            }
        }
        Ok(this)
    }

    /// The kernel's address space: a new, empty PML4 for the kernel half.
    pub fn new_kernel(alloc: &'a A, mem: &'a M, ctl: &'a PgtableCtl, gfp: Gfp) -> Result<Self, NewSpaceError> {
        let mut this = Self::empty(alloc, mem, ctl, SpaceKind::Kernel, 0);
        this.root = this.alloc_table(gfp, Level::Pml4).map_err(|_| NewSpaceError::NoMemory)?;
        Ok(this)
    }

    fn empty(alloc: &'a A, mem: &'a M, ctl: &'a PgtableCtl, kind: SpaceKind, asid: u16) -> Self {
        AddressSpace {
            root: Pfn(0),
            kind,
            asid,
            alloc,
            mem,
            ctl,
            nr_tables: [0; 3],
            deposited: BTreeMap::new(),
            rss: [0; 2],
            hiwater_rss: 0,
            anon_movable: None,
            destroyed: false,
        }
    }

    /// The PML4 frame (what CR3 gets).
    pub fn root(&self) -> Pfn {
        self.root
    }

    /// User or kernel.
    pub fn kind(&self) -> SpaceKind {
        self.kind
    }

    /// The address-space id recorded in the reverse map of its anonymous pages.
    pub fn asid(&self) -> u16 {
        self.asid
    }

    /// Anonymous pages faulted in from now on are marked movable with `ops`
    /// (the owner's [`MigrateOps`](crate::compaction::MigrateOps), which must
    /// find this space by [`asid`](Self::asid) and call
    /// [`migrate_anon_page`](Self::migrate_anon_page)); `None` stops that.
    pub fn set_anon_movable_ops(&mut self, ops: Option<MovableOpsId>) {
        self.anon_movable = ops;
    }

    /// The movable-ops id new anonymous pages get.
    pub fn anon_movable_ops(&self) -> Option<MovableOpsId> {
        self.anon_movable
    }

    /// Tables of `level` in this space (1 for the root).
    pub fn nr_tables(&self, level: Level) -> u64 {
        match level {
            Level::Pml4 => 1,
            l => self.nr_tables[l as usize - 1],
        }
    }

    /// Bytes of page tables below the root (Linux `mm_pgtables_bytes`).
    pub fn pgtables_bytes(&self) -> u64 {
        self.nr_tables.iter().sum::<u64>() * PAGE_SIZE
    }

    /// Resident pages of one kind (Linux `get_mm_counter`).
    pub fn rss_pages(&self, kind: RssKind) -> u64 {
        self.rss[kind as usize]
    }

    /// All resident pages (Linux `get_mm_rss`, `VmRSS:`).
    pub fn total_rss_pages(&self) -> u64 {
        self.rss[0].saturating_add(self.rss[1])
    }

    /// The most resident pages this space ever had (`VmHWM:`).
    pub fn hiwater_rss_pages(&self) -> u64 {
        self.hiwater_rss.max(self.total_rss_pages())
    }

    /// Adjusts a resident-set counter by `delta` pages (Linux `add_mm_counter`)
    /// and the high-water mark with it.
    pub(crate) fn add_rss(&mut self, kind: RssKind, delta: i64) {
        let c = &mut self.rss[kind as usize];
        *c = c.checked_add_signed(delta).unwrap_or_else(|| {
            debug_assert!(false, "RSS counter {kind:?} by {delta} underflows");
            0
        });
        self.hiwater_rss = self.hiwater_rss.max(self.total_rss_pages());
    }

    /// The `VmPTE:` line of `/proc/PID/status`.
    pub fn write_vm_pte(&self, out: &mut impl Write) -> fmt::Result {
        writeln!(out, "VmPTE:\t{:>8} kB", self.pgtables_bytes() >> 10)
    }

    /// `ptstat`: tables per level of this space and the system total.
    pub fn write_ptstat(&self, out: &mut impl Write) -> fmt::Result {
        writeln!(
            out,
            "pml4 1 pud {} pmd {} pte {} (deposited {}) = {} kB; system {} pages",
            self.nr_tables[2],
            self.nr_tables[1],
            self.nr_tables[0],
            self.deposited.len(),
            self.pgtables_bytes() >> 10,
            self.ctl.nr_pagetable_pages()
        )
    }

    // ----- helpers --------------------------------------------------------------

    pub(crate) fn entry(&self, table: Pfn, index: usize) -> Pte {
        Pte(self.mem.read_entry(table, index))
    }

    pub(crate) fn set_entry(&self, table: Pfn, index: usize, pte: Pte) {
        self.mem.write_entry(table, index, pte.0)
    }

    /// Metadata of a page-table page. Tables always come from `alloc`, so a missing
    /// entry is a bug in this module, not something input can cause.
    pub(crate) fn table_meta(&self, table: Pfn) -> &'a PageMeta {
        self.alloc.page(table).expect("page-table page outside the allocator")
    }

    /// Adjusts the live-entry count of `table`; returns the new count.
    pub(crate) fn count_add(&self, table: Pfn, delta: i32) -> u32 {
        if delta == 0 {
            return self.live_entries(table);
        }
        match self.table_meta(table).pt_add_entries(delta) {
            Ok(n) => n,
            Err(e) => {
                debug_assert!(false, "page-table count of {table} by {delta}: {e:?}");
                0
            }
        }
    }

    /// Live-entry count (plus walker references) of a page-table page.
    pub fn live_entries(&self, table: Pfn) -> u32 {
        match self.alloc.page(table).map(|m| m.state()) {
            Some(crate::page::PageState::PageTable { live_entries }) => live_entries,
            _ => 0,
        }
    }

    /// Flags of entries that point at lower tables: the leaf decides permissions.
    pub(crate) fn table_flags(&self) -> PteFlags {
        match self.kind {
            SpaceKind::User => PteFlags::PRESENT | PteFlags::WRITABLE | PteFlags::USER,
            SpaceKind::Kernel => PteFlags::PRESENT | PteFlags::WRITABLE,
        }
    }

    /// Leaf flags for this space: present, `USER` only (and always) in user spaces,
    /// `GLOBAL` only in the kernel space. A user leaf asked for with
    /// [`PteFlags::PROTNONE`] gets the hardware present bit cleared instead.
    pub(crate) fn leaf_flags(&self, flags: PteFlags, size: PageSize) -> PteFlags {
        let mut f = flags | PteFlags::PRESENT;
        f.set(PteFlags::HUGE, size != PageSize::Size4K);
        match self.kind {
            SpaceKind::User if f.contains(PteFlags::PROTNONE) => (f | PteFlags::USER) - PteFlags::GLOBAL - PteFlags::PRESENT,
            SpaceKind::User => (f | PteFlags::USER) - PteFlags::GLOBAL,
            SpaceKind::Kernel => f - PteFlags::USER - PteFlags::USER_SOFT,
        }
    }

    /// The resident-set counter a leaf with `flags` at `level` holds, and how many
    /// pages it counts for.
    pub(crate) fn leaf_rss(&self, flags: PteFlags, level: Level) -> Option<(RssKind, i64)> {
        if self.kind != SpaceKind::User {
            return None;
        }
        let pages = if level == Level::Pte { 1 } else { (level.entry_span() >> PAGE_SHIFT) as i64 };
        if flags.contains(PteFlags::SOFT_ANON) {
            Some((RssKind::Anon, pages))
        } else if flags.contains(PteFlags::SOFT_SHMEM) {
            Some((RssKind::Shmem, pages))
        } else {
            None
        }
    }

    /// Allocates, zeroes and accounts a page-table page (Linux `pagetable_alloc` +
    /// `pagetable_pte_ctor`). The caller's GFP flags are honoured except
    /// `__GFP_MOVABLE`: tables are never migrated.
    pub(crate) fn alloc_table(&mut self, gfp: Gfp, level: Level) -> Result<Pfn, AllocError> {
        let (pages, zeroed) = match self.ctl.quicklist.pop() {
            Some(p) => (p, true),
            None => (self.alloc.alloc_pages(gfp - Gfp::MOVABLE - Gfp::HIGHMEM, 0)?, false),
        };
        let pfn = pages.pfn();
        if self.alloc.page(pfn).map(|m| m.set_page_table()) != Some(Ok(())) {
            // Not a fresh allocation from a managed frame: refuse to use it.
            self.alloc.free_pages(pages);
            return Err(AllocError::NoMemory);
        }
        let _ = pages.leak(); // owned by the entry that will point at it
        if !zeroed {
            self.mem.zero_table(pfn);
        }
        self.account_table(level, 1);
        Ok(pfn)
    }

    fn account_table(&mut self, level: Level, delta: i64) {
        if level != Level::Pml4 {
            let n = &mut self.nr_tables[level as usize - 1];
            *n = n.wrapping_add(delta as u64);
        }
        self.ctl.nr_pagetable_pages.fetch_add(delta as u64, Relaxed);
    }

    /// Turns an unlinked, empty table back into an owned `Pages` and un-accounts it
    /// (Linux `pagetable_dtor`).
    fn table_pages(&mut self, table: Pfn, level: Level) -> Pages {
        let meta = self.table_meta(table);
        if meta.clear_owner_state().is_err() {
            debug_assert!(false, "freeing page-table page {table} with live entries");
        }
        self.account_table(level, -1);
        // SAFETY: `table` was leaked by `alloc_table` and its only handle was the
        // (now cleared) entry that pointed at it, so no other `Pages` exists.
        unsafe { Pages::from_raw(table, 0) }
    }

    /// Frees a table that no entry ever pointed at (no TLB can know it).
    pub(crate) fn free_table_now(&mut self, table: Pfn, level: Level) {
        let p = self.table_pages(table, level);
        self.alloc.free_pages(p);
    }

    /// Queues an unlinked table that mapped linear address `lin` for freeing after
    /// the flush (Linux `pte_free_tlb`).
    pub(crate) fn release_table(&mut self, table: Pfn, level: Level, lin: u64, tlb: &mut MmuGather) {
        let zeroed = self.mem.table_is_zero(table);
        let p = self.table_pages(table, level);
        tlb.remove_table(p, lin, zeroed);
    }

    /// The linear bounds of this space's half.
    pub(crate) fn half(&self) -> (u64, u64) {
        match self.kind {
            SpaceKind::User => (0, KERNEL_HALF),
            SpaceKind::Kernel => (KERNEL_HALF, LINEAR_END),
        }
    }

    /// Validates `[start, start + len)`: aligned to `align`, non-empty, inside
    /// this space's half. Returns linear bounds.
    pub(crate) fn check_range(&self, start: VirtAddr, len: u64, align: u64) -> Result<(u64, u64), BadRange> {
        let lin = start.linear();
        let (lo, hi) = self.half();
        if lin < lo || lin >= hi {
            return Err(BadRange::OutOfRange);
        }
        if lin % align != 0 || len % align != 0 {
            return Err(BadRange::Unaligned);
        }
        if len == 0 {
            return Err(BadRange::ZeroLength);
        }
        match lin.checked_add(len) {
            Some(end) if end <= hi => Ok((lin, end)),
            _ => Err(BadRange::OutOfRange),
        }
    }

    // ----- translate / dump -------------------------------------------------------

    /// Walks to the leaf mapping `va` (any half), Linux `follow_page`-like.
    pub fn translate(&self, va: VirtAddr) -> Option<Translation> {
        let lin = va.linear();
        let mut table = self.root;
        let mut level = Level::Pml4;
        loop {
            let e = self.entry(table, level.index(lin));
            if !e.is_present() {
                return None;
            }
            let leaf = level == Level::Pte || (level != Level::Pml4 && e.is_huge());
            if leaf {
                let offset = lin & (level.entry_span() - 1);
                let phys_addr = e.pfn().phys_addr() + offset;
                return Some(Translation {
                    phys_addr,
                    pfn: Pfn::containing(phys_addr),
                    flags: e.flags(),
                    level,
                });
            }
            table = e.pfn();
            level = level.child()?;
        }
    }

    /// `ptdump ADDR`: each level's entry and flags on the way to `va`.
    pub fn ptdump(&self, va: VirtAddr, out: &mut impl Write) -> fmt::Result {
        ptdump_walk(self.mem, self.root, va, |t| Some(self.live_entries(t)), out)
    }

    // ----- map ---------------------------------------------------------------------

    /// Maps one page of `size` at `va` to `pfn` (Linux `set_pte_at` after
    /// `__pte_alloc`). Allocates missing tables with `gfp`; atomic: on error nothing
    /// changed. Installing into an empty slot needs no TLB flush.
    ///
    /// With [`PteFlags::SOFT_ANON`] the entry takes over one mapcount reference of an
    /// anonymous page (the caller did `set_anon`); a 2 MiB anonymous mapping also
    /// deposits a PTE table so a later split cannot fail.
    pub fn map(&mut self, va: VirtAddr, pfn: Pfn, size: PageSize, flags: PteFlags, gfp: Gfp) -> Result<(), MapError> {
        let (lin, _) = self.check_range(va, size.bytes(), size.bytes())?;
        if pfn.0 % (size.bytes() >> PAGE_SHIFT) != 0 || pfn.0 > PTE_PFN_MASK >> PAGE_SHIFT {
            return Err(MapError::Unaligned);
        }
        if flags.contains(PteFlags::SOFT_ANON | PteFlags::SOFT_SHMEM) {
            return Err(MapError::InvalidFlags);
        }
        let flags = self.leaf_flags(flags, size);
        let deposit = if size == PageSize::Size2M && flags.contains(PteFlags::SOFT_ANON) {
            Some(self.alloc_table(gfp, Level::Pte).map_err(|_| MapError::NoMemory)?)
        } else {
            None
        };
        let r = match self.table_alloc(lin, size.level(), gfp) {
            Ok(r) => r,
            Err(e) => {
                if let Some(d) = deposit {
                    self.free_table_now(d, Level::Pte);
                }
                return Err(match e {
                    TableAllocError::Huge(_) => MapError::AlreadyMapped,
                    TableAllocError::NoMemory(_) => MapError::NoMemory,
                });
            }
        };
        let idx = size.level().index(lin);
        let result = if self.entry(r.table, idx).is_present() {
            if let Some(d) = deposit {
                self.free_table_now(d, Level::Pte);
            }
            Err(MapError::AlreadyMapped)
        } else {
            self.set_entry(r.table, idx, Pte::new(pfn, flags));
            self.count_add(r.table, 1);
            if let Some((kind, pages)) = self.leaf_rss(flags, size.level()) {
                self.add_rss(kind, pages);
            }
            if let Some(d) = deposit {
                self.deposited.insert(lin, d);
                self.ctl.add_anon_thps(1);
            }
            Ok(())
        };
        // The table holds at least one entry (ours or the one in the way), so
        // dropping the walker reference cannot free it.
        self.pt_put_nonempty(r);
        result
    }

    /// Maps `[va, va + len)` to the frames from `first_pfn` with pages of `size`
    /// (Linux `vmap_range`, used for the direct map and vmalloc). One walk from the
    /// root per table, then a loop over its entries. On error everything this call
    /// mapped is unmapped again (into `tlb`) and the error returned.
    pub fn map_range(
        &mut self,
        va: VirtAddr,
        first_pfn: Pfn,
        len: u64,
        size: PageSize,
        flags: PteFlags,
        gfp: Gfp,
        tlb: &mut MmuGather,
    ) -> Result<(), MapError> {
        let (start, end) = self.check_range(va, len, size.bytes())?;
        let nr_frames = len >> PAGE_SHIFT;
        if first_pfn.0 % (size.bytes() >> PAGE_SHIFT) != 0 {
            return Err(MapError::Unaligned);
        }
        match first_pfn.0.checked_add(nr_frames) {
            Some(last) if last <= (PTE_PFN_MASK >> PAGE_SHIFT) + 1 => {}
            _ => return Err(MapError::OutOfRange),
        }
        if flags.intersects(PteFlags::USER_SOFT) {
            return Err(MapError::InvalidFlags);
        }
        let flags = self.leaf_flags(flags, size);
        let level = size.level();
        let mut lin = start;
        while lin < end {
            let chunk_end = (lin | (level.table_span() - 1)).saturating_add(1).min(end);
            let r = match self.table_alloc(lin, level, gfp) {
                Ok(r) => r,
                Err(e) => {
                    self.rollback_map(start, lin, tlb);
                    return Err(match e {
                        TableAllocError::Huge(_) => MapError::AlreadyMapped,
                        TableAllocError::NoMemory(_) => MapError::NoMemory,
                    });
                }
            };
            let mut installed = 0;
            let mut conflict = None;
            let mut a = lin;
            while a < chunk_end {
                let idx = level.index(a);
                if self.entry(r.table, idx).is_present() {
                    conflict = Some(a);
                    break;
                }
                let pfn = Pfn(first_pfn.0 + ((a - start) >> PAGE_SHIFT));
                self.set_entry(r.table, idx, Pte::new(pfn, flags));
                installed += 1;
                a += size.bytes();
            }
            self.count_add(r.table, installed);
            self.pt_put(r, tlb);
            if let Some(at) = conflict {
                self.rollback_map(start, at, tlb);
                return Err(MapError::AlreadyMapped);
            }
            lin = chunk_end;
        }
        Ok(())
    }

    /// Undoes the part `[start, end)` of a failed `map_range`, freeing the tables it
    /// created whatever the reclaim knob says.
    fn rollback_map(&mut self, start: u64, end: u64, tlb: &mut MmuGather) {
        if start < end {
            let mode = ZapMode { reclaim: true, teardown: false };
            // Splits cannot happen: the range holds only what map_range installed.
            let _ = self.zap_table(self.root, Level::Pml4, start, end, Gfp::empty(), tlb, mode);
        }
    }

    // ----- unmap -----------------------------------------------------------------------

    /// Unmaps `[va, va + len)` (Linux `unmap_page_range` / `zap_page_range_single`,
    /// also used for `MADV_DONTNEED`). Holes are skipped. A 2 MiB mapping covered
    /// only partly is split into a PTE table first (the deposited one for anonymous
    /// huge pages, else one allocated with `gfp`). Anonymous pages whose last mapping
    /// goes and page-table pages left empty (when `pt_reclaim` is on, cascading up to
    /// the PUD tables) are queued in `tlb` and freed after its flush.
    pub fn unmap(&mut self, va: VirtAddr, len: u64, gfp: Gfp, tlb: &mut MmuGather) -> Result<(), PteRangeError> {
        let (start, end) = self.check_range(va, len, PAGE_SIZE)?;
        let mode = ZapMode { reclaim: self.ctl.pt_reclaim(), teardown: false };
        self.zap_table(self.root, Level::Pml4, start, end, gfp, tlb, mode)
    }

    /// `MADV_DONTNEED` on anonymous memory: the same as [`unmap`](Self::unmap).
    pub fn madvise_dontneed(&mut self, va: VirtAddr, len: u64, gfp: Gfp, tlb: &mut MmuGather) -> Result<(), PteRangeError> {
        self.unmap(va, len, gfp, tlb)
    }

    /// Clears the entries of `table` (a table of `level`) that overlap the linear
    /// range `[s, e)`, recursing into lower tables; one count update per table.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn zap_table(
        &mut self,
        table: Pfn,
        level: Level,
        s: u64,
        e: u64,
        gfp: Gfp,
        tlb: &mut MmuGather,
        mode: ZapMode,
    ) -> Result<(), PteRangeError> {
        let mut cleared = 0i32;
        let mut result = Ok(());
        let mut walk = RangeWalk::new(self, table, level, s, e);
        while let Some(slot) = walk.next(self) {
            let (idx, pte) = (slot.idx, slot.pte);
            if slot.leaf {
                if slot.covered() {
                    self.set_entry(table, idx, Pte::NONE);
                    cleared += 1;
                    tlb.add_range(slot.start, slot.end);
                    self.release_leaf(pte, level, slot.start, tlb);
                    continue;
                }
                if level != Level::Pmd {
                    result = Err(PteRangeError::PartialGiantPage);
                    break;
                }
                if self.split_pmd_entry(table, idx, slot.start, gfp, tlb).is_err() {
                    result = Err(PteRangeError::NoMemory);
                    break;
                }
            }
            let Some(child_level) = level.child() else { continue };
            let child = self.entry(table, idx).pfn();
            let r = self.zap_table(child, child_level, slot.lo, slot.hi, gfp, tlb, mode);
            if self.may_unlink(level, mode) && self.live_entries(child) == 0 {
                self.set_entry(table, idx, Pte::NONE);
                cleared += 1;
                self.release_table(child, child_level, slot.start, tlb);
            }
            if r.is_err() {
                result = r;
                break;
            }
        }
        self.count_add(table, -cleared);
        result
    }

    /// Whether an empty table below a `level` entry may be unlinked: only with
    /// reclaim (or teardown), and never from the kernel's PML4 outside teardown.
    pub(crate) fn may_unlink(&self, level: Level, mode: ZapMode) -> bool {
        if mode.teardown {
            return true;
        }
        mode.reclaim && !(self.kind == SpaceKind::Kernel && level == Level::Pml4)
    }

    /// Drops what a cleared leaf held: its resident-set count, the anonymous page's
    /// mapcount (freeing the page after the flush when it was the last) and a
    /// deposited table (Linux `zap_huge_pmd` / `zap_present_ptes` +
    /// `folio_remove_rmap_*` + `add_mm_rss_vec`). A `SOFT_SHMEM` page stays with its
    /// object.
    pub(crate) fn release_leaf(&mut self, pte: Pte, level: Level, lin: u64, tlb: &mut MmuGather) {
        if level == Level::Pmd {
            if let Some(d) = self.deposited.remove(&lin) {
                self.release_table(d, Level::Pte, lin, tlb);
            }
        }
        if let Some((kind, pages)) = self.leaf_rss(pte.flags(), level) {
            self.add_rss(kind, -pages);
        }
        if self.kind != SpaceKind::User || !pte.flags().contains(PteFlags::SOFT_ANON) {
            return;
        }
        if level == Level::Pmd {
            self.ctl.add_anon_thps(-1);
        }
        let Some((head, order)) = self.anon_folio(pte.pfn()) else {
            debug_assert!(false, "SOFT_ANON entry without an anonymous page at {}", pte.pfn());
            return;
        };
        let meta = self.table_meta(head);
        if meta.anon_add_mapcount(-1) == Ok(0) && meta.clear_owner_state().is_ok() {
            // SAFETY: the mapcount reached 0, so this entry held the last reference to
            // the block; the fault handler leaked its only handle into the entries.
            tlb.remove_page(unsafe { Pages::from_raw(head, order) });
        }
    }

    /// The head and order of the anonymous block containing `pfn`: the page itself,
    /// or the head of an order-9 huge page (split mappings point at sub-pages).
    pub(crate) fn anon_folio(&self, pfn: Pfn) -> Option<(Pfn, usize)> {
        use crate::page::Kind;
        let m = self.alloc.page(pfn)?;
        match m.kind() {
            Kind::Anon => Some((pfn, m.order())),
            Kind::Tail => {
                let head = Pfn(pfn.0 & !(HPAGE_PMD_NR - 1));
                let h = self.alloc.page(head)?;
                (h.kind() == Kind::Anon && h.order() == HPAGE_PMD_ORDER).then_some((head, HPAGE_PMD_ORDER))
            }
            _ => None,
        }
    }

    // ----- split ------------------------------------------------------------------------

    /// Splits the 2 MiB mapping containing `va` into a PTE table of 512 entries with
    /// the same frames and flags (Linux `split_huge_pmd`). `Ok(false)` if there is no
    /// huge mapping there.
    pub fn split_huge_pmd(&mut self, va: VirtAddr, gfp: Gfp, tlb: &mut MmuGather) -> Result<bool, SplitError> {
        let lin = va.linear();
        let (lo, hi) = self.half();
        if lin < lo || lin >= hi {
            return Err(SplitError::OutOfRange);
        }
        let Some((pmd_table, idx)) = self.find_entry(lin, Level::Pmd) else { return Ok(false) };
        if !self.entry(pmd_table, idx).is_huge() {
            return Ok(false);
        }
        let haddr = lin & !(PMD_SIZE - 1);
        self.split_pmd_entry(pmd_table, idx, haddr, gfp, tlb).map_err(|_| SplitError::NoMemory)?;
        Ok(true)
    }

    /// The table of `level` containing `lin` and the index, if that table exists
    /// (no huge leaf above it).
    pub(crate) fn find_entry(&self, lin: u64, level: Level) -> Option<(Pfn, usize)> {
        let mut table = self.root;
        let mut l = Level::Pml4;
        while l != level {
            let e = self.entry(table, l.index(lin));
            if !e.is_present() || (l != Level::Pml4 && e.is_huge()) {
                return None;
            }
            table = e.pfn();
            l = l.child()?;
        }
        Some((table, level.index(lin)))
    }

    /// `__split_huge_pmd_locked`: the huge entry at `pmd_table[idx]` (mapping linear
    /// `haddr`) becomes a PTE table. The PMD count is unchanged (one entry replaces
    /// another); the anonymous page's mapcount goes from 1 to 512 (one per PTE).
    fn split_pmd_entry(&mut self, pmd_table: Pfn, idx: usize, haddr: u64, gfp: Gfp, tlb: &mut MmuGather) -> Result<(), AllocError> {
        let huge = self.entry(pmd_table, idx);
        let pt = match self.deposited.remove(&haddr) {
            Some(d) => d,
            None => self.alloc_table(gfp, Level::Pte)?,
        };
        let flags = huge.flags() - PteFlags::HUGE;
        for i in 0..PTRS_PER_TABLE {
            self.set_entry(pt, i, Pte::new(Pfn(huge.pfn().0 + i as u64), flags));
        }
        self.count_add(pt, PTRS_PER_TABLE as i32);
        if self.kind == SpaceKind::User && flags.contains(PteFlags::SOFT_ANON) {
            self.ctl.add_anon_thps(-1);
            if let Some((head, _)) = self.anon_folio(huge.pfn()) {
                let _ = self.table_meta(head).anon_add_mapcount(PTRS_PER_TABLE as i32 - 1);
            }
        }
        self.set_entry(pmd_table, idx, Pte::new(pt, self.table_flags()));
        tlb.add_range(haddr, haddr + PMD_SIZE);
        Ok(())
    }

    // ----- protect ----------------------------------------------------------------------

    /// Sets the permission bits ([`PteFlags::PERMISSIONS`]) of every mapping in
    /// `[va, va + len)` to those in `flags` (Linux `change_protection`). Holes are
    /// skipped; partly covered 2 MiB mappings are split (tables from `gfp`). In a
    /// user space, `flags` with [`PteFlags::PROTNONE`] turn the leaves into
    /// `PROT_NONE` entries (hardware present bit clear) and flags without it make
    /// them present again.
    pub fn protect(&mut self, va: VirtAddr, len: u64, flags: PteFlags, gfp: Gfp, tlb: &mut MmuGather) -> Result<(), PteRangeError> {
        let (start, end) = self.check_range(va, len, PAGE_SIZE)?;
        let perms = self.leaf_flags(flags, PageSize::Size4K) & PteFlags::PROTECT_BITS;
        self.change_table(self.root, Level::Pml4, start, end, perms, gfp, tlb)
    }

    /// Rewrites entry `index` of `table` to `f(old)` with one exchange, so accessed
    /// and dirty bits the CPU sets between the read and the write are not lost
    /// (Linux `ptep_modify_prot_start` / `_commit`). Returns the entry written.
    fn update_entry(&self, table: Pfn, index: usize, f: impl Fn(Pte) -> Pte) -> Pte {
        let old = self.entry(table, index);
        let new = f(old);
        let seen = Pte(self.mem.xchg_entry(table, index, new.0));
        if seen == old {
            return new;
        }
        // The CPU set A/D in between: recompute from what it left.
        let again = f(seen);
        self.set_entry(table, index, again);
        again
    }

    #[allow(clippy::too_many_arguments)]
    fn change_table(
        &mut self,
        table: Pfn,
        level: Level,
        s: u64,
        e: u64,
        perms: PteFlags,
        gfp: Gfp,
        tlb: &mut MmuGather,
    ) -> Result<(), PteRangeError> {
        let mut walk = RangeWalk::new(self, table, level, s, e);
        while let Some(slot) = walk.next(self) {
            let (idx, pte) = (slot.idx, slot.pte);
            if slot.leaf {
                if slot.covered() {
                    let change = |p: Pte| Pte::new(p.pfn(), (p.flags() - PteFlags::PROTECT_BITS) | perms);
                    if change(pte) != pte {
                        self.update_entry(table, idx, change);
                        tlb.add_range(slot.start, slot.end);
                    }
                    continue;
                }
                if level != Level::Pmd {
                    return Err(PteRangeError::PartialGiantPage);
                }
                if self.split_pmd_entry(table, idx, slot.start, gfp, tlb).is_err() {
                    return Err(PteRangeError::NoMemory);
                }
            }
            let Some(child_level) = level.child() else { continue };
            let child = self.entry(table, idx).pfn();
            self.change_table(child, child_level, slot.lo, slot.hi, perms, gfp, tlb)?;
        }
        Ok(())
    }

    // ----- MADV_FREE ---------------------------------------------------------------------

    /// `MADV_FREE` on anonymous memory (Linux `madvise_free_pte_range` /
    /// `madvise_free_huge_pmd`): clears the dirty and accessed bits of every
    /// anonymous leaf in `[va, va + len)`, so that [`zap_clean_anon`](Self::zap_clean_anon)
    /// may drop the page later unless the CPU dirties it again. A 2 MiB page covered
    /// only partly is split first (into its deposited table). The TLB entries are
    /// flushed through `tlb`: a cached dirty translation would let a later write
    /// skip setting the dirty bit. Returns the number of base pages marked.
    pub fn mkclean_anon(&mut self, va: VirtAddr, len: u64, gfp: Gfp, tlb: &mut MmuGather) -> Result<u64, PteRangeError> {
        let (start, end) = self.check_range(va, len, PAGE_SIZE)?;
        let mut marked = 0;
        self.clean_table(self.root, Level::Pml4, start, end, gfp, tlb, &mut marked)?;
        Ok(marked)
    }

    #[allow(clippy::too_many_arguments)]
    fn clean_table(
        &mut self,
        table: Pfn,
        level: Level,
        s: u64,
        e: u64,
        gfp: Gfp,
        tlb: &mut MmuGather,
        marked: &mut u64,
    ) -> Result<(), PteRangeError> {
        let mut walk = RangeWalk::new(self, table, level, s, e);
        while let Some(slot) = walk.next(self) {
            let (idx, pte) = (slot.idx, slot.pte);
            if slot.leaf {
                if !pte.flags().contains(PteFlags::SOFT_ANON) {
                    continue;
                }
                if slot.covered() {
                    self.update_entry(table, idx, |p| Pte(p.0 & !(PteFlags::DIRTY | PteFlags::ACCESSED).bits()));
                    tlb.add_range(slot.start, slot.end);
                    *marked += level.entry_span() >> PAGE_SHIFT;
                    continue;
                }
                if level != Level::Pmd || self.split_pmd_entry(table, idx, slot.start, gfp, tlb).is_err() {
                    return Err(PteRangeError::NoMemory);
                }
            }
            let Some(child_level) = level.child() else { continue };
            let child = self.entry(table, idx).pfn();
            self.clean_table(child, child_level, slot.lo, slot.hi, gfp, tlb, marked)?;
        }
        Ok(())
    }

    /// Reclaim of lazily freed memory (Linux `try_to_unmap_one` on a lazyfree
    /// folio): unmaps every anonymous leaf lying wholly inside `[va, va + len)`
    /// whose dirty bit is clear. Each entry is exchanged with an empty one and put
    /// back if the CPU dirtied it meanwhile, so a page written after `MADV_FREE`
    /// keeps its data. Partly covered 2 MiB leaves are left alone. Pages whose
    /// last mapping goes and tables left empty (with `pt_reclaim` on) are freed
    /// after `tlb`'s flush. Returns the number of base pages unmapped.
    pub fn zap_clean_anon(&mut self, va: VirtAddr, len: u64, tlb: &mut MmuGather) -> Result<u64, PteRangeError> {
        let (start, end) = self.check_range(va, len, PAGE_SIZE)?;
        let mut zapped = 0;
        self.zap_clean_table(self.root, Level::Pml4, start, end, tlb, &mut zapped);
        Ok(zapped)
    }

    fn zap_clean_table(&mut self, table: Pfn, level: Level, s: u64, e: u64, tlb: &mut MmuGather, zapped: &mut u64) {
        let mode = ZapMode { reclaim: self.ctl.pt_reclaim(), teardown: false };
        let mut cleared = 0i32;
        let mut walk = RangeWalk::new(self, table, level, s, e);
        while let Some(slot) = walk.next(self) {
            let (idx, pte) = (slot.idx, slot.pte);
            if slot.leaf {
                let clean_anon = |p: Pte| p.flags().contains(PteFlags::SOFT_ANON) && !p.flags().contains(PteFlags::DIRTY);
                if !slot.covered() || !clean_anon(pte) {
                    continue;
                }
                let old = Pte(self.mem.xchg_entry(table, idx, Pte::NONE.0));
                if !clean_anon(old) {
                    // Dirtied since the check: the page stays (Linux: folio dirty again).
                    self.set_entry(table, idx, old);
                    continue;
                }
                cleared += 1;
                tlb.add_range(slot.start, slot.end);
                self.release_leaf(old, level, slot.start, tlb);
                *zapped += level.entry_span() >> PAGE_SHIFT;
                continue;
            }
            let Some(child_level) = level.child() else { continue };
            let child = pte.pfn();
            self.zap_clean_table(child, child_level, slot.lo, slot.hi, tlb, zapped);
            if self.may_unlink(level, mode) && self.live_entries(child) == 0 {
                self.set_entry(table, idx, Pte::NONE);
                cleared += 1;
                self.release_table(child, child_level, slot.start, tlb);
            }
        }
        self.count_add(table, -cleared);
    }

    /// What the CPU does to the leaf mapping `va` on an access: sets the accessed
    /// bit, and for a write the dirty bit (Linux `follow_page` with `FOLL_TOUCH`;
    /// host tests use it to stand in for the MMU). Returns `false`, changing
    /// nothing, if no present leaf maps `va` or it does not allow the access.
    pub fn touch(&mut self, va: VirtAddr, write: bool) -> bool {
        let Some((table, idx, _)) = self.find_leaf(va.linear()) else { return false };
        let pte = self.entry(table, idx);
        if !pte.is_hw_present() || (write && !pte.flags().contains(PteFlags::WRITABLE)) {
            return false;
        }
        let mut set = PteFlags::ACCESSED;
        set.set(PteFlags::DIRTY, write);
        self.update_entry(table, idx, |p| Pte(p.0 | set.bits()));
        true
    }

    /// The table, index and level of the leaf mapping linear `lin`, if any.
    pub(crate) fn find_leaf(&self, lin: u64) -> Option<(Pfn, usize, Level)> {
        let mut table = self.root;
        let mut level = Level::Pml4;
        loop {
            let idx = level.index(lin);
            let e = self.entry(table, idx);
            if !e.is_present() {
                return None;
            }
            if level == Level::Pte || (level != Level::Pml4 && e.is_huge()) {
                return Some((table, idx, level));
            }
            table = e.pfn();
            level = level.child()?;
        }
    }

    // ----- migration ----------------------------------------------------------------------

    /// Moves the anonymous page `m.old()` of this space to `m.new_pfn()` (Linux
    /// `try_to_migrate_one` + `folio_migrate_copy` + `remove_migration_pte`, for
    /// the one mapping an anonymous folio has here). Call from the owner's
    /// [`MigrateOps::migrate`](crate::compaction::MigrateOps::migrate) with this
    /// space's lock held, then finish `tlb` (the flush) before returning to the
    /// allocator, which frees the old block right after.
    ///
    /// Checks, refusing with nothing changed if one fails: the old page is an
    /// anonymous head of `m.order()` (0, or [`HPAGE_PMD_ORDER`] for a PMD-mapped
    /// huge page), its reverse map names this space, it is mapped exactly once,
    /// and the entry at the reverse-map address is a `SOFT_ANON` leaf of the
    /// matching level mapping it. Then the contents are copied, the old handle
    /// is traded for the new one ([`Migration::exchange`]) and the entry is
    /// rewritten to the new frame with its flags unchanged (accessed and dirty
    /// bits the CPU sets meanwhile are kept: one exchange, as
    /// [`protect`](Self::protect)); the address is queued in `tlb`. A PMD entry
    /// keeps its deposited PTE table; resident-set counters do not change. The
    /// allocator moves the page's owner state (mapcount, reverse map, movable id)
    /// to the new head when the migration commits.
    ///
    /// One CPU: no other CPU can access the page between the copy and the
    /// rewrite, so no migration entry is installed first (Linux clears the entry
    /// and flushes before copying).
    pub fn migrate_anon_page(&mut self, m: &Migration<'_>, tlb: &mut MmuGather) -> Result<(), MigrateAnonError> {
        if self.kind != SpaceKind::User {
            return Err(MigrateAnonError::NotUser);
        }
        let (old, new, order) = (m.old(), m.new_pfn(), m.order());
        let level = match order {
            0 => Level::Pte,
            HPAGE_PMD_ORDER => Level::Pmd,
            _ => return Err(MigrateAnonError::Unsupported),
        };
        let meta = self.alloc.page(old).ok_or(MigrateAnonError::NotAnon)?;
        let PageState::Anon { mapcount, rmap, .. } = meta.state() else { return Err(MigrateAnonError::NotAnon) };
        if meta.order() != order {
            return Err(MigrateAnonError::NotAnon);
        }
        if rmap.asid != self.asid {
            return Err(MigrateAnonError::OtherSpace);
        }
        if mapcount != 1 {
            return Err(MigrateAnonError::Shared);
        }
        let lin = rmap.vpn << PAGE_SHIFT;
        let span = level.entry_span();
        if lin >= KERNEL_HALF || lin % span != 0 {
            return Err(MigrateAnonError::NotMapped);
        }
        let Some((table, idx, found)) = self.find_leaf(lin) else { return Err(MigrateAnonError::NotMapped) };
        let pte = self.entry(table, idx);
        if found != level || pte.pfn() != old || !pte.flags().contains(PteFlags::SOFT_ANON) {
            return Err(MigrateAnonError::NotMapped);
        }
        m.copy_contents();
        // SAFETY: the SOFT_ANON entry checked above holds the block's only
        // mapcount, and the fault handler leaked the block's only handle into it;
        // the handle is traded in below or leaked back into the entry.
        let handle = unsafe { Pages::from_raw(old, order) };
        let new_handle = match m.exchange(handle) {
            Ok(n) => n,
            Err(h) => {
                let _ = h.leak(); // still owned by the entry
                return Err(MigrateAnonError::AlreadyMigrated);
            }
        };
        self.update_entry(table, idx, |p| Pte::new(new, p.flags()));
        let _ = new_handle.leak(); // owned by the entry now
        tlb.add_range(lin, lin + span);
        Ok(())
    }

    // ----- teardown ---------------------------------------------------------------------

    /// Frees every mapping and table of this space's half and the root, whatever the
    /// reclaim knob says (Linux `exit_mmap` → `free_pgtables` → `pgd_free`). Tables
    /// pinned by an outstanding [`PtRef`](crate::pt_reclaim::PtRef) are leaked.
    pub fn destroy(mut self, tlb: &mut MmuGather) {
        let (lo, hi) = self.half();
        let mode = ZapMode { reclaim: true, teardown: true };
        // Full coverage never splits, so this cannot fail.
        let _ = self.zap_table(self.root, Level::Pml4, lo, hi, Gfp::empty(), tlb, mode);
        debug_assert!(self.deposited.is_empty(), "deposited tables left at teardown");
        let root = self.root;
        if self.live_entries(root) == 0 {
            self.release_table(root, Level::Pml4, lo, tlb);
        }
        self.destroyed = true;
    }
}

impl<A: PtAlloc, M: PtMem> Drop for AddressSpace<'_, A, M> {
    fn drop(&mut self) {
        #[cfg(test)]
        if std::thread::panicking() {
            return;
        }
        #[cfg(debug_assertions)]
        if !self.destroyed {
            panic!("AddressSpace dropped without destroy(): its page tables leak");
        }
    }
}

/// How `zap_table` treats tables it empties.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ZapMode {
    /// Unlink and free empty tables (the `pt_reclaim` knob).
    pub(crate) reclaim: bool,
    /// Tearing the whole space down: the kernel's PML4 entries may go too.
    pub(crate) teardown: bool,
}

mod quicklist;
mod range_walk;
pub use quicklist::{Quicklist, QUICKLIST_MAX};
use range_walk::RangeWalk;

#[cfg(test)]
pub(crate) mod testutil;
#[cfg(test)]
mod tests;
