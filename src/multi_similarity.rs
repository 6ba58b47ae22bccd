//! Multi-similarity loss (Wang et al., CVPR 2019), as pytorch-metric-learning's
//! `MultiSimilarityLoss` computes it, over every pair of a labelled batch or over given
//! (mined) pairs, with its gradient.
//!
//! With `s` the cosine similarity and `P_a`, `N_a` the positives and negatives paired
//! with row `a`:
//!
//! ```text
//! L_a = (1/alpha) ln(1 + sum_{p in P_a} e^{-alpha (s(a,p) - base)})
//!     + (1/beta)  ln(1 + sum_{n in N_a} e^{ beta (s(a,n) - base)})
//! loss = (1/n) sum_a L_a
//! ```
//!
//! An empty sum gives a zero term, and every row of the batch counts in the mean
//! (pytorch-metric-learning's `MeanReducer`), with or without a pair. pytorch-metric-
//! learning's rule is kept: when the pairs hold at most one positive pair and at most one
//! negative pair, the loss is 0 with a zero gradient.
//!
//! [`multi_similarity_loss`] takes every ordered pair of the batch (positive: same label,
//! `j != a`; negative: another label); [`multi_similarity_loss_pairs`] takes the pairs a
//! miner kept, such as [`crate::multi_similarity_mine`]'s (pytorch-metric-learning's
//! `MultiSimilarityLoss` with a `MultiSimilarityMiner`); the selection is not
//! differentiated.

use crate::distance::{
    clamped_row_norms, distance, gemm_acc, l2_normalize_backward_on, l2_normalize_on,
    pair_grad_rows, pairwise_distances_rows_on, pairwise_distances_rows_workspace_len, symmetrise,
    DistanceMode, Metric, GEMM_MR,
};
use crate::error::Error;
use crate::math;
use crate::matrix::Matrix;
use crate::mining::{block_rows, rows_len, Pair};
use crate::simd::{Backend, Kernel, Simd};
use crate::validate::{check_labels, check_len, check_rows, check_workspace};
use crate::workspace::Carve;

/// Parameters of the multi-similarity loss.
#[derive(Clone, Copy, Debug, PartialEq)]
#[non_exhaustive]
pub struct MultiSimilarityParams {
    /// Scale of the positive terms, `> 0`.
    pub alpha: f32,
    /// Scale of the negative terms, `> 0`.
    pub beta: f32,
    /// The similarity margin `base` (the paper's lambda).
    pub base: f32,
}

impl MultiSimilarityParams {
    /// The loss with these scales and base.
    pub const fn new(alpha: f32, beta: f32, base: f32) -> Self {
        MultiSimilarityParams { alpha, beta, base }
    }

    /// pytorch-metric-learning's `MultiSimilarityLoss()` defaults: `alpha = 2`,
    /// `beta = 50`, `base = 0.5`.
    pub const fn pytorch_metric_learning() -> Self {
        Self::new(2.0, 50.0, 0.5)
    }

    /// The same parameters with another `alpha`.
    #[must_use]
    pub const fn with_alpha(self, alpha: f32) -> Self {
        MultiSimilarityParams { alpha, ..self }
    }

    /// The same parameters with another `beta`.
    #[must_use]
    pub const fn with_beta(self, beta: f32) -> Self {
        MultiSimilarityParams { beta, ..self }
    }

    /// The same parameters with another `base`.
    #[must_use]
    pub const fn with_base(self, base: f32) -> Self {
        MultiSimilarityParams { base, ..self }
    }

    pub(crate) fn validate(&self) -> Result<(), Error> {
        let scale = |v: f32| v.is_finite() && v > 0.0 && v <= 1e4;
        if !scale(self.alpha) {
            return Err(Error::InvalidParameter {
                name: "alpha",
                expected: "finite, in (0, 1e4]",
            });
        }
        if !scale(self.beta) {
            return Err(Error::InvalidParameter {
                name: "beta",
                expected: "finite, in (0, 1e4]",
            });
        }
        if !(self.base.is_finite() && self.base.abs() <= 1e4) {
            return Err(Error::InvalidParameter {
                name: "base",
                expected: "finite, |base| <= 1e4",
            });
        }
        Ok(())
    }
}

