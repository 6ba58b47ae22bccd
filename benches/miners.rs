//! Threshold miners and the multi-similarity loss, fast vs scalar twin.
//!
//! - `M1_triplet_mine_semihard_n256_d128`: `triplet_mine` with `TripletType::SemiHard`,
//!   margin 0.2, on 256 L2-normalised standard normal rows of dimension 128, P x K labels
//!   with K = 8, Euclidean metric (pytorch-metric-learning's `TripletMarginMiner` default
//!   distance), the output sized for every candidate triplet (one sweep). Twin beside it.
//! - `M2_triplet_mine_all_n1024_d128_count`: `triplet_mine_count` with `TripletType::All`,
//!   margin 0.2, 1024 normalised rows of dimension 128, K = 4 (count only; the twin, about
//!   a second per call, is left out).
//! - `W9_multi_similarity_fwd_bwd_n1024_d256`: `multi_similarity_loss_grad` with
//!   pytorch-metric-learning's defaults (alpha 2, beta 50, base 0.5) over all pairs,
//!   cosine, 1024 standard normal rows of dimension 256, P x K with K = 4 (the twin,
//!   seconds per call, is left out).
//!
//! - `mined_pairs_n256_d128`: the pair kernels on 256 normalised rows of dimension 128,
//!   K = 8, fast and twin side by side: `pair_mine` (pml's `PairMarginMiner` margins,
//!   Euclidean), `multi_similarity_mine` (epsilon 0.1), and the two losses over the
//!   multi-similarity miner's pairs, `contrastive_loss_pairs_grad` (pml's defaults,
//!   Euclidean) and `multi_similarity_loss_pairs_grad` (pml's defaults).
//!
//! Run one with `cargo bench --bench miners -- M1`.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use std::hint::black_box;
use std::time::Duration;
use triplet_kernels::{
    contrastive_loss_pairs_grad, contrastive_loss_pairs_workspace_len, l2_normalize,
    multi_similarity_loss_grad, multi_similarity_loss_pairs_grad,
    multi_similarity_loss_pairs_workspace_len, multi_similarity_loss_workspace_len,
    multi_similarity_mine, pair_mine, pair_mine_workspace_len, scalar, triplet_mine,
    triplet_mine_count, triplet_mine_workspace_len, ContrastiveParams, Matrix, Metric,
    MultiSimilarityMinerParams, MultiSimilarityParams, Pair, PairMinerParams, Triplet,
    TripletMinerParams, TripletType,
};

#[path = "common/workloads.rs"]
mod workloads;
use workloads::normal;

/// `n x d` standard normal rows from `seed`, L2-normalised.
fn normalised(n: usize, d: usize, seed: u64) -> Vec<f32> {
    let raw = normal(n * d, seed);
    let mut out = vec![0.0_f32; n * d];
    l2_normalize(Matrix::new(&raw, n, d).unwrap(), &mut out).unwrap();
    out
}

fn labels(n: usize, k: usize) -> Vec<u32> {
    (0..n).map(|i| (i / k) as u32).collect()
}

fn m1(c: &mut Criterion) {
    let (n, d) = (256, 128);
    let data = normalised(n, d, 1);
    let x = Matrix::new(&data, n, d).unwrap();
    let labels = labels(n, 8);
    let params = TripletMinerParams::new(0.2, TripletType::SemiHard);
    let mut ws = vec![0.0_f32; triplet_mine_workspace_len(n, d)];
    let mut out = vec![Triplet::default(); n * 7 * (n - 8)];
    let mut g = c.benchmark_group("M1_triplet_mine_semihard_n256_d128");
    g.throughput(Throughput::Elements(n as u64));
    g.sample_size(10).warm_up_time(Duration::from_secs(1));
    g.bench_function("fast", |b| {
        b.iter(|| {
            triplet_mine(
                black_box(x),
                &labels,
                Metric::Euclidean,
                params,
                &mut out,
                &mut ws,
            )
            .unwrap()
        });
    });
    g.bench_function("scalar", |b| {
        b.iter(|| {
            scalar::triplet_mine(
                black_box(x),
                &labels,
                Metric::Euclidean,
                params,
                &mut out,
                &mut ws,
            )
            .unwrap()
        });
    });
    g.finish();
}

fn m2(c: &mut Criterion) {
    let (n, d) = (1024, 128);
    let data = normalised(n, d, 2);
    let x = Matrix::new(&data, n, d).unwrap();
    let labels = labels(n, 4);
    let params = TripletMinerParams::new(0.2, TripletType::All);
    let mut ws = vec![0.0_f32; triplet_mine_workspace_len(n, d)];
    let mut g = c.benchmark_group("M2_triplet_mine_all_n1024_d128_count");
    g.throughput(Throughput::Elements(n as u64));
    g.sample_size(10).warm_up_time(Duration::from_secs(1));
    g.bench_function("fast", |b| {
        b.iter(|| {
            triplet_mine_count(black_box(x), &labels, Metric::Euclidean, params, &mut ws).unwrap()
        });
    });
    g.finish();
}

