//! Virtual memory areas (VMAs) of one user address space.
//!
//! This module owns the *bookkeeping* of a user address space: which ranges of
//! `[0, TASK_SIZE)` are mapped, with which `VM_*` flags, and what backs them
//! (private anonymous memory, a shared anonymous object, the brk heap, the
//! stack). It does not touch page tables or frames: the syscall layer
//! (`mmap`, `munmap`, `mprotect`, `madvise`, `brk`) calls into a [`VmaTree`]
//! and then updates the page tables for the range it changed, and the page
//! fault handler asks [`VmaTree::vma_lookup`] / [`VmaTree::expand_stack`]
//! whether an access is allowed.
//!
//! It follows Linux's `mm/vma.c` and the VMA parts of `mm/mmap.c`,
//! `mm/mprotect.c` and `mm/madvise.c`, with Linux names: [`VmaTree::find_vma`],
//! [`VmaTree::vma_lookup`], [`VmaTree::find_vma_intersection`],
//! [`Vma::split_at`] (`split_vma`), [`Vma::can_merge_with`] (the `vma_merge`
//! rules), [`VmaTree::do_munmap`] (`do_vmi_munmap`), [`VmaTree::mprotect_fixup`],
//! [`VmaTree::madvise_update_vma`], [`VmaTree::get_unmapped_area`],
//! [`VmaTree::expand_stack`] and `/proc/PID/maps` ([`VmaTree::write_maps`]).
//! The maple tree is replaced by a `BTreeMap` keyed by `vm_start`.
//!
//! Invariants kept by every operation (and checked by the property test):
//! VMAs are page aligned, non-empty, sorted, non-overlapping, below
//! [`TASK_SIZE`]; no two adjacent VMAs are mergeable (every operation
//! re-merges the neighbours it touched, like `vma_merge` after
//! `mprotect_fixup`); `map_count()` is the number of VMAs.
//!
//! Every operation is **atomic**: it first validates the arguments, computes
//! the complete replacement of the VMAs it touches (a "window"), checks the
//! resulting map count against `max_map_count`, and only then commits. On any
//! error the tree is unchanged. Where Linux applies a change partially before
//! failing (`mprotect` over a hole), this module refuses the whole change;
//! [`VmaTree::first_unmapped`] lets the syscall layer reproduce Linux's
//! prefix behaviour if it wants to. `madvise` applies to the mapped parts of
//! a range with holes, as Linux does, and reports the holes in [`Advised`].

use alloc::collections::BTreeMap;
use alloc::vec::Vec;
use bitflags::bitflags;
use core::fmt;

use crate::addr::{PAGE_SHIFT, PAGE_SIZE, Pfn, align_down, align_up, is_aligned};

/// End of the user address space on x86_64 with 4-level paging (Linux
/// `TASK_SIZE_MAX`: the last page below the canonical hole is left unmapped).
pub const TASK_SIZE: u64 = 0x0000_7fff_ffff_f000;

/// Default of `vm.max_map_count` (Linux `DEFAULT_MAX_MAP_COUNT`).
pub const DEFAULT_MAX_MAP_COUNT: usize = 65530;

/// Default of `vm.mmap_min_addr`: nothing may be mapped below it.
pub const DEFAULT_MMAP_MIN_ADDR: u64 = 0x1_0000;

/// Default top of the top-down mmap search: `TASK_SIZE` minus the minimum
/// stack gap Linux reserves (128 MiB), without randomisation.
pub const DEFAULT_MMAP_BASE: u64 = TASK_SIZE - (128 << 20);

/// Start of the bottom-up fallback search (Linux x86 `TASK_UNMAPPED_BASE`).
pub const TASK_UNMAPPED_BASE: u64 = align_down(TASK_SIZE / 3, PAGE_SIZE);

/// Default gap kept free below a `VM_GROWSDOWN` VMA (Linux `stack_guard_gap`,
/// 256 pages).
pub const DEFAULT_STACK_GUARD_GAP: u64 = 256 * PAGE_SIZE;

bitflags! {
    /// `vm_flags` of a VMA, with Linux's bit values so dumps compare directly.
    #[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
    pub struct VmFlags: u64 {
        /// `VM_READ`: pages may be read.
        const READ = 0x0000_0001;
        /// `VM_WRITE`: pages may be written.
        const WRITE = 0x0000_0002;
        /// `VM_EXEC`: pages may be executed.
        const EXEC = 0x0000_0004;
        /// `VM_SHARED`: writes are shared with other mappings of the object.
        const SHARED = 0x0000_0008;
        /// `VM_MAYREAD`: `mprotect` may add `READ`.
        const MAYREAD = 0x0000_0010;
        /// `VM_MAYWRITE`: `mprotect` may add `WRITE`.
        const MAYWRITE = 0x0000_0020;
        /// `VM_MAYEXEC`: `mprotect` may add `EXEC`.
        const MAYEXEC = 0x0000_0040;
        /// `VM_MAYSHARE`: mapped with `MAP_SHARED` (shown as `s` in maps).
        const MAYSHARE = 0x0000_0080;
        /// `VM_GROWSDOWN`: a stack that grows down on faults below it.
        const GROWSDOWN = 0x0000_0100;
        /// `VM_PFNMAP`: raw PFN mapping (never merged).
        const PFNMAP = 0x0000_0400;
        /// `VM_LOCKED`: `mlock`ed.
        const LOCKED = 0x0000_2000;
        /// `VM_IO`: device memory (never merged).
        const IO = 0x0000_4000;
        /// `VM_SEQ_READ`: `MADV_SEQUENTIAL`.
        const SEQ_READ = 0x0000_8000;
        /// `VM_RAND_READ`: `MADV_RANDOM`.
        const RAND_READ = 0x0001_0000;
        /// `VM_DONTCOPY`: `MADV_DONTFORK`.
        const DONTCOPY = 0x0002_0000;
        /// `VM_DONTEXPAND`: cannot be expanded or merged.
        const DONTEXPAND = 0x0004_0000;
        /// `VM_ACCOUNT`: counted against the commit limit.
        const ACCOUNT = 0x0010_0000;
        /// `VM_NORESERVE`: `MAP_NORESERVE`.
        const NORESERVE = 0x0020_0000;
        /// `VM_WIPEONFORK`: `MADV_WIPEONFORK` (the child sees zeroes).
        const WIPEONFORK = 0x0200_0000;
        /// `VM_DONTDUMP`: `MADV_DONTDUMP`.
        const DONTDUMP = 0x0400_0000;
        /// `VM_MIXEDMAP`: mixed PFN/page mapping (never merged).
        const MIXEDMAP = 0x1000_0000;
        /// `VM_HUGEPAGE`: `MADV_HUGEPAGE`.
        const HUGEPAGE = 0x2000_0000;
        /// `VM_NOHUGEPAGE`: `MADV_NOHUGEPAGE`.
        const NOHUGEPAGE = 0x4000_0000;
        /// `VM_MERGEABLE`: `MADV_MERGEABLE` (KSM candidate).
        const MERGEABLE = 0x8000_0000;
    }
}

