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
//! Run one with `cargo bench --bench miners -- M1`.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use std::hint::black_box;
use std::time::Duration;
use triplet_kernels::{
    l2_normalize, multi_similarity_loss_grad, multi_similarity_loss_workspace_len, scalar,
    triplet_mine, triplet_mine_count, triplet_mine_workspace_len, Matrix, Metric,
    MultiSimilarityParams, Triplet, TripletMinerParams, TripletType,
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

criterion_group!(benches, m1, m2, w9);
criterion_main!(benches);
