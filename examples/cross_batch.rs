//! The digits training of `getting-started`'s `train_digits`, run three ways with the
//! reference forms of the batch loss:
//!
//! 1. one thread, the whole batch in one call of `triplet_batch_loss_grad`;
//! 2. data-parallel on two threads: each worker holds half of the batch (its anchors),
//!    mines them against the gathered whole batch (`triplet_batch_ref_loss_grad`, the
//!    batch as the reference set, each anchor's own row excluded), and the workers'
//!    gradients are all-reduced: the candidate gradients summed, added to the anchor
//!    rows, scaled by the weight `combine_batch_losses` gives for the combined counts;
//! 3. with a cross-batch memory (XBM): a ring buffer of the last embeddings, the current
//!    batch enqueued into it and mined against all of it (the memory detached, as
//!    pytorch-metric-learning's `CrossBatchMemory` does).
//!
//! ```sh
//! cargo run --release --example cross_batch
//! cargo run --release --example cross_batch -- --mining hard --steps 600 --memory 8
//! ```
//!
//! Recipe (train_digits'): a linear map 64 -> 8, cosine distance, margin 0.2, mean over
//! active triplets, SGD with learning rate 0.5 on batches of 10 classes x 8 images, 600
//! steps; rows whose index % 5 == 0 are held out and recall@1 is measured on them. The
//! library never allocates; this program does (its data, its ring buffer, its threads).

use std::time::Instant;

use triplet_kernels::{
    combine_batch_losses, retrieval_metrics, retrieval_metrics_workspace_len,
    triplet_batch_loss_grad, triplet_batch_loss_grad_workspace_len, triplet_batch_ref_loss_grad,
    triplet_batch_ref_loss_grad_workspace_len, BatchParams, GradMode, Hinge, Matrix, Metric,
    Mining, Reduction, RefGrad, RefSet,
};

const PIXELS: usize = 64;
const CLASSES: usize = 10;
const PER_CLASS: usize = 8;
const BATCH: usize = CLASSES * PER_CLASS;

/// splitmix64, as train_digits.
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
    fn normal(&mut self) -> f64 {
        let u = 1.0 - self.uniform();
        let v = self.uniform();
        (-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()
    }
    fn below(&mut self, n: usize) -> usize {
        (self.uniform() * n as f64) as usize % n
    }
}

struct Split {
    pixels: Vec<f32>,
    labels: Vec<u32>,
}

/// The digits data shipped with getting-started: train and held-out splits.
fn load() -> Result<(Split, Split), String> {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/getting-started/data/digits.csv"
    );
    let text = std::fs::read_to_string(path).map_err(|e| format!("{path}: {e}"))?;
    let (mut train, mut test) = (
        Split {
            pixels: vec![],
            labels: vec![],
        },
        Split {
            pixels: vec![],
            labels: vec![],
        },
    );
    for (i, line) in text.lines().skip(1).enumerate() {
        let f: Vec<f32> = line
            .split(',')
            .map(|v| {
                v.trim()
                    .parse::<f32>()
                    .map_err(|e| format!("line {}: {e}", i + 2))
            })
            .collect::<Result<_, _>>()?;
        if f.len() != PIXELS + 1 {
            return Err(format!("line {}: {} fields", i + 2, f.len()));
        }
        let s = if i % 5 == 0 { &mut test } else { &mut train };
        s.labels.push(f[0] as u32);
        s.pixels.extend(f[1..].iter().map(|p| p / 16.0));
    }
    Ok((train, test))
}

/// `out (rows x k) = a (rows x m) * b (m x k)`.
fn matmul(a: &[f32], b: &[f32], m: usize, k: usize, out: &mut [f32]) {
    out.fill(0.0);
    for (ar, orow) in a.chunks_exact(m).zip(out.chunks_exact_mut(k)) {
        for (&av, br) in ar.iter().zip(b.chunks_exact(k)) {
            for (o, &bv) in orow.iter_mut().zip(br) {
                *o += av * bv;
            }
        }
    }
}

fn recall_at_1(emb: &[f32], labels: &[u32], dim: usize) -> f64 {
    let n = labels.len();
    let x = Matrix::new(emb, n, dim).expect("embedding shape");
    let mut ws = vec![0.0_f32; retrieval_metrics_workspace_len(n, n, dim)];
    retrieval_metrics(x, labels, None, Metric::Cosine, 1, &mut ws)
        .expect("retrieval")
        .precision_at_1
}

#[derive(Clone, Copy, PartialEq)]
enum Mode {
    OneThread,
    TwoThreads,
    Memory(usize),
}

