//! The documented bounds of `contrastive_loss(_grad)`: `(d / 8 + n + 10) 2^-24` of the
//! weighted absolute terms and gradient contributions, with a safety factor.

use crate::rows::{dist64, dist_scale, grad_scale};
use crate::EPS;
use triplet_kernels::{ContrastiveForm, ContrastiveParams, ContrastiveReduction, Matrix, Metric};

/// `(hinge argument, term, slope)` of one pair.
pub fn term(p: &ContrastiveParams, positive: bool, d: f64) -> (f64, f64, f64) {
    let (v, sign) = if positive {
        (d - f64::from(p.pos_margin), 1.0)
    } else {
        (f64::from(p.neg_margin) - d, -1.0)
    };
    let h = v.max(0.0);
    match p.form {
        ContrastiveForm::Linear => (v, h, if v > 0.0 { sign } else { 0.0 }),
        _ => (v, h * h, if v > 0.0 { 2.0 * sign * v } else { 0.0 }),
    }
}

/// Per-part weights `(positive, negative)` as the docs define them, from the counts of
/// positive pairs, active positive pairs, negative pairs and active negative pairs.
pub fn weights(r: ContrastiveReduction, pc: usize, pa: usize, nc: usize, na: usize) -> (f64, f64) {
    let inv = |k: usize| if k == 0 { 0.0 } else { 1.0 / k as f64 };
    match r {
        ContrastiveReduction::MeanNonzeroPerPart => (inv(pa), inv(na)),
        ContrastiveReduction::MeanPerPart => (inv(pc), inv(nc)),
        ContrastiveReduction::Mean => (inv(pc + nc), inv(pc + nc)),
        _ => (1.0, 1.0),
    }
}

/// Per ordered pair `(i, j)` (index `i * n + j`): distance, its error scale, and the
/// gradient scale of `d d(x_i, x_j) / d x_i`, computed once per batch and metric.
pub struct Pairs {
    pub n: usize,
    pub d: Vec<f64>,
    pub sc: Vec<f64>,
    pub gs: Vec<f64>,
}

/// A function of a metric and two rows: a distance's error scale or gradient scale.
pub type RowScale = fn(Metric, &[f32], &[f32]) -> f64;

impl Pairs {
    /// The scales of [`crate::rows`]: [`dist_scale`] and [`grad_scale`].
    pub fn new(x: &Matrix<'_>, metric: Metric) -> Self {
        Self::with(x, metric, dist_scale, grad_scale)
    }

    /// Error scales from `scale` and gradient scales from `grad`.
    pub fn with(x: &Matrix<'_>, metric: Metric, scale: RowScale, grad: RowScale) -> Self {
        let n = x.rows();
        let rows: Vec<&[f32]> = x.row_iter().collect();
        let mut p = Pairs {
            n,
            d: vec![0.0; n * n],
            sc: vec![0.0; n * n],
            gs: vec![0.0; n * n],
        };
        for i in 0..n {
            for j in 0..n {
                p.d[i * n + j] = dist64(metric, rows[i], rows[j]);
                p.sc[i * n + j] = scale(metric, rows[i], rows[j]);
                p.gs[i * n + j] = grad(metric, rows[i], rows[j]);
            }
        }
        p
    }
}

/// Tolerances of the loss and of each gradient row for rows of `dim`, or `None` when a
/// term sits within the error bound of its kink (the two kernels may then count
/// differently).
pub fn tolerances(
    dim: usize,
    pairs: &Pairs,
    labels: &[u32],
    p: &ContrastiveParams,
) -> Option<(f64, Vec<f64>)> {
    let n = pairs.n;
    let k = 4.0 * EPS * (dim + 2 * n + 16) as f64;
    let (mut pc, mut pa, mut nc, mut na) = (0, 0, 0, 0);
    for i in 0..n {
        for j in 0..n {
            if i == j {
                continue;
            }
            let pos = labels[i] == labels[j];
            let (v, t, _) = term(p, pos, pairs.d[i * n + j]);
            if v.abs() <= 4.0 * k * pairs.sc[i * n + j] {
                return None;
            }
            if pos {
                pc += 1;
                pa += usize::from(t > 0.0);
            } else {
                nc += 1;
                na += usize::from(t > 0.0);
            }
        }
    }
    let (wp, wn) = weights(p.reduction, pc, pa, nc, na);
    let mut loss = 1e-30;
    let mut row = vec![1e-30; n];
    for i in 0..n {
        for j in 0..n {
            if i == j {
                continue;
            }
            let pos = labels[i] == labels[j];
            let w = if pos { wp } else { wn };
            let sc = pairs.sc[i * n + j];
            let (_, t, s) = term(p, pos, pairs.d[i * n + j]);
            let slope_err = if p.form == ContrastiveForm::Squared {
                2.0 * sc
            } else {
                0.0
            };
            loss += w * (t + s.abs() * sc);
            // (i, j) and (j, i) both touch rows i and j.
            row[i] += 2.0 * w * (s.abs() + slope_err) * pairs.gs[i * n + j];
        }
    }
    Some((k * loss, row.into_iter().map(|r| k * r).collect()))
}
