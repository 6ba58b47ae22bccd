//! The private SIMD seam: the only module (with its submodules) that names concrete
//! vector types.
//!
//! Kernels use it in one of two ways:
//!
//! - the slice-level primitives at the end of this file (`dot`, `sq_dist`,
//!   `sq_dist_offset`, `axpy`, `axpy_diff`, `scale`, `scale_into`): plain functions over
//!   `&[f32]` taking the caller's [`Backend`], one [`Backend::dispatch`] each, for
//!   kernels that are not themselves generic over the backend and work pair by pair
//!   (contrastive, quadruplet, proxy and explicit triplet losses, retrieval); their
//!   callers see no lane type;
//! - a [`Kernel`]: a struct whose `run` is generic over [`Simd`], dispatched once for a
//!   whole loop (the distance microkernel in `distance/tile.rs`, the row-norm and
//!   normalisation kernels, the mining epilogues, the batch triplet blocks). Its body
//!   calls the `_with` forms of the primitives (`dot_with(s, ..)`, ...) and the [`Simd`]
//!   operations themselves, so it does see the vector type `S::V`.
//!
//! Behind them:
//!
//! - a private abstraction, [`Simd`]: a zero-sized backend token with an associated
//!   vector type and the handful of lane-wise operations the algorithms need (load and
//!   store with masked tails, `fma`, `add`, `sub`, `mul`, `min`, `max`, `sqrt`, `splat`,
//!   horizontal sum, in-register transpose). Every algorithm is written once, generic
//!   over it;
//! - backends: `Portable` (`wide::f32x8`, every target; its code path is fixed at
//!   compile time by the build's target features: SSE2 on a default x86-64 build,
//!   AVX/FMA with `-C target-cpu=x86-64-v3`, NEON on aarch64, scalar code elsewhere), and
//!   on x86-64 `Avx2` (AVX2 + FMA, 8 lanes) and `Avx512` (AVX-512F, 16 lanes) over
//!   `core::arch`, compiled into every build and chosen **at run time** (CPUID through the
//!   `no_std` `cpufeatures` crate), so a default `cargo build` runs the widest unit the
//!   CPU has;
//! - [`Backend::dispatch`]: `backend.dispatch(kernel)` runs a [`Kernel`] with that
//!   backend, monomorphised per backend inside a `#[target_feature]` function so that
//!   the intrinsics inline into the whole kernel loop. Everything generic over [`Simd`]
//!   is therefore `#[inline(always)]`.
//!
//! **One backend per public call.** Every public kernel reads [`Backend::active`] once,
//! at its entry, and passes that value (a `Copy` enum) to every `dispatch` and slice
//! primitive of the call, through every internal helper, and into the crate-internal
//! `_on(backend, ..)` forms of the public kernels it calls itself (`l2_normalize_on`
//! inside the batch triplet loss, `pairwise_distances_rows_on` inside the miners, ...).
//! Nothing below a public entry point reads the atomic again, so a call started under
//! one backend finishes under it even while [`set_backend`] runs on another thread, and
//! its result is exactly that backend's.
//!
//! `unsafe` lives in one module only, `simd/x86.rs` (intrinsics, and the calls into
//! `#[target_feature]` functions, each justified by a token that only CPU detection
//! constructs). Users force the portable path with the cargo feature `portable-only`
//! (compile time: the x86 backends are not built) or with [`set_backend`] (run time).
//!
//! Accumulation order of the reductions `dot`, `sq_dist` and `sq_dist_offset`:
//! `S::LANES` lanes (8 portable or AVX2, 16 AVX-512), two independent accumulators, each
//! lane summing every `2 * LANES`-th element; the tail (fewer than `2 * LANES` elements)
//! is loaded with zero padding into the same accumulators (`sq_dist_offset`, whose term
//! is not 0 at `a = b = 0`, masks the padding lanes); then one vector add and a
//! horizontal sum. `fma` is fused on the AVX2 and AVX-512 backends, and on the portable
//! one only where the build enables FMA, so the last bits of a result may differ between
//! backends and builds; the documented error bounds hold for all of them.
//!
//! Adding a primitive: write its body once as `foo_with<S: Simd>(s, ..)`,
//! `#[inline(always)]`; a one-call `Kernel` struct whose `run` calls it; and
//! `pub(crate) fn foo(backend: Backend, ..)` that calls `backend.dispatch(..)`. A
//! kernel that loops over many rows should be one `Kernel` itself and call the `_with`
//! forms, so that it pays for one dispatch, not one per row. Vector code called from a
//! `Kernel` goes into `#[inline(always)]` functions (or a trait method, as [`Step`]), not
//! closures: a closure is a function of its own, which, when not inlined, is compiled
//! without the entry point's target features. Closures over scalars (a coefficient, an
//! index) are fine.

#![allow(clippy::inline_always)] // Generic code must inline into the `#[target_feature]` entry.

mod backend;
mod portable;
#[cfg(all(target_arch = "x86_64", not(feature = "portable-only")))]
mod x86;

pub use backend::{reset_backend, set_backend, Backend};
pub(crate) use portable::Portable;

/// A SIMD backend: a zero-sized, `Copy` token whose existence proves that the CPU can
/// run its instructions, with the lane-wise operations the algorithms need.
///
/// Lane semantics are IEEE 754 binary32 for every backend. `max(a, b)` is
/// `if a > b { a } else { b }` lane-wise and `min(a, b)` is `if a < b { a } else { b }`
/// (so a NaN in `a` yields `b`, a NaN in `b` yields `b`): `max(zero, v)` is a ReLU that
/// keeps NaN.
pub(crate) trait Simd: Copy {
    /// Lanes of [`Self::V`].
    const LANES: usize;
    /// The vector type.
    type V: Copy;

