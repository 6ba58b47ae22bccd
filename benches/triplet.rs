//! Triplet losses and mining, fast vs scalar twin.
//!
//! - The batch losses, loss plus gradient in one call, on the named workloads of
//!   `benches/common/workloads.rs` (W2, W3, W4, W6; W5's twin would take minutes per
//!   call): `x` standard normal, P x K labels `i / K`, Euclidean metric, margin 0.2,
//!   hinge, mean reduction (mean over the nonzero terms for batch-all). Throughput is the
//!   batch size, so criterion reports embeddings per second.
//! - Mining (`hardest_pairs`, `mine_triplets` with each strategy, one part of the split
//!   sweep `hardest_pairs_part`, the reference form `mine_triplets_ref` against 2048
//!   candidates), `triplet_hardest_pairs_loss_grad`, and the loss over
//!   explicit triplets (`triplet_margin_loss`, `triplet_margin_loss_grad`, on the
//!   semi-hard triplets of the batch) on W2's batch (n = 256, d = 128, classes of 8).
//!   Throughput is the batch size for mining, the number of triplets for the losses.
//! - `hinge_reduce` and `hinge_reduce_grad` over 65536 standard normal values.
//!
//! Run one workload with `cargo bench --bench triplet -- W2`.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use std::hint::black_box;
use std::time::Duration;
use triplet_kernels::{
    hardest_pairs, hardest_pairs_part, hardest_pairs_part_workspace_len, hinge_reduce,
    hinge_reduce_grad, mine_triplets, mine_triplets_count, mine_triplets_ref,
    mine_triplets_ref_count, mine_triplets_ref_workspace_len, mine_triplets_workspace_len, scalar,
    triplet_batch_loss_grad, triplet_batch_loss_grad_workspace_len,
    triplet_hardest_pairs_loss_grad, triplet_margin_loss, triplet_margin_loss_grad,
    triplet_margin_loss_workspace_len, HardestPair, Hinge, Matrix, Metric, Mining, Reduction,
    RefSet, SweepPart, Triplet, TripletParams,
};

#[path = "common/workloads.rs"]
mod workloads;
use workloads::{normal, workload, WORKLOADS};

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

fn mining_name(m: Mining) -> &'static str {
    match m {
        Mining::All => "all",
        Mining::BatchHard => "batch_hard",
        Mining::SemiHard => "semihard",
        _ => "other",
    }
}

