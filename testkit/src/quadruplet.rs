//! The documented bounds of `quadruplet_loss(_grad)`.

use crate::rows::{dist64, dist_scale, grad_scale};
use crate::triplet_def::{hinge64, slope64};
use crate::EPS;
use triplet_kernels::{Hinge, Matrix, Metric, Quadruplet, QuadrupletParams, Reduction};

/// `(v1, v2, d, scales, pairs)` of a quadruplet in f64: the two margin values, the
/// distances of its pairs `(a, p)`, `(a, n1)`, `(n1, n2)`, their error scales and the
/// pairs themselves.
pub fn margins(
    x: &Matrix<'_>,
    q: Quadruplet,
    metric: Metric,
    p: &QuadrupletParams,
) -> (f64, f64, [f64; 3], [f64; 3], [[usize; 2]; 3]) {
    let [a, pp, n1, n2] = q.to_array().map(|v| v as usize);
    let r = |i: usize| x.row(i).unwrap();
    let pairs = [[a, pp], [a, n1], [n1, n2]];
    let d = pairs.map(|[i, j]| dist64(metric, r(i), r(j)));
    let sc = pairs.map(|[i, j]| dist_scale(metric, r(i), r(j)));
    let v1 = d[0] - d[1] + f64::from(p.margin1);
    let v2 = d[0] - d[2] + f64::from(p.margin2);
    (v1, v2, d, sc, pairs)
}

/// Tolerances of the loss and of each gradient row, or `None` when a relu margin value
/// sits within its error of the kink.
pub fn tolerances(
    x: &Matrix<'_>,
    quads: &[Quadruplet],
    metric: Metric,
    p: &QuadrupletParams,
) -> Option<(f64, Vec<f64>)> {
    let n = x.rows();
    let k = 4.0 * EPS * (x.dim() + quads.len() + 16) as f64;
    let h = |v: f64| hinge64(p.hinge, v);
    let slope = |v: f64| slope64(p.hinge, v);
    let mut active = 0;
    for &q in quads {
        let (v1, v2, _, sc, _) = margins(x, q, metric, p);
        let err = k * (sc[0] + sc[1] + sc[2]);
        if p.hinge == Hinge::Relu && (v1.abs() <= 4.0 * err || v2.abs() <= 4.0 * err) {
            return None;
        }
        active += usize::from(p.hinge == Hinge::SoftPlus || v1 > 0.0 || v2 > 0.0);
    }
    let w = match p.reduction {
        Reduction::Sum => 1.0,
        Reduction::Mean if !quads.is_empty() => 1.0 / quads.len() as f64,
        Reduction::MeanNonzero if active > 0 => 1.0 / active as f64,
        _ => 0.0,
    };
    let mut loss = 1e-30;
    let mut row = vec![1e-30; n];
    for &q in quads {
        let (v1, v2, _, sc, pairs) = margins(x, q, metric, p);
        let vs = sc[0] + sc[1] + sc[2] + f64::from(p.margin1.abs() + p.margin2.abs());
        loss += w * (h(v1) + h(v2) + 2.0 * vs);
        let soft = if p.hinge == Hinge::SoftPlus {
            0.5 * vs
        } else {
            0.0
        };
        let (s1, s2) = (slope(v1) + soft, slope(v2) + soft);
        for ([i, j], c) in pairs.into_iter().zip([s1 + s2, s1, s2]) {
            if i == j {
                continue;
            }
            let (a, b) = (x.row(i).unwrap(), x.row(j).unwrap());
            row[i] += w * c * grad_scale(metric, a, b);
            row[j] += w * c * grad_scale(metric, b, a);
        }
    }
    Some((k * loss, row.into_iter().map(|r| k * r).collect()))
}
