//! The face-recognition heads (`cargo bench --bench faces`): W10 (ArcFace) and W11
//! (CosFace), 256 rows, 1,000 classes, `d = 512`, loss and both gradients in one call,
//! pytorch-metric-learning's defaults (margin 28.6 degrees / 0.35, scale 64), next to
//! their scalar twins on a smaller batch. Beside them the InfoNCE family: W7 (1024
//! queries against 1024 documents, `d = 256`, cosine times scale 20, query `i`'s positive
//! is document `i`; gradients for both sides) and W8 (SupCon, temperature 0.1, 1024 rows
//! of 256 classes of 4, `d = 256`), anchored by `benches/anchors/pml_nce.py`, and the
//! group `nce_n128_d64`: NT-Xent, InfoNCE and SupCon (loss and gradients) next to their
//! scalar twins on 128 rows (K = 4) of dimension 64. Data from the shared generator; workspaces and
//! outputs allocated outside the timed loops. The criterion group is `workloads`, so the
//! ids read as the README's table names them.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use std::hint::black_box;
use std::time::Duration;
use triplet_kernels::{
    arcface_loss_grad, arcface_loss_workspace_len, cosface_loss_grad, infonce_loss_grad,
    infonce_loss_workspace_len, ntxent_loss_grad, ntxent_loss_workspace_len, scalar,
    supcon_loss_grad, supcon_loss_workspace_len, ArcFaceParams, CosFaceParams, Matrix,
    NtXentParams, SupConParams,
};

#[path = "common/workloads.rs"]
mod workloads;
use workloads::normal;

struct Shape {
    n: usize,
    c: usize,
    d: usize,
}

fn inputs(s: &Shape) -> (Vec<f32>, Vec<f32>, Vec<u32>) {
    let x = normal(s.n * s.d, 31);
    let w = normal(s.c * s.d, 32);
    let labels = (0..s.n as u32).map(|i| (i * 7) % s.c as u32).collect();
    (x, w, labels)
}

fn heads(c: &mut Criterion) {
    let big = Shape {
        n: 256,
        c: 1000,
        d: 512,
    };
    let (xd, wd, labels) = inputs(&big);
    let x = Matrix::new(&xd, big.n, big.d).unwrap();
    let w = Matrix::new(&wd, big.c, big.d).unwrap();
    let mut g = vec![0.0_f32; x.len()];
    let mut gw = vec![0.0_f32; w.len()];
    let mut ws = vec![0.0_f32; arcface_loss_workspace_len(big.n, big.c, big.d)];
    let mut group = c.benchmark_group("workloads");
    group.throughput(Throughput::Elements(big.n as u64));
    let arc = ArcFaceParams::pytorch_metric_learning();
    group.bench_function("W10_arcface_fwd_bwd_n256_c1000_d512", |b| {
        b.iter(|| {
            arcface_loss_grad(black_box(x), &labels, w, arc, &mut g, &mut gw, &mut ws).unwrap()
        });
    });
    let cos = CosFaceParams::pytorch_metric_learning();
    group.bench_function("W11_cosface_fwd_bwd_n256_c1000_d512", |b| {
        b.iter(|| {
            cosface_loss_grad(black_box(x), &labels, w, cos, &mut g, &mut gw, &mut ws).unwrap()
        });
    });
    group.finish();

    // Fast kernel against its twin on a batch the twin finishes quickly.
    let small = Shape {
        n: 64,
        c: 100,
        d: 128,
    };
    let (xd, wd, labels) = inputs(&small);
    let x = Matrix::new(&xd, small.n, small.d).unwrap();
    let w = Matrix::new(&wd, small.c, small.d).unwrap();
    let mut g = vec![0.0_f32; x.len()];
    let mut gw = vec![0.0_f32; w.len()];
    let len = arcface_loss_workspace_len(small.n, small.c, small.d).max(
        scalar::arcface_loss_workspace_len(small.n, small.c, small.d),
    );
    let mut ws = vec![0.0_f32; len];
    let mut group = c.benchmark_group("arcface_n64_c100_d128");
    group.measurement_time(Duration::from_secs(3));
    group.bench_function("fast", |b| {
        b.iter(|| {
            arcface_loss_grad(black_box(x), &labels, w, arc, &mut g, &mut gw, &mut ws).unwrap()
        });
    });
    group.bench_function("scalar", |b| {
        b.iter(|| {
            scalar::arcface_loss_grad(black_box(x), &labels, w, arc, &mut g, &mut gw, &mut ws)
                .unwrap()
        });
    });
    group.finish();
}

