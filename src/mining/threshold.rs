//! Threshold mining over every triplet of a batch (pytorch-metric-learning's
//! `TripletMarginMiner`): [`triplet_mine`], [`triplet_mine_count`], the deterministic cap
//! ([`Sampler`]) and the parameters.

use super::sweep::sweep_rows;
use super::{count_exact, rows_len, Mining, Triplet};
use crate::distance::Metric;
use crate::error::Error;
use crate::matrix::Matrix;
use crate::simd::Backend;
use crate::validate::{check_labels, check_rows, check_workspace};

/// Which candidates [`triplet_mine`] keeps, by `g = d(a, n) - d(a, p)` against the margin
/// `m` (pytorch-metric-learning's `type_of_triplets`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum TripletType {
    /// `g <= m`: every triplet that violates the margin. pytorch-metric-learning's default.
    #[default]
    All,
    /// `g <= m` and `g <= 0`: the negative is not farther than the positive.
    Hard,
    /// `0 < g <= m`: the negative is farther than the positive, but inside the margin.
    SemiHard,
    /// `g > m`: the triplets that satisfy the margin (exactly those `All` drops).
    Easy,
}

impl TripletType {
    /// The window `lo < g <= hi` of the kept `g`.
    pub(crate) fn window(self, margin: f32) -> (f32, f32) {
        match self {
            TripletType::All => (f32::NEG_INFINITY, margin),
            TripletType::Hard => (f32::NEG_INFINITY, margin.min(0.0)),
            TripletType::SemiHard => (0.0, margin),
            TripletType::Easy => (margin, f32::INFINITY),
        }
    }
}

/// Parameters of [`triplet_mine`].
///
/// `max_triplets` caps the output: when more triplets qualify than the cap, exactly
/// `max_triplets` of them are kept, a subset drawn by `seed` (see [`triplet_mine`]).
#[derive(Clone, Copy, Debug, PartialEq)]
#[non_exhaustive]
pub struct TripletMinerParams {
    /// The margin `m`, in the unit of the metric (squared units for
    /// [`Metric::SquaredEuclidean`]).
    pub margin: f32,
    /// Which triplets are kept.
    pub triplet_type: TripletType,
    /// At most this many triplets are written (`None`: all of them).
    pub max_triplets: Option<usize>,
    /// Seed of the subsampling under the cap.
    pub seed: u64,
}

impl TripletMinerParams {
    /// Keep `triplet_type` with margin `margin`, no cap, seed 0.
    pub const fn new(margin: f32, triplet_type: TripletType) -> Self {
        TripletMinerParams {
            margin,
            triplet_type,
            max_triplets: None,
            seed: 0,
        }
    }

    /// pytorch-metric-learning's `TripletMarginMiner()` defaults: margin 0.2,
    /// `type_of_triplets="all"`. Its default distance is the Euclidean distance of
    /// L2-normalised rows: normalise with [`crate::l2_normalize`] and use
    /// [`Metric::Euclidean`] to reproduce it.
    pub const fn pytorch_metric_learning() -> Self {
        Self::new(0.2, TripletType::All)
    }

    /// The same parameters with another margin.
    #[must_use]
    pub const fn with_margin(self, margin: f32) -> Self {
        TripletMinerParams { margin, ..self }
    }

    /// The same parameters with another triplet type.
    #[must_use]
    pub const fn with_triplet_type(self, triplet_type: TripletType) -> Self {
        TripletMinerParams {
            triplet_type,
            ..self
        }
    }

    /// The same parameters with a cap of `max_triplets` triplets, subsampled with `seed`.
    #[must_use]
    pub const fn with_cap(self, max_triplets: usize, seed: u64) -> Self {
        TripletMinerParams {
            max_triplets: Some(max_triplets),
            seed,
            ..self
        }
    }

    /// `Err(InvalidParameter)` for a NaN or infinite margin.
    pub(crate) fn validate(&self) -> Result<(), Error> {
        if self.margin.is_finite() {
            Ok(())
        } else {
            Err(Error::InvalidParameter {
                name: "margin",
                expected: "finite",
            })
        }
    }
}

impl Default for TripletMinerParams {
    /// [`TripletMinerParams::pytorch_metric_learning`].
    fn default() -> Self {
        Self::pytorch_metric_learning()
    }
}

/// Workspace elements that [`triplet_mine`] and [`triplet_mine_count`] need for `rows`
/// embeddings of dimension `dim`: those of the row-wise minings of [`super::mine_triplets`]
/// (`3 rows`, one block of `min(rows, 256)` distance rows and its packing), no
/// `rows x rows` matrix and nothing per triplet. Saturates instead of overflowing.
pub const fn triplet_mine_workspace_len(rows: usize, dim: usize) -> usize {
    rows_len(rows, dim, 0)
}

