//! The reference workloads of the performance targets (`cargo bench --bench workloads`).
//!
//! Ids are fixed: `W1_*` are distance matrices (`n = 1024`, `d = 128`, `x` standard
//! normal), next to `W1_gemm_anchor_n1024_d128`, matrixmultiply's sgemm of `X X^T` of the
//! same shape, the yardstick the W1 kernels are held to (>= 0.8x its FLOP/s in the same
//! run). Throughput is `2 n n d` elements, so the report reads as FLOP/s for all three
//! (the pairwise kernels compute one triangle, so they do half those FLOPs).
//!
//! The `row_blocks` group splits the same W1 matrices into two row blocks computed on two
//! threads (`std::thread::scope`, spawned inside the timed loop), next to the same blocks
//! computed one after the other on one thread.
//!
//! Workspaces and outputs are allocated outside the timed loops; the GEMM anchor allocates
//! its own packing buffers inside its call.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use std::hint::black_box;
use triplet_kernels::{
    cross_distances_rows, cross_distances_rows_workspace_len, pairwise_distances,
    pairwise_distances_rows, pairwise_distances_rows_workspace_len,
    pairwise_distances_workspace_len, DistanceMode, Matrix, Metric,
};

/// Deterministic standard normal data (xorshift + Box-Muller), so runs are comparable.
fn normal(len: usize, seed: u64) -> Vec<f32> {
    let mut s = seed | 1;
    let mut uniform = move || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        // In (0, 1]: 53 random bits.
        ((s >> 11) as f64 + 1.0) / (1u64 << 53) as f64
    };
    (0..len)
        .map(|_| {
            let (u1, u2) = (uniform(), uniform());
            ((-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()) as f32
        })
        .collect()
}

const N: usize = 1024;
const D: usize = 128;

fn flops(n: usize, m: usize, d: usize) -> Throughput {
    Throughput::Elements((2 * n * m * d) as u64)
}

fn w1(c: &mut Criterion) {
    let xd = normal(N * D, 1);
    let x = Matrix::new(&xd, N, D).unwrap();
    let mut out = vec![0.0_f32; N * N];
    let mut ws = vec![0.0_f32; pairwise_distances_workspace_len(N, D)];
    let mut g = c.benchmark_group("workloads");
    g.throughput(flops(N, N, D));
    g.bench_function("W1_sqeuclid_n1024_d128", |b| {
        b.iter(|| {
            pairwise_distances(black_box(x), Metric::SquaredEuclidean, &mut out, &mut ws).unwrap();
        });
    });
    g.bench_function("W1_cosine_n1024_d128", |b| {
        b.iter(|| pairwise_distances(black_box(x), Metric::Cosine, &mut out, &mut ws).unwrap());
    });
    g.bench_function("W1_gemm_anchor_n1024_d128", |b| {
        b.iter(|| {
            let a = black_box(xd.as_slice());
            // SAFETY: `a` is the row-major N x D matrix X (N * D elements): as A (m = N,
            // k = D) with strides (D, 1), as B = X^T (k = D, n = N) with strides (1, D);
            // `out` holds N * N elements, row-major C with strides (N, 1), no aliasing.
            #[allow(unsafe_code)]
            unsafe {
                matrixmultiply::sgemm(
                    N,
                    D,
                    N,
                    1.0,
                    a.as_ptr(),
                    D as isize,
                    1,
                    a.as_ptr(),
                    1,
                    D as isize,
                    0.0,
                    out.as_mut_ptr(),
                    N as isize,
                    1,
                );
            }
        });
    });
    // W2..W6 (loss plus gradient: batch-hard, semi-hard, batch-all at n = 256, batch-hard
    // at n = 4096 and at n = 32) go here, in this group. W2, W3, W4 and W6 are currently
    // in benches/triplet.rs; W5 waits for the fused mining (O(n d) workspace at n = 4096).
    g.finish();
}