/// `hardest_pairs` and `mine_triplets` on W2's batch.
fn mining(c: &mut Criterion) {
    let w = workload("W2_batch_hard_fwd_bwd_n256_d128");
    let (n, d) = (w.n, w.d);
    let data = w.data();
    let labels = w.labels().unwrap();
    let x = Matrix::new(&data, n, d).unwrap();
    let metric = Metric::Euclidean;
    // The twins take the fast kernels' workspace.
    let mut ws = vec![0.0_f32; mine_triplets_workspace_len(n, d)];
    let shape = format!("euclid_n{n}_d{d}");

    let mut g = c.benchmark_group("hardest_pairs");
    g.sample_size(20);
    g.throughput(Throughput::Elements(n as u64));
    let (mut pos, mut neg) = (vec![0_u32; n], vec![0_u32; n]);
    g.bench_function(BenchmarkId::new("fast", &shape), |b| {
        b.iter(|| {
            hardest_pairs(black_box(x), &labels, metric, &mut pos, &mut neg, &mut ws).unwrap()
        });
    });
    g.bench_function(BenchmarkId::new("scalar", &shape), |b| {
        b.iter(|| {
            scalar::hardest_pairs(black_box(x), &labels, metric, &mut pos, &mut neg, &mut ws)
                .unwrap()
        });
    });
    g.finish();

    let mut g = c.benchmark_group("mine_triplets");
    g.sample_size(20);
    g.throughput(Throughput::Elements(n as u64));
    for m in [Mining::BatchHard, Mining::SemiHard, Mining::All] {
        let mut out = vec![Triplet::default(); mine_triplets_count(&labels, m).unwrap()];
        let id = format!("{}_{shape}", mining_name(m));
        g.bench_function(BenchmarkId::new("fast", &id), |b| {
            b.iter(|| mine_triplets(black_box(x), &labels, metric, m, &mut out, &mut ws).unwrap());
        });
        g.bench_function(BenchmarkId::new("scalar", &id), |b| {
            b.iter(|| {
                scalar::mine_triplets(black_box(x), &labels, metric, m, &mut out, &mut ws).unwrap()
            });
        });
    }
    g.finish();

    // The split batch-hard sweep: one part of two on a batch of 1024 rows (ten tiles of
    // 256; W2's batch is a single tile), and the loss from given choices on W2's batch.
    let n2 = 1024;
    let x2d = normal(n2 * d, 92);
    let x2 = Matrix::new(&x2d, n2, d).unwrap();
    let labels2: Vec<u32> = (0..n2 as u32).map(|i| i / 8).collect();
    let mut wsp = vec![0.0_f32; hardest_pairs_part_workspace_len(n2, d)];
    let mut out2 = vec![HardestPair::NONE; n2];
    let mut g = c.benchmark_group("hardest_pairs_part");
    g.sample_size(10);
    g.throughput(Throughput::Elements(n2 as u64));
    let part = SweepPart::new(0, 2);
    let id = format!("half_euclid_n{n2}_d{d}");
    g.bench_function(BenchmarkId::new("fast", &id), |b| {
        b.iter(|| {
            hardest_pairs_part(black_box(x2), &labels2, metric, part, &mut out2, &mut wsp).unwrap()
        });
    });
    g.bench_function(BenchmarkId::new("scalar", &id), |b| {
        b.iter(|| {
            let x2 = black_box(x2);
            scalar::hardest_pairs_part(x2, &labels2, metric, part, &mut out2, &mut wsp).unwrap()
        });
    });
    g.finish();
    let mut out = vec![HardestPair::NONE; n];
    hardest_pairs_part(x, &labels, metric, SweepPart::WHOLE, &mut out, &mut ws).unwrap();
    let p = w.batch_params().unwrap();
    let mut grad = vec![0.0_f32; n * d];
    let mut ws2 = vec![0.0_f32; scalar::triplet_hardest_pairs_loss_grad_workspace_len(n, d)];
    let mut g = c.benchmark_group("triplet_hardest_pairs_loss_grad");
    g.sample_size(20);
    g.throughput(Throughput::Elements(n as u64));
    g.bench_function(BenchmarkId::new("fast", &shape), |b| {
        b.iter(|| {
            triplet_hardest_pairs_loss_grad(black_box(x), &out, p, &mut grad, &mut ws2).unwrap()
        });
    });
    g.bench_function(BenchmarkId::new("scalar", &shape), |b| {
        b.iter(|| {
            scalar::triplet_hardest_pairs_loss_grad(black_box(x), &out, p, &mut grad, &mut ws2)
                .unwrap()
        });
    });
    g.finish();

    // The reference form's miner: W2's batch as anchors against 2048 candidates (the
    // batch and seven more like it), batch-hard and semi-hard.
    let m = 8 * n;
    let yd = normal(m * d, 91);
    let y = Matrix::new(&yd, m, d).unwrap();
    let y_labels: Vec<u32> = (0..m as u32).map(|j| labels[j as usize % n]).collect();
    let mut wsr = vec![0.0_f32; mine_triplets_ref_workspace_len(n, m, d)];
    let mut g = c.benchmark_group("mine_triplets_ref");
    g.sample_size(10);
    g.throughput(Throughput::Elements(n as u64));
    for mining in [Mining::BatchHard, Mining::SemiHard] {
        let refs = RefSet::new(y, &y_labels);
        let count = mine_triplets_ref_count(&labels, &y_labels, None, mining).unwrap();
        let mut out = vec![Triplet::default(); count];
        let id = format!("{}_euclid_q{n}_m{m}_d{d}", mining_name(mining));
        g.bench_function(BenchmarkId::new("fast", &id), |b| {
            b.iter(|| {
                mine_triplets_ref(
                    black_box(x),
                    &labels,
                    refs,
                    metric,
                    mining,
                    &mut out,
                    &mut wsr,
                )
                .unwrap()
            });
        });
        g.bench_function(BenchmarkId::new("scalar", &id), |b| {
            b.iter(|| {
                let x = black_box(x);
                scalar::mine_triplets_ref(x, &labels, refs, metric, mining, &mut out, &mut wsr)
                    .unwrap()
            });
        });
    }
    g.finish();
}

