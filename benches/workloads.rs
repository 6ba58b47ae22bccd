//! The reference workloads of the performance targets (`cargo bench --bench workloads`).
//!
//! The workloads, their ids, shapes, parameters, data and targets are the table of
//! `benches/common/workloads.rs`, shared with `benches/triplet.rs` and the chart
//! (`examples/bench_chart.rs`). Ids are fixed: `W1_*` are distance matrices (`n = 1024`, `d = 128`, `x` standard
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
    pairwise_distances_workspace_len, DistanceMode, Matrix,
};

#[path = "common/workloads.rs"]
mod workloads;
use workloads::{workload, Kind, WORKLOADS};

fn flops(n: usize, m: usize, d: usize) -> Throughput {
    Throughput::Elements((2 * n * m * d) as u64)
}

fn w1(c: &mut Criterion) {
    let mut g = c.benchmark_group("workloads");
    for w in WORKLOADS.iter().filter(|w| !w.is_batch()) {
        let (n, d) = (w.n, w.d);
        let xd = w.data();
        let x = Matrix::new(&xd, n, d).unwrap();
        let mut out = vec![0.0_f32; n * n];
        let mut ws = vec![0.0_f32; pairwise_distances_workspace_len(n, d)];
        g.throughput(Throughput::Elements(w.elements()));
        match w.kind {
            Kind::Pairwise(metric) => {
                g.bench_function(w.id, |b| {
                    b.iter(|| pairwise_distances(black_box(x), metric, &mut out, &mut ws).unwrap());
                });
            }
            Kind::GemmAnchor => {
                g.bench_function(w.id, |b| {
                    b.iter(|| {
                        let a = black_box(xd.as_slice());
                        // SAFETY: `a` is the row-major n x d matrix X (n * d elements): as A
                        // (m = n, k = d) with strides (d, 1), as B = X^T (k = d, n = n) with
                        // strides (1, d); `out` holds n * n elements, row-major C with strides
                        // (n, 1), no aliasing.
                        #[allow(unsafe_code)]
                        unsafe {
                            matrixmultiply::sgemm(
                                n,
                                d,
                                n,
                                1.0,
                                a.as_ptr(),
                                d as isize,
                                1,
                                a.as_ptr(),
                                1,
                                d as isize,
                                0.0,
                                out.as_mut_ptr(),
                                n as isize,
                                1,
                            );
                        }
                    });
                });
            }
            Kind::Batch { .. } => unreachable!("filtered out"),
        }
    }
    g.finish();
}

