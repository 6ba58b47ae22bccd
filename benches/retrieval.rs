//! Retrieval kernels, fast vs scalar twin: 1024 queries against an 8192-row gallery of
//! 64-d embeddings drawn around 64 class centres. Throughput counts (query, reference)
//! pairs, each one distance.
#![allow(clippy::unwrap_used)] // setup only; a failure aborts the bench

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use triplet_kernels::{
    cross_distances, cross_distances_workspace_len, knn, knn_workspace_len, retrieval_metrics,
    retrieval_metrics_workspace_len, scalar, verification_metrics,
    verification_metrics_workspace_len, Matrix, Metric, Score,
};

const QUERIES: usize = 1024;
const GALLERY: usize = 8192;
const DIM: usize = 64;
const CLASSES: u32 = 64;
const K: usize = 10;

#[path = "common/workloads.rs"]
mod workloads;
use workloads::Rng;

/// `rows` embeddings around the class centres, and their labels.
fn clustered(rng: &mut Rng, centres: &[f32], rows: usize) -> (Vec<f32>, Vec<u32>) {
    let mut data = Vec::with_capacity(rows * DIM);
    let mut labels = Vec::with_capacity(rows);
    for i in 0..rows {
        let c = (i as u32 * 7 + (rng.uniform().to_bits() & 3)) % CLASSES;
        labels.push(c);
        let centre = &centres[c as usize * DIM..(c as usize + 1) * DIM];
        data.extend(centre.iter().map(|&v| v + 0.8 * rng.uniform()));
    }
    (data, labels)
}

fn bench(c: &mut Criterion) {
    let mut rng = Rng::new(0x9e37_79b9_7f4a_7c15);
    let centres: Vec<f32> = (0..CLASSES as usize * DIM).map(|_| rng.uniform()).collect();
    let (xd, xl) = clustered(&mut rng, &centres, QUERIES);
    let (yd, yl) = clustered(&mut rng, &centres, GALLERY);
    let x = Matrix::new(&xd, QUERIES, DIM).unwrap();
    let y = Matrix::new(&yd, GALLERY, DIM).unwrap();
    let pairs = (QUERIES * GALLERY) as u64;

    let mut idx = vec![0_u32; QUERIES * K];
    let mut dist = vec![0.0_f32; QUERIES * K];
    let mut ws = vec![
        0.0_f32;
        knn_workspace_len(QUERIES, GALLERY, DIM)
            .max(scalar::knn_workspace_len(QUERIES, GALLERY, DIM))
    ];
    let mut g = c.benchmark_group("knn_1024x8192_d64_k10_euclidean");
    g.throughput(Throughput::Elements(pairs));
    g.sample_size(10);
    g.bench_function("fast", |b| {
        b.iter(|| {
            knn(
                black_box(x),
                Some(black_box(y)),
                Metric::Euclidean,
                K,
                &mut idx,
                &mut dist,
                &mut ws,
            )
            .unwrap();
        });
    });
    // Anchor: the same distances written to a full 1024 x 8192 matrix, no selection.
    let mut full = vec![0.0_f32; QUERIES * GALLERY];
    let mut ws_full = vec![0.0_f32; cross_distances_workspace_len(QUERIES, GALLERY, DIM)];
    g.bench_function("cross_distances_anchor", |b| {
        b.iter(|| {
            cross_distances(
                black_box(x),
                black_box(y),
                Metric::Euclidean,
                &mut full,
                &mut ws_full,
            )
            .unwrap();
        });
    });
    g.bench_function("scalar", |b| {
        b.iter(|| {
            scalar::knn(
                black_box(x),
                Some(black_box(y)),
                Metric::Euclidean,
                K,
                &mut idx,
                &mut dist,
                &mut ws,
            )
            .unwrap();
        });
    });
    g.finish();

    let mut ws = vec![
        0.0_f32;
        retrieval_metrics_workspace_len(QUERIES, GALLERY, DIM).max(
            scalar::retrieval_metrics_workspace_len(QUERIES, GALLERY, DIM)
        )
    ];
    let mut g = c.benchmark_group("retrieval_metrics_1024x8192_d64_cosine");
    g.throughput(Throughput::Elements(pairs));
    g.sample_size(10);
    g.bench_function("fast", |b| {
        b.iter(|| {
            retrieval_metrics(
                black_box(x),
                &xl,
                Some((black_box(y), &yl)),
                Metric::Cosine,
                1,
                &mut ws,
            )
            .unwrap()
        });
    });
    g.bench_function("scalar", |b| {
        b.iter(|| {
            scalar::retrieval_metrics(
                black_box(x),
                &xl,
                Some((black_box(y), &yl)),
                Metric::Cosine,
                1,
                &mut ws,
            )
            .unwrap()
        });
    });
    g.finish();
    verification(c);
}

/// Verification metrics of 2,000 genuine and 20,000 impostor cosine similarities drawn from
/// two overlapping distributions (fast: two radix sorts and a merge; twin: pair counting,
/// quadratic). Throughput counts scores.
fn verification(c: &mut Criterion) {
    const GENUINE: usize = 2_000;
    const IMPOSTOR: usize = 20_000;
    let mut rng = Rng::new(0x0bad_cafe);
    let genuine: Vec<f32> = (0..GENUINE).map(|_| 0.5 + 0.3 * rng.uniform()).collect();
    let impostor: Vec<f32> = (0..IMPOSTOR).map(|_| 0.3 * rng.uniform()).collect();
    let fars = [1e-4, 1e-3, 1e-2];
    let mut tar = [0.0_f64; 3];
    let mut ws = vec![0.0_f32; verification_metrics_workspace_len(GENUINE, IMPOSTOR)];
    let mut g = c.benchmark_group("verification_metrics_g2000_i20000");
    g.throughput(Throughput::Elements((GENUINE + IMPOSTOR) as u64));
    g.sample_size(10);
    g.bench_function("fast", |b| {
        b.iter(|| {
            verification_metrics(
                black_box(&genuine),
                black_box(&impostor),
                Score::Similarity,
                &fars,
                &mut tar,
                &mut ws,
            )
            .unwrap()
        });
    });
    g.bench_function("scalar", |b| {
        b.iter(|| {
            scalar::verification_metrics(
                black_box(&genuine),
                black_box(&impostor),
                Score::Similarity,
                &fars,
                &mut tar,
                &mut ws,
            )
            .unwrap()
        });
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
