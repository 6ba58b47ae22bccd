//! Verification metrics from pair scores: ROC AUC, equal error rate and TAR at given FARs,
//! the figures face-recognition benchmarks report.
//!
//! A verification system compares two embeddings and accepts the pair as "same identity"
//! when their score passes a threshold. Given the scores of **genuine** pairs (same
//! identity) and **impostor** pairs (different identities), with [`Score::Similarity`]
//! (higher is more alike: cosine similarity, inner product) or [`Score::Distance`] (lower
//! is more alike: any [`crate::Metric`]), and a pair accepted when it is at least as alike
//! as the threshold:
//!
//! - `FAR(t)` (false accept rate): the fraction of impostor pairs accepted;
//! - `TAR(t)` (true accept rate): the fraction of genuine pairs accepted, `FRR = 1 - TAR`;
//! - **TAR at FAR `f`**: the largest TAR of a threshold whose FAR is at most `f`. With `I`
//!   impostor pairs, at most `k = floor(f I)` of them may be accepted, so the threshold
//!   accepts exactly the pairs strictly more alike than the `(k + 1)`-th most alike
//!   impostor (every pair when `k >= I`). Ties with that impostor are rejected: a
//!   threshold cannot separate equal scores, and accepting them could exceed `f`;
//! - **EER** (equal error rate): where the FAR and FRR curves cross. The thresholds are
//!   swept over the distinct scores, from accepting nothing (`FAR = 0`, `FRR = 1`) to
//!   accepting everything; the EER is linearly interpolated between the last point with
//!   `FAR < FRR` and the first with `FAR >= FRR`, and `eer_threshold` is that first
//!   point's threshold (accept every pair at least as alike as it);
//! - **ROC AUC**: the probability that a random genuine pair is more alike than a random
//!   impostor pair, ties counting one half (the Mann-Whitney statistic), which equals the
//!   area under the ROC curve of `(FAR, TAR)` points.
//!
//! Counts are exact integers and the rates are their quotients in `f64`, so the fast
//! kernel (two sorts and a merge, `O((G + I) log(G + I))`) and its scalar twin (pair
//! counting, `O(G I + (G + I)^2)`) agree to the last bit except for the EER's
//! interpolation, within a few `f64` roundings.

use crate::error::Error;
use crate::validate::{check_finite, check_len, check_workspace};

/// What a pair score means.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Score {
    /// Higher is more alike (cosine similarity, inner product).
    #[default]
    Similarity,
    /// Lower is more alike (a distance, e.g. from [`crate::cross_distances`]).
    Distance,
}

/// The metrics [`verification_metrics`] returns (TAR at each requested FAR goes to its
/// `tar_at_far` buffer).
#[derive(Clone, Copy, Debug, PartialEq)]
#[non_exhaustive]
pub struct VerificationMetrics {
    /// Area under the ROC curve: `P(genuine more alike than impostor)`, ties one half.
    pub roc_auc: f64,
    /// Equal error rate, interpolated where FAR and FRR cross.
    pub eer: f64,
    /// The score threshold at (or just past) the crossing: accept pairs at least as
    /// alike as it.
    pub eer_threshold: f32,
    /// Number of genuine scores.
    pub genuine: usize,
    /// Number of impostor scores.
    pub impostor: usize,
}

/// Workspace elements [`verification_metrics`] needs: `genuine + impostor + max(genuine,
/// impostor)` (a sorted copy of the scores and the radix sort's scratch). Saturates
/// instead of overflowing.
pub const fn verification_metrics_workspace_len(genuine: usize, impostor: usize) -> usize {
    let larger = if genuine > impostor {
        genuine
    } else {
        impostor
    };
    genuine.saturating_add(impostor).saturating_add(larger)
}

/// The order-preserving map of finite `f32` to `u32`, inverted so that ascending keys are
/// descending scores (`-0.0` taken as `+0.0`).
#[inline]
fn descending_key(v: f32) -> u32 {
    let b = (v + 0.0).to_bits();
    let ascending = if b >> 31 == 1 { !b } else { b | 0x8000_0000 };
    !ascending
}

/// Inverse of [`descending_key`].
#[inline]
fn score_of_key(k: u32) -> f32 {
    let ascending = !k;
    if ascending >> 31 == 1 {
        f32::from_bits(ascending & 0x7fff_ffff)
    } else {
        f32::from_bits(!ascending)
    }
}

