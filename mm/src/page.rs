//! Per-frame metadata: `struct page`, done right.
//!
//! Linux counterpart: `struct page` in `include/linux/mm_types.h`, after Matthew
//! Wilcox's clean-up (LSFMM 2018): the fields that belong to the page's owner are
//! separated from the ones that belong to the allocator, and the state of a page is
//! an explicit type ([`PageState`]) instead of overloaded unions. One [`PageMeta`]
//! (32 bytes, Linux: 64) describes one 4 KiB frame; all fields are atomics so the
//! array can be shared as `&[PageMeta]` and the lock-free deferred-free list can link
//! through it. See `docs/page_alloc.md` for the layout table.
//!
//! An all-zero `PageMeta` is valid (it reads as [`PageState::Reserved`]), so the
//! kernel may carve the array out of zeroed memory.

use core::sync::atomic::{AtomicU32, AtomicU64, Ordering::Relaxed};

use crate::pageblock::MigrateType;

/// Sentinel "no page" in the u32-index links.
pub(crate) const NONE: u32 = u32::MAX;

// `flags` word layout.
const KIND_MASK: u32 = 0xf;
const ORDER_SHIFT: u32 = 4;
const ORDER_MASK: u32 = 0xf << ORDER_SHIFT;
const MT_SHIFT: u32 = 8;
const MT_MASK: u32 = 0x7 << MT_SHIFT;
const MOVABLE_SHIFT: u32 = 11;
const MOVABLE_MASK: u32 = 0x7 << MOVABLE_SHIFT;

/// Raw state tags stored in the low bits of `flags`.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[repr(u32)]
pub(crate) enum Kind {
    Reserved = 0,
    Tail = 1,
    Buddy = 2,
    Pcp = 3,
    Deferred = 4,
    Allocated = 5,
    PageTable = 6,
    Anon = 7,
    Slab = 8,
    Vmalloc = 9,
}

impl Kind {
    #[inline]
    const fn from_bits(bits: u32) -> Kind {
        match bits & KIND_MASK {
            1 => Kind::Tail,
            2 => Kind::Buddy,
            3 => Kind::Pcp,
            4 => Kind::Deferred,
            5 => Kind::Allocated,
            6 => Kind::PageTable,
            7 => Kind::Anon,
            8 => Kind::Slab,
            9 => Kind::Vmalloc,
            _ => Kind::Reserved,
        }
    }

    /// Head of a block that an owner holds (may be passed to `free_pages`).
    #[inline]
    pub(crate) const fn is_owned(self) -> bool {
        matches!(self, Kind::Allocated | Kind::PageTable | Kind::Anon | Kind::Slab | Kind::Vmalloc)
    }
}

/// Reverse-map information of an anonymous user page: which address space maps it
/// at which virtual page (enough for migration to find and rewrite the PTE).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Rmap {
    /// Address-space id (the kernel's mm / PCID).
    pub asid: u16,
    /// Virtual page number (virtual address >> 12, 36 bits on 4-level paging).
    pub vpn: u64,
}

const VPN_MASK: u64 = (1 << 48) - 1;

impl Rmap {
    #[inline]
    const fn pack(self) -> u64 {
        (self.asid as u64) << 48 | (self.vpn & VPN_MASK)
    }
    #[inline]
    const fn unpack(word: u64) -> Rmap {
        Rmap { asid: (word >> 48) as u16, vpn: word & VPN_MASK }
    }
}

/// Typed view of what a frame is used for (read with [`PageMeta::state`]).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum PageState {
    /// Not managed by the allocator (hole, kernel image, firmware, the metadata itself).
    Reserved,
    /// Inside a larger free or allocated block whose head is another frame.
    Tail,
    /// Head of a free block of `2^order` frames in the buddy free lists.
    Free { order: u8 },
    /// Free, cached on a per-CPU list.
    PcpFree { order: u8 },
    /// Freed from a context that could not take the zone lock; waits on the deferred list.
    DeferredFree { order: u8 },
    /// Allocated; the owner has not declared a use.
    Allocated { order: u8, refcount: u32, migratetype: MigrateType },
    /// A page-table page with `live_entries` present entries.
    PageTable { live_entries: u32 },
    /// An anonymous user page, mapped `mapcount` times, first mapping at `rmap`.
    Anon { mapcount: u32, rmap: Rmap, movable: bool },
    /// The head page of a slab of cache `cache` (the slab's object counts live in
    /// its on-slab descriptor, `slab::SlabHeader`, which the slab's locks protect).
    Slab { cache: u64 },
    /// Backing page of vmalloc area `area`.
    Vmalloc { area: u64 },
}

