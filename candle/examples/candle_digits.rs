//! Trains a small MLP in candle with the bridge's batch-all triplet loss on the digits data
//! set, then measures recall@1 on held-out images with the kernel crate's
//! `retrieval_metrics`, beside the linear embedding of the `train_digits` recipe.
//!
//! ```sh
//! cargo run --release -p triplet-kernels-candle --example candle_digits
//! ```
//!
//! Data and split as `getting-started/src/bin/train_digits.rs`: the 1797 images of
//! `getting-started/data/digits.csv`, pixels scaled to 0..1, rows whose index % 5 == 0
//! (360 images) held out; recall@1 on them, each held-out image querying the other 359
//! (cosine distance, leave-one-out).
//!
//! - `candle_mlp`: 64 -> 64 (ReLU) -> 16 as candle `Linear` layers (weights drawn with a
//!   fixed-seed generator), trained with candle-nn's AdamW (learning rate 3e-3, weight
//!   decay 1e-4) for 1500 steps on batches of 10 classes x 8 images, loss
//!   [`triplet_kernels_candle::triplet_batch_loss`]: batch-all, cosine, margin 0.2, mean
//!   over active triplets.
//! - `linear_baseline`: the `train_digits` recipe at the same dimension: a linear map
//!   64 -> 16 trained with the kernel crate directly (`triplet_batch_loss_grad`, the same
//!   loss, plain SGD with learning rate 0.5, 600 steps, seed 1).
//!
//! The last line is `recall@1 candle_mlp=<v> linear_baseline=<v> dim=16`.

use std::time::Instant;

use candle_core::{DType, Device, Module, Result, Tensor, Var};
use candle_nn::{AdamW, Linear, Optimizer, ParamsAdamW};
use triplet_kernels::{
    retrieval_metrics, retrieval_metrics_workspace_len, triplet_batch_loss_grad,
    triplet_batch_loss_grad_workspace_len, Matrix,
};
use triplet_kernels_candle::{triplet_batch_loss, BatchParams, Hinge, Metric, Mining, Reduction};

const PIXELS: usize = 64;
const HIDDEN: usize = 64;
const DIM: usize = 16;
const CLASSES: usize = 10;
const PER_CLASS: usize = 8;
const BATCH: usize = CLASSES * PER_CLASS;

/// The loss of both models: batch-all, cosine, margin 0.2, mean over active triplets.
const PARAMS: BatchParams = BatchParams::new()
    .with_metric(Metric::Cosine)
    .with_mining(Mining::All)
    .with_margin(0.2)
    .with_hinge(Hinge::Relu)
    .with_reduction(Reduction::MeanNonzero);

/// The `train_digits` generator (splitmix64), so that the baseline is that recipe's run.
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
    /// `len` values from N(0, scale^2).
    fn normals(&mut self, len: usize, scale: f64) -> Vec<f32> {
        (0..len).map(|_| (self.normal() * scale) as f32).collect()
    }
}

struct Digits {
    pixels: Vec<f32>,
    labels: Vec<u32>,
}

fn load() -> std::result::Result<(Digits, Digits), String> {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../getting-started/data/digits.csv"
    );
    let text = std::fs::read_to_string(path).map_err(|e| format!("{path}: {e}"))?;
    let empty = || Digits {
        pixels: vec![],
        labels: vec![],
    };
    let (mut train, mut test) = (empty(), empty());
    for (i, line) in text.lines().skip(1).enumerate() {
        let fields: Vec<f32> = line
            .split(',')
            .map(|f| f.trim().parse::<f32>())
            .collect::<std::result::Result<_, _>>()
            .map_err(|e| format!("line {}: {e}", i + 2))?;
        if fields.len() != PIXELS + 1 {
            return Err(format!("line {}: {} fields", i + 2, fields.len()));
        }
        let split = if i % 5 == 0 { &mut test } else { &mut train };
        split.labels.push(fields[0] as u32);
        split.pixels.extend(fields[1..].iter().map(|p| p / 16.0));
    }
    Ok((train, test))
}

/// Draws a balanced batch (`PER_CLASS` distinct images of every class) into `xb`, `lb`,
/// as `train_digits` does.
fn draw_batch(
    rng: &mut Rng,
    by_class: &[Vec<usize>],
    train: &Digits,
    xb: &mut [f32],
    lb: &mut [u32],
) {
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
}

/// recall@1 of `emb` (rows x dim) retrieving within itself, leave-one-out, cosine.
fn recall_at_1(emb: &[f32], labels: &[u32], dim: usize) -> f64 {
    let n = labels.len();
    let x = Matrix::new(emb, n, dim).expect("embedding shape");
    let mut ws = vec![0.0_f32; retrieval_metrics_workspace_len(n, n, dim)];
    retrieval_metrics(x, labels, None, Metric::Cosine, 1, &mut ws)
        .expect("retrieval")
        .precision_at_1
}

fn by_class(train: &Digits) -> Vec<Vec<usize>> {
    (0..CLASSES as u32)
        .map(|c| {
            (0..train.labels.len())
                .filter(|&i| train.labels[i] == c)
                .collect()
        })
        .collect()
}

