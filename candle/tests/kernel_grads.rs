//! Every op's loss and candle gradient (through `loss.backward()`) against a direct call of
//! the kernel it wraps: the bridge adds no arithmetic of its own, so both are bit for bit
//! the kernel's.

mod common;

use candle_core::{Result, Tensor, Var};
use common::{flat, labels, var, Rng};
use triplet_kernels as tk;
use triplet_kernels::Matrix;
use triplet_kernels_candle as tkc;
use triplet_kernels_candle::{
    ArcFaceParams, BatchParams, ContrastiveForm, ContrastiveParams, ContrastiveReduction,
    CosFaceParams, Hinge, Metric, Mining, MultiSimilarityParams, ProxyAnchorParams, ProxyNcaParams,
    Reduction,
};
use triplet_kernels_candle::{Pair, Quadruplet, QuadrupletParams, Triplet, TripletParams};

const METRICS: [Metric; 3] = [Metric::SquaredEuclidean, Metric::Euclidean, Metric::Cosine];
const MININGS: [Mining; 3] = [Mining::All, Mining::BatchHard, Mining::SemiHard];

/// The loss and `d loss / d v` for each of `vars`, through candle's backward.
fn candle_grads(loss: &Tensor, vars: &[&Var]) -> Result<(f32, Vec<Vec<f32>>)> {
    assert_eq!(loss.rank(), 0, "the loss is a scalar");
    let grads = loss.backward()?;
    let g = vars
        .iter()
        .map(|v| flat(grads.get(v.as_tensor()).expect("gradient of an input")))
        .collect::<Result<Vec<_>>>()?;
    Ok((loss.to_scalar::<f32>()?, g))
}

fn batch_params() -> Vec<(String, BatchParams)> {
    let mut out = vec![];
    for metric in METRICS {
        for mining in MININGS {
            for (hinge, reduction, normalize) in [
                (Hinge::Relu, Reduction::Mean, false),
                (Hinge::SoftPlus, Reduction::Sum, true),
                (Hinge::Relu, Reduction::MeanNonzero, false),
            ] {
                let p = BatchParams::new()
                    .with_metric(metric)
                    .with_mining(mining)
                    .with_margin(0.3)
                    .with_hinge(hinge)
                    .with_reduction(reduction)
                    .with_normalize(normalize);
                out.push((format!("{p:?}"), p));
            }
        }
    }
    for (name, p) in [
        ("pml_triplet_margin", BatchParams::pml_triplet_margin()),
        ("tfa_semihard", BatchParams::tfa_semihard()),
        ("tfa_hard", BatchParams::tfa_hard()),
        ("tfa_hard_soft", BatchParams::tfa_hard_soft()),
    ] {
        out.push((name.to_string(), p));
    }
    out
}

#[test]
fn triplet_batch_loss_matches_the_kernel() -> Result<()> {
    let mut rng = Rng(11);
    let (n, d) = (24, 7);
    let y = labels(4, 6);
    let x = var(&mut rng, n, d)?;
    let data = flat(x.as_tensor())?;
    for (name, p) in batch_params() {
        let (loss, counts) = tkc::triplet_batch_loss_with_counts(x.as_tensor(), &y, p)?;
        let (loss, g) = candle_grads(&loss, &[&x])?;
        let mut grad = vec![0.0; n * d];
        let mut ws = vec![0.0; tk::triplet_batch_loss_grad_workspace_len(n, d, p)];
        let m = Matrix::new(&data, n, d).unwrap();
        let want = tk::triplet_batch_loss_grad(m, &y, p, &mut grad, &mut ws).unwrap();
        assert_eq!(loss.to_bits(), want.loss.to_bits(), "{name}: loss");
        assert_eq!(counts, want, "{name}: counts");
        assert_eq!(g[0], grad, "{name}: gradient");
        assert!(want.num_triplets > 0, "{name}: the batch has triplets");
    }
    Ok(())
}

