//! A kernel call keeps the backend it started with ([`set_backend`]'s contract): while
//! another thread flips the backend in a tight loop, every result of every public kernel
//! must be bit-identical to its result under one single backend. A kernel that read the
//! backend more than once (per row pair, or once per stage) would mix backends within one
//! call and produce a result matching none of them.
//!
//! Its own test binary with a single test: the backend is process-wide, and flipping it
//! would disturb any other test running alongside. With only one available backend (a
//! `portable-only` build, or a CPU without AVX2 and AVX-512) there is nothing to mix and
//! the test passes trivially.

use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};
use triplet_kernels::{
    contrastive_loss_grad, contrastive_loss_workspace_len, knn, knn_workspace_len,
    pairwise_distances, pairwise_distances_workspace_len, proxy_anchor_loss_grad,
    proxy_anchor_loss_workspace_len, proxy_nca_loss_grad, proxy_nca_loss_workspace_len,
    quadruplet_loss_grad, quadruplet_loss_workspace_len, reset_backend, retrieval_metrics,
    retrieval_metrics_workspace_len, set_backend, triplet_batch_loss_grad,
    triplet_batch_loss_grad_workspace_len, triplet_margin_loss_grad,
    triplet_margin_loss_workspace_len, Backend, BatchParams, ContrastiveParams, Matrix, Metric,
    Mining, ProxyAnchorParams, ProxyNcaParams, Quadruplet, QuadrupletParams, Triplet,
    TripletParams,
};

/// Rows and dimension: `d = 37` leaves a tail after every lane count (8, 16, 32), so the
/// backends' summation orders differ and their results differ in the last bits.
const N: usize = 48;
const D: usize = 37;
const CLASSES: usize = 6;
const PROXIES: usize = 7;
/// Wall-clock budget of the concurrent phase, and the fewest calls per kernel in it.
const BUDGET: Duration = Duration::from_millis(2500);
const MIN_ROUNDS: usize = 10;

