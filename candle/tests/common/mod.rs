//! Data and helpers shared by the bridge's tests.

#![allow(dead_code)]

use candle_core::{Device, Result, Tensor, Var};

/// A small deterministic generator (splitmix64).
pub struct Rng(pub u64);

impl Rng {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [-1, 1).
    pub fn signed(&mut self) -> f32 {
        ((self.next_u64() >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }

    pub fn vec(&mut self, len: usize) -> Vec<f32> {
        (0..len).map(|_| self.signed()).collect()
    }
}

/// `classes` classes of `per_class` rows each, labels `0, 0, .., 1, 1, ..`.
pub fn labels(classes: u32, per_class: usize) -> Vec<u32> {
    (0..classes)
        .flat_map(|c| std::iter::repeat_n(c, per_class))
        .collect()
}

/// A `rows x dim` variable with entries in [-1, 1).
pub fn var(rng: &mut Rng, rows: usize, dim: usize) -> Result<Var> {
    Var::from_vec(rng.vec(rows * dim), (rows, dim), &Device::Cpu)
}

pub fn flat(t: &Tensor) -> Result<Vec<f32>> {
    t.flatten_all()?
        .to_dtype(candle_core::DType::F32)?
        .to_vec1()
}

/// `max_i |a_i - b_i| <= tol * (1 + max_i |b_i|)`, with a message naming `what`.
pub fn assert_close(what: &str, a: &[f32], b: &[f32], tol: f32) {
    assert_eq!(a.len(), b.len(), "{what}: lengths");
    let scale = 1.0 + b.iter().fold(0.0_f32, |m, v| m.max(v.abs()));
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        assert!(
            (x - y).abs() <= tol * scale,
            "{what}: element {i}: {x} vs {y} (tolerance {} = {tol} x {scale})",
            tol * scale
        );
    }
}
