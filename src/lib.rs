//! Allocation-free, `no_std` kernels for triplet loss and its relatives.
//!
//! `triplet_kernels` computes the building blocks of metric learning over caller-provided
//! buffers: distance matrices, online mining, triplet, contrastive, quadruplet and proxy
//! losses with their gradients, retrieval and verification metrics. Every fast kernel is
//! vectorised through one private SIMD seam and has a public reference twin in
//! [`scalar`]. Each family is a module whose docs give its formulas; everything below is
//! also re-exported at the crate root.
//!
//! # Entry points
//!
//! Each `*_workspace_len` function is the `const fn` length of the scratch its kernel
//! needs (see "Conventions" below).
//!
//! **Data and errors.** [`Matrix`]: a validated row-major `rows x dim` view of `f32`
//! embeddings. [`Error`]: why a call refused its arguments.
//!
//! **[Distances](distance)** ([`Metric`]: squared Euclidean, Euclidean, cosine;
//! [`DistanceMode`]: Gram or direct form and their error bounds; [`NORM_EPS`]: the norm
//! clamp)
//! - [`pairwise_distances`] / [`pairwise_distances_workspace_len`]: the `n x n` matrix of
//!   one batch.
//! - [`pairwise_distances_rows`] / [`pairwise_distances_rows_workspace_len`]: a block of
//!   its rows (to spread a batch over threads).
//! - [`cross_distances`] / [`cross_distances_workspace_len`]: the `m x n` matrix between
//!   two sets.
//! - [`cross_distances_rows`] / [`cross_distances_rows_workspace_len`]: a block of its rows.
//! - [`row_norms`]: the Euclidean norm of every row.
//! - [`l2_normalize`] and [`l2_normalize_backward`]: rows scaled to unit norm, and the
//!   gradient through that scaling.
//!
//! **[Online mining](mining)** ([`Mining`]: batch-all, batch-hard, semi-hard;
//! [`Triplet`]; [`NO_INDEX`])
//! - [`mine_triplets`] / [`mine_triplets_workspace_len`]: the triplets a strategy selects.
//! - [`mine_triplets_count`]: how many it selects (labels only), to size the output.
//! - [`hardest_pairs`] / [`hardest_pairs_workspace_len`]: per anchor, the farthest positive
//!   and the nearest negative.
//! - [`hardest_pairs_part`] / [`hardest_pairs_part_workspace_len`] ([`SweepPart`],
//!   [`HardestPair`]) and [`merge_hardest_pairs`]: the same sweep split over threads that
//!   share the batch, each taking part of the tiles; [`triplet_hardest_pairs_loss`] /
//!   [`triplet_hardest_pairs_loss_grad`] turn the merged choices into the batch-hard loss
//!   (bit for bit [`triplet_batch_loss_grad`]'s).
//!
//! **Threshold mining** ([`TripletType`], [`TripletMinerParams`], [`Pair`], [`PairCounts`],
//! [`PairMinerParams`], [`MultiSimilarityMinerParams`])
//! - [`triplet_mine`] / [`triplet_mine_count`] / [`triplet_mine_workspace_len`]: every
//!   triplet meeting a margin rule (pytorch-metric-learning's `TripletMarginMiner`), with
//!   a seeded cap.
//! - [`pair_mine`] / [`pair_mine_count`] / [`pair_mine_workspace_len`]: ordered pairs past
//!   their margins (`PairMarginMiner`).
//! - [`multi_similarity_mine`] / [`multi_similarity_mine_count`]: the multi-similarity
//!   pair rule (`MultiSimilarityMiner`).
//!
//! **[Hinges and reductions](reduce)** ([`Hinge`]: relu, soft margin; [`Reduction`]: none,
//! sum, mean, mean over active terms)
//! - [`hinge_reduce`]: a hinge applied to margin values, then reduced.
//! - [`hinge_reduce_grad`]: its gradient with respect to the values.
//!
//! **[Triplet losses](triplet)**
//! - [`triplet_margin_loss`] / [`triplet_margin_loss_grad`] /
//!   [`triplet_margin_loss_workspace_len`]: over caller-given triplets, PyTorch's
//!   `TripletMarginLoss` ([`TripletParams`]).
//! - [`triplet_batch_loss`] / [`triplet_batch_loss_workspace_len`]: over a labelled batch,
//!   mining and reducing in one call ([`BatchParams`], returning a [`BatchLoss`]).
//! - [`triplet_batch_loss_grad`] / [`triplet_batch_loss_grad_workspace_len`]: the same
//!   with its gradient.
//! - [`triplet_batch_ref_loss`] / [`triplet_batch_ref_loss_grad`] and their
//!   `*_workspace_len`: anchors against a separate candidate set ([`RefSet`]: a cross-batch
//!   memory, a gathered data-parallel batch), gradients for both ([`RefGrad`],
//!   [`GradMode`]); [`mine_triplets_ref`] / [`mine_triplets_ref_count`] /
//!   [`mine_triplets_ref_workspace_len`]: their triplets; [`combine_batch_losses`]: blocks
//!   of anchors computed separately reduced to the whole batch.
//!
//! **[Contrastive loss](contrastive)** ([`ContrastiveParams`], [`ContrastiveForm`],
//! [`ContrastiveReduction`])
//! - [`contrastive_loss`] / [`contrastive_loss_grad`] / [`contrastive_loss_workspace_len`]:
//!   over every ordered pair of a labelled batch, pytorch-metric-learning's or Hadsell's
//!   form.
//! - [`contrastive_loss_pairs`] / [`contrastive_loss_pairs_grad`] /
//!   [`contrastive_loss_pairs_workspace_len`]: over given (mined) pairs.
//!
//! **[Multi-similarity loss](multi_similarity)** ([`MultiSimilarityParams`])
//! - [`multi_similarity_loss`] / [`multi_similarity_loss_grad`] /
//!   [`multi_similarity_loss_workspace_len`]: over every pair of a labelled batch.
//! - [`multi_similarity_loss_pairs`] / [`multi_similarity_loss_pairs_grad`] /
//!   [`multi_similarity_loss_pairs_workspace_len`]: over given (mined) pairs.
//!
//! **[Quadruplet loss](quadruplet)** ([`QuadrupletParams`], [`Quadruplet`])
//! - [`quadruplet_loss`] / [`quadruplet_loss_grad`] / [`quadruplet_loss_workspace_len`]:
//!   Chen et al.'s loss over caller-given quadruplets.
//! - [`mine_quadruplets`] / [`mine_quadruplets_workspace_len`]: quadruplets formed inside a
//!   labelled batch; [`mine_quadruplets_count`]: how many.
//!
//! **[Proxy losses](proxy)**
//! - [`proxy_nca_loss`] / [`proxy_nca_loss_grad`] / [`proxy_nca_loss_workspace_len`]:
//!   Proxy-NCA ([`ProxyNcaParams`]), gradients for the rows and the proxies.
//! - [`proxy_anchor_loss`] / [`proxy_anchor_loss_grad`] /
//!   [`proxy_anchor_loss_workspace_len`]: Proxy-Anchor ([`ProxyAnchorParams`]), likewise.
//!
//! **[Face-recognition heads](face)**
//! - [`arcface_loss`] / [`arcface_loss_grad`] / [`arcface_loss_workspace_len`]: ArcFace
//!   ([`ArcFaceParams`]) over caller-held class weights, gradients for the rows and the
//!   weights.
//! - [`cosface_loss`] / [`cosface_loss_grad`] / [`cosface_loss_workspace_len`]: CosFace
//!   ([`CosFaceParams`]), likewise.
//!
//! **[InfoNCE-family losses](nce)** ([`NtXentParams`], [`SupConParams`],
//! [`SupConReduction`], returning an [`NceLoss`])
//! - [`ntxent_loss`] / [`ntxent_loss_grad`] / [`ntxent_loss_workspace_len`]: NT-Xent over
//!   one labelled batch (pytorch-metric-learning's `NTXentLoss`).
//! - [`infonce_loss`] / [`infonce_loss_grad`] / [`infonce_loss_workspace_len`]: queries
//!   against documents with in-batch negatives (sentence-transformers'
//!   `MultipleNegativesRankingLoss`), gradients for both sides.
//! - [`supcon_loss`] / [`supcon_loss_grad`] / [`supcon_loss_workspace_len`]: supervised
//!   contrastive loss (`SupConLoss`).
//!
//! **[Retrieval](retrieval)**
//! - [`knn`] / [`knn_workspace_len`]: the `k` nearest references of every query, streamed
//!   over Gram tiles, exact in the direct form.
//! - [`prepare_gallery`] / [`gallery_norms_len`]: a [`Gallery`] enrolled once (rows, norm
//!   terms, [`SearchMetric`], inner product included); [`knn_gallery`] /
//!   [`knn_gallery_workspace_len`]: k-NN against it; [`prepare_gallery_filtered`] /
//!   [`gallery_filter_len`] add a bf16 filter copy that single queries scan instead of
//!   the `f32` rows (same results).
//! - [`retrieval_metrics`] / [`retrieval_metrics_workspace_len`]: precision@1, recall@k,
//!   R-precision and MAP@R ([`RetrievalMetrics`]); [`retrieval_metrics_at`]: the same with
//!   recall at several `K` from one ranking.
//!
//! **Edge formats** (galleries in f16, bf16, int8 or sign bits)
//! - [`quantize_f16`], [`quantize_bf16`], [`quantize_i8`], [`quantize_binary`] and
//!   [`dequantize_f16`], [`dequantize_bf16`], [`dequantize_i8`], [`dequantize_binary`]:
//!   storage formats from and to `f32` ([`EdgeMatrix`], [`BinaryMatrix`],
//!   [`EdgeFormat`], [`binary_words_len`]).
//! - [`prepare_edge_gallery`] / [`prepare_edge_gallery_workspace_len`]: an
//!   [`EdgeGallery`]; [`knn_edge`] / [`knn_edge_workspace_len`]: k-NN of `f32` queries
//!   against it; [`knn_edge_i8`] / [`knn_edge_i8_workspace_len`]: int8 queries against an
//!   int8 gallery, exact integer dot products.
//! - [`knn_hamming`]: k-NN by Hamming distance of sign bits; [`knn_rescored`] /
//!   [`knn_rescored_workspace_len`]: a Hamming shortlist re-scored against a finer copy.
//!
//! **[Verification](verification)**
//! - [`verification_metrics`] / [`verification_metrics_workspace_len`]: ROC AUC, equal
//!   error rate and TAR at given FARs of genuine and impostor scores
//!   ([`VerificationMetrics`], [`Score`]: similarity or distance).
//!
//! **Backends**
//! - [`Backend`]: the SIMD code paths (AVX-512F, AVX2 + FMA, portable) and which one runs.
//! - [`set_backend`] / [`reset_backend`]: force one for the whole process, or return to the
//!   automatic choice.
//!
//! **[Scalar twins](scalar)**: the same functions, computed in `f64`, with their own
//! `scalar::*_workspace_len` where their scratch differs.
//!
//! # SIMD backends
//!
//! The kernels pick their SIMD code path at run time, once per call: on x86-64, AVX-512F
//! or AVX2 + FMA when the CPU has them, otherwise a portable path (`wide`, whose width
//! follows the build's target features), so a default `cargo build` already runs the
//! widest unit of the machine it runs on. [`Backend`] lists what is available;
//! [`set_backend`] forces one at run time (e.g. `Backend::Portable`), and the cargo
//! feature `portable-only` leaves the x86 backends out of the build. All backends meet
//! the same documented error bounds.
//!
//! # Conventions
//!
//! Every kernel of the crate follows these rules.
//!
//! - **Embeddings** are a validated row-major view, [`Matrix`]: `rows x dim` `f32`,
//!   `rows >= 1`, `dim >= 1`, `data.len() == rows * dim`, checked once at construction.
//! - **Labels** are `&[u32]`, one per row, compared for equality only: arbitrary ids,
//!   no sorting or contiguity required (proxy losses, whose labels index proxies, are the
//!   exception and say so).
//! - **Outputs** (`out`, `grad`, ...) have exactly the documented length and are always
//!   fully written when the call returns `Ok`. On `Err` the call has written nothing: every
//!   argument is validated before the first write.
//! - **Scratch** is a `&mut [f32]` of at least `<kernel>_workspace_len(..)` elements, a
//!   `const fn` of the shapes, so it can size a stack array. Its contents are garbage
//!   before and after the call; never rely on them, never hard-code the length.
//! - **Errors**: one [`Error`] enum (`Copy`, `Eq`, variants carrying the offending sizes,
//!   `Display` without allocation, [`core::error::Error`]). **No public function panics,
//!   for any input**: wrong lengths, shape products that overflow `usize`, empty inputs
//!   and bad parameters return `Err`.
//! - **Parameters** are small `Copy` values validated at call time: a NaN or infinite
//!   margin or scale is an [`Error::InvalidParameter`], which names the parameter and the
//!   condition it must meet.
//! - **Non-finite data**: distance kernels do not scan their input; NaN and infinity
//!   propagate by IEEE 754 arithmetic into every output computed from an affected row
//!   (which of NaN or infinity is unspecified) and into no other. Loss kernels, whose
//!   discrete decisions (mining, hinges) would otherwise hide a NaN, say in their docs how
//!   they treat it.
//! - **Data range**: the loss kernels and miners that take distances of rows they do not
//!   normalise first require `|x_ik| * sqrt(dim) <= 2^52` (about `4.5e15 / sqrt(dim)`);
//!   a larger element is an [`Error::TooLarge`] naming its row and column. One rule for
//!   every mining strategy and loss: inside it no squared norm, squared distance or
//!   running sum can overflow `f32`; outside it the call returns `Err` rather than an
//!   infinity, a NaN or a silently wrong zero. Kernels that normalise first (`normalize:
//!   true`, the proxy losses) accept any finite data: [`l2_normalize`] scales a row by an
//!   exact power of two when its squared norm would overflow, so every finite non-zero
//!   row has a finite unit image. The distance matrices accept any data (see
//!   [`DistanceMode`] for their range); loss totals are accumulated in `f64`.
//! - **Scalar twins**: [`scalar`] holds, for every fast kernel, a function of the same name
//!   and arguments: the textbook formula, every distance, sum and gradient element
//!   accumulated in `f64` and rounded to `f32` once. They return the fast kernel's errors,
//!   except that a gradient twin or a retrieval twin may need another workspace, given by
//!   `scalar::<kernel>_workspace_len` where it differs. Each fast kernel's `# Numerics`
//!   section bounds its distance from the twin.
//!
//! # Example
//!
//! ```
//! use triplet_kernels::{pairwise_distances, pairwise_distances_workspace_len, Matrix, Metric};
//!
//! // Three 2-d embeddings, row-major.
//! let data = [0.0_f32, 0.0, 3.0, 4.0, 6.0, 8.0];
//! let x = Matrix::new(&data, 3, 2)?;
//! let mut d = [0.0_f32; 9];
//! let mut ws = [0.0_f32; pairwise_distances_workspace_len(3, 2)];
//! pairwise_distances(x, Metric::Euclidean, &mut d, &mut ws)?;
//! assert_eq!(d, [0.0, 5.0, 10.0, 5.0, 0.0, 5.0, 10.0, 5.0, 0.0]);
//! # Ok::<(), triplet_kernels::Error>(())
//! ```
#![no_std]
#![deny(missing_docs)]
#![warn(rust_2018_idioms, clippy::pedantic)]
// Library code never panics: no unwrap, expect or panic paths.
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
#![forbid(clippy::std_instead_of_core)]
// Numeric kernels convert between integer sizes and floats on purpose.
#![allow(
    clippy::cast_precision_loss,
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::cast_lossless,
    clippy::similar_names,
    clippy::many_single_char_names,
    clippy::must_use_candidate,
    clippy::module_name_repetitions,
    clippy::too_many_lines,
    clippy::float_cmp,
    clippy::doc_markdown,
    clippy::inline_always
)]

