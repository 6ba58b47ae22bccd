//! x86-64 backends over `core::arch`: AVX2 + FMA (8 lanes) and AVX-512F (16 lanes).
//!
//! The only module of the crate that contains `unsafe`. Two kinds of blocks:
//!
//! - intrinsic calls inside the [`Simd`] methods. They are sound because a method can only
//!   be called on a token ([`Avx2`], [`Avx512`]), and a token is only constructed by
//!   `detect`, after CPUID (through `cpufeatures`, which also checks that the operating
//!   system saves the wide registers) reported the features. Loads and stores check
//!   the slice length first and use masked instructions for a short tail, which touch no
//!   memory outside the slice;
//! - calls into the `#[target_feature]` entry points, justified the same way.

#![allow(unsafe_code)]
#![warn(clippy::undocumented_unsafe_blocks)]

use super::{Bf16Epilogue, Bf16Tile, I8Epilogue, I8Tile, Kernel, Simd};
use core::arch::x86_64::{
    __m256, __m256i, __m512, _mm256_add_ps, _mm256_castps256_ps128, _mm256_cmpgt_epi32,
    _mm256_extractf128_ps, _mm256_fmadd_ps, _mm256_loadu_ps, _mm256_maskload_ps,
    _mm256_maskstore_ps, _mm256_max_ps, _mm256_min_ps, _mm256_mul_ps, _mm256_permute2f128_ps,
    _mm256_set1_epi32, _mm256_set1_ps, _mm256_setr_epi32, _mm256_setzero_ps, _mm256_shuffle_ps,
    _mm256_sqrt_ps, _mm256_storeu_ps, _mm256_sub_ps, _mm256_unpackhi_ps, _mm256_unpacklo_ps,
    _mm512_add_ps, _mm512_fmadd_ps, _mm512_loadu_ps, _mm512_mask_storeu_ps, _mm512_maskz_loadu_ps,
    _mm512_max_ps, _mm512_min_ps, _mm512_mul_ps, _mm512_reduce_add_ps, _mm512_set1_ps,
    _mm512_setzero_ps, _mm512_shuffle_f32x4, _mm512_shuffle_ps, _mm512_sqrt_ps, _mm512_storeu_ps,
    _mm512_sub_ps, _mm512_unpackhi_ps, _mm512_unpacklo_ps, _mm_add_ps, _mm_add_ss, _mm_cvtss_f32,
    _mm_movehl_ps, _mm_shuffle_ps,
};
use core::arch::x86_64::{
    _mm256_and_si256, _mm256_castps_si256, _mm256_castsi256_ps, _mm256_cmpeq_epi32,
    _mm256_cvtepi32_ps, _mm256_cvtepi8_epi32, _mm256_cvtepu16_epi32, _mm256_or_si256,
    _mm256_slli_epi32, _mm512_castsi512_ps, _mm512_cvtepi32_ps, _mm512_cvtepi8_epi32,
    _mm512_cvtepu16_epi32, _mm512_cvtph_ps, _mm512_slli_epi32, _mm_loadl_epi64, _mm_loadu_si128,
};

cpufeatures::new!(cpuid_avx2_fma, "avx2", "fma");
cpufeatures::new!(cpuid_avx512f, "avx512f");

/// Token of the AVX2 + FMA backend: exists only on a CPU that has both.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Avx2 {
    _detected: (),
}

impl Avx2 {
    /// The token, when CPUID reports AVX2 and FMA (cached after the first call).
    #[inline]
    pub(crate) fn detect() -> Option<Self> {
        cpuid_avx2_fma::get().then_some(Avx2 { _detected: () })
    }
}

/// Token of the AVX-512F backend: exists only on a CPU that has it.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Avx512 {
    _detected: (),
}

impl Avx512 {
    /// The token, when CPUID reports AVX-512F (cached after the first call).
    #[inline]
    pub(crate) fn detect() -> Option<Self> {
        cpuid_avx512f::get().then_some(Avx512 { _detected: () })
    }
}

/// Register tile of the AVX2 backend: a square 8 x 8 tile, 8 of the 16 `ymm` registers
/// (as many accumulators as FMAs in flight: 2 ports x 4 cycles of latency).
const AVX2_MR: usize = 8;
const AVX2_NV: usize = 1;
/// Register tile of the AVX-512 backend: a square 16 x 16 tile, 16 of the 32 `zmm`
/// registers; each step issues 16 FMAs for 1 load and 16 broadcasts. (The distance tile
/// takes a paired 8 x 32 shape instead for rows of at least 256 elements.)
const AVX512_MR: usize = 16;
const AVX512_NV: usize = 1;

#[target_feature(enable = "avx2,fma")]
fn avx2_entry<K: Kernel>(token: Avx2, kernel: K) -> K::Output {
    kernel.run::<Avx2, AVX2_MR, AVX2_NV>(token)
}

#[target_feature(enable = "avx512f")]
fn avx512_entry<K: Kernel>(token: Avx512, kernel: K) -> K::Output {
    kernel.run::<Avx512, AVX512_MR, AVX512_NV>(token)
}

/// Runs `kernel` on the AVX2 backend.
#[inline]
pub(crate) fn run_avx2<K: Kernel>(token: Avx2, kernel: K) -> K::Output {
    // SAFETY: `token` proves that CPUID reported AVX2 and FMA, the features the entry
    // point enables.
    unsafe { avx2_entry(token, kernel) }
}

/// Runs `kernel` on the AVX-512 backend.
#[inline]
pub(crate) fn run_avx512<K: Kernel>(token: Avx512, kernel: K) -> K::Output {
    // SAFETY: `token` proves that CPUID reported AVX-512F, the feature the entry point
    // enables.
    unsafe { avx512_entry(token, kernel) }
}

impl Simd for Avx2 {
    const LANES: usize = 8;
    type V = __m256;

