//! Host benchmark of the kernel's page-clearing routines: `cargo bench -p clear`.
//!
//! Prints markdown tables (medians over rounds; ratios are per-round ratios against `rep stosb`
//! measured in the same round, then the median). Sections:
//! 1. 2 MiB clears streaming over a 1 GiB buffer (each chunk once: cache-cold, like huge-page faults);
//! 2. the same 2 MiB cleared repeatedly (cache-resident);
//! 3. region-size sweep, `rep stosb` vs `movnti`: where the crossover is;
//! 4. 4 KiB pages: cache-hot (same page) and cold (streaming);
//! 5. the faulting sub-page after `clear_huge_page`: read cycles with hint-last vs all-NT.
//!
//! The bench-only peers `movntdq` (SSE2) and `vmovntdq` (AVX) are here to find the fastest
//! non-temporal store this CPU has; the kernel cannot use them without saving SSE/AVX state.
use clear::{
    ClearPolicy, NR_SUBPAGES_2M, NtStore, PAGE_SIZE, clear_huge_page, clear_page, clear_page_clzero,
    clear_page_loop, clear_page_nt, clear_page_stosq, nt_fence, set_nt_store,
};
use std::alloc::{Layout, alloc};
use std::arch::asm;
use std::arch::x86_64::_rdtsc;
use std::hint::black_box;
use std::time::Instant;

const MIB: usize = 1 << 20;
const HUGE: usize = 2 * MIB;
const BUF_BYTES: usize = 1 << 30;
const ROUNDS: usize = 9;

type PageFn = unsafe fn(*mut u8);

struct Variant {
    name: &'static str,
    page: PageFn,
    nt: bool,
}

/// Clears `bytes` at `base` one 4 KiB page at a time with `v` (plus the fence for NT variants).
///
/// # Safety
///
/// `base..base + bytes` must be writable and page aligned.
unsafe fn clear_range(v: &Variant, base: *mut u8, bytes: usize) {
    for off in (0..bytes).step_by(PAGE_SIZE) {
        // SAFETY: off < bytes, inside the caller's range.
        unsafe { (v.page)(base.add(off)) };
    }
    if v.nt {
        nt_fence();
    }
}

/// 16-byte SSE2 non-temporal stores (bench-only peer).
unsafe fn clear_page_movntdq(page: *mut u8) {
    // SAFETY: writes exactly PAGE_SIZE bytes at the page-aligned `page` (caller's contract).
    unsafe {
        asm!(
            "xorps xmm0, xmm0",
            "2:",
            "movntdq [{p}], xmm0",
            "movntdq [{p} + 16], xmm0",
            "movntdq [{p} + 32], xmm0",
            "movntdq [{p} + 48], xmm0",
            "add {p}, 64",
            "dec {n:e}",
            "jnz 2b",
            p = inout(reg) page => _, n = inout(reg) (PAGE_SIZE / 64) as u32 => _,
            out("xmm0") _, options(nostack),
        );
    }
}

/// 32-byte AVX non-temporal stores (bench-only peer).
#[target_feature(enable = "avx")]
unsafe fn clear_page_vmovntdq_avx(page: *mut u8) {
    // SAFETY: writes exactly PAGE_SIZE bytes at the page-aligned `page`; AVX checked by the caller.
    unsafe {
        asm!(
            "vxorps ymm0, ymm0, ymm0",
            "2:",
            "vmovntdq [{p}], ymm0",
            "vmovntdq [{p} + 32], ymm0",
            "add {p}, 64",
            "dec {n:e}",
            "jnz 2b",
            "vzeroupper",
            p = inout(reg) page => _, n = inout(reg) (PAGE_SIZE / 64) as u32 => _,
            out("ymm0") _, options(nostack),
        );
    }
}

unsafe fn clear_page_vmovntdq(page: *mut u8) {
    // SAFETY: only registered as a variant when AVX is present (see `variants`).
    unsafe { clear_page_vmovntdq_avx(page) }
}