/// One worker of the data-parallel step: the anchors `r0..r1` of the gathered batch
/// `all`, mined against all of it; returns its sums and counts, its anchor rows' gradient
/// in `gx` and its gradient for every candidate in `gy`.
#[allow(clippy::too_many_arguments)]
fn worker(
    all: Matrix<'_>,
    labels: &[u32],
    own: &[u32],
    r0: usize,
    r1: usize,
    params: BatchParams,
    gx: &mut [f32],
    gy: &mut [f32],
) -> triplet_kernels::BatchLoss {
    let d = all.dim();
    let sum = params.with_reduction(Reduction::Sum);
    let x = Matrix::new(&all.as_slice()[r0 * d..r1 * d], r1 - r0, d).expect("block");
    let refs = RefSet::new(all, labels).with_self_index(&own[r0..r1]);
    let mut ws =
        vec![0.0_f32; triplet_batch_ref_loss_grad_workspace_len(r1 - r0, all.rows(), d, sum)];
    let grad = RefGrad::new(gx).with_y(gy).with_mode(GradMode::Overwrite);
    triplet_batch_ref_loss_grad(x, &labels[r0..r1], refs, sum, grad, &mut ws).expect("loss")
}

/// How far the two-thread steps were from the one-thread call on the same embeddings:
/// the largest loss difference, relative to the loss, the largest gradient difference,
/// relative to the gradient's largest element, and whether the counts always agreed.
#[derive(Default)]
struct Agreement {
    loss: f32,
    grad: f32,
    counts: bool,
}

/// Trains the embedding one way; returns the weights, the last loss and, for two
/// threads, how each step compared with the one-thread call.
fn train(
    train: &Split,
    mode: Mode,
    mining: Mining,
    steps: usize,
    seed: u64,
) -> (Vec<f32>, f32, Agreement) {
    let dim = 8;
    let mut rng = Rng(seed);
    let scale = (1.0 / PIXELS as f64).sqrt();
    let mut w: Vec<f32> = (0..PIXELS * dim)
        .map(|_| (rng.normal() * scale) as f32)
        .collect();
    let by_class: Vec<Vec<usize>> = (0..CLASSES as u32)
        .map(|c| {
            (0..train.labels.len())
                .filter(|&i| train.labels[i] == c)
                .collect()
        })
        .collect();
    let params = BatchParams::new()
        .with_metric(Metric::Cosine)
        .with_mining(mining)
        .with_margin(0.2)
        .with_hinge(Hinge::Relu)
        .with_reduction(Reduction::MeanNonzero);
    let (mut xb, mut lb) = (vec![0.0_f32; BATCH * PIXELS], vec![0_u32; BATCH]);
    let mut emb = vec![0.0_f32; BATCH * dim];
    let mut grad = vec![0.0_f32; BATCH * dim];
    let mut gw = vec![0.0_f32; PIXELS * dim];
    let mut ws = vec![0.0_f32; triplet_batch_loss_grad_workspace_len(BATCH, dim, params)];
    let own: Vec<u32> = (0..BATCH as u32).collect();
    let (mut gy0, mut gy1) = (vec![0.0_f32; BATCH * dim], vec![0.0_f32; BATCH * dim]);
    // The cross-batch memory: a ring of `slots` batches of embeddings and their labels.
    let slots = if let Mode::Memory(s) = mode { s } else { 1 };
    let (mut ring, mut ring_labels) = (
        vec![0.0_f32; slots * BATCH * dim],
        vec![0_u32; slots * BATCH],
    );
    let (mut head, mut filled) = (0_usize, 0_usize);
    let mut ring_ws =
        vec![0.0_f32; triplet_batch_ref_loss_grad_workspace_len(BATCH, slots * BATCH, dim, params)];
    let mut last = 0.0;
    let mut agree = Agreement {
        counts: true,
        ..Agreement::default()
    };
    let mut check = vec![0.0_f32; BATCH * dim];
    for _ in 0..steps {
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
        matmul(&xb, &w, PIXELS, dim, &mut emb);
        let e = Matrix::new(&emb, BATCH, dim).expect("batch shape");
        last = match mode {
            Mode::OneThread => {
                triplet_batch_loss_grad(e, &lb, params, &mut grad, &mut ws)
                    .expect("loss")
                    .loss
            }
            Mode::TwoThreads => {
                // Each worker's anchors are half of the batch; `e` is the all-gathered
                // batch both mine against.
                let half = BATCH / 2;
                let (g0, g1) = grad.split_at_mut(half * dim);
                let (y0, y1) = (&mut gy0, &mut gy1);
                let (lb, own) = (&lb, &own);
                let (b0, b1) = std::thread::scope(|s| {
                    let t = s.spawn(|| worker(e, lb, own, 0, half, params, g0, y0));
                    let b1 = worker(e, lb, own, half, BATCH, params, g1, y1);
                    (t.join().expect("worker"), b1)
                });
                // The all-reduce: counts and sums added, candidate gradients summed into
                // the anchor rows (the batch is both), one scaling by the combined weight.
                let (total, wt) = combine_batch_losses(&[b0, b1], params.reduction);
                for ((g, &a), &b) in grad.iter_mut().zip(&gy0).zip(&gy1) {
                    *g = (*g + a + b) * wt;
                }
                // The one-thread call on the same embeddings, for comparison.
                let one =
                    triplet_batch_loss_grad(e, lb, params, &mut check, &mut ws).expect("loss");
                let gmax = check
                    .iter()
                    .fold(0.0_f32, |m, v| m.max(v.abs()))
                    .max(f32::MIN_POSITIVE);
                let gdiff = grad
                    .iter()
                    .zip(&check)
                    .fold(0.0_f32, |m, (a, b)| m.max((a - b).abs()));
                agree.grad = agree.grad.max(gdiff / gmax);
                agree.loss = agree
                    .loss
                    .max((one.loss - total.loss).abs() / one.loss.abs().max(1e-30));
                agree.counts &=
                    (one.num_triplets, one.num_active) == (total.num_triplets, total.num_active);
                total.loss
            }
            Mode::Memory(_) => {
                // Enqueue the batch (detached), then mine it against the whole memory.
                ring[head * BATCH * dim..(head + 1) * BATCH * dim].copy_from_slice(&emb);
                ring_labels[head * BATCH..(head + 1) * BATCH].copy_from_slice(&lb);
                filled = (filled + 1).min(slots);
                let own: Vec<u32> = (0..BATCH as u32)
                    .map(|a| (head * BATCH) as u32 + a)
                    .collect();
                head = (head + 1) % slots;
                let y =
                    Matrix::new(&ring[..filled * BATCH * dim], filled * BATCH, dim).expect("ring");
                let refs = RefSet::new(y, &ring_labels[..filled * BATCH]).with_self_index(&own);
                let g = RefGrad::new(&mut grad);
                triplet_batch_ref_loss_grad(e, &lb, refs, params, g, &mut ring_ws)
                    .expect("loss")
                    .loss
            }
        };
        // dL/dW = X^T dL/dE, one SGD step.
        gw.fill(0.0);
        for (xr, gr) in xb.chunks_exact(PIXELS).zip(grad.chunks_exact(dim)) {
            for (&xv, gwr) in xr.iter().zip(gw.chunks_exact_mut(dim)) {
                for (g, &gv) in gwr.iter_mut().zip(gr) {
                    *g += xv * gv;
                }
            }
        }
        for (wv, g) in w.iter_mut().zip(&gw) {
            *wv -= 0.5 * g;
        }
    }
    (w, last, agree)
}