/// Why an owner-side state transition was refused.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum PageStateError {
    /// The page is not in the state this transition starts from.
    WrongState,
    /// A counter would overflow or drop below zero.
    CountOverflow,
}

/// An identifier returned by `PageAlloc::register_movable_ops`.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct MovableOpsId(pub(crate) u8);

/// Metadata of one 4 KiB frame (Linux `struct page`). See `docs/page_alloc.md`.
#[repr(C)]
#[derive(Debug, Default)]
pub struct PageMeta {
    /// kind | order | allocation migrate type | movable-ops id. Written by the
    /// allocator on alloc/free, by the owner through the typed transitions below.
    flags: AtomicU32,
    /// References held by owners (1 after allocation); 0 while free.
    refcount: AtomicU32,
    /// Free: next block in the buddy / per-CPU / deferred list.
    /// Owned: owner counter (page-table live entries, anon mapcount).
    lru_next: AtomicU32,
    /// Free: previous block in the buddy list. Owned: free for the owner.
    lru_prev: AtomicU32,
    /// Owned: owner word (anon rmap, slab cache, vmalloc area). Free: unused.
    private: AtomicU64,
    /// Allocator only: on the first frame of a page block, the block's migrate type.
    pageblock: AtomicU32,
    /// Reserved for later (memcg id, NUMA node). Always 0 today.
    _reserved: AtomicU32,
}

const _: () = assert!(core::mem::size_of::<PageMeta>() <= 32);

impl PageMeta {
    #[inline]
    pub const fn new() -> PageMeta {
        PageMeta {
            flags: AtomicU32::new(0),
            refcount: AtomicU32::new(0),
            lru_next: AtomicU32::new(0),
            lru_prev: AtomicU32::new(0),
            private: AtomicU64::new(0),
            pageblock: AtomicU32::new(0),
            _reserved: AtomicU32::new(0),
        }
    }

    /// What the frame is used for right now (a snapshot).
    #[inline]
    pub fn state(&self) -> PageState {
        let f = self.flags.load(Relaxed);
        let order = ((f & ORDER_MASK) >> ORDER_SHIFT) as u8;
        match Kind::from_bits(f) {
            Kind::Reserved => PageState::Reserved,
            Kind::Tail => PageState::Tail,
            Kind::Buddy => PageState::Free { order },
            Kind::Pcp => PageState::PcpFree { order },
            Kind::Deferred => PageState::DeferredFree { order },
            Kind::Allocated => PageState::Allocated {
                order,
                refcount: self.refcount.load(Relaxed),
                migratetype: MigrateType::from_bits((f & MT_MASK) >> MT_SHIFT),
            },
            Kind::PageTable => PageState::PageTable { live_entries: self.lru_next.load(Relaxed) },
            Kind::Anon => PageState::Anon {
                mapcount: self.lru_next.load(Relaxed),
                rmap: Rmap::unpack(self.private.load(Relaxed)),
                movable: f & MOVABLE_MASK != 0,
            },
            Kind::Slab => PageState::Slab { cache: self.private.load(Relaxed) },
            Kind::Vmalloc => PageState::Vmalloc { area: self.private.load(Relaxed) },
        }
    }

    /// Current reference count (Linux `page_ref_count`).
    #[inline]
    pub fn refcount(&self) -> u32 {
        self.refcount.load(Relaxed)
    }

    // ---- owner-side transitions (the page must be the head of an owned block) ----

    #[inline]
    fn transition(&self, from: &[Kind], to: Kind) -> Result<(), PageStateError> {
        self.flags
            .fetch_update(Relaxed, Relaxed, |f| {
                from.contains(&Kind::from_bits(f)).then_some((f & !KIND_MASK) | to as u32)
            })
            .map(|_| ())
            .map_err(|_| PageStateError::WrongState)
    }