#[test]
fn triplet_margin_loss_matches_the_kernel() -> Result<()> {
    let mut rng = Rng(16);
    let (n, d) = (12, 6);
    let x = var(&mut rng, n, d)?;
    let data = flat(x.as_tensor())?;
    let triplets: Vec<Triplet> = (0..20)
        .map(|k| Triplet::new(k % 12, (k * 5 + 1) % 12, (k * 7 + 3) % 12))
        .collect();
    let presets = [
        TripletParams::pytorch(),
        TripletParams::pytorch().with_swap(true),
        TripletParams::new()
            .with_metric(Metric::Cosine)
            .with_margin(0.3)
            .with_reduction(Reduction::MeanNonzero),
        TripletParams::new()
            .with_metric(Metric::SquaredEuclidean)
            .with_hinge(Hinge::SoftPlus)
            .with_reduction(Reduction::Sum),
    ];
    for p in presets {
        let loss = tkc::triplet_margin_loss(x.as_tensor(), &triplets, p)?;
        let (loss, g) = candle_grads(&loss, &[&x])?;
        let (mut terms, mut grad) = (vec![0.0; triplets.len()], vec![0.0; n * d]);
        let mut ws = vec![0.0; tk::triplet_margin_loss_workspace_len(n, d)];
        let m = Matrix::new(&data, n, d).unwrap();
        let want =
            tk::triplet_margin_loss_grad(m, &triplets, p, &mut terms, &mut grad, &mut ws).unwrap();
        assert_eq!(loss.to_bits(), want.to_bits(), "{p:?}: loss");
        assert_eq!(g[0], grad, "{p:?}: gradient");
        let plain = x.as_tensor().detach();
        let untracked = tkc::triplet_margin_loss(&plain, &triplets, p)?.to_scalar::<f32>()?;
        let want = tk::triplet_margin_loss(m, &triplets, p, &mut terms, &mut ws).unwrap();
        assert_eq!(untracked.to_bits(), want.to_bits(), "{p:?}: loss-only");
    }
    let bad = [Triplet::new(0, 1, 12)];
    let e = tkc::triplet_margin_loss(x.as_tensor(), &bad, TripletParams::new()).unwrap_err();
    assert!(
        e.to_string()
            .starts_with("triplet_margin_loss: `triplets[2]` = 12 is out of range"),
        "{e}"
    );
    Ok(())
}

#[test]
fn quadruplet_loss_matches_the_kernel() -> Result<()> {
    let mut rng = Rng(18);
    let (n, d) = (12, 4);
    let y = labels(3, 4);
    let x = var(&mut rng, n, d)?;
    let data = flat(x.as_tensor())?;
    let m = Matrix::new(&data, n, d).unwrap();
    // Anchor and positive from one class, the two negatives from the two others.
    let quads: Vec<Quadruplet> = (0..12_u32)
        .map(|a| {
            let c = a / 4;
            let p = c * 4 + (a + 1) % 4;
            let (c1, c2) = ((c + 1) % 3, (c + 2) % 3);
            Quadruplet::new(a, p, c1 * 4 + a % 4, c2 * 4 + (a + 2) % 4)
        })
        .collect();
    assert!(quads
        .iter()
        .all(|q| y[q.anchor as usize] == y[q.positive as usize]));
    let mut ws = vec![0.0; tk::quadruplet_loss_workspace_len(n, d)];
    for metric in METRICS {
        let p = QuadrupletParams::new(1.0, 0.5);
        let loss = tkc::quadruplet_loss(x.as_tensor(), &quads, metric, p)?;
        let (loss, g) = candle_grads(&loss, &[&x])?;
        let mut grad = vec![0.0; n * d];
        let want = tk::quadruplet_loss_grad(m, &quads, metric, p, &mut grad, &mut ws).unwrap();
        assert!(want > 0.0);
        assert_eq!(loss.to_bits(), want.to_bits(), "{metric:?}: loss");
        assert_eq!(g[0], grad, "{metric:?}: gradient");
        let untracked = tkc::quadruplet_loss(&x.as_tensor().detach(), &quads, metric, p)?;
        let want = tk::quadruplet_loss(m, &quads, metric, p, &mut ws).unwrap();
        assert_eq!(untracked.to_scalar::<f32>()?.to_bits(), want.to_bits());
    }
    Ok(())
}

