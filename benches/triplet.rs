//! Batch triplet losses, loss plus gradient in one call, fast vs scalar twin, on the named
//! workloads of `benches/common/workloads.rs` (W2, W3, W4, W6; W5's twin would take
//! minutes per call): `x` standard normal, P x K labels `i / K`, Euclidean metric, margin
//! 0.2, hinge, mean reduction (mean over the nonzero terms for batch-all). Throughput is
//! the batch size, so criterion reports embeddings per second.
//!
//! Run one workload with `cargo bench --bench triplet -- W2`.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use std::hint::black_box;
use std::time::Duration;
use triplet_kernels::{
    scalar, triplet_batch_loss_grad, triplet_batch_loss_grad_workspace_len, Matrix,
};

#[path = "common/workloads.rs"]
mod workloads;
use workloads::WORKLOADS;

fn batch(c: &mut Criterion) {
    // W5 (n = 4096) is left to `benches/workloads.rs`: its twin takes minutes per call.
    for w in WORKLOADS.iter().filter(|w| w.is_batch() && w.n < 4096) {
        let data = w.data();
        let labels = w.labels().unwrap();
        let x = Matrix::new(&data, w.n, w.d).unwrap();
        let params = w.batch_params().unwrap();
        // Buffers allocated once, outside the timed loop.
        let mut grad = vec![0.0_f32; w.n * w.d];
        // One workspace for the fast kernel and its twin.
        let ws_len = triplet_batch_loss_grad_workspace_len(w.n, w.d, params).max(
            scalar::triplet_batch_loss_grad_workspace_len(w.n, w.d, params),
        );
        let mut ws = vec![0.0_f32; ws_len];

        let mut g = c.benchmark_group(w.id);
        g.throughput(Throughput::Elements(w.elements()));
        if w.n >= 256 {
            // The scalar twin takes up to a second per call here: few, short samples.
            g.sample_size(10)
                .warm_up_time(Duration::from_secs(1))
                .measurement_time(Duration::from_secs(4));
        }
        g.bench_function("fast", |b| {
            b.iter(|| {
                triplet_batch_loss_grad(black_box(x), &labels, params, &mut grad, &mut ws).unwrap()
            });
        });
        g.bench_function("scalar", |b| {
            b.iter(|| {
                scalar::triplet_batch_loss_grad(black_box(x), &labels, params, &mut grad, &mut ws)
                    .unwrap()
            });
        });
        g.finish();
    }
}

criterion_group!(benches, batch);
criterion_main!(benches);
