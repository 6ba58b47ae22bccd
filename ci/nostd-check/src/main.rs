//! Calls every public kernel of `triplet_kernels` from a binary with neither `std` nor
//! `alloc`, on stack buffers, and exits 0 when every call returned `Ok` with finite
//! outputs (1 otherwise).

#![no_std]
#![no_main]

use core::panic::PanicInfo;
use tk::{Hinge, Matrix, Metric, Reduction};
use triplet_kernels as tk;

// The C library provides the start files' `main` caller and `memset`/`memcpy`, which the
// compiler emits calls to; nothing else of it is used.
#[link(name = "c")]
extern "C" {}

/// `core` is precompiled with unwind tables that name this symbol; with `panic = "abort"`
/// it is never called.
#[no_mangle]
pub extern "C" fn rust_eh_personality() {}

#[panic_handler]
fn panic(_: &PanicInfo<'_>) -> ! {
    loop {}
}

const N: usize = 8;
const D: usize = 5;

fn data() -> [f32; N * D] {
    let mut x = [0.0_f32; N * D];
    let mut s = 12345_u32;
    for v in &mut x {
        s ^= s << 13;
        s ^= s >> 17;
        s ^= s << 5;
        *v = (s % 2000) as f32 / 1000.0 - 1.0;
    }
    x
}

fn finite(v: &[f32]) -> bool {
    v.iter().all(|x| x.is_finite())
}

fn run() -> Result<bool, tk::Error> {
    let xd = data();
    let x = Matrix::new(&xd, N, D)?;
    let y = Matrix::new(&xd[..3 * D], 3, D)?;
    let mut ok = true;
    let mut out = [0.0_f32; N * N];
    // Enough for every call below: the cross workspace packs both sides.
    let mut ws = [0.0_f32; tk::cross_distances_workspace_len(N, N, D)];
    let mut g = [0.0_f32; N * D];
    for metric in [Metric::SquaredEuclidean, Metric::Euclidean, Metric::Cosine] {
        tk::pairwise_distances(x, metric, &mut out, &mut ws)?;
        ok &= finite(&out);
        tk::scalar::pairwise_distances(x, metric, &mut out, &mut ws)?;
        ok &= finite(&out);
        tk::cross_distances(x, y, metric, &mut out[..N * 3], &mut ws)?;
        tk::scalar::cross_distances(x, y, metric, &mut out[..N * 3], &mut ws)?;
        ok &= finite(&out);
        for mode in [tk::DistanceMode::Gram, tk::DistanceMode::Direct] {
            tk::pairwise_distances_rows(x, 2..5, metric, mode, &mut out[..3 * N], &mut ws)?;
            tk::scalar::pairwise_distances_rows(x, 2..5, metric, mode, &mut out[..3 * N], &mut ws)?;
            tk::cross_distances_rows(x, y, 1..N, metric, mode, &mut out[..(N - 1) * 3], &mut ws)?;
            tk::scalar::cross_distances_rows(
                x,
                y,
                1..N,
                metric,
                mode,
                &mut out[..(N - 1) * 3],
                &mut ws,
            )?;
            ok &= finite(&out);
        }
    }
    // Every SIMD backend this CPU has, selected at run time without std.
    for &b in tk::Backend::available() {
        tk::set_backend(b)?;
        tk::pairwise_distances(x, Metric::SquaredEuclidean, &mut out, &mut ws)?;
        ok &= finite(&out);
    }
    tk::reset_backend();
    tk::row_norms(x, &mut out[..N])?;
    tk::scalar::row_norms(x, &mut out[..N])?;
    tk::l2_normalize(x, &mut g)?;
    tk::scalar::l2_normalize(x, &mut g)?;
    let go = g;
    tk::l2_normalize_backward(x, &go, &mut g)?;
    tk::scalar::l2_normalize_backward(x, &go, &mut g)?;
    ok &= finite(&g);
    for hinge in [Hinge::Relu, Hinge::SoftPlus] {
        for red in [Reduction::Sum, Reduction::Mean, Reduction::MeanNonzero] {
            let a = tk::hinge_reduce(&xd, hinge, red)?;
            let b = tk::scalar::hinge_reduce(&xd, hinge, red)?;
            let c = tk::hinge_reduce_grad(&xd, hinge, red, &mut g)?;
            let d = tk::scalar::hinge_reduce_grad(&xd, hinge, red, &mut g)?;
            ok &= a.is_finite() && b.is_finite() && c.is_finite() && d.is_finite();
        }
    }
    ok &= losses(x)?;
    ok &= retrieval(x)?;
    ok &= edge(x)?;
    ok &= threshold_miners(x)?;
    Ok(ok)
}

