//! Differential target: the edge formats (quantizers, `knn_edge`, `knn_edge_i8`,
//! `knn_hamming`, `knn_rescored`) against their scalar twins and against the `f32`
//! search on the dequantized rows, on bounded structured inputs.
//!
//! Checked:
//!
//! - Always: no panic; fast and twin return the same `Ok`/`Err` (the quantizers refuse
//!   NaN, infinity and values that would round to infinity); the quantizers' outputs are
//!   identical bit for bit; outputs untouched on `Err`.
//! - On data the quantizers accept: `knn_edge` equals `knn_gallery` on the dequantized
//!   rows, indices and distance bits, for every format and metric; `knn_rescored` with the
//!   whole gallery as its shortlist equals `knn_edge`; `knn_hamming` equals its twin
//!   exactly; `knn_rescored` with a shortlist agrees with its twin rank by rank (within
//!   `1e-3` relative on moderate data); `knn_edge_i8` lists distinct indices, sorted by
//!   its own distances, cosine distances within `1e-5` of the twin's rank by rank.

#![no_main]

mod common;

use common::*;
use libfuzzer_sys::fuzz_target;
use triplet_kernels::{
    binary_words_len, dequantize_bf16, dequantize_f16, dequantize_i8, knn_edge, knn_edge_i8,
    knn_edge_i8_workspace_len, knn_edge_workspace_len, knn_gallery, knn_gallery_workspace_len,
    knn_hamming, knn_rescored, knn_rescored_workspace_len, prepare_edge_gallery, prepare_gallery,
    quantize_bf16, quantize_binary, quantize_f16, quantize_i8, scalar, BinaryMatrix, EdgeMatrix,
    Matrix, SearchMetric,
};

const METRICS: [SearchMetric; 4] = [
    SearchMetric::SquaredEuclidean,
    SearchMetric::Euclidean,
    SearchMetric::Cosine,
    SearchMetric::InnerProduct,
];

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

