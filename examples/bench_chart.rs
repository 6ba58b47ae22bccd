//! Turns criterion's saved results of `benches/workloads.rs` into an SVG chart and a Markdown
//! table, so the README's numbers and its chart come from the same run.
//!
//! ```sh
//! cargo bench --bench workloads && cargo run --release --example bench_chart -- --caption "..."
//! ```
//!
//! Flags (defaults relative to the crate root): `--criterion DIR` (default
//! `$CARGO_TARGET_DIR/criterion`, else `target/criterion`),
//! `--out FILE` (default `benches/workloads.svg`), `--caption TEXT` (CPU, build flags, date),
//! `--peak-gflops X` (draws the core's f32 peak in the W1 panel and adds "% of peak").
//!
//! It reads `<dir>/workloads/<id>/new/estimates.json` (the time `cargo bench` prints, the
//! slope of criterion's linear fit, or the mean where there is none, and its 95 % confidence
//! interval, in ns) and `benchmark.json` (throughput: `2 n n d` elements for W1, so
//! elements/s are FLOP/s). The chart has two panels: W1 in GFLOP/s next to the GEMM anchor,
//! and W2..W6 as time over target. The Markdown table goes to stdout; a second table
//! compares the `row_blocks` group on one and two threads when its results are present.
//! Missing results are skipped with a note on stderr; malformed ones stop with status 1.

#![warn(clippy::pedantic)]

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use serde_json::Value;

// The workloads, their labels and time targets: the table the benches measure.
#[path = "../benches/common/workloads.rs"]
mod workloads;
use workloads::{Kind, WORKLOADS};

/// W1 must reach this fraction of the GEMM anchor's GFLOP/s in the same run (and its time
/// target, from the table).
const ANCHOR_FRACTION: f64 = 0.8;
/// Fraction of a full `X X^T` product that the W1 pairwise kernels execute (one triangle
/// of 16 x 16 tiles, n = 1024): `(n + 16) / (2 n)`. Their GFLOP/s are reported as the
/// product's `2 n^2 d` over the time, the rate a full product would need; of peak, the
/// executed share counts.
const PAIRWISE_WORK: f64 = (1024.0 + 16.0) / 2048.0;
const ROW_BLOCKS: [&str; 2] = ["pairwise", "cross"];
/// The workload the `row_blocks` group splits into two blocks.
const ROW_BLOCKS_ID: &str = "W1_sqeuclid_n1024_d128";

/// One criterion result: its time estimate and confidence interval (ns), throughput elements.
#[derive(Clone, Copy)]
struct Est {
    time: f64,
    lo: f64,
    hi: f64,
    elements: Option<f64>,
}

impl Est {
    /// Throughput in G elements/s (GFLOP/s for W1): (estimate, slowest, fastest).
    fn giga(&self) -> Option<(f64, f64, f64)> {
        self.elements
            .map(|e| (e / self.time, e / self.hi, e / self.lo))
    }
}

struct Opts {
    criterion: PathBuf,
    out: PathBuf,
    caption: String,
    peak: Option<f64>,
}

fn parse_args() -> Result<Opts, String> {
    let target = std::env::var_os("CARGO_TARGET_DIR").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("target"),
        PathBuf::from,
    );
    let mut o = Opts {
        criterion: target.join("criterion"),
        out: Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/workloads.svg"),
        caption: String::new(),
        peak: None,
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let mut value = || args.next().ok_or(format!("{flag} needs a value"));
        match flag.as_str() {
            "--criterion" => o.criterion = value()?.into(),
            "--out" => o.out = value()?.into(),
            "--caption" => o.caption = value()?,
            "--peak-gflops" => {
                let v = value()?;
                o.peak = Some(
                    v.parse::<f64>()
                        .ok()
                        .filter(|p| p.is_finite() && *p > 0.0)
                        .ok_or(format!("--peak-gflops: not a positive number: {v}"))?,
                );
            }
            _ => {
                return Err(format!(
                    "unknown flag {flag}\nflags: --criterion DIR  --out FILE  --caption TEXT  \
                     --peak-gflops X"
                ))
            }
        }
    }
    Ok(o)
}

