//! Every SIMD backend the machine supports, forced in turn with `set_backend`, held to the
//! scalar twins. The distance kernels: one property suite (the `backend_suite!` macro,
//! instantiated per backend; a backend the CPU lacks is skipped with a note on stderr).
//! Every other kernel: `backends/kernels.rs`, whose tests run each check under every
//! backend `Backend::available()` lists. `every_listed_backend_is_exercised` guards both.
//!
//! Tolerances are the documented bounds of `src/distance.rs` (module docs, "Numerics"),
//! plus the twin's own rounding to `f32`; nothing looser.

use proptest::prelude::*;
use std::sync::{Mutex, MutexGuard};
use triplet_kernels::{
    cross_distances, cross_distances_rows, cross_distances_rows_workspace_len,
    cross_distances_workspace_len, l2_normalize, l2_normalize_backward, pairwise_distances,
    pairwise_distances_rows, pairwise_distances_rows_workspace_len,
    pairwise_distances_workspace_len, reset_backend, row_norms, scalar, set_backend, Backend,
    DistanceMode, Matrix, Metric,
};

const MODES: [DistanceMode; 2] = [DistanceMode::Gram, DistanceMode::Direct];

/// The backend is process-wide: tests that set it take this lock for their whole body.
static BACKEND: Mutex<()> = Mutex::new(());

/// Holds the lock with `backend` forced; resets to automatic on drop (also on panic).
struct Forced(#[allow(dead_code)] MutexGuard<'static, ()>);

impl Drop for Forced {
    fn drop(&mut self) {
        reset_backend();
    }
}

/// Forces `backend`, or returns `None` (with a note) when this CPU lacks it. A backend
/// that `Backend::available()` lists is never skipped: refusing it fails the test.
fn force(backend: Backend) -> Option<Forced> {
    let guard = BACKEND
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Err(e) = set_backend(backend) {
        assert!(
            !Backend::available().contains(&backend),
            "{} is listed as available but refused: {e}",
            backend.name()
        );
        eprintln!(
            "skipping {}: not available on this CPU/build",
            backend.name()
        );
        return None;
    }
    assert_eq!(Backend::active(), backend);
    Some(Forced(guard))
}

/// Runs `check` under each backend `Backend::available()` lists, in turn, holding the
/// lock; a failure names the backend. Fails unless every listed backend ran.
fn on_every_backend(what: &str, mut check: impl FnMut(Backend)) {
    let mut ran = Vec::new();
    for &backend in Backend::available() {
        let Some(_forced) = force(backend) else {
            unreachable!("force fails on a listed backend")
        };
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| check(backend)));
        if let Err(panic) = outcome {
            eprintln!("{what}: failed under the {} backend", backend.name());
            std::panic::resume_unwind(panic);
        }
        assert_eq!(Backend::active(), backend, "{what}: the backend changed");
        ran.push(backend);
    }
    assert_eq!(ran, Backend::available(), "{what}: not every backend ran");
}

use testkit::bounds::distance_tolerance;
use testkit::rows::sq_norm;
use testkit::strategies::{int_value, matrix, value};
use testkit::{bits, METRICS, U};

#[path = "backends/kernels.rs"]
mod kernels;

