//! Scalar twins of [`crate::mining`]: every distance recomputed in `f64` where it is
//! needed, selections written as the textbook loops.

use crate::distance::Metric;
use crate::error::Error;
use crate::matrix::Matrix;
use crate::mining::{
    check_hardest_args, check_mine_args, check_part_args, HardestPair, Mining, PartTiles,
    SweepPart, Triplet, NO_INDEX, TILE,
};
use crate::scalar::distance::distance64;

/// `d(x_i, x_j)` in `f64` (0 for a row index out of range, which validated callers never
/// pass).
pub(crate) fn pair64(x: &Matrix<'_>, metric: Metric, i: usize, j: usize) -> f64 {
    match (x.row(i), x.row(j)) {
        (Some(a), Some(b)) => distance64(metric, a, b),
        _ => 0.0,
    }
}

/// The farthest positive of anchor `a` (ties to the smallest index).
fn farthest_positive(x: &Matrix<'_>, labels: &[u32], metric: Metric, a: usize) -> Option<usize> {
    let la = *labels.get(a)?;
    let mut best: Option<(usize, f64)> = None;
    for (p, &lp) in labels.iter().enumerate() {
        if p == a || lp != la {
            continue;
        }
        let d = pair64(x, metric, a, p);
        match best {
            Some((_, bd)) if d <= bd => {}
            _ => best = Some((p, d)),
        }
    }
    best.map(|(p, _)| p)
}

/// The nearest negative of anchor `a` (ties to the smallest index).
fn nearest_negative(x: &Matrix<'_>, labels: &[u32], metric: Metric, a: usize) -> Option<usize> {
    let la = *labels.get(a)?;
    let mut best: Option<(usize, f64)> = None;
    for (q, &lq) in labels.iter().enumerate() {
        if lq == la {
            continue;
        }
        let d = pair64(x, metric, a, q);
        match best {
            Some((_, bd)) if d >= bd => {}
            _ => best = Some((q, d)),
        }
    }
    best.map(|(q, _)| q)
}

/// The semi-hard negative of the pair `(a, p)`: nearest negative with `d(a, n) > d(a, p)`,
/// else the farthest negative (ties to the smallest index).
fn semi_hard_negative(
    x: &Matrix<'_>,
    labels: &[u32],
    metric: Metric,
    a: usize,
    p: usize,
) -> Option<usize> {
    let la = *labels.get(a)?;
    let dap = pair64(x, metric, a, p);
    let mut above: Option<(usize, f64)> = None;
    let mut far: Option<(usize, f64)> = None;
    for (q, &lq) in labels.iter().enumerate() {
        if lq == la {
            continue;
        }
        let d = pair64(x, metric, a, q);
        if d > dap {
            match above {
                Some((_, bd)) if d >= bd => {}
                _ => above = Some((q, d)),
            }
        }
        match far {
            Some((_, bd)) if d <= bd => {}
            _ => far = Some((q, d)),
        }
    }
    above.or(far).map(|(q, _)| q)
}

/// Calls `f(a, p, n)` for every triplet `mining` selects, in ascending `(a, p, n)` order.
pub(crate) fn for_each_triplet64<F: FnMut(usize, usize, usize)>(
    x: &Matrix<'_>,
    labels: &[u32],
    metric: Metric,
    mining: Mining,
    mut f: F,
) {
    for (a, &la) in labels.iter().enumerate() {
        match mining {
            Mining::All => {
                for (p, &lp) in labels.iter().enumerate() {
                    if p == a || lp != la {
                        continue;
                    }
                    for (q, &lq) in labels.iter().enumerate() {
                        if lq != la {
                            f(a, p, q);
                        }
                    }
                }
            }
            Mining::BatchHard => {
                if let (Some(p), Some(q)) = (
                    farthest_positive(x, labels, metric, a),
                    nearest_negative(x, labels, metric, a),
                ) {
                    f(a, p, q);
                }
            }
            Mining::SemiHard => {
                for (p, &lp) in labels.iter().enumerate() {
                    if p == a || lp != la {
                        continue;
                    }
                    if let Some(q) = semi_hard_negative(x, labels, metric, a, p) {
                        f(a, p, q);
                    }
                }
            }
        }
    }
}