/// Deterministic values in `(-1, 1)`.
fn values(len: usize, seed: u64) -> Vec<f32> {
    let mut s = seed;
    (0..len)
        .map(|_| {
            s = s
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            ((s >> 40) as f32 / (1_u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

fn bits(v: &[f32]) -> impl Iterator<Item = u64> + '_ {
    v.iter().map(|x| u64::from(x.to_bits()))
}

/// The inputs shared by every case.
struct Data {
    x: Vec<f32>,
    labels: Vec<u32>,
    proxies: Vec<f32>,
    triplets: Vec<Triplet>,
    quadruplets: Vec<Quadruplet>,
}

impl Data {
    fn new() -> Self {
        let labels: Vec<u32> = (0..N).map(|i| (i % CLASSES) as u32).collect();
        let c = CLASSES as u32;
        let triplets = (0..N as u32)
            .map(|a| Triplet::new(a, (a + c) % N as u32, (a + 1) % N as u32))
            .collect();
        let quadruplets = (0..N as u32)
            .map(|a| {
                Quadruplet::new(
                    a,
                    (a + c) % N as u32,
                    (a + 1) % N as u32,
                    (a + 2) % N as u32,
                )
            })
            .collect();
        Data {
            x: values(N * D, 1),
            labels,
            proxies: values(PROXIES * D, 2),
            triplets,
            quadruplets,
        }
    }

    fn x(&self) -> Matrix<'_> {
        Matrix::new(&self.x, N, D).unwrap()
    }

    fn proxies(&self) -> Matrix<'_> {
        Matrix::new(&self.proxies, PROXIES, D).unwrap()
    }
}

type Case<'a> = (String, Box<dyn Fn() -> Vec<u64> + 'a>);

/// Every kernel under test, each returning all of its outputs as bits.
#[allow(clippy::too_many_lines)]
fn cases(data: &Data) -> Vec<Case<'_>> {
    let mut cases: Vec<Case<'_>> = Vec::new();
    for mining in [Mining::All, Mining::BatchHard, Mining::SemiHard] {
        for (metric, normalize) in [(Metric::Euclidean, false), (Metric::Cosine, true)] {
            let params = BatchParams::new()
                .with_mining(mining)
                .with_metric(metric)
                .with_normalize(normalize);
            let name =
                format!("triplet_batch_loss_grad {mining:?} {metric:?} normalize={normalize}");
            cases.push((
                name,
                Box::new(move || {
                    let mut g = vec![0.0; N * D];
                    let mut ws = vec![0.0; triplet_batch_loss_grad_workspace_len(N, D, params)];
                    let l =
                        triplet_batch_loss_grad(data.x(), &data.labels, params, &mut g, &mut ws)
                            .unwrap();
                    let mut out = vec![u64::from(l.loss.to_bits()), l.num_triplets as u64];
                    out.extend(bits(&g));
                    out
                }),
            ));
        }
    }
    for params in [
        TripletParams::pytorch().with_swap(true),
        TripletParams::new().with_metric(Metric::SquaredEuclidean),
        TripletParams::new().with_metric(Metric::Cosine),
    ] {
        cases.push((
            format!("triplet_margin_loss_grad {params:?}"),
            Box::new(move || {
                let mut terms = vec![0.0; data.triplets.len()];
                let mut g = vec![0.0; N * D];
                let mut ws = vec![0.0; triplet_margin_loss_workspace_len(N, D)];
                let l = triplet_margin_loss_grad(
                    data.x(),
                    &data.triplets,
                    params,
                    &mut terms,
                    &mut g,
                    &mut ws,
                )
                .unwrap();
                let mut out = vec![u64::from(l.to_bits())];
                out.extend(bits(&terms).chain(bits(&g)));
                out
            }),
        ));
    }
    for metric in [Metric::SquaredEuclidean, Metric::Euclidean, Metric::Cosine] {
        cases.push((
            format!("contrastive_loss_grad {metric:?}"),
            Box::new(move || {
                let params = ContrastiveParams::new(0.1, 1.0);
                let mut g = vec![0.0; N * D];
                let mut ws = vec![0.0; contrastive_loss_workspace_len(N, D)];
                let l =
                    contrastive_loss_grad(data.x(), &data.labels, metric, params, &mut g, &mut ws)
                        .unwrap();
                let mut out = vec![u64::from(l.to_bits())];
                out.extend(bits(&g));
                out
            }),
        ));
        cases.push((
            format!("quadruplet_loss_grad {metric:?}"),
            Box::new(move || {
                let params = QuadrupletParams::new(1.0, 0.5);
                let mut g = vec![0.0; N * D];
                let mut ws = vec![0.0; quadruplet_loss_workspace_len(N, D)];
                let l = quadruplet_loss_grad(
                    data.x(),
                    &data.quadruplets,
                    metric,
                    params,
                    &mut g,
                    &mut ws,
                )
                .unwrap();
                let mut out = vec![u64::from(l.to_bits())];
                out.extend(bits(&g));
                out
            }),
        ));
        cases.push((
            format!("knn {metric:?}"),
            Box::new(move || {
                let k = 5;
                let (mut idx, mut dist) = (vec![0_u32; N * k], vec![0.0; N * k]);
                let mut ws = vec![0.0; knn_workspace_len(N, N, D)];
                knn(data.x(), None, metric, k, &mut idx, &mut dist, &mut ws).unwrap();
                idx.iter()
                    .map(|&i| u64::from(i))
                    .chain(bits(&dist))
                    .collect()
            }),
        ));
        cases.push((
            format!("retrieval_metrics {metric:?}"),
            Box::new(move || {
                let mut ws = vec![0.0; retrieval_metrics_workspace_len(N, N, D)];
                let m =
                    retrieval_metrics(data.x(), &data.labels, None, metric, 5, &mut ws).unwrap();
                vec![
                    m.precision_at_1.to_bits(),
                    m.recall_at_k.to_bits(),
                    m.r_precision.to_bits(),
                    m.mean_average_precision_at_r.to_bits(),
                    m.evaluated as u64,
                ]
            }),
        ));
        cases.push((
            format!("pairwise_distances {metric:?}"),
            Box::new(move || {
                let mut out = vec![0.0; N * N];
                let mut ws = vec![0.0; pairwise_distances_workspace_len(N, D)];
                pairwise_distances(data.x(), metric, &mut out, &mut ws).unwrap();
                bits(&out).collect()
            }),
        ));
    }
    cases.push((
        "proxy_nca_loss_grad".into(),
        Box::new(move || {
            let (mut g, mut gp) = (vec![0.0; N * D], vec![0.0; PROXIES * D]);
            let mut ws = vec![0.0; proxy_nca_loss_workspace_len(N, PROXIES, D)];
            let params = ProxyNcaParams::new(8.0);
            let l = proxy_nca_loss_grad(
                data.x(),
                &data.labels,
                data.proxies(),
                params,
                &mut g,
                &mut gp,
                &mut ws,
            )
            .unwrap();
            let mut out = vec![u64::from(l.to_bits())];
            out.extend(bits(&g).chain(bits(&gp)));
            out
        }),
    ));
    cases.push((
        "proxy_anchor_loss_grad".into(),
        Box::new(move || {
            let (mut g, mut gp) = (vec![0.0; N * D], vec![0.0; PROXIES * D]);
            let mut ws = vec![0.0; proxy_anchor_loss_workspace_len(N, PROXIES, D)];
            let params = ProxyAnchorParams::pytorch_metric_learning();
            let l = proxy_anchor_loss_grad(
                data.x(),
                &data.labels,
                data.proxies(),
                params,
                &mut g,
                &mut gp,
                &mut ws,
            )
            .unwrap();
            let mut out = vec![u64::from(l.to_bits())];
            out.extend(bits(&g).chain(bits(&gp)));
            out
        }),
    ));
    cases
}

