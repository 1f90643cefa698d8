//! Page clearing: the exact routines the kernel uses to zero 4 KiB, 2 MiB and 1 GiB pages.
//!
//! The same code runs in the kernel (`x86_64-unknown-none`, through direct-map pointers) and in the
//! host benchmark (`cargo bench -p clear`), so the numbers in `docs/benchmarks.md` are the numbers
//! of the kernel's own instructions. Only general-purpose registers are used (`rep stos`, `movnti`,
//! `sfence`), so no SSE/AVX state has to be saved in the kernel.
//!
//! # Cached vs non-temporal
//!
//! A normal (cached) store to a line that is not in the cache first reads the line from memory
//! (read-for-ownership), then the zeroes are written back when the line is evicted: clearing cold
//! memory costs two memory transfers per line, and evicts whatever the cache held before. A
//! non-temporal store (`movnti`) goes through write-combining buffers straight to memory: one transfer
//! per line, no cache pollution, but the cleared data is *not* in the cache afterwards, and when the
//! target is already cache-resident cached stores are much faster. Ankur Arora's 2021 patch set
//! ("clear_page_uncached", LWN "Some upcoming memory-management patches") therefore clears huge (2 MiB)
//! and gigantic (1 GiB) pages with non-temporal stores and keeps cached stores for 4 KiB pages.
//! [`ClearPolicy`] is that decision, as a runtime knob.
//!
//! # Linux counterparts
//!
//! | here | Linux |
//! |---|---|
//! | [`clear_page`] (`rep stosb`) | `clear_page_erms` (arch/x86/lib/clear_page_64.S) |
//! | [`clear_page_stosq`] (`rep stosq`) | `clear_page_rep` |
//! | [`clear_page_nt`] (`movnti`, no fence) | `clear_page_movnt`, one of the `clear_page_uncached` alternatives of Arora's 2021 series |
//! | [`clear_page_clzero`] (AMD `clzero`, no fence) | `clear_page_clzero`, the other one (used where `X86_FEATURE_MOVNT_SLOW`) |
//! | [`clear_huge_page`] | `clear_huge_page` / `process_huge_page` (mm/memory.c) |
//! | [`clear_page_loop`] | `clear_page_orig`-style plain loop (the baseline) |
//!
//! `process_huge_page` clears the sub-page that faulted *last*, so its cache lines are hot when the
//! fault returns to the instruction that touched it. [`clear_huge_page`] does the same: with the
//! non-temporal policy all other sub-pages are cleared with `movnti`, then one `sfence` orders those
//! weakly-ordered stores before anything that follows (the PTE/PMD that publishes the page), and
//! then the hint sub-page is cleared with cached `rep stosb`.
//!
//! # Which non-temporal store
//!
//! `movnti` is the portable choice, but on AMD Zen its throughput is capped at roughly one 8-byte
//! store every two cycles, so it is barely faster than `rep stosb` even on cold memory (Linux marks
//! these CPUs `X86_FEATURE_MOVNT_SLOW`). Arora's series therefore also had a `clzero` variant: AMD's
//! `clzero` zeroes a whole 64-byte line per instruction without reading it, is weakly ordered like
//! `movnti`, and also needs no SSE state. [`set_nt_store`] selects the instruction used by the
//! non-temporal policy (a boot-time, CPU-dependent choice like Linux's alternatives);
//! [`NtStore::detect`] picks `clzero` where the CPU has it. The default is `movnti`.
#![no_std]
#![deny(unsafe_op_in_unsafe_fn)]

#[cfg(not(target_arch = "x86_64"))]
compile_error!("the `clear` crate is x86_64 only");

use core::arch::asm;
use core::arch::x86_64::__cpuid;
use core::sync::atomic::{AtomicU8, Ordering};

/// Size of a base page in bytes.
pub const PAGE_SIZE: usize = 4096;
/// Number of 4 KiB sub-pages in a 2 MiB huge page.
pub const NR_SUBPAGES_2M: usize = 512;
/// Number of 4 KiB sub-pages in a 1 GiB gigantic page.
pub const NR_SUBPAGES_1G: usize = 262_144;

