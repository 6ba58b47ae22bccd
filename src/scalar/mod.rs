//! Reference twins of every fast kernel: same names, same arguments, same errors (a short
//! workspace aside, see [below](#workspace)).
//!
//! Each twin is the textbook formula in plain loops, computed in `f64` from the `f32`
//! inputs. They never call a fast path (only the shared argument checks), so the property
//! tests, the fuzz targets and users can hold the fast kernels to them. They follow the
//! same NaN rules as the fast kernels. They are slower, not sloppier: where the fast and
//! the scalar result differ beyond the documented bound, the fast one is wrong.
//!
//! # What is exact
//!
//! - Every distance, norm, dot product, hinge term, log-sum-exp and reduction is computed
//!   in `f64` from the `f32` inputs (each product of two inputs is exact in `f64`), and so
//!   are the discrete decisions that depend on them (mining, hinge activity, `swap`).
//! - Every `f32` output element (a distance, a term, a loss, an element of `grad` or
//!   `grad_proxies`) is its `f64` value rounded to `f32` once. A gradient element sums
//!   every contribution it receives in `f64` and is rounded only after the last one; where
//!   rows are normalised, the gradient is chained through the normalisation in `f64`,
//!   from the unrounded sums. (The retrieval metrics are returned in `f64`.)
//! - The one `f32` intermediate: [`triplet_batch_loss`] and [`triplet_batch_loss_grad`]
//!   with `normalize: true` normalise the rows in `f64` and round them to `f32`, as the
//!   fast kernel does, and compute the loss of these rounded rows (the gradient is then
//!   chained through the normalisation of the original rows). The proxy losses normalise
//!   in `f64` and never round.
//!
//! The `f64` arithmetic rounds too, by `2^-53` relative per operation: a sum of `k` terms
//! is within about `k 2^-53` times the sum of their magnitudes. That is negligible against
//! the final rounding to `f32` (`2^-24` of the result) unless the sum cancels by a factor
//! approaching `2^29 / k`; `exp`, `ln` and `sqrt` come from `libm` in `f64`.
//!
//! # Workspace
//!
//! A gradient twin keeps one `f64` accumulator per gradient element without allocating:
//! its high half in the element itself, its low half in the workspace; the retrieval
//! twins rank one `f64` (distance, index) pair per reference. Where the twins need a
//! different workspace than the fast kernels, this module has its own length functions,
//! named like the fast ones: [`triplet_margin_loss_workspace_len`],
//! [`triplet_batch_loss_grad_workspace_len`], [`contrastive_loss_workspace_len`],
//! [`quadruplet_loss_workspace_len`], [`proxy_nca_loss_workspace_len`],
//! [`proxy_anchor_loss_workspace_len`], [`ntxent_loss_workspace_len`],
//! [`infonce_loss_workspace_len`], [`supcon_loss_workspace_len`], [`knn_workspace_len`] and
//! [`retrieval_metrics_workspace_len`]. Each governs every twin that the fast function of the
//! same name governs (for example both [`contrastive_loss`] and [`contrastive_loss_grad`]);
//! every other twin takes the fast kernel's length. A twin whose workspace is too short
//! reports its own requirement in [`Error::WorkspaceTooSmall`](crate::Error); every other
//! error is the fast kernel's, in the same order.

mod acc;
mod contrastive;
mod distance;
mod edge;
mod face;
mod mining;
mod multi_similarity;
mod nce;
mod proxy;
mod quadruplet;
mod reduce;
mod retrieval;
mod threshold;
mod triplet;
mod triplet_ref;
mod verification;

pub use distance::{
    cross_distances, cross_distances_rows, l2_normalize, l2_normalize_backward, pairwise_distances,
    pairwise_distances_rows, row_norms,
};
pub use edge::{
    dequantize_bf16, dequantize_binary, dequantize_f16, dequantize_i8, knn_edge, knn_edge_i8,
    knn_edge_workspace_len, knn_hamming, knn_rescored, quantize_bf16, quantize_binary,
    quantize_f16, quantize_i8,
};
pub use mining::{hardest_pairs, hardest_pairs_part, mine_triplets, mine_triplets_count};
pub use reduce::{hinge_reduce, hinge_reduce_grad};
pub use threshold::{
    multi_similarity_mine, multi_similarity_mine_count, pair_mine, pair_mine_count, triplet_mine,
    triplet_mine_count,
};

pub use contrastive::{
    contrastive_loss, contrastive_loss_grad, contrastive_loss_pairs, contrastive_loss_pairs_grad,
    contrastive_loss_pairs_workspace_len, contrastive_loss_workspace_len,
};
pub use face::{
    arcface_loss, arcface_loss_grad, arcface_loss_workspace_len, cosface_loss, cosface_loss_grad,
    cosface_loss_workspace_len,
};
pub use multi_similarity::{
    multi_similarity_loss, multi_similarity_loss_grad, multi_similarity_loss_pairs,
    multi_similarity_loss_pairs_grad, multi_similarity_loss_pairs_workspace_len,
    multi_similarity_loss_workspace_len,
};
pub use nce::{
    infonce_loss, infonce_loss_grad, infonce_loss_workspace_len, ntxent_loss, ntxent_loss_grad,
    ntxent_loss_workspace_len, supcon_loss, supcon_loss_grad, supcon_loss_workspace_len,
};
pub use proxy::{
    proxy_anchor_loss, proxy_anchor_loss_grad, proxy_anchor_loss_workspace_len, proxy_nca_loss,
    proxy_nca_loss_grad, proxy_nca_loss_workspace_len,
};
pub use quadruplet::{
    mine_quadruplets, mine_quadruplets_count, quadruplet_loss, quadruplet_loss_grad,
    quadruplet_loss_workspace_len,
};
pub use retrieval::{
    knn, knn_gallery, knn_gallery_workspace_len, knn_workspace_len, retrieval_metrics,
    retrieval_metrics_at, retrieval_metrics_workspace_len,
};
pub use triplet::{
    triplet_batch_loss, triplet_batch_loss_grad, triplet_batch_loss_grad_workspace_len,
    triplet_hardest_pairs_loss, triplet_hardest_pairs_loss_grad,
    triplet_hardest_pairs_loss_grad_workspace_len, triplet_margin_loss, triplet_margin_loss_grad,
    triplet_margin_loss_workspace_len,
};
pub use triplet_ref::{
    mine_triplets_ref, mine_triplets_ref_count, triplet_batch_ref_loss,
    triplet_batch_ref_loss_grad, triplet_batch_ref_loss_grad_workspace_len,
};
pub use verification::verification_metrics;

// The 0.1 names of the twins' workspace queries, deprecated for one release.
#[allow(deprecated)]
pub use contrastive::contrastive_workspace_len;
#[allow(deprecated)]
pub use proxy::{proxy_anchor_workspace_len, proxy_nca_workspace_len};
#[allow(deprecated)]
pub use quadruplet::quadruplet_workspace_len;
#[allow(deprecated)]
pub use triplet::triplet_margin_workspace_len;
