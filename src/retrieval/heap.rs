//! The bounded max-heap of `(distance, index)` keys that selects each query's nearest
//! references, nearest first, ties to the smaller index.

/// `true` when key `(da, ia)` ranks strictly before `(db, ib)`: smaller distance first,
/// NaN after every number, equal distances (and NaN against NaN) by smaller index.
#[inline]
pub(super) fn before(da: f32, ia: u32, db: f32, ib: u32) -> bool {
    if da < db {
        true
    } else if da == db {
        ia < ib
    } else {
        // `da > db`, or at least one is NaN.
        match (da.is_nan(), db.is_nan()) {
            (false, true) => true,
            (true, true) => ia < ib,
            _ => false,
        }
    }
}

/// The `cap` nearest candidates seen so far, as a max-heap (farthest at the root) over
/// two parallel slices of length `cap`.
pub(super) struct Heap<'s> {
    pub(super) dist: &'s mut [f32],
    pub(super) idx: &'s mut [u32],
    len: usize,
}

impl<'s> Heap<'s> {
    pub(super) fn new(dist: &'s mut [f32], idx: &'s mut [u32]) -> Self {
        let cap = dist.len().min(idx.len());
        Heap {
            dist: dist.split_at_mut(cap).0,
            idx: idx.split_at_mut(cap).0,
            len: 0,
        }
    }

    /// A heap over `dist` and `idx` whose first `len` entries are a heap left by an
    /// earlier pass ([`Heap::len`]); `len` is capped at the capacity.
    pub(super) fn resume(dist: &'s mut [f32], idx: &'s mut [u32], len: usize) -> Self {
        let mut heap = Heap::new(dist, idx);
        heap.len = len.min(heap.dist.len());
        heap
    }

    /// Entries held.
    pub(super) fn len(&self) -> usize {
        self.len
    }

    pub(super) fn empty() -> Heap<'static> {
        Heap {
            dist: &mut [],
            idx: &mut [],
            len: 0,
        }
    }

    #[inline]
    fn key(&self, i: usize) -> Option<(f32, u32)> {
        Some((*self.dist.get(i)?, *self.idx.get(i)?))
    }

    #[inline]
    fn set(&mut self, i: usize, d: f32, j: u32) {
        if let (Some(sd), Some(sj)) = (self.dist.get_mut(i), self.idx.get_mut(i)) {
            *sd = d;
            *sj = j;
        }
    }

    /// Offers one candidate `(d, j)`, `j` above every index already held: kept when the
    /// heap is not full, or when `d` is nearer than the farthest kept entry (a number
    /// against its NaN), which it then replaces. A candidate whose distance equals the
    /// farthest kept one loses the tie (its index is larger). Always inlined: the
    /// selection loops are compiled with the backend's features, and a call out of them
    /// measured about 1 % of R2.
    #[inline(always)]
    pub(super) fn push(&mut self, d: f32, j: u32) {
        let cap = self.dist.len();
        if self.len < cap {
            self.sift_up(d, j);
            return;
        }
        let worst = self.dist.first().copied().unwrap_or(f32::NAN);
        if d < worst || (worst.is_nan() && !d.is_nan()) {
            self.sift_down(0, cap, d, j);
        }
    }

    /// Offers one candidate `(d, j)` whose index may be below those held (a re-scored
    /// shortlist, in any order): kept when the heap is not full, or when it ranks before
    /// the farthest kept entry by distance, then index.
    #[inline(always)]
    pub(super) fn push_any(&mut self, d: f32, j: u32) {
        let cap = self.dist.len();
        if self.len < cap {
            self.sift_up(d, j);
            return;
        }
        if let Some((wd, wj)) = self.key(0) {
            if before(d, j, wd, wj) {
                self.sift_down(0, cap, d, j);
            }
        }
    }

    /// The distance a candidate must beat to enter: the farthest kept one once the heap
    /// is full, `+inf` before (NaN when the farthest kept one is NaN: every number beats
    /// it).
    #[inline]
    pub(super) fn bar(&self) -> f32 {
        if self.len < self.dist.len() {
            f32::INFINITY
        } else {
            self.dist.first().copied().unwrap_or(f32::NAN)
        }
    }

    /// Inserts into a heap that is not full.
    #[inline(always)]
    fn sift_up(&mut self, d: f32, j: u32) {
        let mut pos = self.len;
        self.len += 1;
        while pos > 0 {
            let parent = (pos - 1) / 2;
            let Some((pd, pj)) = self.key(parent) else {
                break;
            };
            if before(pd, pj, d, j) {
                self.set(pos, pd, pj);
                pos = parent;
            } else {
                break;
            }
        }
        self.set(pos, d, j);
    }

    /// Places `(d, j)` in the hole at `pos` of the heap's first `len` entries, moving
    /// larger children up. Inlined into the selection loop (compiled with the backend's
    /// features: a call out of it would cross an AVX-512 to SSE transition).
    #[inline(always)]
    fn sift_down(&mut self, mut pos: usize, len: usize, d: f32, j: u32) {
        // `pos < len <= cap`, a slice length, so `2 * pos + 2` cannot overflow.
        loop {
            let left = 2 * pos + 1;
            if left >= len {
                break;
            }
            let Some((mut cd, mut cj)) = self.key(left) else {
                break;
            };
            let mut child = left;
            if left + 1 < len {
                if let Some((rd, rj)) = self.key(left + 1) {
                    if before(cd, cj, rd, rj) {
                        (cd, cj, child) = (rd, rj, left + 1);
                    }
                }
            }
            if before(d, j, cd, cj) {
                self.set(pos, cd, cj);
                pos = child;
            } else {
                break;
            }
        }
        self.set(pos, d, j);
    }

    /// Sorts the entries nearest first (heapsort); the heap must be full.
    pub(super) fn sort(&mut self) {
        let mut end = self.len;
        while end > 1 {
            end -= 1;
            let (Some((rd, rj)), Some((ld, lj))) = (self.key(0), self.key(end)) else {
                break;
            };
            self.set(end, rd, rj);
            self.sift_down(0, end, ld, lj);
        }
    }
}
