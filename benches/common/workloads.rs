//! The named workloads of the performance targets and the one data generator of the
//! benches.
//!
//! Every bench and `examples/bench_chart.rs` include this file (`#[path]`), so a workload
//! id means the same shape, parameters, data and target wherever it appears:
//! `benches/workloads.rs` measures every workload, `benches/triplet.rs` the batch losses
//! against their scalar twins, and the chart reads the table to label and judge the
//! results. The other benches draw their data from the same generator.

// Included by targets that use only part of it (the chart reads the table, not the data).
#![allow(dead_code)]
// Shapes are small: element counts convert to `u64` and `f64` exactly.
#![allow(clippy::cast_precision_loss, clippy::cast_possible_truncation)]

use triplet_kernels::{BatchParams, Hinge, Metric, Mining, Reduction};

/// Deterministic pseudo-random numbers (xorshift64), so runs are comparable across
/// machines and commits.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed | 1)
    }

    /// Uniform in `(0, 1]`: 53 random bits.
    pub fn unit(&mut self) -> f64 {
        let s = &mut self.0;
        *s ^= *s << 13;
        *s ^= *s >> 7;
        *s ^= *s << 17;
        ((*s >> 11) as f64 + 1.0) / (1u64 << 53) as f64
    }

    /// Uniform in `(-1, 1]`.
    pub fn uniform(&mut self) -> f32 {
        (2.0 * self.unit() - 1.0) as f32
    }

    /// Standard normal (Box-Muller, one value per pair of uniforms).
    pub fn normal(&mut self) -> f32 {
        let (u1, u2) = (self.unit(), self.unit());
        ((-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()) as f32
    }
}

/// `len` standard normal values from `seed`.
pub fn normal(len: usize, seed: u64) -> Vec<f32> {
    let mut rng = Rng::new(seed);
    (0..len).map(|_| rng.normal()).collect()
}

/// `len` values uniform in `(-1, 1]` from `seed`.
pub fn uniform(len: usize, seed: u64) -> Vec<f32> {
    let mut rng = Rng::new(seed);
    (0..len).map(|_| rng.uniform()).collect()
}

/// What a workload computes.
#[derive(Clone, Copy, Debug)]
pub enum Kind {
    /// `pairwise_distances` of `x` under the metric (Gram mode).
    Pairwise(Metric),
    /// matrixmultiply's sgemm of `X X^T` for the same `x`: the yardstick of the pairwise
    /// workloads of its shape.
    GemmAnchor,
    /// One `triplet_batch_loss_grad` call (loss plus gradient): P x K labels `i / k`,
    /// Euclidean metric, margin 0.2, relu hinge.
    Batch {
        k: u32,
        mining: Mining,
        reduction: Reduction,
    },
}

/// One named workload: `x` is `n x d`, standard normal from `seed`.
#[derive(Clone, Copy, Debug)]
pub struct Workload {
    /// The criterion id (group `workloads`), as the README's table names it.
    pub id: &'static str,
    /// The label of the chart.
    pub label: &'static str,
    pub n: usize,
    pub d: usize,
    pub seed: u64,
    pub kind: Kind,
    /// The time target of the workload, in ns (`None` for the anchor).
    pub target_ns: Option<f64>,
}

impl Workload {
    /// The embeddings, `n x d` row-major.
    pub fn data(&self) -> Vec<f32> {
        normal(self.n * self.d, self.seed)
    }

    /// The labels of a batch workload (`i / k`); `None` for the others.
    pub fn labels(&self) -> Option<Vec<u32>> {
        match self.kind {
            Kind::Batch { k, .. } => Some((0..self.n as u32).map(|i| i / k).collect()),
            _ => None,
        }
    }

    /// The loss parameters of a batch workload; `None` for the others.
    pub fn batch_params(&self) -> Option<BatchParams> {
        match self.kind {
            Kind::Batch {
                mining, reduction, ..
            } => Some(
                BatchParams::new()
                    .with_metric(Metric::Euclidean)
                    .with_mining(mining)
                    .with_margin(0.2)
                    .with_hinge(Hinge::Relu)
                    .with_reduction(reduction),
            ),
            _ => None,
        }
    }

    /// Criterion's throughput elements: `2 n n d` for the matrices (so elements/s read as
    /// FLOP/s), the batch size `n` for the losses (embeddings per second).
    pub fn elements(&self) -> u64 {
        match self.kind {
            Kind::Pairwise(_) | Kind::GemmAnchor => (2 * self.n * self.n * self.d) as u64,
            Kind::Batch { .. } => self.n as u64,
        }
    }

    pub fn is_batch(&self) -> bool {
        matches!(self.kind, Kind::Batch { .. })
    }
}

// The W targets, derived from PyTorch and
// pytorch-metric-learning figures measured on an AMD Zen 5 core: W1 2.5x faster than
// PyTorch (3.63 ms squared-Euclidean, 3.07 ms cosine); W2..W6 5x, 30x, 30x, 10x and 50x
// faster than PyTorch / pml (0.95 ms, 25.1 ms, 33.3 ms, 764 ms, 0.32 ms).

