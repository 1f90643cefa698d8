//! Address and size helpers shared by every memory-management module.
//!
//! Linux counterparts: `PAGE_SIZE`, `PFN_UP`/`PFN_DOWN`, `ALIGN()` and the
//! `pfn_t` type. A page frame number is a [`Pfn`], never a bare `u64`, so a
//! byte address cannot be passed where a frame number is expected.
//! All arithmetic that can overflow on hostile input is checked and returns
//! `None` instead of wrapping.

use core::fmt;

/// log2 of the base page size.
pub const PAGE_SHIFT: u32 = 12;
/// Size of a base page in bytes (4 KiB).
pub const PAGE_SIZE: u64 = 1 << PAGE_SHIFT;

/// A physical page frame number: physical address >> [`PAGE_SHIFT`].
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub struct Pfn(pub u64);

impl Pfn {
    /// The frame that contains physical address `phys`.
    #[inline]
    pub const fn containing(phys: u64) -> Pfn {
        Pfn(phys >> PAGE_SHIFT)
    }

    /// Physical address of the first byte of the frame.
    #[inline]
    pub const fn phys_addr(self) -> u64 {
        self.0 << PAGE_SHIFT
    }
}

impl fmt::Display for Pfn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "pfn {:#x}", self.0)
    }
}

/// Rounds `value` down to a multiple of `align` (a power of two).
pub const fn align_down(value: u64, align: u64) -> u64 {
    debug_assert!(align.is_power_of_two());
    value & !(align - 1)
}

/// Rounds `value` up to a multiple of `align` (a power of two);
/// `None` if the result does not fit in a `u64`.
pub const fn align_up(value: u64, align: u64) -> Option<u64> {
    debug_assert!(align.is_power_of_two());
    match value.checked_add(align - 1) {
        Some(v) => Some(v & !(align - 1)),
        None => None,
    }
}

/// Whether `value` is a multiple of `align` (a power of two).
pub const fn is_aligned(value: u64, align: u64) -> bool {
    value & (align - 1) == 0
}

/// Frames fully contained in the byte range `[start, end)`: the first frame
/// starts at or after `start`, the last ends at or before `end` (Linux
/// `PFN_UP(start)..PFN_DOWN(end)`). Empty if the range holds no whole frame.
pub fn whole_frames(start: u64, end: u64) -> core::ops::Range<u64> {
    let first = match align_up(start, PAGE_SIZE) {
        Some(a) => a >> PAGE_SHIFT,
        None => return 0..0,
    };
    let last = end >> PAGE_SHIFT;
    if first >= last { 0..0 } else { first..last }
}

/// A byte count printed the way `free -h` does: `512 B`, `4.0 KiB`,
/// `1.5 GiB` (one decimal above KiB).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct HumanBytes(pub u64);

impl fmt::Display for HumanBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const UNITS: [&str; 6] = ["KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
        if self.0 < 1024 {
            return write!(f, "{} B", self.0);
        }
        let mut unit = 0;
        let mut scaled = self.0 as u128 * 10 / 1024; // tenths of a KiB
        while scaled >= 10 * 1024 && unit + 1 < UNITS.len() {
            scaled /= 1024;
            unit += 1;
        }
        write!(f, "{}.{} {}", scaled / 10, scaled % 10, UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::format;

    #[test]
    fn pfn_round_trips_page_aligned_addresses() {
        assert_eq!(Pfn::containing(0x1000).0, 1);
        assert_eq!(Pfn::containing(0x1fff).0, 1);
        assert_eq!(Pfn(0x12345).phys_addr(), 0x1234_5000);
        assert_eq!(format!("{}", Pfn(0x10)), "pfn 0x10");
    }

    #[test]
    fn align_helpers() {
        assert_eq!(align_down(0x1fff, PAGE_SIZE), 0x1000);
        assert_eq!(align_up(0x1001, PAGE_SIZE), Some(0x2000));
        assert_eq!(align_up(0x2000, PAGE_SIZE), Some(0x2000));
        assert_eq!(align_up(u64::MAX - 10, PAGE_SIZE), None);
        assert!(is_aligned(0x20_0000, 0x20_0000));
        assert!(!is_aligned(0x20_1000, 0x20_0000));
    }

    #[test]
    fn whole_frames_excludes_partial_frames() {
        assert_eq!(whole_frames(0, 0x3000), 0..3);
        assert_eq!(whole_frames(0x800, 0x3000), 1..3);
        assert_eq!(whole_frames(0x800, 0x2fff), 1..2);
        assert_eq!(whole_frames(0x800, 0x1800), 0..0);
        assert_eq!(whole_frames(0x3000, 0x1000), 0..0);
        assert_eq!(whole_frames(u64::MAX - 5, u64::MAX), 0..0);
    }

    #[test]
    fn human_bytes_formats_like_free_h() {
        assert_eq!(format!("{}", HumanBytes(512)), "512 B");
        assert_eq!(format!("{}", HumanBytes(4096)), "4.0 KiB");
        assert_eq!(format!("{}", HumanBytes(1536 * 1024 * 1024)), "1.5 GiB");
        assert_eq!(format!("{}", HumanBytes(u64::MAX)), "15.9 EiB");
    }
}