/// Two row blocks of the W1 matrices: on one thread, then on two.
fn row_blocks(c: &mut Criterion) {
    let xd = normal(N * D, 1);
    let x = Matrix::new(&xd, N, D).unwrap();
    let mut out = vec![0.0_f32; N * N];
    let half = N / 2;
    let mut ws0 = vec![0.0_f32; pairwise_distances_rows_workspace_len(N, half, D)];
    let mut ws1 = vec![0.0_f32; pairwise_distances_rows_workspace_len(N, N - half, D)];
    let mut g = c.benchmark_group("row_blocks");
    g.throughput(flops(N, N, D));
    let metric = Metric::SquaredEuclidean;
    let mode = DistanceMode::Gram;

    g.bench_function("W1_sqeuclid_n1024_d128/pairwise_2blocks_1thread", |b| {
        b.iter(|| {
            let (top, bottom) = out.split_at_mut(half * N);
            pairwise_distances_rows(black_box(x), 0..half, metric, mode, top, &mut ws0).unwrap();
            pairwise_distances_rows(black_box(x), half..N, metric, mode, bottom, &mut ws1).unwrap();
        });
    });
    g.bench_function("W1_sqeuclid_n1024_d128/pairwise_2blocks_2threads", |b| {
        b.iter(|| {
            let (top, bottom) = out.split_at_mut(half * N);
            let (w0, w1) = (&mut ws0, &mut ws1);
            std::thread::scope(|sc| {
                sc.spawn(|| {
                    pairwise_distances_rows(black_box(x), 0..half, metric, mode, top, w0).unwrap();
                });
                pairwise_distances_rows(black_box(x), half..N, metric, mode, bottom, w1).unwrap();
            });
        });
    });

    // Cross: queries X against the gallery X (no symmetry), blocks of queries.
    let mut cws0 = vec![0.0_f32; cross_distances_rows_workspace_len(half, N, D)];
    let mut cws1 = vec![0.0_f32; cross_distances_rows_workspace_len(N - half, N, D)];
    g.bench_function("W1_sqeuclid_n1024_d128/cross_2blocks_1thread", |b| {
        b.iter(|| {
            let (top, bottom) = out.split_at_mut(half * N);
            cross_distances_rows(black_box(x), x, 0..half, metric, mode, top, &mut cws0).unwrap();
            cross_distances_rows(black_box(x), x, half..N, metric, mode, bottom, &mut cws1)
                .unwrap();
        });
    });
    g.bench_function("W1_sqeuclid_n1024_d128/cross_2blocks_2threads", |b| {
        b.iter(|| {
            let (top, bottom) = out.split_at_mut(half * N);
            let (w0, w1) = (&mut cws0, &mut cws1);
            std::thread::scope(|sc| {
                sc.spawn(|| {
                    cross_distances_rows(black_box(x), x, 0..half, metric, mode, top, w0).unwrap();
                });
                cross_distances_rows(black_box(x), x, half..N, metric, mode, bottom, w1).unwrap();
            });
        });
    });
    g.finish();
}

// ---------------------------------------------------------------------------------------
// W2..W6: batch triplet losses, one call of `triplet_batch_loss_grad` (loss plus gradient)
// each. `x` standard normal (the generator above, fixed seed), labels `i / K`, Euclidean,
// margin 0.2, hinge, mean (W4: mean over the nonzero terms). Throughput is the batch size
// (embeddings per second). Buffers are allocated outside the timed loop; the workspace
// is the documented `triplet_batch_loss_grad_workspace_len`, O(n d) (no n x n matrix).

/// One batch-loss workload.
struct Batch {
    id: &'static str,
    n: usize,
    d: usize,
    k: u32,
    mining: triplet_kernels::Mining,
    reduction: triplet_kernels::Reduction,
}

const BATCHES: [Batch; 5] = {
    use triplet_kernels::{Mining, Reduction};
    [
        Batch {
            id: "W2_batch_hard_fwd_bwd_n256_d128",
            n: 256,
            d: 128,
            k: 8,
            mining: Mining::BatchHard,
            reduction: Reduction::Mean,
        },
        Batch {
            id: "W3_semihard_fwd_bwd_n256_d128",
            n: 256,
            d: 128,
            k: 8,
            mining: Mining::SemiHard,
            reduction: Reduction::Mean,
        },
        Batch {
            id: "W4_batch_all_fwd_bwd_n256_d128",
            n: 256,
            d: 128,
            k: 8,
            mining: Mining::All,
            reduction: Reduction::MeanNonzero,
        },
        Batch {
            id: "W5_batch_hard_fwd_bwd_n4096_d256",
            n: 4096,
            d: 256,
            k: 16,
            mining: Mining::BatchHard,
            reduction: Reduction::Mean,
        },
        Batch {
            id: "W6_batch_hard_fwd_bwd_n32_d64",
            n: 32,
            d: 64,
            k: 4,
            mining: Mining::BatchHard,
            reduction: Reduction::Mean,
        },
    ]
};

fn batch_losses(c: &mut Criterion) {
    use std::time::Duration;
    use triplet_kernels::{
        triplet_batch_loss_grad, triplet_batch_loss_grad_workspace_len, BatchParams, Hinge,
    };
    for w in &BATCHES {
        let xd = normal(w.n * w.d, 2);
        let x = Matrix::new(&xd, w.n, w.d).unwrap();
        let labels: Vec<u32> = (0..w.n as u32).map(|i| i / w.k).collect();
        let params = BatchParams::new()
            .with_metric(Metric::Euclidean)
            .with_mining(w.mining)
            .with_margin(0.2)
            .with_hinge(Hinge::Relu)
            .with_reduction(w.reduction);
        let mut grad = vec![0.0_f32; w.n * w.d];
        let mut ws = vec![0.0_f32; triplet_batch_loss_grad_workspace_len(w.n, w.d, params)];
        let mut g = c.benchmark_group("workloads");
        g.throughput(Throughput::Elements(w.n as u64));
        if w.n >= 4096 {
            // About 50 ms per call: few samples keep the run short.
            g.sample_size(10)
                .warm_up_time(Duration::from_secs(1))
                .measurement_time(Duration::from_secs(3));
        }
        g.bench_function(w.id, |b| {
            b.iter(|| {
                triplet_batch_loss_grad(black_box(x), &labels, params, &mut grad, &mut ws).unwrap()
            });
        });
        g.finish();
    }
}

criterion_group!(benches, w1, row_blocks, batch_losses);
criterion_main!(benches);