/// How [`clear_huge_page`] clears the sub-pages other than the faulting one.
///
/// The default is [`ClearPolicy::DEFAULT`]: non-temporal for clears of at least 2 MiB, i.e. every
/// huge and gigantic page, cached for anything smaller. A freshly allocated huge page is almost
/// never in the cache, and 2 MiB is four times this machine's per-core L2 (512 KiB), so the
/// "streaming, cache-cold" row of the benchmark is the one that applies to a huge-page fault: there
/// non-temporal clearing is 3.1x `rep stosb` with `clzero` and 1.4x with `movnti` (see
/// `docs/benchmarks.md`, "Page clearing"). Cached stores win when the memory is already cached
/// (2 MiB resident: `movnti` 0.54x, `clzero` still 1.17x), which the allocator cannot promise
/// for a 2 MiB block. The faulting sub-page is cleared with cached stores in every policy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClearPolicy {
    /// Always cached stores (`rep stosb`).
    Cached,
    /// Always non-temporal stores (`movnti`) for the non-hint sub-pages.
    NonTemporal,
    /// Non-temporal when the whole clear is at least `nt_threshold_bytes`, cached otherwise.
    Auto {
        /// Smallest clear (in bytes) that uses non-temporal stores.
        nt_threshold_bytes: usize,
    },
}

impl ClearPolicy {
    /// Default threshold of [`ClearPolicy::Auto`]: 2 MiB (one huge page).
    pub const DEFAULT_NT_THRESHOLD_BYTES: usize = NR_SUBPAGES_2M * PAGE_SIZE;
    /// The default policy: `Auto` with a 2 MiB threshold.
    pub const DEFAULT: ClearPolicy = ClearPolicy::Auto {
        nt_threshold_bytes: Self::DEFAULT_NT_THRESHOLD_BYTES,
    };

    /// Whether a clear of `size_bytes` uses non-temporal stores under this policy.
    pub const fn uses_nt(self, size_bytes: usize) -> bool {
        match self {
            ClearPolicy::Cached => false,
            ClearPolicy::NonTemporal => true,
            ClearPolicy::Auto { nt_threshold_bytes } => size_bytes >= nt_threshold_bytes,
        }
    }
}