    /// All lanes `0.0`.
    fn zero(self) -> Self::V;
    /// All lanes `x`.
    fn splat(self, x: f32) -> Self::V;
    /// The first `min(src.len(), LANES)` elements of `src`, the other lanes `0.0` (a
    /// masked load for a short tail: nothing past the slice is read).
    fn load(self, src: &[f32]) -> Self::V;
    /// Writes the first `min(dst.len(), LANES)` lanes of `v` to `dst` (masked store for a
    /// short tail: nothing past the slice is written).
    fn store(self, v: Self::V, dst: &mut [f32]);
    /// `a + b`.
    fn add(self, a: Self::V, b: Self::V) -> Self::V;
    /// `a - b`.
    fn sub(self, a: Self::V, b: Self::V) -> Self::V;
    /// `a * b`.
    fn mul(self, a: Self::V, b: Self::V) -> Self::V;
    /// `a / b`, correctly rounded.
    fn div(self, a: Self::V, b: Self::V) -> Self::V;
    /// `a * b + c`, with one rounding where the backend has FMA.
    fn fma(self, a: Self::V, b: Self::V, c: Self::V) -> Self::V;
    /// `if a < b { a } else { b }`.
    fn min(self, a: Self::V, b: Self::V) -> Self::V;
    /// `if a > b { a } else { b }`.
    fn max(self, a: Self::V, b: Self::V) -> Self::V;
    /// Correctly rounded square root.
    fn sqrt(self, a: Self::V) -> Self::V;
    /// Sum of the lanes (in a backend-specific tree order).
    fn reduce_add(self, a: Self::V) -> f32;
    /// Transposes the `LANES x LANES` block held in `rows` (lane `c` of `rows[r]` is
    /// element `(r, c)`) in place; does nothing unless `rows.len() == LANES`.
    fn transpose(self, rows: &mut [Self::V]);
    /// The first `min(src.len(), LANES)` f16 values of `src` (IEEE binary16 bits) widened
    /// to `f32` (exact), the other lanes `0.0`.
    fn load_f16(self, src: &[u16]) -> Self::V;
    /// The first `min(src.len(), LANES)` bf16 values of `src` widened to `f32` (exact),
    /// the other lanes `0.0`.
    fn load_bf16(self, src: &[u16]) -> Self::V;
    /// The first `min(src.len(), LANES)` int8 values of `src` as `f32` (exact), the
    /// other lanes `0.0`.
    fn load_i8(self, src: &[i8]) -> Self::V;
}

/// A kernel that runs over any backend: its body is written once, generic over [`Simd`],
/// and [`Backend::dispatch`] monomorphises it per backend.
///
/// `MR x NV` is the backend's register tile for the packed matrix microkernels (`MR`
/// rows, `NV` vectors of columns, `NV * LANES` a multiple of `MR`); kernels that do not
/// tile ignore it (and the distance tile may pick another shape for long rows). Square
/// tiles (`MR == LANES`, `NV == 1`) and paired ones (`2 MR == LANES`, `NV == 2`) let the
/// microkernels mirror and pack through [`Simd::transpose`].
///
/// `run` (and every generic function it calls) must be `#[inline(always)]`, so that it is
/// compiled inside the backend's `#[target_feature]` entry.
pub(crate) trait Kernel {
    /// What the kernel returns.
    type Output;
    /// The kernel body, for backend `S`.
    fn run<S: Simd, const MR: usize, const NV: usize>(self, s: S) -> Self::Output;
}

impl Backend {
    /// Runs `kernel` with this backend: the value the public entry point read once from
    /// [`Backend::active`] and passes down to every stage and helper of its call.
    #[inline]
    pub(crate) fn dispatch<K: Kernel>(self, kernel: K) -> K::Output {
        #[cfg(all(target_arch = "x86_64", not(feature = "portable-only")))]
        match self {
            Backend::Avx512 => {
                if let Some(token) = x86::Avx512::detect() {
                    return x86::run_avx512(token, kernel);
                }
            }
            Backend::Avx2 => {
                if let Some(token) = x86::Avx2::detect() {
                    return x86::run_avx2(token, kernel);
                }
            }
            Backend::Portable => {}
        }
        #[cfg(not(all(target_arch = "x86_64", not(feature = "portable-only"))))]
        let _ = self; // Only the portable backend is built.
        kernel.run::<Portable, { portable::MR }, { portable::NV }>(Portable)
    }
}

/// How [`bf16_tile`] turns the accumulated products `acc` into filter values, with the
/// row term `r` and the column term `c`.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Bf16Epilogue {
    /// `max(0, r + c - 2 acc)` (squared norms), NaN kept.
    Sq,
    /// `1 - acc (r c)` (inverse norms).
    Cosine,
    /// `-acc`.
    NegDot,
}

/// One filter tile: rows of `a` against columns of `b`, both packed in panels of 16 as
/// words of two bf16 values (`panel[p * 16 + i]` holds elements `2p` and `2p + 1` of the
/// panel's row `i`, low half first).
pub(crate) struct Bf16Tile<'t> {
    /// `rows.div_ceil(16)` panels of `16 * pairs` words.
    pub(crate) a: &'t [u32],
    /// One term per packed row (`rows.div_ceil(16) * 16`).
    pub(crate) a_terms: &'t [f32],
    /// `cols.div_ceil(16)` panels of `16 * pairs` words.
    pub(crate) b: &'t [u32],
    /// One term per packed column (`cols.div_ceil(16) * 16`).
    pub(crate) b_terms: &'t [f32],
    pub(crate) pairs: usize,
    pub(crate) rows: usize,
    pub(crate) cols: usize,
    /// `rows x cols` values, row-major (not written with `keep`).
    pub(crate) out: &'t mut [f32],
    /// Instead of the values: each row's bar (at least `rows`), and for each row and
    /// 16-column chunk a bit mask (`rows x cols.div_ceil(16)` words, in the low 16 bits)
    /// of the columns whose value is not above the row's bar (NaN included).
    pub(crate) keep: Option<(&'t [f32], &'t mut [u32])>,
    pub(crate) epilogue: Bf16Epilogue,
}

