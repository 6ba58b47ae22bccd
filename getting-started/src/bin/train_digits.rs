//! Trains an embedding of the digits data set with this crate's triplet loss and gradient,
//! then measures how well it retrieves with the crate's retrieval kernels.
//!
//! ```sh
//! cargo run --release -p triplet-kernels-examples --bin train_digits
//! cargo run --release -p triplet-kernels-examples --bin train_digits -- --mining hard --dim 8 --steps 600 --seed 1
//! ```
//!
//! Recipe: a linear map 64 -> 8 (pixels scaled to 0..1, weights drawn from N(0, 1/64) with
//! a fixed-seed generator), batch-all triplet loss on cosine distance, margin 0.2, mean
//! over active triplets, plain SGD with learning rate 0.5 on batches of 10 classes x 8
//! images, 600 steps. Rows whose index % 5 == 0 (360 images) are held out; recall@1 is
//! measured on them, each held-out image querying the other 359. The baselines are PCA
//! to the same dimension (fitted on the training split) and the raw 64 pixels.
//!
//! The last line is `recall@1 learned=<v> pca=<v> raw=<v> dim=<d>`. The example also
//! writes an SVG picture of the held-out embeddings (their two principal directions,
//! coloured by class) to `target/train_digits.svg` (or `--svg PATH`).

use std::fmt::Write as _;
use std::path::Path;
use std::time::Instant;

use triplet_kernels::{
    retrieval_metrics, retrieval_metrics_workspace_len, triplet_batch_loss_grad,
    triplet_batch_loss_grad_workspace_len, BatchParams, Hinge, Matrix, Metric, Mining, Reduction,
};

const PIXELS: usize = 64;
const CLASSES: usize = 10;
const PER_CLASS: usize = 8;

struct Options {
    mining: Mining,
    dim: usize,
    steps: usize,
    seed: u64,
    lr: f32,
    svg: String,
}

fn parse_args() -> Result<Options, String> {
    let mut o = Options {
        mining: Mining::All,
        dim: 8,
        steps: 600,
        seed: 1,
        lr: 0.5,
        // The workspace's target folder, beside this crate's folder.
        svg: Path::new(env!("CARGO_MANIFEST_DIR"))
            .with_file_name("target")
            .join("train_digits.svg")
            .display()
            .to_string(),
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let mut value = || args.next().ok_or(format!("{flag} needs a value"));
        match flag.as_str() {
            "--mining" => {
                o.mining = match value()?.as_str() {
                    "all" => Mining::All,
                    "hard" => Mining::BatchHard,
                    "semihard" => Mining::SemiHard,
                    m => return Err(format!("unknown mining `{m}` (all, hard, semihard)")),
                }
            }
            "--dim" => o.dim = value()?.parse().map_err(|e| format!("--dim: {e}"))?,
            "--steps" => o.steps = value()?.parse().map_err(|e| format!("--steps: {e}"))?,
            "--seed" => o.seed = value()?.parse().map_err(|e| format!("--seed: {e}"))?,
            "--lr" => o.lr = value()?.parse().map_err(|e| format!("--lr: {e}"))?,
            "--svg" => o.svg = value()?,
            "-h" | "--help" => {
                println!(
                    "flags: --mining all|hard|semihard  --dim N  --steps N  --seed N  --lr X  --svg PATH"
                );
                std::process::exit(0);
            }
            f => return Err(format!("unknown flag `{f}` (try --help)")),
        }
    }
    if o.dim == 0 || o.dim > PIXELS {
        return Err(format!("--dim must be in 1..={PIXELS}"));
    }
    Ok(o)
}

/// A small deterministic generator (splitmix64), so runs are reproducible without a
/// dependency.
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in [0, 1).
    fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
    /// Standard normal (Box-Muller).
    fn normal(&mut self) -> f64 {
        let u = 1.0 - self.uniform();
        let v = self.uniform();
        (-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()
    }
    fn below(&mut self, n: usize) -> usize {
        (self.uniform() * n as f64) as usize % n
    }
}

struct Digits {
    pixels: Vec<f32>,
    labels: Vec<u32>,
}

impl Digits {
    fn rows(&self) -> usize {
        self.labels.len()
    }
}