/// The deterministic subsampling under a cap: selection sampling (Knuth's Algorithm S)
/// driven by SplitMix64. Offered the `total` qualifying items one by one in their order,
/// it keeps the next item with probability `need / left` (`need` items still to keep,
/// `left` items still to come, the draw `floor(u * left)` of a 64-bit `u`), so it keeps
/// exactly `min(cap, total)` items, in order, each `cap`-subset about equally likely.
/// The subset depends only on the seed, `total`, `cap` and the order of the items.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Sampler {
    state: u64,
    left: usize,
    need: usize,
}

impl Sampler {
    pub(crate) fn new(seed: u64, total: usize, cap: usize) -> Self {
        Sampler {
            state: seed,
            left: total,
            need: cap.min(total),
        }
    }

    fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Whether the next item is kept.
    pub(crate) fn keep(&mut self) -> bool {
        if self.need == 0 {
            return false;
        }
        let r = ((u128::from(self.next_u64()) * self.left as u128) >> 64) as usize;
        self.left = self.left.saturating_sub(1);
        if r < self.need {
            self.need -= 1;
            true
        } else {
            false
        }
    }

    /// Whether every item to keep has been kept.
    pub(crate) fn done(&self) -> bool {
        self.need == 0
    }
}

/// Receives the qualifying triplets in ascending `(a, p, n)` order.
pub(crate) trait TripletVisit {
    /// Anchor-positive pair `(a, p)` at distance `dap`; `masked` holds the distances of
    /// `a`'s negatives and NaN elsewhere; a negative `q` qualifies when
    /// `lo < masked[q] - dap <= hi`. `false` stops the sweep.
    fn pair(&mut self, a: usize, p: usize, dap: f32, masked: &[f32], lo: f32, hi: f32) -> bool;
}

/// Counts the qualifying triplets.
struct Count(usize);

impl TripletVisit for Count {
    #[inline]
    fn pair(&mut self, _a: usize, _p: usize, dap: f32, masked: &[f32], lo: f32, hi: f32) -> bool {
        let mut k = 0_usize;
        for &m in masked {
            let g = m - dap;
            k += usize::from(g > lo && g <= hi);
        }
        self.0 = self.0.saturating_add(k);
        true
    }
}

/// Writes the qualifying triplets (all, or those a [`Sampler`] keeps).
struct Write<'o> {
    out: &'o mut [Triplet],
    k: usize,
    sampler: Option<Sampler>,
}

impl TripletVisit for Write<'_> {
    #[inline]
    fn pair(&mut self, a: usize, p: usize, dap: f32, masked: &[f32], lo: f32, hi: f32) -> bool {
        // A bit mask of the qualifying negatives per 64 columns (branch-free, vectorises),
        // then one write per set bit.
        for (c, chunk) in masked.chunks(64).enumerate() {
            let mut bits = 0_u64;
            for (t, &m) in chunk.iter().enumerate() {
                let g = m - dap;
                bits |= u64::from(g > lo && g <= hi) << t;
            }
            while bits != 0 {
                let q = c * 64 + bits.trailing_zeros() as usize;
                bits &= bits - 1;
                if let Some(s) = self.sampler.as_mut() {
                    if !s.keep() {
                        continue;
                    }
                }
                if let Some(t) = self.out.get_mut(self.k) {
                    *t = Triplet::new(a as u32, p as u32, q as u32);
                }
                self.k += 1;
            }
        }
        !self.sampler.is_some_and(|s| s.done())
    }
}

/// Offers every anchor-positive pair of the batch, with its anchor's masked negatives, to
/// `visit`, in ascending `(a, p)` order.
fn sweep_triplets<V: TripletVisit>(
    backend: Backend,
    x: &Matrix<'_>,
    labels: &[u32],
    metric: Metric,
    (lo, hi): (f32, f32),
    workspace: &mut [f32],
    visit: &mut V,
) -> Result<(), Error> {
    sweep_rows(backend, x, metric, workspace, |a, row, masked| {
        let Some(&la) = labels.get(a) else {
            return false;
        };
        let mut any_neg = false;
        for ((m, &v), &l) in masked.iter_mut().zip(row).zip(labels) {
            let neg = l != la;
            *m = if neg { v } else { f32::NAN };
            any_neg |= neg;
        }
        if !any_neg {
            return true;
        }
        for (p, (&lp, &dap)) in labels.iter().zip(row).enumerate() {
            if p != a && lp == la && !visit.pair(a, p, dap, masked, lo, hi) {
                return false;
            }
        }
        true
    })
}

