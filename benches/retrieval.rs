//! Retrieval kernels, fast vs scalar twin: 1024 queries against an 8192-row gallery of
//! 64-d embeddings drawn around 64 class centres. Throughput counts (query, reference)
//! pairs, each one distance.
#![allow(clippy::unwrap_used)] // setup only; a failure aborts the bench

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use triplet_kernels::{
    binary_words_len, cross_distances, cross_distances_workspace_len, gallery_filter_len, knn,
    knn_gallery, knn_gallery_workspace_len, knn_rescored, knn_rescored_workspace_len,
    knn_workspace_len, prepare_edge_gallery, prepare_gallery, prepare_gallery_filtered,
    quantize_binary, retrieval_metrics, retrieval_metrics_at, retrieval_metrics_workspace_len,
    scalar, verification_metrics, verification_metrics_workspace_len, BinaryMatrix, EdgeMatrix,
    Matrix, Metric, Score, SearchMetric,
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

    // Recall at K = 1, 5, 10 from one ranking.
    let ks = [1, 5, 10];
    let mut recall = [0.0_f64; 3];
    let mut g = c.benchmark_group("retrieval_metrics_at_1024x8192_d64_cosine_k1_5_10");
    g.throughput(Throughput::Elements(pairs));
    g.sample_size(10);
    g.bench_function("fast", |b| {
        b.iter(|| {
            let r = Some((black_box(y), &yl[..]));
            retrieval_metrics_at(
                black_box(x),
                &xl,
                r,
                Metric::Cosine,
                &ks,
                &mut recall,
                &mut ws,
            )
            .unwrap()
        });
    });
    g.bench_function("scalar", |b| {
        b.iter(|| {
            let r = Some((black_box(y), &yl[..]));
            let m = Metric::Cosine;
            scalar::retrieval_metrics_at(black_box(x), &xl, r, m, &ks, &mut recall, &mut ws)
                .unwrap()
        });
    });
    g.finish();

    prepared(c, x, y);
    verification(c);
}

/// A prepared gallery with and without its bf16 filter copy (one query and the whole
/// block), and the two-stage search `knn_rescored` (a binary shortlist of 40 re-scored
/// against the `f32` gallery) against its twin.
fn prepared(c: &mut Criterion, x: Matrix<'_>, y: Matrix<'_>) {
    let metric = SearchMetric::Cosine;
    let mut norms = vec![0.0_f32; GALLERY];
    let mut norms2 = vec![0.0_f32; GALLERY];
    let mut filter = vec![0.0_f32; gallery_filter_len(GALLERY, DIM)];
    let plain = prepare_gallery(y, metric, &mut norms).unwrap();
    let filtered = prepare_gallery_filtered(y, metric, &mut norms2, &mut filter).unwrap();
    let mut idx = vec![0_u32; QUERIES * K];
    let mut dist = vec![0.0_f32; QUERIES * K];
    let mut ws = vec![0.0_f32; knn_gallery_workspace_len(QUERIES, GALLERY, DIM)];
    for (rows, name) in [
        (1, "knn_gallery_q1x8192_d64_k10_cosine"),
        (QUERIES, "knn_gallery_1024x8192_d64_k10_cosine"),
    ] {
        let q = Matrix::new(&x.as_slice()[..rows * DIM], rows, DIM).unwrap();
        let mut g = c.benchmark_group(name);
        g.throughput(Throughput::Elements((rows * GALLERY) as u64));
        g.sample_size(10);
        for (id, gal) in [("plain", &plain), ("filtered", &filtered)] {
            g.bench_function(id, |b| {
                b.iter(|| {
                    let (i, d) = (&mut idx[..rows * K], &mut dist[..rows * K]);
                    knn_gallery(black_box(q), gal, K, i, d, &mut ws).unwrap();
                });
            });
        }
        g.finish();
    }

    const SHORTLIST: usize = 40;
    let mut bits = vec![0_u64; binary_words_len(GALLERY, DIM)];
    quantize_binary(y, &mut bits).unwrap();
    let binary = BinaryMatrix::new(&bits, GALLERY, DIM).unwrap();
    let mut fine_norms = vec![0.0_f32; GALLERY];
    let mut pws = vec![0.0_f32; DIM];
    let fine = prepare_edge_gallery(EdgeMatrix::f32(y), metric, &mut fine_norms, &mut pws).unwrap();
    let mut ws = vec![
        0.0_f32;
        knn_rescored_workspace_len(DIM, SHORTLIST)
            .max(scalar::knn_edge_workspace_len(QUERIES, GALLERY, DIM))
    ];
    let mut g = c.benchmark_group("knn_rescored_1024x8192_d64_k10_shortlist40_cosine");
    g.throughput(Throughput::Elements((QUERIES * GALLERY) as u64));
    g.sample_size(10);
    g.bench_function("fast", |b| {
        b.iter(|| {
            knn_rescored(
                black_box(x),
                binary,
                &fine,
                SHORTLIST,
                K,
                &mut idx,
                &mut dist,
                &mut ws,
            )
            .unwrap();
        });
    });
    g.bench_function("scalar", |b| {
        b.iter(|| {
            let q = black_box(x);
            scalar::knn_rescored(q, binary, &fine, SHORTLIST, K, &mut idx, &mut dist, &mut ws)
                .unwrap();
        });
    });
    g.finish();
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