fn load() -> Result<(Digits, Digits), String> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/data/digits.csv");
    let text = std::fs::read_to_string(path).map_err(|e| format!("{path}: {e}"))?;
    let mut train = Digits {
        pixels: vec![],
        labels: vec![],
    };
    let mut test = Digits {
        pixels: vec![],
        labels: vec![],
    };
    for (i, line) in text.lines().skip(1).enumerate() {
        let fields: Vec<f32> = line
            .split(',')
            .map(|f| {
                f.trim()
                    .parse::<f32>()
                    .map_err(|e| format!("line {}: {e}", i + 2))
            })
            .collect::<Result<_, _>>()?;
        if fields.len() != PIXELS + 1 {
            return Err(format!("line {}: {} fields", i + 2, fields.len()));
        }
        let split = if i % 5 == 0 { &mut test } else { &mut train };
        split.labels.push(fields[0] as u32);
        split.pixels.extend(fields[1..].iter().map(|p| p / 16.0));
    }
    Ok((train, test))
}

/// `out (rows x k) = a (rows x m) * b (m x k)`, row-major.
fn matmul(a: &[f32], b: &[f32], rows: usize, m: usize, k: usize, out: &mut [f32]) {
    out.fill(0.0);
    for (ar, orow) in a.chunks_exact(m).zip(out.chunks_exact_mut(k)).take(rows) {
        for (&av, br) in ar.iter().zip(b.chunks_exact(k)) {
            for (o, &bv) in orow.iter_mut().zip(br) {
                *o += av * bv;
            }
        }
    }
}

/// recall@1 of `emb` (rows x dim) retrieving within itself, leave-one-out, with the
/// crate's retrieval kernel.
fn recall_at_1(emb: &[f32], labels: &[u32], dim: usize, metric: Metric) -> f64 {
    let n = labels.len();
    let x = Matrix::new(emb, n, dim).expect("embedding shape");
    let mut ws = vec![0.0_f32; retrieval_metrics_workspace_len(n, n, dim)];
    retrieval_metrics(x, labels, None, metric, 1, &mut ws)
        .expect("retrieval")
        .precision_at_1
}

/// Symmetric eigen-decomposition by cyclic Jacobi rotations: eigenvalues and row-major
/// eigenvectors (as columns), sorted by decreasing eigenvalue.
fn eigen_symmetric(mut a: Vec<f64>, n: usize) -> (Vec<f64>, Vec<f64>) {
    let mut v = vec![0.0; n * n];
    for i in 0..n {
        v[i * n + i] = 1.0;
    }
    for _sweep in 0..100 {
        let off: f64 = (0..n)
            .flat_map(|i| (0..n).filter(move |&j| j != i).map(move |j| (i, j)))
            .map(|(i, j)| a[i * n + j] * a[i * n + j])
            .sum();
        if off < 1e-22 {
            break;
        }
        for p in 0..n {
            for q in p + 1..n {
                let apq = a[p * n + q];
                if apq.abs() < 1e-300 {
                    continue;
                }
                let theta = (a[q * n + q] - a[p * n + p]) / (2.0 * apq);
                let t = theta.signum() / (theta.abs() + (theta * theta + 1.0).sqrt());
                let t = if theta == 0.0 { 1.0 } else { t };
                let c = 1.0 / (t * t + 1.0).sqrt();
                let s = t * c;
                for k in 0..n {
                    let (akp, akq) = (a[k * n + p], a[k * n + q]);
                    a[k * n + p] = c * akp - s * akq;
                    a[k * n + q] = s * akp + c * akq;
                }
                for k in 0..n {
                    let (apk, aqk) = (a[p * n + k], a[q * n + k]);
                    a[p * n + k] = c * apk - s * aqk;
                    a[q * n + k] = s * apk + c * aqk;
                }
                for k in 0..n {
                    let (vkp, vkq) = (v[k * n + p], v[k * n + q]);
                    v[k * n + p] = c * vkp - s * vkq;
                    v[k * n + q] = s * vkp + c * vkq;
                }
            }
        }
    }
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&i, &j| a[j * n + j].total_cmp(&a[i * n + i]));
    let values = order.iter().map(|&i| a[i * n + i]).collect();
    let mut vectors = vec![0.0; n * n];
    for (col, &i) in order.iter().enumerate() {
        for k in 0..n {
            vectors[k * n + col] = v[k * n + i];
        }
    }
    (values, vectors)
}

