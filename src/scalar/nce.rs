//! Scalar twins of [`crate::nce`].

use crate::error::Error;
use crate::matrix::Matrix;
use crate::nce::{
    check_nce, finish_counts, Counts, Docs, Loss, NceLoss, NtXentParams, SupConParams,
};
use crate::scalar::acc::{check_twin_workspace, Acc64};
use crate::scalar::distance::{clamped_norm64, dot64, normalize_backward64};

/// Workspace elements that the twins of [`crate::ntxent_loss`], [`crate::ntxent_loss_grad`],
/// [`crate::supcon_loss`] and [`crate::supcon_loss_grad`] need: `rows * dim`, the low
/// halves of the `f64` accumulators of `grad` (the loss alone checks the same length).
/// Saturates instead of overflowing.
pub const fn ntxent_loss_workspace_len(rows: usize, dim: usize) -> usize {
    rows.saturating_mul(dim)
}

/// Workspace elements of the SupCon twins: as [`ntxent_loss_workspace_len`].
pub const fn supcon_loss_workspace_len(rows: usize, dim: usize) -> usize {
    ntxent_loss_workspace_len(rows, dim)
}

/// Workspace elements of the twins of [`crate::infonce_loss`] and
/// [`crate::infonce_loss_grad`]: `(rows + docs) * dim`, the low halves of the `f64`
/// accumulators of `grad` and `grad_y`. Saturates instead of overflowing.
pub const fn infonce_loss_workspace_len(rows: usize, docs: usize, dim: usize) -> usize {
    rows.saturating_add(docs).saturating_mul(dim)
}

/// `ln(1 + e^v)` in `f64`, without overflow.
fn softplus64(v: f64) -> f64 {
    if v > 0.0 {
        v + libm::log1p(libm::exp(-v))
    } else {
        libm::log1p(libm::exp(v))
    }
}

/// `1 / (1 + e^-v)` in `f64`, without overflow.
fn sigmoid64(v: f64) -> f64 {
    if v >= 0.0 {
        1.0 / (1.0 + libm::exp(-v))
    } else {
        let e = libm::exp(v);
        e / (1.0 + e)
    }
}

/// The gradient accumulators: the queries', and the documents' in the reference form.
struct Accs<'a> {
    x: Acc64<'a>,
    y: Option<Acc64<'a>>,
}

impl Accs<'_> {
    /// Adds `g d s_ij` for `s_ij` the cosine of query `i` and document `j`.
    #[allow(clippy::too_many_arguments)]
    fn add_pair(&mut self, g: f64, i: usize, xi: &[f32], rx: f64, j: usize, yj: &[f32], ry: f64) {
        let dim = xi.len();
        self.x
            .add_row(i, dim, yj.iter().map(|&v| g * f64::from(v) / ry));
        let side = match self.y.as_mut() {
            Some(y) => y,
            None => &mut self.x,
        };
        side.add_row(j, dim, xi.iter().map(|&u| g * f64::from(u) / rx));
    }
}