impl Default for MultiSimilarityParams {
    /// [`MultiSimilarityParams::pytorch_metric_learning`].
    fn default() -> Self {
        Self::pytorch_metric_learning()
    }
}

/// Batches of up to this many rows hold their whole similarity matrix (4 MiB at most):
/// one Gram product that uses the symmetry and one coefficient product, where blocks of
/// rows need a third product for the columns outside each block.
const WHOLE: usize = 1024;

/// Rows of each block of similarity rows: all of them up to [`WHOLE`], else the mining
/// kernels' blocks.
const fn ms_block_rows(rows: usize) -> usize {
    if rows <= WHOLE {
        rows
    } else {
        block_rows(rows)
    }
}

/// Workspace elements that [`multi_similarity_loss`] and [`multi_similarity_loss_grad`]
/// need for `rows` embeddings of dimension `dim`: the normalised rows (`rows * dim`), one
/// row of `dim`, `(3 + 4) rows` per-row values (the GEMM's packed coefficients and
/// slack), one block of similarity rows and its packing. Up to 1024 rows the block is
/// the whole `rows x rows` matrix (at most 4 MiB); above, blocks of 256 rows, no
/// `rows x rows` matrix. Saturates instead of overflowing.
pub const fn multi_similarity_loss_workspace_len(rows: usize, dim: usize) -> usize {
    let own = rows.saturating_mul(dim).saturating_add(dim);
    if rows <= WHOLE {
        own.saturating_add(rows.saturating_mul(3 + GEMM_MR))
            .saturating_add(rows.saturating_mul(rows))
            .saturating_add(pairwise_distances_rows_workspace_len(rows, rows, dim))
    } else {
        own.saturating_add(rows_len(rows, dim, GEMM_MR))
    }
}

/// Workspace elements that [`multi_similarity_loss_pairs`] and
/// [`multi_similarity_loss_pairs_grad`] need for `rows` embeddings of dimension `dim` and
/// `pairs` positive and negative pairs in all: `5 rows` per-row values (norms, the two
/// parts' shifts and sums) and one similarity per pair. Saturates instead of overflowing.
pub const fn multi_similarity_loss_pairs_workspace_len(
    rows: usize,
    dim: usize,
    pairs: usize,
) -> usize {
    let _ = dim;
    rows.saturating_mul(5).saturating_add(pairs)
}

/// pytorch-metric-learning's rule: at most one positive and one negative pair give 0.
fn degenerate(positives: usize, negatives: usize) -> bool {
    positives <= 1 && negatives <= 1
}

// ---------------------------------------------------------------------------------------
// Every pair of the batch: blocks of similarity rows, coefficients, GEMM.

/// One block of anchor rows: turns their cosine distances into the loss terms and, with
/// the gradient, into the coefficients `dL / ds(a, j)`, then applies them to the gradient
/// with respect to the normalised rows.
struct MsBlock<'a, 'o> {
    block: &'o mut [f32],
    i0: usize,
    labels: &'a [u32],
    params: MultiSimilarityParams,
    /// `1 / n`, the weight of each row's term.
    w: f32,
    grad: Option<MsGrad<'a, 'o>>,
}

struct MsGrad<'a, 'o> {
    /// The normalised rows.
    y: &'a [f32],
    dim: usize,
    /// The gradient with respect to `y`, accumulated.
    gy: &'o mut [f32],
    cpack: &'o mut [f32],
}

/// Lanes of the fixed-size chunks the row loops walk in (each lane a partial sum).
const CHUNK: usize = 16;

#[inline(always)]
fn sum_chunk(v: &[f32; CHUNK]) -> f32 {
    let mut h = *v;
    let mut half = CHUNK / 2;
    while half > 0 {
        for l in 0..half {
            if let (Some(&hi), Some(lo)) = (h.get(l + half), h.get(l)) {
                h[l] = lo + hi;
            }
        }
        half /= 2;
    }
    h[0]
}

