//! Contrastive, quadruplet, Proxy-NCA and Proxy-Anchor: loss plus gradient, fast vs scalar
//! twin, at n = 256 embeddings of d = 128 (64 classes of 4; C = 64 proxies).
//!
//! Throughput is set to the number of distances or similarities the loss is built from
//! (`n (n - 1)` ordered pairs, `3 k` for `k` quadruplets, `n C` for the proxy losses), so
//! criterion reports them per second.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use std::hint::black_box;
use triplet_kernels::{
    contrastive_loss_grad, contrastive_loss_workspace_len, mine_quadruplets,
    mine_quadruplets_count, mine_quadruplets_workspace_len, proxy_anchor_loss_grad,
    proxy_anchor_loss_workspace_len, proxy_nca_loss_grad, proxy_nca_loss_workspace_len,
    quadruplet_loss_grad, quadruplet_loss_workspace_len, scalar, ContrastiveParams, Matrix, Metric,
    ProxyAnchorParams, ProxyNcaParams, Quadruplet, QuadrupletParams,
};

const N: usize = 256;
const D: usize = 128;
const C: usize = 64;

#[path = "common/workloads.rs"]
mod workloads;
use workloads::uniform as data;

fn labels() -> Vec<u32> {
    (0..N as u32).map(|i| i % C as u32).collect()
}

fn metric_name(m: Metric) -> &'static str {
    match m {
        Metric::SquaredEuclidean => "sqeuclid",
        Metric::Euclidean => "euclid",
        Metric::Cosine => "cosine",
        _ => unreachable!("a variant this test does not know"),
    }
}

fn contrastive(c: &mut Criterion) {
    let mut g = c.benchmark_group("contrastive");
    g.sample_size(20);
    let xd = data(N * D, 11);
    let x = Matrix::new(&xd, N, D).unwrap();
    let labels = labels();
    let mut grad = vec![0.0_f32; N * D];
    let mut ws = vec![
        0.0_f32;
        contrastive_loss_workspace_len(N, D)
            .max(scalar::contrastive_loss_workspace_len(N, D))
    ];
    g.throughput(Throughput::Elements((N * (N - 1)) as u64));
    for (metric, params) in [
        (Metric::Euclidean, ContrastiveParams::new(0.0, 16.0)),
        (Metric::Cosine, ContrastiveParams::new(0.1, 0.9)),
    ] {
        let id = format!("{}_n{N}_d{D}", metric_name(metric));
        g.bench_function(BenchmarkId::new("fast", &id), |b| {
            b.iter(|| {
                contrastive_loss_grad(black_box(x), &labels, metric, params, &mut grad, &mut ws)
                    .unwrap()
            });
        });
        g.bench_function(BenchmarkId::new("scalar", &id), |b| {
            b.iter(|| {
                scalar::contrastive_loss_grad(
                    black_box(x),
                    &labels,
                    metric,
                    params,
                    &mut grad,
                    &mut ws,
                )
                .unwrap()
            });
        });
    }
    g.finish();
}

