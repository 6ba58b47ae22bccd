//! Shared input decoding and `f64` reference helpers of the differential targets.
//!
//! Inputs are decoded from the raw fuzzer bytes (an exhausted input reads as zeros), so
//! every byte string is a valid case and the fuzzer's mutations stay meaningful: a few
//! bytes pick the shapes and the *regime* of the values, the rest are the values.
//!
//! - [`Regime::Int`]: integers `-8..=8`, whose squared distances are exact in `f32`: the
//!   fast kernels must take the same discrete decisions as their twins.
//! - [`Regime::Moderate`]: magnitudes `1e-3..1e3`, signs mixed, some exact zeros.
//! - [`Regime::Wild`]: moderate values with, at a density the input chooses, values from
//!   the special classes the input enables: NaN, infinities, `1e30`, `f32::MAX`, any
//!   normal number, subnormals, any bit pattern.

#![allow(dead_code)]

use arbitrary::Unstructured;
use triplet_kernels::{Error, Hinge, Metric, Mining, Reduction, NORM_EPS};

// The f64 definitions and tolerance models, shared with the library's tests (each target
// uses some of them).
#[allow(unused_imports)]
pub use testkit::rows::{
    dist64, dist_scale, f64s, inf_norm, norm, sq_dist, sq_norm, underflow_allowance,
};
#[allow(unused_imports)]
pub use testkit::triplet_def::{hinge64, slope64, weight};
#[allow(unused_imports)]
pub use testkit::{assert_close, bits, to64, EPS, METRICS, TINY};
pub const MININGS: [Mining; 3] = [Mining::All, Mining::BatchHard, Mining::SemiHard];
pub const HINGES: [Hinge; 2] = [Hinge::Relu, Hinge::SoftPlus];
pub const REDUCTIONS: [Reduction; 3] = [Reduction::Sum, Reduction::Mean, Reduction::MeanNonzero];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Regime {
    Int,
    Moderate,
    Wild,
}

/// Special classes a wild input may enable (bit flags of one byte).
const NON_FINITE: u8 = 1;
const HUGE: u8 = 2;
const SUBNORMAL: u8 = 4;
const ANY_NORMAL: u8 = 8;
const RAW_BITS: u8 = 16;

pub struct Gen<'a> {
    u: Unstructured<'a>,
    /// Enabled special classes (wild regime).
    classes: u8,
    /// Probability (out of 256) that a wild value is special.
    density: u8,
}

impl<'a> Gen<'a> {
    pub fn new(data: &'a [u8]) -> Self {
        Gen {
            u: Unstructured::new(data),
            classes: 0,
            density: 0,
        }
    }

    pub fn byte(&mut self) -> u8 {
        self.u.arbitrary::<u8>().unwrap_or(0)
    }

    pub fn u16(&mut self) -> u16 {
        self.u.arbitrary::<u16>().unwrap_or(0)
    }

    pub fn u32(&mut self) -> u32 {
        self.u.arbitrary::<u32>().unwrap_or(0)
    }

    pub fn bool(&mut self) -> bool {
        self.byte() & 1 == 1
    }

    /// `lo..=hi` (`lo` when the input is exhausted).
    pub fn range(&mut self, lo: usize, hi: usize) -> usize {
        self.u.int_in_range(lo..=hi).unwrap_or(lo)
    }

    /// A size in `lo..=hi`, biased towards small values and lane boundaries.
    pub fn size(&mut self, lo: usize, hi: usize) -> usize {
        let b = self.byte();
        let v = match b % 4 {
            // Around the 8-lane boundaries.
            0 => (usize::from(b / 4) % 9) * 8 + usize::from(b % 3),
            _ => self.range(lo, hi),
        };
        v.clamp(lo, hi)
    }

    pub fn regime(&mut self) -> Regime {
        match self.byte() % 4 {
            0 => Regime::Int,
            1 => Regime::Moderate,
            _ => {
                self.classes = self.byte();
                self.density = self.byte();
                Regime::Wild
            }
        }
    }