/// The `f64` computation shared by the twins: row by row, every similarity recomputed
/// from the rows.
fn nce64(
    x: &Matrix<'_>,
    labels: &[u32],
    docs: Option<&Docs<'_>>,
    loss: Loss,
    mut accs: Option<Accs<'_>>,
) -> NceLoss {
    let (y, ly) = match docs {
        Some(dc) => (dc.y, dc.labels),
        None => (*x, labels),
    };
    let pairwise = docs.is_none();
    let mut total = 0.0_f64;
    let mut counts = Counts::default();
    for (i, (xi, &li)) in x.row_iter().zip(labels).enumerate() {
        let rx = clamped_norm64(xi);
        let other = |j: usize| !(pairwise && j == i);
        let rows = || {
            y.row_iter()
                .zip(ly)
                .enumerate()
                .filter(move |&(j, _)| other(j))
        };
        let z = |yj: &[f32], inv_t: f64| dot64(xi, yj) / (rx * clamped_norm64(yj)) * inv_t;
        let npos = rows().filter(|(_, (_, &l))| l == li).count();
        let nneg = rows().filter(|(_, (_, &l))| l != li).count();
        counts.pos_pairs += npos;
        counts.neg_pairs += nneg;
        match loss {
            Loss::NtXent { inv_t, .. } => {
                let inv_t = f64::from(inv_t);
                counts.terms += npos;
                if npos == 0 || nneg == 0 {
                    continue;
                }
                let negs = || rows().filter(|(_, (_, &l))| l != li);
                let poss = || rows().filter(|(_, (_, &l))| l == li);
                let mn = negs()
                    .map(|(_, (yj, _))| z(yj, inv_t))
                    .fold(f64::NEG_INFINITY, f64::max);
                let sn: f64 = negs()
                    .map(|(_, (yj, _))| libm::exp(z(yj, inv_t) - mn))
                    .sum();
                let ln_n = mn + libm::log(sn);
                let mut r = 0.0;
                for (j, (yj, _)) in poss() {
                    let u = ln_n - z(yj, inv_t);
                    total += softplus64(u);
                    let sg = sigmoid64(u);
                    r += sg;
                    if let Some(a) = accs.as_mut() {
                        a.add_pair(-sg * inv_t, i, xi, rx, j, yj, clamped_norm64(yj));
                    }
                }
                if let Some(a) = accs.as_mut() {
                    for (j, (yj, _)) in negs() {
                        let g = r * libm::exp(z(yj, inv_t) - ln_n) * inv_t;
                        a.add_pair(g, i, xi, rx, j, yj, clamped_norm64(yj));
                    }
                }
            }
            Loss::SupCon { inv_t, nonzero } => {
                let inv_t = f64::from(inv_t);
                if npos == 0 {
                    counts.terms += usize::from(!nonzero);
                    continue;
                }
                let m = rows()
                    .map(|(_, (yj, _))| z(yj, inv_t))
                    .fold(f64::NEG_INFINITY, f64::max);
                let sum: f64 = rows().map(|(_, (yj, _))| libm::exp(z(yj, inv_t) - m)).sum();
                let lse = m + libm::log(sum);
                let zp: f64 = rows()
                    .filter(|(_, (_, &l))| l == li)
                    .map(|(_, (yj, _))| z(yj, inv_t))
                    .sum();
                // `l_i > 0` in exact arithmetic (see the module docs of `crate::nce`).
                let l = lse - zp / npos as f64;
                counts.terms += 1;
                total += l.max(0.0);
                if let Some(a) = accs.as_mut() {
                    for (j, (yj, &lj)) in rows() {
                        let pos = if lj == li { 1.0 / npos as f64 } else { 0.0 };
                        let g = (libm::exp(z(yj, inv_t) - lse) - pos) * inv_t;
                        a.add_pair(g, i, xi, rx, j, yj, clamped_norm64(yj));
                    }
                }
            }
        }
    }
    let (value, terms) = finish_counts(loss, total, &counts);
    if let Some(mut a) = accs {
        let k = if terms == 0 { 0.0 } else { 1.0 / terms as f64 };
        scale_rows(x, &mut a.x, k);
        if let Some(mut ay) = a.y {
            scale_rows(&y, &mut ay, k);
            ay.finish();
        }
        a.x.finish();
    }
    NceLoss {
        loss: value as f32,
        num_terms: terms,
    }
}

/// Scales every accumulated element by `k`, then chains it through the normalisation.
fn scale_rows(x: &Matrix<'_>, acc: &mut Acc64<'_>, k: f64) {
    for e in 0..x.len() {
        acc.set(e, acc.get(e) * k);
    }
    for (i, xi) in x.row_iter().enumerate() {
        normalize_backward64(xi, acc, i);
    }
}

/// The checks and the `f64` computation shared by the six twins.
fn twin(
    x: Matrix<'_>,
    labels: &[u32],
    docs: Option<&Docs<'_>>,
    loss: Result<Loss, Error>,
    grads: Option<(&mut [f32], Option<&mut [f32]>)>,
    workspace: &mut [f32],
) -> Result<NceLoss, Error> {
    let lens = grads
        .as_ref()
        .map(|(g, gy)| (g.len(), gy.as_ref().map_or(0, |v| v.len())));
    let required = match docs {
        Some(dc) => infonce_loss_workspace_len(x.rows(), dc.y.rows(), x.dim()),
        None => ntxent_loss_workspace_len(x.rows(), x.dim()),
    };
    let fast_required = match docs {
        Some(dc) => crate::nce::infonce_loss_workspace_len(x.rows(), dc.y.rows(), x.dim()),
        None => crate::nce::ntxent_loss_workspace_len(x.rows(), x.dim()),
    };
    let loss = check_twin_workspace(required, workspace.len(), |ws| {
        check_nce(&x, labels, docs, loss, lens, fast_required, ws)
    })?;
    let accs = match grads {
        Some((g, gy)) => {
            let (ax, rest) = Acc64::new(g, workspace)?;
            let ay = match gy {
                Some(gy) => Some(Acc64::new(gy, rest)?.0),
                None => None,
            };
            Some(Accs { x: ax, y: ay })
        }
        None => None,
    };
    Ok(nce64(&x, labels, docs, loss, accs))
}