/// Computes the bf16 filter tile `t` and returns `true` when `backend` is
/// [`Backend::Avx512`], the CPU has AVX512_BF16 (`vdpbf16ps`) and the buffers hold what
/// the shapes require; otherwise writes nothing and returns `false`. Each value is the
/// Gram form of the row and column from their elements rounded to bf16 (round to nearest
/// even), the products summed in `f32` (see the retrieval kernels' filter bound). Fewer
/// than four rows without `keep` take a matrix-vector kernel (four column panels per
/// step).
#[inline]
pub(crate) fn bf16_tile(backend: Backend, t: Bf16Tile<'_>) -> bool {
    #[cfg(all(target_arch = "x86_64", not(feature = "portable-only")))]
    if backend == Backend::Avx512 {
        if let Some(token) = x86::Bf16::detect() {
            return x86::bf16_tile(token, t);
        }
    }
    let _ = (backend, t);
    false
}

/// Whether [`bf16_tile`] computes tiles for `backend` on this CPU.
#[inline]
pub(crate) fn has_bf16_tile(backend: Backend) -> bool {
    #[cfg(all(target_arch = "x86_64", not(feature = "portable-only")))]
    if backend == Backend::Avx512 {
        return x86::Bf16::detect().is_some();
    }
    let _ = backend;
    false
}

/// Largest `MR` of any backend (sizes workspaces).
pub(crate) const MR_MAX: usize = 16;
/// Largest `NV * LANES` of any tile shape (sizes workspaces): the distance tile's paired
/// shape on AVX-512 (`8 x 32`, see `distance/tile.rs`), wider than any backend's own.
pub(crate) const NR_MAX: usize = 32;
/// Largest `LANES` of any backend (AVX-512: 16 `f32`; sizes lane buffers).
pub(crate) const MAX_LANES: usize = 16;

// ---------------------------------------------------------------------------------------
// Algorithms over slices, written once.
// ---------------------------------------------------------------------------------------

/// One accumulation step of a lane-wise reduction (a trait rather than a closure: a
/// closure body is compiled apart and could miss the entry point's target features).
trait Step {
    /// `acc` updated with the lanes `x`, `y`.
    fn step<S: Simd>(s: S, acc: S::V, x: S::V, y: S::V) -> S::V;
}

/// `acc + x y`.
struct DotStep;
impl Step for DotStep {
    #[inline(always)]
    fn step<S: Simd>(s: S, acc: S::V, x: S::V, y: S::V) -> S::V {
        s.fma(x, y, acc)
    }
}

/// `acc + (x - y)^2`.
struct SqDistStep;
impl Step for SqDistStep {
    #[inline(always)]
    fn step<S: Simd>(s: S, acc: S::V, x: S::V, y: S::V) -> S::V {
        let d = s.sub(x, y);
        s.fma(d, d, acc)
    }
}

/// Lane-wise reduction of two equally long slices (cut to the shorter), two accumulators.
#[inline(always)]
fn fold2_with<S: Simd, T: Step>(s: S, a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let (a, b) = (a.split_at(n).0, b.split_at(n).0);
    let l = S::LANES;
    let mut acc0 = s.zero();
    let mut acc1 = s.zero();
    let mut ac = a.chunks_exact(2 * l);
    let mut bc = b.chunks_exact(2 * l);
    for (x, y) in ac.by_ref().zip(bc.by_ref()) {
        let (x0, x1) = x.split_at(l);
        let (y0, y1) = y.split_at(l);
        acc0 = T::step(s, acc0, s.load(x0), s.load(y0));
        acc1 = T::step(s, acc1, s.load(x1), s.load(y1));
    }
    let (x, y) = (ac.remainder(), bc.remainder());
    if !x.is_empty() {
        // Zero padding adds exact zeros to the accumulators.
        acc0 = T::step(s, acc0, s.load(x), s.load(y));
        if x.len() > l {
            acc1 = T::step(s, acc1, s.load(x.split_at(l).1), s.load(y.split_at(l).1));
        }
    }
    s.reduce_add(s.add(acc0, acc1))
}

/// `sum a_i b_i` over the common length.
#[inline(always)]
pub(crate) fn dot_with<S: Simd>(s: S, a: &[f32], b: &[f32]) -> f32 {
    fold2_with::<S, DotStep>(s, a, b)
}

/// `sum (a_i - b_i)^2` over the common length, computed directly.
#[inline(always)]
pub(crate) fn sq_dist_with<S: Simd>(s: S, a: &[f32], b: &[f32]) -> f32 {
    fold2_with::<S, SqDistStep>(s, a, b)
}

/// `y += alpha * x` over the common length.
#[inline(always)]
pub(crate) fn axpy_with<S: Simd>(s: S, alpha: f32, x: &[f32], y: &mut [f32]) {
    let n = x.len().min(y.len());
    let (x, y) = (x.split_at(n).0, y.split_at_mut(n).0);
    let va = s.splat(alpha);
    for (xc, yc) in x.chunks(S::LANES).zip(y.chunks_mut(S::LANES)) {
        let v = s.fma(s.load(xc), va, s.load(yc));
        s.store(v, yc);
    }
}

/// `y = alpha * x` over the common length.
#[inline(always)]
pub(crate) fn scale_into_with<S: Simd>(s: S, alpha: f32, x: &[f32], y: &mut [f32]) {
    let n = x.len().min(y.len());
    let (x, y) = (x.split_at(n).0, y.split_at_mut(n).0);
    let va = s.splat(alpha);
    for (xc, yc) in x.chunks(S::LANES).zip(y.chunks_mut(S::LANES)) {
        s.store(s.mul(s.load(xc), va), yc);
    }
}

/// One-call kernels for the slice primitives below.
struct Dot<'a>(&'a [f32], &'a [f32]);
impl Kernel for Dot<'_> {
    type Output = f32;
    #[inline(always)]
    fn run<S: Simd, const MR: usize, const NV: usize>(self, s: S) -> f32 {
        dot_with(s, self.0, self.1)
    }
}