/// PCA fitted on `fit` (rows x m): the mean and the top-`k` principal directions as an
/// `m x k` row-major projection.
fn pca(fit: &[f32], m: usize, k: usize) -> (Vec<f32>, Vec<f32>) {
    let rows = fit.len() / m;
    let mut mean = vec![0.0_f64; m];
    for r in fit.chunks_exact(m) {
        for (mu, &v) in mean.iter_mut().zip(r) {
            *mu += f64::from(v) / rows as f64;
        }
    }
    let mut cov = vec![0.0_f64; m * m];
    for r in fit.chunks_exact(m) {
        for i in 0..m {
            let ci = f64::from(r[i]) - mean[i];
            for j in 0..m {
                cov[i * m + j] += ci * (f64::from(r[j]) - mean[j]) / rows as f64;
            }
        }
    }
    let (_, vectors) = eigen_symmetric(cov, m);
    let mut proj = vec![0.0_f32; m * k];
    for i in 0..m {
        for j in 0..k {
            proj[i * k + j] = vectors[i * m + j] as f32;
        }
    }
    (mean.iter().map(|&v| v as f32).collect(), proj)
}

fn project(x: &[f32], m: usize, mean: &[f32], proj: &[f32], k: usize) -> Vec<f32> {
    let rows = x.len() / m;
    let centred: Vec<f32> = x
        .chunks_exact(m)
        .flat_map(|r| r.iter().zip(mean).map(|(v, mu)| v - mu))
        .collect();
    let mut out = vec![0.0; rows * k];
    matmul(&centred, proj, rows, m, k, &mut out);
    out
}

/// An SVG scatter plot of 2-d points coloured by label.
fn svg(points: &[f32], labels: &[u32], title: &str) -> String {
    const COLOURS: [&str; 10] = [
        "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
        "#bcbd22", "#17becf",
    ];
    let (size, pad) = (560.0_f32, 30.0_f32);
    let xs: Vec<f32> = points.chunks_exact(2).map(|p| p[0]).collect();
    let ys: Vec<f32> = points.chunks_exact(2).map(|p| p[1]).collect();
    let lo = |v: &[f32]| v.iter().copied().fold(f32::INFINITY, f32::min);
    let hi = |v: &[f32]| v.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let (x0, x1, y0, y1) = (lo(&xs), hi(&xs), lo(&ys), hi(&ys));
    let sx = |v: f32| pad + (v - x0) / (x1 - x0).max(1e-9) * (size - 2.0 * pad);
    let sy = |v: f32| size - pad - (v - y0) / (y1 - y0).max(1e-9) * (size - 2.0 * pad);
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" font-family="sans-serif">"#,
        w = size + 90.0,
        h = size + 20.0
    );
    let _ = writeln!(s, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(s, r#"<text x="{pad}" y="18" font-size="14">{title}</text>"#);
    for ((&x, &y), &l) in xs.iter().zip(&ys).zip(labels) {
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{:.1}" font-size="11" fill="{}" text-anchor="middle" dominant-baseline="central">{l}</text>"#,
            sx(x),
            sy(y),
            COLOURS[l as usize % 10]
        );
    }
    for (c, colour) in COLOURS.iter().enumerate() {
        let y = 40.0 + 20.0 * c as f32;
        let _ = writeln!(
            s,
            r#"<circle cx="{}" cy="{y}" r="6" fill="{colour}"/><text x="{}" y="{}" font-size="13">digit {c}</text>"#,
            size + 10.0,
            size + 22.0,
            y + 4.0
        );
    }
    s.push_str("</svg>\n");
    s
}