/// Resets the backend when the test ends, also on panic.
struct Reset;
impl Drop for Reset {
    fn drop(&mut self) {
        reset_backend();
    }
}

#[test]
fn every_call_uses_one_backend() {
    let _reset = Reset;
    let backends = Backend::available();
    let data = Data::new();
    let cases = cases(&data);

    // Reference results: each case under each backend, forced.
    let mut expected: Vec<Vec<Vec<u64>>> = vec![Vec::new(); cases.len()];
    for &b in backends {
        set_backend(b).unwrap();
        for ((_, run), want) in cases.iter().zip(expected.iter_mut()) {
            let got = run();
            if !want.contains(&got) {
                want.push(got);
            }
        }
    }
    reset_backend();
    let differing = expected.iter().filter(|w| w.len() > 1).count();
    eprintln!(
        "{} backends; {differing} of {} cases differ between them",
        backends.len(),
        cases.len()
    );
    if backends.len() < 2 {
        return; // Nothing to mix.
    }

    let stop = AtomicBool::new(false);
    let mut mixed: Vec<String> = Vec::new();
    thread::scope(|scope| {
        let flipper = scope.spawn(|| {
            let mut flips = 0_u64;
            while !stop.load(Ordering::Relaxed) {
                for &b in backends {
                    let _ = set_backend(b);
                }
                flips += 1;
            }
            flips
        });
        let start = Instant::now();
        let mut round = 0;
        while round < MIN_ROUNDS || start.elapsed() < BUDGET {
            for ((name, run), want) in cases.iter().zip(&expected) {
                let got = run();
                if !want.contains(&got) && !mixed.contains(name) {
                    mixed.push(name.clone());
                }
            }
            round += 1;
            if start.elapsed() > 4 * BUDGET {
                break; // A very slow machine: stop anyway.
            }
        }
        stop.store(true, Ordering::Relaxed);
        let flips = flipper.join().unwrap();
        eprintln!("{round} rounds, {flips} flip cycles");
    });
    assert!(
        mixed.is_empty(),
        "results matching no single backend (a call mixed backends): {mixed:#?}"
    );
}