/// Turns a cosine distance into the similarity in place and folds it into the lane's
/// smallest positive (`same` label, not the anchor itself) or largest negative.
#[inline(always)]
fn extremes(v: &mut f32, same: bool, other: bool, lo: &mut f32, hi: &mut f32) {
    let sim = 1.0 - *v;
    *v = sim;
    let pos = if same && other { sim } else { f32::INFINITY };
    let neg = if same { f32::NEG_INFINITY } else { sim };
    *lo = lo.min(pos);
    *hi = hi.max(neg);
}

/// The shifted exponentials of one anchor row.
#[derive(Clone, Copy)]
struct Terms {
    alpha: f32,
    beta: f32,
    base: f32,
    /// The positive part's shift.
    mp: f32,
    /// The negative part's shift.
    mn: f32,
}

impl Terms {
    /// `e^{-alpha (s - base) - mp}` for a positive, `e^{beta (s - base) - mn}` for a
    /// negative, 0 for the anchor itself (`other` false).
    #[inline(always)]
    fn exp(self, sim: f32, same: bool, other: bool) -> f32 {
        let arg = if same {
            -self.alpha * (sim - self.base) - self.mp
        } else {
            self.beta * (sim - self.base) - self.mn
        };
        let e = math::exp_poly(arg);
        if other {
            e
        } else {
            0.0
        }
    }
}

impl Kernel for MsBlock<'_, '_> {
    type Output = f64;
    #[inline(always)]
    fn run<S: Simd, const MR: usize, const NV: usize>(self, s: S) -> f64 {
        let MsBlock {
            block,
            i0,
            labels,
            params,
            w,
            grad,
        } = self;
        let n = labels.len();
        if n == 0 {
            return 0.0;
        }
        let (alpha, beta, base) = (params.alpha, params.beta, params.base);
        let mut total = 0.0_f64;
        for (r, row) in block.chunks_exact_mut(n).enumerate() {
            let a = i0 + r;
            let Some(&la) = labels.get(a) else {
                break;
            };
            // Similarities, the smallest positive and the largest negative, lane-wise
            // over fixed chunks (branch-free selects that vectorise).
            let (mut lo, mut hi) = ([f32::INFINITY; CHUNK], [f32::NEG_INFINITY; CHUNK]);
            let (body, tail) = row.as_chunks_mut::<CHUNK>();
            let (lbody, ltail) = labels.as_chunks::<CHUNK>();
            for (c, (chunk, lab)) in body.iter_mut().zip(lbody).enumerate() {
                let j0 = c * CHUNK;
                for t in 0..CHUNK {
                    extremes(
                        &mut chunk[t],
                        lab[t] == la,
                        j0 + t != a,
                        &mut lo[t],
                        &mut hi[t],
                    );
                }
            }
            let j0 = body.len() * CHUNK;
            for (t, ((v, &l), (p, q))) in tail
                .iter_mut()
                .zip(ltail)
                .zip(lo.iter_mut().zip(hi.iter_mut()))
                .enumerate()
            {
                extremes(v, l == la, j0 + t != a, p, q);
            }
            let min_pos = lo
                .iter()
                .fold(f32::INFINITY, |m, &v| if v < m { v } else { m });
            let max_neg = hi
                .iter()
                .fold(f32::NEG_INFINITY, |m, &v| if v > m { v } else { m });
            // Shifts: each part's largest exponent, at least 0 (the "1 +").
            let mp = (-alpha * (min_pos - base)).max(0.0);
            let mn = (beta * (max_neg - base)).max(0.0);
            let (mut sp, mut sn) = ([0.0_f32; CHUNK], [0.0_f32; CHUNK]);
            let terms = Terms {
                alpha,
                beta,
                base,
                mp,
                mn,
            };
            let (body, tail) = row.as_chunks_mut::<CHUNK>();
            for (c, (chunk, lab)) in body.iter_mut().zip(lbody).enumerate() {
                let j0 = c * CHUNK;
                for t in 0..CHUNK {
                    let same = lab[t] == la;
                    let e = terms.exp(chunk[t], same, j0 + t != a);
                    chunk[t] = e;
                    sp[t] += if same { e } else { 0.0 };
                    sn[t] += if same { 0.0 } else { e };
                }
            }
            let j0 = body.len() * CHUNK;
            for (t, ((v, &l), (p, q))) in tail
                .iter_mut()
                .zip(ltail)
                .zip(sp.iter_mut().zip(sn.iter_mut()))
                .enumerate()
            {
                // The remainder lanes, scalar anyway: the shared polynomial (same values).
                let same = l == la;
                let e = terms.exp(*v, same, j0 + t != a);
                *v = e;
                *p += if same { e } else { 0.0 };
                *q += if same { 0.0 } else { e };
            }
            let zp = math::exp(-mp) + sum_chunk(&sp);
            let zn = math::exp(-mn) + sum_chunk(&sn);
            total += f64::from(mp + math::ln(zp)) / f64::from(alpha)
                + f64::from(mn + math::ln(zn)) / f64::from(beta);
            if grad.is_some() {
                let (cp, cn) = (-w / zp, w / zn);
                for (v, &l) in row.iter_mut().zip(labels) {
                    *v *= if l == la { cp } else { cn };
                }
            }
        }
        let Some(g) = grad else {
            return total;
        };
        let d = g.dim;
        let rows = block.len() / n;
        let i1 = i0 + rows;
        // The block's own columns: both coefficients of a pair summed, applied once.
        symmetrise(s, block, n, i0, rows);
        let block = &*block;
        let (Some(yb), Some((head, rest))) =
            (g.y.get(i0 * d..i1 * d), g.gy.split_at_mut_checked(i0 * d))
        else {
            return total;
        };
        let Some((ga, tail)) = rest.split_at_mut_checked(rows * d) else {
            return total;
        };
        // Anchor side: gy[a] += sum_j C[a][j] y_j.
        gemm_acc(s, block, n, 1, g.y, d, ga, g.cpack);
        // Column side, outside the block: gy[j] += sum_a C[a][j] y_a.
        gemm_acc(s, block, 1, n, yb, d, head, g.cpack);
        gemm_acc(
            s,
            block.get(i1..).unwrap_or(&[]),
            1,
            n,
            yb,
            d,
            tail,
            g.cpack,
        );
        total
    }
}