/// Fast pairwise matrix (`mode`, through the row-block entry point over `0..n` for
/// `Direct`) against the twin; symmetric bit for bit, exact zero diagonal.
fn check_pairwise(x: Matrix<'_>, metric: Metric, mode: DistanceMode, exact: bool) -> Vec<f32> {
    let (n, d) = (x.rows(), x.dim());
    let mut fast = vec![f32::NAN; n * n];
    let mut ws = vec![f32::NAN; pairwise_distances_workspace_len(n, d)];
    match mode {
        DistanceMode::Gram => pairwise_distances(x, metric, &mut fast, &mut ws).unwrap(),
        DistanceMode::Direct => {
            pairwise_distances_rows(x, 0..n, metric, mode, &mut fast, &mut ws).unwrap();
        }
        _ => unreachable!("a variant this test does not know"),
    }
    // Dirty workspace and output: same bits.
    let mut again = vec![-7.0_f32; n * n];
    ws.fill(f32::INFINITY);
    pairwise_distances_rows(x, 0..n, metric, mode, &mut again, &mut ws).unwrap();
    assert_eq!(
        bits(&fast),
        bits(&again),
        "{metric:?} {mode:?}: not reproducible"
    );
    let mut slow = vec![f32::NAN; n * n];
    scalar::pairwise_distances(x, metric, &mut slow, &mut ws).unwrap();
    for i in 0..n {
        // The formula's value, as the twin's: 0, or 1 for a zero row under cosine.
        assert_eq!(
            fast[i * n + i].to_bits(),
            slow[i * n + i].to_bits(),
            "diagonal"
        );
        for j in 0..n {
            assert_eq!(
                fast[i * n + j].to_bits(),
                fast[j * n + i].to_bits(),
                "symmetry"
            );
        }
    }
    compare(x, x, metric, mode, exact, &fast, &slow);
    fast
}

fn check_cross(
    x: Matrix<'_>,
    y: Matrix<'_>,
    metric: Metric,
    mode: DistanceMode,
    exact: bool,
) -> Vec<f32> {
    let (m, n, d) = (x.rows(), y.rows(), x.dim());
    let mut fast = vec![f32::NAN; m * n];
    let mut ws = vec![f32::NAN; cross_distances_workspace_len(m, n, d)];
    match mode {
        DistanceMode::Gram => cross_distances(x, y, metric, &mut fast, &mut ws).unwrap(),
        DistanceMode::Direct => {
            cross_distances_rows(x, y, 0..m, metric, mode, &mut fast, &mut ws).unwrap();
        }
        _ => unreachable!("a variant this test does not know"),
    }
    let mut slow = vec![f32::NAN; m * n];
    ws.fill(f32::NAN);
    scalar::cross_distances(x, y, metric, &mut slow, &mut ws).unwrap();
    compare(x, y, metric, mode, exact, &fast, &slow);
    fast
}

fn compare(
    x: Matrix<'_>,
    y: Matrix<'_>,
    metric: Metric,
    mode: DistanceMode,
    exact: bool,
    fast: &[f32],
    slow: &[f32],
) {
    let n = y.rows();
    for (i, a) in x.row_iter().enumerate() {
        for (j, b) in y.row_iter().enumerate() {
            let (f, s) = (fast[i * n + j], slow[i * n + j]);
            if exact && metric == Metric::SquaredEuclidean {
                assert_eq!(f, s, "{mode:?} ({i},{j}) on integers");
                continue;
            }
            let tol = distance_tolerance(metric, mode, a, b);
            assert!(
                (f64::from(f) - f64::from(s)).abs() <= tol,
                "{metric:?} {mode:?} ({i},{j}): fast {f} scalar {s} tol {tol:e}"
            );
        }
    }
}

/// Cuts `0..n` at the given fractions (sorted, deduplicated) into row blocks.
fn blocks(n: usize, cuts: &[f64]) -> Vec<std::ops::Range<usize>> {
    let mut at: Vec<usize> = cuts.iter().map(|c| (c * n as f64) as usize).collect();
    at.push(0);
    at.push(n);
    at.sort_unstable();
    at.dedup();
    at.windows(2).map(|w| w[0]..w[1]).collect()
}

/// Row blocks that partition `0..n` reproduce the whole matrix bit for bit.
fn check_pairwise_blocks(x: Matrix<'_>, metric: Metric, mode: DistanceMode, cuts: &[f64]) {
    let (n, d) = (x.rows(), x.dim());
    let mut whole = vec![f32::NAN; n * n];
    let mut ws = vec![f32::NAN; pairwise_distances_rows_workspace_len(n, n, d)];
    pairwise_distances_rows(x, 0..n, metric, mode, &mut whole, &mut ws).unwrap();
    let mut pieced = vec![f32::NAN; n * n];
    for r in blocks(n, cuts) {
        let mut ws = vec![f32::NAN; pairwise_distances_rows_workspace_len(n, r.len(), d)];
        let out = &mut pieced[r.start * n..r.end * n];
        pairwise_distances_rows(x, r, metric, mode, out, &mut ws).unwrap();
    }
    assert_eq!(bits(&whole), bits(&pieced), "{metric:?} {mode:?} blocks");
}