/// Parsed JSON of `path`, `None` if the file does not exist.
fn read_json(path: &Path) -> Result<Option<Value>, String> {
    match std::fs::read_to_string(path) {
        Ok(text) => serde_json::from_str(&text)
            .map(Some)
            .map_err(|e| format!("{}: malformed JSON: {e}", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!("{}: {e}", path.display())),
    }
}

/// The result saved in `dir/new`, `None` (with a note on stderr) if it is missing.
fn load(dir: &Path, name: &str) -> Result<Option<Est>, String> {
    let path = dir.join("new").join("estimates.json");
    let Some(est) = read_json(&path)? else {
        eprintln!("skipping {name}: {} not found", path.display());
        return Ok(None);
    };
    let num = |v: &Value, what: &str| {
        v.as_f64()
            .filter(|x| x.is_finite() && *x > 0.0)
            .ok_or(format!(
                "{}: {what} missing or not a positive number",
                path.display()
            ))
    };
    // The estimate `cargo bench` prints: the slope of criterion's linear fit of time
    // against iterations, or the mean where criterion fitted no slope (flat sampling).
    let (which, point) = match &est["slope"] {
        Value::Object(_) => ("slope", &est["slope"]),
        _ => ("mean", &est["mean"]),
    };
    let ci = &point["confidence_interval"];
    let bench_path = dir.join("new").join("benchmark.json");
    let elements = match read_json(&bench_path)? {
        Some(b) => match &b["throughput"]["Elements"] {
            Value::Null => None,
            v => Some(num(v, "throughput.Elements")?),
        },
        None => None,
    };
    Ok(Some(Est {
        time: num(&point["point_estimate"], which)?,
        lo: num(&ci["lower_bound"], which)?,
        hi: num(&ci["upper_bound"], which)?,
        elements,
    }))
}

/// Unit of a time in ns: (divisor, name).
fn unit(ns: f64) -> (f64, &'static str) {
    match ns {
        x if x < 1e3 => (1.0, "ns"),
        x if x < 1e6 => (1e3, "us"),
        x if x < 1e9 => (1e6, "ms"),
        _ => (1e9, "s"),
    }
}

/// A number with three significant digits (no more than two decimals).
fn sig3(v: f64) -> String {
    match v.abs() {
        0.0 => "0".to_string(),
        a if a >= 100.0 => format!("{v:.0}"),
        a if a >= 10.0 => format!("{v:.1}"),
        _ => format!("{v:.2}"),
    }
}

fn fmt_time(ns: f64) -> String {
    let (div, name) = unit(ns);
    format!("{} {name}", sig3(ns / div))
}

/// "1.37 ms (1.35-1.39)": the estimate and its confidence interval in the estimate's unit.
fn fmt_ci(e: &Est) -> String {
    let (div, name) = unit(e.time);
    let s = |v: f64| sig3(v / div);
    format!("{} {name} ({}-{})", s(e.time), s(e.lo), s(e.hi))
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// A tick step giving about five ticks up to `max`.
fn tick_step(max: f64) -> f64 {
    let raw = max / 5.0;
    let mag = 10f64.powf(raw.log10().floor());
    let norm = [1.0, 2.0, 2.5, 5.0, 10.0]
        .into_iter()
        .find(|m| m * mag >= raw)
        .unwrap_or(10.0);
    norm * mag
}

// Chart geometry (px): labels end at LABEL_X, bars run from X0 to X1, value labels start at
// VALUE_X, clear of the bars and of the marker lines.
const WIDTH: f64 = 860.0;
const LABEL_X: f64 = 170.0;
const X0: f64 = 180.0;
const X1: f64 = 580.0;
const VALUE_X: f64 = 592.0;
const BAR: f64 = 22.0;
const STEP: f64 = 32.0;

struct Svg {
    body: String,
    y: f64,
}

impl Svg {
    fn text(&mut self, x: f64, y: f64, attrs: &str, s: &str) {
        let _ = writeln!(
            self.body,
            r#"<text x="{x:.1}" y="{y:.1}" {attrs}>{}</text>"#,
            esc(s)
        );
    }
    fn line(&mut self, (x1, y1): (f64, f64), (x2, y2): (f64, f64), attrs: &str) {
        let _ = writeln!(
            self.body,
            r#"<line x1="{x1:.1}" y1="{y1:.1}" x2="{x2:.1}" y2="{y2:.1}" {attrs}/>"#
        );
    }
    fn rect(&mut self, x: f64, y: f64, w: f64, h: f64, fill: &str) {
        let _ = writeln!(
            self.body,
            r#"<rect x="{x:.1}" y="{y:.1}" width="{w:.1}" height="{h:.1}" fill="{fill}"/>"#
        );
    }

    /// One bar `[0, v]` with a whisker `[lo, hi]` and a label after it; returns the bar's y.
    fn bar(
        &mut self,
        sx: &dyn Fn(f64) -> f64,
        name: &str,
        (v, lo, hi): (f64, f64, f64),
        fill: &str,
        label: &str,
    ) -> f64 {
        let y = self.y;
        let mid = y + BAR / 2.0;
        self.text(
            LABEL_X,
            mid + 4.0,
            r#"font-size="12" text-anchor="end""#,
            name,
        );
        self.rect(X0, y, sx(v) - X0, BAR, fill);
        let (a, b) = (sx(lo.min(hi)), sx(lo.max(hi)));
        let ink = r##"stroke="#222" stroke-width="1.2""##;
        self.line((a, mid), (b, mid), ink);
        self.line((a, mid - 5.0), (a, mid + 5.0), ink);
        self.line((b, mid - 5.0), (b, mid + 5.0), ink);
        self.text(VALUE_X, mid + 4.0, r#"font-size="11""#, label);
        self.y += STEP;
        y
    }

    /// A panel's title and a grey note under it; leaves room for the marker labels.
    fn heading(&mut self, title: &str, note: &str) {
        self.text(16.0, self.y, r#"font-size="13" font-weight="bold""#, title);
        self.y += 16.0;
        self.text(16.0, self.y, r##"font-size="11" fill="#555""##, note);
        self.y += 36.0;
    }

    /// A vertical marker across the bars from `top` with its label above them.
    fn marker(&mut self, x: f64, top: f64, label: &str, anchor: &str, style: &str) {
        self.line((x, top - 4.0), (x, self.y - STEP + BAR + 4.0), style);
        let attrs = format!(r##"font-size="11" fill="#333" text-anchor="{anchor}""##);
        self.text(x, top - 8.0, &attrs, label);
    }

    /// The x axis below the bars, ticks every `step` up to `max`.
    fn axis(&mut self, sx: &dyn Fn(f64) -> f64, max: f64, step: f64, title: &str) {
        let y = self.y - STEP + BAR + 8.0;
        self.line((X0, y), (X1, y), r##"stroke="#444""##);
        let mut t = 0.0;
        while t <= max * 1.0001 {
            self.line((sx(t), y), (sx(t), y + 4.0), r##"stroke="#444""##);
            // Rounded to hide the drift of the running sum; `Display` drops trailing zeros.
            let tick = format!("{}", (t * 1e4).round() / 1e4);
            self.text(
                sx(t),
                y + 16.0,
                r#"font-size="10" text-anchor="middle""#,
                &tick,
            );
            t += step;
        }
        self.text(
            f64::midpoint(X0, X1),
            y + 30.0,
            r#"font-size="11" text-anchor="middle""#,
            title,
        );
        self.y = y + 56.0;
    }
}

/// An axis scale: `(max, step)` with the max rounded up to a tick.
fn scale(max: f64) -> (f64, f64) {
    let step = tick_step(max);
    ((max / step).ceil() * step, step)
}

/// A row of the chart or table: criterion id, chart label, result, time target (ns).
struct Row<T> {
    id: &'static str,
    name: &'static str,
    est: Est,
    target: T,
}

impl<T> Row<T> {
    /// Whether the row is the GEMM anchor of the W1 panel.
    fn is_anchor(&self) -> bool {
        WORKLOADS
            .iter()
            .any(|w| w.id == self.id && matches!(w.kind, Kind::GemmAnchor))
    }
}

/// The x scale of a panel whose axis ends at `max`.
fn scale_x(max: f64) -> impl Fn(f64) -> f64 {
    move |v: f64| X0 + (X1 - X0) * (v / max).clamp(0.0, 1.0)
}

/// Panel (a): W1 GFLOP/s, the 0.8x anchor marker, the optional peak line.
fn panel_w1(svg: &mut Svg, w1: &[Row<Option<f64>>], peak: Option<f64>) {
    svg.heading(
        "(a) W1 distance matrix, n 1024, d 128: GFLOP/s (higher is better)",
        "2 n^2 d / time (pairwise kernels execute about half: one triangle); whisker: 95% CI; tick: time target",
    );
    let top = svg.y;
    let most = w1.iter().filter_map(|r| r.est.giga()).map(|g| g.2);
    let (max, step) = scale(most.fold(peak.unwrap_or(0.0), f64::max) * 1.02);
    let sx = scale_x(max);
    for r in w1 {
        let Some(g) = r.est.giga() else { continue };
        let fill = if r.is_anchor() { "#9d9d9d" } else { "#4c78a8" };
        let label = format!("{} GFLOP/s, {}", sig3(g.0), fmt_time(r.est.time));
        let y = svg.bar(&sx, r.name, g, fill, &label);
        if let (Some(t), Some(el)) = (r.target, r.est.elements) {
            let x = sx(el / t);
            let ink = r#"stroke="black" stroke-width="2.5""#;
            svg.line((x, y - 3.0), (x, y + BAR + 3.0), ink);
        }
    }
    if let Some(a) = anchor_gflops(w1) {
        let at = ANCHOR_FRACTION * a;
        let label = format!("{ANCHOR_FRACTION}x anchor ({})", sig3(at));
        let style = r##"stroke="#333" stroke-dasharray="5 3""##;
        svg.marker(sx(at), top, &label, "end", style);
    }
    if let Some(p) = peak {
        let label = format!("f32 peak {}", sig3(p));
        svg.marker(
            sx(p),
            top,
            &label,
            "start",
            r##"stroke="#b279a2" stroke-width="2""##,
        );
    }
    svg.axis(&sx, max, step, "GFLOP/s");
}

/// Panel (b): W2..W6 time over target, the target line at 1.
fn panel_batch(svg: &mut Svg, batch: &[Row<f64>]) {
    svg.heading(
        "(b) W2-W6 loss + gradient: time / target (at most 1 meets the target)",
        "whisker: 95% CI; green: target met, red: not met",
    );
    let top = svg.y;
    let most = batch
        .iter()
        .map(|r| r.est.hi / r.target)
        .fold(1.0, f64::max);
    let (max, step) = scale(most * 1.02);
    let sx = scale_x(max);
    for r in batch {
        let (e, t) = (&r.est, r.target);
        let ratio = (e.time / t, e.lo / t, e.hi / t);
        let fill = if ratio.0 <= 1.0 { "#54a24b" } else { "#e45756" };
        let (m, tt, x) = (fmt_time(e.time), fmt_time(t), sig3(ratio.0));
        svg.bar(
            &sx,
            r.name,
            ratio,
            fill,
            &format!("{m} / target {tt} ({x}x)"),
        );
    }
    svg.marker(
        sx(1.0),
        top,
        "target",
        "middle",
        r#"stroke="black" stroke-width="1.5""#,
    );
    svg.axis(&sx, max, step, "time / target");
}

fn chart(opts: &Opts, w1: &[Row<Option<f64>>], batch: &[Row<f64>]) -> String {
    let mut svg = Svg {
        body: String::new(),
        y: 26.0,
    };
    let title = "triplet-kernels: cargo bench --bench workloads";
    svg.text(16.0, svg.y, r#"font-size="16" font-weight="bold""#, title);
    if !opts.caption.is_empty() {
        svg.y += 20.0;
        svg.text(
            16.0,
            svg.y,
            r##"font-size="12" fill="#555""##,
            &opts.caption,
        );
    }
    svg.y += 36.0;
    if !w1.is_empty() {
        panel_w1(&mut svg, w1, opts.peak);
    }
    if !batch.is_empty() {
        panel_batch(&mut svg, batch);
    }
    let h = svg.y - 16.0;
    format!(
        concat!(
            r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h:.0}" "#,
            r#"viewBox="0 0 {w} {h:.0}" font-family="sans-serif">"#,
            "\n",
            r#"<rect width="100%" height="100%" fill="white"/>"#,
            "\n{body}</svg>\n"
        ),
        w = WIDTH,
        h = h,
        body = svg.body
    )
}

fn anchor_gflops(w1: &[Row<Option<f64>>]) -> Option<f64> {
    w1.iter()
        .find(|r| r.is_anchor())
        .and_then(|r| r.est.giga())
        .map(|g| g.0)
}

/// The verdict on a W1 kernel: both the anchor fraction and the time target must hold.
fn w1_verdict(median: f64, target: f64, vs_anchor: Option<f64>) -> String {
    let time_ok = median <= target;
    let (ok, anchor) = match vs_anchor {
        Some(r) if r >= ANCHOR_FRACTION => (time_ok, format!(">= {ANCHOR_FRACTION}x anchor")),
        Some(_) => (false, format!("< {ANCHOR_FRACTION}x anchor")),
        None => (false, "no anchor result".to_string()),
    };
    let verdict = if ok { "yes" } else { "no" };
    let rel = if time_ok { "<=" } else { ">" };
    let (m, t) = (fmt_time(median), fmt_time(target));
    format!("{verdict} ({anchor}; {m} {rel} {t})")
}

fn print_workloads(w1: &[Row<Option<f64>>], batch: &[Row<f64>], peak: Option<f64>) {
    let anchor = anchor_gflops(w1);
    println!("| workload | time (95% CI) | GFLOP/s or target | x anchor / x target | met? |");
    println!("|---|---|---|---|---|");
    for r in w1 {
        let g = r.est.giga().map_or(0.0, |g| g.0);
        let mut gflops = format!("{} GFLOP/s", sig3(g));
        if let Some(p) = peak {
            // The pairwise kernels compute one triangle of 16 x 16 tiles (diagonal tiles
            // whole): `n (n + 16) d` multiply-adds instead of the product's `n^2 d`.
            let executed = if r.is_anchor() { g } else { g * PAIRWISE_WORK };
            let _ = write!(gflops, " ({:.0}% of peak)", 100.0 * executed / p);
        }
        let ratio = anchor.map(|a| g / a);
        let xa = ratio.map_or("n/a".into(), |x| format!("{x:.2}x anchor"));
        let met = r
            .target
            .map_or("anchor".into(), |t| w1_verdict(r.est.time, t, ratio));
        println!(
            "| `{}` | {} | {gflops} | {xa} | {met} |",
            r.id,
            fmt_ci(&r.est)
        );
    }
    for r in batch {
        let (e, t) = (&r.est, r.target);
        let met = if e.time <= t { "yes" } else { "no" };
        let (ci, tt, x) = (fmt_ci(e), fmt_time(t), e.time / t);
        println!(
            "| `{}` | {ci} | target {tt} | {x:.2}x target | {met} |",
            r.id
        );
    }
}

/// The row-block table (one vs two threads), when the `row_blocks` group has results.
fn print_row_blocks(criterion: &Path) -> Result<(), String> {
    let dir = criterion.join("row_blocks");
    if !dir.is_dir() {
        eprintln!("no {}: row-block table left out", dir.display());
        return Ok(());
    }
    let mut rows = Vec::new();
    for kind in ROW_BLOCKS {
        let mut pair = [None, None];
        for (slot, threads) in pair.iter_mut().zip(["1thread", "2threads"]) {
            // criterion flattens the `/` of a function id into `_` in the directory name.
            let flat = format!("{ROW_BLOCKS_ID}_{kind}_2blocks_{threads}");
            let nested = format!("{ROW_BLOCKS_ID}/{kind}_2blocks_{threads}");
            let name = if dir.join(&flat).is_dir() {
                flat
            } else {
                nested
            };
            *slot = load(&dir.join(&name), &name)?;
        }
        if let [Some(one), Some(two)] = pair {
            rows.push((kind, one, two));
        }
    }
    if rows.is_empty() {
        return Ok(());
    }
    let cell = |e: &Est| match e.giga() {
        Some(g) => format!("{}, {} GFLOP/s", fmt_ci(e), sig3(g.0)),
        None => fmt_ci(e),
    };
    println!();
    println!("| row blocks, W1 sqeuclid n1024 d128 | 1 thread | 2 threads | speed-up |");
    println!("|---|---|---|---|");
    for (kind, one, two) in &rows {
        let (a, b, x) = (cell(one), cell(two), one.time / two.time);
        println!("| {kind}, 2 blocks | {a} | {b} | {x:.2}x |");
    }
    Ok(())
}

fn run() -> Result<(), String> {
    let opts = parse_args()?;
    let group = opts.criterion.join("workloads");
    let mut w1 = Vec::new();
    let mut batch = Vec::new();
    for w in &WORKLOADS {
        let (id, name) = (w.id, w.label);
        let Some(est) = load(&group.join(id), id)? else {
            continue;
        };
        match (w.kind, w.target_ns) {
            (Kind::Batch { .. }, Some(target)) => batch.push(Row {
                id,
                name,
                est,
                target,
            }),
            (Kind::Batch { .. }, None) => {
                return Err(format!("workload {id} has no time target"));
            }
            (Kind::Pairwise(_) | Kind::GemmAnchor, _) if est.elements.is_none() => {
                eprintln!("skipping {id}: no Elements throughput in benchmark.json");
            }
            (Kind::Pairwise(_) | Kind::GemmAnchor, target) => w1.push(Row {
                id,
                name,
                est,
                target,
            }),
        }
    }
    if w1.is_empty() && batch.is_empty() {
        let dir = group.display();
        return Err(format!(
            "no workload results under {dir}: run `cargo bench --bench workloads` first"
        ));
    }
    std::fs::write(&opts.out, chart(&opts, &w1, &batch))
        .map_err(|e| format!("could not write {}: {e}", opts.out.display()))?;
    eprintln!("wrote {}", opts.out.display());
    print_workloads(&w1, &batch, opts.peak);
    print_row_blocks(&opts.criterion)
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench_chart: {e}");
            ExitCode::FAILURE
        }
    }
}
