//! Proptest strategies for values and matrices.

use proptest::prelude::*;

/// Values of every magnitude from 1e-3 to 1e3, signs mixed.
pub fn value() -> impl Strategy<Value = f32> + Clone {
    (-3.0_f32..3.0, any::<bool>()).prop_map(|(e, neg)| {
        let v = 10.0_f32.powf(e);
        if neg {
            -v
        } else {
            v
        }
    })
}

/// Integer values -8..=8: every sum of products (so every squared distance) is exact in
/// f32, in any order.
pub fn int_value() -> impl Strategy<Value = f32> + Clone {
    (-8_i8..=8).prop_map(f32::from)
}

/// Rows, dim and data.
pub fn matrix(
    rows: impl Strategy<Value = usize>,
    dim: impl Strategy<Value = usize>,
    v: impl Strategy<Value = f32> + Clone,
) -> impl Strategy<Value = (usize, usize, Vec<f32>)> {
    (rows, dim).prop_flat_map(move |(r, d)| {
        (
            Just(r),
            Just(d),
            proptest::collection::vec(v.clone(), r * d),
        )
    })
}

/// Rows, dim, data and labels from up to six classes, class `c` labelled `c * step +
/// offset` (sparse ids, not 0..C).
pub fn sparse_batch(
    rows: impl Strategy<Value = usize>,
    dim: impl Strategy<Value = usize>,
    v: impl Strategy<Value = f32> + Clone,
    step: u32,
    offset: u32,
) -> impl Strategy<Value = (usize, usize, Vec<f32>, Vec<u32>)> {
    (rows, dim, 1u32..=6).prop_flat_map(move |(r, d, classes)| {
        (
            Just(r),
            Just(d),
            proptest::collection::vec(v.clone(), r * d),
            proptest::collection::vec((0..classes).prop_map(move |c| c * step + offset), r),
        )
    })
}