impl VmFlags {
    /// `VM_ACCESS_FLAGS`: the bits `mprotect` sets.
    pub const ACCESS: VmFlags = VmFlags::READ.union(VmFlags::WRITE).union(VmFlags::EXEC);
    /// The `VM_MAY*` bits of an ordinary private mapping.
    pub const MAY_ALL: VmFlags = VmFlags::MAYREAD
        .union(VmFlags::MAYWRITE)
        .union(VmFlags::MAYEXEC);
    /// `VM_SPECIAL`: VMAs with any of these are never merged.
    pub const SPECIAL: VmFlags = VmFlags::IO
        .union(VmFlags::DONTEXPAND)
        .union(VmFlags::PFNMAP)
        .union(VmFlags::MIXEDMAP);

    /// Access bits in `self` whose `VM_MAY*` counterpart is missing
    /// (Linux: `newflags & ~(newflags >> 4) & VM_ACCESS_FLAGS`).
    pub const fn missing_may_bits(self) -> VmFlags {
        VmFlags::from_bits_retain(self.bits() & !(self.bits() >> 4) & VmFlags::ACCESS.bits())
    }
}

/// Identifier of a shared anonymous object (the shmem file behind
/// `MAP_SHARED | MAP_ANONYMOUS`); shown as the inode number in maps.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub struct ShmId(pub u64);

/// What backs a VMA. VMAs of different kinds never merge.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum VmaKind {
    /// `MAP_PRIVATE | MAP_ANONYMOUS`: zero-filled private memory.
    AnonPrivate,
    /// `MAP_SHARED | MAP_ANONYMOUS`: pages of a shared object; `pgoff` is
    /// the page offset into that object.
    AnonShared(ShmId),
    /// The brk heap (`[heap]` in maps).
    Heap,
    /// The main thread's stack (`[stack]` in maps).
    Stack,
    /// Kernel pages mapped into the process at exec (`[vvar]`, `[vdso]`);
    /// `pgoff` is the page offset into them. A reference, as Linux's
    /// `vm_private_data`: a `Vma` stays small (the tree holds up to
    /// `max_map_count` of them and splits copy them into vectors).
    Special(&'static SpecialMapping),
}

/// Linux `struct vm_special_mapping`: `nr_pages` kernel frames from `pfn`,
/// shown in maps as `name`. The kernel owns the frames: page-table entries
/// mapping them do not, and unmapping only drops the entries.
#[derive(PartialEq, Eq, Hash, Debug)]
pub struct SpecialMapping {
    pub name: &'static str,
    pub pfn: Pfn,
    pub nr_pages: u64,
}

impl SpecialMapping {
    /// The frame at page offset `pgoff`, `None` beyond the mapping.
    pub fn frame(&self, pgoff: u64) -> Option<Pfn> {
        (pgoff < self.nr_pages).then(|| Pfn(self.pfn.0 + pgoff))
    }
}

/// One virtual memory area: the half-open, page-aligned range `[start, end)`.
///
/// `pgoff` is Linux's `vm_pgoff`: the page offset of `start` in the backing
/// object. Anonymous private mappings use `start >> PAGE_SHIFT`
/// ([`linear_pgoff`]) so that adjacent mappings have contiguous offsets and
/// merge, as in Linux.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct Vma {
    /// First byte (page aligned).
    pub start: u64,
    /// One past the last byte (page aligned, `> start`).
    pub end: u64,
    /// `vm_flags`.
    pub flags: VmFlags,
    /// Backing.
    pub kind: VmaKind,
    /// Page offset of `start` in the backing object.
    pub pgoff: u64,
}

/// The `pgoff` Linux gives an anonymous private mapping at `addr`.
pub const fn linear_pgoff(addr: u64) -> u64 {
    addr >> PAGE_SHIFT
}

impl Vma {
    /// Size in bytes.
    pub const fn len_bytes(&self) -> u64 {
        self.end.saturating_sub(self.start)
    }

    /// Size in pages.
    pub const fn nr_pages(&self) -> u64 {
        self.len_bytes() >> PAGE_SHIFT
    }

    /// Whether `addr` lies in `[start, end)`.
    pub const fn contains(&self, addr: u64) -> bool {
        self.start <= addr && addr < self.end
    }

    /// Linux `vma_is_accessible`: any of read/write/exec.
    pub fn is_accessible(&self) -> bool {
        self.flags.intersects(VmFlags::ACCESS)
    }

    /// Page offset in the backing object of the page containing `addr`
    /// (`linear_page_index`); `None` if `addr` is outside the VMA.
    pub fn pgoff_at(&self, addr: u64) -> Option<u64> {
        if !self.contains(addr) {
            return None;
        }
        self.pgoff.checked_add((addr - self.start) >> PAGE_SHIFT)
    }

    /// Linux `vm_start_gap`: the lowest address a new mapping below this VMA
    /// may reach, keeping `guard` bytes free below a `VM_GROWSDOWN` stack.
    pub fn start_gap(&self, guard: u64) -> u64 {
        if self.flags.contains(VmFlags::GROWSDOWN) {
            self.start.saturating_sub(guard)
        } else {
            self.start
        }
    }

    /// The part `[from, to)` of this VMA with its `pgoff` adjusted.
    /// Callers guarantee `start <= from < to <= end`.
    fn slice(&self, from: u64, to: u64) -> Vma {
        Vma {
            start: from,
            end: to,
            pgoff: self.pgoff.wrapping_add((from - self.start) >> PAGE_SHIFT),
            ..*self
        }
    }

    /// Linux `split_vma`: the two VMAs `[start, addr)` and `[addr, end)`.
    /// `None` unless `addr` is page aligned and strictly inside the VMA (a
    /// split at a boundary is no split). The tree never stores the two halves
    /// unmerged: it splits only to change one side.
    pub fn split_at(&self, addr: u64) -> Option<(Vma, Vma)> {
        if !is_aligned(addr, PAGE_SIZE) || addr <= self.start || addr >= self.end {
            return None;
        }
        Some((self.slice(self.start, addr), self.slice(addr, self.end)))
    }

