//! Which SIMD backend the kernels use, detected at run time and overridable.

use crate::error::Error;
use core::sync::atomic::{AtomicU8, Ordering};

/// A SIMD code path of the crate's kernels.
///
/// Every build contains [`Backend::Portable`]; x86-64 builds without the `portable-only`
/// cargo feature also contain [`Backend::Avx2`] and [`Backend::Avx512`], used when the CPU
/// (and the operating system) supports them. By default each kernel call runs the best
/// available one ([`Backend::best`]); [`set_backend`] forces another, e.g. to compare
/// results or to rule out a hardware-specific path.
///
/// All backends compute the same formulas and satisfy the same documented error bounds
/// against the scalar twins; the last bits of a result may differ between them
/// (different lane counts and summation trees, fused or unfused multiply-add).
///
/// ```
/// use triplet_kernels::{reset_backend, set_backend, Backend};
///
/// assert!(Backend::available().contains(&Backend::Portable));
/// set_backend(Backend::Portable)?; // every kernel call now takes the portable path
/// assert_eq!(Backend::active(), Backend::Portable);
/// reset_backend(); // back to the best the CPU supports
/// assert_eq!(Backend::active(), Backend::best());
/// # Ok::<(), triplet_kernels::Error>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Backend {
    /// `wide::f32x8`: SSE2 on a default x86-64 build, AVX/FMA when the build enables them
    /// (`-C target-cpu=...`), NEON on aarch64, plain scalar code on other targets.
    Portable,
    /// x86-64 AVX2 with FMA, 8 lanes, selected at run time.
    Avx2,
    /// x86-64 AVX-512F, 16 lanes, selected at run time.
    Avx512,
}

/// `0`: automatic (best available); otherwise `1 + ` the forced backend's code.
static FORCED: AtomicU8 = AtomicU8::new(AUTO);
const AUTO: u8 = 0;

impl Backend {
    const fn code(self) -> u8 {
        match self {
            Backend::Portable => 1,
            Backend::Avx2 => 2,
            Backend::Avx512 => 3,
        }
    }

    /// A short lowercase name: `"portable"`, `"avx2"`, `"avx512"`.
    pub const fn name(self) -> &'static str {
        match self {
            Backend::Portable => "portable",
            Backend::Avx2 => "avx2",
            Backend::Avx512 => "avx512",
        }
    }

    /// Whether this build contains the backend and this CPU can run it.
    pub fn is_available(self) -> bool {
        match self {
            Backend::Portable => true,
            Backend::Avx2 => has_avx2(),
            Backend::Avx512 => has_avx512(),
        }
    }

    /// The backends this build contains and this CPU runs, from narrowest to widest;
    /// always starts with [`Backend::Portable`].
    pub fn available() -> &'static [Backend] {
        const ALL: [Backend; 3] = [Backend::Portable, Backend::Avx2, Backend::Avx512];
        const NO_AVX2: [Backend; 2] = [Backend::Portable, Backend::Avx512];
        match (has_avx2(), has_avx512()) {
            (true, true) => &ALL,
            (true, false) => ALL.split_at(2).0,
            (false, true) => &NO_AVX2,
            (false, false) => ALL.split_at(1).0,
        }
    }

    /// The widest available backend: what kernels use unless [`set_backend`] forced
    /// another.
    pub fn best() -> Backend {
        if has_avx512() {
            Backend::Avx512
        } else if has_avx2() {
            Backend::Avx2
        } else {
            Backend::Portable
        }
    }

    /// The backend the next kernel call will use: the one forced by [`set_backend`], or
    /// [`Backend::best`].
    pub fn active() -> Backend {
        match FORCED.load(Ordering::Relaxed) {
            1 => Backend::Portable,
            2 => Backend::Avx2,
            3 => Backend::Avx512,
            _ => Backend::best(),
        }
    }
}

/// Forces every following kernel call, on every thread, to use `backend`.
///
/// Meant for start-up, tests and benchmarks. The choice is a process-wide atomic, which
/// every public kernel reads exactly once, when it starts: the whole call (every stage,
/// and the other kernels it runs internally) uses that backend, so a kernel already
/// running keeps the backend it started with, and a call that overlaps a change returns
/// exactly the result of one backend, the old or the new. [`reset_backend`] returns to
/// the automatic choice. The cargo feature `portable-only` removes the x86 backends at
/// compile time instead.
///
/// # Errors
///
/// [`Error::InvalidParameter`] (`"backend"`) when `backend` is not
/// [available](Backend::is_available) in this build on this CPU; the choice is unchanged.
///
/// # Example
///
/// ```
/// use triplet_kernels::{reset_backend, set_backend, Backend};
/// for &b in Backend::available() {
///     set_backend(b)?;
///     // ... run and compare kernels ...
/// }
/// reset_backend();
/// # Ok::<(), triplet_kernels::Error>(())
/// ```
pub fn set_backend(backend: Backend) -> Result<(), Error> {
    if !backend.is_available() {
        return Err(Error::InvalidParameter {
            name: "backend",
            expected: "an available backend",
        });
    }
    FORCED.store(backend.code(), Ordering::Relaxed);
    Ok(())
}

/// Returns to the automatic choice: every following kernel call uses [`Backend::best`].
pub fn reset_backend() {
    FORCED.store(AUTO, Ordering::Relaxed);
}

#[cfg(all(target_arch = "x86_64", not(feature = "portable-only")))]
#[inline]
fn has_avx2() -> bool {
    super::x86::Avx2::detect().is_some()
}

#[cfg(all(target_arch = "x86_64", not(feature = "portable-only")))]
#[inline]
fn has_avx512() -> bool {
    super::x86::Avx512::detect().is_some()
}

#[cfg(not(all(target_arch = "x86_64", not(feature = "portable-only"))))]
#[inline]
fn has_avx2() -> bool {
    false
}

#[cfg(not(all(target_arch = "x86_64", not(feature = "portable-only"))))]
#[inline]
fn has_avx512() -> bool {
    false
}
