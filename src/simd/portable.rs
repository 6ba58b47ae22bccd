//! The portable backend: `wide::f32x8`, whose code path `wide` picks at compile time.

use super::Simd;
use wide::f32x8;

/// Token of the portable backend; always available.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Portable;

/// Register tile of the portable backend (see [`super::Kernel`]). With 256-bit registers
/// (AVX builds) or 32 NEON registers: a square 8 x 8 tile (8 accumulators). On SSE2,
/// where an `f32x8` takes two of the sixteen registers: 4 rows x 1 vector.
#[cfg(any(target_feature = "avx", target_arch = "aarch64"))]
pub(crate) const MR: usize = 8;
/// See [`MR`].
#[cfg(any(target_feature = "avx", target_arch = "aarch64"))]
pub(crate) const NV: usize = 1;
/// See [`MR`].
#[cfg(not(any(target_feature = "avx", target_arch = "aarch64")))]
pub(crate) const MR: usize = 4;
/// See [`MR`].
#[cfg(not(any(target_feature = "avx", target_arch = "aarch64")))]
pub(crate) const NV: usize = 1;

impl Simd for Portable {
    const LANES: usize = 8;
    type V = f32x8;

    #[inline(always)]
    fn zero(self) -> f32x8 {
        f32x8::ZERO
    }
    #[inline(always)]
    fn splat(self, x: f32) -> f32x8 {
        f32x8::splat(x)
    }
    #[inline(always)]
    fn load(self, src: &[f32]) -> f32x8 {
        if let Some(chunk) = src.first_chunk::<8>() {
            f32x8::new(*chunk)
        } else {
            let mut buf = [0.0_f32; 8];
            for (b, v) in buf.iter_mut().zip(src) {
                *b = *v;
            }
            f32x8::new(buf)
        }
    }
    #[inline(always)]
    fn store(self, v: f32x8, dst: &mut [f32]) {
        if let Some(chunk) = dst.first_chunk_mut::<8>() {
            *chunk = v.to_array();
        } else {
            for (d, x) in dst.iter_mut().zip(v.to_array()) {
                *d = x;
            }
        }
    }
    #[inline(always)]
    fn add(self, a: f32x8, b: f32x8) -> f32x8 {
        a + b
    }
    #[inline(always)]
    fn sub(self, a: f32x8, b: f32x8) -> f32x8 {
        a - b
    }
    #[inline(always)]
    fn mul(self, a: f32x8, b: f32x8) -> f32x8 {
        a * b
    }
    #[inline(always)]
    fn div(self, a: f32x8, b: f32x8) -> f32x8 {
        a / b
    }
    #[inline(always)]
    fn fma(self, a: f32x8, b: f32x8, c: f32x8) -> f32x8 {
        a.mul_add(b, c)
    }
    #[inline(always)]
    fn min(self, a: f32x8, b: f32x8) -> f32x8 {
        a.simd_lt(b).select(a, b)
    }
    #[inline(always)]
    fn max(self, a: f32x8, b: f32x8) -> f32x8 {
        a.simd_gt(b).select(a, b)
    }
    #[inline(always)]
    fn sqrt(self, a: f32x8) -> f32x8 {
        a.sqrt()
    }
    #[inline(always)]
    fn reduce_add(self, a: f32x8) -> f32 {
        a.reduce_add()
    }
    #[inline(always)]
    fn transpose(self, rows: &mut [f32x8]) {
        let Some(rows) = rows.first_chunk_mut::<8>() else {
            return;
        };
        let m = rows.map(f32x8::to_array);
        for (c, row) in rows.iter_mut().enumerate() {
            *row = f32x8::new(m.map(|r| r[c]));
        }
    }
    #[inline(always)]
    fn load_f16(self, src: &[u16]) -> f32x8 {
        let mut buf = [0.0_f32; 8];
        for (b, &h) in buf.iter_mut().zip(src) {
            *b = crate::retrieval::quant::f16_to_f32(h);
        }
        f32x8::new(buf)
    }
    #[inline(always)]
    fn load_bf16(self, src: &[u16]) -> f32x8 {
        let mut buf = [0.0_f32; 8];
        for (b, &h) in buf.iter_mut().zip(src) {
            *b = crate::retrieval::quant::bf16_to_f32(h);
        }
        f32x8::new(buf)
    }
    #[inline(always)]
    fn load_i8(self, src: &[i8]) -> f32x8 {
        let mut buf = [0.0_f32; 8];
        for (b, &c) in buf.iter_mut().zip(src) {
            *b = f32::from(c);
        }
        f32x8::new(buf)
    }
}