    pub fn int_value(&mut self) -> f32 {
        f32::from(i8::try_from(self.byte() % 17).unwrap_or(0) - 8)
    }

    pub fn moderate_value(&mut self) -> f32 {
        let b = self.byte();
        if b < 8 {
            return 0.0;
        }
        let m = f32::from(self.u16()) / 65536.0 * 6.0 - 3.0;
        let v = 10.0_f32.powf(m);
        if b & 1 == 1 {
            -v
        } else {
            v
        }
    }

    fn special(&mut self) -> f32 {
        let enabled = self.classes;
        let b = self.byte();
        let sign = if b & 128 != 0 { -1.0_f32 } else { 1.0 };
        // Try the class the byte names, else fall back to a moderate value.
        match b % 8 {
            0 if enabled & NON_FINITE != 0 => f32::NAN,
            1 if enabled & NON_FINITE != 0 => sign * f32::INFINITY,
            2 if enabled & HUGE != 0 => sign * 1e30,
            3 if enabled & HUGE != 0 && self.bool() => sign * f32::MAX,
            // The loss kernels' data range: 2^52 / sqrt(k), a few ulp either side.
            3 if enabled & HUGE != 0 => {
                let k = f64::from(self.byte() % 67 + 1);
                let edge = (4_503_599_627_370_496.0 / k.sqrt()) as f32;
                let ulps = i32::from(self.byte() % 5) - 2;
                sign * f32::from_bits(edge.to_bits().wrapping_add_signed(ulps))
            }
            4 if enabled & ANY_NORMAL != 0 => {
                // Any normal number: exponent field 1..=254.
                let e = u32::from(self.byte() % 254) + 1;
                let m = self.u32() & 0x007f_ffff;
                sign * f32::from_bits((e << 23) | m)
            }
            5 if enabled & SUBNORMAL != 0 => {
                let m = (self.u32() & 0x007f_ffff).max(1);
                sign * f32::from_bits(m)
            }
            6 if enabled & RAW_BITS != 0 => f32::from_bits(self.u32()),
            7 if enabled & SUBNORMAL != 0 => sign * f32::MIN_POSITIVE,
            _ => self.moderate_value(),
        }
    }

    pub fn value(&mut self, regime: Regime) -> f32 {
        match regime {
            Regime::Int => self.int_value(),
            Regime::Moderate => self.moderate_value(),
            Regime::Wild => {
                if self.byte() < self.density {
                    self.special()
                } else if self.bool() {
                    self.int_value()
                } else {
                    self.moderate_value()
                }
            }
        }
    }

    pub fn values(&mut self, regime: Regime, len: usize) -> Vec<f32> {
        (0..len).map(|_| self.value(regime)).collect()
    }

    /// A scalar parameter: usually in `lo..hi` (an integer in the integer regime), in the
    /// wild regime sometimes NaN, infinite, huge, negative or zero.
    pub fn param(&mut self, regime: Regime, lo: f32, hi: f32) -> f32 {
        let b = self.byte();
        if regime == Regime::Wild && b < 52 {
            return match b % 13 {
                0 => f32::NAN,
                1 => f32::INFINITY,
                2 => f32::NEG_INFINITY,
                3 => 1e30,
                4 => -1e30,
                5 => 0.0,
                6 => -0.0,
                7 => f32::MIN_POSITIVE,
                8 => -lo.abs().max(1.0),
                9 => f32::MAX,
                10 => f32::MAX / 4.0,
                11 => f32::MAX / 64.0,
                _ => f32::from_bits(self.u32()),
            };
        }
        let t = f32::from(self.u16()) / 65535.0;
        let v = lo + (hi - lo) * t;
        if regime == Regime::Int {
            v.round()
        } else {
            v
        }
    }

    /// Labels from `classes` sparse ids (compared for equality only).
    pub fn labels(&mut self, n: usize, classes: usize) -> Vec<u32> {
        (0..n)
            .map(|_| (self.range(0, classes.max(1) - 1) as u32).wrapping_mul(1009) ^ 0x5a5a)
            .collect()
    }