    /// The `vma_merge` rules: `next` directly follows `self`, both have the
    /// same flags and backing, neither is `VM_SPECIAL`, and the object offsets
    /// are contiguous.
    pub fn can_merge_with(&self, next: &Vma) -> bool {
        self.end == next.start
            && self.flags == next.flags
            && self.kind == next.kind
            && !self.flags.intersects(VmFlags::SPECIAL)
            && self.pgoff.checked_add(self.nr_pages()) == Some(next.pgoff)
    }

    /// Splits the VMA around `[from, to)`: the part before, the part inside
    /// and the part after (each `None` when empty).
    fn clip3(&self, from: u64, to: u64) -> (Option<Vma>, Option<Vma>, Option<Vma>) {
        let head = (self.start < from).then(|| self.slice(self.start, self.end.min(from)));
        let (lo, hi) = (self.start.max(from), self.end.min(to));
        let mid = (lo < hi).then(|| self.slice(lo, hi));
        let tail = (self.end > to).then(|| self.slice(self.start.max(to), self.end));
        (head, mid, tail)
    }
}

// ---------------------------------------------------------------------------
// Errors: one enum per operation; the errno each variant maps to is in its doc.
// ---------------------------------------------------------------------------

/// The change would leave more than `max_map_count` VMAs (internal; each
/// operation's error has its own `MapCountExceeded` variant).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
struct CountExceeded;

/// Errors of [`VmaTree::mmap_region`].
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum MapError {
    /// `len` is zero (`EINVAL`).
    ZeroLength,
    /// `addr` is not page aligned (`EINVAL`).
    Unaligned,
    /// `len` rounds past the end of the address space, or `addr + len` is
    /// above [`TASK_SIZE`] (`ENOMEM`).
    OutOfRange,
    /// `pgoff + pages` overflows (`EOVERFLOW`).
    PgoffOverflow,
    /// `addr` is below `mmap_min_addr` (`EPERM`).
    BelowMmapMinAddr,
    /// [`MapFixed::NoReplace`] and the range overlaps a VMA (`EEXIST`).
    Exists,
    /// The mapping would exceed `max_map_count` (`ENOMEM`).
    MapCountExceeded,
}

/// Errors of [`VmaTree::do_munmap`].
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum UnmapError {
    /// `start` is not page aligned (`EINVAL`).
    Unaligned,
    /// `len` is zero (`EINVAL`).
    ZeroLength,
    /// `start > TASK_SIZE` or `len > TASK_SIZE - start` (`EINVAL`).
    OutOfRange,
    /// Punching a hole would exceed `max_map_count` (`ENOMEM`).
    MapCountExceeded,
}

/// Errors of [`VmaTree::mprotect_fixup`].
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum ProtectError {
    /// `start` is not page aligned (`EINVAL`).
    Unaligned,
    /// `start + len` (rounded) overflows (`ENOMEM`).
    OutOfRange,
    /// `prot` has bits other than read/write/exec (`EINVAL`).
    InvalidProt,
    /// Part of the range is not mapped (`ENOMEM`).
    Unmapped,
    /// A VMA lacks the `VM_MAY*` bit for a requested access (`EACCES`).
    AccessDenied,
    /// Splitting would exceed `max_map_count` (`ENOMEM`).
    MapCountExceeded,
}

/// Errors of [`VmaTree::madvise_update_vma`].
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum MadviseError {
    /// `start` is not page aligned (`EINVAL`).
    Unaligned,
    /// `len` rounds to zero from a huge value, or `start + len` overflows
    /// (`EINVAL`).
    OutOfRange,
    /// The advice is not allowed on one of the VMAs (`EINVAL`).
    InvalidForVma,
    /// Splitting would exceed `max_map_count` (`ENOMEM`).
    MapCountExceeded,
}

/// Errors of [`VmaTree::get_unmapped_area`].
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum UnmappedAreaError {
    /// `len` is zero (`EINVAL`).
    ZeroLength,
    /// `align` is not a power of two (`EINVAL`; a kernel bug, not user input).
    BadAlignment,
    /// `len` is larger than the address space (`ENOMEM`).
    TooLarge,
    /// No free range is large enough (`ENOMEM`).
    NoSpace,
}

/// Errors of [`VmaTree::expand_stack`]; the fault handler turns all of them
/// into `SIGSEGV`.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum ExpandStackError {
    /// No VMA at or above the address, or it is not `VM_GROWSDOWN`.
    NoStack,
    /// The address is below `mmap_min_addr` (`EPERM`).
    BelowMmapMinAddr,
    /// Growing would come closer than the stack guard gap to the VMA below
    /// (`ENOMEM`).
    GuardGap,
    /// Growing would exceed the stack size limit (`ENOMEM`).
    StackLimit,
    /// The stack's `pgoff` would underflow (`ENOMEM`).
    PgoffUnderflow,
    /// Merging bookkeeping would exceed `max_map_count` (`ENOMEM`).
    MapCountExceeded,
}

impl From<CountExceeded> for MapError {
    fn from(_: CountExceeded) -> Self {
        MapError::MapCountExceeded
    }
}
impl From<CountExceeded> for UnmapError {
    fn from(_: CountExceeded) -> Self {
        UnmapError::MapCountExceeded
    }
}
impl From<CountExceeded> for ProtectError {
    fn from(_: CountExceeded) -> Self {
        ProtectError::MapCountExceeded
    }
}
impl From<CountExceeded> for MadviseError {
    fn from(_: CountExceeded) -> Self {
        MadviseError::MapCountExceeded
    }
}
impl From<CountExceeded> for ExpandStackError {
    fn from(_: CountExceeded) -> Self {
        ExpandStackError::MapCountExceeded
    }
}

macro_rules! display_via_debug {
    ($($t:ty),*) => {$(
        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}: {:?}", stringify!($t), self)
            }
        }
    )*};
}
display_via_debug!(
    MapError,
    UnmapError,
    ProtectError,
    MadviseError,
    UnmappedAreaError,
    ExpandStackError
);

// ---------------------------------------------------------------------------
// Operation arguments and results.
// ---------------------------------------------------------------------------

/// What [`VmaTree::mmap_region`] does with VMAs already in the range.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum MapFixed {
    /// `MAP_FIXED` (and every non-fixed mmap, whose range is free anyway):
    /// unmap whatever overlaps.
    Replace,
    /// `MAP_FIXED_NOREPLACE`: fail with [`MapError::Exists`] on overlap.
    NoReplace,
}

