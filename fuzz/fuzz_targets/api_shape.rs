//! API-shape target: arbitrary buffer lengths, shapes and parameters. Every call must
//! return `Ok` exactly when the documented conditions hold, never panic, and leave its
//! outputs untouched on `Err`.

#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use triplet_kernels::{
    cross_distances, cross_distances_workspace_len, hinge_reduce_grad, l2_normalize,
    l2_normalize_backward, pairwise_distances, pairwise_distances_workspace_len, row_norms, Error,
    Hinge, Matrix, Metric, Reduction,
};

#[derive(Arbitrary, Debug)]
struct Input {
    rows: u16,
    dim: u16,
    rows_y: u16,
    dim_y: u16,
    data_len: u16,
    data_y_len: u16,
    out_len: u16,
    ws_len: u16,
    huge: bool,
    metric: u8,
    hinge: bool,
    reduction: u8,
}

fuzz_target!(|i: Input| {
    let rows = if i.huge {
        usize::MAX / 2 + usize::from(i.rows)
    } else {
        usize::from(i.rows % 64)
    };
    let dim = usize::from(i.dim % 64);
    let data = vec![0.5_f32; usize::from(i.data_len % 2048)];
    let x = Matrix::new(&data, rows, dim);
    let shape_ok = rows.checked_mul(dim).is_some_and(|l| l == data.len()) && rows > 0 && dim > 0;
    assert_eq!(x.is_ok(), shape_ok, "{x:?}");
    let Ok(x) = x else { return };

    let metric = match i.metric % 3 {
        0 => Metric::SquaredEuclidean,
        1 => Metric::Euclidean,
        _ => Metric::Cosine,
    };
    let mut out = vec![9.0_f32; usize::from(i.out_len % 4200)];
    let mut ws = vec![0.0_f32; usize::from(i.ws_len % 200)];
    let r = pairwise_distances(x, metric, &mut out, &mut ws);
    let ok = out.len() == rows * rows && ws.len() >= pairwise_distances_workspace_len(rows, dim);
    assert_eq!(r.is_ok(), ok, "{r:?}");
    if r.is_err() {
        assert!(out.iter().all(|&v| v == 9.0), "written on Err");
    }

    let yd = vec![0.25_f32; usize::from(i.data_y_len % 2048)];
    if let Ok(y) = Matrix::new(&yd, usize::from(i.rows_y % 64), usize::from(i.dim_y % 64)) {
        out.fill(9.0);
        let r = cross_distances(x, y, metric, &mut out, &mut ws);
        let ok = y.dim() == dim
            && out.len() == rows * y.rows()
            && ws.len() >= cross_distances_workspace_len(rows, y.rows(), dim);
        assert_eq!(r.is_ok(), ok, "{r:?}");
        if let Err(e) = r {
            assert!(out.iter().all(|&v| v == 9.0), "written on Err");
            if y.dim() != dim {
                assert_eq!(
                    e,
                    Error::DimensionMismatch {
                        left: dim,
                        right: y.dim()
                    }
                );
            }
        }
    }

    let r = row_norms(x, &mut out);
    assert_eq!(r.is_ok(), out.len() == rows);
    let r = l2_normalize(x, &mut out);
    assert_eq!(r.is_ok(), out.len() == rows * dim);
    let g = vec![1.0_f32; usize::from(i.ws_len % 300)];
    let r = l2_normalize_backward(x, &g, &mut out);
    assert_eq!(r.is_ok(), out.len() == rows * dim && g.len() == rows * dim);

    let hinge = if i.hinge {
        Hinge::SoftPlus
    } else {
        Hinge::Relu
    };
    let reduction = match i.reduction % 3 {
        0 => Reduction::Sum,
        1 => Reduction::Mean,
        _ => Reduction::MeanNonzero,
    };
    let r = hinge_reduce_grad(&g, hinge, reduction, &mut out);
    assert_eq!(r.is_ok(), g.len() == out.len());
});