pub mod contrastive;
pub mod distance;
mod error;
pub mod face;
mod math;
mod matrix;
pub mod mining;
pub mod multi_similarity;
pub mod nce;
pub mod proxy;
pub mod quadruplet;
pub mod reduce;
pub mod retrieval;
pub mod scalar;
mod simd;
pub mod triplet;
mod validate;
pub mod verification;
mod workspace;

pub use distance::{
    cross_distances, cross_distances_rows, cross_distances_rows_workspace_len,
    cross_distances_workspace_len, l2_normalize, l2_normalize_backward, pairwise_distances,
    pairwise_distances_rows, pairwise_distances_rows_workspace_len,
    pairwise_distances_workspace_len, row_norms, DistanceMode, Metric, NORM_EPS,
};
pub use error::Error;
pub use matrix::Matrix;
pub use mining::{
    hardest_pairs, hardest_pairs_part, hardest_pairs_part_workspace_len,
    hardest_pairs_workspace_len, merge_hardest_pairs, mine_triplets, mine_triplets_count,
    mine_triplets_workspace_len, HardestPair, Mining, SweepPart, Triplet, NO_INDEX,
};
pub use mining::{
    multi_similarity_mine, multi_similarity_mine_count, pair_mine, pair_mine_count,
    pair_mine_workspace_len, triplet_mine, triplet_mine_count, triplet_mine_workspace_len,
    MultiSimilarityMinerParams, Pair, PairCounts, PairMinerParams, TripletMinerParams, TripletType,
};
pub use reduce::{hinge_reduce, hinge_reduce_grad, Hinge, Reduction};

