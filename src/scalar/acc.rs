//! The `f64` gradient accumulators of the twins, kept in the caller's `f32` buffers, and
//! the workspace check of the twins that need them.

use crate::error::Error;

/// One `f64` accumulator per element of an `f32` output buffer, so that every gradient
/// element is summed in `f64` and rounded to `f32` once, by [`Acc64::finish`].
///
/// Each `f64` is stored as two `u32` halves: the high half in the output element itself,
/// the low half in one workspace element. The `u32` views need no alignment beyond the
/// `f32` buffers' own (an `f64` view would need 8 bytes) and carry bits unchanged on
/// every target (an `f32` NaN pattern passed through a float register need not).
pub(crate) struct Acc64<'a> {
    hi: &'a mut [u32],
    lo: &'a mut [u32],
}

fn join(hi: u32, lo: u32) -> f64 {
    f64::from_bits((u64::from(hi) << 32) | u64::from(lo))
}

fn split(v: f64) -> (u32, u32) {
    let bits = v.to_bits();
    ((bits >> 32) as u32, bits as u32)
}

impl<'a> Acc64<'a> {
    /// Zeroed accumulators for every element of `out`, their low halves in the first
    /// `out.len()` elements of `workspace`; returns them with the rest of the workspace.
    ///
    /// `Err` when the workspace is shorter than `out`: unreachable once the twin has
    /// checked its workspace, returned so that no slicing can panic.
    pub(crate) fn new(
        out: &'a mut [f32],
        workspace: &'a mut [f32],
    ) -> Result<(Self, &'a mut [f32]), Error> {
        let short = Error::WorkspaceTooSmall {
            required: out.len(),
            actual: workspace.len(),
        };
        let (lo, rest) = workspace.split_at_mut_checked(out.len()).ok_or(short)?;
        let hi: &mut [u32] = bytemuck::try_cast_slice_mut(out).map_err(|_| short)?;
        let lo: &mut [u32] = bytemuck::try_cast_slice_mut(lo).map_err(|_| short)?;
        hi.fill(0);
        lo.fill(0);
        Ok((Acc64 { hi, lo }, rest))
    }

    /// The sum of element `k` so far (0 out of range).
    pub(crate) fn get(&self, k: usize) -> f64 {
        match (self.hi.get(k), self.lo.get(k)) {
            (Some(&h), Some(&l)) => join(h, l),
            _ => 0.0,
        }
    }

    /// Replaces the sum of element `k` (nothing out of range).
    pub(crate) fn set(&mut self, k: usize, v: f64) {
        if let (Some(h), Some(l)) = (self.hi.get_mut(k), self.lo.get_mut(k)) {
            (*h, *l) = split(v);
        }
    }

    /// Adds `values` to the `dim` elements of row `row` (nothing for a row out of range).
    pub(crate) fn add_row(
        &mut self,
        row: usize,
        dim: usize,
        values: impl IntoIterator<Item = f64>,
    ) {
        let Some(start) = row.checked_mul(dim) else {
            return;
        };
        let Some(end) = start.checked_add(dim) else {
            return;
        };
        let (Some(hi), Some(lo)) = (self.hi.get_mut(start..end), self.lo.get_mut(start..end))
        else {
            return;
        };
        for ((h, l), v) in hi.iter_mut().zip(lo.iter_mut()).zip(values) {
            (*h, *l) = split(join(*h, *l) + v);
        }
    }

    /// Rounds every sum to `f32`, once, into the output buffer.
    pub(crate) fn finish(self) {
        for (h, &l) in self.hi.iter_mut().zip(self.lo.iter()) {
            *h = (join(*h, l) as f32).to_bits();
        }
    }
}

/// Runs a shared argument check, `check(workspace_len)`, with the twin's own workspace
/// requirement in place of the fast kernel's: the fast kernel's errors in its order,
/// except that a workspace shorter than `required` gives
/// `WorkspaceTooSmall { required, actual }`.
///
/// `check(usize::MAX)` passes every workspace test; `check(0)` stops at the workspace test
/// unless an earlier check fails, since every fast requirement is at least 1 for a valid
/// matrix (`rows, dim >= 1`).
pub(crate) fn check_twin_workspace<T>(
    required: usize,
    actual: usize,
    check: impl Fn(usize) -> Result<T, Error>,
) -> Result<T, Error> {
    if actual >= required {
        return check(usize::MAX);
    }
    match check(0) {
        Err(e) if !matches!(e, Error::WorkspaceTooSmall { .. }) => Err(e),
        _ => Err(Error::WorkspaceTooSmall { required, actual }),
    }
}
