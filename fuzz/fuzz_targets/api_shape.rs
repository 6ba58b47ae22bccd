//! API-shape target: arbitrary buffer lengths, shapes, indices, labels and parameters for
//! every public function of the crate and its scalar twin. Every call must
//!
//! - return `Ok` exactly when the documented conditions hold;
//! - otherwise return one of the documented errors for the conditions that fail (the
//!   first one where the docs give an order), the same error from the fast kernel and
//!   from its twin (a twin with a workspace length of its own reports that requirement
//!   instead of the fast kernel's);
//! - leave every output untouched on `Err` (and `out` past the count on `Ok`);
//! - refuse non-finite data with `Error::NonFinite` at the first bad element where the
//!   docs say so, and accept it where they say the data are not scanned;
//! - refuse finite data outside the loss kernels' range with `Error::TooLarge` at the
//!   first element of largest magnitude where the docs say so (right after the
//!   non-finite check);
//! - never panic, including the saturating `*_workspace_len` queries on any size.

#![no_main]

mod common;

use common::*;
use libfuzzer_sys::fuzz_target;
use triplet_kernels as tk;
use triplet_kernels::{
    scalar, BatchParams, ContrastiveForm, ContrastiveParams, ContrastiveReduction, Error, Matrix,
    Metric, Mining, ProxyAnchorParams, ProxyNcaParams, Quadruplet, QuadrupletParams, Triplet,
    TripletParams,
};

/// One documented condition: whether it holds, and the error when it does not.
struct Conds {
    list: Vec<(bool, Error)>,
    /// The docs give the order in which the conditions are checked.
    ordered: bool,
}

impl Conds {
    fn new(ordered: bool) -> Self {
        Conds {
            list: Vec::new(),
            ordered,
        }
    }

    fn add(&mut self, holds: bool, err: Error) -> &mut Self {
        self.list.push((holds, err));
        self
    }

    fn len(&mut self, buffer: &'static str, expected: usize, actual: usize) -> &mut Self {
        self.add(
            expected == actual,
            Error::LengthMismatch {
                buffer,
                expected,
                actual,
            },
        )
    }

    fn ws(&mut self, required: usize, actual: usize) -> &mut Self {
        self.add(
            actual >= required,
            Error::WorkspaceTooSmall { required, actual },
        )
    }

    fn param(&mut self, holds: bool, name: &'static str, expected: &'static str) -> &mut Self {
        self.add(holds, invalid(name, expected))
    }

    /// `data`: row-major, `cols` columns.
    fn finite(&mut self, buffer: &'static str, data: &[f32], cols: usize) -> &mut Self {
        match non_finite(buffer, data, cols) {
            Some(e) => self.add(false, e),
            None => self,
        }
    }

    /// The data range of the loss kernels and miners (`x` only, checked once `x` is
    /// finite): `|x_ik| sqrt(dim) <= 2^52`.
    fn range(&mut self, data: &[f32], dim: usize) -> &mut Self {
        match first_non_finite(data).map_or_else(|| too_large(data, dim), |_| None) {
            Some((row, col)) => self.add(
                false,
                Error::TooLarge {
                    buffer: "x",
                    row,
                    col,
                },
            ),
            None => self,
        }
    }

    /// Checks one outcome against the conditions.
    fn check_one<T: core::fmt::Debug>(&self, what: &str, r: &Result<T, Error>) {
        let failing: Vec<Error> = self
            .list
            .iter()
            .filter(|(ok, _)| !ok)
            .map(|&(_, e)| e)
            .collect();
        match r {
            Ok(_) => assert!(failing.is_empty(), "{what}: Ok despite {failing:?}"),
            Err(a) if self.ordered => assert_eq!(
                Some(a),
                failing.first(),
                "{what}: not the first of {failing:?}"
            ),
            Err(a) => assert!(failing.contains(a), "{what}: {a:?} not among {failing:?}"),
        }
    }

    /// Checks the outcome of the fast call and of its twin, under the same conditions.
    fn check<T: core::fmt::Debug, U: core::fmt::Debug>(
        &self,
        what: &str,
        fast: &Result<T, Error>,
        twin: &Result<U, Error>,
    ) {
        self.check_twin(self, what, fast, twin);
    }

    /// Checks the fast call under these conditions and its twin under `twin_conds` (the
    /// same but for the twin's own workspace requirement): both refuse alike unless one of
    /// them refuses the workspace.
    fn check_twin<T: core::fmt::Debug, U: core::fmt::Debug>(
        &self,
        twin_conds: &Conds,
        what: &str,
        fast: &Result<T, Error>,
        twin: &Result<U, Error>,
    ) {
        self.check_one(&format!("{what} (fast)"), fast);
        twin_conds.check_one(&format!("{what} (twin)"), twin);
        if let (Err(a), Err(b)) = (fast, twin) {
            let ws = |e: &Error| matches!(e, Error::WorkspaceTooSmall { .. });
            if !ws(a) && !ws(b) {
                assert_eq!(a, b, "{what}: fast and twin refuse differently");
            }
        }
    }
}

fn untouched<T: Copy + PartialEq>(v: &[T], g: T) -> bool {
    v.iter().all(|x| *x == g)
}

const G: f32 = 9.25;
const GI: u32 = 0xdead;