fn check_cross_blocks(
    x: Matrix<'_>,
    y: Matrix<'_>,
    metric: Metric,
    mode: DistanceMode,
    cuts: &[f64],
) {
    let (m, n, d) = (x.rows(), y.rows(), x.dim());
    let mut whole = vec![f32::NAN; m * n];
    let mut ws = vec![f32::NAN; cross_distances_rows_workspace_len(m, n, d)];
    cross_distances_rows(x, y, 0..m, metric, mode, &mut whole, &mut ws).unwrap();
    let mut pieced = vec![f32::NAN; m * n];
    for r in blocks(m, cuts) {
        let mut ws = vec![f32::NAN; cross_distances_rows_workspace_len(r.len(), n, d)];
        let out = &mut pieced[r.start * n..r.end * n];
        cross_distances_rows(x, y, r, metric, mode, out, &mut ws).unwrap();
    }
    assert_eq!(bits(&whole), bits(&pieced), "{metric:?} {mode:?} blocks");
}

fn check_row_kernels(x: Matrix<'_>) {
    let (n, d) = (x.rows(), x.dim());
    let (mut f, mut s) = (vec![f32::NAN; n], vec![f32::NAN; n]);
    row_norms(x, &mut f).unwrap();
    scalar::row_norms(x, &mut s).unwrap();
    for (a, b) in f.iter().zip(&s) {
        assert!(
            (f64::from(*a) - f64::from(*b)).abs() <= (d as f64 / 8.0 + 11.0) * U * f64::from(*b)
        );
    }
    let (mut f, mut s) = (vec![f32::NAN; n * d], vec![f32::NAN; n * d]);
    l2_normalize(x, &mut f).unwrap();
    scalar::l2_normalize(x, &mut s).unwrap();
    for (a, b) in f.iter().zip(&s) {
        assert!((f64::from(*a) - f64::from(*b)).abs() <= (d as f64 / 8.0 + 13.0) * U);
    }
    let g: Vec<f32> = (0..n * d)
        .map(|i| ((i * 7 % 11) as f32 - 5.0) / 5.0)
        .collect();
    let (mut f, mut s) = (vec![f32::NAN; n * d], vec![f32::NAN; n * d]);
    l2_normalize_backward(x, &g, &mut f).unwrap();
    scalar::l2_normalize_backward(x, &g, &mut s).unwrap();
    for (i, row) in x.row_iter().enumerate() {
        let r = sq_norm(row).sqrt();
        let gn: f64 = g[i * d..(i + 1) * d]
            .iter()
            .map(|&v| f64::from(v).abs())
            .sum();
        let tol = (2.0 * d as f64 / 8.0 + 21.0) * U * gn / r;
        for k in i * d..(i + 1) * d {
            assert!(
                (f64::from(f[k]) - f64::from(s[k])).abs() <= tol,
                "{} vs {}",
                f[k],
                s[k]
            );
        }
    }
}

