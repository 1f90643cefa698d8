//! Host tests: every routine zeroes exactly its range and leaves the guard bytes around it intact.

use clear::{
    ClearPolicy, NR_SUBPAGES_1G, NR_SUBPAGES_2M, NtStore, PAGE_SIZE, clear_huge_page, clear_page, clear_page_clzero,
    clear_page_loop, clear_page_nt, clear_page_stosq, nt_fence, nt_store, set_nt_store, subpage_order,
};
use std::alloc::{Layout, alloc, dealloc};

const GUARD: u8 = 0xa5;

/// A page-aligned buffer of `nr_pages` pages with one guard page on each side, all filled with GUARD.
struct Guarded {
    ptr: *mut u8,
    layout: Layout,
    nr_pages: usize,
}

impl Guarded {
    fn new(nr_pages: usize) -> Self {
        let layout = Layout::from_size_align((nr_pages + 2) * PAGE_SIZE, PAGE_SIZE).unwrap();
        // SAFETY: the layout has a non-zero size.
        let ptr = unsafe { alloc(layout) };
        assert!(!ptr.is_null(), "allocation of {} bytes failed", layout.size());
        // SAFETY: ptr is valid for layout.size() bytes.
        unsafe { ptr.write_bytes(GUARD, layout.size()) };
        Guarded { ptr, layout, nr_pages }
    }

    /// The first page between the guards.
    fn target(&self) -> *mut u8 {
        // SAFETY: the allocation is at least one page larger than this offset.
        unsafe { self.ptr.add(PAGE_SIZE) }
    }

    fn bytes(&self) -> &[u8] {
        // SAFETY: ptr is valid and initialised for layout.size() bytes.
        unsafe { std::slice::from_raw_parts(self.ptr, self.layout.size()) }
    }

    /// Asserts that the target range is all zero and both guard pages still hold GUARD.
    fn check(&self) {
        let b = self.bytes();
        let (lo, rest) = b.split_at(PAGE_SIZE);
        let (mid, hi) = rest.split_at(self.nr_pages * PAGE_SIZE);
        assert!(lo.iter().all(|&x| x == GUARD), "low guard page overwritten");
        assert!(hi.iter().all(|&x| x == GUARD), "high guard page overwritten");
        // Compare 8 bytes at a time: fast enough for the 1 GiB test in a debug build.
        // SAFETY: every bit pattern is a valid u64; the range is page aligned (checked below).
        let (pre, words, post) = unsafe { mid.align_to::<u64>() };
        assert!(pre.is_empty() && post.is_empty());
        if let Some(i) = words.iter().position(|&w| w != 0) {
            panic!("target not cleared at byte offset {:#x}", i * 8);
        }
    }
}

impl Drop for Guarded {
    fn drop(&mut self) {
        // SAFETY: allocated with this layout in `new`.
        unsafe { dealloc(self.ptr, self.layout) };
    }
}

#[test]
fn page_routines_clear_exactly_one_page() {
    let routines: [(&str, unsafe fn(*mut u8)); 4] = [
        ("rep stosb", clear_page),
        ("rep stosq", clear_page_stosq),
        ("movnti", clear_page_nt),
        ("loop", clear_page_loop),
    ];
    let clzero: Option<(&str, unsafe fn(*mut u8))> =
        NtStore::Clzero.is_supported().then_some(("clzero", clear_page_clzero));
    for (name, f) in routines.into_iter().chain(clzero) {
        let buf = Guarded::new(1);
        // SAFETY: target() is one writable, page-aligned page owned by `buf`.
        unsafe { f(buf.target()) };
        nt_fence();
        println!("{name}: ok");
        buf.check();
    }
}

#[test]
fn subpage_order_is_a_permutation_with_hint_last() {
    for nr in [0usize, 1, 2, 7, 512] {
        for hint in [0, 1, nr / 2, nr.saturating_sub(1), nr, nr + 5, usize::MAX] {
            let order: Vec<usize> = subpage_order(nr, hint).collect();
            let mut sorted = order.clone();
            sorted.sort_unstable();
            assert_eq!(sorted, (0..nr).collect::<Vec<_>>(), "nr={nr} hint={hint}");
            if hint < nr {
                assert_eq!(order.last(), Some(&hint), "nr={nr} hint={hint}");
            } else {
                assert!(order.windows(2).all(|w| w[0] < w[1]), "no hint: ascending");
            }
        }
    }
}