struct Case<'a> {
    g: Gen<'a>,
}

impl Case<'_> {
    /// A length: usually `want`, sometimes off by a little or anything small.
    fn len_near(&mut self, want: usize) -> usize {
        match self.g.byte() % 8 {
            0 => want.saturating_sub(1),
            1 => want + 1,
            2 => self.g.range(0, 2 * want + 3),
            _ => want,
        }
    }

    /// A workspace length: at least `want` usually, sometimes one short or anything.
    fn ws_near(&mut self, want: usize) -> usize {
        match self.g.byte() % 8 {
            0 => want.saturating_sub(1),
            1 => self.g.range(0, want + 2),
            2 => want + self.g.range(0, 50),
            _ => want,
        }
    }

    /// Finite data with, sometimes, a few values around or past the loss kernels' data
    /// range (`2^52 / sqrt(dim)`) and NaN or infinity at a few positions.
    fn data(&mut self, len: usize) -> Vec<f32> {
        let mut v: Vec<f32> = (0..len)
            .map(|_| f32::from(self.g.byte() % 9) - 4.0)
            .collect();
        if len > 0 && self.g.byte() < 30 {
            for _ in 0..self.g.range(1, 3) {
                let i = self.g.range(0, len - 1);
                let k = f64::from(self.g.byte() % 6 + 1);
                let edge = (4_503_599_627_370_496.0 / k.sqrt()) as f32;
                let sign = if self.g.bool() { -1.0 } else { 1.0 };
                v[i] = sign
                    * match self.g.byte() % 4 {
                        0 => f32::from_bits(edge.to_bits() + 1),
                        1 => f32::from_bits(edge.to_bits() - 1),
                        2 => edge,
                        _ => [1e30, f32::MAX, 1e19][self.g.range(0, 2)],
                    };
            }
        }
        if len > 0 && self.g.byte() < 40 {
            for _ in 0..self.g.range(1, 3) {
                let i = self.g.range(0, len - 1);
                v[i] = [f32::NAN, f32::INFINITY, f32::NEG_INFINITY][self.g.range(0, 2)];
            }
        }
        v
    }

    fn labels(&mut self, len: usize, classes: usize) -> Vec<u32> {
        (0..len)
            .map(|_| self.g.range(0, classes - 1) as u32)
            .collect()
    }

    /// A parameter: usually `typical`, sometimes NaN, infinite, zero or negative.
    fn param(&mut self, typical: f32) -> f32 {
        match self.g.byte() % 12 {
            0 => f32::NAN,
            1 => f32::INFINITY,
            2 => f32::NEG_INFINITY,
            3 => 0.0,
            4 => -typical,
            5 => f32::MAX,
            _ => typical,
        }
    }
}

fn distances(c: &mut Case<'_>) {
    let (n, d) = (c.g.range(1, 9), c.g.range(1, 9));
    let xd = c.data(n * d);
    let x = Matrix::new(&xd, n, d).unwrap();
    let metric = c.g.metric();
    // Distances never scan their data.
    let ol = c.len_near(n * n);
    let wl = c.ws_near(tk::pairwise_distances_workspace_len(n, d));
    let (mut of, mut os, mut ws) = (vec![G; ol], vec![G; ol], vec![G; wl]);
    let rf = tk::pairwise_distances(x, metric, &mut of, &mut ws);
    let rs = scalar::pairwise_distances(x, metric, &mut os, &mut ws);
    let mut k = Conds::new(false);
    k.len("out", n * n, ol)
        .ws(tk::pairwise_distances_workspace_len(n, d), wl);
    k.check("pairwise_distances", &rf, &rs);
    if rf.is_err() {
        assert!(untouched(&of, G) && untouched(&os, G), "written on Err");
    }

    let (m, dy) = (
        c.g.range(1, 9),
        if c.g.byte() < 40 { c.g.range(1, 9) } else { d },
    );
    let yd = c.data(m * dy);
    let y = Matrix::new(&yd, m, dy).unwrap();
    let ol = c.len_near(n * m);
    let wl = c.ws_near(tk::cross_distances_workspace_len(n, m, d));
    let (mut of, mut os, mut ws) = (vec![G; ol], vec![G; ol], vec![G; wl]);
    let rf = tk::cross_distances(x, y, metric, &mut of, &mut ws);
    let rs = scalar::cross_distances(x, y, metric, &mut os, &mut ws);
    let mut k = Conds::new(false);
    k.add(dy == d, Error::DimensionMismatch { left: d, right: dy })
        .len("out", n * m, ol)
        .ws(tk::cross_distances_workspace_len(n, m, d), wl);
    k.check("cross_distances", &rf, &rs);
    if rf.is_err() {
        assert!(untouched(&of, G) && untouched(&os, G), "written on Err");
    }

    let ol = c.len_near(n);
    let (mut of, mut os) = (vec![G; ol], vec![G; ol]);
    let rf = tk::row_norms(x, &mut of);
    let rs = scalar::row_norms(x, &mut os);
    Conds::new(false)
        .len("out", n, ol)
        .check("row_norms", &rf, &rs);
    if rf.is_err() {
        assert!(untouched(&of, G) && untouched(&os, G));
    }

    let ol = c.len_near(n * d);
    let (mut of, mut os) = (vec![G; ol], vec![G; ol]);
    let rf = tk::l2_normalize(x, &mut of);
    let rs = scalar::l2_normalize(x, &mut os);
    Conds::new(false)
        .len("out", n * d, ol)
        .check("l2_normalize", &rf, &rs);
    if rf.is_err() {
        assert!(untouched(&of, G) && untouched(&os, G));
    }

    let gl = c.len_near(n * d);
    let go = c.data(gl);
    let ol = c.len_near(n * d);
    let (mut of, mut os) = (vec![G; ol], vec![G; ol]);
    let rf = tk::l2_normalize_backward(x, &go, &mut of);
    let rs = scalar::l2_normalize_backward(x, &go, &mut os);
    let mut k = Conds::new(false);
    k.len("grad_out", n * d, gl).len("grad_x", n * d, ol);
    k.check("l2_normalize_backward", &rf, &rs);
    if rf.is_err() {
        assert!(untouched(&of, G) && untouched(&os, G));
    }

    let vl = c.g.range(0, 20);
    let vals = c.data(vl);
    let (h, r) = (c.g.hinge(), c.g.reduction());
    let rf = tk::hinge_reduce(&vals, h, r);
    let rs = scalar::hinge_reduce(&vals, h, r);
    Conds::new(false).check("hinge_reduce", &rf, &rs);
    let gl = c.len_near(vals.len());
    let (mut of, mut os) = (vec![G; gl], vec![G; gl]);
    let rf = tk::hinge_reduce_grad(&vals, h, r, &mut of);
    let rs = scalar::hinge_reduce_grad(&vals, h, r, &mut os);
    Conds::new(false)
        .len("grad", vals.len(), gl)
        .check("hinge_reduce_grad", &rf, &rs);
    if rf.is_err() {
        assert!(untouched(&of, G) && untouched(&os, G));
    }
}