macro_rules! backend_suite {
    ($name:ident, $backend:expr) => {
        mod $name {
            use super::*;

            proptest! {
                #![proptest_config(ProptestConfig::with_cases(32))]

                #[test]
                fn pairwise_matches_scalar(
                    (n, d, data) in matrix(1usize..=33, 1usize..=67, value()),
                    cuts in proptest::collection::vec(0.0_f64..1.0, 0..4),
                ) {
                    let Some(_b) = force($backend) else { return Ok(()) };
                    let x = Matrix::new(&data, n, d).unwrap();
                    for metric in METRICS {
                        for mode in MODES {
                            check_pairwise(x, metric, mode, false);
                            check_pairwise_blocks(x, metric, mode, &cuts);
                        }
                    }
                }

                #[test]
                fn pairwise_integers_exact((n, d, data) in matrix(1usize..=33, 1usize..=67, int_value())) {
                    let Some(_b) = force($backend) else { return Ok(()) };
                    let x = Matrix::new(&data, n, d).unwrap();
                    for metric in METRICS {
                        for mode in MODES {
                            check_pairwise(x, metric, mode, true);
                        }
                    }
                }

                #[test]
                fn cross_matches_scalar(
                    (m, d, xd) in matrix(1usize..=33, 1usize..=67, value()),
                    n in 1usize..=33,
                    seed in proptest::collection::vec(value(), 33 * 67),
                    cuts in proptest::collection::vec(0.0_f64..1.0, 0..4),
                ) {
                    let Some(_b) = force($backend) else { return Ok(()) };
                    let x = Matrix::new(&xd, m, d).unwrap();
                    let y = Matrix::new(&seed[..n * d], n, d).unwrap();
                    for metric in METRICS {
                        for mode in MODES {
                            check_cross(x, y, metric, mode, false);
                            check_cross_blocks(x, y, metric, mode, &cuts);
                        }
                    }
                }

                #[test]
                fn cross_integers_exact(
                    (m, d, xd) in matrix(1usize..=33, 1usize..=67, int_value()),
                    n in 1usize..=33,
                    seed in proptest::collection::vec(int_value(), 33 * 67),
                ) {
                    let Some(_b) = force($backend) else { return Ok(()) };
                    let x = Matrix::new(&xd, m, d).unwrap();
                    let y = Matrix::new(&seed[..n * d], n, d).unwrap();
                    for metric in METRICS {
                        for mode in MODES {
                            check_cross(x, y, metric, mode, true);
                        }
                    }
                }

                #[test]
                fn equal_rows_are_at_distance_zero(
                    (n, d, data) in matrix(1usize..=20, 1usize..=67, value()),
                ) {
                    let Some(_b) = force($backend) else { return Ok(()) };
                    // Queries are the references: every diagonal entry is exactly 0.
                    let x = Matrix::new(&data, n, d).unwrap();
                    for metric in [Metric::SquaredEuclidean, Metric::Euclidean] {
                        for mode in MODES {
                            let out = check_cross(x, x, metric, mode, false);
                            for i in 0..n {
                                prop_assert_eq!(out[i * n + i].to_bits(), 0);
                            }
                        }
                    }
                }

                #[test]
                fn row_kernels_match_scalar((n, d, data) in matrix(1usize..=33, 1usize..=67, value())) {
                    let Some(_b) = force($backend) else { return Ok(()) };
                    check_row_kernels(Matrix::new(&data, n, d).unwrap());
                }
            }

            #[test]
            fn one_large_case() {
                let Some(_b) = force($backend) else { return };
                let (n, m, d) = (130, 97, 515);
                let mut state = 0x2545_f491_u32;
                let mut next = move || {
                    state ^= state << 13;
                    state ^= state >> 17;
                    state ^= state << 5;
                    (state as f32 / u32::MAX as f32) * 4.0 - 2.0
                };
                let xd: Vec<f32> = (0..n * d).map(|_| next()).collect();
                let yd: Vec<f32> = (0..m * d).map(|_| next()).collect();
                let x = Matrix::new(&xd, n, d).unwrap();
                let y = Matrix::new(&yd, m, d).unwrap();
                for metric in METRICS {
                    for mode in MODES {
                        check_pairwise(x, metric, mode, false);
                        check_cross(x, y, metric, mode, false);
                        check_pairwise_blocks(x, metric, mode, &[0.3, 0.61]);
                        check_cross_blocks(x, y, metric, mode, &[0.5]);
                    }
                }
                check_row_kernels(x);
            }

            #[test]
            fn nearly_coincident_points() {
                let Some(_b) = force($backend) else { return };
                // Points at distance ~1e-3 from each other, ~1e2 from the origin: the Gram
                // form is within its (norm-relative) bound, the direct form within its
                // (distance-relative) one, i.e. accurate to a few ulps.
                let d = 64;
                let base: Vec<f32> = (0..d).map(|k| 10.0 + (k % 7) as f32).collect();
                let mut data = Vec::new();
                for r in 0..5 {
                    data.extend(base.iter().enumerate().map(|(k, &v)| {
                        v + 1e-4 * ((r * 31 + k * 17) % 13) as f32
                    }));
                }
                let x = Matrix::new(&data, 5, d).unwrap();
                for metric in [Metric::SquaredEuclidean, Metric::Euclidean] {
                    let exact = check_pairwise(x, metric, DistanceMode::Direct, false);
                    let mut slow = vec![0.0; 25];
                    let mut ws = vec![0.0; pairwise_distances_workspace_len(5, d)];
                    scalar::pairwise_distances(x, metric, &mut slow, &mut ws).unwrap();
                    for (f, s) in exact.iter().zip(&slow) {
                        assert!((f - s).abs() <= 1e-4 * s.abs(), "direct {f} vs {s}");
                    }
                    check_pairwise(x, metric, DistanceMode::Gram, false);
                }
            }
        }
    };
}