/// Labels of the batch: 4 classes of 2 rows, also valid proxy indices for 4 proxies.
const LABELS: [u32; N] = [0, 1, 2, 3, 0, 1, 2, 3];

fn losses(x: Matrix<'_>) -> Result<bool, tk::Error> {
    let mut ok = true;
    let mut ws = [0.0_f32; 8192];
    let mut g = [0.0_f32; N * D];
    let mut gp = [0.0_f32; 4 * D];
    let mut pos = [0_u32; N];
    let mut neg = [0_u32; N];
    let mut triplets = [tk::Triplet::default(); N * N * N];
    let mut quads = [tk::Quadruplet::new(0, 0, 0, 0); N];
    let explicit = [tk::Triplet::new(0, 4, 1), tk::Triplet::new(2, 6, 3)];
    let mut terms = [0.0_f32; 2];
    let proxies = Matrix::new(&x.as_slice()[..4 * D], 4, D)?;
    for metric in [Metric::SquaredEuclidean, Metric::Euclidean, Metric::Cosine] {
        tk::hardest_pairs(x, &LABELS, metric, &mut pos, &mut neg, &mut ws)?;
        tk::scalar::hardest_pairs(x, &LABELS, metric, &mut pos, &mut neg, &mut ws)?;
        for mining in [tk::Mining::All, tk::Mining::BatchHard, tk::Mining::SemiHard] {
            let k = tk::mine_triplets_count(&LABELS, mining)?;
            let k2 = tk::scalar::mine_triplets_count(&LABELS, mining)?;
            ok &= k == k2;
            let out = triplets.get_mut(..k).ok_or(tk::Error::InvalidParameter {
                name: "k",
                expected: "at most the output buffer's length",
            })?;
            tk::mine_triplets(x, &LABELS, metric, mining, out, &mut ws)?;
            tk::scalar::mine_triplets(x, &LABELS, metric, mining, out, &mut ws)?;
            let p = tk::BatchParams::new()
                .with_metric(metric)
                .with_mining(mining);
            let a = tk::triplet_batch_loss(x, &LABELS, p, &mut ws)?;
            let b = tk::triplet_batch_loss_grad(x, &LABELS, p, &mut g, &mut ws)?;
            let c = tk::scalar::triplet_batch_loss(x, &LABELS, p, &mut ws)?;
            let d = tk::scalar::triplet_batch_loss_grad(x, &LABELS, p, &mut g, &mut ws)?;
            ok &= a.loss.is_finite() && b.loss.is_finite() && c.loss.is_finite();
            ok &= d.loss.is_finite() && finite(&g);
        }
        let p = tk::TripletParams::new().with_metric(metric);
        tk::triplet_margin_loss(x, &explicit, p, &mut terms, &mut ws)?;
        tk::triplet_margin_loss_grad(x, &explicit, p, &mut terms, &mut g, &mut ws)?;
        tk::scalar::triplet_margin_loss(x, &explicit, p, &mut terms, &mut ws)?;
        tk::scalar::triplet_margin_loss_grad(x, &explicit, p, &mut terms, &mut g, &mut ws)?;
        ok &= finite(&g) && finite(&terms);

        let cp = tk::ContrastiveParams::pytorch_metric_learning();
        tk::contrastive_loss(x, &LABELS, metric, cp, &mut ws)?;
        tk::contrastive_loss_grad(x, &LABELS, metric, cp, &mut g, &mut ws)?;
        tk::scalar::contrastive_loss(x, &LABELS, metric, cp, &mut ws)?;
        tk::scalar::contrastive_loss_grad(x, &LABELS, metric, cp, &mut g, &mut ws)?;
        ok &= finite(&g);

        let k = tk::mine_quadruplets_count(&LABELS)?;
        let out = quads.get_mut(..k).ok_or(tk::Error::InvalidParameter {
            name: "k",
            expected: "at most the output buffer's length",
        })?;
        let got = tk::mine_quadruplets(x, &LABELS, metric, out, &mut ws)?;
        tk::scalar::mine_quadruplets(x, &LABELS, metric, out, &mut ws)?;
        let q = out.get(..got).unwrap_or_default();
        let qp = tk::QuadrupletParams::new(1.0, 0.5);
        tk::quadruplet_loss(x, q, metric, qp, &mut ws)?;
        tk::quadruplet_loss_grad(x, q, metric, qp, &mut g, &mut ws)?;
        tk::scalar::quadruplet_loss(x, q, metric, qp, &mut ws)?;
        tk::scalar::quadruplet_loss_grad(x, q, metric, qp, &mut g, &mut ws)?;
        ok &= finite(&g);
    }
    let nca = tk::ProxyNcaParams::pytorch_metric_learning();
    tk::proxy_nca_loss(x, &LABELS, proxies, nca, &mut ws)?;
    tk::proxy_nca_loss_grad(x, &LABELS, proxies, nca, &mut g, &mut gp, &mut ws)?;
    tk::scalar::proxy_nca_loss(x, &LABELS, proxies, nca, &mut ws)?;
    tk::scalar::proxy_nca_loss_grad(x, &LABELS, proxies, nca, &mut g, &mut gp, &mut ws)?;
    ok &= finite(&g) && finite(&gp);
    let pa = tk::ProxyAnchorParams::pytorch_metric_learning();
    tk::proxy_anchor_loss(x, &LABELS, proxies, pa, &mut ws)?;
    tk::proxy_anchor_loss_grad(x, &LABELS, proxies, pa, &mut g, &mut gp, &mut ws)?;
    tk::scalar::proxy_anchor_loss(x, &LABELS, proxies, pa, &mut ws)?;
    tk::scalar::proxy_anchor_loss_grad(x, &LABELS, proxies, pa, &mut g, &mut gp, &mut ws)?;
    ok &= finite(&g) && finite(&gp);
    let arc = tk::ArcFaceParams::pytorch_metric_learning();
    tk::arcface_loss(x, &LABELS, proxies, arc, &mut ws)?;
    tk::arcface_loss_grad(x, &LABELS, proxies, arc, &mut g, &mut gp, &mut ws)?;
    tk::scalar::arcface_loss(x, &LABELS, proxies, arc, &mut ws)?;
    tk::scalar::arcface_loss_grad(x, &LABELS, proxies, arc, &mut g, &mut gp, &mut ws)?;
    ok &= finite(&g) && finite(&gp);
    let cos = tk::CosFaceParams::pytorch_metric_learning();
    tk::cosface_loss(x, &LABELS, proxies, cos, &mut ws)?;
    tk::cosface_loss_grad(x, &LABELS, proxies, cos, &mut g, &mut gp, &mut ws)?;
    tk::scalar::cosface_loss(x, &LABELS, proxies, cos, &mut ws)?;
    tk::scalar::cosface_loss_grad(x, &LABELS, proxies, cos, &mut g, &mut gp, &mut ws)?;
    ok &= finite(&g) && finite(&gp);
    Ok(ok)
}

