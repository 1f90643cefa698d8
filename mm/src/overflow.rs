//! Overflow-checked allocation sizes and the kvmalloc policy.
//!
//! Linux counterparts: `include/linux/overflow.h` (`array_size`, `array3_size`,
//! `struct_size`, `flex_array_size`, `size_add`, `size_mul`) and the flag policy of
//! `kvmalloc_node` in `mm/util.c` / `mm/slub.c` (`kmalloc_gfp_adjust`, the vmalloc
//! fallback conditions). Linux saturates to `SIZE_MAX` so the allocation fails;
//! here every helper returns `None` on overflow, and callers turn that into an
//! allocation error instead of a short buffer.
//!
//! The kernel glues kmalloc (`slab`) and vmalloc together into `kvmalloc`:
//!
//! ```text
//! let bytes = array_size(n, size).ok_or(Overflow)?;          // kvmalloc_array
//! match kmalloc(bytes, kvmalloc_gfp_for_kmalloc(gfp, bytes)) {
//!     Ok(p) => Ok(p),
//!     Err(e) => match kvmalloc_fallback(gfp, bytes) {
//!         Ok(vgfp) => vmalloc(bytes, vgfp, caller),          // caller's flags, NOFAIL kept
//!         Err(_) => Err(e),
//!     },
//! }
//! // kvfree: KvmallocPath::of(addr) picks vfree or kfree.
//! ```

use crate::addr::PAGE_SIZE;
use crate::gfp::Gfp;
use crate::pgtable::VirtAddr;
use crate::vmalloc::is_vmalloc_addr;

/// Linux `size_mul`: `a * b`, `None` on overflow.
pub const fn size_mul(a: usize, b: usize) -> Option<usize> {
    a.checked_mul(b)
}

/// Linux `size_add`: `a + b`, `None` on overflow.
pub const fn size_add(a: usize, b: usize) -> Option<usize> {
    a.checked_add(b)
}

/// Linux `array_size(n, size)`: bytes of `n` elements of `size` bytes.
pub const fn array_size(n: usize, size: usize) -> Option<usize> {
    n.checked_mul(size)
}

/// Linux `array3_size(a, b, c)`.
pub const fn array3_size(a: usize, b: usize, c: usize) -> Option<usize> {
    match a.checked_mul(b) {
        Some(ab) => ab.checked_mul(c),
        None => None,
    }
}

/// Linux `flex_array_size(p, member, n)`: bytes of the trailing array alone.
pub const fn flex_array_size(n: usize, elem_size: usize) -> Option<usize> {
    n.checked_mul(elem_size)
}

/// Linux `struct_size(p, member, n)`: a `header_size`-byte header followed by `n`
/// elements of `elem_size` bytes.
pub const fn struct_size(header_size: usize, n: usize, elem_size: usize) -> Option<usize> {
    match n.checked_mul(elem_size) {
        Some(tail) => header_size.checked_add(tail),
        None => None,
    }
}

/// [`struct_size`] for Rust types: `size_of::<H>() + n * size_of::<E>()`.
///
/// With `#[repr(C)]` and a trailing `[E; 0]` this is Linux's layout; the kernel
/// must still round up to `align_of` when it places the header itself.
pub const fn struct_size_of<H, E>(n: usize) -> Option<usize> {
    struct_size(core::mem::size_of::<H>(), n, core::mem::size_of::<E>())
}

/// Largest request kvmalloc passes on to vmalloc (Linux: `INT_MAX`).
pub const KVMALLOC_MAX_SIZE: usize = i32::MAX as usize;

/// Which allocator a kvmalloc pointer came from.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum KvmallocPath {
    /// Physically contiguous, from the slab / page allocator: free with kfree.
    Kmalloc,
    /// Virtually contiguous, from vmalloc: free with vfree.
    Vmalloc,
}

impl KvmallocPath {
    /// Linux `kvfree`'s test (`is_vmalloc_addr`).
    pub fn of(addr: VirtAddr) -> KvmallocPath {
        if is_vmalloc_addr(addr) { KvmallocPath::Vmalloc } else { KvmallocPath::Kmalloc }
    }
}

/// Why kvmalloc does not fall back to vmalloc after kmalloc failed.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum NoFallback {
    /// At most a page: kmalloc's answer is final (a page is never worth vmalloc).
    SmallSize,
    /// The caller cannot block, and vmalloc may need to (Linux refuses these too).
    NonBlocking,
    /// Larger than [`KVMALLOC_MAX_SIZE`] (Linux warns unless `__GFP_NOWARN`).
    TooLarge,
}

/// Linux `kmalloc_gfp_adjust` (5.16 form): the flags for kvmalloc's kmalloc
/// attempt. Above a page: add `__GFP_NOWARN` (the fallback exists), add
/// `__GFP_NORETRY` unless the caller asked for `__GFP_RETRY_MAYFAIL` (don't
/// reclaim hard for contiguity), and drop `__GFP_NOFAIL` (the vmalloc fallback
/// implements it). Up to a page the flags pass unchanged.
pub fn kvmalloc_gfp_for_kmalloc(gfp: Gfp, size: usize) -> Gfp {
    if size as u64 <= PAGE_SIZE {
        return gfp;
    }
    let mut g = gfp | Gfp::NOWARN;
    if !g.contains(Gfp::RETRY_MAYFAIL) {
        g |= Gfp::NORETRY;
    }
    g - Gfp::NOFAIL
}

