//! Calls every public kernel of `triplet_kernels` from a binary with neither `std` nor
//! `alloc`, on stack buffers, and exits 0 when every call returned `Ok` with finite
//! outputs (1 otherwise).

#![no_std]
#![no_main]

use core::panic::PanicInfo;
use tk::{Hinge, Matrix, Metric, Reduction};
use triplet_kernels as tk;

// The C library provides the start files' `main` caller and `memset`/`memcpy`, which the
// compiler emits calls to; nothing else of it is used.
#[link(name = "c")]
extern "C" {}

/// `core` is precompiled with unwind tables that name this symbol; with `panic = "abort"`
/// it is never called.
#[no_mangle]
pub extern "C" fn rust_eh_personality() {}

#[panic_handler]
fn panic(_: &PanicInfo<'_>) -> ! {
    loop {}
}

const N: usize = 8;
const D: usize = 5;

fn data() -> [f32; N * D] {
    let mut x = [0.0_f32; N * D];
    let mut s = 12345_u32;
    for v in &mut x {
        s ^= s << 13;
        s ^= s >> 17;
        s ^= s << 5;
        *v = (s % 2000) as f32 / 1000.0 - 1.0;
    }
    x
}

fn finite(v: &[f32]) -> bool {
    v.iter().all(|x| x.is_finite())
}

fn run() -> Result<bool, tk::Error> {
    let xd = data();
    let x = Matrix::new(&xd, N, D)?;
    let y = Matrix::new(&xd[..3 * D], 3, D)?;
    let mut ok = true;
    let mut out = [0.0_f32; N * N];
    // Enough for every call below: the cross workspace packs both sides.
    let mut ws = [0.0_f32; tk::cross_distances_workspace_len(N, N, D)];
    let mut g = [0.0_f32; N * D];
    for metric in [Metric::SquaredEuclidean, Metric::Euclidean, Metric::Cosine] {
        tk::pairwise_distances(x, metric, &mut out, &mut ws)?;
        ok &= finite(&out);
        tk::scalar::pairwise_distances(x, metric, &mut out, &mut ws)?;
        ok &= finite(&out);
        tk::cross_distances(x, y, metric, &mut out[..N * 3], &mut ws)?;
        tk::scalar::cross_distances(x, y, metric, &mut out[..N * 3], &mut ws)?;
        ok &= finite(&out);
        for mode in [tk::DistanceMode::Gram, tk::DistanceMode::Direct] {
            tk::pairwise_distances_rows(x, 2..5, metric, mode, &mut out[..3 * N], &mut ws)?;
            tk::scalar::pairwise_distances_rows(x, 2..5, metric, mode, &mut out[..3 * N], &mut ws)?;
            tk::cross_distances_rows(x, y, 1..N, metric, mode, &mut out[..(N - 1) * 3], &mut ws)?;
            tk::scalar::cross_distances_rows(
                x,
                y,
                1..N,
                metric,
                mode,
                &mut out[..(N - 1) * 3],
                &mut ws,
            )?;
            ok &= finite(&out);
        }
    }
    // Every SIMD backend this CPU has, selected at run time without std.
    for &b in tk::Backend::available() {
        tk::set_backend(b)?;
        tk::pairwise_distances(x, Metric::SquaredEuclidean, &mut out, &mut ws)?;
        ok &= finite(&out);
    }
    tk::reset_backend();
    tk::row_norms(x, &mut out[..N])?;
    tk::scalar::row_norms(x, &mut out[..N])?;
    tk::l2_normalize(x, &mut g)?;
    tk::scalar::l2_normalize(x, &mut g)?;
    let go = g;
    tk::l2_normalize_backward(x, &go, &mut g)?;
    tk::scalar::l2_normalize_backward(x, &go, &mut g)?;
    ok &= finite(&g);
    for hinge in [Hinge::Relu, Hinge::SoftPlus] {
        for red in [Reduction::Sum, Reduction::Mean, Reduction::MeanNonzero] {
            let a = tk::hinge_reduce(&xd, hinge, red)?;
            let b = tk::scalar::hinge_reduce(&xd, hinge, red)?;
            let c = tk::hinge_reduce_grad(&xd, hinge, red, &mut g)?;
            let d = tk::scalar::hinge_reduce_grad(&xd, hinge, red, &mut g)?;
            ok &= a.is_finite() && b.is_finite() && c.is_finite() && d.is_finite();
        }
    }
    Ok(ok)
}

/// C entry point, called by the C runtime's start files.
#[no_mangle]
pub extern "C" fn main(_argc: i32, _argv: *const *const u8) -> i32 {
    match run() {
        Ok(true) => 0,
        _ => 1,
    }
}
