//! Zero allocations: a counting global allocator (per-thread counter) around a call of
//! every public kernel, fast and scalar. The counter is first shown to count a `Vec`.
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use tk::{Hinge, Matrix, Metric, Reduction};
use triplet_kernels as tk;

struct Counting;

thread_local! {
    static ALLOCATIONS: Cell<usize> = const { Cell::new(0) };
}

// SAFETY: every method forwards to the system allocator unchanged; the counter is a
// thread-local `Cell` touched without allocating.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let _ = ALLOCATIONS.try_with(|c| c.set(c.get() + 1));
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let _ = ALLOCATIONS.try_with(|c| c.set(c.get() + 1));
        // SAFETY: same contract as the caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn allocations() -> usize {
    ALLOCATIONS.with(Cell::get)
}

/// Runs `f` and returns how many allocations it made on this thread.
fn count(f: impl FnOnce()) -> usize {
    let before = allocations();
    f();
    allocations() - before
}

#[test]
fn the_counter_counts() {
    let n = count(|| {
        let v: Vec<u8> = Vec::with_capacity(16);
        std::hint::black_box(v);
    });
    assert_eq!(n, 1);
}

#[test]
fn distance_kernels_do_not_allocate() {
    let xd: Vec<f32> = (0..40 * 19)
        .map(|i| ((i * 37 % 101) as f32 - 50.0) / 25.0)
        .collect();
    let x = Matrix::new(&xd, 40, 19).unwrap();
    let y = Matrix::new(&xd[..7 * 19], 7, 19).unwrap();
    let mut out = vec![0.0_f32; 40 * 40];
    let mut ws = vec![0.0_f32; 1 << 16];
    let mut g = vec![0.0_f32; 40 * 19];
    let go = vec![0.5_f32; 40 * 19];
    let n = count(|| {
        for metric in [Metric::SquaredEuclidean, Metric::Euclidean, Metric::Cosine] {
            tk::pairwise_distances(x, metric, &mut out, &mut ws).unwrap();
            tk::scalar::pairwise_distances(x, metric, &mut out, &mut ws).unwrap();
            tk::cross_distances(x, y, metric, &mut out[..40 * 7], &mut ws).unwrap();
            tk::scalar::cross_distances(x, y, metric, &mut out[..40 * 7], &mut ws).unwrap();
            for mode in [tk::DistanceMode::Gram, tk::DistanceMode::Direct] {
                let block = &mut out[..11 * 40];
                tk::pairwise_distances_rows(x, 3..14, metric, mode, block, &mut ws).unwrap();
                tk::scalar::pairwise_distances_rows(x, 3..14, metric, mode, block, &mut ws)
                    .unwrap();
                let block = &mut out[..11 * 7];
                tk::cross_distances_rows(x, y, 29..40, metric, mode, block, &mut ws).unwrap();
                tk::scalar::cross_distances_rows(x, y, 29..40, metric, mode, block, &mut ws)
                    .unwrap();
            }
        }
        // Backend selection is an atomic, no allocation either.
        for &b in tk::Backend::available() {
            tk::set_backend(b).unwrap();
            tk::pairwise_distances(x, Metric::Euclidean, &mut out, &mut ws).unwrap();
        }
        tk::reset_backend();
        tk::row_norms(x, &mut out[..40]).unwrap();
        tk::scalar::row_norms(x, &mut out[..40]).unwrap();
        tk::l2_normalize(x, &mut g).unwrap();
        tk::scalar::l2_normalize(x, &mut g).unwrap();
        tk::l2_normalize_backward(x, &go, &mut g).unwrap();
        tk::scalar::l2_normalize_backward(x, &go, &mut g).unwrap();
        // Error paths do not allocate either (Display is not called here, and needs none).
        assert!(tk::pairwise_distances(x, Metric::Cosine, &mut out[..3], &mut ws).is_err());
    });
    assert_eq!(n, 0);
}

#[test]
fn reductions_do_not_allocate() {
    let v: Vec<f32> = (0..100).map(|i| (i as f32 - 50.0) / 10.0).collect();
    let mut g = vec![0.0_f32; 100];
    let n = count(|| {
        for hinge in [Hinge::Relu, Hinge::SoftPlus] {
            for red in [Reduction::Sum, Reduction::Mean, Reduction::MeanNonzero] {
                tk::hinge_reduce(&v, hinge, red).unwrap();
                tk::scalar::hinge_reduce(&v, hinge, red).unwrap();
                tk::hinge_reduce_grad(&v, hinge, red, &mut g).unwrap();
                tk::scalar::hinge_reduce_grad(&v, hinge, red, &mut g).unwrap();
            }
        }
    });
    assert_eq!(n, 0);
}

