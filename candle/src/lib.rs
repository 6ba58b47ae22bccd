//! [candle](https://github.com/huggingface/candle) custom ops over the
//! [`triplet_kernels`] losses.
//!
//! Every function here takes candle [`Tensor`]s and returns the loss as a scalar (rank 0)
//! `F32` tensor that takes part in candle's autograd. Each is a custom op
//! ([`CustomOp1`] for the losses of a batch alone, [`CustomOp2`] for those with proxies or
//! class weights) whose forward calls the kernel's fused `*_grad` function **once**,
//! computing the loss and its gradient together; the op keeps the gradient, and its
//! backward returns it scaled by the incoming gradient of the loss. No candle-level graph
//! of distances, masks or mined triplets is built. When candle tracks none of the inputs
//! (plain tensors rather than [`candle_core::Var`]s or results of tracked ops, as in an
//! evaluation pass), the forward calls the kernel's loss-only function instead and keeps
//! no gradient.
//!
//! | function | kernel | gradients |
//! |---|---|---|
//! | [`triplet_batch_loss`] | [`triplet_kernels::triplet_batch_loss_grad`] (all, batch-hard, semi-hard; every [`Metric`]; presets of [`BatchParams`]) | `x` |
//! | [`triplet_margin_loss`] | [`triplet_kernels::triplet_margin_loss_grad`] (given triplets; PyTorch's `TripletMarginLoss`) | `x` |
//! | [`quadruplet_loss`] | [`triplet_kernels::quadruplet_loss_grad`] (given quadruplets) | `x` |
//! | [`contrastive_loss`] | [`triplet_kernels::contrastive_loss_grad`] | `x` |
//! | [`multi_similarity_loss`] | [`triplet_kernels::multi_similarity_loss_grad`] | `x` |
//! | [`ntxent_loss`] | [`triplet_kernels::ntxent_loss_grad`] (NT-Xent over one labelled batch) | `x` |
//! | [`supcon_loss`] | [`triplet_kernels::supcon_loss_grad`] | `x` |
//! | [`infonce_loss`] | [`triplet_kernels::infonce_loss_grad`] (queries against documents) | `x`, documents |
//! | [`contrastive_loss_pairs`], [`multi_similarity_loss_pairs`] | the same over given (mined) pairs | `x` |
//! | [`proxy_nca_loss`] | [`triplet_kernels::proxy_nca_loss_grad`] | `x`, proxies |
//! | [`proxy_anchor_loss`] | [`triplet_kernels::proxy_anchor_loss_grad`] | `x`, proxies |
//! | [`arcface_loss`] | [`triplet_kernels::arcface_loss_grad`] | `x`, class weights |
//! | [`cosface_loss`] | [`triplet_kernels::cosface_loss_grad`] | `x`, class weights |
//!
//! # Inputs
//!
//! - Embeddings, proxies and class weights: rank-2 `F32` tensors on the CPU
//!   (`rows x dim`). A non-contiguous tensor (a transpose, a narrowed view) is made
//!   contiguous first (one copy; gradients flow back through it). Another dtype or
//!   device is an error naming it; cast with [`Tensor::to_dtype`] or move with
//!   [`Tensor::to_device`] first.
//! - Labels: anything implementing [`Labels`]: `&[u32]`, `Vec<u32>`, `[u32; N]`, or a
//!   rank-1 `U32` tensor (read back to the host, never differentiated).
//!
//! # Errors
//!
//! The kernel's own checks (shapes, label ranges, parameters, NaN or infinite data)
//! arrive as [`candle_core::Error`]s whose message is the op's name followed by the
//! kernel's message, for example
//! ``triplet_batch_loss: parameter `margin` must be finite, |margin| <= 2^100``.
//!
//! # Memory
//!
//! Workspaces are sized with the kernel's `*_workspace_len` functions and allocated here
//! (the kernel crate itself stays allocation-free): one buffer per thread, kept from call
//! to call and grown when a larger one is needed ([`release_workspace`] frees it). Each
//! call allocates its gradients (`rows x dim`, and `classes x dim` for the proxies or
//! class weights), which the op keeps until it is dropped with the graph.
//!
//! # Gradients
//!
//! The gradient is the kernel's, bit for bit (times the incoming gradient; `1` for
//! `loss.backward()`), including its conventions: mining decisions and hinge kinks are
//! constants, normalisations are differentiated through (see each kernel's docs).
//!
//! # Example
//!
//! ```
//! use candle_core::{Device, Tensor, Var};
//! use triplet_kernels_candle::{triplet_batch_loss, BatchParams, Mining};
//!
//! let x = Var::from_vec(vec![0.0_f32, 1.0, 1.5, 4.0], (4, 1), &Device::Cpu)?;
//! let labels = [0_u32, 0, 1, 1];
//! let params = BatchParams::new().with_mining(Mining::BatchHard).with_margin(1.0);
//! let loss = triplet_batch_loss(x.as_tensor(), &labels, params)?;
//! let grads = loss.backward()?;
//! let gx = grads.get(x.as_tensor()).expect("x takes part in the loss");
//! assert_eq!(loss.to_scalar::<f32>()?, (0.5 + 1.5 + 3.0 + 0.5) / 4.0);
//! assert_eq!(gx.flatten_all()?.to_vec1::<f32>()?, [-0.25, 1.25, -1.25, 0.25]);
//! # Ok::<(), candle_core::Error>(())
//! ```

