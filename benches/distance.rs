//! Distance matrices, fast vs scalar twin. Throughput is set to the matrix's FLOP count,
//! `2 n m d`, so criterion reports FLOP/s.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use std::hint::black_box;
use triplet_kernels::{
    cross_distances, cross_distances_workspace_len, pairwise_distances,
    pairwise_distances_workspace_len, scalar, Matrix, Metric,
};

/// Deterministic data in [-1, 1) (xorshift), so runs are comparable.
fn data(len: usize, seed: u32) -> Vec<f32> {
    let mut s = seed | 1;
    (0..len)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 17;
            s ^= s << 5;
            (s as f32 / u32::MAX as f32) * 2.0 - 1.0
        })
        .collect()
}

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

criterion_group!(benches, pairwise, cross);
criterion_main!(benches);