/// A small labelled batch: 24 rows of dimension 11, 4 classes (labels are class ids and
/// proxy indices at once).
fn batch() -> (Vec<f32>, Vec<u32>) {
    let x = (0..24 * 11)
        .map(|i| ((i * 53 % 97) as f32 - 48.0) / 20.0)
        .collect();
    let labels = (0..24).map(|i| (i % 4) as u32).collect();
    (x, labels)
}

#[test]
fn variant_losses_do_not_allocate() {
    let (xd, labels) = batch();
    let x = Matrix::new(&xd, 24, 11).unwrap();
    let proxies = Matrix::new(&xd[..4 * 11], 4, 11).unwrap();
    let mut ws = vec![0.0_f32; 1 << 16];
    let mut g = vec![0.0_f32; 24 * 11];
    let mut gp = vec![0.0_f32; 4 * 11];
    let mut quads = vec![tk::Quadruplet::new(0, 0, 0, 0); 24];
    let n = count(|| {
        for metric in [Metric::SquaredEuclidean, Metric::Euclidean, Metric::Cosine] {
            let p = tk::ContrastiveParams::pytorch_metric_learning();
            tk::contrastive_loss(x, &labels, metric, p, &mut ws).unwrap();
            tk::contrastive_loss_grad(x, &labels, metric, p, &mut g, &mut ws).unwrap();
            tk::scalar::contrastive_loss(x, &labels, metric, p, &mut ws).unwrap();
            tk::scalar::contrastive_loss_grad(x, &labels, metric, p, &mut g, &mut ws).unwrap();
            let k = tk::mine_quadruplets_count(&labels).unwrap();
            let got = tk::mine_quadruplets(x, &labels, metric, &mut quads[..k], &mut ws).unwrap();
            tk::scalar::mine_quadruplets(x, &labels, metric, &mut quads[..k], &mut ws).unwrap();
            let q = &quads[..got];
            let qp = tk::QuadrupletParams::new(1.0, 0.5);
            tk::quadruplet_loss(x, q, metric, qp, &mut ws).unwrap();
            tk::quadruplet_loss_grad(x, q, metric, qp, &mut g, &mut ws).unwrap();
            tk::scalar::quadruplet_loss(x, q, metric, qp, &mut ws).unwrap();
            tk::scalar::quadruplet_loss_grad(x, q, metric, qp, &mut g, &mut ws).unwrap();
        }
        let nca = tk::ProxyNcaParams::pytorch_metric_learning();
        tk::proxy_nca_loss(x, &labels, proxies, nca, &mut ws).unwrap();
        tk::proxy_nca_loss_grad(x, &labels, proxies, nca, &mut g, &mut gp, &mut ws).unwrap();
        tk::scalar::proxy_nca_loss(x, &labels, proxies, nca, &mut ws).unwrap();
        tk::scalar::proxy_nca_loss_grad(x, &labels, proxies, nca, &mut g, &mut gp, &mut ws)
            .unwrap();
        let pa = tk::ProxyAnchorParams::pytorch_metric_learning();
        tk::proxy_anchor_loss(x, &labels, proxies, pa, &mut ws).unwrap();
        tk::proxy_anchor_loss_grad(x, &labels, proxies, pa, &mut g, &mut gp, &mut ws).unwrap();
        tk::scalar::proxy_anchor_loss(x, &labels, proxies, pa, &mut ws).unwrap();
        tk::scalar::proxy_anchor_loss_grad(x, &labels, proxies, pa, &mut g, &mut gp, &mut ws)
            .unwrap();
        let arc = tk::ArcFaceParams::pytorch_metric_learning();
        tk::arcface_loss(x, &labels, proxies, arc, &mut ws).unwrap();
        tk::arcface_loss_grad(x, &labels, proxies, arc, &mut g, &mut gp, &mut ws).unwrap();
        tk::scalar::arcface_loss(x, &labels, proxies, arc, &mut ws).unwrap();
        tk::scalar::arcface_loss_grad(x, &labels, proxies, arc, &mut g, &mut gp, &mut ws).unwrap();
        let cos = tk::CosFaceParams::pytorch_metric_learning();
        tk::cosface_loss(x, &labels, proxies, cos, &mut ws).unwrap();
        tk::cosface_loss_grad(x, &labels, proxies, cos, &mut g, &mut gp, &mut ws).unwrap();
        tk::scalar::cosface_loss(x, &labels, proxies, cos, &mut ws).unwrap();
        tk::scalar::cosface_loss_grad(x, &labels, proxies, cos, &mut g, &mut gp, &mut ws).unwrap();
    });
    assert_eq!(n, 0);
}