struct SqDist<'a>(&'a [f32], &'a [f32]);
impl Kernel for SqDist<'_> {
    type Output = f32;
    #[inline(always)]
    fn run<S: Simd, const MR: usize, const NV: usize>(self, s: S) -> f32 {
        sq_dist_with(s, self.0, self.1)
    }
}

struct Axpy<'a>(f32, &'a [f32], &'a mut [f32]);
impl Kernel for Axpy<'_> {
    type Output = ();
    #[inline(always)]
    fn run<S: Simd, const MR: usize, const NV: usize>(self, s: S) {
        axpy_with(s, self.0, self.1, self.2);
    }
}

struct ScaleInto<'a>(f32, &'a [f32], &'a mut [f32]);
impl Kernel for ScaleInto<'_> {
    type Output = ();
    #[inline(always)]
    fn run<S: Simd, const MR: usize, const NV: usize>(self, s: S) {
        scale_into_with(s, self.0, self.1, self.2);
    }
}

// ---------------------------------------------------------------------------------------
// The seam: slice-level primitives, each one dispatch with the caller's backend.
// ---------------------------------------------------------------------------------------

/// `sum a_i b_i`.
#[inline]
pub(crate) fn dot(backend: Backend, a: &[f32], b: &[f32]) -> f32 {
    backend.dispatch(Dot(a, b))
}

/// `sum (a_i - b_i)^2`, computed directly (no cancellation: exact zero for equal rows).
#[inline]
pub(crate) fn sq_dist(backend: Backend, a: &[f32], b: &[f32]) -> f32 {
    backend.dispatch(SqDist(a, b))
}

/// `y += alpha * x` over the common length.
#[inline]
pub(crate) fn axpy(backend: Backend, alpha: f32, x: &[f32], y: &mut [f32]) {
    backend.dispatch(Axpy(alpha, x, y));
}

/// `y = alpha * x` over the common length.
#[inline]
pub(crate) fn scale_into(backend: Backend, alpha: f32, x: &[f32], y: &mut [f32]) {
    backend.dispatch(ScaleInto(alpha, x, y));
}

/// `sum (a_i - b_i + offset)^2`: the squared norm of a shifted difference (PyTorch adds
/// its `eps` to the difference vector before taking the norm). `offset = 0` is
/// [`sq_dist`].
#[inline]
pub(crate) fn sq_dist_offset(backend: Backend, a: &[f32], b: &[f32], offset: f32) -> f32 {
    backend.dispatch(SqDistOffset(a, b, offset))
}

/// `y *= alpha` in place.
#[inline]
pub(crate) fn scale(backend: Backend, alpha: f32, y: &mut [f32]) {
    backend.dispatch(Scale(alpha, y));
}

// Generic bodies and one-call kernels of the three primitives above.

/// `1.0` in every lane: `load(&ONES[..len])` is a mask of the first `len` lanes.
static ONES: [f32; 16] = [1.0; 16];

/// See [`sq_dist_offset`]. Two accumulators as [`dot_with`]; the tail's padding lanes
/// are masked to 0 (they would add `offset^2`).
#[inline(always)]
pub(crate) fn sq_dist_offset_with<S: Simd>(s: S, a: &[f32], b: &[f32], offset: f32) -> f32 {
    let n = a.len().min(b.len());
    let (a, b) = (a.split_at(n).0, b.split_at(n).0);
    let l = S::LANES;
    let vo = s.splat(offset);
    let mut acc0 = s.zero();
    let mut acc1 = s.zero();
    let mut ac = a.chunks_exact(2 * l);
    let mut bc = b.chunks_exact(2 * l);
    while let (Some(x), Some(y)) = (ac.next(), bc.next()) {
        let (x0, x1) = x.split_at(l);
        let (y0, y1) = y.split_at(l);
        let d0 = shifted_diff(s, x0, y0, vo);
        let d1 = shifted_diff(s, x1, y1, vo);
        acc0 = s.fma(d0, d0, acc0);
        acc1 = s.fma(d1, d1, acc1);
    }
    let (x, y) = (ac.remainder(), bc.remainder());
    let (x0, x1) = x.split_at(x.len().min(l));
    let (y0, y1) = y.split_at(y.len().min(l));
    for (xs, ys) in [(x0, y0), (x1, y1)] {
        if !xs.is_empty() {
            let mask = s.load(ONES.get(..xs.len()).unwrap_or(&[]));
            let d = s.mul(shifted_diff(s, xs, ys, vo), mask);
            acc0 = s.fma(d, d, acc0);
        }
    }
    s.reduce_add(s.add(acc0, acc1))
}

/// `x - y + offset` lane-wise (a function, not a closure: a closure body is compiled
/// apart and could miss the entry point's target features).
#[inline(always)]
fn shifted_diff<S: Simd>(s: S, x: &[f32], y: &[f32], offset: S::V) -> S::V {
    s.add(s.sub(s.load(x), s.load(y)), offset)
}

/// See [`scale`].
#[inline(always)]
pub(crate) fn scale_with<S: Simd>(s: S, alpha: f32, y: &mut [f32]) {
    let va = s.splat(alpha);
    for yc in y.chunks_mut(S::LANES) {
        s.store(s.mul(s.load(yc), va), yc);
    }
}

struct SqDistOffset<'a>(&'a [f32], &'a [f32], f32);
impl Kernel for SqDistOffset<'_> {
    type Output = f32;
    #[inline(always)]
    fn run<S: Simd, const MR: usize, const NV: usize>(self, s: S) -> f32 {
        sq_dist_offset_with(s, self.0, self.1, self.2)
    }
}

struct Scale<'a>(f32, &'a mut [f32]);
impl Kernel for Scale<'_> {
    type Output = ();
    #[inline(always)]
    fn run<S: Simd, const MR: usize, const NV: usize>(self, s: S) {
        scale_with(s, self.0, self.1);
    }
}