/// Result of [`VmaTree::mmap_region`].
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Mapped {
    /// The VMA now containing the new range (possibly merged with neighbours).
    pub vma: Vma,
    /// Parts of old VMAs the mapping replaced (clipped to the range, with
    /// their `pgoff`), in address order: the caller must unmap their pages.
    pub replaced: Vec<Vma>,
}

/// Result of [`VmaTree::madvise_update_vma`].
#[must_use = "a range with holes must make madvise return ENOMEM"]
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Advised {
    /// Part of the range was not mapped: the advice was applied to the mapped
    /// parts and the syscall must return `ENOMEM` (Linux `madvise`).
    pub had_holes: bool,
}

/// `madvise` advice that only changes `vm_flags`, with Linux's per-VMA rules
/// (`madvise_update_vma`, `hugepage_madvise`, `ksm_madvise`).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum FlagAdvice {
    /// `MADV_NORMAL`: clear the read-ahead hints.
    Normal,
    /// `MADV_RANDOM`.
    Random,
    /// `MADV_SEQUENTIAL`.
    Sequential,
    /// `MADV_DONTFORK`.
    DontFork,
    /// `MADV_DOFORK` (`EINVAL` on `VM_IO`).
    DoFork,
    /// `MADV_DONTDUMP`.
    DontDump,
    /// `MADV_DODUMP` (`EINVAL` on `VM_SPECIAL`).
    DoDump,
    /// `MADV_HUGEPAGE`.
    HugePage,
    /// `MADV_NOHUGEPAGE`.
    NoHugePage,
    /// `MADV_MERGEABLE` (silently skipped on shared and special VMAs).
    Mergeable,
    /// `MADV_UNMERGEABLE`.
    Unmergeable,
    /// `MADV_WIPEONFORK` (`EINVAL` on shared VMAs: only private anonymous memory).
    WipeOnFork,
    /// `MADV_KEEPONFORK`.
    KeepOnFork,
}

impl FlagAdvice {
    /// The flags `vma` gets under this advice.
    pub fn new_flags(self, vma: &Vma) -> Result<VmFlags, MadviseError> {
        let f = vma.flags;
        Ok(match self {
            FlagAdvice::Normal => f - VmFlags::SEQ_READ - VmFlags::RAND_READ,
            FlagAdvice::Random => (f - VmFlags::SEQ_READ) | VmFlags::RAND_READ,
            FlagAdvice::Sequential => (f - VmFlags::RAND_READ) | VmFlags::SEQ_READ,
            FlagAdvice::DontFork => f | VmFlags::DONTCOPY,
            FlagAdvice::DoFork if f.contains(VmFlags::IO) => {
                return Err(MadviseError::InvalidForVma);
            }
            FlagAdvice::DoFork => f - VmFlags::DONTCOPY,
            FlagAdvice::DontDump => f | VmFlags::DONTDUMP,
            FlagAdvice::DoDump if f.intersects(VmFlags::SPECIAL) => {
                return Err(MadviseError::InvalidForVma);
            }
            FlagAdvice::DoDump => f - VmFlags::DONTDUMP,
            FlagAdvice::HugePage => (f - VmFlags::NOHUGEPAGE) | VmFlags::HUGEPAGE,
            FlagAdvice::NoHugePage => (f - VmFlags::HUGEPAGE) | VmFlags::NOHUGEPAGE,
            FlagAdvice::Mergeable if Self::ksm_incompatible(f) => f,
            FlagAdvice::Mergeable => f | VmFlags::MERGEABLE,
            FlagAdvice::Unmergeable => f - VmFlags::MERGEABLE,
            FlagAdvice::WipeOnFork if f.intersects(VmFlags::SHARED | VmFlags::MAYSHARE) => {
                return Err(MadviseError::InvalidForVma);
            }
            FlagAdvice::WipeOnFork => f | VmFlags::WIPEONFORK,
            FlagAdvice::KeepOnFork => f - VmFlags::WIPEONFORK,
        })
    }

    /// Linux `vma_ksm_compatible`, negated.
    fn ksm_incompatible(f: VmFlags) -> bool {
        f.intersects(VmFlags::SHARED | VmFlags::MAYSHARE | VmFlags::SPECIAL)
    }
}

// ---------------------------------------------------------------------------
// The tree.
// ---------------------------------------------------------------------------

/// The VMAs of one address space (Linux: the maple tree in `mm_struct` plus
/// `map_count`, `total_vm`, `mmap_base`), with the tunables that shape it.
#[derive(Clone, Debug)]
pub struct VmaTree {
    vmas: BTreeMap<u64, Vma>,
    /// Start of the VMA the last [`vma_lookup`](Self::vma_lookup) found (Linux's
    /// per-thread `vmacache` before the maple tree): faults come in runs on
    /// one VMA, and a key lookup costs half a range search. Only a hint: it is
    /// checked against the tree on every use, so no change needs to reset it.
    lookup_hint: core::cell::Cell<u64>,
    total_vm_pages: u64,
    max_map_count: usize,
    mmap_base: u64,
    mmap_min_addr: u64,
    stack_guard_gap: u64,
}

impl Default for VmaTree {
    fn default() -> Self {
        Self::new()
    }
}

impl VmaTree {
    /// An empty address space with Linux's default tunables.
    pub fn new() -> Self {
        VmaTree {
            vmas: BTreeMap::new(),
            lookup_hint: core::cell::Cell::new(u64::MAX),
            total_vm_pages: 0,
            max_map_count: DEFAULT_MAX_MAP_COUNT,
            mmap_base: DEFAULT_MMAP_BASE,
            mmap_min_addr: DEFAULT_MMAP_MIN_ADDR,
            stack_guard_gap: DEFAULT_STACK_GUARD_GAP,
        }
    }

    // ----- tunables --------------------------------------------------------

    /// Number of VMAs (`mm->map_count`).
    pub fn map_count(&self) -> usize {
        self.vmas.len()
    }

    /// Mapped size in pages (`mm->total_vm`, `VmSize` in `/proc/PID/status`).
    pub fn total_vm_pages(&self) -> u64 {
        self.total_vm_pages
    }

    /// The `vm.max_map_count` limit.
    pub fn max_map_count(&self) -> usize {
        self.max_map_count
    }

    /// Sets `vm.max_map_count`. Lowering it below the current count never
    /// removes VMAs; it only refuses operations that would add more.
    pub fn set_max_map_count(&mut self, max: usize) {
        self.max_map_count = max;
    }

