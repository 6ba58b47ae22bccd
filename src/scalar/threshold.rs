//! Scalar twins of the threshold miners ([`crate::triplet_mine`], [`crate::pair_mine`],
//! [`crate::multi_similarity_mine`]): every distance in `f64`, every rule as the textbook
//! loop, the same subsampling under a cap.

use crate::distance::Metric;
use crate::error::Error;
use crate::matrix::Matrix;
use crate::mining::pairs::{check_pair_mine, write_pairs, PairCount, PairSweep, PairVisit};
use crate::mining::threshold::{candidate_bound, check_triplet_mine, Sampler};
use crate::mining::{
    check_ms_mine, MultiSimilarityMinerParams, Pair, PairCounts, PairMinerParams, Triplet,
    TripletMinerParams,
};
use crate::scalar::mining::pair64;

/// Calls `f(a, p, q)` for every qualifying triplet in ascending order until it returns
/// `false`; `g = d(a, q) - d(a, p)` in `f64` against the window in `f64`.
fn for_each_kept64<F: FnMut(usize, usize, usize) -> bool>(
    x: &Matrix<'_>,
    labels: &[u32],
    metric: Metric,
    params: &TripletMinerParams,
    mut f: F,
) {
    let (lo, hi) = params.triplet_type.window(params.margin);
    let (lo, hi) = (f64::from(lo), f64::from(hi));
    for (a, &la) in labels.iter().enumerate() {
        for (p, &lp) in labels.iter().enumerate() {
            if p == a || lp != la {
                continue;
            }
            let dap = pair64(x, metric, a, p);
            for (q, &lq) in labels.iter().enumerate() {
                if lq == la {
                    continue;
                }
                let g = pair64(x, metric, a, q) - dap;
                if g > lo && g <= hi && !f(a, p, q) {
                    return;
                }
            }
        }
    }
}

/// Scalar twin of [`crate::triplet_mine_count`]: every distance in `f64`.
///
/// `workspace` needs [`crate::triplet_mine_workspace_len`]`(rows, dim)` elements (checked,
/// not used).
///
/// # Errors
///
/// Those of [`crate::triplet_mine_count`], in the same order.
///
/// # Example
///
/// ```
/// use triplet_kernels::{scalar, triplet_mine_workspace_len, Matrix, Metric};
/// use triplet_kernels::{TripletMinerParams, TripletType};
/// let x = Matrix::new(&[0.0, 1.0, 1.5, 4.0], 4, 1)?;
/// let mut ws = [0.0_f32; triplet_mine_workspace_len(4, 1)];
/// let params = TripletMinerParams::new(1.0, TripletType::SemiHard);
/// assert_eq!(scalar::triplet_mine_count(x, &[0, 0, 1, 1], Metric::Euclidean, params, &mut ws)?, 2);
/// # Ok::<(), triplet_kernels::Error>(())
/// ```
#[cfg_attr(feature = "no-panic", no_panic::no_panic)]
pub fn triplet_mine_count(
    x: Matrix<'_>,
    labels: &[u32],
    metric: Metric,
    params: TripletMinerParams,
    workspace: &mut [f32],
) -> Result<usize, Error> {
    check_triplet_mine(&x, labels, &params, workspace.len())?;
    let mut k = 0_usize;
    for_each_kept64(&x, labels, metric, &params, |_, _, _| {
        k = k.saturating_add(1);
        true
    });
    Ok(k)
}

/// Scalar twin of [`crate::triplet_mine`]: every distance in `f64`, the same subsampling
/// under a cap (so the same subset whenever the qualifying triplets are the same).
///
/// `workspace` needs [`crate::triplet_mine_workspace_len`]`(rows, dim)` elements (checked,
/// not used).
///
/// # Errors
///
/// Those of [`crate::triplet_mine`], in the same order.
///
/// # Example
///
/// ```
/// use triplet_kernels::{scalar, triplet_mine_workspace_len, Matrix, Metric, Triplet};
/// use triplet_kernels::{TripletMinerParams, TripletType};
/// let x = Matrix::new(&[0.0, 1.0, 1.5, 4.0], 4, 1)?;
/// let mut ws = [0.0_f32; triplet_mine_workspace_len(4, 1)];
/// let mut out = [Triplet::default(); 2];
/// let params = TripletMinerParams::new(1.0, TripletType::SemiHard);
/// let k = scalar::triplet_mine(x, &[0, 0, 1, 1], Metric::Euclidean, params, &mut out, &mut ws)?;
/// assert_eq!(out[..k], [Triplet::new(0, 1, 2), Triplet::new(3, 2, 1)]);
/// # Ok::<(), triplet_kernels::Error>(())
/// ```
#[cfg_attr(feature = "no-panic", no_panic::no_panic)]
pub fn triplet_mine(
    x: Matrix<'_>,
    labels: &[u32],
    metric: Metric,
    params: TripletMinerParams,
    out: &mut [Triplet],
    workspace: &mut [f32],
) -> Result<usize, Error> {
    check_triplet_mine(&x, labels, &params, workspace.len())?;
    let cap = params.max_triplets.unwrap_or(usize::MAX);
    let mut sampler = None;
    if out.len() < candidate_bound(labels) || cap < candidate_bound(labels) {
        let mut count = 0_usize;
        for_each_kept64(&x, labels, metric, &params, |_, _, _| {
            count = count.saturating_add(1);
            true
        });
        let want = count.min(cap);
        if out.len() < want {
            return Err(Error::LengthMismatch {
                buffer: "out",
                expected: want,
                actual: out.len(),
            });
        }
        if count > cap {
            sampler = Some(Sampler::new(params.seed, count, cap));
        }
    }
    let mut k = 0_usize;
    for_each_kept64(&x, labels, metric, &params, |a, p, q| {
        if let Some(s) = sampler.as_mut() {
            if !s.keep() {
                return !s.done();
            }
        }
        if let Some(t) = out.get_mut(k) {
            *t = Triplet::new(a as u32, p as u32, q as u32);
        }
        k += 1;
        !sampler.is_some_and(|s| s.done())
    });
    Ok(k)
}