#[test]
fn retrieval_does_not_allocate() {
    let (xd, labels) = batch();
    let x = Matrix::new(&xd, 24, 11).unwrap();
    let y = Matrix::new(&xd[..10 * 11], 10, 11).unwrap();
    let mut ws = vec![0.0_f32; 1 << 16];
    let mut idx = vec![0_u32; 24 * 5];
    let mut dist = vec![0.0_f32; 24 * 5];
    let n = count(|| {
        for metric in [Metric::SquaredEuclidean, Metric::Euclidean, Metric::Cosine] {
            tk::knn(x, None, metric, 5, &mut idx, &mut dist, &mut ws).unwrap();
            tk::scalar::knn(x, None, metric, 5, &mut idx, &mut dist, &mut ws).unwrap();
            tk::knn(x, Some(y), metric, 5, &mut idx, &mut dist, &mut ws).unwrap();
            tk::scalar::knn(x, Some(y), metric, 5, &mut idx, &mut dist, &mut ws).unwrap();
            let mut norms = [0.0_f32; 10];
            let g = tk::prepare_gallery(y, metric.into(), &mut norms).unwrap();
            tk::knn_gallery(x, &g, 5, &mut idx, &mut dist, &mut ws).unwrap();
            tk::scalar::knn_gallery(x, &g, 5, &mut idx, &mut dist, &mut ws).unwrap();
            tk::retrieval_metrics(x, &labels, None, metric, 3, &mut ws).unwrap();
            tk::scalar::retrieval_metrics(x, &labels, None, metric, 3, &mut ws).unwrap();
            let r = Some((y, &labels[..10]));
            tk::retrieval_metrics(x, &labels, r, metric, 3, &mut ws).unwrap();
            tk::scalar::retrieval_metrics(x, &labels, r, metric, 3, &mut ws).unwrap();
            let mut recall = [0.0_f64; 3];
            for r in [None, r] {
                tk::retrieval_metrics_at(x, &labels, r, metric, &[1, 5, 3], &mut recall, &mut ws)
                    .unwrap();
                tk::scalar::retrieval_metrics_at(
                    x,
                    &labels,
                    r,
                    metric,
                    &[1, 5, 3],
                    &mut recall,
                    &mut ws,
                )
                .unwrap();
            }
        }
        let mut norms = [0.0_f32; 10];
        let g = tk::prepare_gallery(y, tk::SearchMetric::InnerProduct, &mut norms).unwrap();
        tk::knn_gallery(x, &g, 5, &mut idx, &mut dist, &mut ws).unwrap();
        tk::scalar::knn_gallery(x, &g, 5, &mut idx, &mut dist, &mut ws).unwrap();
        // With the bf16 filter copy: one query (the row kernel) and the whole block.
        let mut filter = [0.0_f32; tk::gallery_filter_len(10, 11)];
        let mut norms = [0.0_f32; 10];
        let g = tk::prepare_gallery_filtered(y, tk::SearchMetric::Cosine, &mut norms, &mut filter)
            .unwrap();
        let one = Matrix::new(&xd[..11], 1, 11).unwrap();
        tk::knn_gallery(one, &g, 5, &mut idx[..5], &mut dist[..5], &mut ws).unwrap();
        tk::knn_gallery(x, &g, 5, &mut idx, &mut dist, &mut ws).unwrap();
        let (genuine, impostor) = xd.split_at(40);
        let mut tar = [0.0_f64; 3];
        let fars = [1e-3, 1e-2, 0.1];
        for score in [tk::Score::Similarity, tk::Score::Distance] {
            tk::verification_metrics(genuine, impostor, score, &fars, &mut tar, &mut ws).unwrap();
            tk::scalar::verification_metrics(genuine, impostor, score, &fars, &mut tar, &mut ws)
                .unwrap();
        }
    });
    assert_eq!(n, 0);
}

