//! The bridge's overhead over a direct kernel call, measured interleaved: each round
//! times one W2 call (`triplet_batch_loss_grad`, batch-hard, `n = 256`, `d = 128`, the
//! kernel crate's workload table) and then one B1 step (the bridge's
//! `triplet_batch_loss` on a `Var` plus `loss.backward()`), so that both see the same
//! machine load. Prints quantiles of both and their ratio.
//!
//! ```sh
//! cargo run --release -p triplet-kernels-candle --example bridge_overhead [-- ROUNDS]
//! ```
//!
//! `benches/bridge.rs` measures the same two entries with criterion, one after the other;
//! on a busy machine their ratio moves with the load, and the medians here are steadier.

use std::hint::black_box;
use std::time::Instant;

use candle_core::{Device, Var};
use triplet_kernels::{triplet_batch_loss_grad, triplet_batch_loss_grad_workspace_len, Matrix};

#[path = "../../benches/common/workloads.rs"]
mod workloads;

fn main() {
    let rounds: usize = std::env::args()
        .nth(1)
        .map_or(3000, |a| a.parse().expect("ROUNDS is a number"));
    let w = workloads::workload("W2_batch_hard_fwd_bwd_n256_d128");
    let data = w.data();
    let labels = w.labels().expect("a batch workload");
    let params = w.batch_params().expect("a batch workload");
    let x = Matrix::new(&data, w.n, w.d).expect("shape");
    let mut grad = vec![0.0_f32; w.n * w.d];
    let mut ws = vec![0.0_f32; triplet_batch_loss_grad_workspace_len(w.n, w.d, params)];
    let xv = Var::from_vec(data.clone(), (w.n, w.d), &Device::Cpu).expect("tensor");

    let (mut direct, mut bridge) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        let t = Instant::now();
        black_box(
            triplet_batch_loss_grad(black_box(x), &labels, params, &mut grad, &mut ws)
                .expect("kernel"),
        );
        direct.push(t.elapsed().as_secs_f64() * 1e6);
        let t = Instant::now();
        let loss =
            triplet_kernels_candle::triplet_batch_loss(black_box(xv.as_tensor()), &labels, params)
                .expect("bridge");
        let grads = loss.backward().expect("backward");
        black_box(grads.get(xv.as_tensor()).is_some());
        drop((grads, loss));
        bridge.push(t.elapsed().as_secs_f64() * 1e6);
    }
    direct.sort_by(f64::total_cmp);
    bridge.sort_by(f64::total_cmp);
    println!(
        "{rounds} interleaved rounds, n = {}, d = {}, batch-hard",
        w.n, w.d
    );
    for q in [0.1, 0.25, 0.5, 0.75] {
        let i = ((rounds - 1) as f64 * q) as usize;
        println!(
            "p{:<2}  W2 direct {:8.1} us  B1 candle {:8.1} us  ratio {:.3}",
            (q * 100.0) as u32,
            direct[i],
            bridge[i],
            bridge[i] / direct[i]
        );
    }
}