    /// Top of the top-down search of [`Self::get_unmapped_area`].
    pub fn mmap_base(&self) -> u64 {
        self.mmap_base
    }

    /// Sets the mmap base (exec does this, possibly randomised); rounded down
    /// to a page and clamped to [`TASK_SIZE`].
    pub fn set_mmap_base(&mut self, base: u64) {
        self.mmap_base = align_down(base.min(TASK_SIZE), PAGE_SIZE);
    }

    /// The `vm.mmap_min_addr` limit.
    pub fn mmap_min_addr(&self) -> u64 {
        self.mmap_min_addr
    }

    /// Sets `vm.mmap_min_addr` (rounded up to a page, clamped to `TASK_SIZE`).
    pub fn set_mmap_min_addr(&mut self, addr: u64) {
        self.mmap_min_addr = align_up(addr.min(TASK_SIZE), PAGE_SIZE).unwrap_or(TASK_SIZE);
    }

    /// Gap kept free below `VM_GROWSDOWN` VMAs.
    pub fn stack_guard_gap(&self) -> u64 {
        self.stack_guard_gap
    }

    /// Sets the stack guard gap (rounded down to a page).
    pub fn set_stack_guard_gap(&mut self, bytes: u64) {
        self.stack_guard_gap = align_down(bytes, PAGE_SIZE);
    }

    // ----- lookups -----------------------------------------------------------

