//! The edge formats: quantizers against their twins bit for bit (every f16 pattern
//! included), `knn_edge` against `knn_gallery` on the dequantized rows bit for bit, the
//! int8, Hamming and two-stage searches against their twins and across every backend.

use std::sync::{Mutex, MutexGuard};
use triplet_kernels::{
    binary_words_len, dequantize_bf16, dequantize_binary, dequantize_f16, dequantize_i8,
    gallery_norms_len, knn_edge, knn_edge_i8, knn_edge_i8_workspace_len, knn_edge_workspace_len,
    knn_gallery, knn_gallery_workspace_len, knn_hamming, knn_rescored, knn_rescored_workspace_len,
    prepare_edge_gallery, prepare_gallery, quantize_bf16, quantize_binary, quantize_f16,
    quantize_i8, reset_backend, scalar, set_backend, Backend, BinaryMatrix, EdgeFormat,
    EdgeGallery, EdgeMatrix, Error, Matrix, SearchMetric,
};

const METRICS: [SearchMetric; 4] = [
    SearchMetric::SquaredEuclidean,
    SearchMetric::Euclidean,
    SearchMetric::Cosine,
    SearchMetric::InnerProduct,
];

/// The backend is process-wide: tests that set it hold this lock.
static BACKEND: Mutex<()> = Mutex::new(());

