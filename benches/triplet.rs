//! Batch triplet losses, loss plus gradient in one call, fast vs scalar twin, on the named
//! workloads: `x` standard normal (fixed seed), P x K labels `i / K`, Euclidean metric,
//! margin 0.2, hinge, mean reduction (mean over the nonzero terms for batch-all).
//! Throughput is set to the batch size, so criterion reports embeddings per second.
//!
//! Run one workload with `cargo bench --bench triplet -- W2`.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use std::hint::black_box;
use std::time::Duration;
use triplet_kernels::{
    scalar, triplet_batch_loss_grad, triplet_batch_loss_grad_workspace_len, BatchParams, Hinge,
    Matrix, Metric, Mining, Reduction,
};

/// Standard normal data from a fixed-seed generator (splitmix64 and Box-Muller), so runs
/// are comparable across machines and commits.
fn standard_normal(len: usize, seed: u64) -> Vec<f32> {
    let mut state = seed;
    let mut uniform = move || {
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        // 53 random bits in (0, 1].
        ((z >> 11) as f64 + 1.0) / (1u64 << 53) as f64
    };
    let mut out = Vec::with_capacity(len);
    while out.len() < len {
        let (u1, u2) = (uniform(), uniform());
        let r = (-2.0 * u1.ln()).sqrt();
        let t = 2.0 * std::f64::consts::PI * u2;
        out.push((r * t.cos()) as f32);
        out.push((r * t.sin()) as f32);
    }
    out.truncate(len);
    out
}

struct Workload {
    id: &'static str,
    n: usize,
    d: usize,
    k: usize,
    mining: Mining,
    reduction: Reduction,
}

const WORKLOADS: [Workload; 4] = [
    Workload {
        id: "W2_batch_hard_fwd_bwd_n256_d128",
        n: 256,
        d: 128,
        k: 8,
        mining: Mining::BatchHard,
        reduction: Reduction::Mean,
    },
    Workload {
        id: "W3_semihard_fwd_bwd_n256_d128",
        n: 256,
        d: 128,
        k: 8,
        mining: Mining::SemiHard,
        reduction: Reduction::Mean,
    },
    Workload {
        id: "W4_batch_all_fwd_bwd_n256_d128",
        n: 256,
        d: 128,
        k: 8,
        mining: Mining::All,
        reduction: Reduction::MeanNonzero,
    },
    Workload {
        id: "W6_batch_hard_fwd_bwd_n32_d64",
        n: 32,
        d: 64,
        k: 4,
        mining: Mining::BatchHard,
        reduction: Reduction::Mean,
    },
];

fn batch(c: &mut Criterion) {
    for w in &WORKLOADS {
        let data = standard_normal(w.n * w.d, 0x5eed_0000 + w.n as u64);
        let labels: Vec<u32> = (0..w.n as u32).map(|i| i / w.k as u32).collect();
        let x = Matrix::new(&data, w.n, w.d).unwrap();
        let params = BatchParams::new()
            .with_metric(Metric::Euclidean)
            .with_mining(w.mining)
            .with_margin(0.2)
            .with_hinge(Hinge::Relu)
            .with_reduction(w.reduction);
        // Buffers allocated once, outside the timed loop.
        let mut grad = vec![0.0_f32; w.n * w.d];
        // One workspace for the fast kernel and its twin.
        let ws_len = triplet_batch_loss_grad_workspace_len(w.n, w.d, params).max(
            scalar::triplet_batch_loss_grad_workspace_len(w.n, w.d, params),
        );
        let mut ws = vec![0.0_f32; ws_len];

        let mut g = c.benchmark_group(w.id);
        g.throughput(Throughput::Elements(w.n as u64));
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