    pub fn metric(&mut self) -> Metric {
        METRICS[usize::from(self.byte()) % 3]
    }

    pub fn mining(&mut self) -> Mining {
        MININGS[usize::from(self.byte()) % 3]
    }

    pub fn hinge(&mut self) -> Hinge {
        HINGES[usize::from(self.byte()) % 2]
    }

    pub fn reduction(&mut self) -> Reduction {
        REDUCTIONS[usize::from(self.byte()) % 3]
    }

    /// A garbage fill value for outputs and workspaces.
    pub fn garbage(&mut self) -> f32 {
        [f32::NAN, 1e30, -3e38, 0.0, -7.5, f32::INFINITY][usize::from(self.byte()) % 6]
    }
}

/// Whether a check that fails on a known, reported kernel issue is to be skipped: the
/// comma-separated names in the environment variable `TRIPLET_FUZZ_KNOWN` (unset: every
/// check runs, so CI and a plain `cargo fuzz run` keep failing until the issue is fixed).
/// Long campaigns set it to keep exploring past an issue already reported.
pub fn known(issue: &str) -> bool {
    use std::sync::OnceLock;
    static KNOWN: OnceLock<String> = OnceLock::new();
    KNOWN
        .get_or_init(|| std::env::var("TRIPLET_FUZZ_KNOWN").unwrap_or_default())
        .split(',')
        .any(|k| k.trim() == issue)
}

/// Whether to print each decoded case (environment variable `TRIPLET_FUZZ_DUMP` set), to
/// turn a minimised crash into a plain test.
pub fn dump() -> bool {
    use std::sync::OnceLock;
    static DUMP: OnceLock<bool> = OnceLock::new();
    *DUMP.get_or_init(|| std::env::var_os("TRIPLET_FUZZ_DUMP").is_some())
}

// ---------------------------------------------------------------------------------------
// The documented data rules of the loss kernels and miners.

/// `(2^52)^2`: the loss kernels and miners refuse rows they take distances of without
/// normalising them when `m * m * dim` exceeds it in `f64`, `m` the largest `|x_ik|`.
pub const ELEMENT_BOUND_SQ_TIMES_DIM: f64 = (1_u128 << 104) as f64;

/// Largest `|margin|` of the batch losses: `2^100`.
pub const MARGIN_MAX: f32 = (1_u128 << 100) as f32;

/// `(row, col)` of the first element of largest magnitude when finite `data` (rows of
/// `dim`) lie outside the loss kernels' data range; `None` inside it.
pub fn too_large(data: &[f32], dim: usize) -> Option<(usize, usize)> {
    let m = data.iter().fold(0.0_f32, |m, v| m.max(v.abs()));
    let m64 = f64::from(m);
    if m64 * m64 * dim as f64 <= ELEMENT_BOUND_SQ_TIMES_DIM {
        return None;
    }
    let k = data.iter().position(|v| v.abs() == m)?;
    Some((k / dim, k % dim))
}

/// The data error a loss kernel or miner documents for `x` (rows of `dim`): `NonFinite`
/// at the first NaN or infinity, else `TooLarge` when the rows are not normalised first
/// (`range_checked`) and lie outside the data range.
pub fn data_error(data: &[f32], dim: usize, range_checked: bool) -> Option<Error> {
    if let Some(e) = non_finite("x", data, dim) {
        return Some(e);
    }
    if !range_checked {
        return None;
    }
    too_large(data, dim).map(|(row, col)| Error::TooLarge {
        buffer: "x",
        row,
        col,
    })
}

// ---------------------------------------------------------------------------------------
// f64 references beyond the shared ones.

pub fn clamped(n: f64) -> f64 {
    n.max(f64::from(NORM_EPS))
}

/// The distance bound the distance module documents, with the tests' factor of 4:
/// `4 (d + 8) 2^-24 S`, plus the underflow allowance.
pub fn dist_tol(metric: Metric, a: &[f32], b: &[f32]) -> f64 {
    4.0 * (a.len() as f64 + 8.0) * EPS * dist_scale(metric, a, b)
        + underflow_allowance(metric, a.len())
        + 1e-30
}