#[test]
fn policy_decisions() {
    let two_mib = NR_SUBPAGES_2M * PAGE_SIZE;
    assert_eq!(ClearPolicy::default(), ClearPolicy::DEFAULT);
    assert!(!ClearPolicy::Cached.uses_nt(1 << 30));
    assert!(ClearPolicy::NonTemporal.uses_nt(PAGE_SIZE));
    assert!(!ClearPolicy::DEFAULT.uses_nt(PAGE_SIZE));
    assert!(!ClearPolicy::DEFAULT.uses_nt(two_mib - PAGE_SIZE));
    assert!(ClearPolicy::DEFAULT.uses_nt(two_mib));
    assert!(ClearPolicy::DEFAULT.uses_nt(NR_SUBPAGES_1G * PAGE_SIZE));
    let p = ClearPolicy::Auto { nt_threshold_bytes: 64 * PAGE_SIZE };
    assert!(!p.uses_nt(63 * PAGE_SIZE) && p.uses_nt(64 * PAGE_SIZE));
}

const POLICIES: [ClearPolicy; 4] = [
    ClearPolicy::Cached,
    ClearPolicy::NonTemporal,
    ClearPolicy::DEFAULT,
    // Threshold between the small sizes below, so Auto takes both paths.
    ClearPolicy::Auto { nt_threshold_bytes: 8 * PAGE_SIZE },
];

/// The non-temporal stores this CPU supports. The selection is global: tests that run concurrently
/// may clear with either, which is fine because both must clear correctly.
fn supported_stores() -> Vec<NtStore> {
    [NtStore::Movnti, NtStore::Clzero].into_iter().filter(|s| s.is_supported()).collect()
}

#[test]
fn nt_store_selection() {
    assert!(NtStore::Movnti.is_supported());
    assert_eq!(set_nt_store(NtStore::Movnti), Ok(()));
    let best = NtStore::detect();
    assert!(best.is_supported());
    match set_nt_store(NtStore::Clzero) {
        Ok(()) => assert_eq!(nt_store(), NtStore::Clzero),
        Err(_) => assert_eq!(best, NtStore::Movnti),
    }
    set_nt_store(NtStore::Movnti).unwrap();
}

#[test]
fn huge_page_small_counts_every_hint_every_policy() {
    for store in supported_stores() {
        set_nt_store(store).unwrap();
        for nr in [1, 2, 5, 8, 16] {
            for policy in POLICIES {
                for hint in (0..nr).chain([nr, usize::MAX]) {
                    let buf = Guarded::new(nr);
                    // SAFETY: target() is nr writable, page-aligned pages owned by `buf`.
                    unsafe { clear_huge_page(buf.target(), nr, hint, policy) };
                    buf.check();
                }
            }
        }
    }
}

#[test]
fn huge_page_zero_subpages_is_a_no_op() {
    let buf = Guarded::new(0);
    // SAFETY: zero pages are written.
    unsafe { clear_huge_page(buf.target(), 0, 0, ClearPolicy::NonTemporal) };
    buf.check();
}

#[test]
fn huge_page_2mib() {
    for policy in POLICIES {
        for hint in [0, 1, 255, 511, 512] {
            let buf = Guarded::new(NR_SUBPAGES_2M);
            // SAFETY: target() is 512 writable, page-aligned pages owned by `buf`.
            unsafe { clear_huge_page(buf.target(), NR_SUBPAGES_2M, hint, policy) };
            buf.check();
        }
    }
}

/// The 1 GiB path: logic at a reduced count (a 1 GiB-style hint far into the page) and one real
/// 1 GiB clear when the machine has the memory for it.
#[test]
fn huge_page_1gib() {
    let nr = 4096; // 16 MiB: same code path, hint in the last quarter
    let buf = Guarded::new(nr);
    // SAFETY: target() is nr writable, page-aligned pages owned by `buf`.
    unsafe { clear_huge_page(buf.target(), nr, 3 * nr / 4 + 3, ClearPolicy::DEFAULT) };
    buf.check();
    drop(buf);

    if mem_available_bytes().is_some_and(|b| b >= 3 << 30) {
        let buf = Guarded::new(NR_SUBPAGES_1G);
        // SAFETY: target() is 1 GiB of writable, page-aligned pages owned by `buf`.
        unsafe { clear_huge_page(buf.target(), NR_SUBPAGES_1G, 200_000, ClearPolicy::DEFAULT) };
        buf.check();
    } else {
        println!("skipping the real 1 GiB clear: less than 3 GiB available");
    }
}

fn mem_available_bytes() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = s.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}