pub use contrastive::{
    contrastive_loss, contrastive_loss_grad, contrastive_loss_pairs, contrastive_loss_pairs_grad,
    contrastive_loss_pairs_workspace_len, contrastive_loss_workspace_len, ContrastiveForm,
    ContrastiveParams, ContrastiveReduction,
};
pub use face::{
    arcface_loss, arcface_loss_grad, arcface_loss_workspace_len, cosface_loss, cosface_loss_grad,
    cosface_loss_workspace_len, ArcFaceParams, CosFaceParams,
};
pub use multi_similarity::{
    multi_similarity_loss, multi_similarity_loss_grad, multi_similarity_loss_pairs,
    multi_similarity_loss_pairs_grad, multi_similarity_loss_pairs_workspace_len,
    multi_similarity_loss_workspace_len, MultiSimilarityParams,
};
pub use nce::{
    infonce_loss, infonce_loss_grad, infonce_loss_workspace_len, ntxent_loss, ntxent_loss_grad,
    ntxent_loss_workspace_len, supcon_loss, supcon_loss_grad, supcon_loss_workspace_len, NceLoss,
    NtXentParams, SupConParams, SupConReduction,
};
pub use proxy::{
    proxy_anchor_loss, proxy_anchor_loss_grad, proxy_anchor_loss_workspace_len, proxy_nca_loss,
    proxy_nca_loss_grad, proxy_nca_loss_workspace_len, ProxyAnchorParams, ProxyNcaParams,
};
pub use quadruplet::{
    mine_quadruplets, mine_quadruplets_count, mine_quadruplets_workspace_len, quadruplet_loss,
    quadruplet_loss_grad, quadruplet_loss_workspace_len, Quadruplet, QuadrupletParams,
};
pub use retrieval::{
    binary_row_words, binary_words_len, dequantize_bf16, dequantize_binary, dequantize_f16,
    dequantize_i8, knn_edge, knn_edge_i8, knn_edge_i8_workspace_len, knn_edge_workspace_len,
    knn_hamming, knn_rescored, knn_rescored_workspace_len, prepare_edge_gallery,
    prepare_edge_gallery_workspace_len, quantize_bf16, quantize_binary, quantize_f16, quantize_i8,
    BinaryMatrix, EdgeFormat, EdgeGallery, EdgeMatrix, I8_MAX_DIM,
};
pub use retrieval::{
    gallery_filter_len, gallery_norms_len, knn_gallery, knn_gallery_workspace_len, prepare_gallery,
    prepare_gallery_filtered, Gallery, SearchMetric,
};
pub use retrieval::{
    knn, knn_workspace_len, retrieval_metrics, retrieval_metrics_at,
    retrieval_metrics_workspace_len, RetrievalMetrics,
};
pub use simd::{reset_backend, set_backend, Backend};
pub use triplet::{
    combine_batch_losses, mine_triplets_ref, mine_triplets_ref_count,
    mine_triplets_ref_workspace_len, triplet_batch_ref_loss, triplet_batch_ref_loss_grad,
    triplet_batch_ref_loss_grad_workspace_len, triplet_batch_ref_loss_workspace_len, GradMode,
    RefGrad, RefSet,
};
pub use triplet::{
    triplet_batch_loss, triplet_batch_loss_grad, triplet_batch_loss_grad_workspace_len,
    triplet_batch_loss_workspace_len, triplet_hardest_pairs_loss, triplet_hardest_pairs_loss_grad,
    triplet_hardest_pairs_loss_workspace_len, triplet_margin_loss, triplet_margin_loss_grad,
    triplet_margin_loss_workspace_len, BatchLoss, BatchParams, TripletParams,
};
pub use verification::{
    verification_metrics, verification_metrics_workspace_len, Score, VerificationMetrics,
};

// The 0.1 names of the workspace queries, deprecated for one release.
#[allow(deprecated)]
pub use contrastive::contrastive_workspace_len;
#[allow(deprecated)]
pub use mining::mining_workspace_len;
#[allow(deprecated)]
pub use proxy::{proxy_anchor_workspace_len, proxy_nca_workspace_len};
#[allow(deprecated)]
pub use quadruplet::quadruplet_workspace_len;
#[allow(deprecated)]
pub use triplet::triplet_margin_workspace_len;

/// The README's Rust examples, compiled and run by `cargo test --doc`; not part of the
/// API (the item exists only when rustdoc collects doctests).
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