impl Default for ClearPolicy {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// Zeroes one 4 KiB page with cached stores (`rep stosb`, fast on CPUs with ERMS/FSRM).
///
/// # Safety
///
/// `page` must be valid for writes of [`PAGE_SIZE`] bytes and 4 KiB aligned, and nothing else may
/// access that memory concurrently.
#[inline]
pub unsafe fn clear_page(page: *mut u8) {
    // SAFETY: the caller guarantees PAGE_SIZE writable bytes at `page`. `rep stosb` writes exactly
    // rcx = PAGE_SIZE bytes upwards from rdi (DF is clear per the ABI); rcx/rdi are declared clobbered.
    unsafe {
        asm!(
            "rep stosb",
            inout("rcx") PAGE_SIZE => _,
            inout("rdi") page => _,
            in("al") 0u8,
            options(nostack, preserves_flags),
        );
    }
}

/// Zeroes one 4 KiB page with cached stores (`rep stosq`, Linux's `clear_page_rep`).
///
/// # Safety
///
/// Same as [`clear_page`].
#[inline]
pub unsafe fn clear_page_stosq(page: *mut u8) {
    // SAFETY: the caller guarantees PAGE_SIZE writable bytes; rcx = PAGE_SIZE / 8 quadwords are
    // written upwards from rdi (DF clear), i.e. exactly the page.
    unsafe {
        asm!(
            "rep stosq",
            inout("rcx") PAGE_SIZE / 8 => _,
            inout("rdi") page => _,
            in("rax") 0u64,
            options(nostack, preserves_flags),
        );
    }
}

/// Zeroes one 4 KiB page with non-temporal `movnti` stores, without a fence.
///
/// The stores are weakly ordered: call [`nt_fence`] after the last one and before the memory is
/// published to anyone else (a page-table entry, another CPU).
///
/// # Safety
///
/// Same as [`clear_page`]; in addition the caller must issue [`nt_fence`] before relying on the
/// ordering of these stores relative to later stores.
#[inline]
pub unsafe fn clear_page_nt(page: *mut u8) {
    // SAFETY: the caller guarantees PAGE_SIZE writable, 8-byte aligned bytes. The loop writes 64
    // bytes per iteration, PAGE_SIZE / 64 iterations, all inside the page. `movnti` is a
    // general-purpose register instruction (no SSE state). Flags are clobbered (no preserves_flags).
    unsafe {
        asm!(
            "2:",
            "movnti qword ptr [{p}], {z}",
            "movnti qword ptr [{p} + 8], {z}",
            "movnti qword ptr [{p} + 16], {z}",
            "movnti qword ptr [{p} + 24], {z}",
            "movnti qword ptr [{p} + 32], {z}",
            "movnti qword ptr [{p} + 40], {z}",
            "movnti qword ptr [{p} + 48], {z}",
            "movnti qword ptr [{p} + 56], {z}",
            "add {p}, 64",
            "dec {n:e}",
            "jnz 2b",
            p = inout(reg) page => _,
            n = inout(reg) (PAGE_SIZE / 64) as u32 => _,
            z = in(reg) 0u64,
            options(nostack),
        );
    }
}

/// Orders all earlier non-temporal stores before any later store (`sfence`).
#[inline]
pub fn nt_fence() {
    // SAFETY: `sfence` only orders stores; it touches no memory or registers.
    unsafe { asm!("sfence", options(nostack, preserves_flags)) };
}

/// Zeroes one 4 KiB page with a plain loop of 8-byte volatile stores: the baseline.
///
/// The stores are volatile so the compiler cannot turn the loop into a `memset` call or vectorise
/// it; the benchmark's "plain loop" row is therefore one `mov` per 8 bytes.
///
/// # Safety
///
/// Same as [`clear_page`].
#[inline]
pub unsafe fn clear_page_loop(page: *mut u8) {
    let words = page.cast::<u64>();
    for i in 0..PAGE_SIZE / 8 {
        // SAFETY: i < PAGE_SIZE / 8 and the caller guarantees PAGE_SIZE writable, 8-byte aligned bytes.
        unsafe { words.add(i).write_volatile(0) };
    }
}

/// Zeroes one 4 KiB page with AMD `clzero` (64 instructions of one 64-byte line each), no fence.
///
/// Like [`clear_page_nt`] the stores are weakly ordered: call [`nt_fence`] afterwards.
///
/// # Safety
///
/// Same as [`clear_page_nt`]; in addition the CPU must support `clzero` and use 64-byte cache lines
/// (check with [`NtStore::detect`] or [`set_nt_store`]), otherwise this raises #UD.
#[inline]
pub unsafe fn clear_page_clzero(page: *mut u8) {
    // SAFETY: the caller guarantees a writable, page-aligned page and clzero support with 64-byte
    // lines; clzero zeroes the line containing rax, so 64 iterations cover exactly the page.
    unsafe {
        asm!(
            "2:",
            "clzero",
            "add rax, 64",
            "dec {n:e}",
            "jnz 2b",
            inout("rax") page => _,
            n = inout(reg) (PAGE_SIZE / 64) as u32 => _,
            options(nostack),
        );
    }
}

/// The instruction used for non-temporal clearing by [`clear_huge_page`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum NtStore {
    /// `movnti` ([`clear_page_nt`]): every x86_64 CPU.
    Movnti = 0,
    /// AMD `clzero` ([`clear_page_clzero`]).
    Clzero = 1,
}

/// The CPU lacks the instruction asked for in [`set_nt_store`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NtStoreUnsupported;

static NT_STORE: AtomicU8 = AtomicU8::new(NtStore::Movnti as u8);