#[test]
fn contrastive_loss_matches_the_kernel() -> Result<()> {
    let mut rng = Rng(12);
    let (n, d) = (18, 5);
    let y = labels(3, 6);
    let x = var(&mut rng, n, d)?;
    let data = flat(x.as_tensor())?;
    let presets = [
        ContrastiveParams::pytorch_metric_learning(),
        ContrastiveParams::hadsell(1.5),
        ContrastiveParams::new(0.2, 1.2)
            .with_form(ContrastiveForm::Squared)
            .with_reduction(ContrastiveReduction::MeanPerPart),
        ContrastiveParams::new(0.1, 0.9).with_reduction(ContrastiveReduction::Sum),
    ];
    for metric in METRICS {
        for p in presets {
            let loss = tkc::contrastive_loss(x.as_tensor(), &y, metric, p)?;
            let (loss, g) = candle_grads(&loss, &[&x])?;
            let mut grad = vec![0.0; n * d];
            let mut ws = vec![0.0; tk::contrastive_loss_workspace_len(n, d)];
            let m = Matrix::new(&data, n, d).unwrap();
            let want = tk::contrastive_loss_grad(m, &y, metric, p, &mut grad, &mut ws).unwrap();
            assert_eq!(loss.to_bits(), want.to_bits(), "{metric:?} {p:?}: loss");
            assert_eq!(g[0], grad, "{metric:?} {p:?}: gradient");
        }
    }
    Ok(())
}

#[test]
fn pair_losses_match_the_kernels() -> Result<()> {
    let mut rng = Rng(17);
    let (n, d) = (16, 5);
    let y = labels(4, 4);
    let x = var(&mut rng, n, d)?;
    let data = flat(x.as_tensor())?;
    let m = Matrix::new(&data, n, d).unwrap();
    // Every third positive and every fifth negative pair, as a miner might keep them.
    let all = (0..n as u32).flat_map(|a| (0..n as u32).map(move |b| Pair::new(a, b)));
    let pos: Vec<Pair> = all
        .clone()
        .filter(|p| p.anchor != p.other && y[p.anchor as usize] == y[p.other as usize])
        .step_by(3)
        .collect();
    let neg: Vec<Pair> = all
        .filter(|p| y[p.anchor as usize] != y[p.other as usize])
        .step_by(5)
        .collect();
    let mut ws = vec![0.0; 1 << 12];
    let plain = x.as_tensor().detach();
    for metric in METRICS {
        let p = ContrastiveParams::new(0.1, 0.8);
        let loss = tkc::contrastive_loss_pairs(x.as_tensor(), &pos, &neg, metric, p)?;
        let (loss, g) = candle_grads(&loss, &[&x])?;
        let mut grad = vec![0.0; n * d];
        let want =
            tk::contrastive_loss_pairs_grad(m, metric, p, &pos, &neg, &mut grad, &mut ws).unwrap();
        assert_eq!(loss.to_bits(), want.to_bits(), "{metric:?}: loss");
        assert_eq!(g[0], grad, "{metric:?}: gradient");
        let untracked = tkc::contrastive_loss_pairs(&plain, &pos, &neg, metric, p)?;
        let want = tk::contrastive_loss_pairs(m, metric, p, &pos, &neg, &mut ws).unwrap();
        assert_eq!(untracked.to_scalar::<f32>()?.to_bits(), want.to_bits());
    }
    let p = MultiSimilarityParams::new(2.0, 10.0, 0.3);
    let loss = tkc::multi_similarity_loss_pairs(x.as_tensor(), &pos, &neg, p)?;
    let (loss, g) = candle_grads(&loss, &[&x])?;
    let mut grad = vec![0.0; n * d];
    let want = tk::multi_similarity_loss_pairs_grad(m, &pos, &neg, p, &mut grad, &mut ws).unwrap();
    assert!(want > 0.0);
    assert_eq!(
        loss.to_bits(),
        want.to_bits(),
        "multi-similarity pairs: loss"
    );
    assert_eq!(g[0], grad, "multi-similarity pairs: gradient");
    let untracked = tkc::multi_similarity_loss_pairs(&plain, &pos, &neg, p)?;
    let want = tk::multi_similarity_loss_pairs(m, &pos, &neg, p, &mut ws).unwrap();
    assert_eq!(untracked.to_scalar::<f32>()?.to_bits(), want.to_bits());
    Ok(())
}

