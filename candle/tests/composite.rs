//! The bridge's losses and gradients against the same losses written with plain candle
//! ops (evaluated in `F64`, differentiated by candle's autograd), where candle can express
//! them: batch-all triplet with the squared Euclidean distance, contrastive (Euclidean,
//! pytorch-metric-learning's default form and reduction) and Proxy-NCA.
//!
//! Bound: the loss and every gradient element agree within `1e-4 * (1 + max |g|)` (the
//! largest element of the composite's gradient, or the loss itself). The kernels'
//! documented `f32` error bounds for these sizes (`n <= 24`, `d <= 8`: for batch-all,
//! `(2 n + 4) sqrt(8 d) 2^-24 G'` per element) are below `1e-5` of that scale; the rest
//! is slack for the `f32` rounding of the inputs' distances near no kink. The data are
//! drawn so that no hinge sits within `1e-3` of its kink (checked), where the two
//! gradients could legitimately take different sides.

mod common;

use candle_core::{DType, Device, Result, Tensor, Var};
use common::{assert_close, flat, labels, var, Rng};
use triplet_kernels_candle as tkc;
use triplet_kernels_candle::{
    BatchParams, ContrastiveParams, Hinge, Metric, Mining, ProxyNcaParams, Reduction,
};

const TOL: f32 = 1e-4;

/// `a x b` mask tensor (`F64`) from a predicate on the indices.
fn mask2(n: usize, m: usize, f: impl Fn(usize, usize) -> bool) -> Result<Tensor> {
    let v: Vec<f64> = (0..n * m)
        .map(|k| f64::from(u8::from(f(k / m, k % m))))
        .collect();
    Tensor::from_vec(v, (n, m), &Device::Cpu)
}

/// Squared Euclidean distances of the rows of `x` (`n x d`), by differences.
fn sq_dists(x: &Tensor) -> Result<Tensor> {
    let diff = x.unsqueeze(1)?.broadcast_sub(&x.unsqueeze(0)?)?;
    diff.sqr()?.sum(2)
}

/// Gradient of `loss` (a function of `x64 = x.to_dtype(F64)`) with respect to `x`.
fn grad_of(loss: &Tensor, x: &Var) -> Result<Vec<f32>> {
    let grads = loss.backward()?;
    flat(grads.get(x.as_tensor()).expect("gradient of x"))
}

fn bridge_grads(loss: &Tensor, vars: &[&Var]) -> Result<(f32, Vec<Vec<f32>>)> {
    let grads = loss.backward()?;
    let g = vars
        .iter()
        .map(|v| flat(grads.get(v.as_tensor()).expect("gradient")))
        .collect::<Result<Vec<_>>>()?;
    Ok((loss.to_scalar::<f32>()?, g))
}

#[test]
fn batch_all_squared_euclidean_matches_candle_ops() -> Result<()> {
    let (n, d, margin) = (16, 6, 0.5);
    let y = labels(4, 4);
    for (seed, reduction) in [(21, Reduction::Mean), (22, Reduction::Sum)] {
        let mut rng = Rng(seed);
        let x = var(&mut rng, n, d)?;
        // Composite: v[a, p, q] = D[a, p] - D[a, q] + margin over the valid triplets.
        let x64 = x.as_tensor().to_dtype(DType::F64)?;
        let dist = sq_dists(&x64)?;
        let v = dist
            .unsqueeze(2)?
            .broadcast_sub(&dist.unsqueeze(1)?)?
            .affine(1.0, margin)?;
        let mut valid = vec![0.0_f64; n * n * n];
        for a in 0..n {
            for p in 0..n {
                for q in 0..n {
                    if a != p && y[a] == y[p] && y[q] != y[a] {
                        valid[(a * n + p) * n + q] = 1.0;
                    }
                }
            }
        }
        let count = valid.iter().sum::<f64>();
        let vals = flat(&v)?;
        for (k, (&m, &val)) in valid.iter().zip(&vals).enumerate() {
            assert!(m == 0.0 || val.abs() > 1e-3, "triplet {k} sits at its kink");
        }
        let valid = Tensor::from_vec(valid, (n, n, n), &Device::Cpu)?;
        let sum = v.relu()?.mul(&valid)?.sum_all()?;
        let want = match reduction {
            Reduction::Sum => sum,
            _ => sum.affine(1.0 / count, 0.0)?,
        };
        let want_loss = want.to_scalar::<f64>()? as f32;
        let want_grad = grad_of(&want, &x)?;

        let p = BatchParams::new()
            .with_metric(Metric::SquaredEuclidean)
            .with_mining(Mining::All)
            .with_margin(margin as f32)
            .with_hinge(Hinge::Relu)
            .with_reduction(reduction);
        let loss = tkc::triplet_batch_loss(x.as_tensor(), &y, p)?;
        let (loss, g) = bridge_grads(&loss, &[&x])?;
        assert_close("batch-all loss", &[loss], &[want_loss], TOL);
        assert_close("batch-all gradient", &g[0], &want_grad, TOL);
    }
    Ok(())
}