// ---------------------------------------------------------------------------------------
// Fused reductions over a compact right-hand side (f16, bf16, int8 with a scale): the
// same lanes, accumulators and order as `dot_with` / `sq_dist_with`, each element of `b`
// widened in registers to exactly the `f32` value its dequantization writes, so the
// result is bit for bit that of the `f32` primitive on the dequantized row.

/// A storage format of the right-hand side of a fused reduction.
pub(crate) trait Widen: Copy {
    /// Stored element.
    type E: Copy;
    /// The dequantized lanes of `src` (as [`Simd::load`]: a short tail zero-padded);
    /// `scale` is the row's scale, read by int8 only.
    fn widen<S: Simd>(s: S, src: &[Self::E], scale: S::V) -> S::V;
}

/// `f32` rows.
#[derive(Clone, Copy)]
pub(crate) struct WideF32;
impl Widen for WideF32 {
    type E = f32;
    #[inline(always)]
    fn widen<S: Simd>(s: S, src: &[f32], _: S::V) -> S::V {
        s.load(src)
    }
}

/// f16 rows.
#[derive(Clone, Copy)]
pub(crate) struct WideF16;
impl Widen for WideF16 {
    type E = u16;
    #[inline(always)]
    fn widen<S: Simd>(s: S, src: &[u16], _: S::V) -> S::V {
        s.load_f16(src)
    }
}

/// bf16 rows.
#[derive(Clone, Copy)]
pub(crate) struct WideBf16;
impl Widen for WideBf16 {
    type E = u16;
    #[inline(always)]
    fn widen<S: Simd>(s: S, src: &[u16], _: S::V) -> S::V {
        s.load_bf16(src)
    }
}

/// int8 rows with a per-row scale: each lane `code * scale`, rounded once.
#[derive(Clone, Copy)]
pub(crate) struct WideI8;
impl Widen for WideI8 {
    type E = i8;
    #[inline(always)]
    fn widen<S: Simd>(s: S, src: &[i8], scale: S::V) -> S::V {
        s.mul(s.load_i8(src), scale)
    }
}

/// [`fold2_with`] with the right-hand side stored in format `W`.
#[inline(always)]
fn fold2_wide<S: Simd, T: Step, W: Widen>(s: S, a: &[f32], b: &[W::E], scale: f32) -> f32 {
    let n = a.len().min(b.len());
    let (a, b) = (a.split_at(n).0, b.split_at(n).0);
    let l = S::LANES;
    let vs = s.splat(scale);
    let mut acc0 = s.zero();
    let mut acc1 = s.zero();
    let mut ac = a.chunks_exact(2 * l);
    let mut bc = b.chunks_exact(2 * l);
    for (x, y) in ac.by_ref().zip(bc.by_ref()) {
        let (x0, x1) = x.split_at(l);
        let (y0, y1) = y.split_at(l);
        acc0 = T::step(s, acc0, s.load(x0), W::widen(s, y0, vs));
        acc1 = T::step(s, acc1, s.load(x1), W::widen(s, y1, vs));
    }
    let (x, y) = (ac.remainder(), bc.remainder());
    if !x.is_empty() {
        acc0 = T::step(s, acc0, s.load(x), W::widen(s, y, vs));
        if x.len() > l {
            acc1 = T::step(
                s,
                acc1,
                s.load(x.split_at(l).1),
                W::widen(s, y.split_at(l).1, vs),
            );
        }
    }
    s.reduce_add(s.add(acc0, acc1))
}

/// `sum a_i b_i` with `b` in format `W` (scale `scale` for int8): bit for bit
/// [`dot_with`] of `a` and the dequantized `b`.
#[inline(always)]
pub(crate) fn dot_wide<S: Simd, W: Widen>(s: S, a: &[f32], b: &[W::E], scale: f32) -> f32 {
    fold2_wide::<S, DotStep, W>(s, a, b, scale)
}

/// `sum (a_i - b_i)^2` with `b` in format `W`: bit for bit [`sq_dist_with`] of `a` and
/// the dequantized `b`.
#[inline(always)]
pub(crate) fn sq_dist_wide<S: Simd, W: Widen>(s: S, a: &[f32], b: &[W::E], scale: f32) -> f32 {
    fold2_wide::<S, SqDistStep, W>(s, a, b, scale)
}

// ---------------------------------------------------------------------------------------
// Integer kernels of the edge formats: int8 tiles (AVX-512 VNNI) and population counts.

/// One int8 tile: rows of `a` against columns of `b`, both packed in panels of 16 as words
/// of four int8 codes (`panel[p * 16 + i]` holds codes `4p..4p + 4` of the panel's row `i`,
/// lowest byte first; `a`'s codes stored with their sign bit flipped, as unsigned
/// `code + 128`). Each value is `v = f(acc)` with `acc = sum a_k b_k` exact in `i32`
/// (`sum (a_k + 128) b_k - 128 b_sums[c]`), `m = a_scale[r] * b_scale[c]` and
/// `x = m * (acc as f32)`: `max(0, (a_terms[r] + b_terms[c]) - 2 x)` ([`I8Epilogue::Sq`]),
/// `1 - x` (cosine) or `-x` (inner product).
pub(crate) struct I8Tile<'t> {
    pub(crate) a: &'t [u32],
    pub(crate) a_scale: &'t [f32],
    pub(crate) a_terms: &'t [f32],
    pub(crate) b: &'t [u32],
    pub(crate) b_scale: &'t [f32],
    pub(crate) b_terms: &'t [f32],
    /// Per packed column: the sum of its codes.
    pub(crate) b_sums: &'t [i32],
    /// A per-pair shift of the values: `(c, e)`, one coefficient per row (`rows`) and one
    /// term per packed column, each value lowered to `v - c[r] e[c]` (one fused rounding)
    /// before it is stored and compared; `None` for the values as they are.
    pub(crate) shift: Option<(&'t [f32], &'t [f32])>,
    pub(crate) quads: usize,
    pub(crate) rows: usize,
    pub(crate) cols: usize,
    /// `rows x cols` values, row-major; empty to write only the masks of `keep`.
    pub(crate) out: &'t mut [f32],
    /// Each row's bar (`rows`), and for each row and 16-column chunk a bit mask
    /// (`rows x cols.div_ceil(16)` words, in the low 16 bits) of the columns whose value
    /// is not above the row's bar (NaN included); `None` to write only the values.
    pub(crate) keep: Option<(&'t [f32], &'t mut [u32])>,
    pub(crate) epilogue: I8Epilogue,
}