    #[inline(always)]
    fn zero(self) -> __m256 {
        // SAFETY: the token proves AVX (implied by AVX2).
        unsafe { _mm256_setzero_ps() }
    }
    #[inline(always)]
    fn splat(self, x: f32) -> __m256 {
        // SAFETY: the token proves AVX.
        unsafe { _mm256_set1_ps(x) }
    }
    #[inline(always)]
    fn load(self, src: &[f32]) -> __m256 {
        if src.len() >= 8 {
            // SAFETY: the token proves AVX; `src` has at least 8 readable elements and the
            // load has no alignment requirement.
            unsafe { _mm256_loadu_ps(src.as_ptr()) }
        } else {
            // SAFETY: the token proves AVX2; lanes `>= src.len()` are masked off, and a
            // masked-off lane is neither read nor able to fault.
            unsafe { _mm256_maskload_ps(src.as_ptr(), self.mask(src.len())) }
        }
    }
    #[inline(always)]
    fn store(self, v: __m256, dst: &mut [f32]) {
        if dst.len() >= 8 {
            // SAFETY: the token proves AVX; `dst` has at least 8 writable elements and the
            // store has no alignment requirement.
            unsafe { _mm256_storeu_ps(dst.as_mut_ptr(), v) }
        } else {
            // SAFETY: the token proves AVX2; lanes `>= dst.len()` are masked off, and a
            // masked-off lane is neither written nor able to fault.
            unsafe { _mm256_maskstore_ps(dst.as_mut_ptr(), self.mask(dst.len()), v) }
        }
    }
    #[inline(always)]
    fn add(self, a: __m256, b: __m256) -> __m256 {
        // SAFETY: the token proves AVX.
        unsafe { _mm256_add_ps(a, b) }
    }
    #[inline(always)]
    fn sub(self, a: __m256, b: __m256) -> __m256 {
        // SAFETY: the token proves AVX.
        unsafe { _mm256_sub_ps(a, b) }
    }
    #[inline(always)]
    fn mul(self, a: __m256, b: __m256) -> __m256 {
        // SAFETY: the token proves AVX.
        unsafe { _mm256_mul_ps(a, b) }
    }
    #[inline(always)]
    fn div(self, a: __m256, b: __m256) -> __m256 {
        // SAFETY: the token proves AVX.
        unsafe { core::arch::x86_64::_mm256_div_ps(a, b) }
    }
    #[inline(always)]
    fn fma(self, a: __m256, b: __m256, c: __m256) -> __m256 {
        // SAFETY: the token proves FMA.
        unsafe { _mm256_fmadd_ps(a, b, c) }
    }
    #[inline(always)]
    fn min(self, a: __m256, b: __m256) -> __m256 {
        // SAFETY: the token proves AVX. `vminps(a, b)` is `a < b ? a : b`.
        unsafe { _mm256_min_ps(a, b) }
    }
    #[inline(always)]
    fn max(self, a: __m256, b: __m256) -> __m256 {
        // SAFETY: the token proves AVX. `vmaxps(a, b)` is `a > b ? a : b`.
        unsafe { _mm256_max_ps(a, b) }
    }
    #[inline(always)]
    fn sqrt(self, a: __m256) -> __m256 {
        // SAFETY: the token proves AVX.
        unsafe { _mm256_sqrt_ps(a) }
    }
    #[inline(always)]
    fn reduce_add(self, a: __m256) -> f32 {
        // SAFETY: the token proves AVX (and so SSE, SSE3).
        unsafe {
            let lo = _mm256_castps256_ps128(a);
            let hi = _mm256_extractf128_ps::<1>(a);
            let s4 = _mm_add_ps(lo, hi);
            let s2 = _mm_add_ps(s4, _mm_movehl_ps(s4, s4));
            let s1 = _mm_add_ss(s2, _mm_shuffle_ps::<0b01>(s2, s2));
            _mm_cvtss_f32(s1)
        }
    }
    #[inline(always)]
    fn transpose(self, rows: &mut [__m256]) {
        let Some(r) = rows.first_chunk_mut::<8>() else {
            return;
        };
        // SAFETY: the token proves AVX; register-only shuffles.
        unsafe {
            // Interleave row pairs: t[2i] = (r2i_0 r2i+1_0 r2i_1 r2i+1_1 | ...).
            let mut t = [_mm256_setzero_ps(); 8];
            for i in 0..4 {
                t[2 * i] = _mm256_unpacklo_ps(r[2 * i], r[2 * i + 1]);
                t[2 * i + 1] = _mm256_unpackhi_ps(r[2 * i], r[2 * i + 1]);
            }
            // u[4i + k], 128-bit half h: column 4h + k of rows 4i..4i+4.
            let mut u = [_mm256_setzero_ps(); 8];
            for i in 0..2 {
                u[4 * i] = _mm256_shuffle_ps::<0x44>(t[4 * i], t[4 * i + 2]);
                u[4 * i + 1] = _mm256_shuffle_ps::<0xEE>(t[4 * i], t[4 * i + 2]);
                u[4 * i + 2] = _mm256_shuffle_ps::<0x44>(t[4 * i + 1], t[4 * i + 3]);
                u[4 * i + 3] = _mm256_shuffle_ps::<0xEE>(t[4 * i + 1], t[4 * i + 3]);
            }
            for k in 0..4 {
                r[k] = _mm256_permute2f128_ps::<0x20>(u[k], u[4 + k]);
                r[4 + k] = _mm256_permute2f128_ps::<0x31>(u[k], u[4 + k]);
            }
        }
    }
    #[inline(always)]
    fn load_f16(self, src: &[u16]) -> __m256 {
        let mut buf = [0_u16; 8];
        let src = if let Some(c) = src.first_chunk::<8>() {
            c
        } else {
            for (b, &h) in buf.iter_mut().zip(src) {
                *b = h;
            }
            &buf
        };
        // SAFETY: the token proves AVX2; `src` has 8 readable `u16` (16 bytes), the load
        // has no alignment requirement. The rest is register arithmetic: the f16 bits
        // without sign, shifted into an `f32`'s place, times 2^112 (exact, subnormals
        // included), the exponent forced to all ones for infinity and NaN, the sign
        // copied.
        unsafe {
            let h = _mm256_cvtepu16_epi32(_mm_loadu_si128(src.as_ptr().cast()));
            let mag = _mm256_slli_epi32::<13>(_mm256_and_si256(h, _mm256_set1_epi32(0x7fff)));
            let f = _mm256_mul_ps(_mm256_castsi256_ps(mag), _mm256_set1_ps(5.192_297e33));
            let e = _mm256_set1_epi32(0x7c00);
            let special = _mm256_cmpeq_epi32(_mm256_and_si256(h, e), e);
            let bits = _mm256_or_si256(
                _mm256_castps_si256(f),
                _mm256_and_si256(special, _mm256_set1_epi32(0x7f80_0000)),
            );
            let sign = _mm256_slli_epi32::<16>(_mm256_and_si256(h, _mm256_set1_epi32(0x8000)));
            _mm256_castsi256_ps(_mm256_or_si256(bits, sign))
        }
    }
    #[inline(always)]
    fn load_bf16(self, src: &[u16]) -> __m256 {
        let mut buf = [0_u16; 8];
        let src = if let Some(c) = src.first_chunk::<8>() {
            c
        } else {
            for (b, &h) in buf.iter_mut().zip(src) {
                *b = h;
            }
            &buf
        };
        // SAFETY: the token proves AVX2; 16 readable bytes, unaligned load.
        unsafe {
            let h = _mm256_cvtepu16_epi32(_mm_loadu_si128(src.as_ptr().cast()));
            _mm256_castsi256_ps(_mm256_slli_epi32::<16>(h))
        }
    }
    #[inline(always)]
    fn load_i8(self, src: &[i8]) -> __m256 {
        let mut buf = [0_i8; 8];
        let src = if let Some(c) = src.first_chunk::<8>() {
            c
        } else {
            for (b, &h) in buf.iter_mut().zip(src) {
                *b = h;
            }
            &buf
        };
        // SAFETY: the token proves AVX2; `_mm_loadl_epi64` reads 8 bytes, all readable.
        unsafe {
            let c = _mm256_cvtepi8_epi32(_mm_loadl_epi64(src.as_ptr().cast()));
            _mm256_cvtepi32_ps(c)
        }
    }
}

impl Avx2 {
    /// Lane mask with the first `len` (< 8) lanes set, for `maskload`/`maskstore`.
    /// Takes the token as the proof that AVX2 is present.
    #[inline(always)]
    #[allow(clippy::unused_self)]
    fn mask(self, len: usize) -> __m256i {
        let len = i32::try_from(len).unwrap_or(i32::MAX);
        // SAFETY: the token proves AVX2.
        unsafe {
            _mm256_cmpgt_epi32(
                _mm256_set1_epi32(len),
                _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7),
            )
        }
    }
}

/// Mask with the first `len` (< 16) lanes set.
#[inline(always)]
fn avx512_mask(len: usize) -> u16 {
    ((1_u32 << len.min(16)) - 1) as u16
}

impl Simd for Avx512 {
    const LANES: usize = 16;
    type V = __m512;