fn retrieval(x: Matrix<'_>) -> Result<bool, tk::Error> {
    let mut ws = [0.0_f32; 8192];
    let mut idx = [0_u32; N * 3];
    let mut dist = [0.0_f32; N * 3];
    let mut ok = true;
    for metric in [Metric::SquaredEuclidean, Metric::Euclidean, Metric::Cosine] {
        tk::knn(x, None, metric, 3, &mut idx, &mut dist, &mut ws)?;
        tk::scalar::knn(x, None, metric, 3, &mut idx, &mut dist, &mut ws)?;
        ok &= finite(&dist);
        let mut norms = [0.0_f32; N];
        let g = tk::prepare_gallery(x, metric.into(), &mut norms)?;
        tk::knn_gallery(x, &g, 3, &mut idx, &mut dist, &mut ws)?;
        tk::scalar::knn_gallery(x, &g, 3, &mut idx, &mut dist, &mut ws)?;
        ok &= finite(&dist);
        let a = tk::retrieval_metrics(x, &LABELS, None, metric, 1, &mut ws)?;
        let b = tk::scalar::retrieval_metrics(x, &LABELS, None, metric, 1, &mut ws)?;
        ok &= a.evaluated == N && b.evaluated == N;
        let (mut fast, mut twin) = ([0.0_f64; 2], [0.0_f64; 2]);
        let ks = [1, 2];
        let c = tk::retrieval_metrics_at(x, &LABELS, None, metric, &ks, &mut fast, &mut ws)?;
        let d =
            tk::scalar::retrieval_metrics_at(x, &LABELS, None, metric, &ks, &mut twin, &mut ws)?;
        ok &= c.evaluated == N && d.evaluated == N && c.recall_at_k == fast[1];
        ok &= fast.iter().chain(&twin).all(|v| (0.0..=1.0).contains(v));
    }
    let (genuine, impostor) = x.as_slice().split_at(N);
    let mut tar = [0.0_f64; 2];
    for score in [tk::Score::Similarity, tk::Score::Distance] {
        let a = tk::verification_metrics(genuine, impostor, score, &[0.0, 0.1], &mut tar, &mut ws)?;
        let b = tk::scalar::verification_metrics(
            genuine,
            impostor,
            score,
            &[0.0, 0.1],
            &mut tar,
            &mut ws,
        )?;
        ok &= a == b;
    }
    Ok(ok)
}