impl NtStore {
    /// Whether this CPU can execute the instruction (`clzero` also needs 64-byte cache lines).
    pub fn is_supported(self) -> bool {
        match self {
            NtStore::Movnti => true,
            NtStore::Clzero => {
                // cpuid may trap under a hypervisor: call this at boot/config time, not per clear.
                let max_ext = __cpuid(0x8000_0000).eax;
                let line_bytes = ((__cpuid(1).ebx >> 8) & 0xff) * 8;
                max_ext >= 0x8000_0008 && __cpuid(0x8000_0008).ebx & 1 != 0 && line_bytes == 64
            }
        }
    }

    /// The fastest supported instruction: `clzero` where available, else `movnti`.
    pub fn detect() -> NtStore {
        if NtStore::Clzero.is_supported() { NtStore::Clzero } else { NtStore::Movnti }
    }
}

/// Selects the non-temporal store used from now on by [`clear_huge_page`] (a runtime knob).
pub fn set_nt_store(store: NtStore) -> Result<(), NtStoreUnsupported> {
    if !store.is_supported() {
        return Err(NtStoreUnsupported);
    }
    NT_STORE.store(store as u8, Ordering::Relaxed);
    Ok(())
}

/// The non-temporal store currently selected.
pub fn nt_store() -> NtStore {
    if NT_STORE.load(Ordering::Relaxed) == NtStore::Clzero as u8 { NtStore::Clzero } else { NtStore::Movnti }
}

/// Zeroes a huge page of `nr_subpages` 4 KiB sub-pages (512 for 2 MiB, 262144 for 1 GiB), clearing
/// the sub-page `hint_subpage` (the one that faulted) last with cached stores.
///
/// If `policy.uses_nt(nr_subpages * PAGE_SIZE)`, every other sub-page is cleared with
/// [`clear_page_nt`] (or [`clear_page_clzero`], see [`set_nt_store`]), followed by one
/// [`nt_fence`]; otherwise with [`clear_page`]. A `hint_subpage >= nr_subpages` means "no hint": all sub-pages are cleared by the policy (and the
/// fence still comes last). When this returns, all non-temporal stores are fenced.
///
/// # Safety
///
/// `base` must be 4 KiB aligned and valid for writes of `nr_subpages * PAGE_SIZE` bytes (which must
/// not overflow), and nothing else may access that memory concurrently.
pub unsafe fn clear_huge_page(base: *mut u8, nr_subpages: usize, hint_subpage: usize, policy: ClearPolicy) {
    let nt = policy.uses_nt(nr_subpages.saturating_mul(PAGE_SIZE));
    let store = nt_store();
    for i in subpage_order(nr_subpages, hint_subpage) {
        // SAFETY: i < nr_subpages, so the sub-page lies inside the caller's range.
        let subpage = unsafe { base.add(i * PAGE_SIZE) };
        if i == hint_subpage {
            // The hint comes last (see `subpage_order`): fence the NT stores first, then clear it
            // with cached stores so it is in the cache when the fault returns.
            if nt {
                nt_fence();
            }
            // SAFETY: sub-page inside the caller's range (see above).
            unsafe { clear_page(subpage) };
            return;
        }
        if nt {
            // SAFETY: as above; the fence follows before returning. `store` is Clzero only if
            // `set_nt_store` checked that the CPU supports it.
            unsafe {
                match store {
                    NtStore::Movnti => clear_page_nt(subpage),
                    NtStore::Clzero => clear_page_clzero(subpage),
                }
            }
        } else {
            // SAFETY: as above.
            unsafe { clear_page(subpage) };
        }
    }
    // No (valid) hint: fence the non-temporal stores.
    if nt {
        nt_fence();
    }
}

/// The order in which [`clear_huge_page`] visits sub-pages: every index in `0..nr_subpages` once,
/// ascending, except `hint_subpage`, which comes last (if it is in range).
pub fn subpage_order(nr_subpages: usize, hint_subpage: usize) -> impl Iterator<Item = usize> {
    let hint = (hint_subpage < nr_subpages).then_some(hint_subpage);
    (0..nr_subpages).filter(move |&i| Some(i) != hint).chain(hint)
}
