//! Scalar twin of [`crate::verification`]: every rate by direct counting over the pairs.

use crate::error::Error;
use crate::validate::check_workspace;
use crate::verification::{
    allowed_false_accepts, check_verification, interpolate_eer, verification_metrics_workspace_len,
    Score, VerificationMetrics,
};

/// `(genuine accepted, impostors accepted)` when accepting scores at least as alike as
/// `t` (`strict`: strictly more alike), on similarities `sign * score`.
fn accepted(genuine: &[f32], impostor: &[f32], sign: f32, t: f32, strict: bool) -> (usize, usize) {
    let pass = |&s: &f32| {
        let v = sign * s;
        if strict {
            v > t
        } else {
            v >= t
        }
    };
    (
        genuine.iter().filter(|s| pass(s)).count(),
        impostor.iter().filter(|s| pass(s)).count(),
    )
}

/// Scalar twin of [`crate::verification_metrics`]: the AUC by comparing every genuine
/// score with every impostor score, TAR at FAR from the `(k + 1)`-th most alike impostor
/// found by counting, and the EER by evaluating FAR and FRR at every distinct score.
/// `O(G I + (G + I)^2)` time, no sorting.
///
/// # Errors
///
/// Exactly those of [`crate::verification_metrics`].
///
/// # Example
///
/// ```
/// use triplet_kernels::{scalar, verification_metrics_workspace_len, Score};
/// let mut tar = [0.0_f64; 1];
/// let mut ws = [0.0_f32; verification_metrics_workspace_len(2, 2)];
/// let m = scalar::verification_metrics(&[0.2, 0.4], &[0.9, 1.5], Score::Distance, &[0.0], &mut tar, &mut ws)?;
/// assert_eq!((m.roc_auc, m.eer, tar[0]), (1.0, 0.0, 1.0));
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
    let mut pairs2 = 0_u128;
    for &x in genuine {
        for &y in impostor {
            let (x, y) = (sign * x, sign * y);
            pairs2 += if x > y { 2 } else { u128::from(x == y) };
        }
    }
    let roc_auc = pairs2 as f64 / (2.0 * g as f64 * i as f64);
    for (t, &f) in tar_at_far.iter_mut().zip(far_targets) {
        let k = allowed_false_accepts(f, i);
        // The (k + 1)-th most alike impostor: `v` with at most k impostors strictly more
        // alike and at least k + 1 at least as alike.
        let cut = impostor.iter().map(|&s| sign * s).find(|&v| {
            let (_, gt) = accepted(&[], impostor, sign, v, true);
            let (_, ge) = accepted(&[], impostor, sign, v, false);
            gt <= k && ge > k
        });
        *t = match cut {
            None => 1.0,
            Some(c) => accepted(genuine, &[], sign, c, true).0 as f64 / g as f64,
        };
    }
    // Distinct thresholds from most to least alike: each the largest score below the last.
    let mut prev = (0.0_f64, 1.0_f64);
    let mut last = f32::INFINITY;
    let mut eer = 0.0;
    let mut eer_threshold = f32::INFINITY;
    loop {
        let next = genuine
            .iter()
            .chain(impostor)
            .map(|&s| sign * s)
            .filter(|&v| v < last)
            .fold(f32::NEG_INFINITY, f32::max);
        if next == f32::NEG_INFINITY {
            break;
        }
        let (a, b) = accepted(genuine, impostor, sign, next, false);
        let cur = (b as f64 / i as f64, 1.0 - a as f64 / g as f64);
        if cur.0 >= cur.1 {
            eer = interpolate_eer(prev, cur);
            eer_threshold = sign * next;
            break;
        }
        prev = cur;
        last = next;
    }
    Ok(VerificationMetrics {
        roc_auc,
        eer,
        eer_threshold,
        genuine: g,
        impostor: i,
    })
}