/// The checks of the multi-similarity kernels over every pair, shared with the twins.
pub(crate) fn check_ms_all(
    x: &Matrix<'_>,
    labels: &[u32],
    params: &MultiSimilarityParams,
    grad: Option<usize>,
    workspace: usize,
) -> Result<usize, Error> {
    let n = check_labels(x, labels)?;
    if let Some(g) = grad {
        check_len("grad", x.len(), g)?;
    }
    check_workspace(multi_similarity_loss_workspace_len(n, x.dim()), workspace)?;
    params.validate()?;
    check_rows(x, true)?;
    Ok(n)
}

fn all_impl(
    x: Matrix<'_>,
    labels: &[u32],
    params: MultiSimilarityParams,
    mut grad: Option<&mut [f32]>,
    workspace: &mut [f32],
) -> Result<f32, Error> {
    let n = check_ms_all(
        &x,
        labels,
        &params,
        grad.as_deref().map(<[f32]>::len),
        workspace.len(),
    )?;
    if let Some(g) = grad.as_deref_mut() {
        g.fill(0.0);
    }
    // Every ordered pair: the positive pairs come two by two and two rows of different
    // labels give two negative pairs, so only a single row has at most one of each.
    if n <= 1 {
        return Ok(0.0);
    }
    let dim = x.dim();
    let backend = Backend::active();
    let mut ws = Carve::new(workspace);
    let y = ws.take(x.len())?;
    l2_normalize_on(backend, x, y)?;
    let y = &*y;
    let ym = Matrix::new(y, n, dim)?;
    let tmp = ws.take(dim)?;
    let cpack = ws.take(GEMM_MR * n)?;
    let b = ms_block_rows(n).max(1);
    let block = ws.take(b.saturating_mul(n))?;
    let pack = ws.rest();
    let w = 1.0 / n as f32;
    let mut total = 0.0_f64;
    let mut i0 = 0;
    while i0 < n {
        let i1 = n.min(i0.saturating_add(b));
        let Some(blk) = block.get_mut(..(i1 - i0) * n) else {
            break;
        };
        let mode = DistanceMode::Gram;
        pairwise_distances_rows_on(backend, ym, i0..i1, Metric::Cosine, mode, blk, pack)?;
        total += backend.dispatch(MsBlock {
            block: blk,
            i0,
            labels,
            params,
            w,
            grad: grad.as_deref_mut().map(|gy| MsGrad {
                y,
                dim,
                gy,
                cpack: &mut *cpack,
            }),
        });
        i0 = i1;
    }
    if let Some(g) = grad {
        for (i, row) in x.row_iter().enumerate() {
            let Some(gr) = g.get_mut(i * dim..(i + 1) * dim) else {
                break;
            };
            for (t, &v) in tmp.iter_mut().zip(gr.iter()) {
                *t = v;
            }
            l2_normalize_backward_on(backend, Matrix::new(row, 1, dim)?, tmp, gr)?;
        }
    }
    Ok((total / n as f64) as f32)
}