/// Every workload, W1 (distance matrices, `n = 1024`, `d = 128`, and their GEMM anchor)
/// then W2..W6 (batch losses, loss plus gradient).
pub const WORKLOADS: [Workload; 8] = [
    Workload {
        id: "W1_sqeuclid_n1024_d128",
        label: "sqeuclid n1024 d128",
        n: 1024,
        d: 128,
        seed: 1,
        kind: Kind::Pairwise(Metric::SquaredEuclidean),
        target_ns: Some(3.63e6 / 2.5),
    },
    Workload {
        id: "W1_cosine_n1024_d128",
        label: "cosine n1024 d128",
        n: 1024,
        d: 128,
        seed: 1,
        kind: Kind::Pairwise(Metric::Cosine),
        target_ns: Some(3.07e6 / 2.5),
    },
    Workload {
        id: "W1_gemm_anchor_n1024_d128",
        label: "GEMM anchor (X X^T)",
        n: 1024,
        d: 128,
        seed: 1,
        kind: Kind::GemmAnchor,
        target_ns: None,
    },
    Workload {
        id: "W2_batch_hard_fwd_bwd_n256_d128",
        label: "W2 batch-hard n256",
        n: 256,
        d: 128,
        seed: 2,
        kind: Kind::Batch {
            k: 8,
            mining: Mining::BatchHard,
            reduction: Reduction::Mean,
        },
        target_ns: Some(0.19e6),
    },
    Workload {
        id: "W3_semihard_fwd_bwd_n256_d128",
        label: "W3 semi-hard n256",
        n: 256,
        d: 128,
        seed: 2,
        kind: Kind::Batch {
            k: 8,
            mining: Mining::SemiHard,
            reduction: Reduction::Mean,
        },
        target_ns: Some(0.84e6),
    },
    Workload {
        id: "W4_batch_all_fwd_bwd_n256_d128",
        label: "W4 batch-all n256",
        n: 256,
        d: 128,
        seed: 2,
        kind: Kind::Batch {
            k: 8,
            mining: Mining::All,
            reduction: Reduction::MeanNonzero,
        },
        target_ns: Some(1.1e6),
    },
    Workload {
        id: "W5_batch_hard_fwd_bwd_n4096_d256",
        label: "W5 batch-hard n4096",
        n: 4096,
        d: 256,
        seed: 2,
        kind: Kind::Batch {
            k: 16,
            mining: Mining::BatchHard,
            reduction: Reduction::Mean,
        },
        target_ns: Some(76e6),
    },
    Workload {
        id: "W6_batch_hard_fwd_bwd_n32_d64",
        label: "W6 batch-hard n32",
        n: 32,
        d: 64,
        seed: 2,
        kind: Kind::Batch {
            k: 4,
            mining: Mining::BatchHard,
            reduction: Reduction::Mean,
        },
        target_ns: Some(6.5e3),
    },
];

/// The workload named `id`.
///
/// # Panics
///
/// When no workload has that id.
pub fn workload(id: &str) -> &'static Workload {
    WORKLOADS
        .iter()
        .find(|w| w.id == id)
        .unwrap_or_else(|| panic!("no workload {id}"))
}

/// How a retrieval workload searches.
#[derive(Clone, Copy, Debug)]
pub enum Search {
    /// `knn` of the queries against the gallery, `k` neighbours, on `threads` threads
    /// (queries split in that many blocks).
    Knn { k: usize, threads: usize },
    /// `knn_gallery` against a gallery prepared once outside the timed loop.
    KnnPrepared { k: usize },
    /// `retrieval_metrics` of labelled queries against the labelled gallery (`recall_at_k`
    /// with `k = 10`; labels `i % 100` on both sides).
    Metrics,
}

/// One named retrieval workload: `nq` queries and `ng` gallery rows of dimension `d`,
/// standard normal, queries from `seed`, gallery from `seed + 1`.
#[derive(Clone, Copy, Debug)]
pub struct RetrievalWorkload {
    /// The criterion id (group `workloads`).
    pub id: &'static str,
    pub nq: usize,
    pub ng: usize,
    pub d: usize,
    pub metric: Metric,
    pub search: Search,
    pub seed: u64,
}

impl RetrievalWorkload {
    pub fn queries(&self) -> Vec<f32> {
        normal(self.nq * self.d, self.seed)
    }

    pub fn gallery(&self) -> Vec<f32> {
        normal(self.ng * self.d, self.seed + 1)
    }

    /// Multiply-adds of the brute-force search, `nq ng d`.
    pub fn multiply_adds(&self) -> u64 {
        (self.nq * self.ng * self.d) as u64
    }
}

