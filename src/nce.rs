//! InfoNCE-family losses over cosine similarities, with gradients: NT-Xent / InfoNCE
//! (Chen et al. 2020; van den Oord et al. 2018) within one labelled batch or of queries
//! against documents (text retrieval with in-batch negatives), and the supervised
//! contrastive loss SupCon (Khosla et al. 2020, the `L_out` form).
//!
//! With `s_ij` the cosine similarity of rows `i` and `j` (each row divided by
//! `max(|row|, 1e-12)`), temperature `T` and `z_ij = s_ij / T`:
//!
//! ```text
//! NT-Xent, every positive pair (a, p):
//!     l_ap = -ln( e^{z_ap} / (e^{z_ap} + sum_{n in N_a} e^{z_an}) )
//!          = softplus( LSE_{n in N_a} z_an - z_ap )             (0 when N_a is empty)
//!     loss = (1 / #positive pairs) sum_{(a, p)} l_ap
//! SupCon, every row i with P_i its positives and A_i all other rows:
//!     l_i  = LSE_{a in A_i} z_ia - (1 / |P_i|) sum_{p in P_i} z_ip   (0 when P_i is empty)
//!     loss = mean of l_i over the rows with l_i > 0 (pml), or over all rows (textbook)
//! ```
//!
//! as pytorch-metric-learning's `NTXentLoss` and `SupConLoss` compute them. Pairs: in one
//! batch ([`ntxent_loss`], [`supcon_loss`]) every ordered pair `(i, j)` of rows, `i != j`;
//! equal labels make a positive pair, different labels a negative pair (an anchor's other
//! positives are not in its NT-Xent denominator). In the reference form
//! ([`infonce_loss`]) every pair of a query (a row of `x`) and a document (a row of `y`),
//! none excluded: with `labels[i] = y_labels[i]` all distinct, document `i` is query `i`'s
//! positive and every other document a negative; extra hard-negative documents are extra
//! rows of `y` with labels no query has.
//!
//! # The reference library's rules
//!
//! - NT-Xent: the loss is 0 (zero gradient) when there is no positive pair or no negative
//!   pair, and, with [`NtXentParams::small_batch_zero`] (pml's behaviour, on in
//!   [`NtXentParams::pytorch_metric_learning`]), also when the batch holds at most one
//!   positive pair and at most one negative pair: pml then returns 0 where the formula
//!   gives `ln(1 + e^{z_n - z_p})`. That is arguably a defect, so
//!   [`NtXentParams::textbook`] turns it off (as does the sentence-transformers preset,
//!   whose cross-entropy has no such rule). A positive pair whose anchor has no negative
//!   has `l_ap = 0` and still counts in the mean.
//! - SupCon ([`SupConReduction::MeanNonzero`], pml): the mean runs over the rows with
//!   `l_i > 0` (pml's `AvgNonZeroReducer`), and the loss is 0 when the batch has no
//!   positive pair or no negative pair (a one-class batch gives 0, not `ln(n - 1)`). In
//!   exact arithmetic `l_i = 0` only for a row without positives or whose only other row
//!   is a positive, and `l_i > 0` for every other row (the log-sum-exp of two or more
//!   terms exceeds their largest, which is at least the positives' mean); a batch that
//!   escapes the batch-level rule has three rows or more, so the rows averaged are
//!   exactly the rows with a positive. This crate counts them so, in the kernel and the
//!   twin alike, and clamps a computed `l_i` that rounds below 0 to 0. pml decides on its
//!   `f32` value instead: a row whose positive is far nearer than every other row (at
//!   `T = 0.07`, cosines 1 and -1 give `l_i = ln(1 + e^{-28.6})`, about `4e-13`) rounds
//!   to `l_i = 0` and drops out of pml's mean, which then changes with the rounding; the
//!   conformance vectors keep every such `l_i` above `1e-3`, where both agree.
//!   [`SupConReduction::Mean`] is the paper authors' reference form instead: the mean
//!   over all rows, rows without positives contributing 0, no batch-level rule.
//!
//! # Algorithm and memory
//!
//! The rows are normalised once into the workspace; the queries go in blocks of up to
//! 128. Each block's similarities against every document come from the packed
//! register-blocked microkernel of [`crate::cross_distances`] (negated inner products of
//! the normalised rows); each row's log-sum-exp is then taken over that block row with
//! its largest term subtracted (a streaming max and a sum of `e^{z - max}` in
//! vectorised lanes), its loss terms added up in `f64`, and, for the gradient, the
//! block's similarities overwritten by `d loss / d s_ij` (up to the final `1 / count`):
//! `(1/T)(e^{z_ij - L_i} - [j in P_i] / |P_i|)` for SupCon, `-(1/T) sigmoid(L^N_i - z_ip)`
//! for a positive and `(1/T) e^{z_in - L^N_i} sum_p sigmoid(L^N_i - z_ip)` for a negative
//! for NT-Xent (`L^N_i` the log-sum-exp over `N_i`). Two register-blocked products of the
//! block then add `G Y^` to the queries' and `G^T X^` to the documents' gradient (in one
//! batch the block's own square part is symmetrised first, so one product covers both
//! sides of each pair). Every similarity is computed once and every product once: three
//! `n m d` products in all, as the dense formulation, but **never the `n x m` matrix**:
//! the workspace holds the normalised rows and their gradients, one `128 x m` block of
//! similarities and the packed panels, so it grows like `(n + m) d`; see
//! [`infonce_loss_workspace_len`] and [`ntxent_loss_workspace_len`]. The count that the
//! mean divides by (positive pairs, active rows) is only known at the end: the gradient
//! is accumulated unscaled and scaled once, before the normalisations' backward.
//!
//! SupCon uses the symmetry of one batch instead, as attention kernels do their online
//! softmax: a first pass computes only the tiles on and above the diagonal (block `k`'s
//! rows against the columns from its first row on) and feeds each tile to both sides'
//! per-row statistics (a running maximum, the sum of `e^{z - max}` rescaled whenever the
//! maximum grows, the positives' sum of `z`), which gives every row's `L_i`, loss and
//! activity; a second pass recomputes the same tiles, turns each into both rows'
//! coefficients `d loss / d s_ij` at once, and applies them by the two products. That is
//! `n^2 d / 2` multiply-adds for the loss and `2 n^2 d` with the gradient (against
//! `3 n^2 d` for the dense formulation), with four per-row statistics more in the
//! workspace.

use crate::distance::{
    cross_distances_rows_workspace_len, cross_tile_on, gemm_acc, l2_normalize_backward_on,
    l2_normalize_on, symmetrise, DistanceMode, Metric, GEMM_MR,
};
use crate::error::Error;
use crate::math;
use crate::matrix::Matrix;
use crate::simd::{Backend, Kernel, Simd};
use crate::validate::{check_finite, check_labels, check_len, check_workspace};
use crate::workspace::{max_len, min_len, Carve};

/// Query rows per block.
const ROW_BLOCK: usize = 128;
/// Lanes of the per-row sums (independent accumulators, so the sweeps vectorise).
const CHUNK: usize = 16;

/// Parameters of [`ntxent_loss`] and [`infonce_loss`].
#[derive(Clone, Copy, Debug, PartialEq)]
#[non_exhaustive]
pub struct NtXentParams {
    /// Temperature `T`: finite, `> 0`, with a finite `1 / T`.
    pub temperature: f32,
    /// pytorch-metric-learning's rule: the loss is 0 when the batch holds at most one
    /// positive pair and at most one negative pair (see the [module docs](self)).
    pub small_batch_zero: bool,
}