backend_suite!(portable, Backend::Portable);
backend_suite!(avx2, Backend::Avx2);
backend_suite!(avx512, Backend::Avx512);

/// The backends with a `backend_suite!` instance above.
const SUITES: [Backend; 3] = [Backend::Portable, Backend::Avx2, Backend::Avx512];

/// No backend the CPU runs goes untested: every backend `Backend::available()` lists has
/// a distance suite (whose `force` fails rather than skips a listed backend) and is run by
/// `on_every_backend`, and the list holds every x86 backend the CPU reports (so a detection
/// fault cannot shrink the suites to the portable path unnoticed).
#[test]
fn every_listed_backend_is_exercised() {
    let available = Backend::available();
    for b in available {
        assert!(SUITES.contains(b), "{} has no backend_suite!", b.name());
    }
    #[cfg(all(target_arch = "x86_64", not(feature = "portable-only")))]
    {
        let avx2 = is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma");
        let avx512 = is_x86_feature_detected!("avx512f");
        assert_eq!(
            available.contains(&Backend::Avx2),
            avx2,
            "AVX2 + FMA detection"
        );
        assert_eq!(
            available.contains(&Backend::Avx512),
            avx512,
            "AVX-512F detection"
        );
    }
    let mut seen = Vec::new();
    on_every_backend("guard", |b| {
        assert_eq!(Backend::active(), b);
        seen.push(b);
    });
    assert_eq!(seen, available);
}

#[test]
fn backend_list_is_consistent() {
    let _lock = BACKEND
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let available = Backend::available();
    assert_eq!(available.first(), Some(&Backend::Portable));
    assert!(available.contains(&Backend::best()));
    for b in [Backend::Portable, Backend::Avx2, Backend::Avx512] {
        assert_eq!(b.is_available(), available.contains(&b), "{}", b.name());
        if !b.is_available() {
            // Refused, choice unchanged.
            assert!(set_backend(b).is_err());
            assert_eq!(Backend::active(), Backend::best());
        }
    }
    #[cfg(feature = "portable-only")]
    assert_eq!(available, &[Backend::Portable]);
    reset_backend();
    assert_eq!(Backend::active(), Backend::best());
}