#![forbid(unsafe_code)]
#![warn(missing_docs)]

use std::borrow::Cow;
use std::sync::{Arc, Mutex};

use candle_core::{
    CpuStorage, CustomOp1, CustomOp2, DType, Device, Error, Layout, Result, Shape, Tensor,
};
use triplet_kernels as tk;
use triplet_kernels::Matrix;

pub use candle_core;
pub use triplet_kernels;
pub use triplet_kernels::{
    ArcFaceParams, BatchLoss, BatchParams, ContrastiveForm, ContrastiveParams,
    ContrastiveReduction, CosFaceParams, Hinge, Metric, Mining, MultiSimilarityParams,
    NtXentParams, Pair, ProxyAnchorParams, ProxyNcaParams, Quadruplet, QuadrupletParams, Reduction,
    SupConParams, SupConReduction, Triplet, TripletParams,
};

// ---------------------------------------------------------------------------------------
// Labels.

/// Class labels of a batch: one `u32` per row.
///
/// Implemented for `[u32]`, `Vec<u32>`, `[u32; N]` and for a rank-1 `U32` [`Tensor`]
/// (read back to the host; a tensor of another dtype or rank is an error). The op keeps
/// its own copy of the labels for its forward.
pub trait Labels {
    /// The labels as a host slice.
    fn to_labels(&self) -> Result<Cow<'_, [u32]>>;
}

impl Labels for [u32] {
    fn to_labels(&self) -> Result<Cow<'_, [u32]>> {
        Ok(Cow::Borrowed(self))
    }
}

impl Labels for Vec<u32> {
    fn to_labels(&self) -> Result<Cow<'_, [u32]>> {
        Ok(Cow::Borrowed(self.as_slice()))
    }
}

impl<const N: usize> Labels for [u32; N] {
    fn to_labels(&self) -> Result<Cow<'_, [u32]>> {
        Ok(Cow::Borrowed(self.as_slice()))
    }
}

impl Labels for Tensor {
    fn to_labels(&self) -> Result<Cow<'_, [u32]>> {
        if self.dtype() != DType::U32 {
            return Err(Error::msg(format!(
                "labels: expected a U32 tensor, got dtype {:?}",
                self.dtype()
            )));
        }
        if self.rank() != 1 {
            return Err(Error::msg(format!(
                "labels: expected a rank-1 tensor (one label per row), got shape {:?}",
                self.dims()
            )));
        }
        Ok(Cow::Owned(self.to_vec1::<u32>()?))
    }
}

// ---------------------------------------------------------------------------------------
// Input checks.

/// Checks that `t` is a rank-2 `F32` CPU tensor and returns it contiguous.
fn prepare(op: &str, name: &str, t: &Tensor) -> Result<Tensor> {
    if t.dtype() != DType::F32 {
        return Err(Error::msg(format!(
            "{op}: `{name}` has dtype {:?}; the kernels take F32 (convert with `to_dtype(DType::F32)`)",
            t.dtype()
        )));
    }
    if !matches!(t.device(), Device::Cpu) {
        return Err(Error::msg(format!(
            "{op}: `{name}` is on device {:?}; the kernels run on the CPU (move it with `to_device(&Device::Cpu)`)",
            t.device().location()
        )));
    }
    if t.rank() != 2 {
        return Err(Error::msg(format!(
            "{op}: `{name}` must be a rank-2 tensor (rows x dim), got shape {:?}",
            t.dims()
        )));
    }
    t.contiguous()
}

/// The `rows x dim` matrix behind a contiguous `F32` storage and layout.
fn matrix<'a>(op: &str, storage: &'a CpuStorage, layout: &Layout) -> Result<Matrix<'a>> {
    let (rows, dim) = layout.shape().dims2()?;
    let data = storage.as_slice::<f32>()?;
    let (start, end) = layout
        .contiguous_offsets()
        .ok_or_else(|| Error::msg(format!("{op}: input is not contiguous")))?;
    let data = data
        .get(start..end)
        .ok_or_else(|| Error::msg(format!("{op}: storage shorter than its layout")))?;
    Matrix::new(data, rows, dim).map_err(|e| kernel_error(op, e))
}

/// A kernel error as a candle error: the op's name, then the kernel's message.
fn kernel_error(op: &str, e: tk::Error) -> Error {
    Error::msg(format!("{op}: {e}"))
}

/// The loss as a rank-0 tensor's storage.
fn scalar_out(loss: f32) -> (CpuStorage, Shape) {
    (CpuStorage::F32(vec![loss]), Shape::from(()))
}

/// `grad * grad_res` for a scalar incoming gradient (no copy when it is 1).
fn scale(grad: &Tensor, grad_res: &Tensor) -> Result<Tensor> {
    if grad_res.rank() == 0 && grad_res.dtype() == DType::F32 {
        let g = grad_res.to_scalar::<f32>()?;
        if g == 1.0 {
            return Ok(grad.clone());
        }
    }
    grad.broadcast_mul(grad_res)
}