/// Scalar twin of [`crate::ntxent_loss`]: the formula pair by pair in `f64`, every
/// log-sum-exp shifted by its largest term.
///
/// `workspace` needs [`ntxent_loss_workspace_len`]`(rows, dim)` elements (the twin's),
/// checked but not used.
///
/// # Errors
///
/// Those of [`crate::ntxent_loss`], in the same order; [`Error::WorkspaceTooSmall`]
/// reports the twin's requirement.
///
/// # Example
///
/// ```
/// use triplet_kernels::{scalar, Matrix, NtXentParams};
/// let x = Matrix::new(&[1.0, 0.0, 2.0, 0.0, 0.0, 1.0, 0.0, 3.0], 4, 2)?;
/// let mut ws = [0.0_f32; scalar::ntxent_loss_workspace_len(4, 2)];
/// let out = scalar::ntxent_loss(x, &[0, 0, 1, 1], NtXentParams::new(0.5), &mut ws)?;
/// assert!((out.loss - (1.0 + 2.0 * (-2.0_f32).exp()).ln()).abs() < 1e-6);
/// # Ok::<(), triplet_kernels::Error>(())
/// ```
#[cfg_attr(feature = "no-panic", no_panic::no_panic)]
pub fn ntxent_loss(
    x: Matrix<'_>,
    labels: &[u32],
    params: NtXentParams,
    workspace: &mut [f32],
) -> Result<NceLoss, Error> {
    twin(x, labels, None, params.validate(), None, workspace)
}

/// Scalar twin of [`crate::ntxent_loss_grad`]: the formula in `f64`; the gradient is
/// summed in `f64`, chained through the normalisation in `f64`, and every element of
/// `grad` is rounded to `f32` once.
///
/// # Errors
///
/// Those of [`crate::ntxent_loss_grad`], in the same order; [`Error::WorkspaceTooSmall`]
/// reports the twin's requirement ([`ntxent_loss_workspace_len`]).
///
/// # Example
///
/// ```
/// use triplet_kernels::{scalar, Matrix, NtXentParams};
/// let x = Matrix::new(&[1.0, 0.1, 0.9, 0.3, 0.2, 1.0, 0.0, 1.0], 4, 2)?;
/// let mut g = [0.0_f32; 8];
/// let mut ws = [0.0_f32; scalar::ntxent_loss_workspace_len(4, 2)];
/// scalar::ntxent_loss_grad(x, &[0, 0, 1, 1], NtXentParams::default(), &mut g, &mut ws)?;
/// assert!(g[3] > 0.0);
/// # Ok::<(), triplet_kernels::Error>(())
/// ```
#[cfg_attr(feature = "no-panic", no_panic::no_panic)]
pub fn ntxent_loss_grad(
    x: Matrix<'_>,
    labels: &[u32],
    params: NtXentParams,
    grad: &mut [f32],
    workspace: &mut [f32],
) -> Result<NceLoss, Error> {
    twin(
        x,
        labels,
        None,
        params.validate(),
        Some((grad, None)),
        workspace,
    )
}

/// Scalar twin of [`crate::infonce_loss`], as [`ntxent_loss`].
///
/// `workspace` needs [`infonce_loss_workspace_len`]`(rows, docs, dim)` elements.
///
/// # Errors
///
/// Those of [`crate::infonce_loss`], in the same order; [`Error::WorkspaceTooSmall`]
/// reports the twin's requirement.
///
/// # Example
///
/// ```
/// use triplet_kernels::{scalar, Matrix, NtXentParams};
/// let q = Matrix::new(&[1.0, 0.0, 0.0, 1.0], 2, 2)?;
/// let docs = Matrix::new(&[2.0, 0.0, 0.0, 5.0], 2, 2)?;
/// let mut ws = [0.0_f32; scalar::infonce_loss_workspace_len(2, 2, 2)];
/// let p = NtXentParams::sentence_transformers();
/// let out = scalar::infonce_loss(q, &[0, 1], docs, &[0, 1], p, &mut ws)?;
/// assert!((out.loss - (1.0 + (-20.0_f32).exp()).ln()).abs() < 1e-7);
/// # Ok::<(), triplet_kernels::Error>(())
/// ```
#[cfg_attr(feature = "no-panic", no_panic::no_panic)]
pub fn infonce_loss(
    x: Matrix<'_>,
    labels: &[u32],
    y: Matrix<'_>,
    y_labels: &[u32],
    params: NtXentParams,
    workspace: &mut [f32],
) -> Result<NceLoss, Error> {
    let docs = Docs {
        y,
        labels: y_labels,
    };
    twin(x, labels, Some(&docs), params.validate(), None, workspace)
}

