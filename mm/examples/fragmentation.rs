//! The Weiner / Gorman fragmentation experiment on the host.
//!
//! `cargo run --release -p mm --example fragmentation` runs 15 rounds of a mixed
//! workload over 128 MiB: unmovable (kernel, some long-lived), reclaimable (caches)
//! and movable (anonymous user pages with a migration callback) allocations with
//! random lifetimes, then a burst of order-9 (THP, `GFP_TRANSHUGE`) requests. It
//! prints, per round and configuration, order-9 successes, fallbacks and polluting
//! placements, and writes `docs/fragmentation.svg`.

use std::collections::{BTreeMap, BinaryHeap};
use std::cmp::Reverse;
use std::fmt::Write as _;
use std::sync::Mutex;

use mm::addr::Pfn;
use mm::compaction::{MigrateOps, Migration};
use mm::gfp::*;
use mm::page::{MovableOpsId, PageMeta, Rmap};
use mm::page_alloc::{AllocConfig, NoHooks, NoPhysMem, PageAlloc, Pages};
use mm::sync::HostPlatform;

const NR_PAGES: u64 = 32768; // 128 MiB
const ROUNDS: usize = 15;
const STEPS_PER_ROUND: u64 = 40_000;
const THP_BURST: usize = 24;
/// Each round, a short-lived anonymous spike of this many pages (memory pressure).
const SPIKE_PAGES: u64 = 12_000;

type Alloc = PageAlloc<'static, HostPlatform>;

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Owner of the movable pages: id -> handle, pfn -> id (migration changes pfns).
#[derive(Default)]
struct AnonOwner {
    inner: Mutex<(BTreeMap<u64, Pages>, BTreeMap<u64, u64>)>,
}

impl MigrateOps for AnonOwner {
    fn migrate(&self, m: &Migration<'_>) {
        let mut g = self.inner.lock().unwrap();
        let (by_id, by_pfn) = &mut *g;
        let Some(id) = by_pfn.remove(&m.old().0) else { return };
        let old = by_id.remove(&id).unwrap();
        m.copy_contents();
        let new = m.exchange(old).unwrap_or_else(|old| old);
        by_pfn.insert(new.pfn().0, id);
        by_id.insert(id, new);
    }
}

enum Held {
    Plain(Pages),
    Anon(u64),
}

#[derive(Clone, Copy, Default)]
struct Round {
    thp_ok: usize,
    fallbacks: u64,
    polluting: u64,
    allocs: u64,
    mixed_blocks: u64,
}