impl NtXentParams {
    /// pytorch-metric-learning's `NTXentLoss` default: temperature 0.07, with its
    /// small-batch rule.
    pub const fn pytorch_metric_learning() -> Self {
        NtXentParams {
            temperature: 0.07,
            small_batch_zero: true,
        }
    }

    /// sentence-transformers' `MultipleNegativesRankingLoss` default: cosine similarities
    /// times scale 20 (temperature 0.05), no small-batch rule. With distinct labels,
    /// `labels[i] = y_labels[i]`, [`infonce_loss`] is its cross-entropy over the
    /// documents.
    pub const fn sentence_transformers() -> Self {
        NtXentParams {
            temperature: 0.05,
            small_batch_zero: false,
        }
    }

    /// pml's form (small-batch rule on) with the given temperature.
    pub const fn new(temperature: f32) -> Self {
        NtXentParams {
            temperature,
            small_batch_zero: true,
        }
    }

    /// The same parameters with another temperature.
    #[must_use]
    pub const fn with_temperature(mut self, temperature: f32) -> Self {
        self.temperature = temperature;
        self
    }

    /// The same parameters with temperature `1 / scale` (the logit scale of
    /// sentence-transformers).
    #[must_use]
    pub const fn with_scale(mut self, scale: f32) -> Self {
        self.temperature = 1.0 / scale;
        self
    }

    /// The same parameters without the small-batch rule: the formula for every batch.
    #[must_use]
    pub const fn textbook(mut self) -> Self {
        self.small_batch_zero = false;
        self
    }
}

impl Default for NtXentParams {
    /// [`NtXentParams::pytorch_metric_learning`].
    fn default() -> Self {
        Self::pytorch_metric_learning()
    }
}

/// Which rows SupCon's mean runs over.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum SupConReduction {
    /// pytorch-metric-learning: the rows with `l_i > 0`, which in exact arithmetic are the
    /// rows with a positive (see the [module docs](self)); loss 0 when the batch has no
    /// positive pair or no negative pair.
    #[default]
    MeanNonzero,
    /// The paper authors' reference form: all rows (rows without positives add 0), no
    /// batch-level rule.
    Mean,
}

/// Parameters of [`supcon_loss`].
#[derive(Clone, Copy, Debug, PartialEq)]
#[non_exhaustive]
pub struct SupConParams {
    /// Temperature `T`: finite, `> 0`, with a finite `1 / T`.
    pub temperature: f32,
    /// The rows averaged.
    pub reduction: SupConReduction,
}

impl SupConParams {
    /// pytorch-metric-learning's `SupConLoss` default: temperature 0.1, mean over the
    /// rows with a nonzero loss.
    pub const fn pytorch_metric_learning() -> Self {
        Self::new(0.1)
    }

    /// pml's form with the given temperature.
    pub const fn new(temperature: f32) -> Self {
        SupConParams {
            temperature,
            reduction: SupConReduction::MeanNonzero,
        }
    }

    /// The same parameters with another temperature.
    #[must_use]
    pub const fn with_temperature(mut self, temperature: f32) -> Self {
        self.temperature = temperature;
        self
    }

    /// The same parameters with another reduction.
    #[must_use]
    pub const fn with_reduction(mut self, reduction: SupConReduction) -> Self {
        self.reduction = reduction;
        self
    }

    /// The same parameters with the reference form's reduction ([`SupConReduction::Mean`]).
    #[must_use]
    pub const fn textbook(self) -> Self {
        self.with_reduction(SupConReduction::Mean)
    }
}

impl Default for SupConParams {
    /// [`SupConParams::pytorch_metric_learning`].
    fn default() -> Self {
        Self::pytorch_metric_learning()
    }
}

/// The result of an NT-Xent, InfoNCE or SupCon kernel.
#[derive(Clone, Copy, Debug, PartialEq)]
#[non_exhaustive]
pub struct NceLoss {
    /// The reduced loss.
    pub loss: f32,
    /// The count the mean divided by: positive pairs (NT-Xent, InfoNCE), rows averaged
    /// (SupCon). 0 when a rule made the loss 0.
    pub num_terms: usize,
}

/// Workspace elements that [`ntxent_loss`], [`ntxent_loss_grad`], [`supcon_loss`] and
/// [`supcon_loss_grad`] need for `rows` embeddings of dimension `dim`: with
/// `b = min(rows, 128)`, `2 rows dim + b rows + 9 rows +`
/// [`crate::cross_distances_rows_workspace_len`]`(b, rows, dim)` (the normalised rows and
/// their gradient, one block of similarities, packed coefficients, one row's mask, four
/// per-row statistics and the packed panels; about `(3 rows + 224)(dim + 1) + 137 rows`
/// for `rows >= 128`): linear in `rows dim`, never `rows^2`. Saturates instead of
/// overflowing.
pub const fn ntxent_loss_workspace_len(rows: usize, dim: usize) -> usize {
    let b = min_len(rows, ROW_BLOCK);
    rows.saturating_mul(dim)
        .saturating_mul(2)
        .saturating_add(b.saturating_mul(rows))
        .saturating_add(max_len(rows, b).saturating_mul(GEMM_MR))
        .saturating_add(rows.saturating_mul(5))
        .saturating_add(cross_distances_rows_workspace_len(b, rows, dim))
}

/// Workspace elements of the SupCon kernels: as [`ntxent_loss_workspace_len`].
pub const fn supcon_loss_workspace_len(rows: usize, dim: usize) -> usize {
    ntxent_loss_workspace_len(rows, dim)
}

/// Workspace elements that [`infonce_loss`] and [`infonce_loss_grad`] need for `rows`
/// queries against `docs` documents of dimension `dim`: with `b = min(rows, 128)`,
/// `2 (rows + docs) dim + b docs + 4 max(docs, b) + docs +`
/// [`crate::cross_distances_rows_workspace_len`]`(b, docs, dim)` (normalised queries,
/// documents and both gradients, one block of similarities, packed coefficients, one
/// row's mask and the packed panels): linear in `(rows + docs) dim`, never `rows x docs`. Saturates instead
/// of overflowing.
pub const fn infonce_loss_workspace_len(rows: usize, docs: usize, dim: usize) -> usize {
    let b = min_len(rows, ROW_BLOCK);
    rows.saturating_add(docs)
        .saturating_mul(dim)
        .saturating_mul(2)
        .saturating_add(b.saturating_mul(docs))
        .saturating_add(max_len(docs, b).saturating_mul(GEMM_MR))
        .saturating_add(docs)
        .saturating_add(cross_distances_rows_workspace_len(b, docs, dim))
}

/// Which loss, with its validated parameters.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Loss {
    NtXent { inv_t: f32, small_batch_zero: bool },
    SupCon { inv_t: f32, nonzero: bool },
}

fn inverse_temperature(t: f32) -> Result<f32, Error> {
    let inv = 1.0 / t;
    if t.is_finite() && t > 0.0 && inv.is_finite() {
        Ok(inv)
    } else {
        Err(Error::InvalidParameter {
            name: "temperature",
            expected: "finite and > 0, with a finite inverse",
        })
    }
}

impl NtXentParams {
    pub(crate) fn validate(self) -> Result<Loss, Error> {
        Ok(Loss::NtXent {
            inv_t: inverse_temperature(self.temperature)?,
            small_batch_zero: self.small_batch_zero,
        })
    }
}