fn count(labels: &[u32], mining: Mining) -> usize {
    (0..labels.len())
        .map(|a| {
            let pos = (0..labels.len())
                .filter(|&j| j != a && labels[j] == labels[a])
                .count();
            let neg = labels.iter().filter(|&&l| l != labels[a]).count();
            match mining {
                Mining::All => pos * neg,
                Mining::BatchHard => usize::from(pos > 0 && neg > 0),
                Mining::SemiHard => pos * usize::from(neg > 0),
                _ => unreachable!("a variant this test does not know"),
            }
        })
        .sum()
}

fn mining(c: &mut Case<'_>) {
    let (n, d) = (c.g.range(1, 9), c.g.range(1, 6));
    let xd = c.data(n * d);
    let x = Matrix::new(&xd, n, d).unwrap();
    let classes = c.g.range(1, 4);
    let ll = c.len_near(n);
    let labels = c.labels(ll, classes);
    let metric = c.g.metric();
    let mining = c.g.mining();
    let want = count(&labels, mining);
    assert_eq!(tk::mine_triplets_count(&labels, mining), Ok(want));
    assert_eq!(scalar::mine_triplets_count(&labels, mining), Ok(want));

    let wneed = tk::hardest_pairs_workspace_len(n, d);
    let (pl, nl, wl) = (c.len_near(n), c.len_near(n), c.ws_near(wneed));
    let (mut pf, mut nf, mut ps, mut ns) = (vec![GI; pl], vec![GI; nl], vec![GI; pl], vec![GI; nl]);
    let mut ws = vec![G; wl];
    let rf = tk::hardest_pairs(x, &labels, metric, &mut pf, &mut nf, &mut ws);
    let rs = scalar::hardest_pairs(x, &labels, metric, &mut ps, &mut ns, &mut ws);
    let mut k = Conds::new(false);
    k.len("labels", n, ll)
        .len("positives", n, pl)
        .len("negatives", n, nl)
        .ws(wneed, wl)
        .finite("x", &xd, d)
        .range(&xd, d);
    k.check("hardest_pairs", &rf, &rs);
    if rf.is_err() {
        assert!(
            [&pf, &nf, &ps, &ns].iter().all(|v| untouched(v, GI)),
            "written on Err"
        );
    }

    let ol = c.len_near(want);
    let sentinel = Triplet::new(GI, GI, GI);
    let (mut of, mut os) = (vec![sentinel; ol], vec![sentinel; ol]);
    let wneed = tk::mine_triplets_workspace_len(n, d);
    let wl = c.ws_near(wneed);
    let mut ws = vec![G; wl];
    let rf = tk::mine_triplets(x, &labels, metric, mining, &mut of, &mut ws);
    let rs = scalar::mine_triplets(x, &labels, metric, mining, &mut os, &mut ws);
    let mut k = Conds::new(false);
    k.len("labels", n, ll)
        .add(
            ol >= want,
            Error::LengthMismatch {
                buffer: "out",
                expected: want,
                actual: ol,
            },
        )
        .ws(wneed, wl)
        .finite("x", &xd, d)
        .range(&xd, d);
    k.check("mine_triplets", &rf, &rs);
    match rf {
        Ok(written) => {
            assert_eq!(written, want);
            assert!(untouched(&of[want..], sentinel) && untouched(&os[want..], sentinel));
        }
        Err(_) => assert!(
            untouched(&of, sentinel) && untouched(&os, sentinel),
            "written on Err"
        ),
    }
}