fn edge(x: Matrix<'_>) -> Result<bool, tk::Error> {
    let mut ws = [0.0_f32; 8192];
    let mut idx = [0_u32; N * 3];
    let mut dist = [0.0_f32; N * 3];
    let mut ok = true;
    let (mut f16, mut bf16) = ([0_u16; N * D], [0_u16; N * D]);
    let (mut codes, mut scales) = ([0_i8; N * D], [0.0_f32; N]);
    let mut words = [0_u64; tk::binary_words_len(N, D)];
    let mut back = [0.0_f32; N * D];
    tk::quantize_f16(x, &mut f16)?;
    tk::scalar::quantize_f16(x, &mut f16)?;
    tk::dequantize_f16(&f16, &mut back)?;
    tk::scalar::dequantize_f16(&f16, &mut back)?;
    tk::quantize_bf16(x, &mut bf16)?;
    tk::scalar::quantize_bf16(x, &mut bf16)?;
    tk::dequantize_bf16(&bf16, &mut back)?;
    tk::scalar::dequantize_bf16(&bf16, &mut back)?;
    tk::quantize_i8(x, &mut codes, &mut scales)?;
    tk::scalar::quantize_i8(x, &mut codes, &mut scales)?;
    tk::dequantize_i8(&codes, &scales, D, &mut back)?;
    tk::scalar::dequantize_i8(&codes, &scales, D, &mut back)?;
    ok &= finite(&back);
    tk::quantize_binary(x, &mut words)?;
    tk::scalar::quantize_binary(x, &mut words)?;
    let bits = tk::BinaryMatrix::new(&words, N, D)?;
    tk::dequantize_binary(bits, &mut back)?;
    tk::scalar::dequantize_binary(bits, &mut back)?;
    tk::knn_hamming(bits, bits, 3, &mut idx, &mut dist)?;
    tk::scalar::knn_hamming(bits, bits, 3, &mut idx, &mut dist)?;
    ok &= finite(&dist);
    let qi = tk::EdgeMatrix::i8(&codes, &scales, N, D)?;
    for rows in [
        tk::EdgeMatrix::f32(x),
        tk::EdgeMatrix::f16(&f16, N, D)?,
        tk::EdgeMatrix::bf16(&bf16, N, D)?,
        qi,
    ] {
        let mut norms = [0.0_f32; N];
        let mut pws = [0.0_f32; D];
        let g = tk::prepare_edge_gallery(rows, tk::SearchMetric::Cosine, &mut norms, &mut pws)?;
        tk::knn_edge(x, &g, 3, &mut idx, &mut dist, &mut ws)?;
        tk::scalar::knn_edge(x, &g, 3, &mut idx, &mut dist, &mut ws)?;
        tk::knn_rescored(x, bits, &g, 4, 3, &mut idx, &mut dist, &mut ws)?;
        tk::scalar::knn_rescored(x, bits, &g, 4, 3, &mut idx, &mut dist, &mut ws)?;
        ok &= finite(&dist);
        if rows.format() == tk::EdgeFormat::I8 {
            tk::knn_edge_i8(qi, &g, 3, &mut idx, &mut dist, &mut ws)?;
            tk::scalar::knn_edge_i8(qi, &g, 3, &mut idx, &mut dist, &mut ws)?;
            ok &= finite(&dist);
        }
    }
    Ok(ok)
}