    /// All VMAs in address order.
    pub fn iter(&self) -> impl Iterator<Item = &Vma> + '_ {
        self.vmas.values()
    }

    /// Linux `find_vma`: the first VMA with `end > addr` (it contains `addr`
    /// or lies above it).
    pub fn find_vma(&self, addr: u64) -> Option<&Vma> {
        if let Some((_, v)) = self.vmas.range(..=addr).next_back()
            && v.end > addr
        {
            return Some(v);
        }
        self.vmas
            .range(addr.saturating_add(1)..)
            .next()
            .map(|(_, v)| v)
    }

    /// Linux `vma_lookup`: the VMA containing `addr`.
    pub fn vma_lookup(&self, addr: u64) -> Option<&Vma> {
        if let Some(v) = self.vmas.get(&self.lookup_hint.get())
            && v.contains(addr)
        {
            return Some(v);
        }
        let v = self.vmas.range(..=addr).next_back().map(|(_, v)| v).filter(|v| v.contains(addr))?;
        self.lookup_hint.set(v.start);
        Some(v)
    }

    /// Linux `find_vma_intersection`: the first VMA overlapping `[start, end)`.
    pub fn find_vma_intersection(&self, start: u64, end: u64) -> Option<&Vma> {
        self.find_vma(start)
            .filter(|v| start < end && v.start < end)
    }

    /// The VMAs overlapping `[start, end)` in address order (Linux
    /// `for_each_vma_range`). Yields whole VMAs, not clipped parts.
    pub fn vmas_in_range(&self, start: u64, end: u64) -> impl Iterator<Item = &Vma> + '_ {
        let (start, end) = if start < end { (start, end) } else { (0, 0) };
        let first = self
            .vmas
            .range(..start)
            .next_back()
            .map(|(_, v)| v)
            .filter(|v| v.end > start);
        first
            .into_iter()
            .chain(self.vmas.range(start..end).map(|(_, v)| v))
    }

    /// Whether no VMA overlaps `[start, start + len)` (`len` rounded up to a
    /// page). `false` for ranges that overflow or leave `[0, TASK_SIZE)`.
    pub fn range_is_free(&self, start: u64, len: u64) -> bool {
        let Some(end) = align_up(len, PAGE_SIZE).and_then(|l| start.checked_add(l)) else {
            return false;
        };
        end <= TASK_SIZE && self.find_vma_intersection(start, end).is_none()
    }

    /// The first address in `[start, end)` not covered by a VMA, or `None`
    /// if the whole range is mapped. With it the syscall layer can apply
    /// Linux's partial `mprotect` (change the mapped prefix, then `ENOMEM`).
    pub fn first_unmapped(&self, start: u64, end: u64) -> Option<u64> {
        let mut covered = start;
        for v in self.vmas_in_range(start, end) {
            if v.start > covered {
                return Some(covered);
            }
            covered = v.end;
        }
        (covered < end).then_some(covered)
    }

    // ----- mmap --------------------------------------------------------------

    /// Linux `mmap_region` (with the `do_mmap` argument checks): maps
    /// `[addr, addr + len)` (`len` rounded up to a page) with `flags` and
    /// backing `kind`, merging with compatible neighbours. With
    /// [`MapFixed::Replace`] the VMAs already there are removed first
    /// (`MAP_FIXED`); their parts are returned so the caller can unmap pages.
    ///
    /// `pgoff` is the page offset in the backing object: pass
    /// [`linear_pgoff`]`(addr)` for anonymous private, heap and stack
    /// mappings, the offset into the object for [`VmaKind::AnonShared`].
    /// The caller validates `MAP_*`/`PROT_*` bits and ties `flags` to `kind`
    /// (`VM_SHARED | VM_MAYSHARE` for shared mappings).
    pub fn mmap_region(
        &mut self,
        addr: u64,
        len: u64,
        flags: VmFlags,
        kind: VmaKind,
        pgoff: u64,
        fixed: MapFixed,
    ) -> Result<Mapped, MapError> {
        let end = self.check_map_args(addr, len, pgoff)?;
        if fixed == MapFixed::NoReplace && self.find_vma_intersection(addr, end).is_some() {
            return Err(MapError::Exists);
        }
        let new = Vma {
            start: addr,
            end,
            flags,
            kind,
            pgoff,
        };
        let window = self.window(addr, end);
        let mut replaced = Vec::new();
        let mut pieces = rebuild(&window, addr, end, |mid| {
            replaced.push(mid);
            Ok::<_, MapError>(Piece::Remove)
        })?;
        let at = pieces.partition_point(|v| v.start < addr);
        pieces.insert(at, new);
        let pieces = merge_adjacent(pieces);
        let vma = pieces
            .iter()
            .find(|v| v.contains(addr))
            .copied()
            .unwrap_or(new);
        self.commit(&window, pieces)?;
        Ok(Mapped { vma, replaced })
    }

    /// `do_mmap`'s checks, in Linux's order; returns the end of the range.
    fn check_map_args(&self, addr: u64, len: u64, pgoff: u64) -> Result<u64, MapError> {
        if len == 0 {
            return Err(MapError::ZeroLength);
        }
        let len = align_up(len, PAGE_SIZE).ok_or(MapError::OutOfRange)?;
        if pgoff.checked_add(len >> PAGE_SHIFT).is_none() {
            return Err(MapError::PgoffOverflow);
        }
        if len > TASK_SIZE || addr > TASK_SIZE - len {
            return Err(MapError::OutOfRange);
        }
        if !is_aligned(addr, PAGE_SIZE) {
            return Err(MapError::Unaligned);
        }
        if addr < self.mmap_min_addr {
            return Err(MapError::BelowMmapMinAddr);
        }
        Ok(addr + len)
    }

    // ----- munmap ------------------------------------------------------------

    /// Linux `do_vmi_munmap`: removes every mapping in `[start, start + len)`
    /// (`len` rounded up), splitting VMAs that straddle the ends. Unmapping
    /// holes is fine. Returns the removed parts (clipped, with their `pgoff`)
    /// in address order, so the caller can unmap pages and drop shared objects.
    /// Fails with [`UnmapError::MapCountExceeded`] when it would punch a hole
    /// into one VMA while at the limit.
    pub fn do_munmap(&mut self, start: u64, len: u64) -> Result<Vec<Vma>, UnmapError> {
        if !is_aligned(start, PAGE_SIZE) {
            return Err(UnmapError::Unaligned);
        }
        if start > TASK_SIZE || len > TASK_SIZE - start {
            return Err(UnmapError::OutOfRange);
        }
        if len == 0 {
            return Err(UnmapError::ZeroLength);
        }
        // Cannot overflow: start and TASK_SIZE are page aligned.
        let end = start + align_up(len, PAGE_SIZE).ok_or(UnmapError::OutOfRange)?;
        let window = self.window(start, end);
        let mut removed = Vec::new();
        let pieces = rebuild(&window, start, end, |mid| {
            removed.push(mid);
            Ok::<_, UnmapError>(Piece::Remove)
        })?;
        self.commit(&window, merge_adjacent(pieces))?;
        Ok(removed)
    }

    // ----- mprotect ----------------------------------------------------------

    /// Linux `mprotect` / `mprotect_fixup`: sets the access bits of every VMA
    /// in `[start, start + len)` to `prot` (a subset of [`VmFlags::ACCESS`]),
    /// splitting at the range ends and re-merging neighbours. `len == 0` is a
    /// no-op. Fails without changing anything if part of the range is
    /// unmapped (`ENOMEM`), a VMA lacks the `VM_MAY*` bit (`EACCES`) or the
    /// splits would exceed `max_map_count`.
    pub fn mprotect_fixup(
        &mut self,
        start: u64,
        len: u64,
        prot: VmFlags,
    ) -> Result<(), ProtectError> {
        if !is_aligned(start, PAGE_SIZE) {
            return Err(ProtectError::Unaligned);
        }
        if len == 0 {
            return Ok(());
        }
        let end = align_up(len, PAGE_SIZE)
            .and_then(|l| start.checked_add(l))
            .ok_or(ProtectError::OutOfRange)?;
        if !VmFlags::ACCESS.contains(prot) {
            return Err(ProtectError::InvalidProt);
        }
        if self.first_unmapped(start, end).is_some() {
            return Err(ProtectError::Unmapped);
        }
        self.change_flags(start, end, |v| {
            let new = (v.flags - VmFlags::ACCESS) | prot;
            if new.missing_may_bits().is_empty() {
                Ok(new)
            } else {
                Err(ProtectError::AccessDenied)
            }
        })
    }

    // ----- madvise -------------------------------------------------------------

    /// Linux `madvise` for advice that only changes flags: applies `advice`
    /// to the mapped parts of `[start, start + len)`, splitting and merging
    /// like `mprotect`. Holes are skipped and reported in [`Advised`]
    /// (the syscall then returns `ENOMEM`). `len == 0` is a no-op.
    pub fn madvise_update_vma(
        &mut self,
        start: u64,
        len: u64,
        advice: FlagAdvice,
    ) -> Result<Advised, MadviseError> {
        self.madvise_with(start, len, |v| advice.new_flags(v))
    }

    /// Like [`Self::madvise_update_vma`] with a caller-supplied rule mapping
    /// each VMA to its new flags (for advice this module does not know).
    pub fn madvise_with(
        &mut self,
        start: u64,
        len: u64,
        new_flags: impl FnMut(&Vma) -> Result<VmFlags, MadviseError>,
    ) -> Result<Advised, MadviseError> {
        if !is_aligned(start, PAGE_SIZE) {
            return Err(MadviseError::Unaligned);
        }
        let end = align_up(len, PAGE_SIZE)
            .and_then(|l| start.checked_add(l))
            .ok_or(MadviseError::OutOfRange)?;
        if end == start {
            return Ok(Advised { had_holes: false });
        }
        let had_holes = self.first_unmapped(start, end).is_some();
        self.change_flags(start, end, new_flags)?;
        Ok(Advised { had_holes })
    }

    /// Applies `new_flags` to the mapped parts of `[start, end)`: the common
    /// split/apply/merge of mprotect and madvise (Linux `vma_modify_flags`).
    fn change_flags<E: From<CountExceeded>>(
        &mut self,
        start: u64,
        end: u64,
        mut new_flags: impl FnMut(&Vma) -> Result<VmFlags, E>,
    ) -> Result<(), E> {
        let window = self.window(start, end);
        let pieces = rebuild::<E>(&window, start, end, |mid| {
            let flags = new_flags(&mid)?;
            Ok(if flags == mid.flags {
                Piece::Keep
            } else {
                Piece::Replace(Vma { flags, ..mid })
            })
        })?;
        self.commit(&window, merge_adjacent(pieces))?;
        Ok(())
    }

    // ----- stack growth ------------------------------------------------------

    /// Linux `expand_stack`: for a fault at `addr`, returns the VMA containing
    /// it, growing a `VM_GROWSDOWN` VMA above `addr` down to its page if
    /// allowed: not below `mmap_min_addr`, not within the guard gap of an
    /// accessible non-stack VMA below, and the stack no larger than
    /// `stack_limit_bytes` (`RLIMIT_STACK`).
    pub fn expand_stack(
        &mut self,
        addr: u64,
        stack_limit_bytes: u64,
    ) -> Result<Vma, ExpandStackError> {
        let addr = align_down(addr, PAGE_SIZE);
        let vma = *self.find_vma(addr).ok_or(ExpandStackError::NoStack)?;
        if vma.start <= addr {
            return Ok(vma);
        }
        if !vma.flags.contains(VmFlags::GROWSDOWN) {
            return Err(ExpandStackError::NoStack);
        }
        if addr < self.mmap_min_addr {
            return Err(ExpandStackError::BelowMmapMinAddr);
        }
        // find_vma(addr) returned `vma`, so `prev.end <= addr`.
        let prev = self.vmas.range(..vma.start).next_back().map(|(_, v)| *v);
        if let Some(prev) = prev {
            let blocks = !prev.flags.contains(VmFlags::GROWSDOWN) && prev.is_accessible();
            if blocks && addr - prev.end < self.stack_guard_gap {
                return Err(ExpandStackError::GuardGap);
            }
        }
        if vma.end - addr > stack_limit_bytes {
            return Err(ExpandStackError::StackLimit);
        }
        let pgoff = vma
            .pgoff
            .checked_sub((vma.start - addr) >> PAGE_SHIFT)
            .ok_or(ExpandStackError::PgoffUnderflow)?;
        let grown = Vma {
            start: addr,
            pgoff,
            ..vma
        };
        let mut window = Vec::with_capacity(2);
        let mut pieces = Vec::with_capacity(2);
        if let Some(prev) = prev.filter(|p| p.end == addr) {
            window.push(prev);
            pieces.push(prev);
        }
        window.push(vma);
        pieces.push(grown);
        let pieces = merge_adjacent(pieces);
        let result = pieces
            .iter()
            .find(|v| v.contains(addr))
            .copied()
            .unwrap_or(grown);
        self.commit(&window, pieces)?;
        Ok(result)
    }

    // ----- get_unmapped_area -----------------------------------------------------

    /// Linux `get_unmapped_area` for a non-fixed mapping of `len` bytes
    /// (rounded up): returns `hint` (rounded down to a page, raised to
    /// `mmap_min_addr`) if that range is free, else the highest free range
    /// below `mmap_base` whose start is a multiple of `align` (top-down,
    /// `arch_get_unmapped_area_topdown`), else a bottom-up search from
    /// [`TASK_UNMAPPED_BASE`]. `hint == 0` means no hint. `align` is
    /// `PAGE_SIZE` (or 0) normally; pass 2 MiB for anonymous mappings of at
    /// least 2 MiB so THP can map them (`thp_get_unmapped_area`); if no
    /// aligned range exists the search falls back to page alignment. Free
    /// ranges keep the guard gap below `VM_GROWSDOWN` VMAs.
    pub fn get_unmapped_area(
        &self,
        hint: u64,
        len: u64,
        align: u64,
    ) -> Result<u64, UnmappedAreaError> {
        if len == 0 {
            return Err(UnmappedAreaError::ZeroLength);
        }
        if align != 0 && !align.is_power_of_two() {
            return Err(UnmappedAreaError::BadAlignment);
        }
        let align = align.max(PAGE_SIZE);
        let len = align_up(len, PAGE_SIZE).ok_or(UnmappedAreaError::TooLarge)?;
        let low = self.mmap_min_addr.max(PAGE_SIZE);
        if len > TASK_SIZE - low.min(TASK_SIZE) {
            return Err(UnmappedAreaError::TooLarge);
        }
        if let Some(addr) = self.hint_fits(hint, len) {
            return Ok(addr);
        }
        let aligns: &[u64] = if align > PAGE_SIZE {
            &[align, PAGE_SIZE]
        } else {
            &[PAGE_SIZE]
        };
        for &a in aligns {
            if let Some(addr) = self.unmapped_area_topdown(low, self.mmap_base, len, a) {
                return Ok(addr);
            }
            if let Some(addr) = self.unmapped_area(TASK_UNMAPPED_BASE.max(low), TASK_SIZE, len, a) {
                return Ok(addr);
            }
        }
        Err(UnmappedAreaError::NoSpace)
    }

    /// x86 `arch_get_unmapped_area` (bottom-up) restricted to `[low, high)`, as for
    /// `MAP_32BIT` (`find_start_end`: 1 GiB .. 2 GiB): `hint` (rounded up to a
    /// page) if `[hint, hint + len)` fits below `high` and is free, else the
    /// lowest free range of `len` bytes (rounded up) in the window. `None` if
    /// there is none.
    pub fn get_unmapped_area_bottomup(&self, hint: u64, len: u64, low: u64, high: u64) -> Option<u64> {
        let len = align_up(len, PAGE_SIZE).filter(|&l| l != 0 && l <= high)?;
        let high = high.min(TASK_SIZE);
        if hint != 0
            && let Some(addr) = align_up(hint, PAGE_SIZE)
            && high.checked_sub(len).is_some_and(|top| addr <= top)
            && addr >= self.mmap_min_addr
            && self.find_vma(addr).is_none_or(|next| addr + len <= next.start_gap(self.stack_guard_gap))
        {
            return Some(addr);
        }
        self.unmapped_area(low.max(self.mmap_min_addr), high, len, PAGE_SIZE)
    }

    /// The hint check of `arch_get_unmapped_area_topdown`.
    fn hint_fits(&self, hint: u64, len: u64) -> Option<u64> {
        if hint == 0 {
            return None;
        }
        let addr = align_down(hint, PAGE_SIZE).max(self.mmap_min_addr);
        let end = addr.checked_add(len).filter(|&e| e <= TASK_SIZE)?;
        match self.find_vma(addr) {
            Some(next) if end > next.start_gap(self.stack_guard_gap) => None,
            _ => Some(addr),
        }
    }

    /// Highest `align`ed `[a, a + len)` inside `[low, high)` that avoids every
    /// VMA and the guard gap below the VMA right above it (Linux
    /// `unmapped_area_topdown`).
    fn unmapped_area_topdown(&self, low: u64, high: u64, len: u64, align: u64) -> Option<u64> {
        let guard = self.stack_guard_gap;
        let mut upper = high;
        if let Some((_, next)) = self.vmas.range(high..).next() {
            upper = upper.min(next.start_gap(guard));
        }
        for (_, v) in self.vmas.range(..high).rev() {
            if let Some(a) = fit_top(v.end.max(low), upper, len, align) {
                return Some(a);
            }
            if v.end <= low {
                return None;
            }
            upper = v.start_gap(guard);
        }
        fit_top(low, upper, len, align)
    }

    /// Lowest `align`ed `[a, a + len)` inside `[low, high)` that avoids every
    /// VMA and the guard gap below the VMA right above it (Linux
    /// `unmapped_area`).
    fn unmapped_area(&self, low: u64, high: u64, len: u64, align: u64) -> Option<u64> {
        let guard = self.stack_guard_gap;
        let mut lower = low;
        if let Some((_, prev)) = self.vmas.range(..low).next_back() {
            lower = lower.max(prev.end);
        }
        for (_, v) in self.vmas.range(low..) {
            if let Some(a) = fit_bottom(lower, v.start_gap(guard).min(high), len, align) {
                return Some(a);
            }
            lower = lower.max(v.end);
            if lower >= high {
                return None;
            }
        }
        fit_bottom(lower, high, len, align)
    }

    // ----- /proc/PID/maps --------------------------------------------------------

    /// Writes the VMAs in the format of Linux's `/proc/PID/maps`
    /// (`show_map_vma`), one line per VMA:
    /// `00400000-00452000 rw-p 00000000 00:00 0                          [heap]`.
    pub fn write_maps<W: fmt::Write>(&self, out: &mut W) -> fmt::Result {
        self.iter().try_for_each(|v| write_map_line(out, v))
    }

    // ----- internals ---------------------------------------------------------

    /// The VMAs a change of `[start, end)` touches or may merge with: the one
    /// containing or ending at `start`, and every one starting in
    /// `[start, end]`.
    fn window(&self, start: u64, end: u64) -> Vec<Vma> {
        let mut w = Vec::new();
        if let Some((_, prev)) = self.vmas.range(..start).next_back()
            && prev.end >= start
        {
            w.push(*prev);
        }
        w.extend(self.vmas.range(start..=end.max(start)).map(|(_, v)| *v));
        w
    }

    /// Replaces the VMAs `old` (all present in the tree) by `new` (sorted,
    /// non-overlapping, covering only addresses `old` spanned plus the range
    /// being mapped), unless that would raise the count above the limit.
    /// This is the only place that mutates `vmas`.
    fn commit(&mut self, old: &[Vma], new: Vec<Vma>) -> Result<(), CountExceeded> {
        let count = self.vmas.len() - old.len() + new.len();
        if count > self.vmas.len() && count > self.max_map_count {
            return Err(CountExceeded);
        }
        for v in old {
            self.vmas.remove(&v.start);
            self.total_vm_pages -= v.nr_pages();
        }
        for v in new {
            self.total_vm_pages += v.nr_pages();
            self.vmas.insert(v.start, v);
        }
        Ok(())
    }
}

