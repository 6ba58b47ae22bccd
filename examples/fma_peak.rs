//! Measures this core's single-precision multiply-add peak, the "fraction of peak" yardstick
//! of the README's benchmark table: independent fused multiply-adds on the widest vector
//! unit the CPU has (AVX-512F, else AVX2 + FMA), one thread.
//!
//! ```sh
//! cargo run --release --example fma_peak
//! ```
//!
//! It prints the best of several timed runs in GFLOP/s (a multiply-add counts as two
//! floating-point operations). Sixteen independent accumulator chains cover the latency of
//! two multiply-add units, so the loop is bound by their throughput alone. On other
//! architectures it says so and exits.

// The probe calls CPU-specific instructions after detecting them: the crate's
// `unsafe_code` lint is relaxed for this example only.
#![allow(unsafe_code)]

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::{
        __m256, __m512, _mm256_add_ps, _mm256_fmadd_ps, _mm256_set1_ps, _mm256_storeu_ps,
        _mm512_add_ps, _mm512_fmadd_ps, _mm512_reduce_add_ps, _mm512_set1_ps,
    };

    /// Accumulator chains per run.
    const CHAINS: usize = 16;

    /// `iters` rounds of `CHAINS` 16-lane multiply-adds; returns a value that depends on
    /// every one of them, so none can be removed.
    #[target_feature(enable = "avx512f")]
    fn avx512(iters: u64) -> f32 {
        let mut acc: [__m512; CHAINS] = [_mm512_set1_ps(0.0); CHAINS];
        let (a, b) = (_mm512_set1_ps(0.999_999), _mm512_set1_ps(1e-7));
        for _ in 0..iters {
            for v in &mut acc {
                *v = _mm512_fmadd_ps(*v, a, b);
            }
        }
        let sum = acc
            .iter()
            .fold(_mm512_set1_ps(0.0), |s, &v| _mm512_add_ps(s, v));
        _mm512_reduce_add_ps(sum)
    }

    /// As [`avx512`] with 8-lane AVX2 + FMA vectors.
    #[target_feature(enable = "avx2,fma")]
    fn avx2(iters: u64) -> f32 {
        let mut acc: [__m256; CHAINS] = [_mm256_set1_ps(0.0); CHAINS];
        let (a, b) = (_mm256_set1_ps(0.999_999), _mm256_set1_ps(1e-7));
        for _ in 0..iters {
            for v in &mut acc {
                *v = _mm256_fmadd_ps(*v, a, b);
            }
        }
        let sum = acc
            .iter()
            .fold(_mm256_set1_ps(0.0), |s, &v| _mm256_add_ps(s, v));
        let mut lanes = [0.0_f32; 8];
        // SAFETY: `lanes` has 8 writable elements; an unaligned store needs no alignment.
        unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), sum) };
        lanes.iter().sum()
    }

    pub fn main() {
        let (name, lanes): (&str, u32) = if is_x86_feature_detected!("avx512f") {
            ("AVX-512F", 16)
        } else if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
            ("AVX2 + FMA", 8)
        } else {
            println!("no AVX2 + FMA or AVX-512F on this CPU: nothing to measure");
            return;
        };
        let iters = 20_000_000_u64;
        let mut best = 0.0_f64;
        let mut check = 0.0_f32;
        for _ in 0..7 {
            let start = std::time::Instant::now();
            // SAFETY: the features each function enables were detected just above.
            check += unsafe {
                if lanes == 16 {
                    avx512(std::hint::black_box(iters))
                } else {
                    avx2(std::hint::black_box(iters))
                }
            };
            let secs = start.elapsed().as_secs_f64();
            let flops = iters as f64 * CHAINS as f64 * f64::from(lanes) * 2.0;
            best = best.max(flops / secs / 1e9);
        }
        println!("fma peak ({name}, one thread): {best:.1} GFLOP/s (check {check:.3})");
    }
}

fn main() {
    #[cfg(target_arch = "x86_64")]
    x86::main();
    #[cfg(not(target_arch = "x86_64"))]
    println!("this probe measures x86-64 vector units only");
}