/// The checks of [`triplet_mine_count`], [`triplet_mine`] and their twins before the
/// output: labels, parameters, workspace, data. Returns the number of rows.
pub(crate) fn check_triplet_mine(
    x: &Matrix<'_>,
    labels: &[u32],
    params: &TripletMinerParams,
    workspace: usize,
) -> Result<usize, Error> {
    let n = check_labels(x, labels)?;
    params.validate()?;
    check_workspace(triplet_mine_workspace_len(n, x.dim()), workspace)?;
    check_rows(x, false)?;
    Ok(n)
}

/// The candidate count (every valid triplet), `usize::MAX` when it overflows.
pub(crate) fn candidate_bound(labels: &[u32]) -> usize {
    count_exact(labels, Mining::All).unwrap_or(usize::MAX)
}

/// Number of triplets of the batch that qualify under `params` (the cap is not applied):
/// the number [`triplet_mine`] writes without a cap. Use it to size `out`.
///
/// Candidates are every `(a, p, n)` with `p != a`, `label(p) == label(a)` and
/// `label(n) != label(a)`; with `g = d(a, n) - d(a, p)` under `metric` and the margin `m`,
/// [`TripletType::All`] keeps `g <= m`, [`TripletType::Hard`] `g <= m` and `g <= 0`,
/// [`TripletType::SemiHard`] `0 < g <= m`, [`TripletType::Easy`] `g > m`. Anchors without
/// a positive or a negative contribute nothing.
///
/// The distance rows are computed in blocks of up to 256 anchors, as in
/// [`crate::mine_triplets`]; nothing is held per triplet. Scalar twin:
/// [`crate::scalar::triplet_mine_count`]. `workspace` needs
/// [`triplet_mine_workspace_len`]`(rows, dim)` elements, garbage before and after.
///
/// # Errors
///
/// In this order:
/// - [`Error::LengthMismatch`] (`"labels"`) when `labels.len() != rows`;
/// - [`Error::InvalidParameter`] (`"margin"`) for a NaN or infinite margin;
/// - [`Error::WorkspaceTooSmall`] when the workspace is too short;
/// - [`Error::NonFinite`] (`"x"`, row and column) when `x` holds a NaN or an infinity;
/// - [`Error::TooLarge`] (`"x"`, row and column) when an element of `x` exceeds
///   `2^52 / sqrt(dim)`.
///
/// # Numerics
///
/// `g` is the difference of two `f32` distances of the mining kernels (see the
/// [accuracy notes](super#distances-and-their-accuracy)) and is compared with the margin
/// in `f32`: a triplet whose `g` lies within the distances' error bound of a threshold may
/// be decided otherwise than by the `f64` twin. Integer-valued data with squared norms
/// below `2^24` (Euclidean metrics) decides exactly as the twin.
///
/// # Example
///
/// ```
/// use triplet_kernels::{triplet_mine_count, triplet_mine_workspace_len};
/// use triplet_kernels::{Matrix, Metric, TripletMinerParams, TripletType};
/// let x = Matrix::new(&[0.0, 1.0, 1.5, 4.0], 4, 1)?;
/// let labels = [0, 0, 1, 1];
/// let mut ws = [0.0_f32; triplet_mine_workspace_len(4, 1)];
/// let params = TripletMinerParams::new(1.0, TripletType::SemiHard);
/// // (0, 1, 2): g = 1.5 - 1 = 0.5; (1, 0, 2): g = 0.5 - 1 < 0; (3, 2, 1): g = 3 - 2.5 = 0.5.
/// assert_eq!(triplet_mine_count(x, &labels, Metric::Euclidean, params, &mut ws)?, 2);
/// # Ok::<(), triplet_kernels::Error>(())
/// ```
#[cfg_attr(feature = "no-panic", no_panic::no_panic)]
pub fn triplet_mine_count(
    x: Matrix<'_>,
    labels: &[u32],
    metric: Metric,
    params: TripletMinerParams,
    workspace: &mut [f32],
) -> Result<usize, Error> {
    check_triplet_mine(&x, labels, &params, workspace.len())?;
    let window = params.triplet_type.window(params.margin);
    let mut c = Count(0);
    sweep_triplets(
        Backend::active(),
        &x,
        labels,
        metric,
        window,
        workspace,
        &mut c,
    )?;
    Ok(c.0)
}

