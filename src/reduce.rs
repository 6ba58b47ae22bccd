//! Margin hinges and reductions shared by every loss.
//!
//! A margin loss first forms one value `v_k` per selected tuple (for a triplet,
//! `d(a,p) - d(a,n) + margin`), applies a hinge `h(v_k)` and reduces the terms:
//!
//! - [`Hinge::Relu`]: `h(v) = max(v, 0)`; its derivative is taken as 0 at `v = 0`.
//! - [`Hinge::SoftPlus`]: `h(v) = ln(1 + e^v)`, computed as `max(v, 0) + ln(1 + e^-|v|)`,
//!   finite for every finite `v` (it never overflows, unlike a literal `log1p(exp(v))`).
//! - [`Reduction::Sum`]: `sum h(v_k)`; [`Reduction::Mean`]: `sum / k`;
//!   [`Reduction::MeanNonzero`]: the sum divided by the number of active terms (`v > 0`
//!   for relu; every term with `v > -inf` for the soft margin, see [`Hinge::is_active`])
//!   (pytorch-metric-learning's `AvgNonZeroReducer`), the count held constant for the
//!   gradient. A reduction of zero terms, or of terms that are all 0, is 0 with a zero
//!   gradient.

use crate::error::Error;
use crate::math;
use crate::validate::check_len;

/// The function applied to each margin value `v` (for a triplet,
/// `d(a,p) - d(a,n) + margin`) before the terms are reduced ([`Reduction`]).
///
/// - [`Hinge::Relu`]: `h(v) = max(v, 0)`; its derivative is taken as 0 at `v = 0`.
/// - [`Hinge::SoftPlus`]: `h(v) = ln(1 + e^v)`, computed as `max(v, 0) + ln(1 + e^-|v|)`,
///   finite for every finite `v` (it never overflows, unlike a literal `log1p(exp(v))`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum Hinge {
    /// `max(v, 0)`.
    #[default]
    Relu,
    /// `ln(1 + e^v)`, the soft margin.
    SoftPlus,
}

impl Hinge {
    /// `h(v)`. NaN stays NaN.
    #[inline]
    pub fn apply(self, v: f32) -> f32 {
        match self {
            Hinge::Relu => math::relu(v),
            Hinge::SoftPlus => math::softplus(v),
        }
    }

    /// Whether the term `h(v)` counts as nonzero for [`Reduction::MeanNonzero`]: decided on
    /// `v` itself, `v > 0` for `Relu` and `v > -inf` for `SoftPlus` (whose `f32` value
    /// underflows to 0 below `v` of about -104 although the exact term is positive), so the
    /// count does not depend on the precision of the arithmetic.
    #[inline]
    pub fn is_active(self, v: f32) -> bool {
        match self {
            Hinge::Relu => v > 0.0,
            Hinge::SoftPlus => v > f32::NEG_INFINITY,
        }
    }

    /// `h'(v)` (0 for `Relu` at `v <= 0`, the logistic sigmoid for `SoftPlus`).
    #[inline]
    pub fn slope(self, v: f32) -> f32 {
        match self {
            Hinge::Relu => {
                if v > 0.0 {
                    1.0
                } else if v.is_nan() {
                    v
                } else {
                    0.0
                }
            }
            Hinge::SoftPlus => math::sigmoid(v),
        }
    }
}

/// How per-tuple terms `h(v_k)` ([`Hinge`]) become one loss.
///
/// - [`Reduction::Sum`]: `sum h(v_k)`; [`Reduction::Mean`]: `sum / k`;
/// - [`Reduction::MeanNonzero`]: the sum divided by the number of active terms (`v > 0`
///   for relu; every term with `v > -inf` for the soft margin, see [`Hinge::is_active`]),
///   as pytorch-metric-learning's `AvgNonZeroReducer`, the count held constant for the
///   gradient.
///
/// A reduction of zero terms, or of terms that are all 0, is 0 with a zero gradient.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum Reduction {
    /// Sum of the terms.
    Sum,
    /// Sum divided by the number of terms.
    #[default]
    Mean,
    /// Sum divided by the number of terms `> 0` (AvgNonZero).
    MeanNonzero,
}