fuzz_target!(|data: &[u8]| {
    let mut g = Gen::new(data);
    let d = g.size(1, 70);
    let m = g.size(1, 40);
    let n = g.size(1, 20);
    let k = g.range(1, m);
    let regime = g.regime();
    let moderate = !matches!(regime, Regime::Wild);
    let yd = g.values(regime, m * d);
    let xd = g.values(regime, n * d);
    let y = Matrix::new(&yd, m, d).unwrap();
    let x = Matrix::new(&xd, n, d).unwrap();

    // Quantizers: fast and twin agree, on success bit for bit.
    let (mut a16, mut t16) = (vec![0_u16; m * d], vec![0_u16; m * d]);
    let ef16 = quantize_f16(y, &mut a16);
    assert_eq!(ef16, scalar::quantize_f16(y, &mut t16));
    assert_eq!(a16, t16);
    let (mut ab, mut tb) = (vec![0_u16; m * d], vec![0_u16; m * d]);
    let ebf = quantize_bf16(y, &mut ab);
    assert_eq!(ebf, scalar::quantize_bf16(y, &mut tb));
    assert_eq!(ab, tb);
    let (mut ac, mut asc) = (vec![0_i8; m * d], vec![0.0_f32; m]);
    let (mut tc, mut tsc) = (vec![0_i8; m * d], vec![0.0_f32; m]);
    let ei8 = quantize_i8(y, &mut ac, &mut asc);
    assert_eq!(ei8, scalar::quantize_i8(y, &mut tc, &mut tsc));
    assert_eq!((&ac, bits(&asc)), (&tc, bits(&tsc)));
    let (mut gw, mut tw) = (
        vec![0_u64; binary_words_len(m, d)],
        vec![0_u64; binary_words_len(m, d)],
    );
    let ebin = quantize_binary(y, &mut gw);
    assert_eq!(ebin, scalar::quantize_binary(y, &mut tw));
    assert_eq!(gw, tw);
    if ef16.is_err() {
        assert!(a16.iter().all(|&v| v == 0));
    }
    if ei8.is_err() || ebf.is_err() || ef16.is_err() || ebin.is_err() {
        return;
    }
    let mut qw = vec![0_u64; binary_words_len(n, d)];
    if quantize_binary(x, &mut qw).is_err() {
        return;
    }
    let gb = BinaryMatrix::new(&gw, m, d).unwrap();
    let qb = BinaryMatrix::new(&qw, n, d).unwrap();

    // Hamming: exact.
    let (mut i1, mut d1) = (vec![0_u32; n * k], vec![0.0_f32; n * k]);
    let (mut i2, mut d2) = (vec![0_u32; n * k], vec![0.0_f32; n * k]);
    knn_hamming(qb, gb, k, &mut i1, &mut d1).unwrap();
    scalar::knn_hamming(qb, gb, k, &mut i2, &mut d2).unwrap();
    assert_eq!((&i1, bits(&d1)), (&i2, bits(&d2)));

    // Each format against the f32 search on its dequantized rows.
    let mut deq = vec![0.0_f32; m * d];
    let mut pws = vec![0.0_f32; d];
    for fmt in 0..4 {
        let rows = match fmt {
            0 => {
                deq.copy_from_slice(&yd);
                EdgeMatrix::f32(y)
            }
            1 => {
                dequantize_f16(&a16, &mut deq).unwrap();
                EdgeMatrix::f16(&a16, m, d).unwrap()
            }
            2 => {
                dequantize_bf16(&ab, &mut deq).unwrap();
                EdgeMatrix::bf16(&ab, m, d).unwrap()
            }
            _ => {
                dequantize_i8(&ac, &asc, d, &mut deq).unwrap();
                EdgeMatrix::i8(&ac, &asc, m, d).unwrap()
            }
        };
        let Ok(gm) = Matrix::new(&deq, m, d) else {
            return;
        };
        for metric in METRICS {
            let mut norms = vec![0.0_f32; m];
            let Ok(eg) = prepare_edge_gallery(rows, metric, &mut norms, &mut pws) else {
                // Only an int8 scale whose products could overflow is refused here.
                assert_eq!(fmt, 3);
                continue;
            };
            let mut norms2 = vec![0.0_f32; m];
            let Ok(fg) = prepare_gallery(gm, metric, &mut norms2) else {
                continue;
            };
            let (mut i1, mut d1) = (vec![0_u32; n * k], vec![0.0_f32; n * k]);
            let (mut i2, mut d2) = (vec![0_u32; n * k], vec![0.0_f32; n * k]);
            let mut ws = vec![f32::NAN; knn_edge_workspace_len(n, m, d)];
            knn_edge(x, &eg, k, &mut i1, &mut d1, &mut ws).unwrap();
            let mut ws = vec![f32::NAN; knn_gallery_workspace_len(n, m, d)];
            knn_gallery(x, &fg, k, &mut i2, &mut d2, &mut ws).unwrap();
            assert_eq!((&i1, bits(&d1)), (&i2, bits(&d2)), "fmt {fmt} {metric:?}");
            let mut ws = vec![f32::NAN; knn_rescored_workspace_len(d, m)];
            knn_rescored(x, gb, &eg, m, k, &mut i2, &mut d2, &mut ws).unwrap();
            assert_eq!(
                (&i1, bits(&d1)),
                (&i2, bits(&d2)),
                "rescored {fmt} {metric:?}"
            );
            let r = g.range(k, m);
            let mut ws = vec![f32::NAN; knn_rescored_workspace_len(d, r)];
            knn_rescored(x, gb, &eg, r, k, &mut i2, &mut d2, &mut ws).unwrap();
            let mut ws = vec![0.0_f32; scalar::knn_edge_workspace_len(n, m, d)];
            scalar::knn_rescored(x, gb, &eg, r, k, &mut i1, &mut d1, &mut ws).unwrap();
            if moderate && metric != SearchMetric::InnerProduct {
                for (a, t) in d2.iter().zip(&d1) {
                    assert!((a - t).abs() <= 1e-3 * (1.0 + t.abs()), "{a} {t}");
                }
            }
            if fmt == 3 {
                let (mut qc, mut qs) = (vec![0_i8; n * d], vec![0.0_f32; n]);
                quantize_i8(x, &mut qc, &mut qs).unwrap();
                let qe = EdgeMatrix::i8(&qc, &qs, n, d).unwrap();
                let mut ws = vec![f32::NAN; knn_edge_i8_workspace_len(n, m, d)];
                knn_edge_i8(qe, &eg, k, &mut i1, &mut d1, &mut ws).unwrap();
                let mut ws = vec![0.0_f32; scalar::knn_edge_workspace_len(n, m, d)];
                scalar::knn_edge_i8(qe, &eg, k, &mut i2, &mut d2, &mut ws).unwrap();
                for i in 0..n {
                    let row = &i1[i * k..(i + 1) * k];
                    let mut seen = vec![false; m];
                    for (t, &j) in row.iter().enumerate() {
                        assert!(!seen[j as usize]);
                        seen[j as usize] = true;
                        if t > 0 && metric != SearchMetric::Euclidean {
                            assert!(!(d1[i * k + t - 1] > d1[i * k + t]));
                        }
                    }
                }
                // Cosine's bound is absolute (`16 u`); rank by rank the lists agree
                // within it (and the twin's rounding).
                if moderate && metric == SearchMetric::Cosine {
                    for (a, t) in d1.iter().zip(&d2) {
                        assert!((a - t).abs() <= 1e-5, "i8 {a} {t}");
                    }
                }
            }
        }
    }
});
