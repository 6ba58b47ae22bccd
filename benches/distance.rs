//! Distance matrices, fast vs scalar twin. Throughput is set to the matrix's FLOP count,
//! `2 n m d`, so criterion reports FLOP/s. Also the row kernels (`row_norms`,
//! `l2_normalize`, `l2_normalize_backward`), fast vs scalar, with the `n d` elements of
//! their input as throughput.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use std::hint::black_box;
use triplet_kernels::{
    cross_distances, cross_distances_workspace_len, l2_normalize, l2_normalize_backward,
    pairwise_distances, pairwise_distances_workspace_len, row_norms, scalar, Matrix, Metric,
};

#[path = "common/workloads.rs"]
mod workloads;
use workloads::uniform as data;

fn metric_name(m: Metric) -> &'static str {
    match m {
        Metric::SquaredEuclidean => "sqeuclid",
        Metric::Euclidean => "euclid",
        Metric::Cosine => "cosine",
        _ => unreachable!("a variant this test does not know"),
    }
}

fn pairwise(c: &mut Criterion) {
    let mut g = c.benchmark_group("pairwise");
    for &n in &[32usize, 256, 1024] {
        for &d in &[16usize, 64, 128, 512, 67] {
            let xd = data(n * d, 7);
            let x = Matrix::new(&xd, n, d).unwrap();
            let mut out = vec![0.0_f32; n * n];
            let mut ws = vec![0.0_f32; pairwise_distances_workspace_len(n, d)];
            g.throughput(Throughput::Elements((2 * n * n * d) as u64));
            for metric in [Metric::SquaredEuclidean, Metric::Cosine] {
                let id = format!("{}_n{n}_d{d}", metric_name(metric));
                g.bench_function(BenchmarkId::new("fast", &id), |b| {
                    b.iter(|| pairwise_distances(black_box(x), metric, &mut out, &mut ws).unwrap());
                });
                // The scalar twin is slow; bench it on the smaller shapes only.
                if n * n * d <= 256 * 256 * 128 {
                    g.bench_function(BenchmarkId::new("scalar", &id), |b| {
                        b.iter(|| {
                            scalar::pairwise_distances(black_box(x), metric, &mut out, &mut ws)
                                .unwrap()
                        });
                    });
                }
            }
        }
    }
    g.finish();
}

fn cross(c: &mut Criterion) {
    let mut g = c.benchmark_group("cross");
    for &(m, n, d) in &[
        (256usize, 1024usize, 128usize),
        (1024, 64, 128),
        (32, 256, 67),
    ] {
        let xd = data(m * d, 3);
        let yd = data(n * d, 5);
        let x = Matrix::new(&xd, m, d).unwrap();
        let y = Matrix::new(&yd, n, d).unwrap();
        let mut out = vec![0.0_f32; m * n];
        let mut ws = vec![0.0_f32; cross_distances_workspace_len(m, n, d)];
        g.throughput(Throughput::Elements((2 * m * n * d) as u64));
        let id = format!("euclid_m{m}_n{n}_d{d}");
        g.bench_function(BenchmarkId::new("fast", &id), |b| {
            b.iter(|| {
                cross_distances(black_box(x), y, Metric::Euclidean, &mut out, &mut ws).unwrap()
            });
        });
        g.bench_function(BenchmarkId::new("scalar", &id), |b| {
            b.iter(|| {
                scalar::cross_distances(black_box(x), y, Metric::Euclidean, &mut out, &mut ws)
                    .unwrap()
            });
        });
    }
    g.finish();
}

fn row_kernels(c: &mut Criterion) {
    for &(n, d) in &[(1024usize, 128usize), (256, 67)] {
        let xd = data(n * d, 9);
        let gd = data(n * d, 10);
        let x = Matrix::new(&xd, n, d).unwrap();
        let mut norms = vec![0.0_f32; n];
        let mut out = vec![0.0_f32; n * d];
        let id = format!("n{n}_d{d}");

        let mut g = c.benchmark_group("row_norms");
        g.throughput(Throughput::Elements((n * d) as u64));
        g.bench_function(BenchmarkId::new("fast", &id), |b| {
            b.iter(|| row_norms(black_box(x), &mut norms).unwrap());
        });
        g.bench_function(BenchmarkId::new("scalar", &id), |b| {
            b.iter(|| scalar::row_norms(black_box(x), &mut norms).unwrap());
        });
        g.finish();

        let mut g = c.benchmark_group("l2_normalize");
        g.throughput(Throughput::Elements((n * d) as u64));
        g.bench_function(BenchmarkId::new("fast", &id), |b| {
            b.iter(|| l2_normalize(black_box(x), &mut out).unwrap());
        });
        g.bench_function(BenchmarkId::new("scalar", &id), |b| {
            b.iter(|| scalar::l2_normalize(black_box(x), &mut out).unwrap());
        });
        g.finish();

        let mut g = c.benchmark_group("l2_normalize_backward");
        g.throughput(Throughput::Elements((n * d) as u64));
        g.bench_function(BenchmarkId::new("fast", &id), |b| {
            b.iter(|| l2_normalize_backward(black_box(x), &gd, &mut out).unwrap());
        });
        g.bench_function(BenchmarkId::new("scalar", &id), |b| {
            b.iter(|| scalar::l2_normalize_backward(black_box(x), &gd, &mut out).unwrap());
        });
        g.finish();
    }
}

criterion_group!(benches, pairwise, cross, row_kernels);
criterion_main!(benches);