#[test]
fn multi_similarity_loss_matches_the_kernel() -> Result<()> {
    let mut rng = Rng(13);
    let (n, d) = (20, 6);
    let y = labels(5, 4);
    let x = var(&mut rng, n, d)?;
    let data = flat(x.as_tensor())?;
    for p in [
        MultiSimilarityParams::pytorch_metric_learning(),
        MultiSimilarityParams::new(1.0, 10.0, 0.2),
    ] {
        let loss = tkc::multi_similarity_loss(x.as_tensor(), &y, p)?;
        let (loss, g) = candle_grads(&loss, &[&x])?;
        let mut grad = vec![0.0; n * d];
        let mut ws = vec![0.0; tk::multi_similarity_loss_workspace_len(n, d)];
        let m = Matrix::new(&data, n, d).unwrap();
        let want = tk::multi_similarity_loss_grad(m, &y, p, &mut grad, &mut ws).unwrap();
        assert_eq!(loss.to_bits(), want.to_bits(), "{p:?}: loss");
        assert_eq!(g[0], grad, "{p:?}: gradient");
    }
    Ok(())
}

/// The four losses with proxies or class weights: `(name, bridge, kernel, workspace)`.
type Bridge = fn(&Tensor, &[u32], &Tensor) -> Result<Tensor>;
type Kernel = fn(
    Matrix<'_>,
    &[u32],
    Matrix<'_>,
    &mut [f32],
    &mut [f32],
    &mut [f32],
) -> core::result::Result<f32, tk::Error>;

type WorkspaceLen = fn(usize, usize, usize) -> usize;

fn class_losses() -> Vec<(&'static str, Bridge, Kernel, WorkspaceLen)> {
    vec![
        (
            "proxy_nca",
            |x, y, w| tkc::proxy_nca_loss(x, y, w, ProxyNcaParams::new(3.0)),
            |x, y, w, g, gw, ws| {
                tk::proxy_nca_loss_grad(x, y, w, ProxyNcaParams::new(3.0), g, gw, ws)
            },
            tk::proxy_nca_loss_workspace_len,
        ),
        (
            "proxy_anchor",
            |x, y, w| tkc::proxy_anchor_loss(x, y, w, ProxyAnchorParams::pytorch_metric_learning()),
            |x, y, w, g, gw, ws| {
                let p = ProxyAnchorParams::pytorch_metric_learning();
                tk::proxy_anchor_loss_grad(x, y, w, p, g, gw, ws)
            },
            tk::proxy_anchor_loss_workspace_len,
        ),
        (
            "arcface",
            |x, y, w| tkc::arcface_loss(x, y, w, ArcFaceParams::new(28.6, 8.0)),
            |x, y, w, g, gw, ws| {
                tk::arcface_loss_grad(x, y, w, ArcFaceParams::new(28.6, 8.0), g, gw, ws)
            },
            tk::arcface_loss_workspace_len,
        ),
        (
            "cosface",
            |x, y, w| tkc::cosface_loss(x, y, w, CosFaceParams::new(0.35, 8.0)),
            |x, y, w, g, gw, ws| {
                tk::cosface_loss_grad(x, y, w, CosFaceParams::new(0.35, 8.0), g, gw, ws)
            },
            tk::cosface_loss_workspace_len,
        ),
    ]
}