/// Whether kvmalloc falls back to vmalloc after kmalloc failed, and with which
/// flags: the caller's own, unchanged (vmalloc honours all of them, which is the
/// point of Michal Hocko's 2021 series; no more "must be GFP_KERNEL-compatible").
pub fn kvmalloc_fallback(gfp: Gfp, size: usize) -> Result<Gfp, NoFallback> {
    if size as u64 <= PAGE_SIZE {
        Err(NoFallback::SmallSize)
    } else if !crate::gfp::gfpflags_allow_blocking(gfp) {
        Err(NoFallback::NonBlocking)
    } else if size > KVMALLOC_MAX_SIZE {
        Err(NoFallback::TooLarge)
    } else {
        Ok(gfp)
    }
}

/// The path kvmalloc tries first (always kmalloc, as in Linux: contiguous memory
/// fragments the system less than vmalloc), with the flags for it.
pub fn kvmalloc_first(gfp: Gfp, size: usize) -> (KvmallocPath, Gfp) {
    (KvmallocPath::Kmalloc, kvmalloc_gfp_for_kmalloc(gfp, size))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gfp::*;

    #[test]
    fn overflow_array_and_struct_size() {
        assert_eq!(array_size(10, 8), Some(80));
        assert_eq!(array_size(usize::MAX / 2 + 1, 2), None);
        assert_eq!(array_size(0, usize::MAX), Some(0));
        assert_eq!(array3_size(2, 3, 4), Some(24));
        assert_eq!(array3_size(usize::MAX, 2, 0), None, "the first product already overflows");
        assert_eq!(struct_size(16, 4, 8), Some(48));
        assert_eq!(struct_size(16, usize::MAX / 8, 8), None, "header pushes it over");
        assert_eq!(struct_size(16, usize::MAX / 4, 8), None, "trailing array overflows");
        assert_eq!(flex_array_size(3, 5), Some(15));
        assert_eq!(size_add(usize::MAX, 1), None);
        assert_eq!(size_mul(1 << 40, 1 << 30), None);
        #[repr(C)]
        struct Hdr {
            _len: u64,
            _flags: u32,
        }
        assert_eq!(struct_size_of::<Hdr, u32>(3), Some(16 + 12));
        assert_eq!(struct_size_of::<Hdr, u64>(usize::MAX), None);
    }

    #[test]
    fn overflow_kvmalloc_kmalloc_flags() {
        // Small: unchanged.
        assert_eq!(kvmalloc_gfp_for_kmalloc(GFP_KERNEL | __GFP_NOFAIL, 4096), GFP_KERNEL | __GFP_NOFAIL);
        // Multi-page: quiet, no hard retry, NOFAIL left to the vmalloc fallback.
        let g = kvmalloc_gfp_for_kmalloc(GFP_KERNEL | __GFP_NOFAIL, 4097);
        assert_eq!(g, GFP_KERNEL | __GFP_NOWARN | __GFP_NORETRY);
        // RETRY_MAYFAIL callers want contiguity badly enough: no NORETRY.
        let g = kvmalloc_gfp_for_kmalloc(GFP_NOFS | __GFP_RETRY_MAYFAIL, 1 << 20);
        assert_eq!(g, GFP_NOFS | __GFP_RETRY_MAYFAIL | __GFP_NOWARN);
        // The caller's context flags survive.
        assert!(!kvmalloc_gfp_for_kmalloc(GFP_NOIO, 1 << 16).intersects(__GFP_IO | __GFP_FS));
        assert_eq!(kvmalloc_first(GFP_KERNEL, 100), (KvmallocPath::Kmalloc, GFP_KERNEL));
    }

    #[test]
    fn overflow_kvmalloc_fallback_policy() {
        assert_eq!(kvmalloc_fallback(GFP_KERNEL, 4096), Err(NoFallback::SmallSize));
        assert_eq!(kvmalloc_fallback(GFP_NOFS | __GFP_NOFAIL, 8192), Ok(GFP_NOFS | __GFP_NOFAIL));
        assert_eq!(kvmalloc_fallback(GFP_NOIO, 8192), Ok(GFP_NOIO));
        assert_eq!(kvmalloc_fallback(GFP_ATOMIC, 8192), Err(NoFallback::NonBlocking));
        assert_eq!(kvmalloc_fallback(GFP_NOWAIT, 8192), Err(NoFallback::NonBlocking));
        assert_eq!(kvmalloc_fallback(GFP_KERNEL, KVMALLOC_MAX_SIZE + 1), Err(NoFallback::TooLarge));
    }

    #[test]
    fn overflow_kvfree_path_by_address() {
        use crate::vmalloc::{VMALLOC_END, VMALLOC_START};
        let va = |x| VirtAddr::try_new(x).unwrap();
        assert_eq!(KvmallocPath::of(va(VMALLOC_START)), KvmallocPath::Vmalloc);
        assert_eq!(KvmallocPath::of(va(VMALLOC_END - 4096)), KvmallocPath::Vmalloc);
        assert_eq!(KvmallocPath::of(va(VMALLOC_END)), KvmallocPath::Kmalloc);
        assert_eq!(KvmallocPath::of(va(0xffff_8880_0000_1000)), KvmallocPath::Kmalloc);
    }
}