/// Scalar twin of [`crate::mine_triplets_count`].
///
/// # Errors
///
/// Exactly those of [`crate::mine_triplets_count`].
///
/// # Example
///
/// ```
/// use triplet_kernels::{scalar, Mining};
/// assert_eq!(scalar::mine_triplets_count(&[1, 1, 2], Mining::All)?, 2);
/// # Ok::<(), triplet_kernels::Error>(())
/// ```
#[cfg_attr(feature = "no-panic", no_panic::no_panic)]
pub fn mine_triplets_count(labels: &[u32], mining: Mining) -> Result<usize, Error> {
    let n = labels.len();
    let overflow = Error::ShapeOverflow { rows: n, cols: n };
    let mut total = 0_usize;
    for (a, &la) in labels.iter().enumerate() {
        let pos = labels
            .iter()
            .enumerate()
            .filter(|&(j, &l)| j != a && l == la)
            .count();
        let neg = labels.iter().filter(|&&l| l != la).count();
        let k = match mining {
            Mining::All => pos.checked_mul(neg).ok_or(overflow)?,
            Mining::BatchHard => usize::from(pos > 0 && neg > 0),
            Mining::SemiHard => {
                if neg > 0 {
                    pos
                } else {
                    0
                }
            }
        };
        total = total.checked_add(k).ok_or(overflow)?;
    }
    Ok(total)
}

/// Scalar twin of [`crate::hardest_pairs`].
///
/// # Errors
///
/// Exactly those of [`crate::hardest_pairs`].
///
/// # Example
///
/// ```
/// use triplet_kernels::{scalar, hardest_pairs_workspace_len, Matrix, Metric, NO_INDEX};
/// let x = Matrix::new(&[0.0, 2.0, 3.0], 3, 1)?;
/// let (mut pos, mut neg) = ([0_u32; 3], [0_u32; 3]);
/// let mut ws = [0.0_f32; hardest_pairs_workspace_len(3, 1)];
/// scalar::hardest_pairs(x, &[5, 5, 6], Metric::Euclidean, &mut pos, &mut neg, &mut ws)?;
/// assert_eq!((pos, neg), ([1, 0, NO_INDEX], [2, 2, 1]));
/// # Ok::<(), triplet_kernels::Error>(())
/// ```
#[cfg_attr(feature = "no-panic", no_panic::no_panic)]
pub fn hardest_pairs(
    x: Matrix<'_>,
    labels: &[u32],
    metric: Metric,
    positives: &mut [u32],
    negatives: &mut [u32],
    workspace: &mut [f32],
) -> Result<(), Error> {
    check_hardest_args(
        &x,
        labels,
        positives.len(),
        negatives.len(),
        workspace.len(),
    )?;
    for (a, (pa, na)) in positives.iter_mut().zip(negatives.iter_mut()).enumerate() {
        *pa = farthest_positive(&x, labels, metric, a).map_or(NO_INDEX, |p| p as u32);
        *na = nearest_negative(&x, labels, metric, a).map_or(NO_INDEX, |q| q as u32);
    }
    Ok(())
}