#[test]
fn contrastive_matches_candle_ops() -> Result<()> {
    let (n, d) = (18, 5);
    let y = labels(3, 6);
    let params = ContrastiveParams::pytorch_metric_learning().with_pos_margin(0.3);
    let (pm, nm) = (f64::from(params.pos_margin), f64::from(params.neg_margin));
    let mut rng = Rng(23);
    let x = var(&mut rng, n, d)?;
    let x64 = x.as_tensor().to_dtype(DType::F64)?;
    // Euclidean distances; the identity keeps sqrt differentiable on the diagonal, which
    // the masks leave out.
    let eye = Tensor::eye(n, DType::F64, &Device::Cpu)?;
    let dist = sq_dists(&x64)?.add(&eye)?.sqrt()?;
    let pos = mask2(n, n, |i, j| i != j && y[i] == y[j])?;
    let neg = mask2(n, n, |i, j| y[i] != y[j])?;
    let pos_terms = dist.affine(1.0, -pm)?.relu()?.mul(&pos)?;
    let neg_terms = dist.affine(-1.0, nm)?.relu()?.mul(&neg)?;
    let dv = flat(&dist)?;
    let (pv, nv) = (flat(&pos)?, flat(&neg)?);
    let mut active = (0.0, 0.0);
    for ((&dij, &p), &q) in dv.iter().zip(&pv).zip(&nv) {
        let dij = f64::from(dij);
        if p > 0.0 {
            assert!((dij - pm).abs() > 1e-3, "positive pair at its kink");
            active.0 += f64::from(u8::from(dij > pm));
        }
        if q > 0.0 {
            assert!((nm - dij).abs() > 1e-3, "negative pair at its kink");
            active.1 += f64::from(u8::from(dij < nm));
        }
    }
    assert!(active.0 > 0.0 && active.1 > 0.0, "both parts active");
    let want = pos_terms
        .sum_all()?
        .affine(1.0 / active.0, 0.0)?
        .add(&neg_terms.sum_all()?.affine(1.0 / active.1, 0.0)?)?;
    let want_loss = want.to_scalar::<f64>()? as f32;
    let want_grad = grad_of(&want, &x)?;

    let loss = tkc::contrastive_loss(x.as_tensor(), &y, Metric::Euclidean, params)?;
    let (loss, g) = bridge_grads(&loss, &[&x])?;
    assert_close("contrastive loss", &[loss], &[want_loss], TOL);
    assert_close("contrastive gradient", &g[0], &want_grad, TOL);
    Ok(())
}

/// `v / |v|` per row.
fn normalize_rows(v: &Tensor) -> Result<Tensor> {
    v.broadcast_div(&v.sqr()?.sum_keepdim(1)?.sqrt()?)
}

#[test]
fn proxy_nca_matches_candle_ops() -> Result<()> {
    let (n, c, d, s) = (15, 5, 8, 4.0);
    let y = labels(5, 3);
    let mut rng = Rng(24);
    let x = var(&mut rng, n, d)?;
    let w = var(&mut rng, c, d)?;
    let xn = normalize_rows(&x.as_tensor().to_dtype(DType::F64)?)?;
    let wn = normalize_rows(&w.as_tensor().to_dtype(DType::F64)?)?;
    // q_ic = |x^_i - P^_c|^2; loss = mean_i (s q_{i,y_i} + ln sum_c e^{-s q_ic}).
    let q = xn
        .unsqueeze(1)?
        .broadcast_sub(&wn.unsqueeze(0)?)?
        .sqr()?
        .sum(2)?;
    let logits = q.affine(-s, 0.0)?;
    let shift = logits.max_keepdim(1)?.detach();
    let lse = logits
        .broadcast_sub(&shift)?
        .exp()?
        .sum_keepdim(1)?
        .log()?
        .add(&shift)?;
    let target = mask2(n, c, |i, j| y[i] as usize == j)?;
    let picked = logits.mul(&target)?.sum_keepdim(1)?;
    let want = lse.sub(&picked)?.mean_all()?;
    let want_loss = want.to_scalar::<f64>()? as f32;
    let grads = want.backward()?;
    let want_gx = flat(grads.get(x.as_tensor()).expect("gradient of x"))?;
    let want_gw = flat(grads.get(w.as_tensor()).expect("gradient of the proxies"))?;

    let loss = tkc::proxy_nca_loss(
        x.as_tensor(),
        &y,
        w.as_tensor(),
        ProxyNcaParams::new(s as f32),
    )?;
    let (loss, g) = bridge_grads(&loss, &[&x, &w])?;
    assert_close("proxy-nca loss", &[loss], &[want_loss], TOL);
    assert_close("proxy-nca gradient of x", &g[0], &want_gx, TOL);
    assert_close("proxy-nca gradient of the proxies", &g[1], &want_gw, TOL);
    Ok(())
}
