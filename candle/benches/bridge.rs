//! The bridge's per-step overhead (`cargo bench -p triplet-kernels-candle --bench bridge`).
//!
//! Group `bridge`, two entries on the W2 workload of the kernel crate's table (`n = 256`,
//! `d = 128`, standard normal data, 32 classes of 8, Euclidean batch-hard, margin 0.2,
//! mean; the same data and parameters as `benches/workloads.rs`):
//!
//! - `W2_batch_hard_fwd_bwd_n256_d128`: one direct call of `triplet_batch_loss_grad`,
//!   buffers allocated outside the timed loop (as in `benches/workloads.rs`);
//! - `B1_candle_batch_hard_fwd_bwd_n256_d128`: the candle step, `triplet_batch_loss` on a
//!   `Var` then `loss.backward()` and the gradient read from the store. It includes what
//!   a training step with the bridge pays on top of the kernel: the checks, the labels'
//!   copy, the workspace and gradient allocations, the graph walk and candle's gradient
//!   accumulation.
//!
//! Target: B1 within 10 % of W2.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use std::hint::black_box;

use candle_core::{Device, Var};
use triplet_kernels::{triplet_batch_loss_grad, triplet_batch_loss_grad_workspace_len, Matrix};

#[path = "../../benches/common/workloads.rs"]
mod workloads;
use workloads::workload;

fn bridge(c: &mut Criterion) {
    let w = workload("W2_batch_hard_fwd_bwd_n256_d128");
    let data = w.data();
    let labels = w.labels().expect("a batch workload");
    let params = w.batch_params().expect("a batch workload");
    let mut g = c.benchmark_group("bridge");
    g.throughput(Throughput::Elements(w.elements()));

    let x = Matrix::new(&data, w.n, w.d).unwrap();
    let mut grad = vec![0.0_f32; w.n * w.d];
    let mut ws = vec![0.0_f32; triplet_batch_loss_grad_workspace_len(w.n, w.d, params)];
    g.bench_function(w.id, |b| {
        b.iter(|| {
            triplet_batch_loss_grad(black_box(x), &labels, params, &mut grad, &mut ws).unwrap()
        });
    });

    let xv = Var::from_vec(data.clone(), (w.n, w.d), &Device::Cpu).unwrap();
    g.bench_function("B1_candle_batch_hard_fwd_bwd_n256_d128", |b| {
        b.iter(|| {
            let loss = triplet_kernels_candle::triplet_batch_loss(
                black_box(xv.as_tensor()),
                &labels,
                params,
            )
            .unwrap();
            let grads = loss.backward().unwrap();
            black_box(grads.get(xv.as_tensor()).is_some())
        });
    });
    g.finish();
}

criterion_group!(benches, bridge);
criterion_main!(benches);