/// What the forward stored (tensors are reference-counted: no copy of their data).
fn stored<T: Clone>(op: &str, slot: &Mutex<Option<T>>) -> Result<T> {
    let guard = slot
        .lock()
        .map_err(|_| Error::msg(format!("{op}: gradient store poisoned")))?;
    guard
        .clone()
        .ok_or_else(|| Error::msg(format!("{op}: backward before forward")))
}

thread_local! {
    /// This thread's kernel workspace, reused from call to call (the kernels take garbage
    /// workspaces, so it is never cleared).
    static WORKSPACE: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Runs `f` with a workspace of `len` elements: this thread's cached buffer, grown when
/// too short (a fresh one should the cache be in use).
fn with_workspace<R>(len: usize, f: impl FnOnce(&mut [f32]) -> R) -> R {
    WORKSPACE.with(|cache| match cache.try_borrow_mut() {
        Ok(mut ws) => {
            if ws.len() < len {
                // Growing discards the old contents: no copy of garbage.
                *ws = vec![0.0; len];
            }
            f(&mut ws[..len])
        }
        Err(_) => f(&mut vec![0.0; len]),
    })
}

/// Frees this thread's cached workspace.
///
/// The ops allocate each kernel's workspace once per thread and keep it for the next
/// call (reallocating it only when a larger one is needed), which saves zeroing it on
/// every step: for batch-hard at `n = 256` it is about `70_000` elements. This returns that
/// memory, for example after training with large batches.
pub fn release_workspace() {
    WORKSPACE.with(|cache| {
        if let Ok(mut ws) = cache.try_borrow_mut() {
            *ws = Vec::new();
        }
    });
}

fn store<T>(op: &str, slot: &Mutex<Option<T>>, value: T) -> Result<()> {
    let mut guard = slot
        .lock()
        .map_err(|_| Error::msg(format!("{op}: gradient store poisoned")))?;
    *guard = Some(value);
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Losses of one tensor input: a labelled batch, or given triplets, quadruplets or pairs.

#[derive(Clone, Debug)]
enum BatchKernel {
    Triplet(BatchParams),
    /// Given triplets: the labels are not used.
    Explicit(TripletParams, Vec<Triplet>),
    /// Given quadruplets (labels not used).
    Quadruplet(Metric, QuadrupletParams, Vec<Quadruplet>),
    /// Given positive and negative pairs (labels not used).
    ContrastivePairs(Metric, ContrastiveParams, Vec<Pair>, Vec<Pair>),
    /// Given positive and negative pairs (labels not used).
    MultiSimilarityPairs(MultiSimilarityParams, Vec<Pair>, Vec<Pair>),
    Contrastive(Metric, ContrastiveParams),
    MultiSimilarity(MultiSimilarityParams),
    NtXent(NtXentParams),
    SupCon(SupConParams),
}

impl BatchKernel {
    fn name(&self) -> &'static str {
        match self {
            BatchKernel::Triplet(_) => "triplet_batch_loss",
            BatchKernel::Explicit(..) => "triplet_margin_loss",
            BatchKernel::Quadruplet(..) => "quadruplet_loss",
            BatchKernel::ContrastivePairs(..) => "contrastive_loss_pairs",
            BatchKernel::MultiSimilarityPairs(..) => "multi_similarity_loss_pairs",
            BatchKernel::Contrastive(..) => "contrastive_loss",
            BatchKernel::MultiSimilarity(_) => "multi_similarity_loss",
            BatchKernel::NtXent(_) => "ntxent_loss",
            BatchKernel::SupCon(_) => "supcon_loss",
        }
    }

    fn workspace_len(&self, rows: usize, dim: usize, grad: bool) -> usize {
        match *self {
            BatchKernel::Explicit(..) => tk::triplet_margin_loss_workspace_len(rows, dim),
            BatchKernel::Quadruplet(..) => tk::quadruplet_loss_workspace_len(rows, dim),
            BatchKernel::ContrastivePairs(_, _, ref pos, ref neg) => {
                tk::contrastive_loss_pairs_workspace_len(
                    rows,
                    dim,
                    pos.len().saturating_add(neg.len()),
                )
            }
            BatchKernel::MultiSimilarityPairs(_, ref pos, ref neg) => {
                tk::multi_similarity_loss_pairs_workspace_len(
                    rows,
                    dim,
                    pos.len().saturating_add(neg.len()),
                )
            }
            BatchKernel::Triplet(p) if grad => {
                tk::triplet_batch_loss_grad_workspace_len(rows, dim, p)
            }
            BatchKernel::Triplet(p) => tk::triplet_batch_loss_workspace_len(rows, dim, p),
            BatchKernel::Contrastive(..) => tk::contrastive_loss_workspace_len(rows, dim),
            BatchKernel::MultiSimilarity(_) => tk::multi_similarity_loss_workspace_len(rows, dim),
            BatchKernel::NtXent(_) => tk::ntxent_loss_workspace_len(rows, dim),
            BatchKernel::SupCon(_) => tk::supcon_loss_workspace_len(rows, dim),
        }
    }

    /// Runs the fused kernel, the loss and (written to `grad`) its gradient; or, without
    /// `grad`, the loss-only kernel.
    fn run(
        &self,
        x: Matrix<'_>,
        labels: &[u32],
        grad: Option<&mut [f32]>,
        ws: &mut [f32],
    ) -> core::result::Result<BatchLoss, tk::Error> {
        match (self, grad) {
            (&BatchKernel::Triplet(p), Some(g)) => tk::triplet_batch_loss_grad(x, labels, p, g, ws),
            (&BatchKernel::Triplet(p), None) => tk::triplet_batch_loss(x, labels, p, ws),
            (BatchKernel::Explicit(p, t), g) => {
                // The per-triplet terms (PyTorch's reduction "none") are not returned.
                let mut terms = vec![0.0_f32; t.len()];
                match g {
                    Some(g) => tk::triplet_margin_loss_grad(x, t, *p, &mut terms, g, ws),
                    None => tk::triplet_margin_loss(x, t, *p, &mut terms, ws),
                }
                .map(loss_only)
            }
            (BatchKernel::Quadruplet(metric, p, q), g) => match g {
                Some(g) => tk::quadruplet_loss_grad(x, q, *metric, *p, g, ws),
                None => tk::quadruplet_loss(x, q, *metric, *p, ws),
            }
            .map(loss_only),
            (BatchKernel::ContrastivePairs(metric, p, pos, neg), g) => match g {
                Some(g) => tk::contrastive_loss_pairs_grad(x, *metric, *p, pos, neg, g, ws),
                None => tk::contrastive_loss_pairs(x, *metric, *p, pos, neg, ws),
            }
            .map(loss_only),
            (BatchKernel::MultiSimilarityPairs(p, pos, neg), g) => match g {
                Some(g) => tk::multi_similarity_loss_pairs_grad(x, pos, neg, *p, g, ws),
                None => tk::multi_similarity_loss_pairs(x, pos, neg, *p, ws),
            }
            .map(loss_only),
            (&BatchKernel::Contrastive(metric, p), Some(g)) => {
                tk::contrastive_loss_grad(x, labels, metric, p, g, ws).map(loss_only)
            }
            (&BatchKernel::Contrastive(metric, p), None) => {
                tk::contrastive_loss(x, labels, metric, p, ws).map(loss_only)
            }
            (&BatchKernel::MultiSimilarity(p), Some(g)) => {
                tk::multi_similarity_loss_grad(x, labels, p, g, ws).map(loss_only)
            }
            (&BatchKernel::MultiSimilarity(p), None) => {
                tk::multi_similarity_loss(x, labels, p, ws).map(loss_only)
            }
            (&BatchKernel::NtXent(p), Some(g)) => {
                tk::ntxent_loss_grad(x, labels, p, g, ws).map(|l| loss_only(l.loss))
            }
            (&BatchKernel::NtXent(p), None) => {
                tk::ntxent_loss(x, labels, p, ws).map(|l| loss_only(l.loss))
            }
            (&BatchKernel::SupCon(p), Some(g)) => {
                tk::supcon_loss_grad(x, labels, p, g, ws).map(|l| loss_only(l.loss))
            }
            (&BatchKernel::SupCon(p), None) => {
                tk::supcon_loss(x, labels, p, ws).map(|l| loss_only(l.loss))
            }
        }
    }
}

fn loss_only(loss: f32) -> BatchLoss {
    let mut out = BatchLoss::default();
    out.loss = loss;
    out
}

/// The custom op of the one-input losses; keeps the gradient (and the triplet counts)
/// its forward computed. Without `grad` (an input that candle does not track), the
/// forward runs the loss-only kernel.
struct BatchOp {
    kernel: BatchKernel,
    labels: Vec<u32>,
    grad: bool,
    saved: Arc<Mutex<Option<Saved>>>,
}

/// What a [`BatchOp`]'s forward keeps: the gradient (when tracked) and the counts.
type Saved = (Option<Tensor>, BatchLoss);

impl CustomOp1 for BatchOp {
    fn name(&self) -> &'static str {
        self.kernel.name()
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let op = self.kernel.name();
        let x = matrix(op, storage, layout)?;
        let (rows, dim) = (x.rows(), x.dim());
        let mut grad = if self.grad {
            vec![0.0_f32; x.len()]
        } else {
            Vec::new()
        };
        let ws_len = self.kernel.workspace_len(rows, dim, self.grad);
        let g = Some(grad.as_mut_slice()).filter(|_| self.grad);
        let out = with_workspace(ws_len, |ws| self.kernel.run(x, &self.labels, g, ws))
            .map_err(|e| kernel_error(op, e))?;
        let grad = if self.grad {
            Some(Tensor::from_vec(grad, (rows, dim), &Device::Cpu)?)
        } else {
            None
        };
        store(op, &self.saved, (grad, out))?;
        Ok(scalar_out(out.loss))
    }

    fn bwd(&self, _arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        match stored(self.kernel.name(), &self.saved)?.0 {
            Some(grad) => Ok(Some(scale(&grad, grad_res)?)),
            None => Ok(None),
        }
    }
}