impl SupConParams {
    pub(crate) fn validate(self) -> Result<Loss, Error> {
        Ok(Loss::SupCon {
            inv_t: inverse_temperature(self.temperature)?,
            nonzero: self.reduction == SupConReduction::MeanNonzero,
        })
    }
}

/// The documents side of the reference form: rows, labels and the gradient's length.
pub(crate) struct Docs<'a> {
    pub y: Matrix<'a>,
    pub labels: &'a [u32],
}

/// All argument checks of the three families, in the documented order; returns the loss.
/// `grads`: the lengths of `grad` and (reference form) `grad_y`.
pub(crate) fn check_nce(
    x: &Matrix<'_>,
    labels: &[u32],
    docs: Option<&Docs<'_>>,
    loss: Result<Loss, Error>,
    grads: Option<(usize, usize)>,
    workspace_required: usize,
    workspace: usize,
) -> Result<Loss, Error> {
    if let Some(docs) = docs {
        if x.dim() != docs.y.dim() {
            return Err(Error::DimensionMismatch {
                left: x.dim(),
                right: docs.y.dim(),
            });
        }
    }
    check_labels(x, labels)?;
    if let Some(docs) = docs {
        check_len("y_labels", docs.y.rows(), docs.labels.len())?;
    }
    if let Some((g, gy)) = grads {
        check_len("grad", x.len(), g)?;
        if let Some(docs) = docs {
            check_len("grad_y", docs.y.len(), gy)?;
        }
    }
    check_workspace(workspace_required, workspace)?;
    let loss = loss?;
    check_finite("x", x.as_slice(), x.dim())?;
    if let Some(docs) = docs {
        check_finite("y", docs.y.as_slice(), docs.y.dim())?;
    }
    Ok(loss)
}

/// The batch-level outcome: the loss and its count, or 0 by a rule.
pub(crate) fn finish_counts(loss: Loss, sum: f64, stats: &Counts) -> (f64, usize) {
    let zero = match loss {
        Loss::NtXent {
            small_batch_zero, ..
        } => {
            stats.pos_pairs == 0
                || stats.neg_pairs == 0
                || (small_batch_zero && stats.pos_pairs <= 1 && stats.neg_pairs <= 1)
        }
        Loss::SupCon { nonzero, .. } => {
            nonzero && (stats.pos_pairs == 0 || stats.neg_pairs == 0) || stats.terms == 0
        }
    };
    if zero {
        (0.0, 0)
    } else {
        (sum / stats.terms as f64, stats.terms)
    }
}

/// Pair and term counts of a batch.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Counts {
    pub pos_pairs: usize,
    pub neg_pairs: usize,
    /// Loss terms averaged: positive pairs (NT-Xent), active rows (SupCon).
    pub terms: usize,
}

impl Counts {
    fn add(&mut self, o: Counts) {
        self.pos_pairs = self.pos_pairs.saturating_add(o.pos_pairs);
        self.neg_pairs = self.neg_pairs.saturating_add(o.neg_pairs);
        self.terms = self.terms.saturating_add(o.terms);
    }
}

/// Sum of the lanes.
#[inline(always)]
fn lanes_sum(v: &[f32; CHUNK]) -> f32 {
    v.iter().fold(0.0, |a, &b| a + b)
}

/// Row `r` of a row-major buffer with rows of `w` (empty out of range): indexing
/// instead of `chunks_exact(w)`, whose constructor divides by `w` (a panic path where
/// the optimiser keeps it out of line and cannot see `w > 0`).
#[inline(always)]
fn row_mut(buf: &mut [f32], r: usize, w: usize) -> &mut [f32] {
    let start = r.saturating_mul(w);
    buf.get_mut(start..start.saturating_add(w))
        .unwrap_or_default()
}

/// As [`row_mut`], shared.
#[inline(always)]
fn row_ref(buf: &[f32], r: usize, w: usize) -> &[f32] {
    let start = r.saturating_mul(w);
    buf.get(start..start.saturating_add(w)).unwrap_or_default()
}

/// `e^{z + b - m}` with the excluded entries (`b = -inf`) exactly 0.
#[inline(always)]
fn masked_exp(z: f32, b: f32, m: f32) -> f32 {
    let e = math::exp_poly(z + b - m);
    if b == 0.0 {
        e
    } else {
        0.0
    }
}

/// The largest of the lanes.
#[inline(always)]
fn lanes_max(v: &[f32; CHUNK]) -> f32 {
    v.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b))
}

/// `row = z = -row * inv_t` and the largest `z + bias` (the excluded entries have
/// `bias = -inf`); lane-parallel, so it vectorises.
#[inline(always)]
fn scale_and_max(row: &mut [f32], bias: &[f32], neg_inv_t: f32) -> f32 {
    let mut mx = [f32::NEG_INFINITY; CHUNK];
    for (chunk, bch) in row.chunks_mut(CHUNK).zip(bias.chunks(CHUNK)) {
        for ((v, &b), m) in chunk.iter_mut().zip(bch).zip(mx.iter_mut()) {
            let z = *v * neg_inv_t;
            *v = z;
            *m = m.max(z + b);
        }
    }
    lanes_max(&mx)
}

/// Sum of `e^{z + bias - m}` over the row; each included entry's exponential replaces
/// its `z` when `store`.
#[inline(always)]
fn exp_sum(row: &mut [f32], bias: &[f32], m: f32, store: bool) -> f32 {
    let mut sums = [0.0_f32; CHUNK];
    for (chunk, bch) in row.chunks_mut(CHUNK).zip(bias.chunks(CHUNK)) {
        for ((v, &b), acc) in chunk.iter_mut().zip(bch).zip(sums.iter_mut()) {
            let e = masked_exp(*v, b, m);
            *acc += e;
            if store && b == 0.0 {
                *v = e;
            }
        }
    }
    lanes_sum(&sums)
}

/// One NT-Xent row: `row` holds `-s_ij` on entry and `d loss / d s_ij` (unscaled by the
/// count) on exit when `grad`; `own` is the row's own column in one batch; `bias` is
/// scratch of the row's length. Returns the row's loss sum and counts.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn ntxent_row(
    row: &mut [f32],
    bias: &mut [f32],
    ly: &[u32],
    li: u32,
    own: Option<usize>,
    inv_t: f32,
    grad: bool,
) -> (f64, Counts) {
    // 0 for the negatives, -inf for the rest.
    let mut nneg = 0_usize;
    for (b, &l) in bias.iter_mut().zip(ly) {
        let neg = l != li;
        *b = if neg { 0.0 } else { f32::NEG_INFINITY };
        nneg += usize::from(neg);
    }
    let npos = ly.len().saturating_sub(nneg + usize::from(own.is_some()));
    let counts = Counts {
        pos_pairs: npos,
        neg_pairs: nneg,
        terms: npos,
    };
    if npos == 0 || nneg == 0 {
        // No positive: no term; no negative: every term is exactly 0.
        if grad {
            row.fill(0.0);
        }
        return (0.0, counts);
    }
    let own = own.unwrap_or(usize::MAX);
    let m = scale_and_max(row, bias, -inv_t);
    let sn = exp_sum(row, bias, m, grad);
    let ln_n = m + math::ln(sn);
    // The positives: softplus(L^N - z) each; d/dz = -sigmoid(L^N - z).
    let mut total = 0.0_f64;
    let mut r = 0.0_f32;
    let mut left = npos;
    for (j, (v, &l)) in row.iter_mut().zip(ly).enumerate() {
        if l == li && j != own {
            let u = ln_n - *v;
            total += f64::from(math::softplus(u));
            let sg = math::sigmoid(u);
            r += sg;
            *v = -sg * inv_t;
            left = left.saturating_sub(1);
            if left == 0 {
                break;
            }
        }
    }
    if grad {
        let w = r * inv_t / sn;
        for (v, &b) in row.iter_mut().zip(bias.iter()) {
            *v = if b == 0.0 { *v * w } else { *v };
        }
        if let Some(v) = row.get_mut(own) {
            *v = 0.0;
        }
    }
    (total, counts)
}

