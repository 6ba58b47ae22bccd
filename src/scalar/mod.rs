//! Reference twins of every fast kernel: same names, same arguments, same errors.
//!
//! Each twin is the textbook formula in plain loops with `f64` accumulation, rounded to
//! `f32` once at the end. They never call a fast path (only the shared argument checks),
//! so the property tests, the fuzz targets and users can hold the fast kernels to them.
//! They follow the same NaN rules as the fast kernels. They are slower, not sloppier:
//! where the fast and the scalar result differ beyond the documented bound, the fast one
//! is wrong.

mod acc;
mod contrastive;
mod distance;
mod mining;
mod proxy;
mod quadruplet;
mod reduce;
mod retrieval;
mod triplet;

pub use distance::{
    cross_distances, cross_distances_rows, l2_normalize, l2_normalize_backward, pairwise_distances,
    pairwise_distances_rows, row_norms,
};
pub use mining::{hardest_pairs, mine_triplets, mine_triplets_count};
pub use reduce::{hinge_reduce, hinge_reduce_grad};

pub use contrastive::{contrastive_loss, contrastive_loss_grad, contrastive_workspace_len};
pub use proxy::{
    proxy_anchor_loss, proxy_anchor_loss_grad, proxy_anchor_workspace_len, proxy_nca_loss,
    proxy_nca_loss_grad, proxy_nca_workspace_len,
};
pub use quadruplet::{
    mine_quadruplets, quadruplet_loss, quadruplet_loss_grad, quadruplet_workspace_len,
};
pub use retrieval::{knn, retrieval_metrics};
pub use triplet::{
    triplet_batch_loss, triplet_batch_loss_grad, triplet_batch_loss_grad_workspace_len,
    triplet_margin_loss, triplet_margin_loss_grad, triplet_margin_workspace_len,
};
