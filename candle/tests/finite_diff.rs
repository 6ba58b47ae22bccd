//! Finite differences through candle's autograd, one op per family (batch triplet,
//! contrastive, multi-similarity, proxy, face head, InfoNCE): for random directions `u`, the
//! directional derivative `<grad, u>` from `loss.backward()` against the central
//! difference `(L(x + h u) - L(x - h u)) / 2h` of the op's forward.
//!
//! The forward is `f32`, so the difference carries a rounding error of about
//! `2^-24 |L| / h`; with `h = 1e-3` and losses of order 1 that is about `6e-5`, and the
//! curvature term `h^2 |L'''| / 6` is smaller still. Bound: `2e-3 * (1 + |<grad, u>|)`.
//! The data keep every hinge and mining decision at least `h |u|` away from a switch
//! (relu margins, nearest negatives), so the losses are smooth on the segment.

mod common;

use candle_core::{Device, Result, Tensor, Var};
use common::{flat, labels, var, Rng};
use triplet_kernels_candle as tkc;
use triplet_kernels_candle::{
    BatchParams, ContrastiveParams, CosFaceParams, Metric, Mining, MultiSimilarityParams,
    ProxyAnchorParams,
};

const H: f32 = 1e-3;
const TOL: f32 = 2e-3;

/// Checks `f`'s candle gradient against central differences along `dirs` random
/// directions (over every input at once).
fn check(
    name: &str,
    inputs: &[&Var],
    f: impl Fn(&[Tensor]) -> Result<Tensor>,
    seed: u64,
) -> Result<()> {
    let tensors: Vec<Tensor> = inputs.iter().map(|v| v.as_tensor().clone()).collect();
    let loss = f(&tensors)?;
    let grads = loss.backward()?;
    let g: Vec<Vec<f32>> = inputs
        .iter()
        .map(|v| flat(grads.get(v.as_tensor()).expect("gradient")))
        .collect::<Result<_>>()?;
    assert!(
        g.iter().flatten().any(|v| v.abs() > 1e-3),
        "{name}: the gradient is not zero"
    );
    let mut rng = Rng(seed);
    for dir in 0..4 {
        let u: Vec<Vec<f32>> = g.iter().map(|gi| rng.vec(gi.len())).collect();
        let analytic: f32 = g
            .iter()
            .zip(&u)
            .map(|(gi, ui)| gi.iter().zip(ui).map(|(a, b)| a * b).sum::<f32>())
            .sum();
        let shifted = |sign: f32| -> Result<f32> {
            let moved = tensors
                .iter()
                .zip(&u)
                .map(|(t, ui)| {
                    let du = Tensor::from_vec(ui.clone(), t.shape(), &Device::Cpu)?;
                    t.add(&du.affine(f64::from(sign * H), 0.0)?)
                })
                .collect::<Result<Vec<_>>>()?;
            f(&moved)?.to_scalar::<f32>()
        };
        let numeric = (shifted(1.0)? - shifted(-1.0)?) / (2.0 * H);
        assert!(
            (analytic - numeric).abs() <= TOL * (1.0 + analytic.abs()),
            "{name}, direction {dir}: autograd {analytic} vs central difference {numeric}"
        );
    }
    Ok(())
}

#[test]
fn batch_hard_triplet() -> Result<()> {
    let mut rng = Rng(31);
    let y = labels(3, 4);
    let x = var(&mut rng, 12, 5)?;
    let p = BatchParams::new()
        .with_metric(Metric::Euclidean)
        .with_mining(Mining::BatchHard)
        .with_margin(1.0);
    check(
        "batch-hard",
        &[&x],
        |t| tkc::triplet_batch_loss(&t[0], &y, p),
        1,
    )?;
    let p = BatchParams::pml_triplet_margin().with_margin(0.5);
    check(
        "batch-all, normalised",
        &[&x],
        |t| tkc::triplet_batch_loss(&t[0], &y, p),
        2,
    )
}

#[test]
fn contrastive() -> Result<()> {
    let mut rng = Rng(32);
    let y = labels(3, 4);
    let x = var(&mut rng, 12, 5)?;
    let p = ContrastiveParams::hadsell(2.0);
    check(
        "contrastive",
        &[&x],
        |t| tkc::contrastive_loss(&t[0], &y, Metric::Euclidean, p),
        3,
    )
}

#[test]
fn multi_similarity() -> Result<()> {
    let mut rng = Rng(33);
    let y = labels(3, 4);
    let x = var(&mut rng, 12, 5)?;
    let p = MultiSimilarityParams::new(2.0, 10.0, 0.5);
    check(
        "multi-similarity",
        &[&x],
        |t| tkc::multi_similarity_loss(&t[0], &y, p),
        4,
    )
}

#[test]
fn proxy_anchor() -> Result<()> {
    let mut rng = Rng(34);
    let y = labels(4, 3);
    let x = var(&mut rng, 12, 6)?;
    let w = var(&mut rng, 4, 6)?;
    let p = ProxyAnchorParams::new(0.1, 4.0);
    check(
        "proxy-anchor",
        &[&x, &w],
        |t| tkc::proxy_anchor_loss(&t[0], &y, &t[1], p),
        5,
    )
}

#[test]
fn cosface() -> Result<()> {
    let mut rng = Rng(35);
    let y = labels(4, 3);
    let x = var(&mut rng, 12, 6)?;
    let w = var(&mut rng, 4, 6)?;
    let p = CosFaceParams::new(0.35, 4.0);
    check(
        "cosface",
        &[&x, &w],
        |t| tkc::cosface_loss(&t[0], &y, &t[1], p),
        6,
    )
}

#[test]
fn infonce() -> Result<()> {
    let mut rng = Rng(36);
    let (q, docs) = (var(&mut rng, 6, 5)?, var(&mut rng, 8, 5)?);
    // Query i's positive is document i; documents 6 and 7 are hard negatives.
    let ql: Vec<u32> = (0..6).collect();
    let dl: Vec<u32> = (0..8).collect();
    let p = tkc::NtXentParams::new(0.5).textbook();
    check(
        "infonce (queries and documents)",
        &[&q, &docs],
        |t| tkc::infonce_loss(&t[0], &ql, &t[1], &dl, p),
        6,
    )
}
