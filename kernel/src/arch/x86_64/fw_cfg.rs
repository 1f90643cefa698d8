//! QEMU's firmware configuration device (fw_cfg), used to read the kernel
//! command line that the runner passes with
//! `-fw_cfg name=opt/kernel/cmdline,string=...`. The bootloader has no
//! command-line channel; fw_cfg works the same under BIOS and UEFI.
//!
//! Protocol (QEMU docs/specs/fw_cfg.rst): write a 16-bit key to the selector
//! port 0x510, read the item byte by byte from port 0x511. Key 0x0000 is the
//! signature `QEMU`, key 0x0019 the file directory (big-endian).

use x86_64::instructions::port::Port;

const SELECTOR_PORT: u16 = 0x510;
const DATA_PORT: u16 = 0x511;
const KEY_SIGNATURE: u16 = 0x0000;
const KEY_FILE_DIR: u16 = 0x0019;
const FILE_NAME_LEN: usize = 56;

fn select(key: u16) {
    // SAFETY: the fw_cfg selector port only chooses which item the data port returns.
    unsafe { Port::<u16>::new(SELECTOR_PORT).write(key) };
}

fn read_bytes(buf: &mut [u8]) {
    let mut data = Port::<u8>::new(DATA_PORT);
    for b in buf {
        // SAFETY: reading the fw_cfg data port advances within the selected item only.
        *b = unsafe { data.read() };
    }
}

fn read_be_u32() -> u32 {
    let mut b = [0; 4];
    read_bytes(&mut b);
    u32::from_be_bytes(b)
}

fn read_be_u16() -> u16 {
    let mut b = [0; 2];
    read_bytes(&mut b);
    u16::from_be_bytes(b)
}

/// Whether the fw_cfg device is present (signature check).
pub fn present() -> bool {
    select(KEY_SIGNATURE);
    let mut sig = [0; 4];
    read_bytes(&mut sig);
    &sig == b"QEMU"
}

/// Reads the fw_cfg file `name` into `buf`; returns the number of bytes
/// stored (the file is truncated to `buf.len()`), or `None` if absent.
pub fn read_file(name: &str, buf: &mut [u8]) -> Option<usize> {
    if !present() {
        return None;
    }
    select(KEY_FILE_DIR);
    let count = read_be_u32();
    for _ in 0..count {
        let size = read_be_u32() as usize;
        let key = read_be_u16();
        let _reserved = read_be_u16();
        let mut raw_name = [0u8; FILE_NAME_LEN];
        read_bytes(&mut raw_name);
        let len = raw_name.iter().position(|&c| c == 0).unwrap_or(FILE_NAME_LEN);
        if &raw_name[..len] == name.as_bytes() {
            let n = size.min(buf.len());
            select(key);
            read_bytes(&mut buf[..n]);
            return Some(n);
        }
    }
    None
}