/// Writes the triplets of the batch that qualify under `params` into `out`, in ascending
/// `(a, p, n)` order, and returns how many it wrote: [`triplet_mine_count`], or
/// `max_triplets` when the count exceeds the cap. The first that many elements of `out`
/// are overwritten, the rest are left untouched. The result feeds
/// [`crate::triplet_margin_loss`] directly.
///
/// The rule of each [`TripletType`] is in [`triplet_mine_count`] (pytorch-metric-learning's
/// `TripletMarginMiner`: per-triplet thresholds, not [`crate::mine_triplets`]'s one
/// negative per pair).
///
/// **Cap.** With `max_triplets = Some(c)` and `k > c` qualifying triplets, exactly `c` are
/// kept, still in ascending order: selection sampling (Knuth's Algorithm S) over the `k`
/// triplets in their order, the `t`-th kept with probability `(c - kept) / (k - t)` drawn
/// from a SplitMix64 stream seeded with `seed`. Every `c`-subset is about equally likely
/// (a bias below `2^-64` per draw); the subset depends only on `seed`, `k`, `c` and the
/// list of qualifying triplets, so the same inputs give the same subset on every machine,
/// and the twin, given the same list, keeps the same subset. No allocation: the count is
/// taken first (one sweep), then the triplets are drawn (a second sweep).
///
/// **Memory.** The distance rows are computed in blocks of up to 256 anchors: no
/// `n x n` matrix, no per-triplet mask; the output is exactly the mined set. When `out`
/// holds fewer elements than the batch has candidate triplets, or a cap may apply, the
/// count is taken first so that nothing is written on error: two sweeps instead of one.
///
/// Scalar twin: [`crate::scalar::triplet_mine`]. `workspace` needs
/// [`triplet_mine_workspace_len`]`(rows, dim)` elements, garbage before and after.
///
/// # Errors
///
/// Those of [`triplet_mine_count`], in its order, then [`Error::LengthMismatch`]
/// (`"out"`, `expected` = the number of triplets to write) when `out` is shorter.
///
/// # Numerics
///
/// As [`triplet_mine_count`].
///
/// # Example
///
/// ```
/// use triplet_kernels::{triplet_mine, triplet_mine_workspace_len, triplet_margin_loss};
/// use triplet_kernels::{triplet_margin_loss_workspace_len, Matrix, Metric, Triplet};
/// use triplet_kernels::{TripletMinerParams, TripletParams, TripletType};
/// let x = Matrix::new(&[0.0, 1.0, 1.5, 4.0], 4, 1)?;
/// let labels = [0, 0, 1, 1];
/// let mut ws = [0.0_f32; triplet_mine_workspace_len(4, 1)];
/// let mut out = [Triplet::default(); 8];
/// let params = TripletMinerParams::new(1.0, TripletType::SemiHard);
/// let k = triplet_mine(x, &labels, Metric::Euclidean, params, &mut out, &mut ws)?;
/// assert_eq!(out[..k], [Triplet::new(0, 1, 2), Triplet::new(3, 2, 1)]);
/// // With a cap of one, one of the two, chosen by the seed.
/// let k = triplet_mine(x, &labels, Metric::Euclidean, params.with_cap(1, 7), &mut out, &mut ws)?;
/// assert_eq!(k, 1);
/// // The mined triplets feed the explicit-triplet loss.
/// let tp = TripletParams::new().with_metric(Metric::Euclidean).with_margin(1.0);
/// let mut tws = [0.0_f32; triplet_margin_loss_workspace_len(4, 1)];
/// let loss = triplet_margin_loss(x, &out[..k], tp, &mut [0.0; 1], &mut tws)?;
/// assert_eq!(loss, 0.5);
/// # Ok::<(), triplet_kernels::Error>(())
/// ```
#[cfg_attr(feature = "no-panic", no_panic::no_panic)]
pub fn triplet_mine(
    x: Matrix<'_>,
    labels: &[u32],
    metric: Metric,
    params: TripletMinerParams,
    out: &mut [Triplet],
    workspace: &mut [f32],
) -> Result<usize, Error> {
    check_triplet_mine(&x, labels, &params, workspace.len())?;
    let backend = Backend::active();
    let window = params.triplet_type.window(params.margin);
    let bound = candidate_bound(labels);
    let cap = params.max_triplets.unwrap_or(usize::MAX);
    let mut sampler = None;
    if out.len() < bound || cap < bound {
        let mut c = Count(0);
        sweep_triplets(backend, &x, labels, metric, window, workspace, &mut c)?;
        let want = c.0.min(cap);
        if out.len() < want {
            return Err(Error::LengthMismatch {
                buffer: "out",
                expected: want,
                actual: out.len(),
            });
        }
        if c.0 > cap {
            sampler = Some(Sampler::new(params.seed, c.0, cap));
        }
    }
    let mut w = Write { out, k: 0, sampler };
    sweep_triplets(backend, &x, labels, metric, window, workspace, &mut w)?;
    Ok(w.k)
}