/// What happens to the part of a VMA inside the range being changed.
enum Piece {
    /// Nothing changes: the VMA stays whole (no split, as Linux skips VMAs
    /// whose flags would not change).
    Keep,
    /// The part is unmapped.
    Remove,
    /// The part is replaced (new flags).
    Replace(Vma),
}

/// Rebuilds `window` around `[start, end)`: parts outside the range are kept,
/// the part of each VMA inside it becomes what `inside` decides.
fn rebuild<E>(
    window: &[Vma],
    start: u64,
    end: u64,
    mut inside: impl FnMut(Vma) -> Result<Piece, E>,
) -> Result<Vec<Vma>, E> {
    let mut out = Vec::with_capacity(window.len() + 2);
    for v in window {
        let (head, mid, tail) = v.clip3(start, end);
        let piece = match mid {
            Some(mid) => inside(mid)?,
            None => Piece::Keep,
        };
        match piece {
            Piece::Keep => out.push(*v),
            Piece::Remove => out.extend(head.into_iter().chain(tail)),
            Piece::Replace(new) => out.extend(head.into_iter().chain([new]).chain(tail)),
        }
    }
    Ok(out)
}

/// Merges neighbours in a sorted list wherever [`Vma::can_merge_with`] allows.
fn merge_adjacent(pieces: Vec<Vma>) -> Vec<Vma> {
    let mut out: Vec<Vma> = Vec::with_capacity(pieces.len());
    for v in pieces {
        match out.last_mut() {
            Some(last) if last.can_merge_with(&v) => last.end = v.end,
            _ => out.push(v),
        }
    }
    out
}