/// Multi-similarity loss over every ordered pair of the labelled batch `x` (see the
/// [module docs](self) for the formula): positive pairs `(a, p)`, `p != a`, same label;
/// negative pairs `(a, n)`, another label. Scalar twin:
/// [`crate::scalar::multi_similarity_loss`]; with the gradient:
/// [`multi_similarity_loss_grad`].
///
/// The rows are L2-normalised first (a zero row has similarity 0 to every row). Up to
/// 1024 rows the whole similarity matrix is computed at once (one Gram product that
/// uses its symmetry, at most 4 MiB); above, the similarity rows are computed in blocks
/// of 256 anchors, no `n x n` matrix. A batch with at most one positive and at most one
/// negative ordered pair (a single row) has loss 0. `workspace` needs
/// [`multi_similarity_loss_workspace_len`]`(rows, dim)` elements, garbage before and
/// after.
///
/// # Errors
///
/// In this order:
/// - [`Error::LengthMismatch`] (`"labels"`) when `labels.len() != rows`;
/// - [`Error::WorkspaceTooSmall`] when the workspace is too short;
/// - [`Error::InvalidParameter`] (`"alpha"`, `"beta"`: finite, in `(0, 1e4]`; `"base"`:
///   finite, `|base| <= 1e4`);
/// - [`Error::NonFinite`] (`"x"`, row and column) when `x` holds a NaN or an infinity.
///
/// # Numerics
///
/// Similarities have absolute error about `(2 d + 10) 2^-24`; each part's log-sum-exp is
/// shifted by its largest exponent (no overflow for any parameters), its terms are
/// computed with a polynomial `e^x` (relative error about `2^-22`; terms below `e^-87`
/// relative to the largest count as `e^-87`) and summed in `f32` (error about
/// `n 2^-24` relative). Against the `f64` twin the loss agrees to about
/// `(beta + alpha) (2 d + 10) 2^-24 + n 2^-23` relative.
///
/// # Example
///
/// ```
/// use triplet_kernels::{multi_similarity_loss, multi_similarity_loss_workspace_len};
/// use triplet_kernels::{Matrix, MultiSimilarityParams};
/// let x = Matrix::new(&[1.0, 0.0, 1.0, 0.1, 0.0, 1.0, 0.1, 1.0], 4, 2)?;
/// let labels = [0, 0, 1, 1];
/// let mut ws = vec![0.0_f32; multi_similarity_loss_workspace_len(4, 2)];
/// let p = MultiSimilarityParams::pytorch_metric_learning();
/// let loss = multi_similarity_loss(x, &labels, p, &mut ws)?;
/// // (1/4) sum_a L_a, by the formula above in f64: 0.15797.
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
    all_impl(x, labels, params, None, workspace)
}