fn main() {
    let o = match parse_args() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(2);
        }
    };
    let (train, test) = match load() {
        Ok(d) => d,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(1);
        }
    };
    let start = Instant::now();
    let dim = o.dim;
    let mut rng = Rng(o.seed);
    let scale = (1.0 / PIXELS as f64).sqrt();
    let mut w: Vec<f32> = (0..PIXELS * dim)
        .map(|_| (rng.normal() * scale) as f32)
        .collect();

    let by_class: Vec<Vec<usize>> = (0..CLASSES as u32)
        .map(|c| {
            (0..train.rows())
                .filter(|&i| train.labels[i] == c)
                .collect()
        })
        .collect();
    let params = BatchParams::new()
        .with_metric(Metric::Cosine)
        .with_mining(o.mining)
        .with_margin(0.2)
        .with_hinge(Hinge::Relu)
        .with_reduction(Reduction::MeanNonzero);
    let b = CLASSES * PER_CLASS;
    let (mut xb, mut lb) = (vec![0.0_f32; b * PIXELS], vec![0_u32; b]);
    let mut emb = vec![0.0_f32; b * dim];
    let mut grad = vec![0.0_f32; b * dim];
    let mut gw = vec![0.0_f32; PIXELS * dim];
    let mut ws = vec![0.0_f32; triplet_batch_loss_grad_workspace_len(b, dim, params)];
    println!(
        "training a {PIXELS} -> {dim} linear embedding: {:?} mining, cosine, margin 0.2, \
         {} steps of {CLASSES} classes x {PER_CLASS} images",
        o.mining, o.steps
    );
    for step in 1..=o.steps {
        // A balanced batch: PER_CLASS distinct images of every class.
        for (c, idx) in by_class.iter().enumerate() {
            let mut picked: Vec<usize> = Vec::with_capacity(PER_CLASS);
            while picked.len() < PER_CLASS.min(idx.len()) {
                let i = idx[rng.below(idx.len())];
                if !picked.contains(&i) {
                    picked.push(i);
                }
            }
            for (k, &i) in picked.iter().enumerate() {
                let r = c * PER_CLASS + k;
                xb[r * PIXELS..(r + 1) * PIXELS]
                    .copy_from_slice(&train.pixels[i * PIXELS..(i + 1) * PIXELS]);
                lb[r] = train.labels[i];
            }
        }
        matmul(&xb, &w, b, PIXELS, dim, &mut emb);
        let e = Matrix::new(&emb, b, dim).expect("batch shape");
        let out = triplet_batch_loss_grad(e, &lb, params, &mut grad, &mut ws).expect("loss");
        // dL/dW = X^T dL/dE, then one SGD step.
        gw.fill(0.0);
        for (xr, gr) in xb.chunks_exact(PIXELS).zip(grad.chunks_exact(dim)) {
            for (&xv, gwr) in xr.iter().zip(gw.chunks_exact_mut(dim)) {
                for (g, &gv) in gwr.iter_mut().zip(gr) {
                    *g += xv * gv;
                }
            }
        }
        for (wv, g) in w.iter_mut().zip(&gw) {
            *wv -= o.lr * g;
        }
        if step % 50 == 0 || step == 1 {
            println!(
                "step {step:4}  loss {:.4}  active triplets {:5} of {}",
                out.loss, out.num_active, out.num_triplets
            );
        }
    }

    let n_test = test.rows();
    let mut learned = vec![0.0_f32; n_test * dim];
    matmul(&test.pixels, &w, n_test, PIXELS, dim, &mut learned);
    let r_learned = recall_at_1(&learned, &test.labels, dim, Metric::Cosine);

    let (mean, proj) = pca(&train.pixels, PIXELS, dim);
    let pca_test = project(&test.pixels, PIXELS, &mean, &proj, dim);
    let r_pca = recall_at_1(&pca_test, &test.labels, dim, Metric::Euclidean);
    let r_raw = recall_at_1(&test.pixels, &test.labels, PIXELS, Metric::Euclidean);

    // Picture: the held-out embeddings, L2-normalised (the loss is cosine), projected on
    // their two principal directions.
    let unit: Vec<f32> = learned
        .chunks_exact(dim)
        .flat_map(|r| {
            let n = r.iter().map(|v| v * v).sum::<f32>().sqrt().max(1e-12);
            r.iter().map(move |v| v / n)
        })
        .collect();
    let points = if dim >= 2 {
        let (m2, p2) = pca(&unit, dim, 2);
        project(&unit, dim, &m2, &p2, 2)
    } else {
        unit.iter().flat_map(|&v| [v, 0.0]).collect()
    };
    let title = format!(
        "digits: held-out images in the learned {dim}-d embedding (2-d PCA), recall@1 {r_learned:.3}"
    );
    match std::fs::write(&o.svg, svg(&points, &test.labels, &title)) {
        Ok(()) => println!("wrote {}", o.svg),
        Err(e) => eprintln!("could not write {}: {e}", o.svg),
    }
    println!(
        "trained and evaluated in {:.2} s",
        start.elapsed().as_secs_f64()
    );
    println!("recall@1 learned={r_learned:.4} pca={r_pca:.4} raw={r_raw:.4} dim={dim}");
}
