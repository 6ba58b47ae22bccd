//! Every fast kernel runs with exactly the workspace its `*_workspace_len` query documents,
//! and refuses one element less, for small batches (where fixed tile and block sizes
//! would show if they were not clamped to the batch).
#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use triplet_kernels::{
    contrastive_loss, contrastive_loss_grad, contrastive_loss_workspace_len, cross_distances,
    cross_distances_rows, cross_distances_rows_workspace_len, cross_distances_workspace_len,
    hardest_pairs, hardest_pairs_workspace_len, knn, knn_workspace_len, mine_quadruplets,
    mine_quadruplets_count, mine_quadruplets_workspace_len, mine_triplets, mine_triplets_count,
    mine_triplets_workspace_len, pairwise_distances, pairwise_distances_rows,
    pairwise_distances_rows_workspace_len, pairwise_distances_workspace_len, proxy_anchor_loss,
    proxy_anchor_loss_grad, proxy_anchor_loss_workspace_len, proxy_nca_loss, proxy_nca_loss_grad,
    proxy_nca_loss_workspace_len, quadruplet_loss, quadruplet_loss_grad,
    quadruplet_loss_workspace_len, retrieval_metrics, retrieval_metrics_workspace_len,
    triplet_batch_loss, triplet_batch_loss_grad, triplet_batch_loss_grad_workspace_len,
    triplet_batch_loss_workspace_len, triplet_margin_loss, triplet_margin_loss_grad,
    triplet_margin_loss_workspace_len, verification_metrics, verification_metrics_workspace_len,
    BatchParams, ContrastiveParams, DistanceMode, Error, Matrix, Metric, Mining, ProxyAnchorParams,
    ProxyNcaParams, Quadruplet, QuadrupletParams, Score, Triplet, TripletParams,
};

const METRICS: [Metric; 3] = [Metric::SquaredEuclidean, Metric::Euclidean, Metric::Cosine];

fn data(len: usize) -> Vec<f32> {
    (0..len)
        .map(|i| ((i * 7919) % 97) as f32 / 13.0 - 3.0)
        .collect()
}

/// Runs `f` with exactly `len` elements (Ok) and with one less (`WorkspaceTooSmall`).
fn exact<T: core::fmt::Debug>(
    what: &str,
    len: usize,
    mut f: impl FnMut(&mut [f32]) -> Result<T, Error>,
) {
    let mut ws = vec![f32::NAN; len];
    if let Err(e) = f(&mut ws) {
        panic!("{what}: {e} with exactly {len} elements");
    }
    if len > 0 {
        let got = f(&mut ws[..len - 1]);
        assert!(
            matches!(got, Err(Error::WorkspaceTooSmall { .. })),
            "{what}: {got:?} with {} elements",
            len - 1
        );
    }
}

