//! The I/O APIC, used only as a source of NMIs that arrive while interrupts are
//! disabled: one redirection entry can deliver an interrupt line (the PIT's) to
//! this CPU in NMI mode, the way Linux's old IO-APIC NMI watchdog
//! (`nmi_watchdog=1`) programmed the timer pin. The allocator's NMI-safety test
//! uses it to interrupt the page allocator *inside* its locked sections, which no
//! maskable interrupt can do. Device interrupts keep coming through the legacy PIC.
//!
//! Where the chip is and which of its pins carries an ISA line come from the
//! ACPI MADT ([`super::acpi`]): [`IoApic::for_isa_irq`] finds the I/O APIC whose
//! GSI range holds the line's GSI (after the interrupt source override: the PIT's
//! IRQ 0 is GSI 2 on QEMU), then reads its version register (a select and a read)
//! before any redirection entry is written. The chip's two registers are reached
//! through the direct map as a typed register block ([`Registers`]) behind a
//! `volatile::VolatilePtr`: `IOREGSEL` selects a register, `IOWIN` reads or
//! writes it.

use core::ptr::NonNull;

use volatile::{map_field, VolatilePtr};

use super::acpi::{self, AcpiError};
use crate::arch::x86_64::layout::DIRECT_MAP_MIN_END;
use crate::arch::x86_64::memmap;

/// The I/O APIC's memory-mapped registers: the select register and, 16 bytes
/// further, the data window (both 32-bit).
#[repr(C)]
struct Registers {
    ioregsel: u32,
    _reserved: [u32; 3],
    iowin: u32,
}

const REG_VERSION: u32 = 0x01;
/// Low dword of redirection entry `pin`; the high dword follows.
const fn redtbl(pin: u8) -> u32 {
    0x10 + 2 * pin as u32
}
const DELIVERY_NMI: u32 = 0b100 << 8;
const MASKED: u32 = 1 << 16;

/// The ISA line of the PIT's channel 0.
pub const PIT_IRQ: u8 = 0;

/// Why the I/O APIC cannot be used.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IoApicError {
    /// The MADT could not be read.
    Acpi(AcpiError),
    /// The MADT lists no I/O APIC for this GSI, or one outside the low 4 GiB.
    NoIoApicFor(u32),
    /// Nothing answers at the address (reads give all ones or zeros).
    NotPresent,
    /// The pin is beyond the chip's redirection entries.
    NoSuchPin(u8),
    /// The MADT gives a register address that is not 16-byte aligned.
    Misaligned(u64),
}

/// The I/O APIC found by [`IoApic::probe`].
pub struct IoApic {
    regs: VolatilePtr<'static, Registers>,
    entries: u8,
}

impl IoApic {
    /// The I/O APIC that receives ISA line `irq`, and its pin for it, as the MADT
    /// says; checks that the chip answers and has that pin.
    pub fn for_isa_irq(irq: u8) -> Result<(IoApic, u8), IoApicError> {
        let madt = acpi::madt().map_err(IoApicError::Acpi)?;
        let gsi = madt.isa_gsi(irq);
        let (entry, pin) = madt.ioapic_for_gsi(gsi).ok_or(IoApicError::NoIoApicFor(gsi))?;
        if entry.phys_addr.saturating_add(core::mem::size_of::<Registers>() as u64) > DIRECT_MAP_MIN_END {
            return Err(IoApicError::NoIoApicFor(gsi));
        }
        if entry.phys_addr % 16 != 0 {
            return Err(IoApicError::Misaligned(entry.phys_addr));
        }
        let base = NonNull::new(memmap::phys_to_virt(entry.phys_addr)).ok_or(IoApicError::NotPresent)?;
        // SAFETY: the register block lies in the low 4 GiB (checked above), which
        // the direct map maps for the kernel's lifetime, and is 16-byte aligned
        // (checked); it is device memory that no Rust reference points to, so
        // the volatile accesses alias nothing, and they only select and access
        // the chip's registers.
        let regs = unsafe { VolatilePtr::new(base.cast::<Registers>()) };
        let mut io = IoApic { regs, entries: 0 };
        let version = io.read(REG_VERSION);
        if version == u32::MAX || version == 0 {
            return Err(IoApicError::NotPresent);
        }
        io.entries = ((version >> 16) & 0xff) as u8 + 1;
        let pin = u8::try_from(pin).ok().filter(|&p| p < io.entries).ok_or(IoApicError::NoSuchPin(pin.min(255) as u8))?;
        Ok((io, pin))
    }

    /// Reads register `reg`: select first, then the window.
    fn read(&self, reg: u32) -> u32 {
        let regs = self.regs;
        map_field!(regs.ioregsel).write(reg);
        map_field!(regs.iowin).read()
    }

    /// Writes register `reg` (the callers only write redirection entries).
    fn write(&self, reg: u32, value: u32) {
        let regs = self.regs;
        map_field!(regs.ioregsel).write(reg);
        map_field!(regs.iowin).write(value);
    }

    /// Delivers `pin` (edge-triggered, active high) to the CPU with local APIC id
    /// `apic_id` as an NMI.
    pub fn route_as_nmi(&self, pin: u8, apic_id: u8) -> Result<(), IoApicError> {
        if pin >= self.entries {
            return Err(IoApicError::NoSuchPin(pin));
        }
        self.write(redtbl(pin) + 1, (apic_id as u32) << 24);
        self.write(redtbl(pin), DELIVERY_NMI);
        Ok(())
    }

    /// Masks `pin` again (its state after reset).
    pub fn mask(&self, pin: u8) {
        if pin < self.entries {
            self.write(redtbl(pin), MASKED);
            self.write(redtbl(pin) + 1, 0);
        }
    }
}