fn pairs64<V: PairVisit>(
    x: &Matrix<'_>,
    labels: &[u32],
    metric: Metric,
    params: PairMinerParams,
    visit: &mut V,
) {
    let (pm, nm) = (f64::from(params.pos_margin), f64::from(params.neg_margin));
    for (a, &la) in labels.iter().enumerate() {
        for (j, &l) in labels.iter().enumerate() {
            if j == a {
                continue;
            }
            let d = pair64(x, metric, a, j);
            if l != la {
                if d < nm {
                    visit.negative(a, j);
                }
            } else if d > pm {
                visit.positive(a, j);
            }
        }
    }
}

/// Scalar twin of [`crate::pair_mine_count`]: every distance in `f64`.
///
/// `workspace` needs [`crate::pair_mine_workspace_len`]`(rows, dim)` elements (checked,
/// not used).
///
/// # Errors
///
/// Those of [`crate::pair_mine_count`], in the same order.
///
/// # Example
///
/// ```
/// use triplet_kernels::{pair_mine_workspace_len, scalar, Matrix, Metric, PairMinerParams};
/// let x = Matrix::new(&[0.0, 2.0, 2.5], 3, 1)?;
/// let mut ws = [0.0_f32; pair_mine_workspace_len(3, 1)];
/// let params = PairMinerParams::new(1.0, 1.0);
/// let c = scalar::pair_mine_count(x, &[4, 4, 5], Metric::Euclidean, params, &mut ws)?;
/// assert_eq!((c.positives, c.negatives), (2, 2));
/// # Ok::<(), triplet_kernels::Error>(())
/// ```
#[cfg_attr(feature = "no-panic", no_panic::no_panic)]
pub fn pair_mine_count(
    x: Matrix<'_>,
    labels: &[u32],
    metric: Metric,
    params: PairMinerParams,
    workspace: &mut [f32],
) -> Result<PairCounts, Error> {
    check_pair_mine(&x, labels, params, workspace.len())?;
    let mut c = PairCount::default();
    pairs64(&x, labels, metric, params, &mut c);
    Ok(c.0)
}

/// Scalar twin of [`crate::pair_mine`]: every distance in `f64`.
///
/// `workspace` needs [`crate::pair_mine_workspace_len`]`(rows, dim)` elements (checked,
/// not used).
///
/// # Errors
///
/// Those of [`crate::pair_mine`], in the same order.
///
/// # Example
///
/// ```
/// use triplet_kernels::{pair_mine_workspace_len, scalar, Matrix, Metric, Pair, PairMinerParams};
/// let x = Matrix::new(&[0.0, 2.0, 2.5], 3, 1)?;
/// let mut ws = [0.0_f32; pair_mine_workspace_len(3, 1)];
/// let (mut pos, mut neg) = ([Pair::default(); 2], [Pair::default(); 2]);
/// let params = PairMinerParams::new(1.0, 1.0);
/// let c = scalar::pair_mine(x, &[4, 4, 5], Metric::Euclidean, params, &mut pos, &mut neg, &mut ws)?;
/// assert_eq!(neg[..c.negatives], [Pair::new(1, 2), Pair::new(2, 1)]);
/// # Ok::<(), triplet_kernels::Error>(())
/// ```
#[cfg_attr(feature = "no-panic", no_panic::no_panic)]
pub fn pair_mine(
    x: Matrix<'_>,
    labels: &[u32],
    metric: Metric,
    params: PairMinerParams,
    positives: &mut [Pair],
    negatives: &mut [Pair],
    workspace: &mut [f32],
) -> Result<PairCounts, Error> {
    check_pair_mine(&x, labels, params, workspace.len())?;
    let sweep = Twin64 {
        x: &x,
        labels,
        rule: Rule64::Margins(metric, params),
    };
    write_pairs(labels, positives, negatives, workspace, sweep)
}

/// Cosine similarity of rows `i` and `j` in `f64`.
pub(crate) fn sim64(x: &Matrix<'_>, i: usize, j: usize) -> f64 {
    1.0 - pair64(x, Metric::Cosine, i, j)
}