fn batch_loss<L: Labels + ?Sized>(
    x: &Tensor,
    labels: &L,
    kernel: BatchKernel,
) -> Result<(Tensor, BatchLoss)> {
    let op = kernel.name();
    let x = prepare(op, "x", x)?;
    let labels = labels.to_labels()?.into_owned();
    let saved = Arc::new(Mutex::new(None));
    let loss = x.apply_op1(BatchOp {
        kernel,
        labels,
        grad: x.track_op(),
        saved: Arc::clone(&saved),
    })?;
    let (_, counts) = stored(op, &saved)?;
    Ok((loss, counts))
}

/// The batch triplet loss with online mining ([`triplet_kernels::triplet_batch_loss_grad`]):
/// every [`Mining`] strategy (all, batch-hard, semi-hard), every [`Metric`], the
/// [`Hinge`]s and [`Reduction`]s, `normalize`, and the presets of [`BatchParams`]
/// (`pml_triplet_margin`, `tfa_semihard`, `tfa_hard`, `tfa_hard_soft`).
///
/// `x` is `rows x dim` (`F32`, CPU), `labels` one class per row. Returns the loss as a
/// rank-0 tensor; its backward gives `d loss / d x`.
///
/// # Errors
///
/// A dtype, device or rank that the bridge does not take, a label tensor that is not
/// rank-1 `U32`, and every error of the kernel (label count, margin, NaN or infinite
/// data, ...), named after `triplet_batch_loss`.
///
/// # Example
///
/// ```
/// use candle_core::{Device, Tensor};
/// use triplet_kernels_candle::{triplet_batch_loss, BatchParams};
/// let x = Tensor::new(&[[0.0_f32, 1.0], [0.0, 0.0], [0.5, 0.5], [1.0, 0.0]], &Device::Cpu)?;
/// let labels = Tensor::new(&[0_u32, 0, 1, 1], &Device::Cpu)?; // or &[0_u32, 0, 1, 1]
/// let loss = triplet_batch_loss(&x, &labels, BatchParams::tfa_hard())?;
/// // Anchor 0: hardest positive at squared distance 1, hardest negative at 0.5.
/// assert!(loss.to_scalar::<f32>()? > 0.0);
/// # Ok::<(), candle_core::Error>(())
/// ```
pub fn triplet_batch_loss<L: Labels + ?Sized>(
    x: &Tensor,
    labels: &L,
    params: BatchParams,
) -> Result<Tensor> {
    Ok(batch_loss(x, labels, BatchKernel::Triplet(params))?.0)
}

