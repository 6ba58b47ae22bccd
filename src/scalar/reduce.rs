//! Scalar twins of [`crate::reduce`].

use crate::error::Error;
use crate::reduce::{Hinge, Reduction};
use crate::validate::check_len;

/// `h(v)` in `f64`.
pub(crate) fn hinge64(hinge: Hinge, v: f64) -> f64 {
    match hinge {
        Hinge::Relu => {
            if v < 0.0 {
                0.0
            } else {
                v
            }
        }
        Hinge::SoftPlus => {
            if v > 0.0 {
                v + libm::log1p(libm::exp(-v))
            } else {
                libm::log1p(libm::exp(v))
            }
        }
    }
}

/// `h'(v)` in `f64`.
pub(crate) fn slope64(hinge: Hinge, v: f64) -> f64 {
    match hinge {
        Hinge::Relu => {
            if v > 0.0 {
                1.0
            } else if v.is_nan() {
                v
            } else {
                0.0
            }
        }
        Hinge::SoftPlus => {
            if v >= 0.0 {
                1.0 / (1.0 + libm::exp(-v))
            } else {
                let e = libm::exp(v);
                e / (1.0 + e)
            }
        }
    }
}

/// The per-term weight in `f64`.
pub(crate) fn weight64(reduction: Reduction, count: usize, active: usize) -> f64 {
    let divisor = match reduction {
        Reduction::Sum => return 1.0,
        Reduction::Mean => count,
        Reduction::MeanNonzero => active,
    };
    if divisor == 0 {
        0.0
    } else {
        1.0 / divisor as f64
    }
}

/// Scalar twin of [`crate::hinge_reduce`].
///
/// # Errors
///
/// Exactly those of [`crate::hinge_reduce`].
///
/// # Example
///
/// ```
/// use triplet_kernels::{scalar, Hinge, Reduction};
/// assert_eq!(scalar::hinge_reduce(&[1.0, -1.0], Hinge::Relu, Reduction::Mean)?, 0.5);
/// # Ok::<(), triplet_kernels::Error>(())
/// ```
#[cfg_attr(feature = "no-panic", no_panic::no_panic)]
pub fn hinge_reduce(values: &[f32], hinge: Hinge, reduction: Reduction) -> Result<f32, Error> {
    let mut sum = 0.0_f64;
    let mut active = 0;
    for &v in values {
        sum += hinge64(hinge, f64::from(v));
        active += usize::from(hinge.is_active(v));
    }
    Ok((sum * weight64(reduction, values.len(), active)) as f32)
}

/// Scalar twin of [`crate::hinge_reduce_grad`].
///
/// # Errors
///
/// Exactly those of [`crate::hinge_reduce_grad`].
///
/// # Example
///
/// ```
/// use triplet_kernels::{scalar, Hinge, Reduction};
/// let mut g = [0.0_f32; 2];
/// let loss = scalar::hinge_reduce_grad(&[1.0, -1.0], Hinge::Relu, Reduction::Sum, &mut g)?;
/// assert_eq!((loss, g), (1.0, [1.0, 0.0]));
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
    let mut sum = 0.0_f64;
    let mut active = 0;
    for &v in values {
        sum += hinge64(hinge, f64::from(v));
        active += usize::from(hinge.is_active(v));
    }
    let w = weight64(reduction, values.len(), active);
    for (g, &v) in grad.iter_mut().zip(values) {
        *g = if w == 0.0 {
            0.0
        } else {
            (w * slope64(hinge, f64::from(v))) as f32
        };
    }
    Ok((sum * w) as f32)
}
