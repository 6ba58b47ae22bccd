//! Reference twins of every fast kernel: same names, same arguments, same errors.
//!
//! Each twin is the textbook formula in plain loops with `f64` accumulation, rounded to
//! `f32` once at the end. They never call a fast path (only the shared argument checks),
//! so the property tests, the fuzz targets and users can hold the fast kernels to them.
//! They follow the same NaN rules as the fast kernels. They are slower, not sloppier:
//! where the fast and the scalar result differ beyond the documented bound, the fast one
//! is wrong.

mod distance;
mod reduce;

pub use distance::{
    cross_distances, cross_distances_rows, l2_normalize, l2_normalize_backward, pairwise_distances,
    pairwise_distances_rows, row_norms,
};
pub use reduce::{hinge_reduce, hinge_reduce_grad};
