//! Scalar twins of [`crate::multi_similarity`]: every similarity, exponential, sum and
//! gradient element in `f64`.

use crate::distance::Metric;
use crate::error::Error;
use crate::matrix::Matrix;
use crate::mining::Pair;
use crate::multi_similarity::{check_ms_all, check_ms_pairs, MultiSimilarityParams};
use crate::scalar::acc::{check_twin_workspace, Acc64};
use crate::scalar::distance::pair_grad64;
use crate::scalar::threshold::sim64;

/// Workspace elements that the twins [`multi_similarity_loss`] and
/// [`multi_similarity_loss_grad`] need: `rows * dim`, the low halves of the gradient's
/// `f64` accumulators. The loss alone checks the same length. Saturates.
pub const fn multi_similarity_loss_workspace_len(rows: usize, dim: usize) -> usize {
    rows.saturating_mul(dim)
}

/// Workspace elements that the twins [`multi_similarity_loss_pairs`] and
/// [`multi_similarity_loss_pairs_grad`] need: `rows * dim`, as
/// [`multi_similarity_loss_workspace_len`] (`pairs` is not used). Saturates.
pub const fn multi_similarity_loss_pairs_workspace_len(
    rows: usize,
    dim: usize,
    pairs: usize,
) -> usize {
    let _ = pairs;
    rows.saturating_mul(dim)
}

/// Where the pairs of an anchor come from: every other row of the batch by label, or the
/// given lists (a pair `(a, j)` of `positives` or `negatives` whose anchor is `a`).
#[derive(Clone, Copy)]
enum Source<'p> {
    All(&'p [u32]),
    Listed(&'p [Pair], &'p [Pair]),
}

impl<'p> Source<'p> {
    /// The other rows of anchor `a`'s positive (or negative) pairs, in order. Plain
    /// iterators, no dynamic calls: the twins stay provably panic-free.
    fn others(self, a: usize, positive: bool) -> impl Iterator<Item = usize> + 'p {
        let (labels, list): (&'p [u32], &'p [Pair]) = match self {
            Source::All(labels) => (labels, &[]),
            Source::Listed(p, n) => (&[], if positive { p } else { n }),
        };
        let la = labels.get(a).copied();
        let by_label = labels
            .iter()
            .enumerate()
            .filter(move |&(j, &l)| match la {
                Some(la) if positive => l == la && j != a,
                Some(la) => l != la,
                None => false,
            })
            .map(|(j, _)| j);
        let by_list = list
            .iter()
            .filter(move |p| p.anchor as usize == a)
            .map(|p| p.other as usize);
        by_label.chain(by_list)
    }
}

/// The loss (and the gradient into `acc`) over the pairs of `src`: for every anchor and
/// part, `(1/scale) ln(1 + sum_k e^{sign scale (s_k - base)})` (shifted by its largest
/// exponent, at least 0), and each term's `dL / ds_k` applied through the pair gradient.
fn ms64(
    x: &Matrix<'_>,
    params: &MultiSimilarityParams,
    src: Source<'_>,
    mut acc: Option<&mut Acc64<'_>>,
) -> f64 {
    let n = x.rows();
    let (alpha, beta, base) = (
        f64::from(params.alpha),
        f64::from(params.beta),
        f64::from(params.base),
    );
    let w = 1.0 / n as f64;
    let mut total = 0.0;
    for a in 0..n {
        for (positive, scale, sign) in [(true, alpha, -1.0), (false, beta, 1.0)] {
            let exponent = |j: usize| sign * scale * (sim64(x, a, j) - base);
            let m = src
                .others(a, positive)
                .map(exponent)
                .fold(0.0_f64, f64::max);
            let mut z = libm::exp(-m);
            for j in src.others(a, positive) {
                z += libm::exp(exponent(j) - m);
            }
            if let Some(acc) = acc.as_deref_mut() {
                for j in src.others(a, positive) {
                    let c = sign * libm::exp(exponent(j) - m) / z;
                    // dL/dd = -w dL/ds, d = 1 - s.
                    if let (Some(ra), Some(rj)) = (x.row(a), x.row(j)) {
                        let d = 1.0 - sim64(x, a, j);
                        pair_grad64(Metric::Cosine, (a, ra), (j, rj), d, 0.0, -w * c, acc);
                    }
                }
            }
            total += (m + libm::log(z)) / scale;
        }
    }
    total * w
}

