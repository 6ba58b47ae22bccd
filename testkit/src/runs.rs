//! The triplet losses run fast or twin, each checked against its forward-only call.
//!
//! Both runners fill the outputs and the workspace with `garbage` first. On `Ok`, the
//! forward-only call agrees bit for bit (loss, terms, counts); on `Err`, both calls
//! return the same error and leave every output untouched.

use crate::bits;
use triplet_kernels::{
    scalar, triplet_batch_loss, triplet_batch_loss_grad, triplet_batch_loss_grad_workspace_len,
    triplet_batch_loss_workspace_len, triplet_margin_loss, triplet_margin_loss_grad,
    triplet_margin_loss_workspace_len, BatchLoss, BatchParams, Error, Matrix, Triplet,
    TripletParams,
};

fn untouched(v: &[f32], garbage: f32) -> bool {
    v.iter().all(|x| x.to_bits() == garbage.to_bits())
}

/// What `triplet_margin_loss_grad` returns and writes.
pub struct MarginOut {
    pub loss: f32,
    pub terms: Vec<f32>,
    pub grad: Vec<f32>,
}

/// `triplet_margin_loss_grad` (`fast`) or its twin over the triplets `ts`.
#[track_caller]
pub fn margin_run(
    x: Matrix<'_>,
    ts: &[Triplet],
    p: TripletParams,
    fast: bool,
    garbage: f32,
) -> Result<MarginOut, Error> {
    let mut terms = vec![garbage; ts.len()];
    let mut grad = vec![garbage; x.len()];
    let ws_len = if fast {
        triplet_margin_loss_workspace_len(x.rows(), x.dim())
    } else {
        scalar::triplet_margin_loss_workspace_len(x.rows(), x.dim())
    };
    let mut ws = vec![garbage; ws_len];
    let r = if fast {
        triplet_margin_loss_grad(x, ts, p, &mut terms, &mut grad, &mut ws)
    } else {
        scalar::triplet_margin_loss_grad(x, ts, p, &mut terms, &mut grad, &mut ws)
    };
    let mut terms2 = vec![-garbage; ts.len()];
    ws.fill(-garbage);
    let r2 = if fast {
        triplet_margin_loss(x, ts, p, &mut terms2, &mut ws)
    } else {
        scalar::triplet_margin_loss(x, ts, p, &mut terms2, &mut ws)
    };
    match (r, r2) {
        (Ok(l), Ok(l2)) => {
            assert_eq!(l.to_bits(), l2.to_bits(), "forward-only loss");
            assert_eq!(bits(&terms), bits(&terms2), "forward-only terms");
            Ok(MarginOut {
                loss: l,
                terms,
                grad,
            })
        }
        (Err(e), Err(e2)) => {
            assert_eq!(e, e2, "forward-only error");
            assert!(
                untouched(&terms, garbage) && untouched(&grad, garbage),
                "written on Err"
            );
            assert!(untouched(&terms2, -garbage), "written on Err");
            Err(e)
        }
        (a, b) => panic!(
            "with and without gradient disagree: {:?} vs {:?}",
            a.is_ok(),
            b.is_ok()
        ),
    }
}

/// `triplet_batch_loss_grad` (`fast`) or its twin: the result and the gradient.
#[track_caller]
pub fn batch_run(
    x: Matrix<'_>,
    labels: &[u32],
    p: BatchParams,
    fast: bool,
    garbage: f32,
) -> Result<(BatchLoss, Vec<f32>), Error> {
    let (n, d) = (x.rows(), x.dim());
    let mut grad = vec![garbage; x.len()];
    let ws_len = if fast {
        triplet_batch_loss_grad_workspace_len(n, d, p)
    } else {
        scalar::triplet_batch_loss_grad_workspace_len(n, d, p)
    };
    let mut ws = vec![garbage; ws_len];
    let out = if fast {
        triplet_batch_loss_grad(x, labels, p, &mut grad, &mut ws)
    } else {
        scalar::triplet_batch_loss_grad(x, labels, p, &mut grad, &mut ws)
    };
    let mut ws = vec![-garbage; triplet_batch_loss_workspace_len(n, d, p)];
    let fwd = if fast {
        triplet_batch_loss(x, labels, p, &mut ws)
    } else {
        scalar::triplet_batch_loss(x, labels, p, &mut ws)
    };
    match (out, fwd) {
        (Ok(o), Ok(f)) => {
            assert_eq!(o.loss.to_bits(), f.loss.to_bits(), "forward-only loss");
            assert_eq!(
                (o.num_triplets, o.num_active),
                (f.num_triplets, f.num_active),
                "forward-only counts"
            );
            Ok((o, grad))
        }
        (Err(e), Err(e2)) => {
            assert_eq!(e, e2, "forward-only error");
            assert!(untouched(&grad, garbage), "written on Err");
            Err(e)
        }
        (a, b) => panic!("with and without gradient disagree: {a:?} vs {b:?}"),
    }
}
