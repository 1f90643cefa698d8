//! Disk images and initramfs archives. Shared by the build script (which
//! includes this file with `#[path]`) and the runner (`--initrd`,
//! `--initrd-file`), so both build images the same way.

use std::path::Path;

/// The bootloader settings: its own log lines would drown the kernel's
/// memory map, so it logs neither to the serial port nor the frame buffer.
pub fn boot_config() -> bootloader::BootConfig {
    let mut config = bootloader::BootConfig::default();
    config.frame_buffer_logging = false;
    config.serial_logging = false;
    config
}

/// Writes the BIOS (`uefi == false`) or UEFI disk image for `kernel` to
/// `out`, with `ramdisk` as the bootloader's ramdisk (the initramfs).
pub fn create_disk_image(kernel: &Path, ramdisk: Option<&Path>, uefi: bool, out: &Path) -> Result<(), String> {
    let config = boot_config();
    let result = if uefi {
        let mut boot = bootloader::UefiBoot::new(kernel);
        boot.set_boot_config(&config);
        if let Some(ramdisk) = ramdisk {
            boot.set_ramdisk(ramdisk);
        }
        boot.create_disk_image(out)
    } else {
        let mut boot = bootloader::BiosBoot::new(kernel);
        boot.set_boot_config(&config);
        if let Some(ramdisk) = ramdisk {
            boot.set_ramdisk(ramdisk);
        }
        boot.create_disk_image(out)
    };
    result.map_err(|e| format!("cannot create {} disk image {}: {:#}", if uefi { "UEFI" } else { "BIOS" }, out.display(), e))
}

/// Packs the host directory `dir` into a cpio `newc` archive: directories,
/// regular files and symlinks, recursively in name order, with their
/// permission bits; `dir` itself is the archive's root. Other file types
/// (sockets, devices, fifos) are skipped.
pub fn pack_dir(dir: &Path) -> std::io::Result<Vec<u8>> {
    let mut writer = exec::cpio::Writer::new();
    pack_into(&mut writer, dir, "")?;
    Ok(writer.finish())
}

fn pack_into(writer: &mut exec::cpio::Writer, dir: &Path, prefix: &str) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;

    let mut entries = std::fs::read_dir(dir)?.collect::<Result<Vec<_>, _>>()?;
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let path = entry.path();
        let name = entry.file_name();
        let name = name
            .to_str()
            .ok_or_else(|| invalid(format!("{}: file name is not UTF-8", path.display())))?;
        let archive_name = format!("{}{}", prefix, name);
        let meta = std::fs::symlink_metadata(&path)?;
        let perm = meta.permissions().mode() & 0o7777;
        let added = if meta.is_dir() {
            writer.dir(&archive_name, perm).map(|_| true)
        } else if meta.is_file() {
            writer.file(&archive_name, perm, &std::fs::read(&path)?).map(|_| true)
        } else if meta.file_type().is_symlink() {
            let target = std::fs::read_link(&path)?;
            let target = target
                .to_str()
                .ok_or_else(|| invalid(format!("{}: link target is not UTF-8", path.display())))?;
            writer.symlink(&archive_name, target).map(|_| true)
        } else {
            Ok(false)
        };
        added.map_err(|e| invalid(format!("{}: {}", path.display(), e)))?;
        if meta.is_dir() {
            pack_into(writer, &path, &format!("{}/", archive_name))?;
        }
    }
    Ok(())
}

fn invalid(msg: String) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, msg)
}
