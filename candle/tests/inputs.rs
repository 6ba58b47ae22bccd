//! What the bridge accepts and refuses: label forms, non-contiguous inputs, other dtypes,
//! kernel errors, and the scaling of the stored gradient by the incoming one.

mod common;

use candle_core::{DType, Device, Result, Tensor, Var};
use common::{flat, labels, var, Rng};
use triplet_kernels_candle as tkc;
use triplet_kernels_candle::{BatchParams, ContrastiveParams, Metric, Mining, ProxyNcaParams};

fn message(r: Result<Tensor>) -> String {
    match r {
        Ok(_) => panic!("expected an error"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn label_forms_agree() -> Result<()> {
    let mut rng = Rng(41);
    let y = labels(2, 3);
    let x = var(&mut rng, 6, 4)?;
    let p = BatchParams::new();
    let a = tkc::triplet_batch_loss(x.as_tensor(), &y, p)?.to_scalar::<f32>()?;
    let b = tkc::triplet_batch_loss(x.as_tensor(), y.as_slice(), p)?.to_scalar::<f32>()?;
    let c = tkc::triplet_batch_loss(x.as_tensor(), &[0_u32, 0, 0, 1, 1, 1], p)?;
    let yt = Tensor::new(y.as_slice(), &Device::Cpu)?;
    let d = tkc::triplet_batch_loss(x.as_tensor(), &yt, p)?.to_scalar::<f32>()?;
    assert_eq!(a, b);
    assert_eq!(a, c.to_scalar::<f32>()?);
    assert_eq!(a, d);
    Ok(())
}

#[test]
fn label_tensors_must_be_rank_one_u32() -> Result<()> {
    let x = Tensor::zeros((4, 2), DType::F32, &Device::Cpu)?;
    let y = Tensor::new(&[0_i64, 0, 1, 1], &Device::Cpu)?;
    let e = message(tkc::triplet_batch_loss(&x, &y, BatchParams::new()));
    assert!(e.contains("U32") && e.contains("I64"), "{e}");
    let y = Tensor::new(&[[0_u32, 0], [1, 1]], &Device::Cpu)?;
    let e = message(tkc::triplet_batch_loss(&x, &y, BatchParams::new()));
    assert!(e.contains("rank-1"), "{e}");
    Ok(())
}

#[test]
fn other_dtypes_are_refused_by_name() -> Result<()> {
    let y = labels(2, 2);
    for dtype in [DType::F64, DType::F16, DType::BF16] {
        let x = Tensor::zeros((4, 3), dtype, &Device::Cpu)?;
        let e = message(tkc::triplet_batch_loss(&x, &y, BatchParams::new()));
        assert!(
            e.contains(&format!("{dtype:?}")) && e.contains("F32"),
            "{e}"
        );
        let w = Tensor::zeros((2, 3), DType::F32, &Device::Cpu)?;
        let e = message(tkc::proxy_nca_loss(
            &w,
            &[0, 1],
            &x,
            ProxyNcaParams::new(1.0),
        ));
        assert!(
            e.contains("proxies") && e.contains(&format!("{dtype:?}")),
            "{e}"
        );
    }
    let x = Tensor::zeros(12, DType::F32, &Device::Cpu)?;
    let e = message(tkc::triplet_batch_loss(&x, &y, BatchParams::new()));
    assert!(e.contains("rank-2"), "{e}");
    Ok(())
}

#[test]
fn kernel_errors_keep_the_kernel_message() -> Result<()> {
    let x = Tensor::zeros((4, 3), DType::F32, &Device::Cpu)?;
    let e = message(tkc::triplet_batch_loss(
        &x,
        &[0_u32, 1, 1],
        BatchParams::new(),
    ));
    assert!(
        e.starts_with("triplet_batch_loss: `labels` has length 3, the shapes require 4"),
        "{e}"
    );
    let p = BatchParams::new().with_margin(f32::INFINITY);
    let e = message(tkc::triplet_batch_loss(&x, &[0_u32, 0, 1, 1], p));
    assert!(e.contains("parameter `margin` must be"), "{e}");
    let bad = Tensor::new(&[[0.0_f32, f32::NAN], [1.0, 0.0]], &Device::Cpu)?;
    let e = message(tkc::contrastive_loss(
        &bad,
        &[0_u32, 1],
        Metric::Euclidean,
        ContrastiveParams::default(),
    ));
    assert!(
        e.starts_with("contrastive_loss: ") && e.contains("NaN or infinite"),
        "{e}"
    );
    let w = Tensor::zeros((2, 3), DType::F32, &Device::Cpu)?;
    let e = message(tkc::proxy_nca_loss(
        &x,
        &[0_u32, 1, 2, 1],
        &w,
        ProxyNcaParams::new(1.0),
    ));
    assert!(e.contains("out of range"), "{e}");
    Ok(())
}

#[test]
fn non_contiguous_inputs_are_made_contiguous() -> Result<()> {
    let mut rng = Rng(42);
    let y = labels(3, 3);
    // A dim x rows variable, used through its transpose.
    let xt = var(&mut rng, 5, 9)?;
    let x = xt.as_tensor().t()?;
    assert!(!x.is_contiguous());
    let p = BatchParams::tfa_semihard();
    let loss = tkc::triplet_batch_loss(&x, &y, p)?;
    let g = flat(
        &loss
            .backward()?
            .get(xt.as_tensor())
            .expect("gradient")
            .t()?,
    )?;
    let xc = Var::from_tensor(&x.contiguous()?)?;
    let loss_c = tkc::triplet_batch_loss(xc.as_tensor(), &y, p)?;
    let gc = flat(loss_c.backward()?.get(xc.as_tensor()).expect("gradient"))?;
    assert_eq!(loss.to_scalar::<f32>()?, loss_c.to_scalar::<f32>()?);
    assert_eq!(g, gc);
    Ok(())
}

#[test]
fn the_incoming_gradient_scales_the_stored_one() -> Result<()> {
    let mut rng = Rng(43);
    let y = labels(2, 4);
    let x = var(&mut rng, 8, 3)?;
    let p = BatchParams::new().with_mining(Mining::All);
    let base = tkc::triplet_batch_loss(x.as_tensor(), &y, p)?;
    let g1 = flat(base.backward()?.get(x.as_tensor()).expect("gradient"))?;
    let scaled = tkc::triplet_batch_loss(x.as_tensor(), &y, p)?.affine(3.0, 1.0)?;
    let g3 = flat(scaled.backward()?.get(x.as_tensor()).expect("gradient"))?;
    for (a, b) in g1.iter().zip(&g3) {
        assert_eq!(a * 3.0, *b);
    }
    // Two losses of the same input add their gradients; backward may run twice.
    let both = base.add(&tkc::triplet_batch_loss(x.as_tensor(), &y, p)?)?;
    let g2 = flat(both.backward()?.get(x.as_tensor()).expect("gradient"))?;
    let again = flat(base.backward()?.get(x.as_tensor()).expect("gradient"))?;
    for ((a, b), c) in g1.iter().zip(&g2).zip(&again) {
        assert_eq!(a * 2.0, *b);
        assert_eq!(a, c);
    }
    Ok(())
}

#[test]
fn views_with_an_offset_and_transposed_weights() -> Result<()> {
    let mut rng = Rng(44);
    let y = labels(3, 2);
    // Rows 2..8 of a larger variable: contiguous, at an offset into its storage.
    let big = var(&mut rng, 10, 4)?;
    let x = big.as_tensor().narrow(0, 2, 6)?;
    let p = ContrastiveParams::hadsell(1.0);
    let loss = tkc::contrastive_loss(&x, &y, Metric::Euclidean, p)?;
    let g = flat(loss.backward()?.get(big.as_tensor()).expect("gradient"))?;
    let xc = Var::from_tensor(&x.copy()?)?;
    let loss_c = tkc::contrastive_loss(xc.as_tensor(), &y, Metric::Euclidean, p)?;
    let gc = flat(loss_c.backward()?.get(xc.as_tensor()).expect("gradient"))?;
    assert_eq!(loss.to_scalar::<f32>()?, loss_c.to_scalar::<f32>()?);
    assert!(g[..8].iter().chain(&g[32..]).all(|&v| v == 0.0));
    assert_eq!(&g[8..32], gc.as_slice());

    // Class weights kept as pytorch-metric-learning does, `dim x classes`, passed
    // transposed; their gradient comes back in the same layout.
    let wt = var(&mut rng, 4, 3)?;
    let params = tkc::CosFaceParams::new(0.35, 4.0);
    let loss = tkc::cosface_loss(xc.as_tensor(), &y, &wt.as_tensor().t()?, params)?;
    let gw = loss
        .backward()?
        .get(wt.as_tensor())
        .expect("gradient")
        .clone();
    assert_eq!(gw.dims(), &[4, 3]);
    let w = Var::from_tensor(&wt.as_tensor().t()?.contiguous()?)?;
    let loss_c = tkc::cosface_loss(xc.as_tensor(), &y, w.as_tensor(), params)?;
    let gwc = loss_c
        .backward()?
        .get(w.as_tensor())
        .expect("gradient")
        .clone();
    assert_eq!(flat(&gw.t()?)?, flat(&gwc)?);
    Ok(())
}