    #[inline(always)]
    fn zero(self) -> __m512 {
        // SAFETY: the token proves AVX-512F.
        unsafe { _mm512_setzero_ps() }
    }
    #[inline(always)]
    fn splat(self, x: f32) -> __m512 {
        // SAFETY: the token proves AVX-512F.
        unsafe { _mm512_set1_ps(x) }
    }
    #[inline(always)]
    fn load(self, src: &[f32]) -> __m512 {
        if src.len() >= 16 {
            // SAFETY: the token proves AVX-512F; `src` has at least 16 readable elements
            // and the load has no alignment requirement.
            unsafe { _mm512_loadu_ps(src.as_ptr()) }
        } else {
            // SAFETY: the token proves AVX-512F; lanes `>= src.len()` are masked off, and
            // a masked-off lane is neither read nor able to fault.
            unsafe { _mm512_maskz_loadu_ps(avx512_mask(src.len()), src.as_ptr()) }
        }
    }
    #[inline(always)]
    fn store(self, v: __m512, dst: &mut [f32]) {
        if dst.len() >= 16 {
            // SAFETY: the token proves AVX-512F; `dst` has at least 16 writable elements
            // and the store has no alignment requirement.
            unsafe { _mm512_storeu_ps(dst.as_mut_ptr(), v) }
        } else {
            // SAFETY: the token proves AVX-512F; lanes `>= dst.len()` are masked off, and
            // a masked-off lane is neither written nor able to fault.
            unsafe { _mm512_mask_storeu_ps(dst.as_mut_ptr(), avx512_mask(dst.len()), v) }
        }
    }
    #[inline(always)]
    fn add(self, a: __m512, b: __m512) -> __m512 {
        // SAFETY: the token proves AVX-512F.
        unsafe { _mm512_add_ps(a, b) }
    }
    #[inline(always)]
    fn sub(self, a: __m512, b: __m512) -> __m512 {
        // SAFETY: the token proves AVX-512F.
        unsafe { _mm512_sub_ps(a, b) }
    }
    #[inline(always)]
    fn mul(self, a: __m512, b: __m512) -> __m512 {
        // SAFETY: the token proves AVX-512F.
        unsafe { _mm512_mul_ps(a, b) }
    }
    #[inline(always)]
    fn div(self, a: __m512, b: __m512) -> __m512 {
        // SAFETY: the token proves AVX-512F.
        unsafe { core::arch::x86_64::_mm512_div_ps(a, b) }
    }
    #[inline(always)]
    fn fma(self, a: __m512, b: __m512, c: __m512) -> __m512 {
        // SAFETY: the token proves AVX-512F.
        unsafe { _mm512_fmadd_ps(a, b, c) }
    }
    #[inline(always)]
    fn min(self, a: __m512, b: __m512) -> __m512 {
        // SAFETY: the token proves AVX-512F. `vminps(a, b)` is `a < b ? a : b`.
        unsafe { _mm512_min_ps(a, b) }
    }
    #[inline(always)]
    fn max(self, a: __m512, b: __m512) -> __m512 {
        // SAFETY: the token proves AVX-512F. `vmaxps(a, b)` is `a > b ? a : b`.
        unsafe { _mm512_max_ps(a, b) }
    }
    #[inline(always)]
    fn sqrt(self, a: __m512) -> __m512 {
        // SAFETY: the token proves AVX-512F.
        unsafe { _mm512_sqrt_ps(a) }
    }
    #[inline(always)]
    fn reduce_add(self, a: __m512) -> f32 {
        // SAFETY: the token proves AVX-512F.
        unsafe { _mm512_reduce_add_ps(a) }
    }
    #[inline(always)]
    fn transpose(self, rows: &mut [__m512]) {
        let Some(r) = rows.first_chunk_mut::<16>() else {
            return;
        };
        // SAFETY: the token proves AVX-512F; register-only shuffles.
        unsafe {
            // Interleave row pairs within each 128-bit lane.
            let mut t = [_mm512_setzero_ps(); 16];
            for i in 0..8 {
                t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
                t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
            }
            // u[4i + k], 128-bit lane l: column 4l + k of rows 4i..4i+4.
            let mut u = [_mm512_setzero_ps(); 16];
            for i in 0..4 {
                u[4 * i] = _mm512_shuffle_ps::<0x44>(t[4 * i], t[4 * i + 2]);
                u[4 * i + 1] = _mm512_shuffle_ps::<0xEE>(t[4 * i], t[4 * i + 2]);
                u[4 * i + 2] = _mm512_shuffle_ps::<0x44>(t[4 * i + 1], t[4 * i + 3]);
                u[4 * i + 3] = _mm512_shuffle_ps::<0xEE>(t[4 * i + 1], t[4 * i + 3]);
            }
            // Gather the 128-bit lanes: v[k] = (u[k].0 u[k].2 u[4+k].0 u[4+k].2), ...
            let mut v = [_mm512_setzero_ps(); 16];
            for k in 0..4 {
                v[k] = _mm512_shuffle_f32x4::<0x88>(u[k], u[4 + k]);
                v[4 + k] = _mm512_shuffle_f32x4::<0xDD>(u[k], u[4 + k]);
                v[8 + k] = _mm512_shuffle_f32x4::<0x88>(u[8 + k], u[12 + k]);
                v[12 + k] = _mm512_shuffle_f32x4::<0xDD>(u[8 + k], u[12 + k]);
            }
            // Column c = 4l + k ends in r[c].
            for k in 0..4 {
                r[k] = _mm512_shuffle_f32x4::<0x88>(v[k], v[8 + k]);
                r[8 + k] = _mm512_shuffle_f32x4::<0xDD>(v[k], v[8 + k]);
                r[4 + k] = _mm512_shuffle_f32x4::<0x88>(v[4 + k], v[12 + k]);
                r[12 + k] = _mm512_shuffle_f32x4::<0xDD>(v[4 + k], v[12 + k]);
            }
        }
    }
    #[inline(always)]
    fn load_f16(self, src: &[u16]) -> __m512 {
        let mut buf = [0_u16; 16];
        let src = if let Some(c) = src.first_chunk::<16>() {
            c
        } else {
            for (b, &h) in buf.iter_mut().zip(src) {
                *b = h;
            }
            &buf
        };
        // SAFETY: the token proves AVX-512F (`vcvtph2ps` on 512 bits is AVX-512F); 32
        // readable bytes, unaligned load.
        unsafe { _mm512_cvtph_ps(core::arch::x86_64::_mm256_loadu_si256(src.as_ptr().cast())) }
    }
    #[inline(always)]
    fn load_bf16(self, src: &[u16]) -> __m512 {
        let mut buf = [0_u16; 16];
        let src = if let Some(c) = src.first_chunk::<16>() {
            c
        } else {
            for (b, &h) in buf.iter_mut().zip(src) {
                *b = h;
            }
            &buf
        };
        // SAFETY: the token proves AVX-512F; 32 readable bytes, unaligned load.
        unsafe {
            let h =
                _mm512_cvtepu16_epi32(core::arch::x86_64::_mm256_loadu_si256(src.as_ptr().cast()));
            _mm512_castsi512_ps(_mm512_slli_epi32::<16>(h))
        }
    }
    #[inline(always)]
    fn load_i8(self, src: &[i8]) -> __m512 {
        let mut buf = [0_i8; 16];
        let src = if let Some(c) = src.first_chunk::<16>() {
            c
        } else {
            for (b, &h) in buf.iter_mut().zip(src) {
                *b = h;
            }
            &buf
        };
        // SAFETY: the token proves AVX-512F; 16 readable bytes, unaligned load.
        unsafe { _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(src.as_ptr().cast()))) }
    }
}

// ---------------------------------------------------------------------------------------
// The bf16 filter tile of the retrieval kernels (AVX-512 BF16).

/// Token of the AVX-512 BF16 dot product (`vdpbf16ps`): exists only on a CPU with
/// AVX-512F (its register state saved by the operating system) and AVX512_BF16.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Bf16 {
    _detected: (),
}

/// CPUID leaf 7, sub-leaf 1, EAX bit 5: AVX512_BF16 (cached: 0 unknown, 1 no, 2 yes).
static BF16_CPUID: core::sync::atomic::AtomicU8 = core::sync::atomic::AtomicU8::new(0);

impl Bf16 {
    /// The token, when AVX-512F is usable and CPUID reports AVX512_BF16.
    #[inline]
    pub(crate) fn detect() -> Option<Self> {
        use core::sync::atomic::Ordering;
        Avx512::detect()?;
        let known = BF16_CPUID.load(Ordering::Relaxed);
        let yes = if known == 0 {
            // `cpuid` exists on every x86-64 CPU; leaf 7's sub-leaf count is EAX of
            // sub-leaf 0 (leaf 7 itself exists: AVX-512F was reported there).
            let max_sub = core::arch::x86_64::__cpuid_count(7, 0).eax;
            let yes = max_sub >= 1 && core::arch::x86_64::__cpuid_count(7, 1).eax & (1 << 5) != 0;
            BF16_CPUID.store(if yes { 2 } else { 1 }, Ordering::Relaxed);
            yes
        } else {
            known == 2
        };
        yes.then_some(Bf16 { _detected: () })
    }
}