    #[inline]
    fn add_count(&self, kind: Kind, delta: i32) -> Result<u32, PageStateError> {
        if self.kind() != kind {
            return Err(PageStateError::WrongState);
        }
        let new = self
            .lru_next
            .fetch_update(Relaxed, Relaxed, |c| c.checked_add_signed(delta))
            .map_err(|_| PageStateError::CountOverflow)?;
        Ok(new.wrapping_add_signed(delta))
    }

    /// Declares an allocated page a page-table page with no live entries.
    #[inline]
    pub fn set_page_table(&self) -> Result<(), PageStateError> {
        self.transition(&[Kind::Allocated], Kind::PageTable)?;
        self.lru_next.store(0, Relaxed);
        Ok(())
    }

    /// Adds `delta` to the live-entry count of a page-table page; returns the new count.
    #[inline]
    pub fn pt_add_entries(&self, delta: i32) -> Result<u32, PageStateError> {
        self.add_count(Kind::PageTable, delta)
    }

    /// Declares an allocated page an anonymous user page mapped once at `rmap`.
    #[inline]
    pub fn set_anon(&self, rmap: Rmap) -> Result<(), PageStateError> {
        self.transition(&[Kind::Allocated], Kind::Anon)?;
        self.private.store(rmap.pack(), Relaxed);
        self.lru_next.store(1, Relaxed);
        Ok(())
    }

    /// Adds `delta` to the mapcount of an anonymous page; returns the new mapcount.
    #[inline]
    pub fn anon_add_mapcount(&self, delta: i32) -> Result<u32, PageStateError> {
        self.add_count(Kind::Anon, delta)
    }

    /// Declares an allocated page a slab page of `cache`.
    #[inline]
    pub fn set_slab(&self, cache: u64) -> Result<(), PageStateError> {
        self.transition(&[Kind::Allocated], Kind::Slab)?;
        self.private.store(cache, Relaxed);
        self.lru_next.store(0, Relaxed);
        Ok(())
    }

    /// Declares an allocated page a vmalloc backing page of `area`.
    #[inline]
    pub fn set_vmalloc(&self, area: u64) -> Result<(), PageStateError> {
        self.transition(&[Kind::Allocated], Kind::Vmalloc)?;
        self.private.store(area, Relaxed);
        Ok(())
    }

    /// Returns a page-table / anon / slab / vmalloc page to plain "allocated" and
    /// clears its movable-ops id (Linux `__ClearPageMovable`), so compaction no
    /// longer asks the former owner to move it.
    #[inline]
    pub fn clear_owner_state(&self) -> Result<(), PageStateError> {
        self.flags
            .fetch_update(Relaxed, Relaxed, |f| {
                matches!(Kind::from_bits(f), Kind::PageTable | Kind::Anon | Kind::Slab | Kind::Vmalloc)
                    .then_some((f & !(KIND_MASK | MOVABLE_MASK)) | Kind::Allocated as u32)
            })
            .map_err(|_| PageStateError::WrongState)?;
        self.lru_next.store(0, Relaxed);
        self.private.store(0, Relaxed);
        Ok(())
    }

    // ---- allocator side ----

    #[inline]
    pub(crate) fn kind(&self) -> Kind {
        Kind::from_bits(self.flags.load(Relaxed))
    }
    #[inline]
    pub(crate) fn order(&self) -> usize {
        ((self.flags.load(Relaxed) & ORDER_MASK) >> ORDER_SHIFT) as usize
    }
    #[inline]
    pub(crate) fn alloc_migratetype(&self) -> MigrateType {
        MigrateType::from_bits((self.flags.load(Relaxed) & MT_MASK) >> MT_SHIFT)
    }
    #[inline]
    pub(crate) fn movable_ops(&self) -> Option<MovableOpsId> {
        match (self.flags.load(Relaxed) & MOVABLE_MASK) >> MOVABLE_SHIFT {
            0 => None,
            id => Some(MovableOpsId(id as u8 - 1)),
        }
    }
    /// Marks the page movable through `ops` (Linux `__SetPageMovable`). Owner side.
    #[inline]
    pub fn set_movable(&self, ops: MovableOpsId) -> Result<(), PageStateError> {
        self.flags
            .fetch_update(Relaxed, Relaxed, |f| {
                Kind::from_bits(f).is_owned().then_some((f & !MOVABLE_MASK) | ((ops.0 as u32 + 1) << MOVABLE_SHIFT))
            })
            .map(|_| ())
            .map_err(|_| PageStateError::WrongState)
    }