/// Whether every row of `data` (rows of `dim`) keeps its squared norm below
/// `f32::MAX / 8`, the documented range of the distance bounds.
pub fn rows_in_range(data: &[f32], dim: usize) -> bool {
    data.chunks(dim)
        .all(|r| sq_norm(r) < f64::from(f32::MAX) / 8.0)
}

/// Whether some row's norm lies within `rel` (relative) of the normalisation clamp, where
/// fast and scalar may take different branches of a discontinuous derivative.
pub fn near_clamp(data: &[f32], dim: usize, rel: f64) -> bool {
    let c = f64::from(NORM_EPS);
    data.chunks(dim).any(|r| (norm(r) - c).abs() <= rel * c)
}

/// Whether some pair of rows is at a positive squared distance so small that `f32`
/// underflow dominates it (the Euclidean gradient `(a - b) / d` then differs wildly).
pub fn tiny_pair(a: &[f32], b: &[f32]) -> bool {
    let s = sq_dist(a, b);
    s > 0.0 && s < (a.len() as f64 + 8.0) * TINY * 1e8
}

/// Whether some row has a nonzero element so small that its square underflows: norms and
/// cosine gradients lose their relative accuracy on such rows.
pub fn has_tiny_elements(data: &[f32]) -> bool {
    data.iter().any(|&v| v != 0.0 && f64::from(v).abs() < 1e-18)
}

pub fn first_non_finite(v: &[f32]) -> Option<usize> {
    v.iter().position(|x| !x.is_finite())
}

/// The `NonFinite` error a kernel documents for row-major `data` of `cols` columns (1 for
/// one-dimensional data): the row and column of the first NaN or infinity.
pub fn non_finite(buffer: &'static str, data: &[f32], cols: usize) -> Option<Error> {
    first_non_finite(data).map(|position| Error::NonFinite {
        buffer,
        row: position / cols,
        col: position % cols,
    })
}

/// The `InvalidParameter` error for parameter `name`, whose documented domain is
/// `expected` (one of the `DOMAIN_*` constants).
pub fn invalid(name: &'static str, expected: &'static str) -> Error {
    Error::InvalidParameter { name, expected }
}

/// Documented domains of the parameters, as `Error::InvalidParameter` states them.
pub const DOMAIN_FINITE: &str = "finite";
/// The margin of the batch triplet losses.
pub const DOMAIN_BATCH_MARGIN: &str = "finite, |margin| <= 2^100";
/// `eps` of the explicit-triplet loss.
pub const DOMAIN_EPS: &str = "|eps| <= 1, and 0 for cosine";
/// Proxy-NCA's `softmax_scale` and Proxy-Anchor's `alpha`.
pub const DOMAIN_POSITIVE: &str = "finite and > 0";
/// `k` of `knn` and `retrieval_metrics`.
pub const DOMAIN_K: &str = "1 <= k <= references a query can retrieve";

/// Argmax (`far`) or argmin of `row[j]` over `cands`, ties to the smallest index.
pub fn extreme(row: &[f32], cands: impl Iterator<Item = usize>, far: bool) -> Option<usize> {
    let mut best: Option<usize> = None;
    for j in cands {
        best = match best {
            None => Some(j),
            Some(b) if (far && row[j] > row[b]) || (!far && row[j] < row[b]) => Some(j),
            keep => keep,
        };
    }
    best
}

/// Whether the Gram and the direct forms of the Euclidean distances of `data` (rows of
/// `dim`) are both exact in `f32`, and so equal: integers up to 64 in magnitude with
/// squared norms below 2^24.
pub fn gram_exact(data: &[f32], dim: usize) -> bool {
    data.iter().all(|v| v.fract() == 0.0 && v.abs() <= 64.0)
        && data
            .chunks(dim)
            .all(|r| r.iter().map(|v| v * v).sum::<f32>() < 16_777_216.0)
}