/// Scalar twin of [`crate::hardest_pairs_part`]: the part's tiles (the same partition),
/// every distance of them computed in `f64` and rounded to `f32` (the output's type),
/// offered to both of its rows in turn; choices are made on those rounded values, ties to
/// the smallest index.
///
/// # Errors
///
/// Exactly those of [`crate::hardest_pairs_part`].
///
/// # Example
///
/// ```
/// use triplet_kernels::{scalar, hardest_pairs_part_workspace_len, HardestPair, Matrix};
/// use triplet_kernels::{Metric, SweepPart, NO_INDEX};
/// let x = Matrix::new(&[0.0, 2.0, 3.0], 3, 1)?;
/// let mut out = [HardestPair::NONE; 3];
/// let mut ws = [0.0_f32; hardest_pairs_part_workspace_len(3, 1)];
/// let whole = SweepPart::WHOLE;
/// scalar::hardest_pairs_part(x, &[5, 5, 6], Metric::Euclidean, whole, &mut out, &mut ws)?;
/// assert_eq!((out[2].positive, out[2].negative, out[2].neg_dist), (NO_INDEX, 1, 1.0));
/// # Ok::<(), triplet_kernels::Error>(())
/// ```
#[cfg_attr(feature = "no-panic", no_panic::no_panic)]
pub fn hardest_pairs_part(
    x: Matrix<'_>,
    labels: &[u32],
    metric: Metric,
    part: SweepPart,
    out: &mut [HardestPair],
    workspace: &mut [f32],
) -> Result<(), Error> {
    let n = check_part_args(&x, labels, part, out.len(), workspace.len())?;
    out.fill(HardestPair::NONE);
    let mut owned = PartTiles::new(n, Some((part.index(), part.parts())));
    let offer = |out: &mut [HardestPair], a: usize, j: usize, d: f64| {
        let (Some(c), Some(&la), Some(&lj)) = (out.get_mut(a), labels.get(a), labels.get(j)) else {
            return;
        };
        let (j32, d) = (j as u32, d as f32);
        if la == lj {
            let best = c.pos_dist;
            if c.positive == NO_INDEX || d > best || (d == best && j32 < c.positive) {
                (c.positive, c.pos_dist) = (j32, d);
            }
        } else {
            let best = c.neg_dist;
            if c.negative == NO_INDEX || d < best || (d == best && j32 < c.negative) {
                (c.negative, c.neg_dist) = (j32, d);
            }
        }
    };
    for i0 in (0..n).step_by(TILE) {
        let i1 = n.min(i0 + TILE);
        for j0 in (i0..n).step_by(TILE) {
            let j1 = n.min(j0 + TILE);
            if !owned.owns(i1 - i0, j1 - j0, i0 == j0) {
                continue;
            }
            for i in i0..i1 {
                for j in j0.max(i + 1)..j1 {
                    let d = pair64(&x, metric, i, j);
                    offer(out, i, j, d);
                    offer(out, j, i, d);
                }
            }
        }
    }
    Ok(())
}

/// Scalar twin of [`crate::mine_triplets`].
///
/// # Errors
///
/// Exactly those of [`crate::mine_triplets`].
///
/// # Example
///
/// ```
/// use triplet_kernels::{scalar, mine_triplets_workspace_len, Matrix, Metric, Mining, Triplet};
/// let x = Matrix::new(&[0.0, 2.0, 3.0], 3, 1)?;
/// let mut out = [Triplet::default(); 2];
/// let mut ws = [0.0_f32; mine_triplets_workspace_len(3, 1)];
/// let k = scalar::mine_triplets(x, &[5, 5, 6], Metric::Euclidean, Mining::All, &mut out, &mut ws)?;
/// assert_eq!(out[..k], [Triplet::new(0, 1, 2), Triplet::new(1, 0, 2)]);
/// # Ok::<(), triplet_kernels::Error>(())
/// ```
#[cfg_attr(feature = "no-panic", no_panic::no_panic)]
pub fn mine_triplets(
    x: Matrix<'_>,
    labels: &[u32],
    metric: Metric,
    mining: Mining,
    out: &mut [Triplet],
    workspace: &mut [f32],
) -> Result<usize, Error> {
    check_mine_args(&x, labels, mining, out.len(), workspace.len())?;
    let mut k = 0_usize;
    for_each_triplet64(&x, labels, metric, mining, |a, p, q| {
        if let Some(t) = out.get_mut(k) {
            *t = Triplet::new(a as u32, p as u32, q as u32);
        }
        k += 1;
    });
    Ok(k)
}