fn ms64<V: PairVisit>(x: &Matrix<'_>, labels: &[u32], eps: f64, visit: &mut V) {
    for (a, &la) in labels.iter().enumerate() {
        let (mut max_neg, mut min_pos) = (f64::NEG_INFINITY, f64::INFINITY);
        for (j, &l) in labels.iter().enumerate() {
            if l != la {
                max_neg = max_neg.max(sim64(x, a, j));
            } else if j != a {
                min_pos = min_pos.min(sim64(x, a, j));
            }
        }
        if max_neg == f64::NEG_INFINITY || min_pos == f64::INFINITY {
            continue;
        }
        for (j, &l) in labels.iter().enumerate() {
            if l != la {
                if sim64(x, a, j) + eps > min_pos {
                    visit.negative(a, j);
                }
            } else if j != a && sim64(x, a, j) - eps < max_neg {
                visit.positive(a, j);
            }
        }
    }
}

/// Scalar twin of [`crate::multi_similarity_mine_count`]: every similarity in `f64`.
///
/// `workspace` needs [`crate::pair_mine_workspace_len`]`(rows, dim)` elements (checked,
/// not used).
///
/// # Errors
///
/// Those of [`crate::multi_similarity_mine_count`], in the same order.
///
/// # Example
///
/// ```
/// use triplet_kernels::{pair_mine_workspace_len, scalar, Matrix, MultiSimilarityMinerParams};
/// let x = Matrix::new(&[1.0, 0.0, 0.0, 1.0, 1.0, 1.0], 3, 2)?;
/// let mut ws = [0.0_f32; pair_mine_workspace_len(3, 2)];
/// let params = MultiSimilarityMinerParams::new(0.1);
/// let c = scalar::multi_similarity_mine_count(x, &[0, 0, 1], params, &mut ws)?;
/// assert_eq!((c.positives, c.negatives), (2, 2));
/// # Ok::<(), triplet_kernels::Error>(())
/// ```
#[cfg_attr(feature = "no-panic", no_panic::no_panic)]
pub fn multi_similarity_mine_count(
    x: Matrix<'_>,
    labels: &[u32],
    params: MultiSimilarityMinerParams,
    workspace: &mut [f32],
) -> Result<PairCounts, Error> {
    check_ms_mine(&x, labels, params, workspace.len())?;
    let mut c = PairCount::default();
    ms64(&x, labels, f64::from(params.epsilon), &mut c);
    Ok(c.0)
}

/// Scalar twin of [`crate::multi_similarity_mine`]: every similarity in `f64`.
///
/// `workspace` needs [`crate::pair_mine_workspace_len`]`(rows, dim)` elements (checked,
/// not used).
///
/// # Errors
///
/// Those of [`crate::multi_similarity_mine`], in the same order.
///
/// # Example
///
/// ```
/// use triplet_kernels::{pair_mine_workspace_len, scalar, Matrix, MultiSimilarityMinerParams, Pair};
/// let x = Matrix::new(&[1.0, 0.0, 0.0, 1.0, 1.0, 1.0], 3, 2)?;
/// let mut ws = [0.0_f32; pair_mine_workspace_len(3, 2)];
/// let (mut pos, mut neg) = ([Pair::default(); 2], [Pair::default(); 2]);
/// let params = MultiSimilarityMinerParams::new(0.1);
/// let c = scalar::multi_similarity_mine(x, &[0, 0, 1], params, &mut pos, &mut neg, &mut ws)?;
/// assert_eq!(pos[..c.positives], [Pair::new(0, 1), Pair::new(1, 0)]);
/// # Ok::<(), triplet_kernels::Error>(())
/// ```
#[cfg_attr(feature = "no-panic", no_panic::no_panic)]
pub fn multi_similarity_mine(
    x: Matrix<'_>,
    labels: &[u32],
    params: MultiSimilarityMinerParams,
    positives: &mut [Pair],
    negatives: &mut [Pair],
    workspace: &mut [f32],
) -> Result<PairCounts, Error> {
    check_ms_mine(&x, labels, params, workspace.len())?;
    let sweep = Twin64 {
        x: &x,
        labels,
        rule: Rule64::Ms(f64::from(params.epsilon)),
    };
    write_pairs(labels, positives, negatives, workspace, sweep)
}

/// The twins' pair rules.
enum Rule64 {
    Margins(Metric, PairMinerParams),
    Ms(f64),
}

/// A twin's sweep for [`write_pairs`].
struct Twin64<'a, 'x> {
    x: &'a Matrix<'x>,
    labels: &'a [u32],
    rule: Rule64,
}

impl PairSweep for Twin64<'_, '_> {
    fn run<V: PairVisit>(&mut self, _ws: &mut [f32], visit: &mut V) -> Result<(), Error> {
        match self.rule {
            Rule64::Margins(metric, params) => pairs64(self.x, self.labels, metric, params, visit),
            Rule64::Ms(eps) => ms64(self.x, self.labels, eps, visit),
        }
        Ok(())
    }
}