/// [`multi_similarity_loss`] and its gradient: returns the loss and writes
/// `grad = d loss / d x` (`rows * dim` elements, every one overwritten). Scalar twin:
/// [`crate::scalar::multi_similarity_loss_grad`].
///
/// The coefficients `dL / ds(a, j)` are summed with those of the transposed pairs and
/// applied as one matrix product with the normalised rows (for blocks of rows, a second
/// product for the columns outside the block), then chained through the normalisation
/// ([`crate::l2_normalize_backward`]).
///
/// # Errors
///
/// As [`multi_similarity_loss`], with [`Error::LengthMismatch`] (`"grad"`) when
/// `grad.len() != rows * dim`, checked right after the labels.
///
/// # Numerics
///
/// As [`multi_similarity_loss`]; each gradient element sums `2 n` products in `f32`.
///
/// # Example
///
/// ```
/// use triplet_kernels::{multi_similarity_loss_grad, multi_similarity_loss_workspace_len};
/// use triplet_kernels::{Matrix, MultiSimilarityParams};
/// let x = Matrix::new(&[1.0, 0.0, 1.0, 0.5, 0.5, 1.0, 0.1, 1.0], 4, 2)?;
/// let mut grad = [0.0_f32; 8];
/// let mut ws = vec![0.0_f32; multi_similarity_loss_workspace_len(4, 2)];
/// let p = MultiSimilarityParams::pytorch_metric_learning();
/// let loss = multi_similarity_loss_grad(x, &[0, 0, 1, 1], p, &mut grad, &mut ws)?;
/// assert!(loss > 0.0);
/// // Row 1 is pulled toward row 0 (down in its second coordinate).
/// assert!(grad[3] > 0.0);
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
    all_impl(x, labels, params, Some(grad), workspace)
}

// ---------------------------------------------------------------------------------------
// Given pairs.

/// `Err(IndexOutOfRange)` at the first pair with an index `>= n`.
pub(crate) fn check_pair_indices(
    buffer: &'static str,
    pairs: &[Pair],
    n: usize,
) -> Result<(), Error> {
    for (position, p) in pairs.iter().enumerate() {
        for v in [p.anchor, p.other] {
            if v as usize >= n {
                return Err(Error::IndexOutOfRange {
                    buffer,
                    position,
                    index: v as usize,
                    bound: n,
                });
            }
        }
    }
    Ok(())
}

/// The checks of the multi-similarity kernels over given pairs, shared with the twins.
pub(crate) fn check_ms_pairs(
    x: &Matrix<'_>,
    positives: &[Pair],
    negatives: &[Pair],
    params: &MultiSimilarityParams,
    grad: Option<usize>,
    workspace: usize,
) -> Result<usize, Error> {
    let n = x.rows();
    check_pair_indices("positives", positives, n)?;
    check_pair_indices("negatives", negatives, n)?;
    if let Some(g) = grad {
        check_len("grad", x.len(), g)?;
    }
    let pairs = positives.len().saturating_add(negatives.len());
    check_workspace(
        multi_similarity_loss_pairs_workspace_len(n, x.dim(), pairs),
        workspace,
    )?;
    params.validate()?;
    check_rows(x, false)?;
    Ok(n)
}