impl Reduction {
    /// The factor each term is multiplied by, for `count` terms of which `active` are
    /// `> 0`; 0 when the divisor is 0.
    #[inline]
    pub fn weight(self, count: usize, active: usize) -> f32 {
        let divisor = match self {
            Reduction::Sum => return 1.0,
            Reduction::Mean => count,
            Reduction::MeanNonzero => active,
        };
        if divisor == 0 {
            0.0
        } else {
            1.0 / divisor as f32
        }
    }

    /// The reduced loss from the `f64` sum of `count` terms, `active` of them active:
    /// the division in `f64`, one rounding to `f32`.
    pub(crate) fn reduce(self, sum: f64, count: usize, active: usize) -> f32 {
        let divisor = match self {
            Reduction::Sum => return sum as f32,
            Reduction::Mean => count,
            Reduction::MeanNonzero => active,
        };
        if divisor == 0 {
            0.0
        } else {
            (sum / divisor as f64) as f32
        }
    }
}

/// Applies `hinge` to each margin value and reduces: the loss of already formed margin
/// values `v` (for example `d(a,p) - d(a,n) + margin` per triplet). Scalar twin:
/// [`crate::scalar::hinge_reduce`].
///
/// # Errors
///
/// None today; the `Result` keeps the signature uniform with the other kernels.
///
/// # Numerics
///
/// Each term in `f32`, the sum in `f64` (no overflow for any finite terms: the mean of
/// `[f32::MAX, f32::MAX]` is `f32::MAX`), one rounding at the end: error at most a few
/// ulp of each term (soft margin) plus one rounding of the result. NaN values give a NaN
/// loss.
///
/// # Example
///
/// ```
/// use triplet_kernels::{hinge_reduce, Hinge, Reduction};
/// let v = [0.5_f32, -1.0, 1.5];
/// assert_eq!(hinge_reduce(&v, Hinge::Relu, Reduction::Sum)?, 2.0);
/// assert_eq!(hinge_reduce(&v, Hinge::Relu, Reduction::MeanNonzero)?, 1.0);
/// # Ok::<(), triplet_kernels::Error>(())
/// ```
#[cfg_attr(feature = "no-panic", no_panic::no_panic)]
pub fn hinge_reduce(values: &[f32], hinge: Hinge, reduction: Reduction) -> Result<f32, Error> {
    let (sum, active) = values.iter().fold((0.0_f64, 0_usize), |(s, a), &v| {
        (
            s + f64::from(hinge.apply(v)),
            a + usize::from(hinge.is_active(v)),
        )
    });
    Ok(reduction.reduce(sum, values.len(), active))
}

/// [`hinge_reduce`] and its gradient: returns the loss and writes
/// `grad[k] = d loss / d v_k` (every element overwritten). Scalar twin:
/// [`crate::scalar::hinge_reduce_grad`].
///
/// # Errors
///
/// [`Error::LengthMismatch`] (`"grad"`) when `grad.len() != values.len()`.
///
/// # Numerics
///
/// As [`hinge_reduce`]; each gradient element within a few ulp of the exact one.
///
/// # Example
///
/// ```
/// use triplet_kernels::{hinge_reduce_grad, Hinge, Reduction};
/// let v = [0.5_f32, -1.0, 1.5];
/// let mut g = [f32::NAN; 3];
/// let loss = hinge_reduce_grad(&v, Hinge::Relu, Reduction::Mean, &mut g)?;
/// assert!((loss - 2.0 / 3.0).abs() < 1e-7);
/// assert_eq!(g, [1.0 / 3.0, 0.0, 1.0 / 3.0]);
/// # Ok::<(), triplet_kernels::Error>(())
/// ```
#[cfg_attr(feature = "no-panic", no_panic::no_panic)]
pub fn hinge_reduce_grad(
    values: &[f32],
    hinge: Hinge,
    reduction: Reduction,
    grad: &mut [f32],
) -> Result<f32, Error> {
    check_len("grad", values.len(), grad.len())?;
    let (sum, active) = values.iter().fold((0.0_f64, 0_usize), |(s, a), &v| {
        (
            s + f64::from(hinge.apply(v)),
            a + usize::from(hinge.is_active(v)),
        )
    });
    let w = reduction.weight(values.len(), active);
    for (g, &v) in grad.iter_mut().zip(values) {
        *g = if w == 0.0 { 0.0 } else { w * hinge.slope(v) };
    }
    Ok(reduction.reduce(sum, values.len(), active))
}