fn triplets(c: &mut Case<'_>) {
    let (n, d) = (c.g.range(1, 9), c.g.range(1, 6));
    let xd = c.data(n * d);
    let x = Matrix::new(&xd, n, d).unwrap();
    let nt = c.g.range(0, 6);
    let ts: Vec<Triplet> = (0..nt)
        .map(|_| {
            let mut i = [0_u32; 3];
            for v in &mut i {
                let out_of_range = usize::from(c.g.byte() < 30);
                *v = c.g.range(0, n - 1 + out_of_range) as u32;
            }
            Triplet::new(i[0], i[1], i[2])
        })
        .collect();
    let metric = c.g.metric();
    let eps = match c.g.byte() % 6 {
        0 => c.param(1e-6),
        // Around the edges of |eps| <= 1.
        1 => [1.0, -1.0, 1.000_000_1, -1.000_000_1, 0.999_999_94][c.g.range(0, 4)],
        _ => 0.0,
    };
    let p = TripletParams::new()
        .with_metric(metric)
        .with_margin(c.param(1.0))
        .with_eps(eps)
        .with_swap(c.g.bool())
        .with_hinge(c.g.hinge())
        .with_reduction(c.g.reduction());
    let conds = |tl: usize, wl: usize, grad: Option<usize>, need: usize| {
        let mut k = Conds::new(false);
        k.param(p.margin.is_finite(), "margin", DOMAIN_FINITE)
            .param(
                p.eps.abs() <= 1.0 && !(metric == Metric::Cosine && p.eps != 0.0),
                "eps",
                DOMAIN_EPS,
            );
        k.len("terms", ts.len(), tl);
        if let Some((position, index)) = ts
            .iter()
            .flat_map(|t| [t.anchor, t.positive, t.negative])
            .enumerate()
            .find(|&(_, i)| i as usize >= n)
        {
            k.add(
                false,
                Error::IndexOutOfRange {
                    buffer: "triplets",
                    position,
                    index: index as usize,
                    bound: n,
                },
            );
        }
        k.ws(need, wl);
        if let Some(gl) = grad {
            k.len("grad", n * d, gl);
        }
        k.finite("x", &xd, d).range(&xd, d);
        k
    };
    let (need_f, need_s) = (
        tk::triplet_margin_loss_workspace_len(n, d),
        scalar::triplet_margin_loss_workspace_len(n, d),
    );
    let base = if c.g.bool() { need_f } else { need_s };
    let (tl, wl, gl) = (c.len_near(nt), c.ws_near(base), c.len_near(n * d));
    let (mut tf, mut tsc, mut ws) = (vec![G; tl], vec![G; tl], vec![G; wl]);
    let rf = tk::triplet_margin_loss(x, &ts, p, &mut tf, &mut ws);
    let rs = scalar::triplet_margin_loss(x, &ts, p, &mut tsc, &mut ws);
    conds(tl, wl, None, need_f).check_twin(
        &conds(tl, wl, None, need_s),
        "triplet_margin_loss",
        &rf,
        &rs,
    );
    // Each on its own: the twin's workspace condition differs.
    assert!(rf.is_ok() || untouched(&tf, G), "written on Err");
    assert!(rs.is_ok() || untouched(&tsc, G), "written on Err");
    let (mut gf, mut gs) = (vec![G; gl], vec![G; gl]);
    tf.fill(G);
    tsc.fill(G);
    let rf = tk::triplet_margin_loss_grad(x, &ts, p, &mut tf, &mut gf, &mut ws);
    let rs = scalar::triplet_margin_loss_grad(x, &ts, p, &mut tsc, &mut gs, &mut ws);
    conds(tl, wl, Some(gl), need_f).check_twin(
        &conds(tl, wl, Some(gl), need_s),
        "triplet_margin_loss_grad",
        &rf,
        &rs,
    );
    assert!(
        rf.is_ok() || untouched(&tf, G) && untouched(&gf, G),
        "written on Err"
    );
    assert!(
        rs.is_ok() || untouched(&tsc, G) && untouched(&gs, G),
        "written on Err"
    );

    // Batch losses.
    let ll = c.len_near(n);
    let classes = c.g.range(1, 4);
    let labels = c.labels(ll, classes);
    let margin = match c.g.byte() % 8 {
        // Around the edges of |margin| <= 2^100.
        0 => [
            MARGIN_MAX,
            -MARGIN_MAX,
            f32::from_bits(MARGIN_MAX.to_bits() + 1),
            1e31,
        ][c.g.range(0, 3)],
        _ => c.param(0.2),
    };
    let bp = BatchParams::new()
        .with_metric(metric)
        .with_mining(c.g.mining())
        .with_margin(margin)
        .with_hinge(c.g.hinge())
        .with_reduction(c.g.reduction())
        .with_normalize(c.g.bool());
    let need = tk::triplet_batch_loss_workspace_len(n, d, bp);
    let need_g = tk::triplet_batch_loss_grad_workspace_len(n, d, bp);
    let need_gs = scalar::triplet_batch_loss_grad_workspace_len(n, d, bp);
    let base = match c.g.byte() % 3 {
        0 => need,
        1 => need_g,
        _ => need_gs,
    };
    let wl = c.ws_near(base);
    let gl = c.len_near(n * d);
    let mut ws = vec![G; wl];
    let rf = tk::triplet_batch_loss(x, &labels, bp, &mut ws);
    let rs = scalar::triplet_batch_loss(x, &labels, bp, &mut ws);
    let mut k = Conds::new(false);
    k.param(bp.margin.abs() <= MARGIN_MAX, "margin", DOMAIN_BATCH_MARGIN)
        .len("labels", n, ll)
        .ws(need, wl)
        .finite("x", &xd, d);
    if !bp.normalize {
        k.range(&xd, d);
    }
    k.check("triplet_batch_loss", &rf, &rs);
    if let Ok(out) = rf {
        assert_eq!(out.num_triplets, count(&labels, bp.mining));
    }
    let (mut gf, mut gs) = (vec![G; gl], vec![G; gl]);
    let rf = tk::triplet_batch_loss_grad(x, &labels, bp, &mut gf, &mut ws);
    let rs = scalar::triplet_batch_loss_grad(x, &labels, bp, &mut gs, &mut ws);
    let conds = |need: usize| {
        let mut k = Conds::new(false);
        k.param(bp.margin.abs() <= MARGIN_MAX, "margin", DOMAIN_BATCH_MARGIN)
            .len("labels", n, ll)
            .len("grad", n * d, gl)
            .ws(need, wl)
            .finite("x", &xd, d);
        if !bp.normalize {
            k.range(&xd, d);
        }
        k
    };
    conds(need_g).check_twin(&conds(need_gs), "triplet_batch_loss_grad", &rf, &rs);
    assert!(rf.is_ok() || untouched(&gf, G), "written on Err");
    assert!(rs.is_ok() || untouched(&gs, G), "written on Err");
}