/// Computes the tile and returns `true`; does nothing and returns `false` when a buffer
/// is shorter than the shapes require.
#[inline]
pub(crate) fn bf16_tile(token: Bf16, mut t: Bf16Tile<'_>) -> bool {
    let panels_a = t.rows.div_ceil(16);
    let panels_b = t.cols.div_ceil(16);
    let plen = t.pairs.saturating_mul(16);
    let fits = t.a.len() >= panels_a.saturating_mul(plen)
        && t.b.len() >= panels_b.saturating_mul(plen)
        && t.a_terms.len() >= panels_a * 16
        && t.b_terms.len() >= panels_b * 16
        && match &t.keep {
            Some((bars, masks)) => {
                bars.len() >= t.rows && masks.len() >= t.rows.saturating_mul(panels_b)
            }
            None => t.out.len() >= t.rows.saturating_mul(t.cols),
        };
    if !fits {
        return false;
    }
    // SAFETY: `token` proves AVX-512F and AVX512_BF16, the features the entry points
    // enable; the buffer lengths were checked above, as the entry points require.
    unsafe {
        match (t.rows, t.keep.is_some()) {
            (1, false) => bf16_rows_entry::<1>(token, &mut t),
            (2, false) => bf16_rows_entry::<2>(token, &mut t),
            (3, false) => bf16_rows_entry::<3>(token, &mut t),
            _ => bf16_tile_entry(token, t),
        }
    }
    true
}

/// The filter values of `R` (1 to 3) rows against every column: a matrix-vector shape,
/// bound by reading the columns once. Four column panels advance together (independent
/// accumulators for the dot product's latency), each pair step one load per panel and
/// one broadcast per row.
///
/// # Safety
///
/// As [`bf16_tile_entry`], with `t.rows == R` and `t.keep` `None`.
#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn bf16_rows_entry<const R: usize>(_token: Bf16, t: &mut Bf16Tile<'_>) {
    use core::arch::x86_64::{
        __m512bh, __m512i, _mm512_dpbf16_ps, _mm512_loadu_si512, _mm512_set1_epi32,
    };
    const G: usize = 4;
    let plen = t.pairs * 16;
    let panels = t.cols.div_ceil(16);
    let zero = _mm512_setzero_ps();
    let out = t.out.as_mut_ptr();
    let mut c = 0;
    while c < panels {
        let g = (panels - c).min(G);
        let mut acc = [[zero; G]; R];
        for p in 0..t.pairs {
            let mut av = [zero; R];
            for (r, a) in av.iter_mut().enumerate() {
                // SAFETY: `p * 16 + r < plen <= a.len()` (one panel of rows).
                let w = unsafe { *t.a.get_unchecked(p * 16 + r) };
                *a = _mm512_castsi512_ps(_mm512_set1_epi32(w.cast_signed()));
            }
            for j in 0..G {
                if j < g {
                    // SAFETY: `(c + j) * plen + p * 16 + 16 <= panels * plen <= b.len()`.
                    let bv: __m512i = unsafe {
                        _mm512_loadu_si512(t.b.as_ptr().add((c + j) * plen + p * 16).cast())
                    };
                    // SAFETY: same size, every bit pattern valid.
                    let bv = unsafe { core::mem::transmute::<__m512i, __m512bh>(bv) };
                    for (acc_r, &a) in acc.iter_mut().zip(av.iter()) {
                        // SAFETY: as for `bv`.
                        let a = unsafe { core::mem::transmute::<__m512, __m512bh>(a) };
                        acc_r[j] = _mm512_dpbf16_ps(acc_r[j], a, bv);
                    }
                }
            }
        }
        for j in 0..g {
            let c0 = (c + j) * 16;
            let mask = avx512_mask(t.cols - c0);
            // SAFETY: `c0 + 16 <= panels * 16 <= b_terms.len()`.
            let bt = unsafe { _mm512_loadu_ps(t.b_terms.as_ptr().add(c0)) };
            for (r, acc_r) in acc.iter().enumerate() {
                // SAFETY: `r < R = rows <= a_terms.len()`.
                let at = _mm512_set1_ps(unsafe { *t.a_terms.get_unchecked(r) });
                let v = bf16_value(t.epilogue, acc_r[j], at, bt);
                // SAFETY: `r * cols + c0 + min(16, cols - c0) <= rows * cols <= out.len()`;
                // lanes past the columns are masked off.
                unsafe { _mm512_mask_storeu_ps(out.add(r * t.cols + c0), mask, v) };
            }
        }
        c += G;
    }
}

/// The filter value of accumulated products `a` with row term `at` and column terms `bt`
/// ([`Bf16Epilogue`]): `max(0, at + bt - 2 a)`, `1 - a (at bt)` or `-a`.
#[inline]
#[target_feature(enable = "avx512f")]
fn bf16_value(epilogue: Bf16Epilogue, a: __m512, at: __m512, bt: __m512) -> __m512 {
    match epilogue {
        Bf16Epilogue::Sq => _mm512_max_ps(
            _mm512_setzero_ps(),
            _mm512_sub_ps(_mm512_add_ps(at, bt), _mm512_mul_ps(_mm512_set1_ps(2.0), a)),
        ),
        Bf16Epilogue::Cosine => {
            _mm512_sub_ps(_mm512_set1_ps(1.0), _mm512_mul_ps(a, _mm512_mul_ps(at, bt)))
        }
        Bf16Epilogue::NegDot => _mm512_sub_ps(_mm512_setzero_ps(), a),
    }
}

/// # Safety
///
/// The CPU has AVX-512F and AVX512_BF16, and the buffers of `t` hold what
/// [`Bf16Tile`] describes (checked by [`bf16_tile`]).
#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn bf16_tile_entry(_token: Bf16, mut t: Bf16Tile<'_>) {
    const ROWS: usize = 4;
    // Row panels outermost: a row panel (`16 * pairs` words) stays in the first cache
    // level while the column panels stream past it, four at a time against four of its
    // rows: sixteen accumulators, and each pair step four vector loads and four
    // broadcasts for sixteen `vdpbf16ps` (one load and sixteen broadcasts per sixteen
    // with a whole row panel against one column panel, which measured 15 % slower).
    let mut r0 = 0;
    while r0 < t.rows {
        let mut h = 0;
        while h < 16 && r0 + h < t.rows {
            let mut c0 = 0;
            while c0 < t.cols {
                let left = (t.cols - c0).div_ceil(16);
                // SAFETY: as this function's; `r0 + h < rows` and `c0 + 16 * (C - 1) < cols`
                // for the `C` panels taken.
                let taken = unsafe {
                    if left >= 4 {
                        bf16_micro::<ROWS, 4>(&mut t, r0, h, c0);
                        4
                    } else if left >= 2 {
                        bf16_micro::<ROWS, 2>(&mut t, r0, h, c0);
                        2
                    } else {
                        bf16_micro::<ROWS, 1>(&mut t, r0, h, c0);
                        1
                    }
                };
                c0 += 16 * taken;
            }
            h += ROWS;
        }
        r0 += 16;
    }
}