/// The retrieval workloads R1..R5 (exact k-NN and retrieval metrics).
pub const RETRIEVAL: [RetrievalWorkload; 7] = [
    RetrievalWorkload {
        id: "R1_knn_q1024_g8192_d64_k10_sqeuclid",
        nq: 1024,
        ng: 8192,
        d: 64,
        metric: Metric::SquaredEuclidean,
        search: Search::Knn { k: 10, threads: 1 },
        seed: 11,
    },
    RetrievalWorkload {
        id: "R2_knn_q1024_g8192_d64_k10_cosine",
        nq: 1024,
        ng: 8192,
        d: 64,
        metric: Metric::Cosine,
        search: Search::Knn { k: 10, threads: 1 },
        seed: 11,
    },
    RetrievalWorkload {
        id: "R3_knn_q1000_g100000_d128_k10_sqeuclid",
        nq: 1000,
        ng: 100_000,
        d: 128,
        metric: Metric::SquaredEuclidean,
        search: Search::Knn { k: 10, threads: 1 },
        seed: 13,
    },
    RetrievalWorkload {
        id: "R3_knn_q1000_g100000_d128_k10_sqeuclid_2threads",
        nq: 1000,
        ng: 100_000,
        d: 128,
        metric: Metric::SquaredEuclidean,
        search: Search::Knn { k: 10, threads: 2 },
        seed: 13,
    },
    RetrievalWorkload {
        id: "R4_knn_q1_g100000_d128_k10_cosine",
        nq: 1,
        ng: 100_000,
        d: 128,
        metric: Metric::Cosine,
        search: Search::KnnPrepared { k: 10 },
        seed: 13,
    },
    RetrievalWorkload {
        id: "R4_knn_q1_g100000_d128_k10_sqeuclid",
        nq: 1,
        ng: 100_000,
        d: 128,
        metric: Metric::SquaredEuclidean,
        search: Search::KnnPrepared { k: 10 },
        seed: 13,
    },
    RetrievalWorkload {
        id: "R5_retrieval_metrics_q1024_g8192_d64_cosine",
        nq: 1024,
        ng: 8192,
        d: 64,
        metric: Metric::Cosine,
        search: Search::Metrics,
        seed: 11,
    },
];

// ---------------------------------------------------------------------------------------
// E1, E2: k-NN against a gallery stored in the edge formats.

/// The storage format of an edge workload's gallery.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EdgeFmt {
    /// `knn_gallery` on the prepared `f32` gallery: the baseline.
    F32,
    /// `knn_edge`, gallery in f16, `f32` queries.
    F16,
    /// `knn_edge`, gallery in bf16, `f32` queries.
    Bf16,
    /// `knn_edge_i8`: int8 gallery, the queries quantized with `quantize_i8` inside the
    /// timed loop (integer dot products: VNNI on the stored rows for one query, the VNNI
    /// tile for a batch).
    I8,
    /// `knn_hamming` of the sign bits (queries binarized inside the timed loop).
    Binary,
}

/// One named edge workload: `nq` queries against `ng` gallery rows of dimension `d`,
/// `k` neighbours, cosine (Hamming for binary), standard normal data from `normal`
/// (queries from `seed`, gallery from `seed + 1`, as the retrieval workloads).
#[derive(Clone, Copy, Debug)]
pub struct EdgeWorkload {
    /// The criterion id (group `workloads`).
    pub id: &'static str,
    pub nq: usize,
    pub ng: usize,
    pub d: usize,
    pub k: usize,
    pub fmt: EdgeFmt,
    pub seed: u64,
}

impl EdgeWorkload {
    pub fn queries(&self) -> Vec<f32> {
        normal(self.nq * self.d, self.seed)
    }

    pub fn gallery(&self) -> Vec<f32> {
        normal(self.ng * self.d, self.seed + 1)
    }
}

macro_rules! edge {
    ($id:literal, $nq:literal, $fmt:ident) => {
        EdgeWorkload {
            id: $id,
            nq: $nq,
            ng: 100_000,
            d: 128,
            k: 10,
            fmt: EdgeFmt::$fmt,
            seed: 13,
        }
    };
}

/// The edge workloads E1 (one query) and E2 (1000 queries), one per format.
pub const EDGE: [EdgeWorkload; 10] = [
    edge!("E1_knn_q1_g100000_d128_k10_f32", 1, F32),
    edge!("E1_knn_q1_g100000_d128_k10_f16", 1, F16),
    edge!("E1_knn_q1_g100000_d128_k10_bf16", 1, Bf16),
    edge!("E1_knn_q1_g100000_d128_k10_i8", 1, I8),
    edge!("E1_knn_q1_g100000_d128_k10_binary", 1, Binary),
    edge!("E2_knn_q1000_g100000_d128_k10_f32", 1000, F32),
    edge!("E2_knn_q1000_g100000_d128_k10_f16", 1000, F16),
    edge!("E2_knn_q1000_g100000_d128_k10_bf16", 1000, Bf16),
    edge!("E2_knn_q1000_g100000_d128_k10_i8", 1000, I8),
    edge!("E2_knn_q1000_g100000_d128_k10_binary", 1000, Binary),
];