/// [`triplet_batch_loss`], also returning the kernel's [`BatchLoss`]: the loss as `f32`
/// with the numbers of mined and of active triplets (for logging the mining).
///
/// # Errors
///
/// As [`triplet_batch_loss`].
pub fn triplet_batch_loss_with_counts<L: Labels + ?Sized>(
    x: &Tensor,
    labels: &L,
    params: BatchParams,
) -> Result<(Tensor, BatchLoss)> {
    batch_loss(x, labels, BatchKernel::Triplet(params))
}

/// The triplet margin loss over given triplets ([`triplet_kernels::triplet_margin_loss_grad`]):
/// PyTorch's `TripletMarginLoss` with [`TripletParams::pytorch`], its distance swap,
/// any [`Metric`], [`Hinge`] and [`Reduction`]. `triplets` index rows of `x`; build them
/// with [`Triplet::new`], view a flat `u32` buffer with `Triplet::from_flat`, or mine
/// them with [`triplet_kernels::mine_triplets`]. Mined triplets are constants for the
/// gradient.
///
/// # Errors
///
/// As [`triplet_batch_loss`] (an index out of range included), named after
/// `triplet_margin_loss`.
///
/// # Example
///
/// ```
/// use candle_core::{Device, Var};
/// use triplet_kernels_candle::{triplet_margin_loss, Triplet, TripletParams};
/// let x = Var::from_vec(vec![0.0_f32, 0.0, 1.0, 0.0, 0.5, 0.0], (3, 2), &Device::Cpu)?;
/// let loss = triplet_margin_loss(x.as_tensor(), &[Triplet::new(0, 1, 2)], TripletParams::new())?;
/// assert_eq!(loss.to_scalar::<f32>()?, 1.5); // d(a, p) - d(a, n) + 1 = 1 - 0.5 + 1
/// let g = loss.backward()?.get(x.as_tensor()).unwrap().flatten_all()?.to_vec1::<f32>()?;
/// assert_eq!(g, [0.0, 0.0, 1.0, 0.0, -1.0, 0.0]);
/// # Ok::<(), candle_core::Error>(())
/// ```
pub fn triplet_margin_loss(
    x: &Tensor,
    triplets: &[Triplet],
    params: TripletParams,
) -> Result<Tensor> {
    let kernel = BatchKernel::Explicit(params, triplets.to_vec());
    Ok(batch_loss(x, &[] as &[u32], kernel)?.0)
}