fn run(name: &str, config: AllocConfig) -> Vec<Round> {
    let meta: &'static [PageMeta] = Box::leak((0..NR_PAGES).map(|_| PageMeta::new()).collect::<Vec<_>>().into_boxed_slice());
    let a: &'static Alloc = Box::leak(Box::new(
        PageAlloc::new(meta, Pfn(0), &[Pfn(0)..Pfn(NR_PAGES)], &NoPhysMem, &NoHooks, config).unwrap(),
    ));
    let owner: &'static AnonOwner = Box::leak(Box::default());
    let ops: MovableOpsId = a.register_movable_ops(owner).unwrap();
    let mut rng = Rng(0x5eed_1234_abcd_ef01);
    let mut expiry: BinaryHeap<Reverse<(u64, u64)>> = BinaryHeap::new();
    let mut held: BTreeMap<u64, Held> = BTreeMap::new();
    let mut next_id = 0u64;
    let mut step = 0u64;
    let mut rounds = Vec::new();

    let mut churn = |steps: u64, step: &mut u64| {
        for _ in 0..steps {
            *step += 1;
            while let Some(&Reverse((t, id))) = expiry.peek() {
                if t > *step {
                    break;
                }
                expiry.pop();
                match held.remove(&id) {
                    Some(Held::Plain(p)) => a.free_pages(p),
                    Some(Held::Anon(id)) => {
                        let p = {
                            let mut g = owner.inner.lock().unwrap();
                            let p = g.0.remove(&id).unwrap();
                            g.1.remove(&p.pfn().0);
                            p
                        };
                        a.page(p.pfn()).unwrap().anon_add_mapcount(-1).unwrap();
                        a.free_pages(p);
                    }
                    None => {}
                }
            }
            let spike = *step % STEPS_PER_ROUND == STEPS_PER_ROUND / 2;
            let r = rng.below(100);
            let (gfp, order, life) = if spike {
                (GFP_HIGHUSER_MOVABLE, 0, 0)
            } else if r < 20 {
                // Unmovable kernel memory: mostly short-lived, some lives for rounds.
                let order = if rng.below(10) == 0 { 1 + rng.below(3) as usize } else { 0 };
                let life = if rng.below(10) < 7 { 1 + rng.below(2_000) } else { 20_000 + rng.below(100_000) };
                (GFP_KERNEL, order, life)
            } else if r < 30 {
                (GFP_KERNEL | __GFP_RECLAIMABLE, 0, 1_000 + rng.below(20_000))
            } else {
                let life = if rng.below(2) == 0 { 1 + rng.below(8_000) } else { 8_000 + rng.below(50_000) };
                (GFP_HIGHUSER_MOVABLE, 0, life)
            };
            let n = if spike { SPIKE_PAGES } else { 1 };
            for _ in 0..n {
                let life = if spike { 3_000 + rng.below(3_000) } else { life };
                let Ok(p) = a.alloc_pages(gfp | __GFP_NOWARN, order) else { continue };
                let id = next_id;
                next_id += 1;
                if gfp.contains(__GFP_MOVABLE) {
                    let m = a.page(p.pfn()).unwrap();
                    m.set_anon(Rmap { asid: 1, vpn: id }).unwrap();
                    m.set_movable(ops).unwrap();
                    let mut g = owner.inner.lock().unwrap();
                    g.1.insert(p.pfn().0, id);
                    g.0.insert(id, p);
                    held.insert(id, Held::Anon(id));
                } else {
                    held.insert(id, Held::Plain(p));
                }
                expiry.push(Reverse((*step + life, id)));
            }
        }
    };

    churn(STEPS_PER_ROUND * 2, &mut step); // warm-up to the steady state
    for _ in 0..ROUNDS {
        let before = a.stats();
        churn(STEPS_PER_ROUND, &mut step);
        let mut thps = Vec::new();
        for _ in 0..THP_BURST {
            if let Ok(p) = a.alloc_pages(GFP_TRANSHUGE | __GFP_NOWARN, 9) {
                thps.push(p);
            }
        }
        let thp_ok = thps.len();
        thps.into_iter().for_each(|p| a.free_pages(p));
        let after = a.stats();
        let mut map = String::new();
        a.pageblocks(&mut map).unwrap();
        rounds.push(Round {
            thp_ok,
            fallbacks: after.fallback - before.fallback,
            polluting: after.polluting - before.polluting,
            allocs: after.pgalloc - before.pgalloc,
            mixed_blocks: map.lines().skip(1).flat_map(|l| l.chars().skip(13)).filter(|&c| c == '!').count() as u64,
        });
    }
    a.check_consistency().expect("consistent after the experiment");
    let mut map = String::new();
    a.pageblocks(&mut map).unwrap();
    println!("\n## {name}\n\npage blocks after the last round:\n```\n{map}```");
    rounds
}