/// Scalar twin of [`crate::infonce_loss_grad`], as [`ntxent_loss_grad`].
///
/// # Errors
///
/// Those of [`crate::infonce_loss_grad`], in the same order; [`Error::WorkspaceTooSmall`]
/// reports the twin's requirement ([`infonce_loss_workspace_len`]).
///
/// # Example
///
/// ```
/// use triplet_kernels::{scalar, Matrix, NtXentParams};
/// let q = Matrix::new(&[1.0, 0.2, 0.1, 1.0], 2, 2)?;
/// let docs = Matrix::new(&[1.0, 0.0, 0.0, 1.0], 2, 2)?;
/// let (mut g, mut gy) = ([0.0_f32; 4], [0.0_f32; 4]);
/// let mut ws = [0.0_f32; scalar::infonce_loss_workspace_len(2, 2, 2)];
/// let p = NtXentParams::sentence_transformers();
/// scalar::infonce_loss_grad(q, &[0, 1], docs, &[0, 1], p, &mut g, &mut gy, &mut ws)?;
/// assert!(g[1] > 0.0);
/// # Ok::<(), triplet_kernels::Error>(())
/// ```
#[cfg_attr(feature = "no-panic", no_panic::no_panic)]
#[allow(clippy::too_many_arguments)]
pub fn infonce_loss_grad(
    x: Matrix<'_>,
    labels: &[u32],
    y: Matrix<'_>,
    y_labels: &[u32],
    params: NtXentParams,
    grad: &mut [f32],
    grad_y: &mut [f32],
    workspace: &mut [f32],
) -> Result<NceLoss, Error> {
    let docs = Docs {
        y,
        labels: y_labels,
    };
    twin(
        x,
        labels,
        Some(&docs),
        params.validate(),
        Some((grad, Some(grad_y))),
        workspace,
    )
}

/// Scalar twin of [`crate::supcon_loss`]: the formula row by row in `f64`.
///
/// `workspace` needs [`supcon_loss_workspace_len`]`(rows, dim)` elements (the twin's),
/// checked but not used.
///
/// # Errors
///
/// Those of [`crate::supcon_loss`], in the same order; [`Error::WorkspaceTooSmall`]
/// reports the twin's requirement.
///
/// # Example
///
/// ```
/// use triplet_kernels::{scalar, Matrix, SupConParams};
/// let x = Matrix::new(&[1.0, 0.0, 2.0, 0.0, 0.0, 1.0, 0.0, 3.0], 4, 2)?;
/// let mut ws = [0.0_f32; scalar::supcon_loss_workspace_len(4, 2)];
/// let out = scalar::supcon_loss(x, &[0, 0, 1, 1], SupConParams::new(0.5), &mut ws)?;
/// assert!((out.loss - ((2.0_f32.exp() + 2.0).ln() - 2.0)).abs() < 1e-6);
/// # Ok::<(), triplet_kernels::Error>(())
/// ```
#[cfg_attr(feature = "no-panic", no_panic::no_panic)]
pub fn supcon_loss(
    x: Matrix<'_>,
    labels: &[u32],
    params: SupConParams,
    workspace: &mut [f32],
) -> Result<NceLoss, Error> {
    twin(x, labels, None, params.validate(), None, workspace)
}

/// Scalar twin of [`crate::supcon_loss_grad`], as [`ntxent_loss_grad`].
///
/// # Errors
///
/// Those of [`crate::supcon_loss_grad`], in the same order; [`Error::WorkspaceTooSmall`]
/// reports the twin's requirement ([`supcon_loss_workspace_len`]).
///
/// # Example
///
/// ```
/// use triplet_kernels::{scalar, Matrix, SupConParams};
/// let x = Matrix::new(&[1.0, 0.1, 0.9, 0.3, 0.2, 1.0, 0.0, 1.0], 4, 2)?;
/// let mut g = [0.0_f32; 8];
/// let mut ws = [0.0_f32; scalar::supcon_loss_workspace_len(4, 2)];
/// scalar::supcon_loss_grad(x, &[0, 0, 1, 1], SupConParams::default(), &mut g, &mut ws)?;
/// assert!(g[3] > 0.0);
/// # Ok::<(), triplet_kernels::Error>(())
/// ```
#[cfg_attr(feature = "no-panic", no_panic::no_panic)]
pub fn supcon_loss_grad(
    x: Matrix<'_>,
    labels: &[u32],
    params: SupConParams,
    grad: &mut [f32],
    workspace: &mut [f32],
) -> Result<NceLoss, Error> {
    twin(
        x,
        labels,
        None,
        params.validate(),
        Some((grad, None)),
        workspace,
    )
}