fn w9(c: &mut Criterion) {
    let (n, d) = (1024, 256);
    let data = normal(n * d, 9);
    let x = Matrix::new(&data, n, d).unwrap();
    let labels = labels(n, 4);
    let params = MultiSimilarityParams::pytorch_metric_learning();
    let mut ws = vec![0.0_f32; multi_similarity_loss_workspace_len(n, d)];
    let mut grad = vec![0.0_f32; n * d];
    let mut g = c.benchmark_group("W9_multi_similarity_fwd_bwd_n1024_d256");
    g.throughput(Throughput::Elements(n as u64));
    g.sample_size(10).warm_up_time(Duration::from_secs(1));
    g.bench_function("fast", |b| {
        b.iter(|| {
            multi_similarity_loss_grad(black_box(x), &labels, params, &mut grad, &mut ws).unwrap()
        });
    });
    g.finish();
}

fn mined_pairs(c: &mut Criterion) {
    let (n, d) = (256, 128);
    let data = normalised(n, d, 10);
    let x = Matrix::new(&data, n, d).unwrap();
    let labels = labels(n, 8);
    let (mut pos, mut neg) = (vec![Pair::default(); n * n], vec![Pair::default(); n * n]);
    let mut ws = vec![0.0_f32; pair_mine_workspace_len(n, d)];
    let pp = PairMinerParams::pytorch_metric_learning();
    let mp = MultiSimilarityMinerParams::pytorch_metric_learning();
    let counts = multi_similarity_mine(x, &labels, mp, &mut pos, &mut neg, &mut ws).unwrap();
    let (ps, ns) = (
        pos[..counts.positives].to_vec(),
        neg[..counts.negatives].to_vec(),
    );
    let pairs = ps.len() + ns.len();
    let mut pws = vec![
        0.0_f32;
        contrastive_loss_pairs_workspace_len(n, d, pairs)
            .max(multi_similarity_loss_pairs_workspace_len(n, d, pairs))
            .max(scalar::contrastive_loss_pairs_workspace_len(n, d, pairs))
            .max(scalar::multi_similarity_loss_pairs_workspace_len(
                n, d, pairs
            ))
    ];
    let mut grad = vec![0.0_f32; n * d];
    let cp = ContrastiveParams::pytorch_metric_learning();
    let msp = MultiSimilarityParams::pytorch_metric_learning();
    let mut g = c.benchmark_group("mined_pairs_n256_d128");
    g.throughput(Throughput::Elements(n as u64));
    g.sample_size(10).warm_up_time(Duration::from_secs(1));
    for fast in [true, false] {
        let side = if fast { "fast" } else { "scalar" };
        g.bench_function(format!("pair_mine/{side}"), |b| {
            b.iter(|| {
                let f = if fast { pair_mine } else { scalar::pair_mine };
                f(
                    black_box(x),
                    &labels,
                    Metric::Euclidean,
                    pp,
                    &mut pos,
                    &mut neg,
                    &mut ws,
                )
                .unwrap()
            });
        });
        g.bench_function(format!("multi_similarity_mine/{side}"), |b| {
            b.iter(|| {
                let f = if fast {
                    multi_similarity_mine
                } else {
                    scalar::multi_similarity_mine
                };
                f(black_box(x), &labels, mp, &mut pos, &mut neg, &mut ws).unwrap()
            });
        });
        g.bench_function(format!("contrastive_loss_pairs_grad/{side}"), |b| {
            b.iter(|| {
                let f = if fast {
                    contrastive_loss_pairs_grad
                } else {
                    scalar::contrastive_loss_pairs_grad
                };
                f(
                    black_box(x),
                    Metric::Euclidean,
                    cp,
                    &ps,
                    &ns,
                    &mut grad,
                    &mut pws,
                )
                .unwrap()
            });
        });
        g.bench_function(format!("multi_similarity_loss_pairs_grad/{side}"), |b| {
            b.iter(|| {
                let f = if fast {
                    multi_similarity_loss_pairs_grad
                } else {
                    scalar::multi_similarity_loss_pairs_grad
                };
                f(black_box(x), &ps, &ns, msp, &mut grad, &mut pws).unwrap()
            });
        });
    }
    g.finish();
}

criterion_group!(benches, m1, m2, w9, mined_pairs);
criterion_main!(benches);