#[test]
fn edge_formats_do_not_allocate() {
    let (xd, _) = batch();
    let (n, m, d) = (24, 20, 11);
    let x = Matrix::new(&xd, n, d).unwrap();
    let y = Matrix::new(&xd[..m * d], m, d).unwrap();
    let mut ws = vec![0.0_f32; 1 << 16];
    let mut idx = vec![0_u32; n * 5];
    let mut dist = vec![0.0_f32; n * 5];
    let (mut f16, mut bf16) = (vec![0_u16; n * d], vec![0_u16; n * d]);
    let (mut codes, mut scales) = (vec![0_i8; n * d], vec![0.0_f32; n]);
    let mut words = vec![0_u64; tk::binary_words_len(n, d)];
    let mut back = vec![0.0_f32; n * d];
    let mut norms = vec![0.0_f32; m];
    let mut pws = vec![0.0_f32; d];
    let count_all = count(|| {
        tk::quantize_f16(x, &mut f16).unwrap();
        tk::scalar::quantize_f16(x, &mut f16).unwrap();
        tk::dequantize_f16(&f16, &mut back).unwrap();
        tk::scalar::dequantize_f16(&f16, &mut back).unwrap();
        tk::quantize_bf16(x, &mut bf16).unwrap();
        tk::scalar::quantize_bf16(x, &mut bf16).unwrap();
        tk::dequantize_bf16(&bf16, &mut back).unwrap();
        tk::scalar::dequantize_bf16(&bf16, &mut back).unwrap();
        tk::quantize_i8(x, &mut codes, &mut scales).unwrap();
        tk::scalar::quantize_i8(x, &mut codes, &mut scales).unwrap();
        tk::dequantize_i8(&codes, &scales, d, &mut back).unwrap();
        tk::scalar::dequantize_i8(&codes, &scales, d, &mut back).unwrap();
        tk::quantize_binary(x, &mut words).unwrap();
        tk::scalar::quantize_binary(x, &mut words).unwrap();
        let bx = tk::BinaryMatrix::new(&words, n, d).unwrap();
        tk::dequantize_binary(bx, &mut back).unwrap();
        tk::scalar::dequantize_binary(bx, &mut back).unwrap();
        let by = tk::BinaryMatrix::new(&words[..tk::binary_words_len(m, d)], m, d).unwrap();
        tk::knn_hamming(bx, by, 5, &mut idx, &mut dist).unwrap();
        tk::scalar::knn_hamming(bx, by, 5, &mut idx, &mut dist).unwrap();
        let qi = tk::EdgeMatrix::i8(&codes, &scales, n, d).unwrap();
        for rows in [
            tk::EdgeMatrix::f32(y),
            tk::EdgeMatrix::f16(&f16[..m * d], m, d).unwrap(),
            tk::EdgeMatrix::bf16(&bf16[..m * d], m, d).unwrap(),
            tk::EdgeMatrix::i8(&codes[..m * d], &scales[..m], m, d).unwrap(),
        ] {
            let g = tk::prepare_edge_gallery(rows, tk::SearchMetric::Cosine, &mut norms, &mut pws)
                .unwrap();
            for q in [x, Matrix::new(&xd[..d], 1, d).unwrap()] {
                let len = q.rows() * 5;
                let (i, dd) = (&mut idx[..len], &mut dist[..len]);
                tk::knn_edge(q, &g, 5, i, dd, &mut ws).unwrap();
                tk::scalar::knn_edge(q, &g, 5, i, dd, &mut ws).unwrap();
                tk::knn_rescored(q, by, &g, 8, 5, i, dd, &mut ws).unwrap();
                tk::scalar::knn_rescored(q, by, &g, 8, 5, i, dd, &mut ws).unwrap();
            }
            if rows.format() == tk::EdgeFormat::I8 {
                tk::knn_edge_i8(qi, &g, 5, &mut idx, &mut dist, &mut ws).unwrap();
                tk::scalar::knn_edge_i8(qi, &g, 5, &mut idx, &mut dist, &mut ws).unwrap();
            }
        }
    });
    assert_eq!(count_all, 0);
}