fn pairs_impl(
    x: Matrix<'_>,
    positives: &[Pair],
    negatives: &[Pair],
    params: MultiSimilarityParams,
    mut grad: Option<&mut [f32]>,
    workspace: &mut [f32],
) -> Result<f32, Error> {
    let n = check_ms_pairs(
        &x,
        positives,
        negatives,
        &params,
        grad.as_deref().map(<[f32]>::len),
        workspace.len(),
    )?;
    if let Some(g) = grad.as_deref_mut() {
        g.fill(0.0);
    }
    if degenerate(positives.len(), negatives.len()) {
        return Ok(0.0);
    }
    let backend = Backend::active();
    let mut ws = Carve::new(workspace);
    let norms = ws.take(n)?;
    clamped_row_norms(backend, &x, norms);
    let norms = &*norms;
    let mp = ws.take(n)?;
    let zp = ws.take(n)?;
    let mn = ws.take(n)?;
    let zn = ws.take(n)?;
    let sims = ws.take(positives.len() + negatives.len())?;
    let Some((sp, sn)) = sims.split_at_mut_checked(positives.len()) else {
        return Ok(0.0);
    };
    let (alpha, beta, base) = (params.alpha, params.beta, params.base);
    let sim = |p: &Pair| {
        let (a, j) = (p.anchor as usize, p.other as usize);
        match (x.row(a), x.row(j), norms.get(a), norms.get(j)) {
            (Some(ra), Some(rj), Some(&na), Some(&nj)) => {
                1.0 - distance(backend, Metric::Cosine, ra, rj, na, nj)
            }
            _ => 0.0,
        }
    };
    mp.fill(0.0);
    mn.fill(0.0);
    for (s, p) in sp.iter_mut().zip(positives) {
        *s = sim(p);
        if let Some(m) = mp.get_mut(p.anchor as usize) {
            *m = m.max(-alpha * (*s - base));
        }
    }
    for (s, p) in sn.iter_mut().zip(negatives) {
        *s = sim(p);
        if let Some(m) = mn.get_mut(p.anchor as usize) {
            *m = m.max(beta * (*s - base));
        }
    }
    for (z, &m) in zp.iter_mut().zip(mp.iter()) {
        *z = math::exp(-m);
    }
    for (z, &m) in zn.iter_mut().zip(mn.iter()) {
        *z = math::exp(-m);
    }
    let ep = |s: f32, a: usize| math::exp(-alpha * (s - base) - mp.get(a).copied().unwrap_or(0.0));
    let en = |s: f32, a: usize| math::exp(beta * (s - base) - mn.get(a).copied().unwrap_or(0.0));
    for (&s, p) in sp.iter().zip(positives) {
        let a = p.anchor as usize;
        let e = ep(s, a);
        if let Some(z) = zp.get_mut(a) {
            *z += e;
        }
    }
    for (&s, p) in sn.iter().zip(negatives) {
        let a = p.anchor as usize;
        let e = en(s, a);
        if let Some(z) = zn.get_mut(a) {
            *z += e;
        }
    }
    let mut total = 0.0_f64;
    for (((&mpa, &zpa), &mna), &zna) in mp.iter().zip(zp.iter()).zip(mn.iter()).zip(zn.iter()) {
        total += f64::from(mpa + math::ln(zpa)) / f64::from(alpha)
            + f64::from(mna + math::ln(zna)) / f64::from(beta);
    }
    if let Some(g) = grad {
        let w = 1.0 / n as f32;
        let norm = |i: usize| norms.get(i).copied().unwrap_or(1.0);
        for (part, (ss, pairs)) in [(sp, positives), (sn, negatives)].into_iter().enumerate() {
            for (&s, p) in ss.iter().zip(pairs) {
                let (a, j) = (p.anchor as usize, p.other as usize);
                // dL/ds, then dL/dd = -dL/ds (d = 1 - s).
                let c = if part == 0 {
                    -w * ep(s, a) / zp.get(a).copied().unwrap_or(1.0)
                } else {
                    w * en(s, a) / zn.get(a).copied().unwrap_or(1.0)
                };
                let (na, nj) = (norm(a), norm(j));
                pair_grad_rows(
                    backend,
                    Metric::Cosine,
                    &x,
                    (a, j),
                    1.0 - s,
                    (na, nj),
                    0.0,
                    -c,
                    g,
                );
            }
        }
    }
    Ok((total / n as f64) as f32)
}