    /// Sets kind and order, clearing migrate type and movable bits.
    #[inline]
    pub(crate) fn set_kind(&self, kind: Kind, order: usize) {
        self.flags.store(kind as u32 | (order as u32) << ORDER_SHIFT, Relaxed);
    }
    /// Compare-and-set of the whole state word from an owned kind to `kind`;
    /// returns the old order on success. Guards against double free.
    #[inline]
    pub(crate) fn take_owned(&self, kind: Kind) -> Option<usize> {
        self.flags
            .fetch_update(Relaxed, Relaxed, |f| {
                Kind::from_bits(f).is_owned().then_some((f & (ORDER_MASK | MT_MASK)) | kind as u32)
            })
            .ok()
            .map(|f| ((f & ORDER_MASK) >> ORDER_SHIFT) as usize)
    }
    /// Prepares a freshly allocated head (Linux `prep_new_page`).
    #[inline]
    pub(crate) fn prep_allocated(&self, order: usize, mt: MigrateType) {
        self.refcount.store(1, Relaxed);
        self.lru_next.store(0, Relaxed);
        self.lru_prev.store(0, Relaxed);
        self.private.store(0, Relaxed);
        self.flags.store(
            Kind::Allocated as u32 | (order as u32) << ORDER_SHIFT | (mt as u32) << MT_SHIFT,
            Relaxed,
        );
    }
    /// Copies the owner's view (kind, counters, rmap, movable ops) from `old` (migration).
    #[inline]
    pub(crate) fn copy_owner_state(&self, old: &PageMeta) {
        self.refcount.store(old.refcount.load(Relaxed), Relaxed);
        self.lru_next.store(old.lru_next.load(Relaxed), Relaxed);
        self.lru_prev.store(old.lru_prev.load(Relaxed), Relaxed);
        self.private.store(old.private.load(Relaxed), Relaxed);
        self.flags.store(old.flags.load(Relaxed), Relaxed);
    }
    /// The old head after a committed migration: the owner's state went to the
    /// new page ([`copy_owner_state`](Self::copy_owner_state)) and its handle was
    /// traded in; back to plain `Allocated` (order and migrate type kept, no
    /// movable-ops id) so it can be freed (Linux: the old folio loses its mapping
    /// and its last reference).
    #[inline]
    pub(crate) fn clear_migrated(&self) {
        let f = self.flags.load(Relaxed);
        self.lru_next.store(0, Relaxed);
        self.lru_prev.store(0, Relaxed);
        self.private.store(0, Relaxed);
        self.flags.store(Kind::Allocated as u32 | (f & (ORDER_MASK | MT_MASK)), Relaxed);
    }
    #[inline]
    pub(crate) fn reset(&self) {
        self.flags.store(0, Relaxed);
        self.refcount.store(0, Relaxed);
        self.lru_next.store(0, Relaxed);
        self.lru_prev.store(0, Relaxed);
        self.private.store(0, Relaxed);
        self.pageblock.store(0, Relaxed);
        self._reserved.store(0, Relaxed);
    }
    #[inline]
    pub(crate) fn clear_refcount(&self) {
        self.refcount.store(0, Relaxed);
    }
    #[inline]
    pub(crate) fn next(&self) -> u32 {
        self.lru_next.load(Relaxed)
    }
    #[inline]
    pub(crate) fn set_next(&self, v: u32) {
        self.lru_next.store(v, Relaxed)
    }
    #[inline]
    pub(crate) fn prev(&self) -> u32 {
        self.lru_prev.load(Relaxed)
    }
    #[inline]
    pub(crate) fn set_prev(&self, v: u32) {
        self.lru_prev.store(v, Relaxed)
    }
    #[inline]
    pub(crate) fn block_migratetype(&self) -> MigrateType {
        MigrateType::from_bits(self.pageblock.load(Relaxed))
    }
    /// The raw block type (`MigrateType as u32`), for the free fast path.
    #[inline(always)]
    pub(crate) fn block_migratetype_raw(&self) -> u32 {
        self.pageblock.load(Relaxed)
    }
    #[inline]
    pub(crate) fn set_block_migratetype(&self, mt: MigrateType) {
        self.pageblock.store(mt as u32, Relaxed)
    }
    /// Nonzero when the owner's counter (mapcount / live entries) says the page is in use.
    #[inline]
    pub(crate) fn owner_busy(&self) -> bool {
        matches!(self.kind(), Kind::PageTable | Kind::Anon) && self.lru_next.load(Relaxed) != 0
    }
    /// Whether the head of a block of `order` may be freed (Linux `free_page_is_bad`,
    /// inverted): owned, of that order, and not still mapped / holding live entries.
    /// One load of `flags` (the free fast path); `free_bad_reason` says why not.
    #[inline(always)]
    pub(crate) fn free_ok(&self, order: usize) -> bool {
        let f = self.flags.load(Relaxed);
        // Common case first: plain `Allocated` of this order (no owner counter).
        if f & (KIND_MASK | ORDER_MASK) == Kind::Allocated as u32 | (order as u32) << ORDER_SHIFT {
            return true;
        }
        let kind = Kind::from_bits(f);
        kind.is_owned()
            && ((f & ORDER_MASK) >> ORDER_SHIFT) as usize == order
            && !(matches!(kind, Kind::PageTable | Kind::Anon) && self.lru_next.load(Relaxed) != 0)
    }
    /// Why [`PageMeta::free_ok`] refused (the bad-page report).
    #[cold]
    pub(crate) fn free_bad_reason(&self, order: usize) -> Option<&'static str> {
        if !self.kind().is_owned() {
            Some("not allocated (double free?)")
        } else if self.order() != order {
            Some("order mismatch")
        } else if self.owner_busy() {
            Some("still mapped / has live entries")
        } else {
            None
        }
    }
}