/// Gradient side of a block: the normalised rows and gradients it reads and adds to.
struct GradSide<'a> {
    /// Normalised documents (the rows themselves in one batch), `m x d`.
    yn: &'a [f32],
    /// The block's normalised queries, `rb x d`.
    xb: &'a [f32],
    /// In one batch: the whole gradient `n x d` (the block's rows are `r0..r0 + rb`).
    /// In the reference form: the block's query gradient, `rb x d`.
    gx: &'a mut [f32],
    /// Reference form: the documents' gradient, `m x d`.
    gy: Option<&'a mut [f32]>,
    cpack: &'a mut [f32],
    d: usize,
}

/// One block of rows through its loss and, with `grad`, its gradient products.
struct RowBlock<'a, 'b> {
    tile: &'a mut [f32],
    /// Scratch of `m` elements.
    bias: &'a mut [f32],
    lx: &'a [u32],
    ly: &'a [u32],
    r0: usize,
    /// One batch (own column excluded, symmetric products).
    pairwise: bool,
    loss: Loss,
    grad: Option<GradSide<'b>>,
}

impl Kernel for RowBlock<'_, '_> {
    type Output = (f64, Counts);
    #[inline(always)]
    fn run<S: Simd, const MR: usize, const NV: usize>(self, s: S) -> (f64, Counts) {
        let RowBlock {
            tile,
            bias,
            lx,
            ly,
            r0,
            pairwise,
            loss,
            grad,
        } = self;
        let m = ly.len();
        let mut total = 0.0_f64;
        let mut counts = Counts::default();
        if m == 0 {
            return (total, counts);
        }
        let want = grad.is_some();
        let bias = bias.get_mut(..m).unwrap_or_default();
        for (r, &li) in lx.iter().enumerate() {
            let row = row_mut(tile, r, m);
            let own = r0 + r;
            let (t, c) = match loss {
                Loss::NtXent { inv_t, .. } => {
                    ntxent_row(row, bias, ly, li, pairwise.then_some(own), inv_t, want)
                }
                // SupCon takes its own two passes ([`supcon`]).
                Loss::SupCon { .. } => (0.0, Counts::default()),
            };
            total += t;
            counts.add(c);
        }
        let Some(g) = grad else {
            return (total, counts);
        };
        let d = g.d;
        let rb = lx.len();
        if pairwise {
            let r1 = r0 + rb;
            // The block's own columns: both coefficients of a pair summed, applied once.
            symmetrise(s, tile, m, r0, rb);
            let tile = &*tile;
            let Some((head, rest)) = g.gx.split_at_mut_checked(r0 * d) else {
                return (total, counts);
            };
            let Some((gb, tail)) = rest.split_at_mut_checked(rb * d) else {
                return (total, counts);
            };
            gemm_acc(s, tile, m, 1, g.yn, d, gb, g.cpack);
            gemm_acc(s, tile, 1, m, g.xb, d, head, g.cpack);
            gemm_acc(
                s,
                tile.get(r1..).unwrap_or(&[]),
                1,
                m,
                g.xb,
                d,
                tail,
                g.cpack,
            );
        } else {
            gemm_acc(s, tile, m, 1, g.yn, d, g.gx, g.cpack);
            if let Some(gy) = g.gy {
                gemm_acc(s, tile, 1, m, g.xb, d, gy, g.cpack);
            }
        }
        (total, counts)
    }
}

/// Output gradient buffers.
struct Grads<'g> {
    x: &'g mut [f32],
    y: Option<&'g mut [f32]>,
}

/// The shared forward (and backward with `grads`) of all three families; arguments
/// already checked. `docs`: the reference form's documents.
fn nce(
    backend: Backend,
    x: &Matrix<'_>,
    labels: &[u32],
    docs: Option<&Docs<'_>>,
    loss: Loss,
    grads: Option<Grads<'_>>,
    workspace: &mut [f32],
) -> Result<NceLoss, Error> {
    let (n, d) = (x.rows(), x.dim());
    let (m, ly) = match docs {
        Some(dc) => (dc.y.rows(), dc.labels),
        None => (n, labels),
    };
    let b = min_len(n, ROW_BLOCK);
    let mut ws = Carve::new(workspace);
    let xn = ws.take(x.len())?;
    let gxn = ws.take(x.len())?;
    let (mut yn, gyn) = match docs {
        Some(dc) => (Some(ws.take(dc.y.len())?), Some(ws.take(dc.y.len())?)),
        None => (None, None),
    };
    let tile = ws.take(b * m)?;
    let cpack = ws.take(max_len(m, b) * GEMM_MR)?;
    let bias = ws.take(m)?;
    let pack = ws.rest();
    l2_normalize_on(backend, *x, xn)?;
    if let (Some(dc), Some(yn)) = (docs, yn.as_deref_mut()) {
        l2_normalize_on(backend, dc.y, yn)?;
    }
    let xn = &*xn;
    let xm = Matrix::new(xn, n, d)?;
    let yn: &[f32] = match yn {
        Some(yn) => yn,
        None => xn,
    };
    let ym = Matrix::new(yn, m, d)?;
    let want = grads.is_some();
    let mut gyn = gyn;
    if want {
        gxn.fill(0.0);
        if let Some(g) = gyn.as_deref_mut() {
            g.fill(0.0);
        }
    }
    let pairwise = docs.is_none();
    let mut total = 0.0_f64;
    let mut counts = Counts::default();
    let mut r0 = 0;
    while r0 < n {
        let r1 = min_len(r0 + b, n);
        let rb = r1 - r0;
        let tile = tile.get_mut(..rb * m).unwrap_or_default();
        cross_tile_on(
            backend,
            xm,
            r0..r1,
            ym,
            Metric::SquaredEuclidean,
            DistanceMode::Gram,
            true,
            tile,
            pack,
        );
        let xb = xn.get(r0 * d..r1 * d).unwrap_or_default();
        let grad = if want {
            let gx = if pairwise {
                &mut *gxn
            } else {
                gxn.get_mut(r0 * d..r1 * d).unwrap_or_default()
            };
            Some(GradSide {
                yn,
                xb,
                gx,
                gy: gyn.as_deref_mut(),
                cpack: &mut *cpack,
                d,
            })
        } else {
            None
        };
        let (t, c) = backend.dispatch(RowBlock {
            tile,
            bias: &mut *bias,
            lx: labels.get(r0..r1).unwrap_or_default(),
            ly,
            r0,
            pairwise,
            loss,
            grad,
        });
        total += t;
        counts.add(c);
        r0 = r1;
    }
    let (value, terms) = finish_counts(loss, total, &counts);
    if let Some(g) = grads {
        let k = if terms == 0 { 0.0 } else { 1.0 / terms as f32 };
        for v in gxn.iter_mut() {
            *v *= k;
        }
        l2_normalize_backward_on(backend, *x, gxn, g.x)?;
        if let (Some(dc), Some(gyn), Some(gy)) = (docs, gyn, g.y) {
            for v in gyn.iter_mut() {
                *v *= k;
            }
            l2_normalize_backward_on(backend, dc.y, gyn, gy)?;
        }
    }
    Ok(NceLoss {
        loss: value as f32,
        num_terms: terms,
    })
}

