//! The Weiner / Gorman fragmentation experiment on the host.
//!
//! `cargo run --release -p mm --example fragmentation` runs 15 rounds of a mixed
//! workload over 128 MiB: unmovable (kernel, some long-lived), reclaimable (caches)
//! and movable (anonymous user pages with a migration callback) allocations with
//! random lifetimes, then a burst of order-9 (THP, `GFP_TRANSHUGE`) requests. It
//! prints, per round and configuration, order-9 successes, fallbacks and polluting
//! placements, and writes `docs/fragmentation.svg`. The workload is
//! `mm::fragtest`, which the kernel's `fragmentation` console command also runs.

use std::fmt::Write as _;

use mm::fragtest::{self, FragConfig, FragRun};

fn svg(results: &[(&str, &FragRun)], rounds: usize, thp_burst: usize) -> String {
    let (w, h, left, top, pw, ph) = (720.0, 400.0, 60.0, 30.0, 620.0, 300.0);
    let mut s = String::new();
    writeln!(s, r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12">"#).unwrap();
    writeln!(s, r#"<rect width="100%" height="100%" fill="white"/>"#).unwrap();
    writeln!(s, r#"<text x="{}" y="18" text-anchor="middle" font-size="14">Order-9 successes per round (of {thp_burst} requests), 128 MiB</text>"#, w / 2.0).unwrap();
    let x = |i: usize| left + pw * i as f64 / (rounds - 1) as f64;
    let y = |v: f64| top + ph - ph * v / thp_burst as f64;
    for t in (0..=thp_burst).step_by(4) {
        writeln!(s, r##"<line x1="{left}" y1="{0}" x2="{1}" y2="{0}" stroke="#ddd"/><text x="{2}" y="{3}" text-anchor="end">{t}</text>"##, y(t as f64), left + pw, left - 6.0, y(t as f64) + 4.0).unwrap();
    }
    for i in 0..rounds {
        writeln!(s, r#"<text x="{}" y="{}" text-anchor="middle">{}</text>"#, x(i), top + ph + 16.0, i + 1).unwrap();
    }
    writeln!(s, r#"<text x="{}" y="{}" text-anchor="middle">round</text>"#, left + pw / 2.0, top + ph + 34.0).unwrap();
    writeln!(s, r##"<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="none" stroke="#333"/>"##).unwrap();
    for (k, (color, run)) in results.iter().enumerate() {
        let label = run.name;
        let pts: Vec<String> = run.rounds.iter().enumerate().map(|(i, r)| format!("{:.1},{:.1}", x(i), y(r.thp_ok as f64))).collect();
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
    let cfg = FragConfig::default();
    let colors = ["#d62728", "#1f77b4", "#2ca02c"];
    let mut results = Vec::new();
    for (name, config) in fragtest::configurations() {
        let run = fragtest::run(name, &cfg, config, |_| {}).expect("experiment");
        println!("\n## {name}\n\npage blocks after the last round:\n```\n{}```", run.pageblocks);
        results.push(run);
    }
    let mut out = String::new();
    fragtest::report(&results, cfg.thp_burst, &mut out).unwrap();
    print!("{out}");
    let colored: Vec<(&str, &FragRun)> = colors.iter().copied().zip(&results).collect();
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/fragmentation.svg");
    std::fs::write(path, svg(&colored, cfg.rounds, cfg.thp_burst)).expect("write docs/fragmentation.svg");
    println!("\nwrote docs/fragmentation.svg");
}