#[test]
fn mining_and_triplet_losses_do_not_allocate() {
    let (xd, labels) = batch();
    let x = Matrix::new(&xd, 24, 11).unwrap();
    let mut ws = vec![0.0_f32; 1 << 16];
    let mut g = vec![0.0_f32; 24 * 11];
    let mut pos = vec![0_u32; 24];
    let mut neg = vec![0_u32; 24];
    let mut out = vec![tk::Triplet::default(); 24 * 24 * 24];
    let triplets = [tk::Triplet::new(0, 4, 1), tk::Triplet::new(2, 6, 3)];
    let mut terms = [0.0_f32; 2];
    let mut parts = vec![tk::HardestPair::NONE; 2 * 24];
    let n = count(|| {
        for metric in [Metric::SquaredEuclidean, Metric::Euclidean, Metric::Cosine] {
            tk::hardest_pairs(x, &labels, metric, &mut pos, &mut neg, &mut ws).unwrap();
            tk::scalar::hardest_pairs(x, &labels, metric, &mut pos, &mut neg, &mut ws).unwrap();
            // The split batch-hard sweep: two parts, the merge and the loss over the merge.
            let (a, b) = parts.split_at_mut(24);
            for (i, out) in [(0, &mut *a), (1, &mut *b)] {
                let part = tk::SweepPart::new(i, 2);
                tk::hardest_pairs_part(x, &labels, metric, part, out, &mut ws).unwrap();
                tk::scalar::hardest_pairs_part(x, &labels, metric, part, out, &mut ws).unwrap();
            }
            tk::merge_hardest_pairs(a, b).unwrap();
            let p = tk::BatchParams::new().with_metric(metric);
            tk::triplet_hardest_pairs_loss(x, a, p, &mut ws).unwrap();
            tk::triplet_hardest_pairs_loss_grad(x, a, p, &mut g, &mut ws).unwrap();
            tk::scalar::triplet_hardest_pairs_loss(x, a, p, &mut ws).unwrap();
            tk::scalar::triplet_hardest_pairs_loss_grad(x, a, p, &mut g, &mut ws).unwrap();
            for mining in [tk::Mining::All, tk::Mining::BatchHard, tk::Mining::SemiHard] {
                let k = tk::mine_triplets_count(&labels, mining).unwrap();
                tk::scalar::mine_triplets_count(&labels, mining).unwrap();
                tk::mine_triplets(x, &labels, metric, mining, &mut out[..k], &mut ws).unwrap();
                tk::scalar::mine_triplets(x, &labels, metric, mining, &mut out[..k], &mut ws)
                    .unwrap();
                let p = tk::BatchParams::new()
                    .with_metric(metric)
                    .with_mining(mining);
                tk::triplet_batch_loss(x, &labels, p, &mut ws).unwrap();
                tk::triplet_batch_loss_grad(x, &labels, p, &mut g, &mut ws).unwrap();
                tk::scalar::triplet_batch_loss(x, &labels, p, &mut ws).unwrap();
                tk::scalar::triplet_batch_loss_grad(x, &labels, p, &mut g, &mut ws).unwrap();
            }
            let p = tk::TripletParams::new().with_metric(metric).with_swap(true);
            tk::triplet_margin_loss(x, &triplets, p, &mut terms, &mut ws).unwrap();
            tk::triplet_margin_loss_grad(x, &triplets, p, &mut terms, &mut g, &mut ws).unwrap();
            tk::scalar::triplet_margin_loss(x, &triplets, p, &mut terms, &mut ws).unwrap();
            tk::scalar::triplet_margin_loss_grad(x, &triplets, p, &mut terms, &mut g, &mut ws)
                .unwrap();
        }
        let p = tk::BatchParams::pml_triplet_margin();
        tk::triplet_batch_loss_grad(x, &labels, p, &mut g, &mut ws).unwrap();
        tk::scalar::triplet_batch_loss_grad(x, &labels, p, &mut g, &mut ws).unwrap();
    });
    assert_eq!(n, 0);
}