fn contrastive(c: &mut Case<'_>) {
    let (n, d) = (c.g.range(1, 9), c.g.range(1, 6));
    let xd = c.data(n * d);
    let x = Matrix::new(&xd, n, d).unwrap();
    let ll = c.len_near(n);
    let classes = c.g.range(1, 4);
    let labels = c.labels(ll, classes);
    let metric = c.g.metric();
    let p = ContrastiveParams::new(c.param(0.0), c.param(1.0))
        .with_form([ContrastiveForm::Linear, ContrastiveForm::Squared][c.g.range(0, 1)])
        .with_reduction(
            [
                ContrastiveReduction::MeanNonzeroPerPart,
                ContrastiveReduction::MeanPerPart,
                ContrastiveReduction::Mean,
                ContrastiveReduction::Sum,
            ][c.g.range(0, 3)],
        );
    let (need_f, need_s) = (
        tk::contrastive_loss_workspace_len(n, d),
        scalar::contrastive_loss_workspace_len(n, d),
    );
    let base = if c.g.bool() { need_f } else { need_s };
    let (wl, gl) = (c.ws_near(base), c.len_near(n * d));
    let conds = |grad: Option<usize>, need: usize| {
        let mut k = Conds::new(true);
        k.len("labels", n, ll);
        if let Some(gl) = grad {
            k.len("grad", n * d, gl);
        }
        k.ws(need, wl)
            .param(p.pos_margin.is_finite(), "pos_margin", DOMAIN_FINITE)
            .param(p.neg_margin.is_finite(), "neg_margin", DOMAIN_FINITE)
            .finite("x", &xd, d)
            .range(&xd, d);
        k
    };
    let mut ws = vec![G; wl];
    let rf = tk::contrastive_loss(x, &labels, metric, p, &mut ws);
    let rs = scalar::contrastive_loss(x, &labels, metric, p, &mut ws);
    conds(None, need_f).check_twin(&conds(None, need_s), "contrastive_loss", &rf, &rs);
    let (mut gf, mut gs) = (vec![G; gl], vec![G; gl]);
    let rf = tk::contrastive_loss_grad(x, &labels, metric, p, &mut gf, &mut ws);
    let rs = scalar::contrastive_loss_grad(x, &labels, metric, p, &mut gs, &mut ws);
    conds(Some(gl), need_f).check_twin(&conds(Some(gl), need_s), "contrastive_loss_grad", &rf, &rs);
    assert!(rf.is_ok() || untouched(&gf, G), "written on Err");
    assert!(rs.is_ok() || untouched(&gs, G), "written on Err");
}