/// Sorts `data` ascending: a least-significant-digit radix sort, four passes of 8 bits
/// through `scratch` (at least as long as `data`). Stable, `O(n)`, no comparisons and no
/// panic path (a short `scratch` leaves `data` unsorted; callers size it).
pub(crate) fn radix_sort(data: &mut [u32], scratch: &mut [u32]) {
    let Some(scratch) = scratch.get_mut(..data.len()) else {
        return;
    };
    let (mut src, mut dst) = (data, scratch);
    for shift in [0_u32, 8, 16, 24] {
        let mut start = [0_usize; 256];
        for &k in src.iter() {
            let c = &mut start[((k >> shift) & 0xff) as usize];
            *c = c.wrapping_add(1);
        }
        let mut sum = 0_usize;
        for c in &mut start {
            let count = *c;
            *c = sum;
            sum = sum.wrapping_add(count);
        }
        for &k in src.iter() {
            let c = &mut start[((k >> shift) & 0xff) as usize];
            if let Some(d) = dst.get_mut(*c) {
                *d = k;
            }
            *c = c.wrapping_add(1);
        }
        core::mem::swap(&mut src, &mut dst);
    }
}

/// Copies the similarities `sign * scores` into `out`, sorted from most to least alike.
fn sorted_similarities(scores: &[f32], sign: f32, out: &mut [u32], scratch: &mut [u32]) {
    for (o, &s) in out.iter_mut().zip(scores) {
        *o = descending_key(sign * s);
    }
    radix_sort(out, scratch);
    for o in out.iter_mut() {
        *o = score_of_key(*o).to_bits();
    }
}

/// Validates the arguments of [`verification_metrics`] (and its twin) in the documented
/// order.
pub(crate) fn check_verification(
    genuine: &[f32],
    impostor: &[f32],
    far_targets: &[f64],
    tar_at_far: usize,
) -> Result<(), Error> {
    for (buffer, scores) in [("genuine", genuine), ("impostor", impostor)] {
        if scores.is_empty() {
            return Err(Error::LengthMismatch {
                buffer,
                expected: 1,
                actual: 0,
            });
        }
    }
    check_len("tar_at_far", far_targets.len(), tar_at_far)?;
    if far_targets.iter().any(|f| !(0.0..=1.0).contains(f)) {
        return Err(Error::InvalidParameter {
            name: "far_targets",
            expected: "in [0, 1]",
        });
    }
    for (buffer, scores) in [("genuine", genuine), ("impostor", impostor)] {
        check_finite(buffer, scores, 1)?;
    }
    Ok(())
}

/// `k = floor(f * count)`: the number of impostor pairs a FAR of `f` allows.
pub(crate) fn allowed_false_accepts(f: f64, count: usize) -> usize {
    let k = libm::floor(f * count as f64);
    if k >= count as f64 {
        count
    } else {
        k as usize
    }
}

/// The EER from two ROC points bracketing the crossing: `(far0, frr0)` with
/// `far0 < frr0`, `(far1, frr1)` with `far1 >= frr1`.
pub(crate) fn interpolate_eer((far0, frr0): (f64, f64), (far1, frr1): (f64, f64)) -> f64 {
    let (g0, g1) = (frr0 - far0, far1 - frr1);
    let t = g0 / (g0 + g1);
    far0 + t * (far1 - far0)
}

