//! Portable memory-management logic of the kernel.
//!
//! Everything in this crate is `#![no_std]`, free of inline assembly and of
//! global state, so `cargo test -p mm` exercises it on the host against fake
//! physical memory. The kernel owns the global instances and plugs in the
//! hardware (direct map, TLB flushes, interrupts).
#![no_std]
#![deny(unsafe_op_in_unsafe_fn)]

extern crate alloc;
#[cfg(test)]
extern crate std;

pub mod addr;
pub mod errno;
pub mod vma;

pub mod compaction;
pub mod fail_page_alloc;
pub mod gfp;
pub mod page;
pub mod page_alloc;
pub mod fragtest;
pub mod page_alloc_bulk;
pub mod page_alloc_locks;
pub mod pageblock;
pub mod pcp;
pub mod sync;
pub mod vmstat;

pub mod pgtable;
pub mod fault;
pub mod mman;
pub mod shmem;
pub mod pt_reclaim;
pub mod tlb;
pub mod slab;

pub mod overflow;
pub mod rng;
pub mod sched_mm;
pub mod shrinker;
pub mod vmalloc;