#[test]
fn class_losses_match_the_kernels() -> Result<()> {
    let mut rng = Rng(14);
    let (n, c, d) = (21, 7, 9);
    // 70 rows so that the face heads run more than one of their 64-row blocks.
    let (n2, y2) = (70, (0..70).map(|i| (i * 5 % 7) as u32).collect::<Vec<_>>());
    for (rows, y) in [(n, labels(7, 3)), (n2, y2)] {
        let x = var(&mut rng, rows, d)?;
        let w = var(&mut rng, c, d)?;
        let (xd, wd) = (flat(x.as_tensor())?, flat(w.as_tensor())?);
        for (name, bridge, kernel, ws_len) in class_losses() {
            let loss = bridge(x.as_tensor(), &y, w.as_tensor())?;
            let (loss, g) = candle_grads(&loss, &[&x, &w])?;
            let (mut gx, mut gw) = (vec![0.0; rows * d], vec![0.0; c * d]);
            let mut ws = vec![0.0; ws_len(rows, c, d)];
            let (xm, wm) = (
                Matrix::new(&xd, rows, d).unwrap(),
                Matrix::new(&wd, c, d).unwrap(),
            );
            let want = kernel(xm, &y, wm, &mut gx, &mut gw, &mut ws).unwrap();
            assert_eq!(loss.to_bits(), want.to_bits(), "{name}: loss");
            assert_eq!(g[0], gx, "{name}: gradient of x");
            assert_eq!(g[1], gw, "{name}: gradient of the proxies / weights");
        }
    }
    Ok(())
}

/// Untracked inputs (plain tensors, as in an evaluation pass) take the loss-only kernels.
#[test]
fn untracked_inputs_use_the_loss_only_kernels() -> Result<()> {
    let mut rng = Rng(15);
    let (n, c, d) = (18, 6, 5);
    let y = labels(6, 3);
    let x = var(&mut rng, n, d)?.as_tensor().detach();
    let w = var(&mut rng, c, d)?.as_tensor().detach();
    assert!(!x.track_op() && !w.track_op());
    let (xd, wd) = (flat(&x)?, flat(&w)?);
    let xm = Matrix::new(&xd, n, d).unwrap();
    let wm = Matrix::new(&wd, c, d).unwrap();
    let mut ws = vec![0.0; 1 << 16];
    let bits = |t: Tensor| t.to_scalar::<f32>().map(f32::to_bits);

    for (_, p) in batch_params() {
        let (loss, counts) = tkc::triplet_batch_loss_with_counts(&x, &y, p)?;
        let want = tk::triplet_batch_loss(xm, &y, p, &mut ws).unwrap();
        assert_eq!((bits(loss)?, counts), (want.loss.to_bits(), want), "{p:?}");
    }
    let cp = ContrastiveParams::pytorch_metric_learning();
    let want = tk::contrastive_loss(xm, &y, Metric::Cosine, cp, &mut ws).unwrap();
    assert_eq!(
        bits(tkc::contrastive_loss(&x, &y, Metric::Cosine, cp)?)?,
        want.to_bits()
    );
    let mp = MultiSimilarityParams::pytorch_metric_learning();
    let want = tk::multi_similarity_loss(xm, &y, mp, &mut ws).unwrap();
    assert_eq!(
        bits(tkc::multi_similarity_loss(&x, &y, mp)?)?,
        want.to_bits()
    );

    let np = ProxyNcaParams::new(3.0);
    let want = tk::proxy_nca_loss(xm, &y, wm, np, &mut ws).unwrap();
    assert_eq!(bits(tkc::proxy_nca_loss(&x, &y, &w, np)?)?, want.to_bits());
    let ap = ProxyAnchorParams::pytorch_metric_learning();
    let want = tk::proxy_anchor_loss(xm, &y, wm, ap, &mut ws).unwrap();
    assert_eq!(
        bits(tkc::proxy_anchor_loss(&x, &y, &w, ap)?)?,
        want.to_bits()
    );
    let fp = ArcFaceParams::new(28.6, 8.0);
    let want = tk::arcface_loss(xm, &y, wm, fp, &mut ws).unwrap();
    assert_eq!(bits(tkc::arcface_loss(&x, &y, &w, fp)?)?, want.to_bits());
    let cf = CosFaceParams::new(0.35, 8.0);
    let want = tk::cosface_loss(xm, &y, wm, cf, &mut ws).unwrap();
    assert_eq!(bits(tkc::cosface_loss(&x, &y, &w, cf)?)?, want.to_bits());
    Ok(())
}