/// The epilogue of [`I8Tile`].
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum I8Epilogue {
    /// `max(0, (ta + tb) - 2 x)`.
    Sq,
    /// `1 - x`.
    Cosine,
    /// `-x`.
    NegDot,
}

/// Computes the int8 tile and returns `true` when `backend` is [`Backend::Avx512`], the
/// CPU has AVX512_VNNI and the buffers hold what the shapes require; otherwise writes
/// nothing and returns `false`. Four rows against up to four column panels per step.
#[inline]
pub(crate) fn i8_tile(backend: Backend, t: I8Tile<'_>) -> bool {
    #[cfg(all(target_arch = "x86_64", not(feature = "portable-only")))]
    if backend == Backend::Avx512 {
        if let Some(token) = x86::Vnni::detect() {
            return x86::i8_tile(token, t);
        }
    }
    let _ = (backend, t);
    false
}

/// What the first pass of quantizing one row of the int8 filter's packing
/// (`retrieval::i8f`) finds.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub(crate) struct RowScan {
    /// The largest magnitude of `x = row * unit`.
    pub(crate) big: f32,
    /// Whether every `x` is finite.
    pub(crate) finite: bool,
    /// The row's own squared norm `sum row_i^2` (of the row, not of `x`), over 16 lanes
    /// reduced pairwise.
    pub(crate) sq_norm: f32,
}

/// What the second pass of quantizing one row of the int8 filter's packing
/// (`retrieval::i8f`) finds besides the codes.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub(crate) struct RowCode {
    /// The sum of the squared residuals `(x inv - code)^2`, as [`RowScan::sq_norm`].
    pub(crate) resid_sq: f32,
    /// The sum of the codes (exact).
    pub(crate) code_sum: f32,
}

/// Pass 1 of the int8 filter's packing (`retrieval::i8f`) for the rows of one panel,
/// vectorised: for row `r` (`rows.len() / dim` of them, at most 16) the largest magnitude
/// of `x = row * units[r]`, whether every `x` is finite and the row's squared norm, into
/// `scans[r]`; bit for bit the portable loop's. `false` (nothing written) unless `backend`
/// is [`Backend::Avx512`], `dim > 0` and `rows` holds whole rows, at most 16.
#[inline]
pub(crate) fn i8_scan_rows(
    backend: Backend,
    rows: &[f32],
    dim: usize,
    units: &[f32; 16],
    scans: &mut [RowScan; 16],
) -> bool {
    #[cfg(all(target_arch = "x86_64", not(feature = "portable-only")))]
    if backend == Backend::Avx512 {
        if let Some(token) = x86::Avx512::detect() {
            return x86::i8_scan_rows(token, rows, dim, units, scans);
        }
    }
    let _ = (backend, rows, dim, units, scans);
    false
}

/// Pass 2 of the int8 filter's packing (`retrieval::i8f`) for the rows of one panel,
/// vectorised: for row `r`, the codes `round(x * invs[r])` of `x = row * units[r]`
/// clamped to `[-127, 127]`, four to a word XORed with `flip`, word `p` at `out[16 p +
/// r]`, and the sums of the squared residuals and of the codes into `codes[r]`; bit for
/// bit the portable loop's. `false` (nothing written) unless `backend` is
/// [`Backend::Avx512`], `dim > 0`, `rows` holds whole rows, at most 16, and `out` the
/// panel's `16 * dim.div_ceil(4)` words.
#[inline]
#[allow(clippy::too_many_arguments)]
pub(crate) fn i8_code_rows(
    backend: Backend,
    rows: &[f32],
    dim: usize,
    units: &[f32; 16],
    invs: &[f32; 16],
    out: &mut [u32],
    flip: u32,
    codes: &mut [RowCode; 16],
) -> bool {
    #[cfg(all(target_arch = "x86_64", not(feature = "portable-only")))]
    if backend == Backend::Avx512 {
        if let Some(token) = x86::Avx512::detect() {
            return x86::i8_code_rows(token, rows, dim, units, invs, out, flip, codes);
        }
    }
    let _ = (backend, rows, dim, units, invs, out, flip, codes);
    false
}

/// Whether [`i8_tile`] computes tiles for `backend` on this CPU.
#[inline]
pub(crate) fn has_i8_tile(backend: Backend) -> bool {
    #[cfg(all(target_arch = "x86_64", not(feature = "portable-only")))]
    if backend == Backend::Avx512 {
        return x86::Vnni::detect().is_some();
    }
    let _ = backend;
    false
}

/// For each of the `out.len()` int8 rows of `rows` (`dim` codes each), four partial sums
/// of `sum q_i g_i` then four of `sum g_i^2` (the totals exact in `i32` for `127^2 dim <
/// 2^31`, added with wrapping), `q` the query's codes stored as unsigned `c + 128`;
/// returns `true` when `backend` is [`Backend::Avx512`] and the CPU has AVX512_VNNI and
/// AVX512BW, else writes nothing and returns `false`.
#[inline]
pub(crate) fn i8_rows(
    backend: Backend,
    q: &[u8],
    rows: &[i8],
    dim: usize,
    out: &mut [[i32; 8]],
) -> bool {
    #[cfg(all(target_arch = "x86_64", not(feature = "portable-only")))]
    if backend == Backend::Avx512 {
        if let Some(token) = x86::VnniBw::detect() {
            x86::i8_rows(token, q, rows, dim, out);
            return true;
        }
    }
    let _ = (backend, q, rows, dim, out);
    false
}