/// Highest `align`ed start of `len` bytes in `[lo, hi)`.
fn fit_top(lo: u64, hi: u64, len: u64, align: u64) -> Option<u64> {
    let a = align_down(hi.checked_sub(len)?, align);
    (a >= lo && hi > lo).then_some(a)
}

/// Lowest `align`ed start of `len` bytes in `[lo, hi)`.
fn fit_bottom(lo: u64, hi: u64, len: u64, align: u64) -> Option<u64> {
    let a = align_up(lo, align)?;
    (a.checked_add(len)? <= hi).then_some(a)
}

/// Column where `show_map_vma` starts the name (`25 + sizeof(void *) * 6 - 1`).
const MAPS_NAME_COLUMN: usize = 72;

/// A `fmt::Write` that counts the bytes it forwards (for `seq_pad`).
struct Counting<'a, W: fmt::Write> {
    inner: &'a mut W,
    written: usize,
}

impl<W: fmt::Write> fmt::Write for Counting<'_, W> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        self.written += s.len();
        self.inner.write_str(s)
    }
}

/// One `/proc/PID/maps` line.
fn write_map_line<W: fmt::Write>(out: &mut W, v: &Vma) -> fmt::Result {
    use fmt::Write as _;
    let bit = |flag: VmFlags, c: char| if v.flags.contains(flag) { c } else { '-' };
    let shared = if v.flags.intersects(VmFlags::MAYSHARE | VmFlags::SHARED) {
        's'
    } else {
        'p'
    };
    let (offset, major, minor, ino, name) = match v.kind {
        VmaKind::AnonPrivate => (0, 0, 0, 0, None),
        VmaKind::AnonShared(ShmId(id)) => {
            (v.pgoff << PAGE_SHIFT, 0, 1, id, Some("/dev/zero (deleted)"))
        }
        VmaKind::Heap => (0, 0, 0, 0, Some("[heap]")),
        VmaKind::Stack => (0, 0, 0, 0, Some("[stack]")),
        VmaKind::Special(m) => (0, 0, 0, 0, Some(m.name)),
    };
    let mut line = Counting {
        inner: out,
        written: 0,
    };
    write!(
        line,
        "{:08x}-{:08x} {}{}{}{} {:08x} {:02x}:{:02x} {} ",
        v.start,
        v.end,
        bit(VmFlags::READ, 'r'),
        bit(VmFlags::WRITE, 'w'),
        bit(VmFlags::EXEC, 'x'),
        shared,
        offset,
        major,
        minor,
        ino
    )?;
    if let Some(name) = name {
        let pad = MAPS_NAME_COLUMN.saturating_sub(line.written);
        write!(line, "{:pad$} {}", "", name, pad = pad)?;
    }
    line.write_str("\n")
}

#[cfg(test)]
mod tests;