fn main() {
    let mut mining = Mining::All;
    let (mut steps, mut slots, mut seed) = (600_usize, 8_usize, 1_u64);
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let value = args.next().unwrap_or_default();
        match flag.as_str() {
            "--mining" => {
                mining = match value.as_str() {
                    "all" => Mining::All,
                    "hard" => Mining::BatchHard,
                    "semihard" => Mining::SemiHard,
                    m => panic!("unknown mining `{m}` (all, hard, semihard)"),
                }
            }
            "--steps" => steps = value.parse().expect("--steps N"),
            "--memory" => slots = value.parse::<usize>().expect("--memory N").max(1),
            "--seed" => seed = value.parse().expect("--seed N"),
            f => panic!("unknown flag `{f}` (--mining, --steps, --memory, --seed)"),
        }
    }
    let (tr, test) = load().unwrap_or_else(|e| panic!("{e}"));
    println!(
        "digits, 64 -> 8 linear embedding, {mining:?} mining, cosine, margin 0.2, {steps} steps \
         of {CLASSES} classes x {PER_CLASS} images"
    );
    let dim = 8;
    let mut recalls = Vec::new();
    for (name, mode) in [
        ("one thread", Mode::OneThread),
        ("two threads", Mode::TwoThreads),
        ("memory", Mode::Memory(slots)),
    ] {
        let t = Instant::now();
        let (w, loss, agree) = train(&tr, mode, mining, steps, seed);
        let secs = t.elapsed().as_secs_f64();
        let mut emb = vec![0.0_f32; test.labels.len() * dim];
        matmul(&test.pixels, &w, PIXELS, dim, &mut emb);
        let r = recall_at_1(&emb, &test.labels, dim);
        let label = if let Mode::Memory(s) = mode {
            format!("{name} ({} rows)", s * BATCH)
        } else {
            name.to_string()
        };
        println!("{label:>22}: last loss {loss:.4}, held-out recall@1 {r:.4} ({secs:.2} s)");
        if mode == Mode::TwoThreads {
            // Every step's blocks reduce to the one-thread loss and gradient of the same
            // embeddings, up to the order in which the blocks' sums are added.
            let equal = agree.counts && agree.loss <= 1e-6 && agree.grad <= 1e-5;
            println!(
                "{:>22}  every step equals the one-thread call: {equal} (counts equal: {}, \
                 largest loss difference {:.1e}, gradient difference {:.1e}, relative)",
                "", agree.counts, agree.loss, agree.grad
            );
            assert!(
                equal,
                "the two-thread steps must reproduce the one-thread call"
            );
        }
        recalls.push(r);
    }
    println!(
        "recall@1 one_thread={:.4} two_threads={:.4} memory={:.4} memory_rows={}",
        recalls[0],
        recalls[1],
        recalls[2],
        slots * BATCH
    );
}