/// The contrastive loss over every pair of the batch
/// ([`triplet_kernels::contrastive_loss_grad`]) under `metric`; see
/// [`ContrastiveParams`] for the forms, margins, reductions and presets
/// (`pytorch_metric_learning`, `hadsell`).
///
/// # Errors
///
/// As [`triplet_batch_loss`], named after `contrastive_loss`.
pub fn contrastive_loss<L: Labels + ?Sized>(
    x: &Tensor,
    labels: &L,
    metric: Metric,
    params: ContrastiveParams,
) -> Result<Tensor> {
    Ok(batch_loss(x, labels, BatchKernel::Contrastive(metric, params))?.0)
}

/// The multi-similarity loss over every pair of the batch
/// ([`triplet_kernels::multi_similarity_loss_grad`]).
///
/// # Errors
///
/// As [`triplet_batch_loss`], named after `multi_similarity_loss`.
pub fn multi_similarity_loss<L: Labels + ?Sized>(
    x: &Tensor,
    labels: &L,
    params: MultiSimilarityParams,
) -> Result<Tensor> {
    Ok(batch_loss(x, labels, BatchKernel::MultiSimilarity(params))?.0)
}

/// NT-Xent over one labelled batch ([`triplet_kernels::ntxent_loss_grad`]): every ordered
/// pair of rows with equal labels is a positive pair against the anchor's negatives;
/// presets of [`NtXentParams`] (pytorch-metric-learning's `NTXentLoss`, temperature 0.07).
///
/// # Errors
///
/// As [`triplet_batch_loss`], named after `ntxent_loss`.
pub fn ntxent_loss<L: Labels + ?Sized>(
    x: &Tensor,
    labels: &L,
    params: NtXentParams,
) -> Result<Tensor> {
    Ok(batch_loss(x, labels, BatchKernel::NtXent(params))?.0)
}

/// The supervised contrastive loss ([`triplet_kernels::supcon_loss_grad`];
/// pytorch-metric-learning's `SupConLoss` with [`SupConParams::pytorch_metric_learning`]).
///
/// # Errors
///
/// As [`triplet_batch_loss`], named after `supcon_loss`.
pub fn supcon_loss<L: Labels + ?Sized>(
    x: &Tensor,
    labels: &L,
    params: SupConParams,
) -> Result<Tensor> {
    Ok(batch_loss(x, labels, BatchKernel::SupCon(params))?.0)
}

/// The quadruplet loss (Chen et al. 2017) over given quadruplets
/// ([`triplet_kernels::quadruplet_loss_grad`]), for example those of
/// [`triplet_kernels::mine_quadruplets`]; constants for the gradient.
///
/// # Errors
///
/// As [`triplet_batch_loss`] (an index out of range included), named after
/// `quadruplet_loss`.
pub fn quadruplet_loss(
    x: &Tensor,
    quadruplets: &[Quadruplet],
    metric: Metric,
    params: QuadrupletParams,
) -> Result<Tensor> {
    let kernel = BatchKernel::Quadruplet(metric, params, quadruplets.to_vec());
    Ok(batch_loss(x, &[] as &[u32], kernel)?.0)
}

/// The contrastive loss over given pairs ([`triplet_kernels::contrastive_loss_pairs_grad`]):
/// pytorch-metric-learning's `ContrastiveLoss` with a miner, such as the pairs of
/// [`triplet_kernels::pair_mine`]. The pairs index rows of `x` and are constants for the
/// gradient.
///
/// # Errors
///
/// As [`triplet_batch_loss`] (an index out of range included), named after
/// `contrastive_loss_pairs`.
pub fn contrastive_loss_pairs(
    x: &Tensor,
    positives: &[Pair],
    negatives: &[Pair],
    metric: Metric,
    params: ContrastiveParams,
) -> Result<Tensor> {
    let kernel =
        BatchKernel::ContrastivePairs(metric, params, positives.to_vec(), negatives.to_vec());
    Ok(batch_loss(x, &[] as &[u32], kernel)?.0)
}

/// The multi-similarity loss over given pairs
/// ([`triplet_kernels::multi_similarity_loss_pairs_grad`]): pytorch-metric-learning's
/// `MultiSimilarityLoss` with a `MultiSimilarityMiner`
/// ([`triplet_kernels::multi_similarity_mine`]). The pairs are constants for the gradient.
///
/// # Errors
///
/// As [`triplet_batch_loss`] (an index out of range included), named after
/// `multi_similarity_loss_pairs`.
pub fn multi_similarity_loss_pairs(
    x: &Tensor,
    positives: &[Pair],
    negatives: &[Pair],
    params: MultiSimilarityParams,
) -> Result<Tensor> {
    let kernel = BatchKernel::MultiSimilarityPairs(params, positives.to_vec(), negatives.to_vec());
    Ok(batch_loss(x, &[] as &[u32], kernel)?.0)
}

// ---------------------------------------------------------------------------------------
// Losses with proxies or class weights (two tensor inputs).