/// C entry point, called by the C runtime's start files.
#[no_mangle]
pub extern "C" fn main(_argc: i32, _argv: *const *const u8) -> i32 {
    match run() {
        Ok(true) => 0,
        _ => 1,
    }
}

/// The threshold miners and the losses over mined pairs.
fn threshold_miners(x: Matrix<'_>) -> Result<bool, tk::Error> {
    let mut ws = [0.0_f32; 8192];
    let mut g = [0.0_f32; N * D];
    let mut out = [tk::Triplet::default(); N * N * N];
    let mut pos = [tk::Pair::default(); N * N];
    let mut neg = [tk::Pair::default(); N * N];
    let mut ok = true;
    for metric in [Metric::SquaredEuclidean, Metric::Euclidean, Metric::Cosine] {
        let p = tk::TripletMinerParams::new(0.5, tk::TripletType::SemiHard);
        let k = tk::triplet_mine_count(x, &LABELS, metric, p, &mut ws)?;
        let got = tk::triplet_mine(x, &LABELS, metric, p.with_cap(3, 1), &mut out, &mut ws)?;
        tk::scalar::triplet_mine(x, &LABELS, metric, p, &mut out, &mut ws)?;
        ok &= got == k.min(3);
        let pp = tk::PairMinerParams::new(0.5, 2.0);
        let c = tk::pair_mine(x, &LABELS, metric, pp, &mut pos, &mut neg, &mut ws)?;
        tk::scalar::pair_mine(x, &LABELS, metric, pp, &mut pos, &mut neg, &mut ws)?;
        let ps = pos.get(..c.positives).unwrap_or_default();
        let ns = neg.get(..c.negatives).unwrap_or_default();
        let cp = tk::ContrastiveParams::pytorch_metric_learning();
        let a = tk::contrastive_loss_pairs_grad(x, metric, cp, ps, ns, &mut g, &mut ws)?;
        let b = tk::scalar::contrastive_loss_pairs(x, metric, cp, ps, ns, &mut ws)?;
        ok &= a.is_finite() && b.is_finite() && finite(&g);
    }
    let mp = tk::MultiSimilarityMinerParams::pytorch_metric_learning();
    let c = tk::multi_similarity_mine(x, &LABELS, mp, &mut pos, &mut neg, &mut ws)?;
    tk::scalar::multi_similarity_mine_count(x, &LABELS, mp, &mut ws)?;
    let ps = pos.get(..c.positives).unwrap_or_default();
    let ns = neg.get(..c.negatives).unwrap_or_default();
    let p = tk::MultiSimilarityParams::pytorch_metric_learning();
    let a = tk::multi_similarity_loss_grad(x, &LABELS, p, &mut g, &mut ws)?;
    ok &= a.is_finite() && finite(&g);
    let b = tk::scalar::multi_similarity_loss(x, &LABELS, p, &mut ws)?;
    let c = tk::multi_similarity_loss_pairs_grad(x, ps, ns, p, &mut g, &mut ws)?;
    ok &= b.is_finite() && c.is_finite() && finite(&g);
    Ok(ok)
}
