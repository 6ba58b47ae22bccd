//! The README's "Using it from candle" example, compiled and run here (the kernel crate's
//! doctests cannot build it: candle is not among its dependencies). A second test holds
//! the README's block and the body below to the same text.

use candle_core::Result;

#[test]
fn readme_example_runs() -> Result<()> {
    // README example start
    use candle_core::{Device, Tensor, Var};
    use candle_nn::{AdamW, Optimizer, ParamsAdamW};
    use triplet_kernels_candle::{triplet_batch_loss, BatchParams, Mining};

    let w = Var::randn(0f32, 0.1, (64, 16), &Device::Cpu)?; // a linear embedding 64 -> 16
    let mut opt = AdamW::new(vec![w.clone()], ParamsAdamW::default())?;
    let x = Tensor::randn(0f32, 1.0, (32, 64), &Device::Cpu)?; // a batch of 32 rows
    let labels: Vec<u32> = (0..32).map(|i| i / 4).collect(); // 8 classes of 4 (or a U32 tensor)
    let params = BatchParams::new().with_mining(Mining::BatchHard); // or BatchParams::tfa_semihard()
    let loss = triplet_batch_loss(&x.matmul(w.as_tensor())?, &labels, params)?;
    opt.backward_step(&loss)?; // candle's backward returns the kernel's gradient

    // README example end
    assert!(loss.to_scalar::<f32>()?.is_finite());
    Ok(())
}

/// Lines of `text` strictly between the lines containing `start` and `end`, each
/// trimmed, empty ones left out.
fn between<'a>(text: &'a str, start: &str, end: &str) -> Vec<&'a str> {
    text.lines()
        .skip_while(|l| !l.contains(start))
        .skip(1)
        .take_while(|l| !l.contains(end))
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect()
}

#[test]
fn readme_block_is_the_tested_code() {
    let readme = include_str!("../../README.md");
    let section = readme
        .split("## Using it from candle")
        .nth(1)
        .expect("the README has a section \"Using it from candle\"");
    let block = between(section, "```rust", "```");
    let this = include_str!("readme.rs");
    let tested = between(this, "README example start", "README example end");
    assert_eq!(block, tested, "README block and tests/readme.rs differ");
    assert!(block.len() <= 12);
}