#[derive(Clone, Copy, Debug)]
enum ClassKernel {
    ProxyNca(ProxyNcaParams),
    ProxyAnchor(ProxyAnchorParams),
    ArcFace(ArcFaceParams),
    CosFace(CosFaceParams),
    /// Queries against documents; the documents' labels travel in [`ClassOp`].
    InfoNce(NtXentParams),
}

impl ClassKernel {
    fn name(&self) -> &'static str {
        match self {
            ClassKernel::ProxyNca(_) => "proxy_nca_loss",
            ClassKernel::ProxyAnchor(_) => "proxy_anchor_loss",
            ClassKernel::ArcFace(_) => "arcface_loss",
            ClassKernel::CosFace(_) => "cosface_loss",
            ClassKernel::InfoNce(_) => "infonce_loss",
        }
    }

    fn second(&self) -> &'static str {
        match self {
            ClassKernel::ProxyNca(_) | ClassKernel::ProxyAnchor(_) => "proxies",
            ClassKernel::ArcFace(_) | ClassKernel::CosFace(_) => "weights",
            ClassKernel::InfoNce(_) => "y",
        }
    }

    /// The same for the loss-only and the fused kernels.
    fn workspace_len(&self, rows: usize, classes: usize, dim: usize) -> usize {
        match self {
            ClassKernel::ProxyNca(_) => tk::proxy_nca_loss_workspace_len(rows, classes, dim),
            ClassKernel::ProxyAnchor(_) => tk::proxy_anchor_loss_workspace_len(rows, classes, dim),
            ClassKernel::ArcFace(_) => tk::arcface_loss_workspace_len(rows, classes, dim),
            ClassKernel::CosFace(_) => tk::cosface_loss_workspace_len(rows, classes, dim),
            ClassKernel::InfoNce(_) => tk::infonce_loss_workspace_len(rows, classes, dim),
        }
    }

    /// The fused kernel with both gradients, or without them the loss-only kernel;
    /// `w_labels` are the documents' labels (InfoNCE), unused otherwise.
    #[allow(clippy::too_many_arguments)]
    fn run(
        &self,
        x: Matrix<'_>,
        labels: &[u32],
        w: Matrix<'_>,
        w_labels: &[u32],
        grads: Option<(&mut [f32], &mut [f32])>,
        ws: &mut [f32],
    ) -> core::result::Result<f32, tk::Error> {
        match (*self, grads) {
            (ClassKernel::ProxyNca(p), Some((gx, gw))) => {
                tk::proxy_nca_loss_grad(x, labels, w, p, gx, gw, ws)
            }
            (ClassKernel::ProxyNca(p), None) => tk::proxy_nca_loss(x, labels, w, p, ws),
            (ClassKernel::ProxyAnchor(p), Some((gx, gw))) => {
                tk::proxy_anchor_loss_grad(x, labels, w, p, gx, gw, ws)
            }
            (ClassKernel::ProxyAnchor(p), None) => tk::proxy_anchor_loss(x, labels, w, p, ws),
            (ClassKernel::ArcFace(p), Some((gx, gw))) => {
                tk::arcface_loss_grad(x, labels, w, p, gx, gw, ws)
            }
            (ClassKernel::ArcFace(p), None) => tk::arcface_loss(x, labels, w, p, ws),
            (ClassKernel::CosFace(p), Some((gx, gw))) => {
                tk::cosface_loss_grad(x, labels, w, p, gx, gw, ws)
            }
            (ClassKernel::CosFace(p), None) => tk::cosface_loss(x, labels, w, p, ws),
            (ClassKernel::InfoNce(p), Some((gx, gw))) => {
                tk::infonce_loss_grad(x, labels, w, w_labels, p, gx, gw, ws).map(|l| l.loss)
            }
            (ClassKernel::InfoNce(p), None) => {
                tk::infonce_loss(x, labels, w, w_labels, p, ws).map(|l| l.loss)
            }
        }
    }
}

/// The custom op of the losses with proxies or class weights; keeps both gradients.
/// Without `grad` (neither input tracked by candle), the forward runs the loss-only
/// kernel.
struct ClassOp {
    kernel: ClassKernel,
    labels: Vec<u32>,
    /// The second input's labels (InfoNCE's documents), else empty.
    w_labels: Vec<u32>,
    grad: bool,
    saved: Mutex<Option<(Tensor, Tensor)>>,
}

impl CustomOp2 for ClassOp {
    fn name(&self) -> &'static str {
        self.kernel.name()
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let op = self.kernel.name();
        let x = matrix(op, s1, l1)?;
        let w = matrix(op, s2, l2)?;
        let len = self.kernel.workspace_len(x.rows(), w.rows(), x.dim());
        if !self.grad {
            let loss = with_workspace(len, |ws| {
                self.kernel
                    .run(x, &self.labels, w, &self.w_labels, None, ws)
            })
            .map_err(|e| kernel_error(op, e))?;
            return Ok(scalar_out(loss));
        }
        let mut gx = vec![0.0_f32; x.len()];
        let mut gw = vec![0.0_f32; w.len()];
        let grads = Some((gx.as_mut_slice(), gw.as_mut_slice()));
        let loss = with_workspace(len, |ws| {
            self.kernel
                .run(x, &self.labels, w, &self.w_labels, grads, ws)
        })
        .map_err(|e| kernel_error(op, e))?;
        let gx = Tensor::from_vec(gx, (x.rows(), x.dim()), &Device::Cpu)?;
        let gw = Tensor::from_vec(gw, (w.rows(), w.dim()), &Device::Cpu)?;
        store(op, &self.saved, (gx, gw))?;
        Ok(scalar_out(loss))
    }

    fn bwd(
        &self,
        _x: &Tensor,
        _w: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (gx, gw) = stored(self.kernel.name(), &self.saved)?;
        Ok((Some(scale(&gx, grad_res)?), Some(scale(&gw, grad_res)?)))
    }
}