/// The `train_digits` recipe at dimension `DIM`: a linear map trained with the kernel
/// crate directly; returns the held-out embeddings.
fn linear_baseline(train: &Digits, test: &Digits) -> Vec<f32> {
    let mut rng = Rng(1);
    let mut w = rng.normals(PIXELS * DIM, (1.0 / PIXELS as f64).sqrt());
    let by_class = by_class(train);
    let (mut xb, mut lb) = (vec![0.0_f32; BATCH * PIXELS], vec![0_u32; BATCH]);
    let mut emb = vec![0.0_f32; BATCH * DIM];
    let mut grad = vec![0.0_f32; BATCH * DIM];
    let mut gw = vec![0.0_f32; PIXELS * DIM];
    let mut ws = vec![0.0_f32; triplet_batch_loss_grad_workspace_len(BATCH, DIM, PARAMS)];
    for _ in 0..600 {
        draw_batch(&mut rng, &by_class, train, &mut xb, &mut lb);
        matmul(&xb, &w, PIXELS, DIM, &mut emb);
        let e = Matrix::new(&emb, BATCH, DIM).expect("batch shape");
        triplet_batch_loss_grad(e, &lb, PARAMS, &mut grad, &mut ws).expect("loss");
        gw.fill(0.0);
        for (xr, gr) in xb.chunks_exact(PIXELS).zip(grad.chunks_exact(DIM)) {
            for (&xv, gwr) in xr.iter().zip(gw.chunks_exact_mut(DIM)) {
                for (g, &gv) in gwr.iter_mut().zip(gr) {
                    *g += xv * gv;
                }
            }
        }
        for (wv, g) in w.iter_mut().zip(&gw) {
            *wv -= 0.5 * g;
        }
    }
    let mut out = vec![0.0_f32; test.labels.len() * DIM];
    matmul(&test.pixels, &w, PIXELS, DIM, &mut out);
    out
}

/// `out (rows x k) = a (rows x m) * b (m x k)`, row-major.
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

/// A `Linear` layer (`outputs x inputs` weights from N(0, 2 / inputs), zero bias) and
/// its variables.
fn layer(rng: &mut Rng, inputs: usize, outputs: usize) -> Result<(Linear, [Var; 2])> {
    let w = Var::from_vec(
        rng.normals(outputs * inputs, (2.0 / inputs as f64).sqrt()),
        (outputs, inputs),
        &Device::Cpu,
    )?;
    let b = Var::zeros(outputs, DType::F32, &Device::Cpu)?;
    let linear = Linear::new(w.as_tensor().clone(), Some(b.as_tensor().clone()));
    Ok((linear, [w, b]))
}

fn main() -> Result<()> {
    let (train, test) = load().map_err(candle_core::Error::msg)?;
    let start = Instant::now();
    let dev = Device::Cpu;

    // The MLP, its optimiser and its own batch stream.
    let mut rng = Rng(7);
    let (l1, v1) = layer(&mut rng, PIXELS, HIDDEN)?;
    let (l2, v2) = layer(&mut rng, HIDDEN, DIM)?;
    let vars: Vec<Var> = v1.into_iter().chain(v2).collect();
    let adamw = ParamsAdamW {
        lr: 3e-3,
        weight_decay: 1e-4,
        ..ParamsAdamW::default()
    };
    let mut opt = AdamW::new(vars, adamw)?;
    let forward = |x: &Tensor| -> Result<Tensor> { l2.forward(&l1.forward(x)?.relu()?) };

    let by_class = by_class(&train);
    let (mut xb, mut lb) = (vec![0.0_f32; BATCH * PIXELS], vec![0_u32; BATCH]);
    let steps = 1500;
    println!(
        "training a {PIXELS} -> {HIDDEN} -> {DIM} MLP in candle: batch-all triplet loss \
         (cosine, margin 0.2), AdamW, {steps} steps of {CLASSES} classes x {PER_CLASS} images"
    );
    for step in 1..=steps {
        draw_batch(&mut rng, &by_class, &train, &mut xb, &mut lb);
        let x = Tensor::from_slice(&xb, (BATCH, PIXELS), &dev)?;
        let loss = triplet_batch_loss(&forward(&x)?, &lb, PARAMS)?;
        opt.backward_step(&loss)?;
        if step == 1 || step % 250 == 0 {
            println!("step {step:4}  loss {:.4}", loss.to_scalar::<f32>()?);
        }
    }
    let x_test = Tensor::from_slice(&test.pixels, (test.labels.len(), PIXELS), &dev)?;
    let mlp_emb = forward(&x_test)?.flatten_all()?.to_vec1::<f32>()?;
    let r_mlp = recall_at_1(&mlp_emb, &test.labels, DIM);
    let mlp_time = start.elapsed().as_secs_f64();

    let lin_emb = linear_baseline(&train, &test);
    let r_lin = recall_at_1(&lin_emb, &test.labels, DIM);
    println!(
        "trained the MLP in {mlp_time:.2} s, the linear baseline in {:.2} s",
        start.elapsed().as_secs_f64() - mlp_time
    );
    println!("recall@1 candle_mlp={r_mlp:.4} linear_baseline={r_lin:.4} dim={DIM}");
    Ok(())
}
