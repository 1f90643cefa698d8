//! The x86_64 virtual address-space layout (Linux
//! `Documentation/arch/x86/x86_64/mm.rst`): where the kernel half starts,
//! where the image is linked, and how far the direct map always reaches.
//! The vmalloc range is the `mm` crate's (`mm::vmalloc::VMALLOC_START`).

/// Start of the kernel half of the address space (PML4 entries 256..511).
pub const KERNEL_HALF_START: u64 = 0xffff_8000_0000_0000;

/// The kernel image is linked for -2 GiB, like Linux's `__START_KERNEL_map`;
/// the region runs to the top of the address space.
pub const KERNEL_IMAGE_BASE: u64 = 0xffff_ffff_8000_0000;

/// The direct map always reaches this far: the local and I/O APICs and the
/// ACPI tables QEMU provides live below 4 GiB.
pub const DIRECT_MAP_MIN_END: u64 = 4 << 30;