fn nce(c: &mut Criterion) {
    let (n, d, k) = (1024, 256, 4);
    let q = normal(n * d, 41);
    let docs = normal(n * d, 42);
    let ids: Vec<u32> = (0..n as u32).collect();
    let x = Matrix::new(&q, n, d).unwrap();
    let y = Matrix::new(&docs, n, d).unwrap();
    let mut g = vec![0.0_f32; x.len()];
    let mut gy = vec![0.0_f32; y.len()];
    let mut ws = vec![0.0_f32; infonce_loss_workspace_len(n, n, d)];
    let mut group = c.benchmark_group("workloads");
    group.throughput(Throughput::Elements(n as u64));
    let mnrl = NtXentParams::sentence_transformers();
    group.bench_function("W7_infonce_fwd_bwd_n1024_d256", |b| {
        b.iter(|| {
            infonce_loss_grad(black_box(x), &ids, y, &ids, mnrl, &mut g, &mut gy, &mut ws).unwrap()
        });
    });
    let labels: Vec<u32> = (0..n as u32).map(|i| i / k).collect();
    let mut ws = vec![0.0_f32; supcon_loss_workspace_len(n, d)];
    let sup = SupConParams::pytorch_metric_learning();
    group.bench_function("W8_supcon_fwd_bwd_n1024_d256", |b| {
        b.iter(|| supcon_loss_grad(black_box(x), &labels, sup, &mut g, &mut ws).unwrap());
    });
    group.finish();
}

/// The InfoNCE family next to its twins, on a batch the twins time in milliseconds.
fn nce_twins(c: &mut Criterion) {
    let (n, d, k) = (128, 64, 4);
    let data = normal(n * d, 43);
    let docs = normal(n * d, 44);
    let x = Matrix::new(&data, n, d).unwrap();
    let y = Matrix::new(&docs, n, d).unwrap();
    let labels: Vec<u32> = (0..n as u32).map(|i| i / k).collect();
    let ids: Vec<u32> = (0..n as u32).collect();
    let mut g = vec![0.0_f32; x.len()];
    let mut gy = vec![0.0_f32; y.len()];
    let len = ntxent_loss_workspace_len(n, d)
        .max(supcon_loss_workspace_len(n, d))
        .max(infonce_loss_workspace_len(n, n, d))
        .max(scalar::ntxent_loss_workspace_len(n, d))
        .max(scalar::supcon_loss_workspace_len(n, d))
        .max(scalar::infonce_loss_workspace_len(n, n, d));
    let mut ws = vec![0.0_f32; len];
    let (nt, sup) = (
        NtXentParams::pytorch_metric_learning(),
        SupConParams::pytorch_metric_learning(),
    );
    let mnrl = NtXentParams::sentence_transformers();
    let mut group = c.benchmark_group("nce_n128_d64");
    group.throughput(Throughput::Elements(n as u64));
    group.sample_size(10).warm_up_time(Duration::from_secs(1));
    for fast in [true, false] {
        let side = if fast { "fast" } else { "scalar" };
        group.bench_function(format!("ntxent_loss_grad/{side}"), |b| {
            let f = if fast {
                ntxent_loss_grad
            } else {
                scalar::ntxent_loss_grad
            };
            b.iter(|| f(black_box(x), &labels, nt, &mut g, &mut ws).unwrap());
        });
        group.bench_function(format!("supcon_loss_grad/{side}"), |b| {
            let f = if fast {
                supcon_loss_grad
            } else {
                scalar::supcon_loss_grad
            };
            b.iter(|| f(black_box(x), &labels, sup, &mut g, &mut ws).unwrap());
        });
        group.bench_function(format!("infonce_loss_grad/{side}"), |b| {
            let f = if fast {
                infonce_loss_grad
            } else {
                scalar::infonce_loss_grad
            };
            b.iter(|| f(black_box(x), &ids, y, &ids, mnrl, &mut g, &mut gy, &mut ws).unwrap());
        });
    }
    group.finish();
}

criterion_group!(benches, heads, nce, nce_twins);
criterion_main!(benches);