/// Two row blocks of the W1 matrices: on one thread, then on two.
fn row_blocks(c: &mut Criterion) {
    let w = workload("W1_sqeuclid_n1024_d128");
    let (n, d) = (w.n, w.d);
    let xd = w.data();
    let x = Matrix::new(&xd, n, d).unwrap();
    let mut out = vec![0.0_f32; n * n];
    let half = n / 2;
    let mut ws0 = vec![0.0_f32; pairwise_distances_rows_workspace_len(n, half, d)];
    let mut ws1 = vec![0.0_f32; pairwise_distances_rows_workspace_len(n, n - half, d)];
    let mut g = c.benchmark_group("row_blocks");
    g.throughput(flops(n, n, d));
    let Kind::Pairwise(metric) = w.kind else {
        unreachable!("W1 sqeuclid is a pairwise workload")
    };
    let mode = DistanceMode::Gram;

    g.bench_function(format!("{}/pairwise_2blocks_1thread", w.id), |b| {
        b.iter(|| {
            let (top, bottom) = out.split_at_mut(half * n);
            pairwise_distances_rows(black_box(x), 0..half, metric, mode, top, &mut ws0).unwrap();
            pairwise_distances_rows(black_box(x), half..n, metric, mode, bottom, &mut ws1).unwrap();
        });
    });
    g.bench_function(format!("{}/pairwise_2blocks_2threads", w.id), |b| {
        b.iter(|| {
            let (top, bottom) = out.split_at_mut(half * n);
            let (w0, w1) = (&mut ws0, &mut ws1);
            std::thread::scope(|sc| {
                sc.spawn(|| {
                    pairwise_distances_rows(black_box(x), 0..half, metric, mode, top, w0).unwrap();
                });
                pairwise_distances_rows(black_box(x), half..n, metric, mode, bottom, w1).unwrap();
            });
        });
    });

    // Cross: queries X against the gallery X (no symmetry), blocks of queries.
    let mut cws0 = vec![0.0_f32; cross_distances_rows_workspace_len(half, n, d)];
    let mut cws1 = vec![0.0_f32; cross_distances_rows_workspace_len(n - half, n, d)];
    g.bench_function(format!("{}/cross_2blocks_1thread", w.id), |b| {
        b.iter(|| {
            let (top, bottom) = out.split_at_mut(half * n);
            cross_distances_rows(black_box(x), x, 0..half, metric, mode, top, &mut cws0).unwrap();
            cross_distances_rows(black_box(x), x, half..n, metric, mode, bottom, &mut cws1)
                .unwrap();
        });
    });
    g.bench_function(format!("{}/cross_2blocks_2threads", w.id), |b| {
        b.iter(|| {
            let (top, bottom) = out.split_at_mut(half * n);
            let (w0, w1) = (&mut cws0, &mut cws1);
            std::thread::scope(|sc| {
                sc.spawn(|| {
                    cross_distances_rows(black_box(x), x, 0..half, metric, mode, top, w0).unwrap();
                });
                cross_distances_rows(black_box(x), x, half..n, metric, mode, bottom, w1).unwrap();
            });
        });
    });
    g.finish();
}

// ---------------------------------------------------------------------------------------
// W2..W6: batch triplet losses, one call of `triplet_batch_loss_grad` (loss plus gradient)
// each, as the table defines them. Throughput is the batch size (embeddings per second).
// Buffers are allocated outside the timed loop; the workspace is the documented
// `triplet_batch_loss_grad_workspace_len`, O(n d) (no n x n matrix).

