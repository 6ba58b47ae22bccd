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
