//! Mapping the vDSO into every new process (Linux
//! `arch/x86/entry/vdso/vma.c`: `init_vdso_image`, `map_vdso`).
//!
//! At boot [`init`] takes two kernel pages: `[vvar]` (the clock parameters,
//! [`VdsoData`], written only by the kernel) and `[vdso]` (the ELF image
//! built by `exec::vdso` around the code of `arch/x86_64/vdso.rs`). Each exec
//! maps both at fixed addresses as special VMAs ([`VmaKind::Special`]):
//! `[vvar]` read-only, `[vdso]` read + execute, right above it; the fault
//! handler maps the kernel's frames on first touch, and the entries do not
//! own them. The ELF header's address goes to the program in the auxv as
//! `AT_SYSINFO_EHDR`.
//!
//! Placement: Linux 6.1 puts the pair at a random page near the stack; here
//! `[vvar]` starts at `DEFAULT_MMAP_BASE`, in the gap Linux keeps between the
//! top-down mmap area and the stack, so it never moves other mappings.

use spin::Once;

use mm::addr::Pfn;
use mm::errno::Errno;
use mm::gfp::{GFP_KERNEL, __GFP_ZERO};
use mm::vma::{MapFixed, SpecialMapping, VmFlags, VmaKind, DEFAULT_MMAP_BASE};

use crate::arch::x86_64::vdso::{self as code, VdsoData};
use crate::arch::x86_64::{memmap, time};
use crate::entry::sys_mm::with_mm;
use crate::memory::page_alloc::page_alloc;

/// Start of `[vvar]` in every process; `[vdso]` follows one page later.
pub const VVAR_START: u64 = DEFAULT_MMAP_BASE;
/// The vDSO's ELF header (`AT_SYSINFO_EHDR`).
pub const VDSO_START: u64 = VVAR_START + PAGE_SIZE;
const PAGE_SIZE: u64 = 4096;

/// `[vvar]` and `[vdso]`: one frame each, the kernel's for good; set by [`init`].
static MAPPINGS: Once<[SpecialMapping; 2]> = Once::new();

/// Why [`init`] failed (the kernel then runs programs without a vDSO).
#[derive(Debug)]
pub enum VdsoInitError {
    NoMemory,
    Image(exec::vdso::VdsoError),
}

impl core::fmt::Display for VdsoInitError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            VdsoInitError::NoMemory => write!(f, "no memory for the vDSO pages"),
            VdsoInitError::Image(e) => write!(f, "{}", e),
        }
    }
}

/// Builds the vDSO pages and publishes the clock. Call once, after the TSC
/// calibration and the RTC reading.
pub fn init() -> Result<(), VdsoInitError> {
    let image = exec::vdso::build(code::text(), &code::exports()).map_err(VdsoInitError::Image)?;
    let pages = page_alloc().alloc_pages(GFP_KERNEL | __GFP_ZERO, 1).map_err(|_| VdsoInitError::NoMemory)?;
    let pfn = pages.leak(); // kept for the kernel's lifetime
    let vdso = memmap::phys_to_virt(Pfn(pfn.0 + 1).phys_addr());
    // SAFETY: the second frame of the block just allocated is ours alone, one
    // page long, mapped by the direct map; the image is exactly one page.
    unsafe { core::ptr::copy_nonoverlapping(image.as_ptr(), vdso, image.len()) };
    MAPPINGS.call_once(|| {
        [
            SpecialMapping { name: "[vvar]", pfn, nr_pages: 1 },
            SpecialMapping { name: "[vdso]", pfn: Pfn(pfn.0 + 1), nr_pages: 1 },
        ]
    });
    update();
    Ok(())
}

/// The `[vvar]` data, once [`init`] ran.
fn vvar() -> Option<&'static VdsoData> {
    let [vvar, _] = MAPPINGS.get()?;
    let ptr = memmap::phys_to_virt(vvar.pfn.phys_addr()) as *const VdsoData;
    // SAFETY: the frame is the kernel's for good (leaked in `init`), zeroed
    // (a valid VdsoData: atomics of 0), page aligned, and the kernel only
    // writes it through these atomics.
    Some(unsafe { &*ptr })
}

/// Publishes the kernel's clock parameters to `[vvar]` (Linux
/// `update_vsyscall`). Call again whenever they change.
pub fn update() {
    if let Some(data) = vvar() {
        data.publish(time::clock_params());
    }
}

/// Maps `[vvar]` and `[vdso]` into the current (new) address space; returns
/// the value for `AT_SYSINFO_EHDR`, or 0 when there is no vDSO.
pub fn map_into_current() -> Result<u64, Errno> {
    let Some([vvar, vdso]) = MAPPINGS.get() else {
        return Ok(0);
    };
    // As Linux: vvar VM_READ|VM_MAYREAD|VM_IO|VM_DONTDUMP|VM_PFNMAP, vdso
    // VM_READ|VM_EXEC|VM_MAYREAD|VM_MAYEXEC|VM_DONTEXPAND (without
    // VM_MAYWRITE: no copy-on-write of the code, mprotect to writable fails).
    let vvar_flags = VmFlags::READ | VmFlags::MAYREAD | VmFlags::IO | VmFlags::DONTDUMP | VmFlags::PFNMAP;
    let vdso_flags = VmFlags::READ | VmFlags::EXEC | VmFlags::MAYREAD | VmFlags::MAYEXEC | VmFlags::DONTEXPAND;
    let maps = [(VVAR_START, vvar_flags, vvar), (VDSO_START, vdso_flags, vdso)];
    for (start, flags, special) in maps {
        with_mm(|mm, _| {
            mm.vmas
                .mmap_region(start, PAGE_SIZE, flags, VmaKind::Special(special), 0, MapFixed::NoReplace)
                .map(|_| 0)
                .map_err(|_| Errno::ENOMEM)
        })?;
    }
    Ok(VDSO_START)
}