fn quadruplets(c: &mut Case<'_>) {
    let (n, d) = (c.g.range(1, 9), c.g.range(1, 6));
    let xd = c.data(n * d);
    let x = Matrix::new(&xd, n, d).unwrap();
    let metric = c.g.metric();
    let nq = c.g.range(0, 6);
    let quads: Vec<Quadruplet> = (0..nq)
        .map(|_| {
            let mut q = [0_u32; 4];
            for v in &mut q {
                let out_of_range = usize::from(c.g.byte() < 30);
                *v = c.g.range(0, n - 1 + out_of_range) as u32;
            }
            Quadruplet::from(q)
        })
        .collect();
    let p = QuadrupletParams::new(c.param(1.0), c.param(0.5))
        .with_hinge(c.g.hinge())
        .with_reduction(c.g.reduction());
    let (need_f, need_s) = (
        tk::quadruplet_loss_workspace_len(n, d),
        scalar::quadruplet_loss_workspace_len(n, d),
    );
    let base = if c.g.bool() { need_f } else { need_s };
    let (wl, gl) = (c.ws_near(base), c.len_near(n * d));
    let conds = |grad: Option<usize>, need: usize| {
        let mut k = Conds::new(true);
        if let Some(gl) = grad {
            k.len("grad", n * d, gl);
        }
        k.ws(need, wl)
            .param(p.margin1.is_finite(), "margin1", DOMAIN_FINITE)
            .param(p.margin2.is_finite(), "margin2", DOMAIN_FINITE);
        if let Some((position, index)) = quads
            .iter()
            .flat_map(|q| q.to_array())
            .enumerate()
            .find(|&(_, i)| i as usize >= n)
        {
            k.add(
                false,
                Error::IndexOutOfRange {
                    buffer: "quadruplets",
                    position,
                    index: index as usize,
                    bound: n,
                },
            );
        }
        k.finite("x", &xd, d).range(&xd, d);
        k
    };
    let mut ws = vec![G; wl];
    let rf = tk::quadruplet_loss(x, &quads, metric, p, &mut ws);
    let rs = scalar::quadruplet_loss(x, &quads, metric, p, &mut ws);
    conds(None, need_f).check_twin(&conds(None, need_s), "quadruplet_loss", &rf, &rs);
    let (mut gf, mut gs) = (vec![G; gl], vec![G; gl]);
    let rf = tk::quadruplet_loss_grad(x, &quads, metric, p, &mut gf, &mut ws);
    let rs = scalar::quadruplet_loss_grad(x, &quads, metric, p, &mut gs, &mut ws);
    conds(Some(gl), need_f).check_twin(&conds(Some(gl), need_s), "quadruplet_loss_grad", &rf, &rs);
    assert!(rf.is_ok() || untouched(&gf, G), "written on Err");
    assert!(rs.is_ok() || untouched(&gs, G), "written on Err");

    // Mining.
    let ll = c.len_near(n);
    let classes = c.g.range(1, 5);
    let labels = c.labels(ll, classes);
    let count = tk::mine_quadruplets_count(&labels).unwrap();
    assert_eq!(scalar::mine_quadruplets_count(&labels), Ok(count));
    let distinct = {
        let mut l = labels.clone();
        l.sort_unstable();
        l.dedup();
        l.len()
    };
    let want = if distinct >= 3 {
        (0..ll)
            .filter(|&i| (0..ll).any(|j| j != i && labels[j] == labels[i]))
            .count()
    } else {
        0
    };
    assert_eq!(count, want, "mine_quadruplets_count");
    let need = tk::mine_quadruplets_workspace_len(n, d);
    let (wl, ol) = (c.ws_near(need), c.len_near(count));
    let sentinel = Quadruplet::new(GI, GI, GI, GI);
    let (mut of, mut os, mut ws) = (vec![sentinel; ol], vec![sentinel; ol], vec![G; wl]);
    let rf = tk::mine_quadruplets(x, &labels, metric, &mut of, &mut ws);
    let rs = scalar::mine_quadruplets(x, &labels, metric, &mut os, &mut ws);
    let mut k = Conds::new(true);
    k.len("labels", n, ll).ws(need, wl).add(
        ol >= count,
        Error::LengthMismatch {
            buffer: "out",
            expected: count,
            actual: ol,
        },
    );
    k.finite("x", &xd, d).range(&xd, d);
    k.check("mine_quadruplets", &rf, &rs);
    match rf {
        Ok(written) => {
            assert_eq!(written, count);
            assert!(untouched(&of[count..], sentinel) && untouched(&os[count..], sentinel));
        }
        Err(_) => assert!(
            untouched(&of, sentinel) && untouched(&os, sentinel),
            "written on Err"
        ),
    }
}