fn batch_losses(c: &mut Criterion) {
    use std::time::Duration;
    use triplet_kernels::{triplet_batch_loss_grad, triplet_batch_loss_grad_workspace_len};
    for w in WORKLOADS.iter().filter(|w| w.is_batch()) {
        let xd = w.data();
        let x = Matrix::new(&xd, w.n, w.d).unwrap();
        let labels = w.labels().unwrap();
        let params = w.batch_params().unwrap();
        let mut grad = vec![0.0_f32; w.n * w.d];
        let mut ws = vec![0.0_f32; triplet_batch_loss_grad_workspace_len(w.n, w.d, params)];
        let mut g = c.benchmark_group("workloads");
        g.throughput(Throughput::Elements(w.elements()));
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

// ---------------------------------------------------------------------------------------
// R1..R5: exact k-NN and retrieval metrics, as the `RETRIEVAL` table defines them.
// Throughput is `2 nq ng d` (the brute-force search's FLOPs). Outputs, workspaces and the
// prepared gallery (R4) are made outside the timed loop; the two-thread form splits the
// queries in two blocks, each thread with its own workspace, spawned inside the loop.

fn retrieval(c: &mut Criterion) {
    use std::time::Duration;
    use triplet_kernels::{
        gallery_filter_len, gallery_norms_len, knn, knn_gallery, knn_gallery_workspace_len,
        knn_workspace_len, prepare_gallery_filtered, retrieval_metrics,
        retrieval_metrics_workspace_len,
    };
    use workloads::{Search, RETRIEVAL};
    for w in &RETRIEVAL {
        let (qd, gd) = (w.queries(), w.gallery());
        let q = Matrix::new(&qd, w.nq, w.d).unwrap();
        let y = Matrix::new(&gd, w.ng, w.d).unwrap();
        let mut g = c.benchmark_group("workloads");
        g.throughput(Throughput::Elements(2 * w.multiply_adds()));
        if w.multiply_adds() > 1 << 30 {
            // R3: a few hundred ms per call.
            g.sample_size(10)
                .warm_up_time(Duration::from_secs(1))
                .measurement_time(Duration::from_secs(5));
        }
        match w.search {
            Search::Knn { k, threads } => {
                let per = w.nq.div_ceil(threads);
                let mut idx = vec![0_u32; w.nq * k];
                let mut dist = vec![0.0_f32; w.nq * k];
                let mut wss: Vec<Vec<f32>> = (0..threads)
                    .map(|_| vec![0.0; knn_workspace_len(per, w.ng, w.d)])
                    .collect();
                g.bench_function(w.id, |b| {
                    b.iter(|| {
                        std::thread::scope(|sc| {
                            let parts = idx
                                .chunks_mut(per * k)
                                .zip(dist.chunks_mut(per * k))
                                .zip(wss.iter_mut())
                                .enumerate();
                            for (t, ((i, dd), ws)) in parts {
                                let rows = i.len() / k;
                                let qs = &qd[t * per * w.d..(t * per + rows) * w.d];
                                let qb = Matrix::new(qs, rows, w.d).unwrap();
                                let mut job = move || {
                                    knn(black_box(qb), Some(y), w.metric, k, i, dd, ws).unwrap();
                                };
                                if threads == 1 {
                                    job();
                                } else {
                                    sc.spawn(job);
                                }
                            }
                        });
                    });
                });
            }
            Search::KnnPrepared { k } => {
                // Enrolment: norms and the bf16 filter copy, once.
                let mut norms = vec![0.0_f32; gallery_norms_len(w.ng)];
                let mut filter = vec![0.0_f32; gallery_filter_len(w.ng, w.d)];
                let gallery =
                    prepare_gallery_filtered(y, w.metric.into(), &mut norms, &mut filter).unwrap();
                let mut idx = vec![0_u32; w.nq * k];
                let mut dist = vec![0.0_f32; w.nq * k];
                let mut ws = vec![0.0_f32; knn_gallery_workspace_len(w.nq, w.ng, w.d)];
                g.bench_function(w.id, |b| {
                    b.iter(|| {
                        knn_gallery(black_box(q), &gallery, k, &mut idx, &mut dist, &mut ws)
                            .unwrap();
                    });
                });
            }
            Search::Metrics => {
                let ql: Vec<u32> = (0..w.nq as u32).map(|i| i % 100).collect();
                let gl: Vec<u32> = (0..w.ng as u32).map(|i| i % 100).collect();
                let mut ws = vec![0.0_f32; retrieval_metrics_workspace_len(w.nq, w.ng, w.d)];
                g.bench_function(w.id, |b| {
                    b.iter(|| {
                        retrieval_metrics(black_box(q), &ql, Some((y, &gl)), w.metric, 10, &mut ws)
                            .unwrap()
                    });
                });
            }
        }
        g.finish();
    }
}

// ---------------------------------------------------------------------------------------
// E1, E2: k-NN against a gallery in each edge format, as the `EDGE` table defines them.
// The gallery is quantized and prepared outside the timed loop (enrolment); a query's own
// quantization (int8 batch, sign bits) is inside it. Throughput: gallery rows searched per
// query, `nq ng`.

fn edge(c: &mut Criterion) {
    use std::time::Duration;
    use triplet_kernels::{
        binary_words_len, gallery_norms_len, knn_edge, knn_edge_i8, knn_edge_i8_workspace_len,
        knn_edge_workspace_len, knn_gallery, knn_gallery_workspace_len, knn_hamming,
        prepare_edge_gallery, prepare_gallery, quantize_bf16, quantize_binary, quantize_f16,
        quantize_i8, BinaryMatrix, EdgeMatrix, SearchMetric,
    };
    use workloads::{EdgeFmt, EDGE};
    for w in &EDGE {
        let (qd, gd) = (w.queries(), w.gallery());
        let (nq, ng, d, k) = (w.nq, w.ng, w.d, w.k);
        let q = Matrix::new(&qd, nq, d).unwrap();
        let y = Matrix::new(&gd, ng, d).unwrap();
        let mut g = c.benchmark_group("workloads");
        g.throughput(Throughput::Elements((nq * ng) as u64));
        if nq > 1 {
            g.sample_size(10)
                .warm_up_time(Duration::from_secs(1))
                .measurement_time(Duration::from_secs(5));
        }
        let mut idx = vec![0_u32; nq * k];
        let mut dist = vec![0.0_f32; nq * k];
        let metric = SearchMetric::Cosine;
        let mut norms = vec![0.0_f32; gallery_norms_len(ng)];
        let mut pws = vec![0.0_f32; d];
        match w.fmt {
            EdgeFmt::F32 => {
                let gallery = prepare_gallery(y, metric, &mut norms).unwrap();
                let mut ws = vec![0.0_f32; knn_gallery_workspace_len(nq, ng, d)];
                g.bench_function(w.id, |b| {
                    b.iter(|| {
                        knn_gallery(black_box(q), &gallery, k, &mut idx, &mut dist, &mut ws)
                            .unwrap();
                    });
                });
            }
            EdgeFmt::F16 | EdgeFmt::Bf16 => {
                let mut bits = vec![0_u16; ng * d];
                let rows = if w.fmt == EdgeFmt::F16 {
                    quantize_f16(y, &mut bits).unwrap();
                    EdgeMatrix::f16(&bits, ng, d).unwrap()
                } else {
                    quantize_bf16(y, &mut bits).unwrap();
                    EdgeMatrix::bf16(&bits, ng, d).unwrap()
                };
                let gallery = prepare_edge_gallery(rows, metric, &mut norms, &mut pws).unwrap();
                let mut ws = vec![0.0_f32; knn_edge_workspace_len(nq, ng, d)];
                g.bench_function(w.id, |b| {
                    b.iter(|| {
                        knn_edge(black_box(q), &gallery, k, &mut idx, &mut dist, &mut ws).unwrap();
                    });
                });
            }
            EdgeFmt::I8 => {
                let (mut codes, mut scales) = (vec![0_i8; ng * d], vec![0.0_f32; ng]);
                quantize_i8(y, &mut codes, &mut scales).unwrap();
                let rows = EdgeMatrix::i8(&codes, &scales, ng, d).unwrap();
                let gallery = prepare_edge_gallery(rows, metric, &mut norms, &mut pws).unwrap();
                let (mut qc, mut qs) = (vec![0_i8; nq * d], vec![0.0_f32; nq]);
                let mut ws = vec![0.0_f32; knn_edge_i8_workspace_len(nq, ng, d)];
                g.bench_function(w.id, |b| {
                    b.iter(|| {
                        quantize_i8(black_box(q), &mut qc, &mut qs).unwrap();
                        let qe = EdgeMatrix::i8(&qc, &qs, nq, d).unwrap();
                        knn_edge_i8(qe, &gallery, k, &mut idx, &mut dist, &mut ws).unwrap();
                    });
                });
            }
            EdgeFmt::Binary => {
                let mut gw = vec![0_u64; binary_words_len(ng, d)];
                quantize_binary(y, &mut gw).unwrap();
                let gm = BinaryMatrix::new(&gw, ng, d).unwrap();
                let mut qw = vec![0_u64; binary_words_len(nq, d)];
                g.bench_function(w.id, |b| {
                    b.iter(|| {
                        quantize_binary(black_box(q), &mut qw).unwrap();
                        let qm = BinaryMatrix::new(&qw, nq, d).unwrap();
                        knn_hamming(qm, gm, k, &mut idx, &mut dist).unwrap();
                    });
                });
            }
        }
        g.finish();
    }
}

// ---------------------------------------------------------------------------------------
// X1 and W5_2threads: the reference forms. X1 is one step of a cross-batch memory (XBM):
// 256 queries against a memory of 8,192 rows that already holds them at its end
// (`self_index`), batch-hard, Euclidean on L2-normalised rows (pytorch-metric-learning's
// `CrossBatchMemory(TripletMarginLoss(), memory_size=8192, miner=BatchHardMiner())`
// computes this; benches/anchors/pml_xbm.py times it). The memory stores normalised rows
// (normalised once, when enqueued); the step normalises the queries, runs the loss with
// the gradient for the queries alone (the memory is detached) and chains it through the
// normalisation. W5_2threads is W5 on two threads sharing the batch: the batch-hard
// sweep split in two parts (`hardest_pairs_part`), merged, the loss formed from the merged
// choices; W5_2anchor_blocks is the data-parallel form (each worker's anchors against the
// gathered batch). Throughput: queries (X1) or rows (W5) per second.

fn cross_batch(c: &mut Criterion) {
    use std::time::Duration;
    use triplet_kernels::{
        combine_batch_losses, hardest_pairs_part, hardest_pairs_part_workspace_len, l2_normalize,
        l2_normalize_backward, merge_hardest_pairs, triplet_batch_ref_loss_grad,
        triplet_batch_ref_loss_grad_workspace_len, triplet_hardest_pairs_loss_grad,
        triplet_hardest_pairs_loss_workspace_len, BatchParams, GradMode, HardestPair, Hinge,
        Metric, Mining, Reduction, RefGrad, RefSet, SweepPart,
    };
    let mut g = c.benchmark_group("workloads");
    g.sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));

    // X1.
    let (q, m, d) = (256, 8192, 128);
    let queries = workloads::normal(q * d, 11);
    let mut memory = workloads::normal(m * d, 12);
    for row in memory.chunks_exact_mut(d) {
        let n = row.iter().map(|v| v * v).sum::<f32>().sqrt().max(1e-12);
        row.iter_mut().for_each(|v| *v /= n);
    }
    let labels: Vec<u32> = (0..q as u32).map(|i| i % 64).collect();
    let mut y_labels: Vec<u32> = (0..m as u32).map(|j| j % 64).collect();
    y_labels[m - q..].copy_from_slice(&labels);
    let own: Vec<u32> = (0..q as u32).map(|a| (m - q) as u32 + a).collect();
    let params = BatchParams::new()
        .with_metric(Metric::Euclidean)
        .with_mining(Mining::BatchHard)
        .with_margin(0.05)
        .with_hinge(Hinge::Relu)
        .with_reduction(Reduction::MeanNonzero);
    let mut ws = vec![0.0_f32; triplet_batch_ref_loss_grad_workspace_len(q, m, d, params)];
    let (mut gn, mut gx) = (vec![0.0_f32; q * d], vec![0.0_f32; q * d]);
    let x = Matrix::new(&queries, q, d).unwrap();
    g.throughput(Throughput::Elements(q as u64));
    g.bench_function("X1_batch_hard_xbm_fwd_bwd_q256_m8192_d128", |b| {
        b.iter(|| {
            // Enqueue: the normalised queries are the memory's last rows.
            l2_normalize(black_box(x), &mut memory[(m - q) * d..]).unwrap();
            let y = Matrix::new(&memory, m, d).unwrap();
            let xn = Matrix::new(&memory[(m - q) * d..], q, d).unwrap();
            let refs = RefSet::new(y, &y_labels).with_self_index(&own);
            let out = triplet_batch_ref_loss_grad(
                xn,
                &labels,
                refs,
                params,
                RefGrad::new(&mut gn),
                &mut ws,
            )
            .unwrap();
            l2_normalize_backward(x, &gn, &mut gx).unwrap();
            out
        });
    });

    // W5 on two threads: the batch-hard sweep's tiles split in two parts of equal cost,
    // one per thread, the choices merged and the loss formed from them (bit for bit W5's
    // result).
    let w = workload("W5_batch_hard_fwd_bwd_n4096_d256");
    let (n, d) = (w.n, w.d);
    let xd = w.data();
    let x = Matrix::new(&xd, n, d).unwrap();
    let labels = w.labels().unwrap();
    let whole = w.batch_params().unwrap();
    let mut grad = vec![0.0_f32; n * d];
    {
        let plen = hardest_pairs_part_workspace_len(n, d);
        let (mut ws0, mut ws1) = (vec![0.0_f32; plen], vec![0.0_f32; plen]);
        let (mut c0, mut c1) = (vec![HardestPair::NONE; n], vec![HardestPair::NONE; n]);
        let mut wsl = vec![0.0_f32; triplet_hardest_pairs_loss_workspace_len(n, d)];
        let metric = whole.metric;
        g.throughput(Throughput::Elements(n as u64));
        g.bench_function(format!("{}_2threads", w.id), |b| {
            b.iter(|| {
                let labels = &labels;
                let (c1r, ws1) = (&mut c1, &mut ws1);
                std::thread::scope(|sc| {
                    let t = sc.spawn(move || {
                        let part = SweepPart::new(1, 2);
                        hardest_pairs_part(black_box(x), labels, metric, part, c1r, ws1).unwrap()
                    });
                    let part = SweepPart::new(0, 2);
                    hardest_pairs_part(black_box(x), labels, metric, part, &mut c0, &mut ws0)
                        .unwrap();
                    t.join().unwrap();
                });
                merge_hardest_pairs(&mut c0, &c1).unwrap();
                triplet_hardest_pairs_loss_grad(x, &c0, whole, &mut grad, &mut wsl).unwrap()
            });
        });
    }

    // The same batch as two blocks of anchors, each on its own thread against the whole
    // batch (`y = x`), as workers that each own half the batch compute it
    // (`triplet_batch_ref_loss_grad`, `Reduction::Sum`); the gradient is then the sum of
    // each block's anchor rows and both blocks' candidate gradients, scaled by the
    // combined weight, as a data-parallel trainer's all-reduce forms it. Each block
    // computes its rows against all columns: together twice W5's triangle.
    let sum = whole.with_reduction(Reduction::Sum);
    let half = n / 2;
    let own: Vec<u32> = (0..n as u32).collect();
    let mut gy0 = vec![0.0_f32; n * d];
    let mut gy1 = vec![0.0_f32; n * d];
    let wlen = triplet_batch_ref_loss_grad_workspace_len(half, n, d, sum);
    let (mut ws0, mut ws1) = (vec![0.0_f32; wlen], vec![0.0_f32; wlen]);
    g.throughput(Throughput::Elements(n as u64));
    g.bench_function(format!("{}_2anchor_blocks", w.id), |b| {
        b.iter(|| {
            let (g0, g1) = grad.split_at_mut(half * d);
            let (y0, y1) = (&mut gy0, &mut gy1);
            let (w0, w1) = (&mut ws0, &mut ws1);
            let (labels, own) = (&labels, &own);
            // One worker: its anchors `r0..r1` against the gathered batch.
            let work = |r0: usize, r1: usize, gx: &mut [f32], gy: &mut [f32], ws: &mut [f32]| {
                let xb = Matrix::new(&xd[r0 * d..r1 * d], r1 - r0, d).unwrap();
                let refs = RefSet::new(black_box(x), labels).with_self_index(&own[r0..r1]);
                let grad = RefGrad::new(gx).with_y(gy).with_mode(GradMode::Overwrite);
                triplet_batch_ref_loss_grad(xb, &labels[r0..r1], refs, sum, grad, ws).unwrap()
            };
            let (b0, b1) = std::thread::scope(|sc| {
                let t = sc.spawn(|| work(0, half, g0, y0, w0));
                let b1 = work(half, n, g1, y1, w1);
                (t.join().unwrap(), b1)
            });
            // The all-reduce: candidate gradients summed, added to the anchor rows, scaled.
            let (total, wt) = combine_batch_losses(&[b0, b1], whole.reduction);
            for ((g, &a), &b) in grad.iter_mut().zip(&gy0).zip(&gy1) {
                *g = (*g + a + b) * wt;
            }
            total
        });
    });
    g.finish();
}

criterion_group!(
    benches,
    w1,
    row_blocks,
    batch_losses,
    retrieval,
    edge,
    cross_batch
);
criterion_main!(benches);