// ---------------------------------------------------------------------------------------
// SupCon over one batch: the upper triangle of tiles, twice.

/// SupCon's per-row statistics, `n` elements each. During the first pass: the largest
/// `z` so far, `sum e^{z - max}`, the positives' sum of `z` and their count; after it:
/// `L_i`, the row's weight (1 when its loss is averaged, else 0) and `1 / |P_i|`.
struct RowStats<'a> {
    mx: &'a mut [f32],
    sum: &'a mut [f32],
    zp: &'a mut [f32],
    np: &'a mut [f32],
}

/// First pass over the block of rows `r0..r0 + rb` against the columns `r0..n` (a tile
/// of `rb x w`, `w = n - r0`, holding `-s`): each of the block's rows takes every column
/// but its own, each column past the block takes the block's rows (its pairs with the
/// earlier rows), both through an online log-sum-exp (a running maximum, and the sum
/// rescaled when the maximum grows). After the block its rows are complete.
struct SupConStats<'a> {
    tile: &'a mut [f32],
    labels: &'a [u32],
    r0: usize,
    rb: usize,
    inv_t: f32,
    stats: RowStats<'a>,
    /// Scratch of `n` elements.
    tmp: &'a mut [f32],
}

/// `sum * e^{old - new}`, 0 while nothing was added (`old = -inf`).
#[inline(always)]
fn rescaled(sum: f32, old: f32, new: f32) -> f32 {
    if old == f32::NEG_INFINITY {
        0.0
    } else {
        sum * math::exp_poly(old - new)
    }
}

impl Kernel for SupConStats<'_> {
    type Output = ();
    #[inline(always)]
    fn run<S: Simd, const MR: usize, const NV: usize>(self, _: S) {
        let SupConStats {
            tile,
            labels,
            r0,
            rb,
            inv_t,
            stats,
            tmp,
        } = self;
        let n = labels.len();
        let w = n.saturating_sub(r0);
        if w == 0 {
            return;
        }
        let cols = labels.get(r0..).unwrap_or_default();
        let neg_inv_t = -inv_t;
        let RowStats { mx, sum, zp, np } = stats;
        // The block's rows.
        for r in 0..rb {
            let row = row_mut(tile, r, w);
            let i = r0 + r;
            let Some(&li) = labels.get(i) else {
                break;
            };
            if let Some(v) = row.get_mut(r) {
                *v = f32::INFINITY; // its own column: z = -inf, in no sum
            }
            let mut lm = [f32::NEG_INFINITY; CHUNK];
            let (mut lz, mut lp) = ([0.0_f32; CHUNK], [0.0_f32; CHUNK]);
            for (chunk, lch) in row.chunks_mut(CHUNK).zip(cols.chunks(CHUNK)) {
                let lanes = lm.iter_mut().zip(lz.iter_mut().zip(lp.iter_mut()));
                for ((v, &l), (m, (p, q))) in chunk.iter_mut().zip(lch).zip(lanes) {
                    let z = *v * neg_inv_t;
                    *v = z;
                    let pos = l == li && z != f32::NEG_INFINITY;
                    *m = m.max(z);
                    *p += if pos { z } else { 0.0 };
                    *q += if pos { 1.0 } else { 0.0 };
                }
            }
            let bmax = lanes_max(&lm);
            let (Some(m), Some(s), Some(p), Some(q)) =
                (mx.get_mut(i), sum.get_mut(i), zp.get_mut(i), np.get_mut(i))
            else {
                break;
            };
            *p += lanes_sum(&lz);
            *q += lanes_sum(&lp);
            if bmax == f32::NEG_INFINITY {
                continue;
            }
            let new = m.max(bmax);
            let mut ls = [0.0_f32; CHUNK];
            for chunk in row.chunks(CHUNK) {
                for (&z, a) in chunk.iter().zip(ls.iter_mut()) {
                    let e = math::exp_poly(z - new);
                    *a += if z == f32::NEG_INFINITY { 0.0 } else { e };
                }
            }
            *s = rescaled(*s, *m, new) + lanes_sum(&ls);
            *m = new;
        }
        // The columns past the block: new maxima, rescaled sums, then the block's terms.
        let r1 = r0 + rb;
        let (Some(cm), Some(om), Some(os), Some(oz), Some(oq), Some(cl)) = (
            tmp.get_mut(r1..n),
            mx.get_mut(r1..n),
            sum.get_mut(r1..n),
            zp.get_mut(r1..n),
            np.get_mut(r1..n),
            labels.get(r1..n),
        ) else {
            return;
        };
        for (c, &m) in cm.iter_mut().zip(om.iter()) {
            *c = m;
        }
        for r in 0..rb {
            let part = row_ref(tile, r, w).get(rb..).unwrap_or_default();
            for (c, &z) in cm.iter_mut().zip(part) {
                *c = c.max(z);
            }
        }
        for ((s, m), &c) in os.iter_mut().zip(om.iter_mut()).zip(cm.iter()) {
            *s = rescaled(*s, *m, c);
            *m = c;
        }
        for (r, &lr) in labels.get(r0..r1).unwrap_or_default().iter().enumerate() {
            let part = row_ref(tile, r, w).get(rb..).unwrap_or_default();
            let lanes = os.iter_mut().zip(oz.iter_mut().zip(oq.iter_mut()));
            for (((&z, &m), &l), (s, (p, q))) in part.iter().zip(om.iter()).zip(cl).zip(lanes) {
                *s += math::exp_poly(z - m);
                let pos = l == lr;
                *p += if pos { z } else { 0.0 };
                *q += if pos { 1.0 } else { 0.0 };
            }
        }
    }
}

/// Second pass over a block (the tile recomputed, `-s` again): `d loss / d s_ij` of both
/// rows of each pair, `(1/T)(w_i (e^{z - L_i} - [pos] / |P_i|) + w_j (...))` (unscaled by
/// the count), the block's own square part one-sided and then symmetrised; then the two
/// products of [`RowBlock`] over the upper triangle.
struct SupConGrad<'a> {
    tile: &'a mut [f32],
    labels: &'a [u32],
    r0: usize,
    rb: usize,
    inv_t: f32,
    /// `L_i`, weight and `1 / |P_i|` of every row.
    lse: &'a [f32],
    weight: &'a [f32],
    inv_p: &'a [f32],
    xn: &'a [f32],
    gx: &'a mut [f32],
    cpack: &'a mut [f32],
    d: usize,
}

