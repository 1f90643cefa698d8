//! The kernel's instances of the `mm` crate: the buddy allocator over the
//! boot memory map, page clearing, the kernel page tables and per-process
//! address spaces, vmalloc, the heap and kmalloc slabs, kvmalloc, shrinkers
//! and migration. Uses `arch/` and `lib/` only; waiting (reclaim throttling)
//! reaches the scheduler through a hook installed by `main`.

pub mod clear_page;
pub mod heap;
pub mod init_64;
pub mod kvmalloc;
pub mod migrate;
pub mod mm_struct;
pub mod page_alloc;
pub mod pgtable;
pub mod ptdump;
pub mod shrinker;
pub mod slab;
pub mod vmalloc;
