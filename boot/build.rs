//! Builds the BIOS and UEFI disk images from the kernel artifact (the
//! `bootloader` crate's documented build-script flow) and exports their paths
//! to the runner as `BIOS_IMAGE` / `UEFI_IMAGE`.
use std::path::PathBuf;

fn main() {
    let out_dir = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let kernel = PathBuf::from(
        std::env::var_os("CARGO_BIN_FILE_KERNEL_kernel").expect("artifact dependency on kernel"),
    );

    // The bootloader's own log lines would drown the kernel's memory map; keep warnings only.
    let mut config = bootloader::BootConfig::default();
    config.log_level = bootloader::BootConfig::default().log_level;
    config.frame_buffer_logging = false;
    config.serial_logging = false;

    let bios = out_dir.join("bios.img");
    let mut bios_boot = bootloader::BiosBoot::new(&kernel);
    bios_boot.set_boot_config(&config);
    bios_boot.create_disk_image(&bios).expect("create BIOS disk image");

    let uefi = out_dir.join("uefi.img");
    let mut uefi_boot = bootloader::UefiBoot::new(&kernel);
    uefi_boot.set_boot_config(&config);
    uefi_boot.create_disk_image(&uefi).expect("create UEFI disk image");

    println!("cargo:rustc-env=BIOS_IMAGE={}", bios.display());
    println!("cargo:rustc-env=UEFI_IMAGE={}", uefi.display());
    println!("cargo:rustc-env=KERNEL_ELF={}", kernel.display());
}