fn svg(results: &[(&str, &str, Vec<Round>)]) -> String {
    let (w, h, left, top, pw, ph) = (720.0, 400.0, 60.0, 30.0, 620.0, 300.0);
    let mut s = String::new();
    writeln!(s, r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12">"#).unwrap();
    writeln!(s, r#"<rect width="100%" height="100%" fill="white"/>"#).unwrap();
    writeln!(s, r#"<text x="{}" y="18" text-anchor="middle" font-size="14">Order-9 successes per round (of {THP_BURST} requests), 128 MiB</text>"#, w / 2.0).unwrap();
    let x = |i: usize| left + pw * i as f64 / (ROUNDS - 1) as f64;
    let y = |v: f64| top + ph - ph * v / THP_BURST as f64;
    for t in (0..=THP_BURST).step_by(4) {
        writeln!(s, r##"<line x1="{left}" y1="{0}" x2="{1}" y2="{0}" stroke="#ddd"/><text x="{2}" y="{3}" text-anchor="end">{t}</text>"##, y(t as f64), left + pw, left - 6.0, y(t as f64) + 4.0).unwrap();
    }
    for i in 0..ROUNDS {
        writeln!(s, r#"<text x="{}" y="{}" text-anchor="middle">{}</text>"#, x(i), top + ph + 16.0, i + 1).unwrap();
    }
    writeln!(s, r#"<text x="{}" y="{}" text-anchor="middle">round</text>"#, left + pw / 2.0, top + ph + 34.0).unwrap();
    writeln!(s, r##"<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="none" stroke="#333"/>"##).unwrap();
    for (k, (label, color, rounds)) in results.iter().enumerate() {
        let pts: Vec<String> = rounds.iter().enumerate().map(|(i, r)| format!("{:.1},{:.1}", x(i), y(r.thp_ok as f64))).collect();
        writeln!(s, r#"<polyline fill="none" stroke="{color}" stroke-width="2" points="{}"/>"#, pts.join(" ")).unwrap();
        for p in &pts {
            let (px, py) = p.split_once(',').unwrap();
            writeln!(s, r#"<circle cx="{px}" cy="{py}" r="3" fill="{color}"/>"#).unwrap();
        }
        let ly = top + 16.0 + 16.0 * k as f64;
        writeln!(s, r#"<line x1="{0}" y1="{ly}" x2="{1}" y2="{ly}" stroke="{color}" stroke-width="2"/><text x="{2}" y="{3}">{label}</text>"#, left + 10.0, left + 30.0, left + 36.0, ly + 4.0).unwrap();
    }
    s.push_str("</svg>\n");
    s
}

fn main() {
    let base = AllocConfig { min_free_kbytes: None, ..AllocConfig::default() };
    let configs: [(&str, &str, AllocConfig); 3] = [
        ("no grouping by mobility", "#d62728", AllocConfig { group_by_mobility: false, ..base }),
        ("grouping", "#1f77b4", base),
        ("grouping + defrag mode", "#2ca02c", AllocConfig { defrag_mode: true, ..base }),
    ];
    let mut results = Vec::new();
    for (name, color, config) in configs {
        results.push((name, color, run(name, config)));
    }
    println!("\n## Per round: order-9 successes (of {THP_BURST}) / fallbacks / polluting placements\n");
    print!("| round |");
    for (name, _, _) in &results {
        print!(" {name} |");
    }
    println!();
    println!("|---|---|---|---|");
    for i in 0..ROUNDS {
        print!("| {} |", i + 1);
        for (_, _, r) in &results {
            print!(" {} / {} / {} |", r[i].thp_ok, r[i].fallbacks, r[i].polluting);
        }
        println!();
    }
    println!("\n## Summary\n");
    println!("| config | first-round successes | last-round successes | last/first | fallback rate | polluting placements | mixed blocks (last round) |");
    println!("|---|---|---|---|---|---|---|");
    for (name, _, r) in &results {
        let first = r[0].thp_ok as f64;
        let last = r[ROUNDS - 1].thp_ok as f64;
        let fallbacks: u64 = r.iter().map(|x| x.fallbacks).sum();
        let allocs: u64 = r.iter().map(|x| x.allocs).sum();
        let polluting: u64 = r.iter().map(|x| x.polluting).sum();
        println!(
            "| {name} | {first} | {last} | {:.2} | {:.2} % ({fallbacks}/{allocs}) | {polluting} | {} |",
            if first > 0.0 { last / first } else { 0.0 },
            100.0 * fallbacks as f64 / allocs.max(1) as f64,
            r[ROUNDS - 1].mixed_blocks
        );
    }
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/fragmentation.svg");
    std::fs::write(path, svg(&results)).expect("write docs/fragmentation.svg");
    println!("\nwrote docs/fragmentation.svg");
}