impl Kernel for SupConGrad<'_> {
    type Output = ();
    #[inline(always)]
    fn run<S: Simd, const MR: usize, const NV: usize>(self, s: S) {
        let SupConGrad {
            tile,
            labels,
            r0,
            rb,
            inv_t,
            lse,
            weight,
            inv_p,
            xn,
            gx,
            cpack,
            d,
        } = self;
        let n = labels.len();
        let w = n.saturating_sub(r0);
        let r1 = r0 + rb;
        if w == 0 || d == 0 {
            return;
        }
        let neg_inv_t = -inv_t;
        let (Some(cl), Some(cls), Some(cw), Some(cp)) = (
            labels.get(r0..),
            lse.get(r0..),
            weight.get(r0..),
            inv_p.get(r0..),
        ) else {
            return;
        };
        for r in 0..rb {
            let row = row_mut(tile, r, w);
            let i = r0 + r;
            let (Some(&li), Some(&l_i), Some(&a_i), Some(&p_i)) =
                (labels.get(i), lse.get(i), weight.get(i), inv_p.get(i))
            else {
                break;
            };
            let Some((sq, rest)) = row.split_at_mut_checked(rb.min(w)) else {
                break;
            };
            for (v, &l) in sq.iter_mut().zip(cl) {
                let z = *v * neg_inv_t;
                let pos = if l == li { p_i } else { 0.0 };
                *v = a_i * (math::exp_poly(z - l_i) - pos) * inv_t;
            }
            if let Some(v) = sq.get_mut(r) {
                *v = 0.0;
            }
            let far = cl
                .get(rb..)
                .unwrap_or_default()
                .iter()
                .zip(cls.get(rb..).unwrap_or_default())
                .zip(
                    cw.get(rb..)
                        .unwrap_or_default()
                        .iter()
                        .zip(cp.get(rb..).unwrap_or_default()),
                );
            for (v, ((&l, &l_j), (&a_j, &p_j))) in rest.iter_mut().zip(far) {
                let z = *v * neg_inv_t;
                let same = l == li;
                let gi = a_i * (math::exp_poly(z - l_i) - if same { p_i } else { 0.0 });
                let gj = a_j * (math::exp_poly(z - l_j) - if same { p_j } else { 0.0 });
                *v = (gi + gj) * inv_t;
            }
        }
        symmetrise(s, tile, w, 0, rb);
        let tile = &*tile;
        let (Some(xb), Some(cols_x)) = (xn.get(r0 * d..r1 * d), xn.get(r0 * d..)) else {
            return;
        };
        let Some((gb, tail)) = gx
            .get_mut(r0 * d..)
            .and_then(|g| g.split_at_mut_checked(rb * d))
        else {
            return;
        };
        // Row side: g_i += sum_j C_ij x_j.
        gemm_acc(s, tile, w, 1, cols_x, d, &mut *gb, &mut *cpack);
        // Column side, past the block: g_j += sum_i C_ij x_i.
        gemm_acc(s, tile.get(rb..).unwrap_or(&[]), 1, w, xb, d, tail, cpack);
    }
}

/// SupCon forward (and backward with `grad`); arguments already checked.
fn supcon(
    backend: Backend,
    x: &Matrix<'_>,
    labels: &[u32],
    loss: Loss,
    grad: Option<&mut [f32]>,
    workspace: &mut [f32],
) -> Result<NceLoss, Error> {
    let Loss::SupCon { inv_t, nonzero } = loss else {
        return Err(Error::InvalidParameter {
            name: "temperature",
            expected: "finite and > 0, with a finite inverse",
        });
    };
    let (n, d) = (x.rows(), x.dim());
    let b = min_len(n, ROW_BLOCK);
    let mut ws = Carve::new(workspace);
    let xn = ws.take(x.len())?;
    let gxn = ws.take(x.len())?;
    let tile = ws.take(b * n)?;
    let cpack = ws.take(max_len(n, b) * GEMM_MR)?;
    let tmp = ws.take(n)?;
    let mx = ws.take(n)?;
    let sum = ws.take(n)?;
    let zp = ws.take(n)?;
    let np = ws.take(n)?;
    let pack = ws.rest();
    l2_normalize_on(backend, *x, xn)?;
    let xn = &*xn;
    let xm = Matrix::new(xn, n, d)?;
    mx.fill(f32::NEG_INFINITY);
    sum.fill(0.0);
    zp.fill(0.0);
    np.fill(0.0);
    let mut r0 = 0;
    while r0 < n {
        let r1 = min_len(r0 + b, n);
        let (rb, w) = (r1 - r0, n - r0);
        let cols = Matrix::new(xn.get(r0 * d..).unwrap_or_default(), w, d)?;
        let tile = tile.get_mut(..rb * w).unwrap_or_default();
        cross_tile_on(
            backend,
            xm,
            r0..r1,
            cols,
            Metric::SquaredEuclidean,
            DistanceMode::Gram,
            true,
            tile,
            pack,
        );
        backend.dispatch(SupConStats {
            tile,
            labels,
            r0,
            rb,
            inv_t,
            stats: RowStats {
                mx: &mut *mx,
                sum: &mut *sum,
                zp: &mut *zp,
                np: &mut *np,
            },
            tmp: &mut *tmp,
        });
        r0 = r1;
    }
    // Every row's loss; the statistics become the gradient's coefficients.
    let mut total = 0.0_f64;
    let mut counts = Counts::default();
    for (((m, s), p), &q) in mx
        .iter_mut()
        .zip(sum.iter_mut())
        .zip(zp.iter_mut())
        .zip(np.iter())
    {
        let npos = q as usize;
        counts.pos_pairs += npos;
        counts.neg_pairs += n.saturating_sub(1 + npos);
        // A row with a positive has `l_i > 0` in exact arithmetic whenever the batch rule
        // leaves the loss nonzero (see the module docs), so it is active without looking
        // at the rounded `l_i`, which can round to 0 or below.
        if npos == 0 {
            counts.terms += usize::from(!nonzero);
            (*s, *p) = (0.0, 0.0);
        } else {
            let lse = f64::from(*m) + f64::from(math::ln(*s));
            let l = lse - f64::from(*p) / f64::from(q);
            total += l.max(0.0);
            counts.terms += 1;
            (*m, *s, *p) = (lse as f32, 1.0, 1.0 / q);
        }
    }
    let (value, terms) = finish_counts(loss, total, &counts);
    if let Some(g) = grad {
        gxn.fill(0.0);
        let mut r0 = 0;
        while r0 < n && terms > 0 {
            let r1 = min_len(r0 + b, n);
            let (rb, w) = (r1 - r0, n - r0);
            let cols = Matrix::new(xn.get(r0 * d..).unwrap_or_default(), w, d)?;
            let tile = tile.get_mut(..rb * w).unwrap_or_default();
            cross_tile_on(
                backend,
                xm,
                r0..r1,
                cols,
                Metric::SquaredEuclidean,
                DistanceMode::Gram,
                true,
                tile,
                pack,
            );
            backend.dispatch(SupConGrad {
                tile,
                labels,
                r0,
                rb,
                inv_t,
                lse: mx,
                weight: sum,
                inv_p: zp,
                xn,
                gx: &mut *gxn,
                cpack: &mut *cpack,
                d,
            });
            r0 = r1;
        }
        let k = if terms == 0 { 0.0 } else { 1.0 / terms as f32 };
        for v in gxn.iter_mut() {
            *v *= k;
        }
        l2_normalize_backward_on(backend, *x, gxn, g)?;
    }
    Ok(NceLoss {
        loss: value as f32,
        num_terms: terms,
    })
}

