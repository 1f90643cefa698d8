//! QEMU's `isa-debug-exit` device: writing a value `v` to port 0xf4 ends the
//! emulator with host exit status `(v << 1) | 1`. The runner maps
//! [`ExitCode::Success`] (status 33) to 0 and [`ExitCode::Failure`] (35) to 1;
//! any other status (a reset or triple fault under `-no-reboot` is 0) counts
//! as a crash.

use x86_64::instructions::port::Port;

const ISA_DEBUG_EXIT_PORT: u16 = 0xf4;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[repr(u32)]
pub enum ExitCode {
    Success = 0x10,
    Failure = 0x11,
}

/// Ends the QEMU run. Falls back to halting if the device is absent.
pub fn exit(code: ExitCode) -> ! {
    // SAFETY: port 0xf4 is the debug-exit device the runner always attaches;
    // on a machine without it the write is ignored and we halt below.
    unsafe { Port::<u32>::new(ISA_DEBUG_EXIT_PORT).write(code as u32) };
    super::cpu::halt_forever()
}