fn quadruplet(c: &mut Criterion) {
    let mut g = c.benchmark_group("quadruplet");
    g.sample_size(20);
    let xd = data(N * D, 13);
    let x = Matrix::new(&xd, N, D).unwrap();
    let labels = labels();
    let metric = Metric::Euclidean;
    let mut quads = vec![Quadruplet::default(); mine_quadruplets_count(&labels).unwrap()];
    let mut mws = vec![0.0_f32; mine_quadruplets_workspace_len(N, D)];
    let k = mine_quadruplets(x, &labels, metric, &mut quads, &mut mws).unwrap();
    let id = format!("euclid_n{N}_d{D}_k{k}");

    // Mining: n^2 / 2 distances plus the selection.
    g.throughput(Throughput::Elements((N * (N - 1) / 2) as u64));
    g.bench_function(BenchmarkId::new("mine_fast", &id), |b| {
        b.iter(|| mine_quadruplets(black_box(x), &labels, metric, &mut quads, &mut mws).unwrap());
    });
    g.bench_function(BenchmarkId::new("mine_scalar", &id), |b| {
        b.iter(|| {
            scalar::mine_quadruplets(black_box(x), &labels, metric, &mut quads, &mut mws).unwrap()
        });
    });

    let params = QuadrupletParams::new(1.0, 0.5);
    let mut grad = vec![0.0_f32; N * D];
    let mut ws = vec![
        0.0_f32;
        quadruplet_loss_workspace_len(N, D)
            .max(scalar::quadruplet_loss_workspace_len(N, D))
    ];
    g.throughput(Throughput::Elements((3 * k) as u64));
    g.bench_function(BenchmarkId::new("fast", &id), |b| {
        b.iter(|| {
            quadruplet_loss_grad(black_box(x), &quads, metric, params, &mut grad, &mut ws).unwrap()
        });
    });
    g.bench_function(BenchmarkId::new("scalar", &id), |b| {
        b.iter(|| {
            scalar::quadruplet_loss_grad(black_box(x), &quads, metric, params, &mut grad, &mut ws)
                .unwrap()
        });
    });
    g.finish();
}

fn proxies(c: &mut Criterion) {
    let xd = data(N * D, 17);
    let pd = data(C * D, 19);
    let x = Matrix::new(&xd, N, D).unwrap();
    let p = Matrix::new(&pd, C, D).unwrap();
    let labels = labels();
    let mut grad = vec![0.0_f32; N * D];
    let mut grad_p = vec![0.0_f32; C * D];
    let id = format!("n{N}_d{D}_c{C}");

    let mut g = c.benchmark_group("proxy_nca");
    g.sample_size(20);
    g.throughput(Throughput::Elements((N * C) as u64));
    let params = ProxyNcaParams::pytorch_metric_learning();
    let mut ws = vec![
        0.0_f32;
        proxy_nca_loss_workspace_len(N, C, D)
            .max(scalar::proxy_nca_loss_workspace_len(N, C, D))
    ];
    g.bench_function(BenchmarkId::new("fast", &id), |b| {
        b.iter(|| {
            proxy_nca_loss_grad(
                black_box(x),
                &labels,
                p,
                params,
                &mut grad,
                &mut grad_p,
                &mut ws,
            )
            .unwrap()
        });
    });
    g.bench_function(BenchmarkId::new("scalar", &id), |b| {
        b.iter(|| {
            scalar::proxy_nca_loss_grad(
                black_box(x),
                &labels,
                p,
                params,
                &mut grad,
                &mut grad_p,
                &mut ws,
            )
            .unwrap()
        });
    });
    g.finish();

    let mut g = c.benchmark_group("proxy_anchor");
    g.sample_size(20);
    g.throughput(Throughput::Elements((N * C) as u64));
    let params = ProxyAnchorParams::pytorch_metric_learning();
    let mut ws = vec![
        0.0_f32;
        proxy_anchor_loss_workspace_len(N, C, D)
            .max(scalar::proxy_anchor_loss_workspace_len(N, C, D))
    ];
    g.bench_function(BenchmarkId::new("fast", &id), |b| {
        b.iter(|| {
            proxy_anchor_loss_grad(
                black_box(x),
                &labels,
                p,
                params,
                &mut grad,
                &mut grad_p,
                &mut ws,
            )
            .unwrap()
        });
    });
    g.bench_function(BenchmarkId::new("scalar", &id), |b| {
        b.iter(|| {
            scalar::proxy_anchor_loss_grad(
                black_box(x),
                &labels,
                p,
                params,
                &mut grad,
                &mut grad_p,
                &mut ws,
            )
            .unwrap()
        });
    });
    g.finish();
}

criterion_group!(benches, contrastive, quadruplet, proxies);
criterion_main!(benches);