fn ordered_pairs(labels: &[u32]) -> (usize, usize) {
    let b = crate::mining::pairs::pair_bounds(labels);
    (b.positives, b.negatives)
}

/// Scalar twin of [`crate::multi_similarity_loss`]: every pair in `f64`.
///
/// `workspace` needs [`multi_similarity_loss_workspace_len`]`(rows, dim)` elements
/// (checked, not used).
///
/// # Errors
///
/// Those of [`crate::multi_similarity_loss`], in the same order;
/// [`Error::WorkspaceTooSmall`] reports the twin's requirement.
///
/// # Example
///
/// ```
/// use triplet_kernels::{scalar, Matrix, MultiSimilarityParams};
/// let x = Matrix::new(&[1.0, 0.0, 1.0, 0.1, 0.0, 1.0, 0.1, 1.0], 4, 2)?;
/// let mut ws = [0.0_f32; scalar::multi_similarity_loss_workspace_len(4, 2)];
/// let p = MultiSimilarityParams::pytorch_metric_learning();
/// let loss = scalar::multi_similarity_loss(x, &[0, 0, 1, 1], p, &mut ws)?;
/// assert!((loss - 0.15797).abs() < 1e-4);
/// # Ok::<(), triplet_kernels::Error>(())
/// ```
#[cfg_attr(feature = "no-panic", no_panic::no_panic)]
pub fn multi_similarity_loss(
    x: Matrix<'_>,
    labels: &[u32],
    params: MultiSimilarityParams,
    workspace: &mut [f32],
) -> Result<f32, Error> {
    check_twin_workspace(
        multi_similarity_loss_workspace_len(x.rows(), x.dim()),
        workspace.len(),
        |ws| check_ms_all(&x, labels, &params, None, ws),
    )?;
    let (p, q) = ordered_pairs(labels);
    if p <= 1 && q <= 1 {
        return Ok(0.0);
    }
    Ok(ms64(&x, &params, Source::All(labels), None) as f32)
}

/// Scalar twin of [`crate::multi_similarity_loss_grad`]: every pair and every gradient
/// element in `f64`, rounded to `f32` once.
///
/// `workspace` needs [`multi_similarity_loss_workspace_len`]`(rows, dim)` elements,
/// garbage before and after.
///
/// # Errors
///
/// Those of [`crate::multi_similarity_loss_grad`], in the same order;
/// [`Error::WorkspaceTooSmall`] reports the twin's requirement.
///
/// # Example
///
/// ```
/// use triplet_kernels::{scalar, Matrix, MultiSimilarityParams};
/// let x = Matrix::new(&[1.0, 0.0, 1.0, 0.5, 0.5, 1.0, 0.1, 1.0], 4, 2)?;
/// let mut grad = [0.0_f32; 8];
/// let mut ws = [0.0_f32; scalar::multi_similarity_loss_workspace_len(4, 2)];
/// let p = MultiSimilarityParams::pytorch_metric_learning();
/// let loss = scalar::multi_similarity_loss_grad(x, &[0, 0, 1, 1], p, &mut grad, &mut ws)?;
/// assert!(loss > 0.0 && grad[3] > 0.0);
/// # Ok::<(), triplet_kernels::Error>(())
/// ```
#[cfg_attr(feature = "no-panic", no_panic::no_panic)]
pub fn multi_similarity_loss_grad(
    x: Matrix<'_>,
    labels: &[u32],
    params: MultiSimilarityParams,
    grad: &mut [f32],
    workspace: &mut [f32],
) -> Result<f32, Error> {
    check_twin_workspace(
        multi_similarity_loss_workspace_len(x.rows(), x.dim()),
        workspace.len(),
        |ws| check_ms_all(&x, labels, &params, Some(grad.len()), ws),
    )?;
    let (mut acc, _) = Acc64::new(grad, workspace)?;
    let (p, q) = ordered_pairs(labels);
    let loss = if p <= 1 && q <= 1 {
        0.0
    } else {
        ms64(&x, &params, Source::All(labels), Some(&mut acc))
    };
    acc.finish();
    Ok(loss as f32)
}