/// Frames needed to hold the metadata of `nr_frames` frames (round up).
#[inline]
pub const fn metadata_frames(nr_frames: u64) -> u64 {
    let bytes = nr_frames * core::mem::size_of::<PageMeta>() as u64;
    bytes.div_ceil(crate::addr::PAGE_SIZE)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_and_zero_state() {
        assert_eq!(core::mem::size_of::<PageMeta>(), 32);
        assert_eq!(PageMeta::new().state(), PageState::Reserved);
        assert_eq!(metadata_frames(1 << 18), 2048); // 1 GiB -> 8 MiB of metadata
        assert_eq!(metadata_frames(1), 1);
    }

    #[test]
    fn owner_transitions() {
        let m = PageMeta::new();
        m.prep_allocated(0, MigrateType::Movable);
        assert!(matches!(m.state(), PageState::Allocated { order: 0, refcount: 1, migratetype: MigrateType::Movable }));
        m.set_page_table().unwrap();
        assert_eq!(m.pt_add_entries(3), Ok(3));
        assert_eq!(m.pt_add_entries(-4), Err(PageStateError::CountOverflow));
        assert_eq!(m.state(), PageState::PageTable { live_entries: 3 });
        assert!(m.owner_busy());
        assert_eq!(m.set_anon(Rmap { asid: 1, vpn: 2 }), Err(PageStateError::WrongState));
        m.pt_add_entries(-3).unwrap();
        m.clear_owner_state().unwrap();
        let r = Rmap { asid: 7, vpn: 0xf_ffff_ffff };
        m.set_anon(r).unwrap();
        m.set_movable(MovableOpsId(2)).unwrap();
        assert_eq!(m.state(), PageState::Anon { mapcount: 1, rmap: r, movable: true });
        assert_eq!(m.movable_ops(), Some(MovableOpsId(2)));
        m.anon_add_mapcount(-1).unwrap();
        m.clear_owner_state().unwrap();
        assert_eq!(m.movable_ops(), None, "clearing the owner state clears the movable id");
        m.set_anon(r).unwrap();
        m.set_movable(MovableOpsId(2)).unwrap();
        m.clear_migrated();
        assert!(matches!(m.state(), PageState::Allocated { order: 0, .. }));
        assert_eq!(m.movable_ops(), None);
        assert_eq!(m.take_owned(Kind::Deferred), Some(0));
        assert_eq!(m.take_owned(Kind::Deferred), None, "double free is refused");
    }
}
