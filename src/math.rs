//! The one math shim: `core` has no `sqrt`/`exp`/`ln` on stable without `std`, so every
//! transcendental goes through `libm` here.

/// Correctly rounded square root. On x86-64 it goes through `wide`'s `sqrt`, which
/// inlines the SSE instruction (VEX-encoded when the build enables AVX) so the compiler
/// schedules it with the surrounding vector code; libm's `sqrtf` there is an opaque call
/// with a legacy-SSE encoding that costs an SSE/AVX transition inside AVX code (measured:
/// Euclidean matrices 13x slower at `-C target-cpu=x86-64-v3`). Elsewhere libm's `sqrtf`,
/// also correctly rounded.
#[inline]
pub(crate) fn sqrt(x: f32) -> f32 {
    #[cfg(target_arch = "x86_64")]
    {
        let [r, ..] = wide::f32x4::splat(x).sqrt().to_array();
        r
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        libm::sqrtf(x)
    }
}

#[inline]
pub(crate) fn exp(x: f32) -> f32 {
    libm::expf(x)
}

#[inline]
pub(crate) fn ln_1p(x: f32) -> f32 {
    libm::log1pf(x)
}

#[inline]
pub(crate) fn ln(x: f32) -> f32 {
    libm::logf(x)
}

/// `ln(1 + e^v)` without overflow for any finite or infinite `v`.
#[inline]
pub(crate) fn softplus(v: f32) -> f32 {
    if v > 0.0 {
        v + ln_1p(exp(-v))
    } else {
        ln_1p(exp(v))
    }
}

/// `1 / (1 + e^-v)`, the derivative of [`softplus`], without overflow.
#[inline]
pub(crate) fn sigmoid(v: f32) -> f32 {
    if v >= 0.0 {
        1.0 / (1.0 + exp(-v))
    } else {
        let e = exp(v);
        e / (1.0 + e)
    }
}

/// `max(v, 0)` that keeps NaN as NaN (unlike `f32::max`).
#[inline]
pub(crate) fn relu(v: f32) -> f32 {
    if v < 0.0 {
        0.0
    } else {
        v
    }
}

/// `e^x` by range reduction and a degree-7 polynomial (Cephes' `expf` constants), in
/// plain arithmetic that vectorises inside a dispatched kernel. `x` is clamped to
/// `[-87, 88]`: below, the result is `e^-87` (about `1.6e-38`) instead of a smaller
/// number. Relative error about `2^-22` on the clamped range.
#[inline(always)]
pub(crate) fn exp_poly(x: f32) -> f32 {
    const LOG2E: f32 = core::f32::consts::LOG2_E;
    const ROUND: f32 = 12_582_912.0; // 1.5 * 2^23: adding it rounds to an integer.
    let x = x.clamp(-87.0, 88.0);
    // `kr`'s last mantissa bits hold `k` (two's complement around `ROUND`'s).
    let kr = x * LOG2E + ROUND;
    let k = kr - ROUND;
    let r = x - k * 0.693_359_4 - k * -2.121_944_4e-4;
    let mut p = 1.987_569_1e-4_f32;
    p = p * r + 1.398_199_9e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 1.666_666_5e-1;
    p = p * r + 5e-1;
    let y = p * r * r + r + 1.0;
    // `2^k` from the bits of `kr` rather than a saturating float-to-integer conversion
    // (which does not vectorise): `k` is in `[-126, 127]`, the exponent field `k + 127`
    // in `[1, 254]`.
    let bits = kr.to_bits().wrapping_sub(ROUND.to_bits()).wrapping_add(127) << 23;
    y * f32::from_bits(bits)
}

#[cfg(test)]
mod tests {
    use super::exp_poly;

    /// The polynomial against `f64`'s `exp` over the whole clamped range, at every power
    /// of two's boundary and in between: relative error below `2^-21` (the documented
    /// `2^-22` plus the last product's rounding), the clamp at both ends, NaN kept.
    #[test]
    fn exp_poly_is_within_its_bound() {
        let mut worst = 0.0_f64;
        let mut x = -87.0_f32;
        while x <= 88.0 {
            let got = f64::from(exp_poly(x));
            let want = f64::from(x).exp();
            worst = worst.max((got - want).abs() / want);
            x += 0.001_3;
        }
        for k in -125..=126 {
            let x = k as f32 * core::f32::consts::LN_2;
            let got = f64::from(exp_poly(x));
            let want = f64::from(x).exp();
            worst = worst.max((got - want).abs() / want);
        }
        assert!(worst < 2.0_f64.powi(-21), "relative error {worst:e}");
        assert_eq!(exp_poly(-1e30), exp_poly(-87.0));
        assert_eq!(exp_poly(1e30), exp_poly(88.0));
        assert!(exp_poly(-87.0) > 0.0);
        assert!(exp_poly(f32::NAN).is_nan());
        assert_eq!(exp_poly(0.0), 1.0);
    }
}
