//! The caller's scratch buffer, shared by every kernel family: the `const` helpers that
//! the `*_workspace_len` functions combine their terms with, and [`Carve`], the cursor
//! that cuts a workspace into the pieces a kernel uses.
//!
//! A kernel checks the whole length first (see [`crate::validate::check_workspace`]), so
//! cutting it never fails in practice; [`Carve`] still returns
//! [`Error::WorkspaceTooSmall`] rather than panicking, which keeps the kernels free of
//! panic paths.

use crate::error::Error;

/// The smaller of two lengths, usable in a `const fn`.
pub(crate) const fn min_len(a: usize, b: usize) -> usize {
    if a < b {
        a
    } else {
        b
    }
}

/// The larger of two lengths, usable in a `const fn`.
pub(crate) const fn max_len(a: usize, b: usize) -> usize {
    if a > b {
        a
    } else {
        b
    }
}

/// A workspace being cut into consecutive pieces, front first.
pub(crate) struct Carve<'w>(&'w mut [f32]);

impl<'w> Carve<'w> {
    /// The whole workspace, nothing taken yet.
    pub(crate) fn new(ws: &'w mut [f32]) -> Self {
        Carve(ws)
    }

    /// The next `len` elements.
    pub(crate) fn take(&mut self, len: usize) -> Result<&'w mut [f32], Error> {
        let all = core::mem::take(&mut self.0);
        let actual = all.len();
        match all.split_at_mut_checked(len) {
            Some((head, tail)) => {
                self.0 = tail;
                Ok(head)
            }
            None => Err(Error::WorkspaceTooSmall {
                required: len,
                actual,
            }),
        }
    }

    /// The next `len` elements, as `u32` (row indices).
    pub(crate) fn take_u32(&mut self, len: usize) -> Result<&'w mut [u32], Error> {
        let head = self.take(len)?;
        let actual = head.len();
        bytemuck::try_cast_slice_mut(head).map_err(|_| Error::WorkspaceTooSmall {
            required: len,
            actual,
        })
    }

    /// Everything not taken yet.
    pub(crate) fn rest(self) -> &'w mut [f32] {
        self.0
    }
}