#[test]
fn nce_losses_match_the_kernels() -> Result<()> {
    use triplet_kernels_candle::{NtXentParams, SupConParams};
    let mut rng = Rng(16);
    // 140 rows: more than one of the kernels' 128-row blocks.
    for (n, d) in [(12, 5), (140, 9)] {
        let y = labels((n / 4) as u32, 4);
        let x = var(&mut rng, n, d)?;
        let data = flat(x.as_tensor())?;
        let m = Matrix::new(&data, n, d).unwrap();
        for p in [
            NtXentParams::pytorch_metric_learning(),
            NtXentParams::new(0.5).textbook(),
        ] {
            let (loss, g) = candle_grads(&tkc::ntxent_loss(x.as_tensor(), &y, p)?, &[&x])?;
            let mut grad = vec![0.0; n * d];
            let mut ws = vec![0.0; tk::ntxent_loss_workspace_len(n, d)];
            let want = tk::ntxent_loss_grad(m, &y, p, &mut grad, &mut ws).unwrap();
            assert_eq!(loss.to_bits(), want.loss.to_bits(), "ntxent {p:?}: loss");
            assert_eq!(g[0], grad, "ntxent {p:?}: gradient");
        }
        for p in [
            SupConParams::pytorch_metric_learning(),
            SupConParams::new(0.3).textbook(),
        ] {
            let (loss, g) = candle_grads(&tkc::supcon_loss(x.as_tensor(), &y, p)?, &[&x])?;
            let mut grad = vec![0.0; n * d];
            let mut ws = vec![0.0; tk::supcon_loss_workspace_len(n, d)];
            let want = tk::supcon_loss_grad(m, &y, p, &mut grad, &mut ws).unwrap();
            assert_eq!(loss.to_bits(), want.loss.to_bits(), "supcon {p:?}: loss");
            assert_eq!(g[0], grad, "supcon {p:?}: gradient");
        }
    }
    Ok(())
}

#[test]
fn infonce_loss_matches_the_kernel() -> Result<()> {
    use triplet_kernels_candle::NtXentParams;
    let mut rng = Rng(17);
    let (n, m, d) = (10, 13, 6);
    // Query i's positive is document i; documents 10..13 are hard negatives.
    let q_labels: Vec<u32> = (0..n as u32).collect();
    let d_labels: Vec<u32> = (0..m as u32).collect();
    let x = var(&mut rng, n, d)?;
    let y = var(&mut rng, m, d)?;
    let (xd, yd) = (flat(x.as_tensor())?, flat(y.as_tensor())?);
    let (xm, ym) = (
        Matrix::new(&xd, n, d).unwrap(),
        Matrix::new(&yd, m, d).unwrap(),
    );
    for p in [
        NtXentParams::sentence_transformers(),
        NtXentParams::pytorch_metric_learning(),
    ] {
        let loss = tkc::infonce_loss(x.as_tensor(), &q_labels, y.as_tensor(), &d_labels, p)?;
        let (loss, g) = candle_grads(&loss, &[&x, &y])?;
        let (mut gx, mut gy) = (vec![0.0; n * d], vec![0.0; m * d]);
        let mut ws = vec![0.0; tk::infonce_loss_workspace_len(n, m, d)];
        let want =
            tk::infonce_loss_grad(xm, &q_labels, ym, &d_labels, p, &mut gx, &mut gy, &mut ws)
                .unwrap();
        assert_eq!(loss.to_bits(), want.loss.to_bits(), "{p:?}: loss");
        assert_eq!(g[0], gx, "{p:?}: gradient of the queries");
        assert_eq!(g[1], gy, "{p:?}: gradient of the documents");
    }
    // Untracked inputs take the loss-only kernel, with the same loss.
    let (xt, yt) = (x.as_tensor().detach(), y.as_tensor().detach());
    let p = NtXentParams::sentence_transformers();
    let loss = tkc::infonce_loss(&xt, &q_labels, &yt, &d_labels, p)?;
    let mut ws = vec![0.0; tk::infonce_loss_workspace_len(n, m, d)];
    let want = tk::infonce_loss(xm, &q_labels, ym, &d_labels, p, &mut ws).unwrap();
    assert_eq!(loss.to_scalar::<f32>()?.to_bits(), want.loss.to_bits());
    Ok(())
}