struct Forced(#[allow(dead_code)] MutexGuard<'static, ()>);
impl Drop for Forced {
    fn drop(&mut self) {
        reset_backend();
    }
}

/// Runs `check` under every available backend, holding the lock.
fn on_every_backend(mut check: impl FnMut(Backend)) {
    let guard = BACKEND
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let _forced = Forced(guard);
    for &b in Backend::available() {
        set_backend(b).unwrap();
        check(b);
    }
}

/// Deterministic data: standard-normal-like values from a xorshift generator.
fn data(len: usize, seed: u64) -> Vec<f32> {
    let mut s = seed | 1;
    (0..len)
        .map(|_| {
            let mut u = 0.0_f64;
            for _ in 0..4 {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                u += (s >> 11) as f64 / (1u64 << 53) as f64;
            }
            ((u - 2.0) * 1.7) as f32
        })
        .collect()
}

/// A gallery's storage in every compact format.
struct Stored {
    f16: Vec<u16>,
    bf16: Vec<u16>,
    codes: Vec<i8>,
    scales: Vec<f32>,
}

fn store(x: Matrix<'_>) -> Stored {
    let mut st = Stored {
        f16: vec![0; x.len()],
        bf16: vec![0; x.len()],
        codes: vec![0; x.len()],
        scales: vec![0.0; x.rows()],
    };
    quantize_f16(x, &mut st.f16).unwrap();
    quantize_bf16(x, &mut st.bf16).unwrap();
    quantize_i8(x, &mut st.codes, &mut st.scales).unwrap();
    st
}

impl Stored {
    fn matrices<'a>(&'a self, x: Matrix<'a>) -> Vec<EdgeMatrix<'a>> {
        let (m, d) = (x.rows(), x.dim());
        vec![
            EdgeMatrix::f32(x),
            EdgeMatrix::f16(&self.f16, m, d).unwrap(),
            EdgeMatrix::bf16(&self.bf16, m, d).unwrap(),
            EdgeMatrix::i8(&self.codes, &self.scales, m, d).unwrap(),
        ]
    }
}

/// The dequantized rows of `e`.
fn dequantized(e: &EdgeMatrix<'_>, x: Matrix<'_>, st: &Stored) -> Vec<f32> {
    let mut out = vec![0.0_f32; x.len()];
    match e.format() {
        EdgeFormat::F32 => out.copy_from_slice(x.as_slice()),
        EdgeFormat::F16 => dequantize_f16(&st.f16, &mut out).unwrap(),
        EdgeFormat::Bf16 => dequantize_bf16(&st.bf16, &mut out).unwrap(),
        EdgeFormat::I8 => dequantize_i8(&st.codes, &st.scales, x.dim(), &mut out).unwrap(),
        _ => unreachable!(),
    }
    out
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

fn prepare<'a>(e: EdgeMatrix<'a>, metric: SearchMetric, norms: &'a mut [f32]) -> EdgeGallery<'a> {
    let mut ws = vec![0.0_f32; 3 * e.dim()];
    prepare_edge_gallery(e, metric, norms, &mut ws).unwrap()
}

#[test]
fn every_f16_pattern_widens_as_the_twin_and_rounds_back() {
    let all: Vec<u16> = (0..=u16::MAX).collect();
    let (mut fast, mut twin) = (vec![0.0_f32; all.len()], vec![0.0_f32; all.len()]);
    on_every_backend(|b| {
        dequantize_f16(&all, &mut fast).unwrap();
        scalar::dequantize_f16(&all, &mut twin).unwrap();
        for (i, (&f, &t)) in fast.iter().zip(&twin).enumerate() {
            assert!(
                f.to_bits() == t.to_bits() || (f.is_nan() && t.is_nan()),
                "{}: {i:#06x}",
                b.name()
            );
        }
        // Every finite value rounds back to its own bits.
        let finite: Vec<f32> = fast.iter().copied().filter(|v| v.is_finite()).collect();
        let own: Vec<u16> = all
            .iter()
            .zip(&fast)
            .filter(|(_, v)| v.is_finite())
            .map(|(&h, _)| h)
            .collect();
        let mut back = vec![0_u16; finite.len()];
        quantize_f16(Matrix::new(&finite, 1, finite.len()).unwrap(), &mut back).unwrap();
        assert_eq!(back, own, "{}", b.name());
    });
}

#[test]
fn quantizers_equal_their_twins() {
    // Normal data at several scales, plus ties, subnormals and the overflow edges.
    let mut x = data(4096, 7);
    for (i, v) in x.iter_mut().enumerate() {
        *v *= [1.0, 1e-3, 1e-6, 3e4, 1e-40, 1e30][i % 6];
    }
    x.extend_from_slice(&[
        0.0,
        -0.0,
        1.0 + 2.0_f32.powi(-11),
        1.0 + 3.0 * 2.0_f32.powi(-11),
        65504.0,
        65519.99,
        -65519.0,
        2.0_f32.powi(-25),
        3.0 * 2.0_f32.powi(-26),
        6.0e-5,
        1.0 + 2.0_f32.powi(-8),
        1.0 + 3.0 * 2.0_f32.powi(-8),
        f32::MIN_POSITIVE,
        1e-45,
        0.5,
        0.5,
        0.5,
        0.5,
        0.5,
        0.5,
    ]);
    let d = 16;
    x.truncate(x.len() / d * d);
    let xf16: Vec<f32> = x.iter().map(|v| v.clamp(-65519.0, 65519.0)).collect();
    let (n, xm, xm16) = (
        x.len() / d,
        Matrix::new(&x, x.len() / d, d).unwrap(),
        Matrix::new(&xf16, xf16.len() / d, d).unwrap(),
    );
    on_every_backend(|b| {
        let (mut a, mut t) = (vec![0_u16; x.len()], vec![0_u16; x.len()]);
        quantize_f16(xm16, &mut a).unwrap();
        scalar::quantize_f16(xm16, &mut t).unwrap();
        assert_eq!(a, t, "f16 {}", b.name());
        quantize_bf16(xm, &mut a).unwrap();
        scalar::quantize_bf16(xm, &mut t).unwrap();
        assert_eq!(a, t, "bf16 {}", b.name());
        let (mut c, mut s) = (vec![0_i8; x.len()], vec![0.0_f32; n]);
        let (mut c2, mut s2) = (vec![0_i8; x.len()], vec![0.0_f32; n]);
        quantize_i8(xm, &mut c, &mut s).unwrap();
        scalar::quantize_i8(xm, &mut c2, &mut s2).unwrap();
        assert_eq!((&c, bits(&s)), (&c2, bits(&s2)), "i8 {}", b.name());
        assert!(c.iter().all(|&v| v != -128));
        let (mut o1, mut o2) = (vec![0.0_f32; x.len()], vec![0.0_f32; x.len()]);
        dequantize_i8(&c, &s, d, &mut o1).unwrap();
        scalar::dequantize_i8(&c, &s, d, &mut o2).unwrap();
        assert_eq!(bits(&o1), bits(&o2));
        // Each int8 value within half a scale step (plus the quotient's rounding).
        for (i, (&v, &q)) in x.iter().zip(&o1).enumerate() {
            let sc = s[i / d];
            assert!(
                (v - q).abs() <= 0.5001 * sc + f32::MIN_POSITIVE,
                "{v} {q} {sc}"
            );
        }
        quantize_bf16(xm, &mut a).unwrap();
        dequantize_bf16(&a, &mut o1).unwrap();
        scalar::dequantize_bf16(&a, &mut o2).unwrap();
        assert_eq!(bits(&o1), bits(&o2));
        let mut w1 = vec![0_u64; binary_words_len(n, d)];
        let mut w2 = vec![7_u64; binary_words_len(n, d)];
        quantize_binary(xm, &mut w1).unwrap();
        scalar::quantize_binary(xm, &mut w2).unwrap();
        assert_eq!(w1, w2);
        let bm = BinaryMatrix::new(&w1, n, d).unwrap();
        dequantize_binary(bm, &mut o1).unwrap();
        scalar::dequantize_binary(bm, &mut o2).unwrap();
        assert_eq!(bits(&o1), bits(&o2));
    });
}

#[test]
fn quantizer_errors_write_nothing() {
    let x = [1.0, f32::NAN, 70000.0, 2.0];
    let m = Matrix::new(&x, 2, 2).unwrap();
    let mut out = [9_u16; 4];
    assert_eq!(
        quantize_f16(m, &mut out),
        Err(Error::NonFinite {
            buffer: "x",
            row: 0,
            col: 1
        })
    );
    assert_eq!(
        scalar::quantize_f16(m, &mut out),
        Err(Error::NonFinite {
            buffer: "x",
            row: 0,
            col: 1
        })
    );
    let y = [1.0, 65520.0];
    assert_eq!(
        quantize_f16(Matrix::new(&y, 1, 2).unwrap(), &mut out[..2]),
        Err(Error::TooLarge {
            buffer: "x",
            row: 0,
            col: 1
        })
    );
    assert_eq!(out, [9; 4]);
    let mut c = [0_i8; 3];
    assert!(matches!(
        quantize_i8(m, &mut c, &mut [0.0; 2]),
        Err(Error::LengthMismatch {
            buffer: "codes",
            ..
        })
    ));
    assert!(matches!(
        EdgeMatrix::i8(&[1, 2], &[-1.0], 1, 2),
        Err(Error::InvalidParameter { name: "scales", .. })
    ));
    assert!(matches!(
        BinaryMatrix::new(&[0, 0], 1, 64),
        Err(Error::LengthMismatch { .. })
    ));
}

/// `knn_edge` against `knn_gallery` on the dequantized rows: identical bits.
#[test]
fn knn_edge_equals_knn_gallery_on_the_dequantized_rows() {
    let d = 37;
    for (n, m, k) in [
        (1, 1, 1),
        (3, 17, 5),
        (4, 600, 10),
        (130, 1100, 7),
        (2, 513, 513),
    ] {
        let xd = data(n * d, 1 + n as u64);
        let gd = data(m * d, 2 + m as u64);
        let (x, g) = (
            Matrix::new(&xd, n, d).unwrap(),
            Matrix::new(&gd, m, d).unwrap(),
        );
        let st = store(g);
        on_every_backend(|b| {
            for e in st.matrices(g) {
                let deq = dequantized(&e, g, &st);
                let gm = Matrix::new(&deq, m, d).unwrap();
                for metric in METRICS {
                    let mut norms = vec![0.0_f32; m];
                    let eg = prepare(e, metric, &mut norms);
                    let mut norms2 = vec![0.0_f32; gallery_norms_len(m)];
                    let fg = prepare_gallery(gm, metric, &mut norms2).unwrap();
                    let (mut i1, mut d1) = (vec![0_u32; n * k], vec![0.0_f32; n * k]);
                    let (mut i2, mut d2) = (vec![7_u32; n * k], vec![7.0_f32; n * k]);
                    let mut ws = vec![0.0_f32; knn_edge_workspace_len(n, m, d)];
                    knn_edge(x, &eg, k, &mut i1, &mut d1, &mut ws).unwrap();
                    let mut ws = vec![0.0_f32; knn_gallery_workspace_len(n, m, d)];
                    knn_gallery(x, &fg, k, &mut i2, &mut d2, &mut ws).unwrap();
                    let what = format!("{} {:?} {metric:?} n{n} m{m} k{k}", b.name(), e.format());
                    assert_eq!(i1, i2, "{what}");
                    assert_eq!(bits(&d1), bits(&d2), "{what}");
                    // And the twin agrees within the search's bounds.
                    let (mut i3, mut d3) = (vec![0_u32; n * k], vec![0.0_f32; n * k]);
                    let mut ws = vec![0.0_f32; scalar::knn_edge_workspace_len(n, m, d)];
                    scalar::knn_edge(x, &eg, k, &mut i3, &mut d3, &mut ws).unwrap();
                    for (a, t) in d1.iter().zip(&d3) {
                        assert!((a - t).abs() <= 1e-4 * (1.0 + t.abs()), "{what}: {a} {t}");
                    }
                }
            }
        });
    }
}

/// The documented bound of `knn_edge_i8` for one pair.
fn i8_bound(metric: SearchMetric, a: &[f64], b: &[f64]) -> f64 {
    let u = 2.0_f64.powi(-24);
    let (aa, bb): (f64, f64) = (a.iter().map(|v| v * v).sum(), b.iter().map(|v| v * v).sum());
    match metric {
        SearchMetric::Cosine => 16.0 * u,
        SearchMetric::InnerProduct => 4.0 * u * (aa * bb).sqrt(),
        SearchMetric::Euclidean => {
            // |sqrt(x) - sqrt(y)| <= sqrt(|x - y|).
            (8.0 * u * (aa + bb)).sqrt()
        }
        _ => 8.0 * u * (aa + bb),
    }
}

fn exact(metric: SearchMetric, a: &[f64], b: &[f64]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let sq: f64 = a.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum();
    let na = a.iter().map(|v| v * v).sum::<f64>().sqrt().max(1e-12);
    let nb = b.iter().map(|v| v * v).sum::<f64>().sqrt().max(1e-12);
    match metric {
        SearchMetric::SquaredEuclidean => sq,
        SearchMetric::Euclidean => sq.sqrt(),
        SearchMetric::Cosine => 1.0 - dot / (na * nb),
        _ => -dot,
    }
}

#[test]
fn knn_edge_i8_is_exact_up_to_the_scaling_and_the_same_on_every_backend() {
    for (n, m, d, k) in [
        (1, 5, 3, 2),
        (5, 300, 130, 10),
        (17, 700, 64, 10),
        (40, 530, 37, 530),
        (130, 1030, 128, 3),
    ] {
        let xd = data(n * d, 11 + n as u64);
        let gd = data(m * d, 12 + m as u64);
        let (x, g) = (
            Matrix::new(&xd, n, d).unwrap(),
            Matrix::new(&gd, m, d).unwrap(),
        );
        let (qs, gs) = (store(x), store(g));
        let q = EdgeMatrix::i8(&qs.codes, &qs.scales, n, d).unwrap();
        let ge = EdgeMatrix::i8(&gs.codes, &gs.scales, m, d).unwrap();
        let val = |c: &[i8], s: &[f32], i: usize| -> Vec<f64> {
            (0..d).map(|j| c[i * d + j] as f64 * s[i] as f64).collect()
        };
        for metric in METRICS {
            let mut norms = vec![0.0_f32; m];
            let eg = prepare(ge, metric, &mut norms);
            let mut first: Option<(Vec<u32>, Vec<u32>)> = None;
            on_every_backend(|b| {
                let (mut i1, mut d1) = (vec![0_u32; n * k], vec![0.0_f32; n * k]);
                let mut ws = vec![0.0_f32; knn_edge_i8_workspace_len(n, m, d)];
                knn_edge_i8(q, &eg, k, &mut i1, &mut d1, &mut ws).unwrap();
                let got = (i1.clone(), bits(&d1));
                match &first {
                    None => first = Some(got),
                    Some(f) => assert_eq!(f, &got, "{} {metric:?} n{n} m{m}", b.name()),
                }
                for i in 0..n {
                    let a = val(&qs.codes, &qs.scales, i);
                    let row = &i1[i * k..(i + 1) * k];
                    let mut seen = vec![false; m];
                    let mut worst_low = f64::NEG_INFINITY;
                    for (t, &j) in row.iter().enumerate() {
                        let j = j as usize;
                        assert!(!seen[j]);
                        seen[j] = true;
                        let bv = val(&gs.codes, &gs.scales, j);
                        let (e, bd) = (exact(metric, &a, &bv), i8_bound(metric, &a, &bv));
                        let v = d1[i * k + t] as f64;
                        assert!((v - e).abs() <= bd, "{metric:?} {v} {e} {bd}");
                        worst_low = worst_low.max(e - bd);
                        if t > 0 {
                            assert!(d1[i * k + t - 1] <= d1[i * k + t]);
                        }
                    }
                    for j in (0..m).filter(|&j| !seen[j]) {
                        let bv = val(&gs.codes, &gs.scales, j);
                        let (e, bd) = (exact(metric, &a, &bv), i8_bound(metric, &a, &bv));
                        assert!(e + bd >= worst_low - 1e-12, "missed {j}: {e} {worst_low}");
                    }
                }
                // The twin: same lists where no two distances are within the bound.
                let (mut i2, mut d2) = (vec![0_u32; n * k], vec![0.0_f32; n * k]);
                let mut ws = vec![0.0_f32; scalar::knn_edge_workspace_len(n, m, d)];
                scalar::knn_edge_i8(q, &eg, k, &mut i2, &mut d2, &mut ws).unwrap();
                for (a, t) in d1.iter().zip(&d2) {
                    assert!((a - t).abs() <= 1e-4 * (1.0 + t.abs()), "{a} {t}");
                }
            });
        }
    }
}

#[test]
fn hamming_equals_the_twin_and_rescoring_everything_is_knn_edge() {
    for (n, m, d, k) in [
        (1, 9, 3, 4),
        (5, 300, 128, 10),
        (3, 200, 100, 7),
        (2, 70, 200, 70),
    ] {
        let xd = data(n * d, 21 + d as u64);
        let gd = data(m * d, 22 + m as u64);
        let (x, g) = (
            Matrix::new(&xd, n, d).unwrap(),
            Matrix::new(&gd, m, d).unwrap(),
        );
        let (mut qb, mut gb) = (
            vec![0_u64; binary_words_len(n, d)],
            vec![0; binary_words_len(m, d)],
        );
        quantize_binary(x, &mut qb).unwrap();
        quantize_binary(g, &mut gb).unwrap();
        let (qm, gm) = (
            BinaryMatrix::new(&qb, n, d).unwrap(),
            BinaryMatrix::new(&gb, m, d).unwrap(),
        );
        let st = store(g);
        on_every_backend(|b| {
            let (mut i1, mut d1) = (vec![0_u32; n * k], vec![0.0_f32; n * k]);
            let (mut i2, mut d2) = (vec![0_u32; n * k], vec![0.0_f32; n * k]);
            knn_hamming(qm, gm, k, &mut i1, &mut d1).unwrap();
            scalar::knn_hamming(qm, gm, k, &mut i2, &mut d2).unwrap();
            assert_eq!((&i1, bits(&d1)), (&i2, bits(&d2)), "{} d{d}", b.name());
            for e in st.matrices(g) {
                for metric in METRICS {
                    let mut norms = vec![0.0_f32; m];
                    let eg = prepare(e, metric, &mut norms);
                    let (mut i3, mut d3) = (vec![0_u32; n * k], vec![0.0_f32; n * k]);
                    let mut ws = vec![0.0_f32; knn_rescored_workspace_len(d, m)];
                    knn_rescored(x, gm, &eg, m, k, &mut i3, &mut d3, &mut ws).unwrap();
                    let (mut i4, mut d4) = (vec![0_u32; n * k], vec![0.0_f32; n * k]);
                    let mut ws = vec![0.0_f32; knn_edge_workspace_len(n, m, d)];
                    knn_edge(x, &eg, k, &mut i4, &mut d4, &mut ws).unwrap();
                    assert_eq!((&i3, bits(&d3)), (&i4, bits(&d4)), "{metric:?}");
                    // A shortlist: the twin picks the same candidates.
                    let r = (2 * k).min(m);
                    let mut ws = vec![0.0_f32; knn_rescored_workspace_len(d, r)];
                    knn_rescored(x, gm, &eg, r, k, &mut i3, &mut d3, &mut ws).unwrap();
                    let mut ws = vec![0.0_f32; scalar::knn_edge_workspace_len(n, m, d)];
                    scalar::knn_rescored(x, gm, &eg, r, k, &mut i4, &mut d4, &mut ws).unwrap();
                    for (a, t) in d3.iter().zip(&d4) {
                        assert!((a - t).abs() <= 1e-4 * (1.0 + t.abs()), "{a} {t}");
                    }
                }
            }
        });
    }
}

#[test]
fn search_errors_write_nothing() {
    let gd = data(8 * 4, 3);
    let g = Matrix::new(&gd, 8, 4).unwrap();
    let st = store(g);
    let mut norms = [0.0_f32; 8];
    let eg = prepare(
        EdgeMatrix::f16(&st.f16, 8, 4).unwrap(),
        SearchMetric::Cosine,
        &mut norms,
    );
    let q = Matrix::new(&gd[..4], 1, 4).unwrap();
    let (mut idx, mut dist) = ([9_u32; 9], [9.0_f32; 9]);
    let mut ws = vec![0.0_f32; 4096];
    let k_err = Err(Error::InvalidParameter {
        name: "k",
        expected: "1 <= k <= references a query can retrieve",
    });
    assert_eq!(knn_edge(q, &eg, 9, &mut idx, &mut dist, &mut ws), k_err);
    assert_eq!(
        scalar::knn_edge(q, &eg, 9, &mut idx, &mut dist, &mut ws),
        k_err
    );
    let q3 = Matrix::new(&gd[..3], 1, 3).unwrap();
    assert!(matches!(
        knn_edge(q3, &eg, 1, &mut idx[..1], &mut dist[..1], &mut ws),
        Err(Error::DimensionMismatch { .. })
    ));
    assert!(matches!(
        knn_edge(q, &eg, 2, &mut idx[..2], &mut dist[..2], &mut ws[..1]),
        Err(Error::WorkspaceTooSmall { .. })
    ));
    let iq = EdgeMatrix::i8(&st.codes[..4], &st.scales[..1], 1, 4).unwrap();
    assert!(matches!(
        knn_edge_i8(iq, &eg, 1, &mut idx[..1], &mut dist[..1], &mut ws),
        Err(Error::InvalidParameter {
            name: "gallery",
            ..
        })
    ));
    let mut wb = [0_u64; 8];
    quantize_binary(g, &mut wb).unwrap();
    let bm = BinaryMatrix::new(&wb, 8, 4).unwrap();
    assert!(matches!(
        knn_rescored(q, bm, &eg, 1, 2, &mut idx[..2], &mut dist[..2], &mut ws),
        Err(Error::InvalidParameter {
            name: "shortlist",
            ..
        })
    ));
    assert!(matches!(
        scalar::knn_rescored(q, bm, &eg, 9, 2, &mut idx[..2], &mut dist[..2], &mut ws),
        Err(Error::InvalidParameter {
            name: "shortlist",
            ..
        })
    ));
    assert_eq!(idx, [9; 9]);
    assert_eq!(dist, [9.0; 9]);
    // A non-finite f16 value is refused at enrolment.
    let bad = [0x3c00_u16, 0x7c00];
    let mut n2 = [0.0_f32; 1];
    assert_eq!(
        prepare_edge_gallery(
            EdgeMatrix::f16(&bad, 1, 2).unwrap(),
            SearchMetric::Cosine,
            &mut n2,
            &mut [0.0; 2]
        )
        .err(),
        Some(Error::NonFinite {
            buffer: "gallery",
            row: 0,
            col: 1
        })
    );
}