/// NT-Xent loss (pytorch-metric-learning's `NTXentLoss`) of one labelled batch: every
/// ordered pair of rows with equal labels is a positive pair, with different labels a
/// negative pair;
/// `loss = (1/|P|) sum_{(a,p)} -ln( e^{s_ap/T} / (e^{s_ap/T} + sum_{n in N_a} e^{s_an/T}) )`
/// over cosine similarities (see the [module docs](self), including pml's zero-loss
/// rules). Scalar twin: [`crate::scalar::ntxent_loss`]; with the gradient:
/// [`ntxent_loss_grad`]. For two augmented views of each image (SimCLR), give both views
/// the image's label.
///
/// `workspace` needs [`ntxent_loss_workspace_len`]`(rows, dim)` elements, garbage before
/// and after.
///
/// # Errors
///
/// In this order:
/// - [`Error::LengthMismatch`] (`"labels"`) when `labels.len() != rows`;
/// - [`Error::WorkspaceTooSmall`] when the workspace is too short;
/// - [`Error::InvalidParameter`] (`"temperature"`) unless the temperature is finite and
///   `> 0` with a finite inverse;
/// - [`Error::NonFinite`] (`"x"`) for a NaN or infinite element.
///
/// # Numerics
///
/// Each cosine is within about `(d + 8) 2^-24` of the exact one, each `z` within `1/T`
/// times that. Every log-sum-exp is shifted by its largest term, so the loss is finite
/// for every valid temperature; the per-pair terms are summed in `f64`. The exponentials
/// are a polynomial with relative error about `2^-22`.
///
/// # Example
///
/// ```
/// use triplet_kernels::{ntxent_loss, ntxent_loss_workspace_len, Matrix, NtXentParams};
/// // Two views of each of two images, at right angles to each other.
/// let x = Matrix::new(&[1.0, 0.0, 2.0, 0.0, 0.0, 1.0, 0.0, 3.0], 4, 2)?;
/// let mut ws = vec![0.0_f32; ntxent_loss_workspace_len(4, 2)];
/// let out = ntxent_loss(x, &[0, 0, 1, 1], NtXentParams::new(0.5), &mut ws)?;
/// // Each of the 4 positive pairs: s_ap = 1, two negatives at s = 0.
/// let want = (1.0 + 2.0 * (-2.0_f32).exp()).ln();
/// assert!((out.loss - want).abs() < 1e-5);
/// assert_eq!(out.num_terms, 4);
/// # Ok::<(), triplet_kernels::Error>(())
/// ```
#[cfg_attr(feature = "no-panic", no_panic::no_panic)]
pub fn ntxent_loss(
    x: Matrix<'_>,
    labels: &[u32],
    params: NtXentParams,
    workspace: &mut [f32],
) -> Result<NceLoss, Error> {
    let required = ntxent_loss_workspace_len(x.rows(), x.dim());
    let loss = check_nce(
        &x,
        labels,
        None,
        params.validate(),
        None,
        required,
        workspace.len(),
    )?;
    nce(Backend::active(), &x, labels, None, loss, None, workspace)
}

/// [`ntxent_loss`] and its gradient: returns the loss and writes `grad = d loss / d x`
/// (`rows * dim`, every element overwritten). Scalar twin:
/// [`crate::scalar::ntxent_loss_grad`].
///
/// # Errors
///
/// As [`ntxent_loss`], with [`Error::LengthMismatch`] (`"grad"`) checked right after the
/// labels.
///
/// # Numerics
///
/// As [`ntxent_loss`]; each element of `grad` sums `2 rows` terms in `f32` through the
/// products, then the normalisation's backward.
///
/// # Example
///
/// ```
/// use triplet_kernels::{ntxent_loss_grad, ntxent_loss_workspace_len, Matrix, NtXentParams};
/// let x = Matrix::new(&[1.0, 0.1, 0.9, 0.3, 0.2, 1.0, 0.0, 1.0], 4, 2)?;
/// let mut g = [0.0_f32; 8];
/// let mut ws = vec![0.0_f32; ntxent_loss_workspace_len(4, 2)];
/// let out = ntxent_loss_grad(x, &[0, 0, 1, 1], NtXentParams::default(), &mut g, &mut ws)?;
/// assert!(out.loss > 0.0);
/// // Row 1 is pulled toward row 0: its second coordinate should shrink.
/// assert!(g[3] > 0.0);
/// # Ok::<(), triplet_kernels::Error>(())
/// ```
#[cfg_attr(feature = "no-panic", no_panic::no_panic)]
pub fn ntxent_loss_grad(
    x: Matrix<'_>,
    labels: &[u32],
    params: NtXentParams,
    grad: &mut [f32],
    workspace: &mut [f32],
) -> Result<NceLoss, Error> {
    let required = ntxent_loss_workspace_len(x.rows(), x.dim());
    let loss = check_nce(
        &x,
        labels,
        None,
        params.validate(),
        Some((grad.len(), 0)),
        required,
        workspace.len(),
    )?;
    let grads = Some(Grads { x: grad, y: None });
    nce(Backend::active(), &x, labels, None, loss, grads, workspace)
}

/// InfoNCE / NT-Xent of queries `x` against documents `y` (text retrieval with in-batch
/// negatives; pytorch-metric-learning's `NTXentLoss` with `ref_emb`): every pair (query
/// `i`, document `j`) with `labels[i] == y_labels[j]` is a positive pair, every other pair
/// a negative one, none excluded; the loss is [`ntxent_loss`]'s formula over those pairs.
/// With `labels[i] = y_labels[i] = i` and [`NtXentParams::sentence_transformers`] it is
/// sentence-transformers' `MultipleNegativesRankingLoss`, the cross-entropy of
/// `20 cos(q_i, d_j)` over the documents with target `i`; hard negatives are extra rows
/// of `y` with labels no query has. Scalar twin: [`crate::scalar::infonce_loss`]; with
/// gradients: [`infonce_loss_grad`].
///
/// `workspace` needs [`infonce_loss_workspace_len`]`(rows, docs, dim)` elements.
///
/// # Errors
///
/// In this order:
/// - [`Error::DimensionMismatch`] when `x` and `y` have different dimensions;
/// - [`Error::LengthMismatch`] (`"labels"`, then `"y_labels"`) when a label slice does not
///   have one label per row;
/// - [`Error::WorkspaceTooSmall`] when the workspace is too short;
/// - [`Error::InvalidParameter`] (`"temperature"`) as [`ntxent_loss`];
/// - [`Error::NonFinite`] (`"x"`, then `"y"`) for a NaN or infinite element.
///
/// # Numerics
///
/// As [`ntxent_loss`].
///
/// # Example
///
/// ```
/// use triplet_kernels::{infonce_loss, infonce_loss_workspace_len, Matrix, NtXentParams};
/// // Two queries, each on its own document, the other at a right angle.
/// let q = Matrix::new(&[1.0, 0.0, 0.0, 1.0], 2, 2)?;
/// let docs = Matrix::new(&[2.0, 0.0, 0.0, 5.0], 2, 2)?;
/// let mut ws = vec![0.0_f32; infonce_loss_workspace_len(2, 2, 2)];
/// let p = NtXentParams::sentence_transformers(); // scale 20
/// let out = infonce_loss(q, &[0, 1], docs, &[0, 1], p, &mut ws)?;
/// let want = (1.0 + (-20.0_f32).exp()).ln(); // cross-entropy of logits (20, 0)
/// assert!((out.loss - want).abs() < 1e-6);
/// # Ok::<(), triplet_kernels::Error>(())
/// ```
#[cfg_attr(feature = "no-panic", no_panic::no_panic)]
pub fn infonce_loss(
    x: Matrix<'_>,
    labels: &[u32],
    y: Matrix<'_>,
    y_labels: &[u32],
    params: NtXentParams,
    workspace: &mut [f32],
) -> Result<NceLoss, Error> {
    let docs = Docs {
        y,
        labels: y_labels,
    };
    let required = infonce_loss_workspace_len(x.rows(), y.rows(), x.dim());
    let loss = check_nce(
        &x,
        labels,
        Some(&docs),
        params.validate(),
        None,
        required,
        workspace.len(),
    )?;
    nce(
        Backend::active(),
        &x,
        labels,
        Some(&docs),
        loss,
        None,
        workspace,
    )
}