fn class_loss<L: Labels + ?Sized>(
    x: &Tensor,
    labels: &L,
    w: &Tensor,
    kernel: ClassKernel,
) -> Result<Tensor> {
    two_input_loss(x, labels, w, Vec::new(), kernel)
}

fn two_input_loss<L: Labels + ?Sized>(
    x: &Tensor,
    labels: &L,
    w: &Tensor,
    w_labels: Vec<u32>,
    kernel: ClassKernel,
) -> Result<Tensor> {
    let op = kernel.name();
    let x = prepare(op, "x", x)?;
    let w = prepare(op, kernel.second(), w)?;
    let labels = labels.to_labels()?.into_owned();
    x.apply_op2(
        &w,
        ClassOp {
            kernel,
            labels,
            w_labels,
            grad: x.track_op() || w.track_op(),
            saved: Mutex::new(None),
        },
    )
}

/// Proxy-NCA ([`triplet_kernels::proxy_nca_loss_grad`]) with caller-held `proxies`
/// (`classes x dim`, e.g. a [`candle_core::Var`]); `labels[i]` is row `i`'s proxy. The
/// backward gives the gradients of both `x` and `proxies`.
///
/// # Errors
///
/// As [`triplet_batch_loss`] for either tensor, named after `proxy_nca_loss`.
pub fn proxy_nca_loss<L: Labels + ?Sized>(
    x: &Tensor,
    labels: &L,
    proxies: &Tensor,
    params: ProxyNcaParams,
) -> Result<Tensor> {
    class_loss(x, labels, proxies, ClassKernel::ProxyNca(params))
}

/// Proxy-Anchor ([`triplet_kernels::proxy_anchor_loss_grad`]); gradients of `x` and
/// `proxies`.
///
/// # Errors
///
/// As [`triplet_batch_loss`] for either tensor, named after `proxy_anchor_loss`.
pub fn proxy_anchor_loss<L: Labels + ?Sized>(
    x: &Tensor,
    labels: &L,
    proxies: &Tensor,
    params: ProxyAnchorParams,
) -> Result<Tensor> {
    class_loss(x, labels, proxies, ClassKernel::ProxyAnchor(params))
}

/// The ArcFace head and its softmax cross-entropy ([`triplet_kernels::arcface_loss_grad`])
/// with class `weights` (`classes x dim`); gradients of `x` and `weights`.
///
/// # Errors
///
/// As [`triplet_batch_loss`] for either tensor, named after `arcface_loss`.
pub fn arcface_loss<L: Labels + ?Sized>(
    x: &Tensor,
    labels: &L,
    weights: &Tensor,
    params: ArcFaceParams,
) -> Result<Tensor> {
    class_loss(x, labels, weights, ClassKernel::ArcFace(params))
}

/// The CosFace head and its softmax cross-entropy ([`triplet_kernels::cosface_loss_grad`])
/// with class `weights` (`classes x dim`); gradients of `x` and `weights`.
///
/// # Errors
///
/// As [`triplet_batch_loss`] for either tensor, named after `cosface_loss`.
pub fn cosface_loss<L: Labels + ?Sized>(
    x: &Tensor,
    labels: &L,
    weights: &Tensor,
    params: CosFaceParams,
) -> Result<Tensor> {
    class_loss(x, labels, weights, ClassKernel::CosFace(params))
}

/// InfoNCE of queries `x` against documents `y` ([`triplet_kernels::infonce_loss_grad`]):
/// document `j` is a positive of query `i` when `y_labels[j] == labels[i]`, every other
/// document a negative (extra rows of `y` with labels no query has are hard negatives).
/// With distinct labels `labels[i] = y_labels[i] = i` and
/// [`NtXentParams::sentence_transformers`] it is sentence-transformers'
/// `MultipleNegativesRankingLoss`. The backward gives the gradients of both `x` and `y`.
///
/// # Errors
///
/// As [`triplet_batch_loss`] for either tensor or label set, named after `infonce_loss`.
pub fn infonce_loss<L: Labels + ?Sized, M: Labels + ?Sized>(
    x: &Tensor,
    labels: &L,
    y: &Tensor,
    y_labels: &M,
    params: NtXentParams,
) -> Result<Tensor> {
    let y_labels = y_labels.to_labels()?.into_owned();
    two_input_loss(x, labels, y, y_labels, ClassKernel::InfoNce(params))
}