/// Verification metrics of genuine and impostor pair scores: ROC AUC, EER (with its
/// threshold) and TAR at each FAR of `far_targets`, written to `tar_at_far` (see the
/// [module docs](self) for the definitions). Scalar twin:
/// [`crate::scalar::verification_metrics`].
///
/// `workspace` needs [`verification_metrics_workspace_len`]`(genuine.len(),
/// impostor.len())` elements, garbage before and after. No allocation: the scores are
/// copied there and radix-sorted.
///
/// # Errors
///
/// In this order:
/// - [`Error::LengthMismatch`] (`"genuine"` or `"impostor"`, expected 1, actual 0) when
///   either set of scores is empty;
/// - [`Error::LengthMismatch`] (`"tar_at_far"`) when `tar_at_far.len() !=
///   far_targets.len()`;
/// - [`Error::InvalidParameter`] (`"far_targets"`) for a target outside `[0, 1]` or NaN;
/// - [`Error::NonFinite`] (`"genuine"` or `"impostor"`, the score's index as `row`,
///   `col` 0) for a NaN or infinite score;
/// - [`Error::WorkspaceTooSmall`] when the workspace is too short.
///
/// # Numerics
///
/// Every count is exact; TAR, FAR and AUC are one `f64` division (AUC: a half-integer
/// count of pairs over `G I`, exact below `2^52` pairs). The EER adds one interpolation.
///
/// # Example
///
/// ```
/// use triplet_kernels::{verification_metrics, verification_metrics_workspace_len, Score};
/// // Cosine similarities of genuine and impostor pairs.
/// let genuine = [0.9_f32, 0.8, 0.75, 0.4];
/// let impostor = [0.1_f32, 0.3, 0.5, 0.2, 0.0];
/// let mut tar = [0.0_f64; 2];
/// let mut ws = [0.0_f32; verification_metrics_workspace_len(4, 5)];
/// let m = verification_metrics(&genuine, &impostor, Score::Similarity, &[0.0, 0.2], &mut tar, &mut ws)?;
/// // FAR 0: accept above the best impostor (0.5), 3 of 4 genuine pairs; FAR 0.2 allows
/// // one impostor: accept above 0.3, every genuine pair.
/// assert_eq!(tar, [0.75, 1.0]);
/// assert_eq!(m.roc_auc, 19.0 / 20.0);
/// // Accepting >= 0.5: FAR 0.2 < FRR 0.25; accepting >= 0.4: FAR 0.2 >= FRR 0.
/// assert_eq!((m.eer, m.eer_threshold), (0.2, 0.4));
/// # Ok::<(), triplet_kernels::Error>(())
/// ```
#[cfg_attr(feature = "no-panic", no_panic::no_panic)]
pub fn verification_metrics(
    genuine: &[f32],
    impostor: &[f32],
    score: Score,
    far_targets: &[f64],
    tar_at_far: &mut [f64],
    workspace: &mut [f32],
) -> Result<VerificationMetrics, Error> {
    check_verification(genuine, impostor, far_targets, tar_at_far.len())?;
    let (g, i) = (genuine.len(), impostor.len());
    check_workspace(verification_metrics_workspace_len(g, i), workspace.len())?;
    let sign = match score {
        Score::Similarity => 1.0,
        Score::Distance => -1.0,
    };
    // Similarities, sorted from most to least alike (bit patterns in the workspace).
    let Ok(words) = bytemuck::try_cast_slice_mut::<f32, u32>(workspace) else {
        return Err(Error::WorkspaceTooSmall {
            required: verification_metrics_workspace_len(g, i),
            actual: 0,
        });
    };
    let (gw, rest) = words.split_at_mut(g.min(words.len()));
    let (iw, scratch) = rest.split_at_mut(i.min(rest.len()));
    sorted_similarities(genuine, sign, gw, scratch);
    sorted_similarities(impostor, sign, iw, scratch);
    let (gs, is) = workspace.split_at(g.min(workspace.len()));
    let is = is.get(..i).unwrap_or(&[]);

    // TAR at each FAR: accept scores strictly above the (k + 1)-th best impostor.
    for (t, &f) in tar_at_far.iter_mut().zip(far_targets) {
        let k = allowed_false_accepts(f, i);
        *t = match is.get(k) {
            None => 1.0,
            Some(&cut) => gs.iter().take_while(|&&v| v > cut).count() as f64 / g as f64,
        };
    }

    // One sweep over the distinct scores, from most to least alike, for the AUC and the
    // EER. At each score, the `db` impostors there lose to the genuine pairs accepted
    // before it and tie with those accepted at it: twice their Mann-Whitney count is
    // `db (a_before + a_after)`, exact in integers.
    let (mut a, mut b) = (0_usize, 0_usize); // genuine / impostor accepted so far
    let mut pairs2 = 0_u128;
    let mut prev = (0.0_f64, 1.0_f64); // (FAR, FRR) accepting nothing
    let mut eer = None;
    loop {
        let next = match (gs.get(a), is.get(b)) {
            (Some(&x), Some(&y)) => x.max(y),
            (Some(&x), None) => x,
            (None, Some(&y)) => y,
            (None, None) => break,
        };
        let (a0, b0) = (a, b);
        while gs.get(a).is_some_and(|&v| v >= next) {
            a += 1;
        }
        while is.get(b).is_some_and(|&v| v >= next) {
            b += 1;
        }
        pairs2 += (b - b0) as u128 * (a0 + a) as u128;
        if eer.is_none() {
            let cur = (b as f64 / i as f64, 1.0 - a as f64 / g as f64);
            if cur.0 >= cur.1 {
                eer = Some((interpolate_eer(prev, cur), sign * next));
            }
            prev = cur;
        }
    }
    let roc_auc = pairs2 as f64 / (2.0 * g as f64 * i as f64);
    // Accepting everything gives FAR 1 >= FRR 0, so the sweep always crosses.
    let (eer, eer_threshold) = eer.unwrap_or((0.0, f32::INFINITY));
    Ok(VerificationMetrics {
        roc_auc,
        eer,
        eer_threshold,
        genuine: g,
        impostor: i,
    })
}