/// Rows `r0 + h .. r0 + h + R` (of the row panel at `r0`, `h` a multiple of `R`, `R`
/// dividing 16) against the `C` column panels from column `c0`: the values (or the masks
/// of `t.keep`) of the rows and columns that exist.
///
/// # Safety
///
/// As [`bf16_tile_entry`]; `r0 % 16 == 0`, `h + R <= 16`, `r0 + h < rows`,
/// `c0 % 16 == 0` and `c0 + 16 * (C - 1) < cols`.
#[inline(always)]
unsafe fn bf16_micro<const R: usize, const C: usize>(
    t: &mut Bf16Tile<'_>,
    r0: usize,
    h: usize,
    c0: usize,
) {
    use core::arch::x86_64::{
        __m512bh, __m512i, _mm512_cmp_ps_mask, _mm512_dpbf16_ps, _mm512_loadu_si512,
        _mm512_set1_epi32, _CMP_NGT_UQ,
    };
    let plen = t.pairs * 16;
    let chunks = t.cols.div_ceil(16);
    let zero = _mm512_setzero_ps();
    let panel_a = (r0 / 16) * plen + h;
    let mut acc = [[zero; C]; R];
    for p in 0..t.pairs {
        let mut bv = [zero; C];
        for (j, b) in bv.iter_mut().enumerate() {
            // SAFETY: panel `c0 / 16 + j < cols.div_ceil(16)`, so
            // `(c0 / 16 + j) * plen + p * 16 + 16 <= panels_b * plen <= b.len()`; the load
            // has no alignment requirement.
            let v: __m512i = unsafe {
                _mm512_loadu_si512(t.b.as_ptr().add((c0 / 16 + j) * plen + p * 16).cast())
            };
            *b = _mm512_castsi512_ps(v);
        }
        for (r, acc_r) in acc.iter_mut().enumerate() {
            // SAFETY: `panel_a + p * 16 + r < (r0 / 16 + 1) * plen <= a.len()` (`h + r < 16`).
            let w = unsafe { *t.a.get_unchecked(panel_a + p * 16 + r) };
            // SAFETY: same size, and every bit pattern is a valid `__m512bh`.
            let av = unsafe {
                core::mem::transmute::<__m512i, __m512bh>(_mm512_set1_epi32(w.cast_signed()))
            };
            for (a, &b) in acc_r.iter_mut().zip(bv.iter()) {
                // SAFETY: as for `av`.
                let b = unsafe { core::mem::transmute::<__m512, __m512bh>(b) };
                *a = _mm512_dpbf16_ps(*a, av, b);
            }
        }
    }
    let nr = (t.rows - r0 - h).min(R);
    for j in 0..C {
        let c = c0 + 16 * j;
        let nc = (t.cols - c).min(16);
        let mask = avx512_mask(nc);
        // SAFETY: `c + 16 <= cols.div_ceil(16) * 16 <= b_terms.len()`.
        let bt = unsafe { _mm512_loadu_ps(t.b_terms.as_ptr().add(c)) };
        for (r, acc_r) in acc.iter().enumerate().take(nr) {
            let row = r0 + h + r;
            // SAFETY: `row < rows <= a_terms.len()`.
            let at = _mm512_set1_ps(unsafe { *t.a_terms.get_unchecked(row) });
            let v = bf16_value(t.epilogue, acc_r[j], at, bt);
            if let Some((bars, masks)) = &mut t.keep {
                // SAFETY: `row < rows <= bars.len()`.
                let bar = _mm512_set1_ps(unsafe { *bars.get_unchecked(row) });
                let kept = _mm512_cmp_ps_mask::<_CMP_NGT_UQ>(v, bar) & mask;
                // SAFETY: `row * chunks + c / 16 < rows * chunks <= masks.len()`.
                unsafe { *masks.get_unchecked_mut(row * chunks + c / 16) = u32::from(kept) };
            } else {
                // SAFETY: `row * cols + c + nc <= rows * cols <= out.len()`; lanes `>= nc`
                // are masked off, neither written nor able to fault.
                unsafe { _mm512_mask_storeu_ps(t.out.as_mut_ptr().add(row * t.cols + c), mask, v) };
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// The int8 tile of the edge formats (AVX-512 VNNI), and the popcount entry.

/// Token of the AVX-512 VNNI dot product (`vpdpbusd`): exists only on a CPU with AVX-512F
/// (its register state saved by the operating system) and AVX512_VNNI.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Vnni {
    _detected: (),
}

/// CPUID leaf 7, sub-leaf 0, ECX bit 11: AVX512_VNNI (cached: 0 unknown, 1 no, 2 yes).
static VNNI_CPUID: core::sync::atomic::AtomicU8 = core::sync::atomic::AtomicU8::new(0);

impl Vnni {
    /// The token, when AVX-512F is usable and CPUID reports AVX512_VNNI.
    #[inline]
    pub(crate) fn detect() -> Option<Self> {
        use core::sync::atomic::Ordering;
        Avx512::detect()?;
        let known = VNNI_CPUID.load(Ordering::Relaxed);
        let yes = if known == 0 {
            // Leaf 7 exists: AVX-512F was reported there.
            let yes = core::arch::x86_64::__cpuid_count(7, 0).ecx & (1 << 11) != 0;
            VNNI_CPUID.store(if yes { 2 } else { 1 }, Ordering::Relaxed);
            yes
        } else {
            known == 2
        };
        yes.then_some(Vnni { _detected: () })
    }
}

/// Computes the tile and returns `true`; does nothing and returns `false` when a buffer
/// is shorter than the shapes require (or neither values nor masks are asked for).
#[inline]
pub(crate) fn i8_tile(token: Vnni, mut t: I8Tile<'_>) -> bool {
    let panels_a = t.rows.div_ceil(16);
    let panels_b = t.cols.div_ceil(16);
    let plen = t.quads.saturating_mul(16);
    let values = !t.out.is_empty();
    let fits = t.a.len() >= panels_a.saturating_mul(plen)
        && t.b.len() >= panels_b.saturating_mul(plen)
        && t.a_scale.len() >= t.rows
        && t.a_terms.len() >= t.rows
        && t.b_scale.len() >= panels_b * 16
        && t.b_terms.len() >= panels_b * 16
        && t.b_sums.len() >= panels_b * 16
        && t.shift
            .is_none_or(|(c, e)| c.len() >= t.rows && e.len() >= panels_b * 16)
        && (!values || t.out.len() >= t.rows.saturating_mul(t.cols))
        && match &t.keep {
            Some((bars, masks)) => {
                bars.len() >= t.rows && masks.len() >= t.rows.saturating_mul(panels_b)
            }
            None => values,
        };
    if !fits {
        return false;
    }
    // SAFETY: `token` proves AVX-512F and AVX512_VNNI, the features the entry point
    // enables; the buffer lengths were checked above, as the entry point requires.
    unsafe {
        match (values, t.keep.is_some()) {
            (true, true) => i8_tile_entry::<true, true>(token, &mut t),
            (true, false) => i8_tile_entry::<true, false>(token, &mut t),
            _ => i8_tile_entry::<false, true>(token, &mut t),
        }
    }
    true
}

/// # Safety
///
/// The CPU has AVX-512F and AVX512_VNNI, and the buffers of `t` hold what [`I8Tile`]
/// describes (checked by [`i8_tile`]); `t.out` holds the values when `OUT`, `t.keep` is
/// `Some` when `KEEP` (each a compile-time choice, so the epilogue has no branch).
#[target_feature(enable = "avx512f,avx512vnni")]
unsafe fn i8_tile_entry<const OUT: bool, const KEEP: bool>(_token: Vnni, t: &mut I8Tile<'_>) {
    const ROWS: usize = 4;
    // As the bf16 tile: row panels outermost, four rows against four column panels per
    // step (sixteen accumulators; four loads and four broadcasts per sixteen
    // `vpdpbusd`).
    let mut r0 = 0;
    while r0 < t.rows {
        let mut h = 0;
        while h < 16 && r0 + h < t.rows {
            let mut c0 = 0;
            while c0 < t.cols {
                let left = (t.cols - c0).div_ceil(16);
                // SAFETY: as this function's; `r0 + h < rows` and `c0 + 16 * (C - 1) < cols`
                // for the `C` panels taken.
                let taken = unsafe {
                    if left >= 4 {
                        i8_micro::<ROWS, 4, OUT, KEEP>(t, r0, h, c0);
                        4
                    } else if left >= 2 {
                        i8_micro::<ROWS, 2, OUT, KEEP>(t, r0, h, c0);
                        2
                    } else {
                        i8_micro::<ROWS, 1, OUT, KEEP>(t, r0, h, c0);
                        1
                    }
                };
                c0 += 16 * taken;
            }
            h += ROWS;
        }
        r0 += 16;
    }
}

/// Rows `r0 + h .. r0 + h + R` (of the row panel at `r0`, `h` a multiple of `R`, `R`
/// dividing 16) against the `C` column panels from column `c0`: the values and / or the
/// masks of `t` for the rows and columns that exist.
///
/// # Safety
///
/// As [`i8_tile_entry`]; `r0 % 16 == 0`, `h + R <= 16`, `r0 + h < rows`,
/// `c0 % 16 == 0` and `c0 + 16 * (C - 1) < cols`.
#[inline(always)]
unsafe fn i8_micro<const R: usize, const C: usize, const OUT: bool, const KEEP: bool>(
    t: &mut I8Tile<'_>,
    r0: usize,
    h: usize,
    c0: usize,
) {
    use core::arch::x86_64::{
        __m512i, _mm512_cmp_ps_mask, _mm512_dpbusd_epi32, _mm512_fnmadd_ps, _mm512_loadu_si512,
        _mm512_set1_epi32, _mm512_setzero_si512, _mm512_slli_epi32, _mm512_sub_epi32, _CMP_NGT_UQ,
    };
    let plen = t.quads * 16;
    let chunks = t.cols.div_ceil(16);
    let panel_a = (r0 / 16) * plen + h;
    // The rows' codes were offset by 128: each accumulator starts at minus 128 times its
    // column's code sum.
    let mut init = [_mm512_setzero_si512(); C];
    for (j, v) in init.iter_mut().enumerate() {
        // SAFETY: `c0 + 16 * j + 16 <= cols.div_ceil(16) * 16 <= b_sums.len()`.
        let sums: __m512i =
            unsafe { _mm512_loadu_si512(t.b_sums.as_ptr().add(c0 + 16 * j).cast()) };
        *v = _mm512_sub_epi32(_mm512_setzero_si512(), _mm512_slli_epi32::<7>(sums));
    }
    let mut acc = [init; R];
    for p in 0..t.quads {
        let mut bv = [_mm512_setzero_si512(); C];
        for (j, b) in bv.iter_mut().enumerate() {
            // SAFETY: panel `c0 / 16 + j < cols.div_ceil(16)`, so
            // `(c0 / 16 + j) * plen + p * 16 + 16 <= panels_b * plen <= b.len()`; the load
            // has no alignment requirement.
            *b = unsafe {
                _mm512_loadu_si512(t.b.as_ptr().add((c0 / 16 + j) * plen + p * 16).cast())
            };
        }
        for (r, acc_r) in acc.iter_mut().enumerate() {
            // SAFETY: `panel_a + p * 16 + r < (r0 / 16 + 1) * plen <= a.len()` (`h + r < 16`).
            let w = unsafe { *t.a.get_unchecked(panel_a + p * 16 + r) };
            let av = _mm512_set1_epi32(w.cast_signed());
            for (a, &b) in acc_r.iter_mut().zip(bv.iter()) {
                *a = _mm512_dpbusd_epi32(*a, av, b);
            }
        }
    }
    let nr = (t.rows - r0 - h).min(R);
    let zero = _mm512_setzero_ps();
    let two = _mm512_set1_ps(2.0);
    let one = _mm512_set1_ps(1.0);
    for j in 0..C {
        let c = c0 + 16 * j;
        let nc = (t.cols - c).min(16);
        let mask = avx512_mask(nc);
        // SAFETY: `c + 16 <= cols.div_ceil(16) * 16 <=` each column vector's length.
        let (bs, bt) = unsafe {
            (
                _mm512_loadu_ps(t.b_scale.as_ptr().add(c)),
                _mm512_loadu_ps(t.b_terms.as_ptr().add(c)),
            )
        };
        // SAFETY: as above (checked with the shift's own lengths).
        let shift = t
            .shift
            .map(|(coef, e)| (coef, unsafe { _mm512_loadu_ps(e.as_ptr().add(c)) }));
        for (r, acc_r) in acc.iter().enumerate().take(nr) {
            let row = r0 + h + r;
            // SAFETY: `row < rows <= a_scale.len(), a_terms.len()`.
            let (sa, ta) =
                unsafe { (*t.a_scale.get_unchecked(row), *t.a_terms.get_unchecked(row)) };
            let dot = _mm512_cvtepi32_ps(acc_r[j]);
            let x = _mm512_mul_ps(_mm512_mul_ps(_mm512_set1_ps(sa), bs), dot);
            let v = match t.epilogue {
                // `2 x` is exact: one rounding of `(ta + tb) - 2 x`, as with a separate
                // product.
                I8Epilogue::Sq => _mm512_max_ps(
                    zero,
                    _mm512_fnmadd_ps(two, x, _mm512_add_ps(_mm512_set1_ps(ta), bt)),
                ),
                I8Epilogue::Cosine => _mm512_sub_ps(one, x),
                I8Epilogue::NegDot => _mm512_sub_ps(zero, x),
            };
            let v = match shift {
                Some((coef, e)) => {
                    // SAFETY: `row < rows <= coef.len()` (checked by `i8_tile`).
                    let c = unsafe { *coef.get_unchecked(row) };
                    _mm512_fnmadd_ps(_mm512_set1_ps(c), e, v)
                }
                None => v,
            };
            if OUT {
                // SAFETY: `row * cols + c + nc <= rows * cols <= out.len()`; lanes `>= nc`
                // are masked off, neither written nor able to fault.
                unsafe { _mm512_mask_storeu_ps(t.out.as_mut_ptr().add(row * t.cols + c), mask, v) };
            }
            if let (true, Some((bars, masks))) = (KEEP, &mut t.keep) {
                // SAFETY: `row < rows <= bars.len()`.
                let bar = _mm512_set1_ps(unsafe { *bars.get_unchecked(row) });
                let kept = _mm512_cmp_ps_mask::<_CMP_NGT_UQ>(v, bar) & mask;
                // SAFETY: `row * chunks + c / 16 < rows * chunks <= masks.len()`.
                unsafe { *masks.get_unchecked_mut(row * chunks + c / 16) = u32::from(kept) };
            }
        }
    }
}

cpufeatures::new!(cpuid_avx512bw, "avx512bw");

/// Token of the int8 row kernel: AVX512_VNNI (see [`Vnni`]) and AVX512BW (masked byte
/// loads).
#[derive(Clone, Copy, Debug)]
pub(crate) struct VnniBw {
    _detected: (),
}

impl VnniBw {
    /// The token, when [`Vnni::detect`] succeeds and CPUID reports AVX512BW.
    #[inline]
    pub(crate) fn detect() -> Option<Self> {
        Vnni::detect()?;
        cpuid_avx512bw::get().then_some(VnniBw { _detected: () })
    }
}

/// For each of the `out.len()` rows of `rows` (`dim` codes each): four partial sums of
/// `sum q_i g_i` then four of `sum g_i^2` (each total exact in `i32`, the partials
/// wrapping modulo 2^32), with `q` the query's codes stored as unsigned `c + 128`. Does
/// nothing when a buffer is shorter than that.
#[inline]
pub(crate) fn i8_rows(token: VnniBw, q: &[u8], rows: &[i8], dim: usize, out: &mut [[i32; 8]]) {
    if dim == 0 || q.len() < dim || rows.len() < out.len().saturating_mul(dim) {
        return;
    }
    // SAFETY: the token proves AVX-512F, AVX512BW and AVX512_VNNI, the features the entry
    // enables; the lengths were checked above.
    unsafe { i8_rows_entry(token, q, rows, dim, out) }
}

/// # Safety
///
/// The CPU has AVX-512F, AVX512BW and AVX512_VNNI; `dim >= 1`, `q` holds `dim` bytes and
/// `rows` `out.len() * dim` (checked by [`i8_rows`]).
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
unsafe fn i8_rows_entry(_token: VnniBw, q: &[u8], rows: &[i8], dim: usize, out: &mut [[i32; 8]]) {
    use core::arch::x86_64::{
        __m512i, _mm256_add_epi32, _mm256_castsi256_si128, _mm256_extracti128_si256,
        _mm512_castsi512_si256, _mm512_dpbusd_epi32, _mm512_extracti64x4_epi64,
        _mm512_maskz_loadu_epi8, _mm512_set1_epi8, _mm512_setzero_si512, _mm512_slli_epi32,
        _mm512_sub_epi32, _mm512_xor_si512, _mm_add_epi32, _mm_storeu_si128,
    };
    /// Query chunks kept in registers (dimensions up to 256).
    const HELD: usize = 4;
    let ones = _mm512_set1_epi8(1);
    let flip = _mm512_set1_epi8(i8::MIN);
    let chunks = dim.div_ceil(64);
    let tail = dim - (chunks - 1) * 64;
    let last_mask = if tail == 64 {
        u64::MAX
    } else {
        (1_u64 << tail) - 1
    };
    let mask = |c: usize| if c + 1 == chunks { last_mask } else { u64::MAX };
    let mut held = [_mm512_setzero_si512(); HELD];
    for (c, h) in held.iter_mut().enumerate().take(chunks) {
        // SAFETY: bytes `64 c ..` of the query, masked to `dim`; masked-off lanes are
        // neither read nor able to fault.
        *h = unsafe { _mm512_maskz_loadu_epi8(mask(c), q.as_ptr().add(64 * c).cast()) };
    }
    // Four lanes of a vector's sum: the upper halves folded twice.
    let fold = |v: __m512i| {
        let h = _mm256_add_epi32(_mm512_castsi512_si256(v), _mm512_extracti64x4_epi64::<1>(v));
        _mm_add_epi32(_mm256_castsi256_si128(h), _mm256_extracti128_si256::<1>(h))
    };
    for (r, o) in out.iter_mut().enumerate() {
        let (mut dot, mut sq, mut sum) = (
            _mm512_setzero_si512(),
            _mm512_setzero_si512(),
            _mm512_setzero_si512(),
        );
        for c in 0..chunks {
            // SAFETY: bytes `64 c ..` of row `r`, masked to `dim`, are in bounds
            // (`r * dim + dim <= out.len() * dim <= rows.len()`); masked-off lanes are
            // neither read nor able to fault. The query's chunk likewise, when not held.
            let (g, qv) = unsafe {
                (
                    _mm512_maskz_loadu_epi8(mask(c), rows.as_ptr().add(r * dim + 64 * c)),
                    match held.get(c) {
                        Some(&h) => h,
                        None => _mm512_maskz_loadu_epi8(mask(c), q.as_ptr().add(64 * c).cast()),
                    },
                )
            };
            // Sums wrap modulo 2^32 in the lanes; the exact totals fit in `i32`, so the
            // wrapped sums and the corrections below give them exactly.
            dot = _mm512_dpbusd_epi32(dot, qv, g);
            sq = _mm512_dpbusd_epi32(sq, _mm512_xor_si512(g, flip), g);
            sum = _mm512_dpbusd_epi32(sum, ones, g);
        }
        // The offset's share, `128 sum g_i`, removed lane by lane.
        let corr = _mm512_slli_epi32::<7>(sum);
        let (d4, s4) = (
            fold(_mm512_sub_epi32(dot, corr)),
            fold(_mm512_sub_epi32(sq, corr)),
        );
        let (lo, hi) = o.split_at_mut(4);
        // SAFETY: each half of `o` holds four `i32` (16 bytes); unaligned stores.
        unsafe {
            _mm_storeu_si128(lo.as_mut_ptr().cast(), d4);
            _mm_storeu_si128(hi.as_mut_ptr().cast(), s4);
        }
    }
}

cpufeatures::new!(cpuid_popcnt, "popcnt");

/// Token of the `popcnt` instruction.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Popcnt {
    _detected: (),
}

impl Popcnt {
    /// The token, when CPUID reports POPCNT (cached after the first call).
    #[inline]
    pub(crate) fn detect() -> Option<Self> {
        cpuid_popcnt::get().then_some(Popcnt { _detected: () })
    }
}

#[target_feature(enable = "popcnt")]
fn popcnt_entry<K: Kernel>(_token: Popcnt, kernel: K) -> K::Output {
    kernel.run::<super::Portable, { super::portable::MR }, { super::portable::NV }>(super::Portable)
}

/// Runs `kernel` on the portable backend compiled with `popcnt`.
#[inline]
pub(crate) fn run_popcnt<K: Kernel>(token: Popcnt, kernel: K) -> K::Output {
    // SAFETY: `token` proves that CPUID reported POPCNT, the feature the entry enables.
    unsafe { popcnt_entry(token, kernel) }
}

/// Pass 1 of the int8 filter's packing for the rows of one panel, bit for bit as the
/// portable loop of `retrieval::i8f` computes it (see [`super::i8_scan_rows`]): for each
/// row (`rows.len() / dim` of them, at most 16) the largest magnitude of `x = row *
/// units[r]`, whether every `x` is finite and the row's squared norm. `false` (nothing
/// written) unless `dim > 0` and `rows` holds whole rows, at most 16.
#[inline]
pub(crate) fn i8_scan_rows(
    token: Avx512,
    rows: &[f32],
    dim: usize,
    units: &[f32; 16],
    scans: &mut [super::RowScan; 16],
) -> bool {
    if dim == 0 || !rows.len().is_multiple_of(dim) || rows.len() / dim > 16 {
        return false;
    }
    // SAFETY: the token proves AVX-512F, the feature the entry enables; `rows` holds
    // whole rows of `dim > 0` elements, checked above.
    unsafe { i8_scan_rows_entry(token, rows, dim, units, scans) };
    true
}

/// # Safety
///
/// The CPU has AVX-512F; `dim > 0` (checked by [`i8_scan_rows`]).
#[target_feature(enable = "avx512f")]
unsafe fn i8_scan_rows_entry(
    _token: Avx512,
    rows: &[f32],
    dim: usize,
    units: &[f32; 16],
    scans: &mut [super::RowScan; 16],
) {
    use core::arch::x86_64::{
        _mm512_abs_ps, _mm512_add_ps, _mm512_cmp_ps_mask, _mm512_loadu_ps, _mm512_maskz_loadu_ps,
        _mm512_max_ps, _mm512_mul_ps, _mm512_reduce_max_ps, _mm512_set1_ps, _mm512_setzero_ps,
        _mm_prefetch, _CMP_NLT_UQ, _MM_HINT_T0,
    };
    /// How far ahead of the current element the pass prefetches: 4 KiB, eight rows at
    /// `d = 128` (512 to 4096 elements measured alike).
    const AHEAD: usize = 1024;
    // (Checked by the caller too; here so the chunk iterator has no panic path.)
    if dim == 0 {
        return;
    }
    let (full, tail) = (dim / 16, dim % 16);
    let tail_mask = avx512_mask(tail);
    let inf = _mm512_set1_ps(f32::INFINITY);
    for ((row, scan), &unit) in rows.chunks_exact(dim).zip(scans.iter_mut()).zip(units) {
        let p = row.as_ptr();
        let u = _mm512_set1_ps(unit);
        // The largest magnitude (`max` keeps the running value against NaN, as the
        // portable `if m > b`), whether any magnitude is NaN or infinite, and the row's
        // squared norm (a product then a sum, as the portable loop: no fused
        // multiply-add).
        let mut big = _mm512_setzero_ps();
        let mut bad = 0_u16;
        let mut sq = _mm512_setzero_ps();
        let mut step = |v: __m512| {
            let m = _mm512_abs_ps(_mm512_mul_ps(v, u));
            big = _mm512_max_ps(m, big);
            bad |= _mm512_cmp_ps_mask::<_CMP_NLT_UQ>(m, inf);
            sq = _mm512_add_ps(sq, _mm512_mul_ps(v, v));
        };
        for c in 0..full {
            // The rows `AHEAD` elements on (the next rows of a block, or of the next
            // block), asked for early: the packing is the first pass over a gallery
            // block, so its rows come from memory. (A prefetch never faults; the address
            // wraps.)
            _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(16 * c + AHEAD).cast());
            // SAFETY: `c < full`: elements `16 c .. 16 c + 16 <= dim` of the row.
            step(unsafe { _mm512_loadu_ps(p.add(16 * c)) });
        }
        if tail > 0 {
            // SAFETY: elements `16 full ..` masked to the row's `dim`; masked-off lanes
            // are neither read nor able to fault.
            step(unsafe { _mm512_maskz_loadu_ps(tail_mask, p.add(16 * full)) });
        }
        *scan = super::RowScan {
            big: _mm512_reduce_max_ps(big),
            finite: bad == 0,
            sq_norm: lane_tree_sum(sq),
        };
    }
}

/// Pass 2 of the int8 filter's packing for the rows of one panel, bit for bit as the
/// portable loop of `retrieval::i8f` computes it (see [`super::i8_code_rows`]): for row
/// `r` (`rows.len() / dim` of them, at most 16), the codes `round(x * invs[r])` of `x =
/// row * units[r]` clamped to `[-127, 127]` (by the `1.5 * 2^23` trick), stored four to
/// a word (lowest byte first, XORed with `flip`) at `out[16 p + r]`, and the lane-wise
/// sums of the squared residuals and of the codes, reduced pairwise
/// ([`lane_tree_sum`]). `false` (nothing written) unless `dim > 0`, `rows` holds whole
/// rows, at most 16, and `out` holds the panel's `16 * dim.div_ceil(4)` words.
#[inline]
#[allow(clippy::too_many_arguments)]
pub(crate) fn i8_code_rows(
    token: Avx512,
    rows: &[f32],
    dim: usize,
    units: &[f32; 16],
    invs: &[f32; 16],
    out: &mut [u32],
    flip: u32,
    codes: &mut [super::RowCode; 16],
) -> bool {
    if dim == 0
        || !rows.len().is_multiple_of(dim)
        || rows.len() / dim > 16
        || out.len() < 16 * dim.div_ceil(4)
    {
        return false;
    }
    // SAFETY: the token proves AVX-512F, the feature the entry enables; `rows` holds
    // whole rows of `dim > 0` elements, at most 16, and `out` the panel's words, checked
    // above.
    unsafe { i8_code_rows_entry(token, rows, dim, units, invs, out, flip, codes) };
    true
}

/// # Safety
///
/// The CPU has AVX-512F; `dim > 0`, `rows.len() <= 16 dim` and `out.len() >= 16
/// dim.div_ceil(4)` (checked by [`i8_code_rows`]).
#[target_feature(enable = "avx512f")]
#[allow(clippy::too_many_arguments)]
unsafe fn i8_code_rows_entry(
    _token: Avx512,
    rows: &[f32],
    dim: usize,
    units: &[f32; 16],
    invs: &[f32; 16],
    out: &mut [u32],
    flip: u32,
    codes: &mut [super::RowCode; 16],
) {
    use core::arch::x86_64::{
        _mm512_add_ps, _mm512_castps_si512, _mm512_loadu_ps, _mm512_mask_add_ps,
        _mm512_maskz_cvtepi32_epi8, _mm512_maskz_loadu_ps, _mm512_max_ps, _mm512_min_ps,
        _mm512_mul_ps, _mm512_set1_ps, _mm512_setzero_ps, _mm_cvtsi128_si32, _mm_extract_epi32,
        _mm_prefetch, _mm_set1_epi32, _mm_storeu_si128, _mm_xor_si128, _MM_HINT_T0,
    };
    /// `1.5 * 2^23` (as in `i8f`).
    const MAGIC: f32 = 12_582_912.0;
    // (Checked by the caller too; here so the chunk iterator has no panic path.)
    if dim == 0 {
        return;
    }
    let (full, tail) = (dim / 16, dim % 16);
    let tail_mask = avx512_mask(tail);
    // `min(hi, r)` is `r > hi ? hi : r` and `max(lo, r)` is `r < lo ? lo : r`, NaN
    // passing through, as in the portable loop.
    let (magic, hi, lo) = (
        _mm512_set1_ps(MAGIC),
        _mm512_set1_ps(MAGIC + 127.0),
        _mm512_set1_ps(MAGIC - 127.0),
    );
    let flip = _mm_set1_epi32(flip.cast_signed());
    let rows = rows.chunks_exact(dim).zip(codes.iter_mut());
    for (r, ((row, code), (&unit, &inv))) in rows.zip(units.iter().zip(invs)).enumerate() {
        let p = row.as_ptr();
        let (u, inv) = (_mm512_set1_ps(unit), _mm512_set1_ps(inv));
        let (mut ss, mut total) = (_mm512_setzero_ps(), _mm512_setzero_ps());
        // A chunk's codes (lanes outside `k` zero, their sums untouched), four to a word.
        let mut quantize = |v: __m512, k: u16| {
            let y = _mm512_mul_ps(_mm512_mul_ps(v, u), inv);
            let r = _mm512_max_ps(lo, _mm512_min_ps(hi, _mm512_add_ps(y, magic)));
            let t = _mm512_sub_ps(r, magic);
            let e = _mm512_sub_ps(y, t);
            ss = _mm512_mask_add_ps(ss, k, ss, _mm512_mul_ps(e, e));
            total = _mm512_mask_add_ps(total, k, total, t);
            _mm_xor_si128(_mm512_maskz_cvtepi32_epi8(k, _mm512_castps_si512(r)), flip)
        };
        // Row `r < 16` of the panel: its word `p` at `16 p + r`.
        let o = out.as_mut_ptr().wrapping_add(r);
        for c in 0..full {
            // The same elements of the next panel's row, asked for while this panel is
            // coded (the next first pass reads them from memory).
            _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(16 * c + 16 * dim).cast());
            // SAFETY: `c < full`: elements `16 c .. 16 c + 16 <= dim` of the row.
            let w = quantize(unsafe { _mm512_loadu_ps(p.add(16 * c)) }, u16::MAX);
            // SAFETY: words `4 c .. 4 c + 4` of the row, each below `quads =
            // dim.div_ceil(4)`, at `16 (4 c + j) + r < 16 quads <= out.len()`.
            unsafe {
                *o.add(64 * c) = _mm_cvtsi128_si32(w).cast_unsigned();
                *o.add(64 * c + 16) = _mm_extract_epi32::<1>(w).cast_unsigned();
                *o.add(64 * c + 32) = _mm_extract_epi32::<2>(w).cast_unsigned();
                *o.add(64 * c + 48) = _mm_extract_epi32::<3>(w).cast_unsigned();
            }
        }
        if tail > 0 {
            // SAFETY: elements `16 full ..` masked to the row's `dim`; masked-off lanes
            // are neither read nor able to fault.
            let v = unsafe { _mm512_maskz_loadu_ps(tail_mask, p.add(16 * full)) };
            let w = quantize(v, tail_mask);
            let mut words = [0_u32; 4];
            // SAFETY: 16 bytes into a 16-byte array.
            unsafe { _mm_storeu_si128(words.as_mut_ptr().cast(), w) };
            for (j, &word) in words.iter().enumerate().take(tail.div_ceil(4)) {
                // SAFETY: word `4 full + j < quads`, at `16 (4 full + j) + r < 16 quads
                // <= out.len()`.
                unsafe { *o.add(16 * (4 * full + j)) = word };
            }
        }
        *code = super::RowCode {
            resid_sq: lane_tree_sum(ss),
            code_sum: lane_tree_sum(total),
        };
    }
}

/// The sum of a vector's 16 lanes in the order of `retrieval::i8f::lane_tree_sum`:
/// lanes `i` and `i + 8`, then `i + 4`, `i + 2`, `i + 1`.
#[inline]
#[target_feature(enable = "avx512f")]
fn lane_tree_sum(v: __m512) -> f32 {
    use core::arch::x86_64::{
        _mm256_add_ps, _mm256_castpd_ps, _mm256_castps256_ps128, _mm256_extractf128_ps,
        _mm512_castps512_ps256, _mm512_castps_pd, _mm512_extractf64x4_pd, _mm_movehdup_ps,
        _mm_movehl_ps,
    };
    let upper = _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(v)));
    let h = _mm256_add_ps(_mm512_castps512_ps256(v), upper);
    let q = _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps::<1>(h));
    let p = _mm_add_ps(q, _mm_movehl_ps(q, q));
    _mm_cvtss_f32(_mm_add_ss(p, _mm_movehdup_ps(p)))
}