/// Scalar twin of [`crate::multi_similarity_loss_pairs`]: every pair in `f64`.
///
/// `workspace` needs [`multi_similarity_loss_pairs_workspace_len`]`(rows, dim, pairs)`
/// elements (checked, not used).
///
/// # Errors
///
/// Those of [`crate::multi_similarity_loss_pairs`], in the same order;
/// [`Error::WorkspaceTooSmall`] reports the twin's requirement.
///
/// # Example
///
/// ```
/// use triplet_kernels::{scalar, Matrix, MultiSimilarityParams, Pair};
/// let x = Matrix::new(&[1.0, 0.0, 1.0, 0.5, 0.5, 1.0], 3, 2)?;
/// let pos = [Pair::new(0, 1), Pair::new(1, 0)];
/// let neg = [Pair::new(0, 2), Pair::new(1, 2)];
/// let mut ws = [0.0_f32; scalar::multi_similarity_loss_pairs_workspace_len(3, 2, 4)];
/// let p = MultiSimilarityParams::pytorch_metric_learning();
/// assert!(scalar::multi_similarity_loss_pairs(x, &pos, &neg, p, &mut ws)? > 0.0);
/// # Ok::<(), triplet_kernels::Error>(())
/// ```
#[cfg_attr(feature = "no-panic", no_panic::no_panic)]
pub fn multi_similarity_loss_pairs(
    x: Matrix<'_>,
    positives: &[Pair],
    negatives: &[Pair],
    params: MultiSimilarityParams,
    workspace: &mut [f32],
) -> Result<f32, Error> {
    let k = positives.len().saturating_add(negatives.len());
    check_twin_workspace(
        multi_similarity_loss_pairs_workspace_len(x.rows(), x.dim(), k),
        workspace.len(),
        |ws| check_ms_pairs(&x, positives, negatives, &params, None, ws),
    )?;
    if positives.len() <= 1 && negatives.len() <= 1 {
        return Ok(0.0);
    }
    Ok(ms64(&x, &params, Source::Listed(positives, negatives), None) as f32)
}

/// Scalar twin of [`crate::multi_similarity_loss_pairs_grad`]: every pair and every
/// gradient element in `f64`, rounded to `f32` once.
///
/// `workspace` needs [`multi_similarity_loss_pairs_workspace_len`]`(rows, dim, pairs)`
/// elements, garbage before and after.
///
/// # Errors
///
/// Those of [`crate::multi_similarity_loss_pairs_grad`], in the same order;
/// [`Error::WorkspaceTooSmall`] reports the twin's requirement.
///
/// # Example
///
/// ```
/// use triplet_kernels::{scalar, Matrix, MultiSimilarityParams, Pair};
/// let x = Matrix::new(&[1.0, 0.0, 1.0, 0.5, 0.5, 1.0], 3, 2)?;
/// let pos = [Pair::new(0, 1), Pair::new(1, 0)];
/// let neg = [Pair::new(0, 2), Pair::new(1, 2)];
/// let mut grad = [0.0_f32; 6];
/// let mut ws = [0.0_f32; scalar::multi_similarity_loss_pairs_workspace_len(3, 2, 4)];
/// let p = MultiSimilarityParams::pytorch_metric_learning();
/// let loss = scalar::multi_similarity_loss_pairs_grad(x, &pos, &neg, p, &mut grad, &mut ws)?;
/// assert!(loss > 0.0 && grad[3] > 0.0);
/// # Ok::<(), triplet_kernels::Error>(())
/// ```
#[cfg_attr(feature = "no-panic", no_panic::no_panic)]
pub fn multi_similarity_loss_pairs_grad(
    x: Matrix<'_>,
    positives: &[Pair],
    negatives: &[Pair],
    params: MultiSimilarityParams,
    grad: &mut [f32],
    workspace: &mut [f32],
) -> Result<f32, Error> {
    let k = positives.len().saturating_add(negatives.len());
    check_twin_workspace(
        multi_similarity_loss_pairs_workspace_len(x.rows(), x.dim(), k),
        workspace.len(),
        |ws| check_ms_pairs(&x, positives, negatives, &params, Some(grad.len()), ws),
    )?;
    let (mut acc, _) = Acc64::new(grad, workspace)?;
    let loss = if positives.len() <= 1 && negatives.len() <= 1 {
        0.0
    } else {
        ms64(
            &x,
            &params,
            Source::Listed(positives, negatives),
            Some(&mut acc),
        )
    };
    acc.finish();
    Ok(loss as f32)
}