#[test]
fn threshold_miners_and_pair_losses_do_not_allocate() {
    let (xd, labels) = batch();
    let x = Matrix::new(&xd, 24, 11).unwrap();
    let mut ws = vec![0.0_f32; 1 << 16];
    let mut g = vec![0.0_f32; 24 * 11];
    let mut out = vec![tk::Triplet::default(); 24 * 24 * 24];
    let mut pos = vec![tk::Pair::default(); 24 * 24];
    let mut neg = vec![tk::Pair::default(); 24 * 24];
    let n = count(|| {
        for metric in [Metric::SquaredEuclidean, Metric::Euclidean, Metric::Cosine] {
            for t in [
                tk::TripletType::All,
                tk::TripletType::Hard,
                tk::TripletType::SemiHard,
                tk::TripletType::Easy,
            ] {
                let p = tk::TripletMinerParams::new(0.5, t);
                let k = tk::triplet_mine_count(x, &labels, metric, p, &mut ws).unwrap();
                tk::scalar::triplet_mine_count(x, &labels, metric, p, &mut ws).unwrap();
                // Exactly sized (count first inside), then capped.
                tk::triplet_mine(x, &labels, metric, p, &mut out[..k], &mut ws).unwrap();
                tk::scalar::triplet_mine(x, &labels, metric, p, &mut out[..k], &mut ws).unwrap();
                let p = p.with_cap(k / 2, 3);
                tk::triplet_mine(x, &labels, metric, p, &mut out, &mut ws).unwrap();
                tk::scalar::triplet_mine(x, &labels, metric, p, &mut out, &mut ws).unwrap();
            }
            let pp = tk::PairMinerParams::new(1.0, 2.0);
            let c = tk::pair_mine_count(x, &labels, metric, pp, &mut ws).unwrap();
            tk::scalar::pair_mine_count(x, &labels, metric, pp, &mut ws).unwrap();
            tk::pair_mine(
                x,
                &labels,
                metric,
                pp,
                &mut pos[..c.positives],
                &mut neg[..c.negatives],
                &mut ws,
            )
            .unwrap();
            tk::scalar::pair_mine(x, &labels, metric, pp, &mut pos, &mut neg, &mut ws).unwrap();
            let cp = tk::ContrastiveParams::pytorch_metric_learning();
            let (ps, ns) = (&pos[..c.positives], &neg[..c.negatives]);
            tk::contrastive_loss_pairs(x, metric, cp, ps, ns, &mut ws).unwrap();
            tk::contrastive_loss_pairs_grad(x, metric, cp, ps, ns, &mut g, &mut ws).unwrap();
            tk::scalar::contrastive_loss_pairs(x, metric, cp, ps, ns, &mut ws).unwrap();
            tk::scalar::contrastive_loss_pairs_grad(x, metric, cp, ps, ns, &mut g, &mut ws)
                .unwrap();
        }
        let mp = tk::MultiSimilarityMinerParams::pytorch_metric_learning();
        tk::multi_similarity_mine_count(x, &labels, mp, &mut ws).unwrap();
        tk::scalar::multi_similarity_mine_count(x, &labels, mp, &mut ws).unwrap();
        tk::scalar::multi_similarity_mine(x, &labels, mp, &mut pos, &mut neg, &mut ws).unwrap();
        let c = tk::multi_similarity_mine(x, &labels, mp, &mut pos, &mut neg, &mut ws).unwrap();
        let (ps, ns) = (&pos[..c.positives], &neg[..c.negatives]);
        let p = tk::MultiSimilarityParams::pytorch_metric_learning();
        tk::multi_similarity_loss(x, &labels, p, &mut ws).unwrap();
        tk::multi_similarity_loss_grad(x, &labels, p, &mut g, &mut ws).unwrap();
        tk::scalar::multi_similarity_loss(x, &labels, p, &mut ws).unwrap();
        tk::scalar::multi_similarity_loss_grad(x, &labels, p, &mut g, &mut ws).unwrap();
        tk::multi_similarity_loss_pairs(x, ps, ns, p, &mut ws).unwrap();
        tk::multi_similarity_loss_pairs_grad(x, ps, ns, p, &mut g, &mut ws).unwrap();
        tk::scalar::multi_similarity_loss_pairs(x, ps, ns, p, &mut ws).unwrap();
        tk::scalar::multi_similarity_loss_pairs_grad(x, ps, ns, p, &mut g, &mut ws).unwrap();
    });
    assert_eq!(n, 0);
}

