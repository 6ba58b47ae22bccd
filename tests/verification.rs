//! Verification metrics: the fast kernel against its twin and against closed forms.

use proptest::prelude::*;
use triplet_kernels::{
    scalar, verification_metrics, verification_metrics_workspace_len, Error, Score,
    VerificationMetrics,
};

fn run(
    genuine: &[f32],
    impostor: &[f32],
    score: Score,
    fars: &[f64],
    fast: bool,
) -> Result<(VerificationMetrics, Vec<f64>), Error> {
    let mut tar = vec![f64::NAN; fars.len()];
    let mut ws = vec![f32::NAN; verification_metrics_workspace_len(genuine.len(), impostor.len())];
    let m = if fast {
        verification_metrics(genuine, impostor, score, fars, &mut tar, &mut ws)
    } else {
        scalar::verification_metrics(genuine, impostor, score, fars, &mut tar, &mut ws)
    }?;
    Ok((m, tar))
}

#[test]
fn separated_and_identical_distributions() {
    let genuine = [0.9_f32, 0.8, 0.7];
    let impostor = [0.1_f32, 0.2];
    for fast in [true, false] {
        let (m, tar) = run(&genuine, &impostor, Score::Similarity, &[0.0, 1.0], fast).unwrap();
        assert_eq!(
            (m.roc_auc, m.eer, tar.as_slice()),
            (1.0, 0.0, &[1.0, 1.0][..])
        );
        assert_eq!(m.eer_threshold, 0.7);
        assert_eq!((m.genuine, m.impostor), (3, 2));
        // The same scores as distances: everything reversed.
        let (m, tar) = run(&genuine, &impostor, Score::Distance, &[0.0], fast).unwrap();
        assert_eq!((m.roc_auc, m.eer, tar[0]), (0.0, 1.0, 0.0));
        // Identical scores: every pair a tie.
        let (m, tar) = run(&[0.5; 4], &[0.5; 6], Score::Similarity, &[0.5, 1.0], fast).unwrap();
        assert_eq!((m.roc_auc, tar.as_slice()), (0.5, &[0.0, 1.0][..]));
        assert_eq!((m.eer, m.eer_threshold), (0.5, 0.5));
    }
}

#[test]
fn errors_in_documented_order() {
    let s = Score::Similarity;
    let e = |g: &[f32], i: &[f32], f: &[f64], t: usize, w: usize| {
        let mut tar = vec![0.0; t];
        let mut ws = vec![0.0; w];
        let a = verification_metrics(g, i, s, f, &mut tar, &mut ws).map(|_| ());
        let b = scalar::verification_metrics(g, i, s, f, &mut tar, &mut ws).map(|_| ());
        assert_eq!(a, b);
        a
    };
    let empty = |buffer| {
        Err(Error::LengthMismatch {
            buffer,
            expected: 1,
            actual: 0,
        })
    };
    assert_eq!(e(&[], &[1.0], &[], 0, 9), empty("genuine"));
    assert_eq!(e(&[1.0], &[], &[], 0, 9), empty("impostor"));
    assert_eq!(
        e(&[1.0], &[1.0], &[0.1], 2, 9),
        Err(Error::LengthMismatch {
            buffer: "tar_at_far",
            expected: 1,
            actual: 2
        })
    );
    for bad in [-0.1, 1.5, f64::NAN] {
        assert!(matches!(
            e(&[1.0], &[1.0], &[bad], 1, 9),
            Err(Error::InvalidParameter {
                name: "far_targets",
                ..
            })
        ));
    }
    assert_eq!(
        e(&[1.0, f32::NAN], &[1.0], &[], 0, 9),
        Err(Error::NonFinite {
            buffer: "genuine",
            row: 1,
            col: 0,
        })
    );
    assert_eq!(
        e(&[1.0], &[f32::INFINITY], &[], 0, 9),
        Err(Error::NonFinite {
            buffer: "impostor",
            row: 0,
            col: 0,
        })
    );
    assert_eq!(
        e(&[1.0], &[1.0, 2.0], &[], 0, 2),
        Err(Error::WorkspaceTooSmall {
            required: 5,
            actual: 2
        })
    );
}

/// Scores drawn from a few levels, so ties are common.
fn scores(max: usize) -> impl Strategy<Value = Vec<f32>> {
    proptest::collection::vec((0u8..12).prop_map(|v| f32::from(v) * 0.125 - 0.5), 1..max)
}

proptest! {
    #[test]
    fn fast_equals_twin(
        genuine in scores(60),
        impostor in scores(200),
        fars in proptest::collection::vec(0.0f64..=1.0, 0..4),
        distance in any::<bool>(),
    ) {
        let score = if distance { Score::Distance } else { Score::Similarity };
        let (a, ta) = run(&genuine, &impostor, score, &fars, true).unwrap();
        let (b, tb) = run(&genuine, &impostor, score, &fars, false).unwrap();
        prop_assert_eq!(a, b);
        prop_assert_eq!(ta, tb);
        // Closed-form checks of the definitions.
        let g = genuine.len() as f64;
        let sign = if distance { -1.0 } else { 1.0 };
        let mut wins = 0.0;
        for &x in &genuine {
            for &y in &impostor {
                let (x, y) = (sign * x, sign * y);
                wins += if x > y { 1.0 } else if x == y { 0.5 } else { 0.0 };
            }
        }
        prop_assert_eq!(a.roc_auc, wins / (g * impostor.len() as f64));
        prop_assert!((0.0..=1.0).contains(&a.eer));
    }
}