/// Outputs large enough to leave the cache are cut into tiles that start on the output's
/// cache lines, so where the buffer starts changes the cut: finite values must not change.
/// Every backend, every metric and mode: a pairwise matrix, a block of its rows with
/// columns on both sides, and a cross matrix, each written at offsets of a line that give
/// distinct cuts for 8 and 16 lanes, gives the bits of the aligned call (and the whole
/// matrix's rows for the block). Finite data: a NaN's payload may depend on the cut.
/// Few offsets: the outputs are large, and the suite also runs unoptimised and under a
/// sanitizer.
#[test]
fn large_outputs_do_not_depend_on_where_they_start() {
    let (n, d) = (1040, 5);
    let data = kernels::values(n * d, 0x9e37_79b9, false);
    let x = Matrix::new(&data, n, d).unwrap();
    let m = 64;
    let xs = Matrix::new(&data[..m * d], m, d).unwrap();
    // 64 x 16640: the rows of `x` sixteen times over.
    let wide: Vec<f32> = data.repeat(16);
    let yw = Matrix::new(&wide, n * 16, d).unwrap();
    let rows = 13..1030;
    let mut buf = vec![f32::NAN; (n * n).max(m * n * 16) + 32];
    // Each call gets exactly the workspace its query asks for.
    let mut ws = vec![f32::NAN; pairwise_distances_workspace_len(n, d)];
    let mut bws = vec![f32::NAN; pairwise_distances_rows_workspace_len(n, rows.len(), d)];
    let mut cws = vec![f32::NAN; cross_distances_rows_workspace_len(m, n * 16, d)];
    let base = buf.as_ptr().align_offset(64);
    on_every_backend("large outputs", |backend| {
        let cases = [
            (Metric::SquaredEuclidean, DistanceMode::Gram),
            (Metric::Euclidean, DistanceMode::Direct),
            (Metric::Cosine, DistanceMode::Gram),
        ];
        for (metric, mode) in cases {
            let mut whole = Vec::new();
            let mut block = Vec::new();
            let mut cross = Vec::new();
            // Four distinct cuts for 16 lanes and for 8.
            for off in [0, 3, 4, 13] {
                let at = base + off;
                let out = &mut buf[at..at + n * n];
                out.fill(f32::NAN);
                pairwise_distances_rows(x, 0..n, metric, mode, out, &mut ws).unwrap();
                let got = bits(out);
                let len = rows.len() * n;
                let out = &mut buf[at..at + len];
                out.fill(f32::NAN);
                pairwise_distances_rows(x, rows.clone(), metric, mode, out, &mut bws).unwrap();
                let got_block = bits(out);
                let out = &mut buf[at..at + m * n * 16];
                out.fill(f32::NAN);
                cross_distances_rows(xs, yw, 0..m, metric, mode, out, &mut cws).unwrap();
                let got_cross = bits(out);
                if off == 0 {
                    assert_eq!(
                        got_block,
                        got[rows.start * n..rows.end * n],
                        "{backend:?} {metric:?} {mode:?}: block vs whole"
                    );
                    (whole, block, cross) = (got, got_block, got_cross);
                } else {
                    let what = format!("{backend:?} {metric:?} {mode:?} offset {off}");
                    assert!(got == whole, "{what}: pairwise");
                    assert!(got_block == block, "{what}: block of rows");
                    assert!(got_cross == cross, "{what}: cross");
                }
            }
        }
    });
}

/// The matrix is symmetric bit for bit even where two rows hold NaNs of different
/// payloads (an entry's NaN may carry either row's payload, but `(i, j)` and `(j, i)`
/// carry the same one): rows in one diagonal tile and in different tiles, every backend,
/// metric and mode.
#[test]
fn nan_payloads_stay_symmetric() {
    let (n, d) = (40, 3);
    let mut data: Vec<f32> = (0..n * d).map(|i| (i % 7) as f32 - 3.0).collect();
    for (row, payload) in [(2, 1_u32), (5, 2), (9, 3), (33, 4)] {
        data[row * d + 1] = f32::from_bits(0x7fc0_0000 | payload);
        data[row * d + 2] = f32::from_bits(0xffc0_0000 | (payload << 4));
    }
    let x = Matrix::new(&data, n, d).unwrap();
    let mut out = vec![0.0_f32; n * n];
    let mut ws = vec![0.0_f32; pairwise_distances_workspace_len(n, d)];
    on_every_backend("NaN payloads", |backend| {
        for metric in METRICS {
            for mode in MODES {
                pairwise_distances_rows(x, 0..n, metric, mode, &mut out, &mut ws).unwrap();
                for i in 0..n {
                    for j in 0..i {
                        assert_eq!(
                            out[i * n + j].to_bits(),
                            out[j * n + i].to_bits(),
                            "{backend:?} {metric:?} {mode:?} ({i}, {j})"
                        );
                    }
                }
            }
        }
    });
}