fn variants() -> Vec<Variant> {
    let mut v = vec![
        Variant { name: "rep stosb (clear_page)", page: clear_page, nt: false },
        Variant { name: "rep stosq", page: clear_page_stosq, nt: false },
        Variant { name: "movnti (clear_page_nt)", page: clear_page_nt, nt: true },
        Variant { name: "plain loop (volatile u64)", page: clear_page_loop, nt: false },
    ];
    if NtStore::Clzero.is_supported() {
        v.push(Variant { name: "clzero (clear_page_clzero)", page: clear_page_clzero, nt: true });
    }
    v.push(Variant { name: "peer: movntdq (SSE2)", page: clear_page_movntdq, nt: true });
    if std::is_x86_feature_detected!("avx") {
        v.push(Variant { name: "peer: vmovntdq (AVX)", page: clear_page_vmovntdq, nt: true });
    }
    v
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn gbps(bytes: usize, secs: f64) -> f64 {
    bytes as f64 / secs / 1e9
}

/// One 1 GiB, 2 MiB-aligned, pre-faulted buffer (THP requested, as the kernel's direct map uses
/// large pages).
fn buffer() -> *mut u8 {
    let layout = Layout::from_size_align(BUF_BYTES, HUGE).unwrap();
    // SAFETY: non-zero size.
    let buf = unsafe { alloc(layout) };
    assert!(!buf.is_null());
    // madvise(buf, len, MADV_HUGEPAGE): best effort, the result is reported below.
    // SAFETY: raw Linux syscall 28 on memory we own; it only changes paging policy.
    unsafe {
        asm!("syscall", inlateout("rax") 28usize => _, in("rdi") buf, in("rsi") BUF_BYTES,
             in("rdx") 14usize, lateout("rcx") _, lateout("r11") _, options(nostack));
    }
    for off in (0..BUF_BYTES).step_by(PAGE_SIZE) {
        // SAFETY: inside the allocation. Writing (not reading) makes the kernel back every page.
        unsafe { buf.add(off).write_volatile(1) };
    }
    buf
}

/// Runs `ROUNDS` rounds; in each round every variant runs once (order rotated per round) and
/// `measure` returns GB/s. Prints median GB/s and the median per-round ratios against variant 0
/// (`rep stosb` / the cached policy) and against the round's fastest non-temporal variant.
fn table(title: &str, vs: &[Variant], mut measure: impl FnMut(&Variant) -> f64) {
    let mut res = vec![Vec::new(); vs.len()];
    for round in 0..ROUNDS {
        for k in 0..vs.len() {
            let i = (k + round) % vs.len();
            res[i].push(measure(&vs[i]));
        }
    }
    // Fastest non-temporal variant of each round (for the "within 10 % of the fastest NT" target).
    let best_nt: Vec<f64> = (0..ROUNDS)
        .map(|r| (0..vs.len()).filter(|&i| vs[i].nt).map(|i| res[i][r]).fold(0.0, f64::max))
        .collect();
    println!("\n### {title}\n\n| routine | GB/s (median of {ROUNDS}) | min..max | × first row | × fastest NT |");
    println!("|---|---:|---:|---:|---:|");
    for (i, v) in vs.iter().enumerate() {
        let mut ratios: Vec<f64> = (0..ROUNDS).map(|r| res[i][r] / res[0][r]).collect();
        let mut vs_nt: Vec<f64> = (0..ROUNDS).map(|r| res[i][r] / best_nt[r]).collect();
        let (lo, hi) = res[i].iter().fold((f64::MAX, 0f64), |(l, h), &x| (l.min(x), h.max(x)));
        let m = median(&mut res[i].clone());
        let nt = if v.nt { format!("{:.2}", median(&mut vs_nt)) } else { "-".into() };
        println!("| {} | {m:.2} | {lo:.2}..{hi:.2} | {:.2} | {nt} |", v.name, median(&mut ratios));
    }
}

/// Cycles to read one 4 KiB page (512 volatile u64 loads), bracketed by lfence+rdtsc.
fn read_page_cycles(page: *const u8) -> f64 {
    let words = page.cast::<u64>();
    let mut sum = 0u64;
    // SAFETY: lfence/rdtsc have no memory effects.
    let t0 = unsafe { asm!("lfence", options(nostack, preserves_flags)); _rdtsc() };
    for i in 0..PAGE_SIZE / 8 {
        // SAFETY: inside the page, which is initialised (just cleared).
        sum = sum.wrapping_add(unsafe { words.add(i).read_volatile() });
    }
    // SAFETY: as above.
    let t1 = unsafe { asm!("lfence", options(nostack, preserves_flags)); let t = _rdtsc(); asm!("lfence", options(nostack, preserves_flags)); t };
    black_box(sum);
    (t1 - t0) as f64
}

fn main() {
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("model name")).map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string()))
        .unwrap_or_default();
    println!("# clear benchmark: {model}, {ROUNDS} rounds");
    let buf = buffer();
    let thp = std::fs::read_to_string("/proc/self/smaps_rollup").ok().and_then(|s| {
        s.lines().find(|l| l.starts_with("AnonHugePages:")).map(|l| l.split_whitespace().nth(1).unwrap_or("?").to_string())
    });
    println!("buffer: 1 GiB pre-faulted, AnonHugePages: {} kB", thp.as_deref().unwrap_or("?"));
    let vs = variants();
    let nr_chunks = BUF_BYTES / HUGE;

    // 1. Streaming: every 2 MiB chunk of the 1 GiB buffer once per measurement.
    table("2 MiB clears streaming over 1 GiB (cache-cold)", &vs, |v| {
        let t = Instant::now();
        for c in 0..nr_chunks {
            // SAFETY: chunk c is inside the buffer.
            unsafe { clear_range(v, buf.add(c * HUGE), HUGE) };
        }
        gbps(BUF_BYTES, t.elapsed().as_secs_f64())
    });

    // The kernel entry point itself, same streaming pattern, hint in the middle of each page.
    let mut entry: Vec<(&str, ClearPolicy, NtStore)> = vec![
        ("clear_huge_page Cached", ClearPolicy::Cached, NtStore::Movnti),
        ("clear_huge_page NonTemporal, movnti", ClearPolicy::NonTemporal, NtStore::Movnti),
    ];
    if NtStore::Clzero.is_supported() {
        entry.push(("clear_huge_page NonTemporal, clzero", ClearPolicy::NonTemporal, NtStore::Clzero));
    }
    let entry_vs: Vec<Variant> =
        entry.iter().map(|&(n, p, _)| Variant { name: n, page: clear_page, nt: p != ClearPolicy::Cached }).collect();
    table("clear_huge_page(2 MiB, hint 300) streaming over 1 GiB", &entry_vs, |v| {
        let &(_, policy, store) = entry.iter().find(|e| e.0 == v.name).unwrap();
        set_nt_store(store).unwrap();
        let t = Instant::now();
        for c in 0..nr_chunks {
            // SAFETY: chunk c (512 sub-pages) is inside the buffer.
            unsafe { clear_huge_page(buf.add(c * HUGE), NR_SUBPAGES_2M, 300, policy) };
        }
        gbps(BUF_BYTES, t.elapsed().as_secs_f64())
    });

    // 2. Cache-resident: the same 2 MiB chunk, 256 times per measurement after one warm-up.
    const REPS: usize = 256;
    table("same 2 MiB cleared repeatedly (cache-resident)", &vs, |v| {
        // SAFETY: the first chunk is inside the buffer.
        unsafe { clear_range(v, buf, HUGE) };
        let t = Instant::now();
        for _ in 0..REPS {
            // SAFETY: as above.
            unsafe { clear_range(v, buf, HUGE) };
        }
        gbps(REPS * HUGE, t.elapsed().as_secs_f64())
    });

    // 3. Crossover: regions of growing size cleared repeatedly (>= 1 GiB of stores per measurement),
    // rep stosb against the GPR-only non-temporal routines.
    let cols: Vec<&Variant> = vs.iter().filter(|v| !v.name.starts_with("peer") && (v.nt || v.name.starts_with("rep stosb"))).collect();
    println!("\n### Region-size sweep: region cleared repeatedly, GB/s (median of {ROUNDS}; ratios per round)\n");
    let names: Vec<&str> = cols.iter().map(|v| v.name.split(" (").next().unwrap()).collect();
    print!("| region |");
    names.iter().for_each(|n| print!(" {n} |"));
    names[1..].iter().for_each(|n| print!(" {n} ÷ rep stosb |"));
    println!("\n|---:|{}", "---:|".repeat(2 * cols.len() - 1));
    for region in [256 << 10, MIB, HUGE, 4 * MIB, 8 * MIB, 16 * MIB, 32 * MIB, 64 * MIB, 256 * MIB, BUF_BYTES] {
        let reps = (BUF_BYTES / region).max(1);
        let mut r = vec![Vec::new(); cols.len()];
        for round in 0..ROUNDS {
            for k in 0..cols.len() {
                let i = (k + round) % cols.len();
                // SAFETY: region <= buffer.
                unsafe { clear_range(cols[i], buf, region) };
                let t = Instant::now();
                for _ in 0..reps {
                    // SAFETY: as above.
                    unsafe { clear_range(cols[i], buf, region) };
                }
                r[i].push(gbps(reps * region, t.elapsed().as_secs_f64()));
            }
        }
        let label = if region < MIB { format!("{} KiB", region >> 10) } else { format!("{} MiB", region / MIB) };
        print!("| {label} |");
        r.iter().for_each(|x| print!(" {:.2} |", median(&mut x.clone())));
        for x in &r[1..] {
            let mut ratio: Vec<f64> = (0..ROUNDS).map(|k| x[k] / r[0][k]).collect();
            print!(" {:.2} |", median(&mut ratio));
        }
        println!();
    }

    // 4. 4 KiB pages: hot (same page over and over) and cold (each page of the buffer once).
    // A single NT page clear needs its own fence, so the NT rows fence after every page.
    let single: Vec<Variant> = vs.iter().filter(|v| !v.name.starts_with("peer")).map(|v| Variant { name: v.name, page: v.page, nt: v.nt }).collect();
    table("4 KiB page, same page repeatedly (L1-hot), fence per page for NT", &single, |v| {
        const N: usize = 1 << 16;
        let t = Instant::now();
        for _ in 0..N {
            // SAFETY: the first page of the buffer.
            unsafe { clear_range(v, buf, PAGE_SIZE) };
        }
        gbps(N * PAGE_SIZE, t.elapsed().as_secs_f64())
    });
    table("4 KiB pages, each page of 1 GiB once (cold), fence per page for NT", &single, |v| {
        let t = Instant::now();
        for off in (0..BUF_BYTES).step_by(PAGE_SIZE) {
            // SAFETY: inside the buffer.
            unsafe { clear_range(v, buf.add(off), PAGE_SIZE) };
        }
        gbps(BUF_BYTES, t.elapsed().as_secs_f64())
    });

    // 5. Hint sub-page hotness: clear a cold 2 MiB chunk, then read the hint sub-page.
    const HINT: usize = 300;
    set_nt_store(NtStore::detect()).unwrap();
    println!("\n(non-temporal store for this section: {:?})", NtStore::detect());
    let cases: [(&str, ClearPolicy, usize); 3] = [
        ("NonTemporal, hint cleared last (cached)", ClearPolicy::NonTemporal, HINT),
        ("NonTemporal, no hint (all non-temporal)", ClearPolicy::NonTemporal, NR_SUBPAGES_2M),
        ("Cached, hint cleared last", ClearPolicy::Cached, HINT),
    ];
    let mut cyc = vec![Vec::new(); cases.len()];
    for trial in 0..nr_chunks * 2 {
        let (_, policy, hint) = cases[trial % cases.len()];
        // Walk the buffer so each chunk is cold (1 GiB >> LLC) when it is cleared.
        // SAFETY: the chunk index is < nr_chunks, inside the buffer.
        let chunk = unsafe { buf.add((trial % nr_chunks) * HUGE) };
        // SAFETY: the chunk is inside the buffer.
        unsafe { clear_huge_page(chunk, NR_SUBPAGES_2M, hint, policy) };
        // SAFETY: sub-page HINT is inside the chunk.
        cyc[trial % cases.len()].push(read_page_cycles(unsafe { chunk.add(HINT * PAGE_SIZE) }));
    }
    println!("\n### Reading sub-page {HINT} (4 KiB) right after clear_huge_page(2 MiB)\n");
    println!("| clear | read cycles (median, rdtsc+lfence) | samples |\n|---|---:|---:|");
    for (i, (name, _, _)) in cases.iter().enumerate() {
        let n = cyc[i].len();
        println!("| {name} | {:.0} | {n} |", median(&mut cyc[i]));
    }
}