/// [`infonce_loss`] and its gradients: returns the loss and writes `grad = d loss / d x`
/// (`rows * dim`) and `grad_y = d loss / d y` (`docs * dim`), every element overwritten.
/// Scalar twin: [`crate::scalar::infonce_loss_grad`].
///
/// # Errors
///
/// As [`infonce_loss`], with [`Error::LengthMismatch`] (`"grad"`, then `"grad_y"`) checked
/// right after the labels.
///
/// # Numerics
///
/// As [`ntxent_loss_grad`]; each element of `grad` sums `docs` terms, of `grad_y` `rows`
/// terms.
///
/// # Example
///
/// ```
/// use triplet_kernels::{infonce_loss_grad, infonce_loss_workspace_len, Matrix, NtXentParams};
/// let q = Matrix::new(&[1.0, 0.2, 0.1, 1.0], 2, 2)?;
/// let docs = Matrix::new(&[1.0, 0.0, 0.0, 1.0, -1.0, 0.5], 3, 2)?; // one hard negative
/// let (mut g, mut gy) = ([0.0_f32; 4], [0.0_f32; 6]);
/// let mut ws = vec![0.0_f32; infonce_loss_workspace_len(2, 3, 2)];
/// let p = NtXentParams::sentence_transformers();
/// let out = infonce_loss_grad(q, &[0, 1], docs, &[0, 1, 9], p, &mut g, &mut gy, &mut ws)?;
/// assert!(out.loss > 0.0 && g[1] > 0.0);
/// # Ok::<(), triplet_kernels::Error>(())
/// ```
#[cfg_attr(feature = "no-panic", no_panic::no_panic)]
#[allow(clippy::too_many_arguments)]
pub fn infonce_loss_grad(
    x: Matrix<'_>,
    labels: &[u32],
    y: Matrix<'_>,
    y_labels: &[u32],
    params: NtXentParams,
    grad: &mut [f32],
    grad_y: &mut [f32],
    workspace: &mut [f32],
) -> Result<NceLoss, Error> {
    let docs = Docs {
        y,
        labels: y_labels,
    };
    let required = infonce_loss_workspace_len(x.rows(), y.rows(), x.dim());
    let loss = check_nce(
        &x,
        labels,
        Some(&docs),
        params.validate(),
        Some((grad.len(), grad_y.len())),
        required,
        workspace.len(),
    )?;
    let grads = Some(Grads {
        x: grad,
        y: Some(grad_y),
    });
    nce(
        Backend::active(),
        &x,
        labels,
        Some(&docs),
        loss,
        grads,
        workspace,
    )
}

/// Supervised contrastive loss (pytorch-metric-learning's `SupConLoss`, Khosla et al.'s
/// `L_out`) of one labelled batch:
/// `l_i = ln sum_{a != i} e^{s_ia/T} - (1/|P_i|) sum_{p in P_i} s_ip/T`, averaged over the
/// rows with `l_i > 0` (pml) or over all rows ([`SupConReduction::Mean`]); see the
/// [module docs](self). [`NceLoss::num_terms`] is the number of rows averaged. Scalar
/// twin: [`crate::scalar::supcon_loss`]; with the gradient: [`supcon_loss_grad`].
///
/// `workspace` needs [`supcon_loss_workspace_len`]`(rows, dim)` elements.
///
/// # Errors
///
/// As [`ntxent_loss`].
///
/// # Numerics
///
/// As [`ntxent_loss`]; `l_i` is formed in `f64` from the row's `f32` log-sum-exp and its
/// `f32` sum of positive similarities, so a row whose exact `l_i` is within about
/// `(|P_i| + 8) 2^-24 / T` of 0 may be counted as active or not.
///
/// # Example
///
/// ```
/// use triplet_kernels::{supcon_loss, supcon_loss_workspace_len, Matrix, SupConParams};
/// let x = Matrix::new(&[1.0, 0.0, 2.0, 0.0, 0.0, 1.0, 0.0, 3.0], 4, 2)?;
/// let mut ws = vec![0.0_f32; supcon_loss_workspace_len(4, 2)];
/// let out = supcon_loss(x, &[0, 0, 1, 1], SupConParams::new(0.5), &mut ws)?;
/// // Every row: one positive at s = 1, two others at s = 0.
/// let want = (2.0_f32.exp() + 2.0).ln() - 2.0;
/// assert!((out.loss - want).abs() < 1e-5);
/// assert_eq!(out.num_terms, 4);
/// # Ok::<(), triplet_kernels::Error>(())
/// ```
#[cfg_attr(feature = "no-panic", no_panic::no_panic)]
pub fn supcon_loss(
    x: Matrix<'_>,
    labels: &[u32],
    params: SupConParams,
    workspace: &mut [f32],
) -> Result<NceLoss, Error> {
    let required = supcon_loss_workspace_len(x.rows(), x.dim());
    let loss = check_nce(
        &x,
        labels,
        None,
        params.validate(),
        None,
        required,
        workspace.len(),
    )?;
    supcon(Backend::active(), &x, labels, loss, None, workspace)
}

/// [`supcon_loss`] and its gradient: returns the loss and writes `grad = d loss / d x`
/// (`rows * dim`, every element overwritten); the count of active rows is a constant for
/// the gradient. Scalar twin: [`crate::scalar::supcon_loss_grad`].
///
/// # Errors
///
/// As [`supcon_loss`], with [`Error::LengthMismatch`] (`"grad"`) checked right after the
/// labels.
///
/// # Example
///
/// ```
/// use triplet_kernels::{supcon_loss_grad, supcon_loss_workspace_len, Matrix, SupConParams};
/// let x = Matrix::new(&[1.0, 0.1, 0.9, 0.3, 0.2, 1.0, 0.0, 1.0], 4, 2)?;
/// let mut g = [0.0_f32; 8];
/// let mut ws = vec![0.0_f32; supcon_loss_workspace_len(4, 2)];
/// let out = supcon_loss_grad(x, &[0, 0, 1, 1], SupConParams::default(), &mut g, &mut ws)?;
/// assert!(out.loss > 0.0 && g[3] > 0.0);
/// # Ok::<(), triplet_kernels::Error>(())
/// ```
#[cfg_attr(feature = "no-panic", no_panic::no_panic)]
pub fn supcon_loss_grad(
    x: Matrix<'_>,
    labels: &[u32],
    params: SupConParams,
    grad: &mut [f32],
    workspace: &mut [f32],
) -> Result<NceLoss, Error> {
    let required = supcon_loss_workspace_len(x.rows(), x.dim());
    let loss = check_nce(
        &x,
        labels,
        None,
        params.validate(),
        Some((grad.len(), 0)),
        required,
        workspace.len(),
    )?;
    supcon(Backend::active(), &x, labels, loss, Some(grad), workspace)
}