fn proxies(c: &mut Case<'_>) {
    let (n, d, classes) = (c.g.range(1, 9), c.g.range(1, 6), c.g.range(1, 5));
    let dp = if c.g.byte() < 30 { c.g.range(1, 6) } else { d };
    let xd = c.data(n * d);
    let pd = c.data(classes * dp);
    let x = Matrix::new(&xd, n, d).unwrap();
    let pm = Matrix::new(&pd, classes, dp).unwrap();
    let ll = c.len_near(n);
    let labels: Vec<u32> = (0..ll)
        .map(|_| {
            let out_of_range = usize::from(c.g.byte() < 20);
            c.g.range(0, classes - 1 + out_of_range) as u32
        })
        .collect();
    let nca = c.g.bool();
    let (np, ap) = (
        ProxyNcaParams::new(c.param(1.0)),
        ProxyAnchorParams::new(c.param(0.1), c.param(32.0)),
    );
    let (need_f, need_s) = if nca {
        (
            tk::proxy_nca_loss_workspace_len(n, classes, d),
            scalar::proxy_nca_loss_workspace_len(n, classes, d),
        )
    } else {
        (
            tk::proxy_anchor_loss_workspace_len(n, classes, d),
            scalar::proxy_anchor_loss_workspace_len(n, classes, d),
        )
    };
    let base = if c.g.bool() { need_f } else { need_s };
    let (wl, gl, gpl) = (c.ws_near(base), c.len_near(n * d), c.len_near(classes * dp));
    let conds = |grads: bool, need: usize| {
        let mut k = Conds::new(true);
        k.add(d == dp, Error::DimensionMismatch { left: d, right: dp })
            .len("labels", n, ll);
        if grads {
            k.len("grad", n * d, gl)
                .len("grad_proxies", classes * dp, gpl);
        }
        k.ws(need, wl);
        if nca {
            let s = np.softmax_scale;
            k.param(s.is_finite() && s > 0.0, "softmax_scale", DOMAIN_POSITIVE);
        } else {
            k.param(ap.margin.is_finite(), "margin", DOMAIN_FINITE)
                .param(
                    ap.alpha.is_finite() && ap.alpha > 0.0,
                    "alpha",
                    DOMAIN_POSITIVE,
                );
        }
        if let Some((position, &l)) = labels
            .iter()
            .enumerate()
            .find(|&(_, &l)| l as usize >= classes)
        {
            k.add(
                false,
                Error::IndexOutOfRange {
                    buffer: "labels",
                    position,
                    index: l as usize,
                    bound: classes,
                },
            );
        }
        k.finite("x", &xd, d).finite("proxies", &pd, d);
        k
    };
    let mut ws = vec![G; wl];
    let (rf, rs) = if nca {
        (
            tk::proxy_nca_loss(x, &labels, pm, np, &mut ws),
            scalar::proxy_nca_loss(x, &labels, pm, np, &mut ws),
        )
    } else {
        (
            tk::proxy_anchor_loss(x, &labels, pm, ap, &mut ws),
            scalar::proxy_anchor_loss(x, &labels, pm, ap, &mut ws),
        )
    };
    conds(false, need_f).check_twin(&conds(false, need_s), "proxy loss", &rf, &rs);
    let (mut gf, mut gs, mut gpf, mut gps) = (vec![G; gl], vec![G; gl], vec![G; gpl], vec![G; gpl]);
    let (rf, rs) = if nca {
        (
            tk::proxy_nca_loss_grad(x, &labels, pm, np, &mut gf, &mut gpf, &mut ws),
            scalar::proxy_nca_loss_grad(x, &labels, pm, np, &mut gs, &mut gps, &mut ws),
        )
    } else {
        (
            tk::proxy_anchor_loss_grad(x, &labels, pm, ap, &mut gf, &mut gpf, &mut ws),
            scalar::proxy_anchor_loss_grad(x, &labels, pm, ap, &mut gs, &mut gps, &mut ws),
        )
    };
    conds(true, need_f).check_twin(&conds(true, need_s), "proxy loss grad", &rf, &rs);
    assert!(
        rf.is_ok() || untouched(&gf, G) && untouched(&gpf, G),
        "written on Err"
    );
    assert!(
        rs.is_ok() || untouched(&gs, G) && untouched(&gps, G),
        "written on Err"
    );
}

fn retrieval(c: &mut Case<'_>) {
    let (n, d) = (c.g.range(1, 9), c.g.range(1, 6));
    let xd = c.data(n * d);
    let x = Matrix::new(&xd, n, d).unwrap();
    let gallery = c.g.bool();
    let (m, dy) = (
        c.g.range(1, 9),
        if c.g.byte() < 30 { c.g.range(1, 6) } else { d },
    );
    let yd = if gallery { c.data(m * dy) } else { Vec::new() };
    let y = gallery.then(|| Matrix::new(&yd, m, dy).unwrap());
    let refs_rows = if gallery { m } else { n };
    let available = if gallery { m } else { n - 1 };
    let metric = c.g.metric();
    let k = match c.g.byte() % 6 {
        0 => 0,
        1 => available + 1,
        _ => c.g.range(1, available.max(1)),
    };
    let (need_f, need_s) = (
        tk::knn_workspace_len(n, refs_rows, d),
        scalar::knn_workspace_len(n, refs_rows, d),
    );
    let base = if c.g.bool() { need_f } else { need_s };
    let (il, dl, wl) = (c.len_near(n * k), c.len_near(n * k), c.ws_near(base));
    let (mut i_f, mut i_s) = (vec![GI; il], vec![GI; il]);
    let (mut d_f, mut d_s, mut ws) = (vec![G; dl], vec![G; dl], vec![G; wl]);
    let rf = tk::knn(x, y, metric, k, &mut i_f, &mut d_f, &mut ws);
    let rs = scalar::knn(x, y, metric, k, &mut i_s, &mut d_s, &mut ws);
    // The data are not scanned: NaN and infinity are accepted.
    let knn_conds = |need: usize| {
        let mut kc = Conds::new(false);
        kc.add(
            !gallery || dy == d,
            Error::DimensionMismatch { left: d, right: dy },
        )
        .param(k >= 1 && k <= available, "k", DOMAIN_K)
        .len("indices", n * k, il)
        .len("distances", n * k, dl)
        .ws(need, wl);
        kc
    };
    knn_conds(need_f).check_twin(&knn_conds(need_s), "knn", &rf, &rs);
    // The fast kernel and the twin size their workspaces differently (the fast one needs
    // more for a small gallery, less for a large one), so each call is checked on its own.
    assert!(
        rf.is_ok() || untouched(&i_f, GI) && untouched(&d_f, G),
        "knn wrote on Err"
    );
    assert!(
        rs.is_ok() || untouched(&i_s, GI) && untouched(&d_s, G),
        "twin knn wrote on Err"
    );

    let classes = c.g.range(1, 4);
    let ll = c.len_near(n);
    let labels = c.labels(ll, classes);
    let rll = c.len_near(m);
    let ref_labels = c.labels(rll, classes);
    let reference = y.map(|y| (y, &ref_labels[..]));
    let kr = c.g.range(0, available + 2);
    let (need_f, need_s) = (
        tk::retrieval_metrics_workspace_len(n, refs_rows, d),
        scalar::retrieval_metrics_workspace_len(n, refs_rows, d),
    );
    let base = if c.g.bool() { need_f } else { need_s };
    let wl = c.ws_near(base);
    let mut ws = vec![G; wl];
    let rf = tk::retrieval_metrics(x, &labels, reference, metric, kr, &mut ws);
    let rs = scalar::retrieval_metrics(x, &labels, reference, metric, kr, &mut ws);
    let metrics_conds = |need: usize| {
        let mut kc = Conds::new(false);
        kc.add(
            !gallery || dy == d,
            Error::DimensionMismatch { left: d, right: dy },
        )
        .len("labels", n, ll);
        if gallery {
            kc.len("reference_labels", m, rll);
        }
        kc.param(kr >= 1 && kr <= available, "k", DOMAIN_K)
            .ws(need, wl)
            .finite("queries", &xd, d);
        if gallery {
            kc.finite("reference", &yd, d);
        }
        kc
    };
    metrics_conds(need_f).check_twin(&metrics_conds(need_s), "retrieval_metrics", &rf, &rs);
}