/// Whether [`i8_rows`] runs for `backend` on this CPU.
#[inline]
pub(crate) fn has_i8_rows(backend: Backend) -> bool {
    #[cfg(all(target_arch = "x86_64", not(feature = "portable-only")))]
    if backend == Backend::Avx512 {
        return x86::VnniBw::detect().is_some();
    }
    let _ = backend;
    false
}

/// Runs `kernel` on the portable backend, compiled with the `popcnt` instruction when
/// `backend` is an x86 one and the CPU has it (`u64::count_ones` is then one
/// instruction); the scalar integer code of the Hamming search needs nothing else.
#[inline]
pub(crate) fn dispatch_popcnt<K: Kernel>(backend: Backend, kernel: K) -> K::Output {
    #[cfg(all(target_arch = "x86_64", not(feature = "portable-only")))]
    if backend != Backend::Portable {
        if let Some(token) = x86::Popcnt::detect() {
            return x86::run_popcnt(token, kernel);
        }
    }
    let _ = backend;
    kernel.run::<Portable, { portable::MR }, { portable::NV }>(Portable)
}

#[cfg(test)]
mod tests {
    use super::*;
    extern crate std;
    use std::vec;
    use std::vec::Vec;

    /// Small integers: every bf16 product and `f32` sum below is exact, so the tile's
    /// values equal the definition in any summation order.
    fn ints(len: usize, seed: usize) -> Vec<f32> {
        (0..len)
            .map(|i| ((i * 37 + seed * 11) % 15) as f32 - 7.0)
            .collect()
    }

    /// Panels of 16 rows of `pairs` words (bf16 of exact small integers).
    fn pack(rows: &[f32], count: usize, pairs: usize) -> Vec<u32> {
        let mut out = vec![0_u32; count.div_ceil(16) * 16 * pairs];
        for i in 0..count {
            for p in 0..pairs {
                let lo = rows[(i * pairs + p) * 2].to_bits() >> 16;
                let hi = rows[(i * pairs + p) * 2 + 1].to_bits() >> 16;
                out[(i / 16) * 16 * pairs + p * 16 + i % 16] = lo | (hi << 16);
            }
        }
        out
    }