/// `triplet_margin_loss` and `triplet_margin_loss_grad` over the semi-hard triplets of
/// W2's batch.
fn margin(c: &mut Criterion) {
    let w = workload("W2_batch_hard_fwd_bwd_n256_d128");
    let (n, d) = (w.n, w.d);
    let data = w.data();
    let labels = w.labels().unwrap();
    let x = Matrix::new(&data, n, d).unwrap();
    let metric = Metric::Euclidean;
    let mut triplets =
        vec![Triplet::default(); mine_triplets_count(&labels, Mining::SemiHard).unwrap()];
    let mut mws = vec![0.0_f32; mine_triplets_workspace_len(n, d)];
    let k = mine_triplets(
        x,
        &labels,
        metric,
        Mining::SemiHard,
        &mut triplets,
        &mut mws,
    )
    .unwrap();
    let params = TripletParams::new()
        .with_metric(metric)
        .with_margin(0.2)
        .with_reduction(Reduction::Mean);
    let mut terms = vec![0.0_f32; k];
    let mut grad = vec![0.0_f32; n * d];
    // One workspace for the fast kernels and their twins (the twins' is longer).
    let mut ws = vec![
        0.0_f32;
        triplet_margin_loss_workspace_len(n, d)
            .max(scalar::triplet_margin_loss_workspace_len(n, d))
    ];
    let id = format!("euclid_n{n}_d{d}_k{k}");

    let mut g = c.benchmark_group("triplet_margin_loss");
    g.sample_size(20);
    g.throughput(Throughput::Elements(k as u64));
    g.bench_function(BenchmarkId::new("fast", &id), |b| {
        b.iter(|| {
            triplet_margin_loss(black_box(x), &triplets, params, &mut terms, &mut ws).unwrap()
        });
    });
    g.bench_function(BenchmarkId::new("scalar", &id), |b| {
        b.iter(|| {
            scalar::triplet_margin_loss(black_box(x), &triplets, params, &mut terms, &mut ws)
                .unwrap()
        });
    });
    g.finish();

    let mut g = c.benchmark_group("triplet_margin_loss_grad");
    g.sample_size(20);
    g.throughput(Throughput::Elements(k as u64));
    g.bench_function(BenchmarkId::new("fast", &id), |b| {
        b.iter(|| {
            triplet_margin_loss_grad(
                black_box(x),
                &triplets,
                params,
                &mut terms,
                &mut grad,
                &mut ws,
            )
            .unwrap()
        });
    });
    g.bench_function(BenchmarkId::new("scalar", &id), |b| {
        b.iter(|| {
            scalar::triplet_margin_loss_grad(
                black_box(x),
                &triplets,
                params,
                &mut terms,
                &mut grad,
                &mut ws,
            )
            .unwrap()
        });
    });
    g.finish();
}

/// `hinge_reduce` and `hinge_reduce_grad` over standard normal margin values.
fn hinges(c: &mut Criterion) {
    const LEN: usize = 65536;
    let values = normal(LEN, 3);
    let mut grad = vec![0.0_f32; LEN];
    for (name, hinge) in [("relu", Hinge::Relu), ("softplus", Hinge::SoftPlus)] {
        let id = format!("{name}_mean_len{LEN}");
        let r = Reduction::Mean;
        let mut g = c.benchmark_group("hinge_reduce");
        g.throughput(Throughput::Elements(LEN as u64));
        g.bench_function(BenchmarkId::new("fast", &id), |b| {
            b.iter(|| hinge_reduce(black_box(&values), hinge, r).unwrap());
        });
        g.bench_function(BenchmarkId::new("scalar", &id), |b| {
            b.iter(|| scalar::hinge_reduce(black_box(&values), hinge, r).unwrap());
        });
        g.finish();

        let mut g = c.benchmark_group("hinge_reduce_grad");
        g.throughput(Throughput::Elements(LEN as u64));
        g.bench_function(BenchmarkId::new("fast", &id), |b| {
            b.iter(|| hinge_reduce_grad(black_box(&values), hinge, r, &mut grad).unwrap());
        });
        g.bench_function(BenchmarkId::new("scalar", &id), |b| {
            b.iter(|| scalar::hinge_reduce_grad(black_box(&values), hinge, r, &mut grad).unwrap());
        });
        g.finish();
    }
}

criterion_group!(benches, batch, mining, margin, hinges);
criterion_main!(benches);