#[test]
fn nce_losses_do_not_allocate() {
    // Two row blocks (128 rows each).
    let xd: Vec<f32> = (0..140 * 11)
        .map(|i| ((i * 37 % 101) as f32 - 50.0) / 25.0)
        .collect();
    let x = Matrix::new(&xd, 140, 11).unwrap();
    let y = Matrix::new(&xd[..30 * 11], 30, 11).unwrap();
    let labels: Vec<u32> = (0..140).map(|i| i % 13).collect();
    let y_labels: Vec<u32> = (0..30).map(|i| i % 17).collect();
    let mut ws = vec![0.0_f32; 1 << 16];
    let mut g = vec![0.0_f32; 140 * 11];
    let mut gy = vec![0.0_f32; 30 * 11];
    let n = count(|| {
        let nt = tk::NtXentParams::pytorch_metric_learning();
        tk::ntxent_loss(x, &labels, nt, &mut ws).unwrap();
        tk::ntxent_loss_grad(x, &labels, nt, &mut g, &mut ws).unwrap();
        tk::scalar::ntxent_loss(x, &labels, nt, &mut ws).unwrap();
        tk::scalar::ntxent_loss_grad(x, &labels, nt, &mut g, &mut ws).unwrap();
        let st = tk::NtXentParams::sentence_transformers();
        tk::infonce_loss(x, &labels, y, &y_labels, st, &mut ws).unwrap();
        tk::infonce_loss_grad(x, &labels, y, &y_labels, st, &mut g, &mut gy, &mut ws).unwrap();
        tk::scalar::infonce_loss(x, &labels, y, &y_labels, st, &mut ws).unwrap();
        tk::scalar::infonce_loss_grad(x, &labels, y, &y_labels, st, &mut g, &mut gy, &mut ws)
            .unwrap();
        let sc = tk::SupConParams::pytorch_metric_learning();
        tk::supcon_loss(x, &labels, sc, &mut ws).unwrap();
        tk::supcon_loss_grad(x, &labels, sc, &mut g, &mut ws).unwrap();
        tk::scalar::supcon_loss(x, &labels, sc, &mut ws).unwrap();
        tk::scalar::supcon_loss_grad(x, &labels, sc, &mut g, &mut ws).unwrap();
        assert!(tk::supcon_loss(x, &labels[..3], sc, &mut ws).is_err());
    });
    assert_eq!(n, 0);
}

#[test]
fn reference_forms_do_not_allocate() {
    let (xd, labels) = batch();
    let x = Matrix::new(&xd[..10 * 11], 10, 11).unwrap();
    let y = Matrix::new(&xd, 24, 11).unwrap();
    let own: Vec<u32> = (0..10).collect();
    let mut ws = vec![0.0_f32; 1 << 16];
    let mut gx = vec![0.0_f32; 10 * 11];
    let mut gy = vec![0.0_f32; 24 * 11];
    let mut out = vec![tk::Triplet::default(); 1024];
    let n = count(|| {
        for metric in [Metric::SquaredEuclidean, Metric::Euclidean, Metric::Cosine] {
            for mining in [tk::Mining::All, tk::Mining::BatchHard, tk::Mining::SemiHard] {
                for red in [Reduction::Sum, Reduction::Mean, Reduction::MeanNonzero] {
                    let p = tk::BatchParams::new()
                        .with_metric(metric)
                        .with_mining(mining)
                        .with_reduction(red);
                    let refs = tk::RefSet::new(y, &labels).with_self_index(&own);
                    let lab = &labels[..10];
                    tk::triplet_batch_ref_loss(x, lab, refs, p, &mut ws).unwrap();
                    tk::scalar::triplet_batch_ref_loss(x, lab, refs, p, &mut ws).unwrap();
                    for mode in [tk::GradMode::Overwrite, tk::GradMode::Accumulate] {
                        let g = tk::RefGrad::new(&mut gx).with_y(&mut gy).with_mode(mode);
                        tk::triplet_batch_ref_loss_grad(x, lab, refs, p, g, &mut ws).unwrap();
                        let g = tk::RefGrad::new(&mut gx).with_mode(mode);
                        tk::scalar::triplet_batch_ref_loss_grad(x, lab, refs, p, g, &mut ws)
                            .unwrap();
                    }
                    tk::mine_triplets_ref(x, lab, refs, metric, mining, &mut out, &mut ws).unwrap();
                    tk::scalar::mine_triplets_ref(x, lab, refs, metric, mining, &mut out, &mut ws)
                        .unwrap();
                    tk::mine_triplets_ref_count(lab, &labels, Some(&own), mining).unwrap();
                    tk::scalar::mine_triplets_ref_count(lab, &labels, Some(&own), mining).unwrap();
                }
            }
        }
        let parts = [tk::BatchLoss::default(); 3];
        tk::combine_batch_losses(&parts, Reduction::Mean);
    });
    assert_eq!(n, 0);
}