    /// A tile over packed rows `(words, terms)` of both sides, `(rows, cols, pairs)`.
    fn tile<'t>(
        (a, a_terms): (&'t [u32], &'t [f32]),
        (b, b_terms): (&'t [u32], &'t [f32]),
        (rows, cols, pairs): (usize, usize, usize),
        epilogue: Bf16Epilogue,
        out: &'t mut [f32],
        keep: Option<(&'t [f32], &'t mut [u32])>,
    ) -> Bf16Tile<'t> {
        Bf16Tile {
            a,
            a_terms,
            b,
            b_terms,
            pairs,
            rows,
            cols,
            out,
            keep,
            epilogue,
        }
    }

    /// `(rows, cols, depth)` of the filter tiles' tests: every remainder of the 16-row
    /// panels, of the four-row blocks and of the column panels (taken four, two and one
    /// at a time), with depths of one to five words.
    const TILE_SHAPES: [(usize, usize, usize); 9] = [
        (1, 1, 1),
        (3, 17, 2),
        (4, 48, 3),
        (5, 33, 1),
        (16, 64, 4),
        (17, 80, 2),
        (20, 112, 3),
        (33, 49, 5),
        (40, 130, 2),
    ];

    /// Every shape's remainder of the 16-row panels, of the four-row blocks and of the
    /// column panels (taken four, two and one at a time), every epilogue, values and
    /// masks, against the definition.
    #[test]
    fn bf16_tile_matches_the_definition() {
        if !has_bf16_tile(Backend::Avx512) {
            return;
        }
        let epilogues = [Bf16Epilogue::Sq, Bf16Epilogue::Cosine, Bf16Epilogue::NegDot];
        for (rows, cols, pairs) in TILE_SHAPES {
            let a = ints(rows * pairs * 2, rows);
            let b = ints(cols * pairs * 2, cols + 1);
            let (pa, pb) = (pack(&a, rows, pairs), pack(&b, cols, pairs));
            let a_terms: Vec<f32> = (0..rows.div_ceil(16) * 16)
                .map(|i| (i % 5) as f32 * 64.0)
                .collect();
            let b_terms: Vec<f32> = (0..cols.div_ceil(16) * 16)
                .map(|j| (j % 3) as f32 * 32.0)
                .collect();
            for epilogue in epilogues {
                let scale = |i: usize| if i.is_multiple_of(2) { 0.5_f32 } else { 0.25 };
                let (at, bt): (Vec<f32>, Vec<f32>) = match epilogue {
                    Bf16Epilogue::Cosine => (
                        (0..a_terms.len()).map(scale).collect(),
                        (0..b_terms.len()).map(|j| scale(j + 1)).collect(),
                    ),
                    _ => (a_terms.clone(), b_terms.clone()),
                };
                let want = |i: usize, j: usize| {
                    let dot: f32 = (0..pairs * 2)
                        .map(|e| a[i * pairs * 2 + e] * b[j * pairs * 2 + e])
                        .sum();
                    match epilogue {
                        Bf16Epilogue::Sq => (at[i] + bt[j] - 2.0 * dot).max(0.0),
                        Bf16Epilogue::Cosine => 1.0 - dot * (at[i] * bt[j]),
                        Bf16Epilogue::NegDot => -dot,
                    }
                };
                let mut out = vec![f32::NAN; rows * cols];
                let shape = (rows, cols, pairs);
                let (a_side, b_side) = ((&pa[..], &at[..]), (&pb[..], &bt[..]));
                assert!(bf16_tile(
                    Backend::Avx512,
                    tile(a_side, b_side, shape, epilogue, &mut out, None)
                ));
                for i in 0..rows {
                    for j in 0..cols {
                        assert_eq!(
                            out[i * cols + j],
                            want(i, j),
                            "{rows}x{cols}x{pairs} {epilogue:?} ({i}, {j})"
                        );
                    }
                }
                let bars: Vec<f32> = (0..rows).map(|i| want(i, (i * 7) % cols)).collect();
                let chunks = cols.div_ceil(16);
                let mut masks = vec![u32::MAX; rows * chunks];
                assert!(bf16_tile(
                    Backend::Avx512,
                    tile(
                        a_side,
                        b_side,
                        shape,
                        epilogue,
                        &mut [],
                        Some((&bars, &mut masks))
                    )
                ));
                for i in 0..rows {
                    for c in 0..chunks {
                        let expect = (0..16)
                            .filter(|&l| c * 16 + l < cols && want(i, c * 16 + l) <= bars[i])
                            .fold(0_u32, |m, l| m | 1 << l);
                        assert_eq!(
                            masks[i * chunks + c],
                            expect,
                            "{rows}x{cols}x{pairs} {epilogue:?} row {i} chunk {c}"
                        );
                    }
                }
            }
        }
    }

    /// Panels of 16 rows of `quads` words of four int8 codes, XORed with `flip`.
    fn pack_i8(codes: &[i32], count: usize, quads: usize, flip: u32) -> Vec<u32> {
        let mut out = vec![flip; count.div_ceil(16) * 16 * quads];
        for i in 0..count {
            for p in 0..quads {
                let w = (0..4).fold(0_u32, |w, b| {
                    w | (u32::from(codes[(i * quads + p) * 4 + b] as i8 as u8) << (8 * b))
                });
                out[(i / 16) * 16 * quads + p * 16 + i % 16] = w ^ flip;
            }
        }
        out
    }

    /// The int8 tile against its definition, as the bf16 one: every remainder of the row
    /// panels, four-row blocks and column panels, every epilogue, values only, masks
    /// only and both.
    #[test]
    fn i8_tile_matches_the_definition() {
        if !has_i8_tile(Backend::Avx512) {
            return;
        }
        let epilogues = [I8Epilogue::Sq, I8Epilogue::Cosine, I8Epilogue::NegDot];
        for (rows, cols, quads) in TILE_SHAPES {
            let code = |i: usize, seed: usize| i32::from(((i * 37 + seed * 11) % 255) as u8) - 127;
            let a: Vec<i32> = (0..rows * quads * 4).map(|i| code(i, rows)).collect();
            let b: Vec<i32> = (0..cols * quads * 4).map(|i| code(i, cols + 1)).collect();
            let (pa, pb) = (
                pack_i8(&a, rows, quads, 0x8080_8080),
                pack_i8(&b, cols, quads, 0),
            );
            let padded = cols.div_ceil(16) * 16;
            let b_sums: Vec<i32> = (0..padded)
                .map(|j| {
                    if j < cols {
                        b[j * quads * 4..(j + 1) * quads * 4].iter().sum()
                    } else {
                        0
                    }
                })
                .collect();
            let a_scale: Vec<f32> = (0..rows).map(|i| 0.01 * (i % 7 + 1) as f32).collect();
            let b_scale: Vec<f32> = (0..padded).map(|j| 0.03 * (j % 5 + 1) as f32).collect();
            let a_terms: Vec<f32> = (0..rows).map(|i| (i % 5) as f32 * 64.0).collect();
            let b_terms: Vec<f32> = (0..padded).map(|j| (j % 3) as f32 * 32.0).collect();
            let coef: Vec<f32> = (0..rows).map(|i| 0.5 * (i % 3) as f32).collect();
            let eps: Vec<f32> = (0..padded).map(|j| 0.125 * (j % 4) as f32).collect();
            for (epilogue, shifted) in epilogues.iter().flat_map(|&e| [(e, false), (e, true)]) {
                let want = |i: usize, j: usize| {
                    let acc: i32 = (0..quads * 4)
                        .map(|e| a[i * quads * 4 + e] * b[j * quads * 4 + e])
                        .sum();
                    let x = (a_scale[i] * b_scale[j]) * acc as f32;
                    let v = match epilogue {
                        I8Epilogue::Sq => ((a_terms[i] + b_terms[j]) - 2.0 * x).max(0.0),
                        I8Epilogue::Cosine => 1.0 - x,
                        I8Epilogue::NegDot => -x,
                    };
                    if shifted {
                        (-coef[i]).mul_add(eps[j], v)
                    } else {
                        v
                    }
                };
                let bars: Vec<f32> = (0..rows).map(|i| want(i, (i * 7) % cols)).collect();
                let chunks = cols.div_ceil(16);
                for (values, masks) in [(true, false), (false, true), (true, true)] {
                    let mut out = vec![f32::NAN; if values { rows * cols } else { 0 }];
                    let mut kept = vec![u32::MAX; rows * chunks];
                    let keep = masks.then_some((&bars[..], &mut kept[..]));
                    assert!(i8_tile(
                        Backend::Avx512,
                        I8Tile {
                            a: &pa,
                            a_scale: &a_scale,
                            a_terms: &a_terms,
                            b: &pb,
                            b_scale: &b_scale,
                            b_terms: &b_terms,
                            b_sums: &b_sums,
                            shift: shifted.then_some((&coef[..], &eps[..])),
                            quads,
                            rows,
                            cols,
                            out: &mut out,
                            keep,
                            epilogue,
                        }
                    ));
                    let what = std::format!(
                        "{rows}x{cols}x{quads} {epilogue:?} {shifted} {values} {masks}"
                    );
                    for i in 0..rows {
                        for j in 0..cols {
                            if values {
                                assert_eq!(out[i * cols + j], want(i, j), "{what} ({i}, {j})");
                            }
                        }
                        for c in 0..chunks {
                            let expect = if masks {
                                (0..16)
                                    .filter(|&l| {
                                        c * 16 + l < cols && want(i, c * 16 + l) <= bars[i]
                                    })
                                    .fold(0_u32, |m, l| m | 1 << l)
                            } else {
                                u32::MAX
                            };
                            assert_eq!(kept[i * chunks + c], expect, "{what} row {i} chunk {c}");
                        }
                    }
                }
            }
        }
    }
}