/// Multi-similarity loss over the given pairs (see the [module docs](self)): `positives`
/// and `negatives` are `(anchor, other)` pairs, for example those
/// [`crate::multi_similarity_mine`] keeps; `P_a` and `N_a` are the pairs whose anchor is
/// `a`. Their roles are as given (no label is read) and a pair may appear more than once.
/// The loss is the mean of `L_a` over all rows of `x`. At most one positive and at most
/// one negative pair give 0. Scalar twin: [`crate::scalar::multi_similarity_loss_pairs`];
/// with the gradient: [`multi_similarity_loss_pairs_grad`].
///
/// Each pair's similarity is computed directly (one dot product). `workspace` needs
/// [`multi_similarity_loss_pairs_workspace_len`]`(rows, dim, positives.len() +
/// negatives.len())` elements, garbage before and after.
///
/// # Errors
///
/// In this order:
/// - [`Error::IndexOutOfRange`] (`"positives"`, `"negatives"`: the position of the first
///   pair holding an index `>= rows`);
/// - [`Error::WorkspaceTooSmall`] when the workspace is too short;
/// - [`Error::InvalidParameter`] (`"alpha"`, `"beta"`, `"base"`), as
///   [`multi_similarity_loss`];
/// - [`Error::NonFinite`] (`"x"`, row and column) when `x` holds a NaN or an infinity;
/// - [`Error::TooLarge`] (`"x"`, row and column) when an element of `x` exceeds
///   `2^52 / sqrt(dim)`, where a dot product could overflow `f32`.
///
/// # Numerics
///
/// Similarities computed directly (absolute error about `(d + 4) 2^-24`), each part's
/// log-sum-exp shifted by its largest exponent, terms and sums in `f32` (libm `e^x`): the
/// loss agrees with the `f64` twin to about `(alpha + beta) (d + 4) 2^-24 + k 2^-24`
/// relative, `k` the number of pairs of an anchor.
///
/// # Example
///
/// ```
/// use triplet_kernels::{multi_similarity_loss_pairs, multi_similarity_loss_pairs_workspace_len};
/// use triplet_kernels::{multi_similarity_mine, pair_mine_workspace_len};
/// use triplet_kernels::{Matrix, MultiSimilarityMinerParams, MultiSimilarityParams, Pair};
/// let x = Matrix::new(&[1.0, 0.0, 1.0, 0.5, 0.5, 1.0, 0.1, 1.0], 4, 2)?;
/// let labels = [0, 0, 1, 1];
/// let (mut pos, mut neg) = ([Pair::default(); 4], [Pair::default(); 8]);
/// let mut ws = [0.0_f32; pair_mine_workspace_len(4, 2)];
/// let miner = MultiSimilarityMinerParams::pytorch_metric_learning();
/// let c = multi_similarity_mine(x, &labels, miner, &mut pos, &mut neg, &mut ws)?;
/// let (pos, neg) = (&pos[..c.positives], &neg[..c.negatives]);
/// let mut ws = vec![0.0_f32; multi_similarity_loss_pairs_workspace_len(4, 2, pos.len() + neg.len())];
/// let p = MultiSimilarityParams::pytorch_metric_learning();
/// let loss = multi_similarity_loss_pairs(x, pos, neg, p, &mut ws)?;
/// // Only (1, 0) and (1, 2) pass the epsilon rule: one pair of each kind gives 0
/// // (pytorch-metric-learning's rule).
/// assert_eq!((pos, neg), (&[Pair::new(1, 0)][..], &[Pair::new(1, 2)][..]));
/// assert_eq!(loss, 0.0);
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
    pairs_impl(x, positives, negatives, params, None, workspace)
}

/// [`multi_similarity_loss_pairs`] and its gradient: returns the loss and writes
/// `grad = d loss / d x` (`rows * dim` elements, every one overwritten). Scalar twin:
/// [`crate::scalar::multi_similarity_loss_pairs_grad`].
///
/// # Errors
///
/// As [`multi_similarity_loss_pairs`], with [`Error::LengthMismatch`] (`"grad"`) when
/// `grad.len() != rows * dim`, checked right after the pairs.
///
/// # Numerics
///
/// As [`multi_similarity_loss_pairs`]; each gradient element sums one contribution per
/// pair of its row in `f32`.
///
/// # Example
///
/// ```
/// use triplet_kernels::{multi_similarity_loss_pairs_grad, multi_similarity_loss_pairs_workspace_len};
/// use triplet_kernels::{Matrix, MultiSimilarityParams, Pair};
/// let x = Matrix::new(&[1.0, 0.0, 1.0, 0.5, 0.5, 1.0], 3, 2)?;
/// let pos = [Pair::new(0, 1), Pair::new(1, 0)];
/// let neg = [Pair::new(0, 2), Pair::new(1, 2)];
/// let mut grad = [0.0_f32; 6];
/// let mut ws = [0.0_f32; multi_similarity_loss_pairs_workspace_len(3, 2, 4)];
/// let p = MultiSimilarityParams::pytorch_metric_learning();
/// let loss = multi_similarity_loss_pairs_grad(x, &pos, &neg, p, &mut grad, &mut ws)?;
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
    pairs_impl(x, positives, negatives, params, Some(grad), workspace)
}