/// Shapes, and the saturating workspace queries on any size.
fn shapes(c: &mut Case<'_>) {
    let big = |c: &mut Case<'_>| match c.g.byte() % 4 {
        0 => usize::MAX - usize::from(c.g.byte()),
        1 => usize::MAX / 2 + usize::from(c.g.u16()),
        2 => 1 << (c.g.byte() % 64),
        _ => usize::from(c.g.u16()),
    };
    let (r, s, d) = (big(c), big(c), big(c));
    let bp = BatchParams::new().with_normalize(c.g.bool());
    let _ = (
        tk::pairwise_distances_workspace_len(r, d),
        tk::cross_distances_workspace_len(r, s, d),
        tk::mine_triplets_workspace_len(r, d),
        tk::hardest_pairs_workspace_len(r, d),
        tk::triplet_margin_loss_workspace_len(r, d),
        tk::triplet_batch_loss_workspace_len(r, d, bp),
        tk::triplet_batch_loss_grad_workspace_len(r, d, bp),
        tk::contrastive_loss_workspace_len(r, d),
        tk::quadruplet_loss_workspace_len(r, d),
        tk::mine_quadruplets_workspace_len(r, d),
        tk::proxy_nca_loss_workspace_len(r, s, d),
        tk::proxy_anchor_loss_workspace_len(r, s, d),
        tk::knn_workspace_len(r, s, d),
        tk::retrieval_metrics_workspace_len(r, s, d),
    );
    let _ = (
        scalar::triplet_margin_loss_workspace_len(r, d),
        scalar::triplet_batch_loss_grad_workspace_len(r, d, bp),
        scalar::contrastive_loss_workspace_len(r, d),
        scalar::quadruplet_loss_workspace_len(r, d),
        scalar::proxy_nca_loss_workspace_len(r, s, d),
        scalar::proxy_anchor_loss_workspace_len(r, s, d),
        scalar::knn_workspace_len(r, s, d),
        scalar::retrieval_metrics_workspace_len(r, s, d),
    );
    // Matrix::new: Ok exactly for a non-empty shape whose area is the data length.
    let rows = if c.g.bool() { r } else { c.g.range(0, 64) };
    let dim = c.g.range(0, 64);
    let data = vec![0.5_f32; c.g.range(0, 2048)];
    let x = Matrix::new(&data, rows, dim);
    let ok = rows.checked_mul(dim).is_some_and(|l| l == data.len()) && rows > 0 && dim > 0;
    assert_eq!(x.is_ok(), ok, "{x:?}");
    if let Err(e) = x {
        let want = match rows.checked_mul(dim) {
            None => Error::ShapeOverflow { rows, cols: dim },
            Some(_) if rows == 0 || dim == 0 => Error::EmptyMatrix { rows, cols: dim },
            Some(l) => Error::LengthMismatch {
                buffer: "data",
                expected: l,
                actual: data.len(),
            },
        };
        assert_eq!(e, want);
    }
}

fuzz_target!(|data: &[u8]| {
    let mut c = Case { g: Gen::new(data) };
    match c.g.byte() % 8 {
        0 => distances(&mut c),
        1 => mining(&mut c),
        2 => triplets(&mut c),
        3 => contrastive(&mut c),
        4 => quadruplets(&mut c),
        5 => proxies(&mut c),
        6 => retrieval(&mut c),
        _ => shapes(&mut c),
    }
});