#[test]
fn fast_kernels_run_with_exactly_their_workspace() {
    for n in 1..=9_usize {
        for d in [1_usize, 3, 128] {
            let xd = data(n * d);
            let x = Matrix::new(&xd, n, d).unwrap();
            let labels: Vec<u32> = (0..n).map(|i| (i % 3) as u32).collect();
            let what = |k: &str| format!("{k} n={n} d={d}");
            for metric in METRICS {
                let mut out = vec![0.0_f32; n * n];
                exact(
                    &what("pairwise_distances"),
                    pairwise_distances_workspace_len(n, d),
                    |ws| pairwise_distances(x, metric, &mut out, ws),
                );
                exact(
                    &what("cross_distances"),
                    cross_distances_workspace_len(n, n, d),
                    |ws| cross_distances(x, x, metric, &mut out, ws),
                );
                let b = n.div_ceil(2);
                let mut blk = vec![0.0_f32; b * n];
                exact(
                    &what("pairwise_distances_rows"),
                    pairwise_distances_rows_workspace_len(n, b, d),
                    |ws| pairwise_distances_rows(x, 0..b, metric, DistanceMode::Gram, &mut blk, ws),
                );
                exact(
                    &what("cross_distances_rows"),
                    cross_distances_rows_workspace_len(b, n, d),
                    |ws| cross_distances_rows(x, x, 0..b, metric, DistanceMode::Gram, &mut blk, ws),
                );

                let (mut pos, mut neg) = (vec![0_u32; n], vec![0_u32; n]);
                exact(
                    &what("hardest_pairs"),
                    hardest_pairs_workspace_len(n, d),
                    |ws| hardest_pairs(x, &labels, metric, &mut pos, &mut neg, ws),
                );
                for mining in [Mining::All, Mining::BatchHard, Mining::SemiHard] {
                    let count = mine_triplets_count(&labels, mining).unwrap();
                    let mut trip = vec![Triplet::default(); count];
                    exact(
                        &what("mine_triplets"),
                        mine_triplets_workspace_len(n, d),
                        |ws| mine_triplets(x, &labels, metric, mining, &mut trip, ws),
                    );
                    for normalize in [false, true] {
                        let p = BatchParams::new()
                            .with_metric(metric)
                            .with_mining(mining)
                            .with_normalize(normalize);
                        exact(
                            &what("triplet_batch_loss"),
                            triplet_batch_loss_workspace_len(n, d, p),
                            |ws| triplet_batch_loss(x, &labels, p, ws),
                        );
                        let mut grad = vec![0.0_f32; n * d];
                        exact(
                            &what("triplet_batch_loss_grad"),
                            triplet_batch_loss_grad_workspace_len(n, d, p),
                            |ws| triplet_batch_loss_grad(x, &labels, p, &mut grad, ws),
                        );
                    }
                }

                let trips: Vec<Triplet> = (0..n as u32)
                    .map(|a| Triplet::new(a, (a + 1) % n as u32, (a + 2) % n as u32))
                    .collect();
                let tp = TripletParams::new().with_metric(metric);
                let mut terms = vec![0.0_f32; trips.len()];
                let mut grad = vec![0.0_f32; n * d];
                exact(
                    &what("triplet_margin_loss"),
                    triplet_margin_loss_workspace_len(n, d),
                    |ws| triplet_margin_loss(x, &trips, tp, &mut terms, ws),
                );
                exact(
                    &what("triplet_margin_loss_grad"),
                    triplet_margin_loss_workspace_len(n, d),
                    |ws| triplet_margin_loss_grad(x, &trips, tp, &mut terms, &mut grad, ws),
                );

                let cp = ContrastiveParams::new(0.0, 1.0);
                exact(
                    &what("contrastive_loss"),
                    contrastive_loss_workspace_len(n, d),
                    |ws| contrastive_loss(x, &labels, metric, cp, ws),
                );
                exact(
                    &what("contrastive_loss_grad"),
                    contrastive_loss_workspace_len(n, d),
                    |ws| contrastive_loss_grad(x, &labels, metric, cp, &mut grad, ws),
                );

                let quads: Vec<Quadruplet> = (0..n as u32)
                    .map(|a| Quadruplet::new(a, (a + 1) % n as u32, (a + 2) % n as u32, 0))
                    .collect();
                let qp = QuadrupletParams::new(1.0, 0.5);
                exact(
                    &what("quadruplet_loss"),
                    quadruplet_loss_workspace_len(n, d),
                    |ws| quadruplet_loss(x, &quads, metric, qp, ws),
                );
                exact(
                    &what("quadruplet_loss_grad"),
                    quadruplet_loss_workspace_len(n, d),
                    |ws| quadruplet_loss_grad(x, &quads, metric, qp, &mut grad, ws),
                );
                let count = mine_quadruplets_count(&labels).unwrap();
                let mut mined = vec![Quadruplet::default(); count];
                exact(
                    &what("mine_quadruplets"),
                    mine_quadruplets_workspace_len(n, d),
                    |ws| mine_quadruplets(x, &labels, metric, &mut mined, ws),
                );

                if n > 1 {
                    let k = (n - 1).min(3);
                    let (mut idx, mut dist) = (vec![0_u32; n * k], vec![0.0_f32; n * k]);
                    exact(&what("knn"), knn_workspace_len(n, n, d), |ws| {
                        knn(x, None, metric, k, &mut idx, &mut dist, ws)
                    });
                    exact(
                        &what("retrieval_metrics"),
                        retrieval_metrics_workspace_len(n, n, d),
                        |ws| retrieval_metrics(x, &labels, None, metric, k, ws),
                    );
                }
            }

            let classes = 3;
            let pd = data(classes * d);
            let proxies = Matrix::new(&pd, classes, d).unwrap();
            let (mut grad, mut gp) = (vec![0.0_f32; n * d], vec![0.0_f32; classes * d]);
            let np = ProxyNcaParams::new(3.0);
            exact(
                &what("proxy_nca_loss"),
                proxy_nca_loss_workspace_len(n, classes, d),
                |ws| proxy_nca_loss(x, &labels, proxies, np, ws),
            );
            exact(
                &what("proxy_nca_loss_grad"),
                proxy_nca_loss_workspace_len(n, classes, d),
                |ws| proxy_nca_loss_grad(x, &labels, proxies, np, &mut grad, &mut gp, ws),
            );
            let ap = ProxyAnchorParams::new(0.1, 32.0);
            exact(
                &what("proxy_anchor_loss"),
                proxy_anchor_loss_workspace_len(n, classes, d),
                |ws| proxy_anchor_loss(x, &labels, proxies, ap, ws),
            );
            exact(
                &what("proxy_anchor_loss_grad"),
                proxy_anchor_loss_workspace_len(n, classes, d),
                |ws| proxy_anchor_loss_grad(x, &labels, proxies, ap, &mut grad, &mut gp, ws),
            );
        }
        let (genuine, impostor) = (data(n), data(n + 2));
        let mut tar = [0.0_f64; 2];
        exact(
            "verification_metrics",
            verification_metrics_workspace_len(n, n + 2),
            |ws| {
                verification_metrics(
                    &genuine,
                    &impostor,
                    Score::Similarity,
                    &[0.1, 0.5],
                    &mut tar,
                    ws,
                )
            },
        );
    }
}

/// A batch that fits one tile asks for one tile and the packing of its rows once, not the
/// packing of two row blocks (a batch of 8 rows of dimension 128 once asked for 15,080
/// elements).
#[test]
fn batch_hard_sizes_one_tile_for_small_batches() {
    for (n, d) in [(8, 128), (1, 1), (256, 64)] {
        assert_eq!(
            hardest_pairs_workspace_len(n, d),
            5 * n + n * n + pairwise_distances_workspace_len(n, d)
        );
        let p = BatchParams::new().with_mining(Mining::BatchHard);
        assert_eq!(
            triplet_batch_loss_workspace_len(n, d, p),
            hardest_pairs_workspace_len(n, d)
        );
    }
    assert!(hardest_pairs_workspace_len(8, 128) < 5_000);
    // Past one tile, an off-diagonal tile packs both of its row blocks.
    assert_eq!(
        hardest_pairs_workspace_len(300, 4),
        5 * 300 + 256 * 256 + cross_distances_workspace_len(256, 256, 4)
    );
}
