//! Proxy-NCA and Proxy-Anchor behind one enum: the fast kernel or its scalar twin, and
//! the tolerances of [`crate::bounds`].

use crate::bounds::{proxy_anchor_tolerances, proxy_nca_tolerances};
use triplet_kernels::{
    proxy_anchor_loss, proxy_anchor_loss_grad, proxy_anchor_loss_workspace_len, proxy_nca_loss,
    proxy_nca_loss_grad, proxy_nca_loss_workspace_len, scalar, Error, Matrix, ProxyAnchorParams,
    ProxyNcaParams,
};

#[derive(Clone, Copy, Debug)]
pub enum Proxy {
    Nca(ProxyNcaParams),
    Anchor(ProxyAnchorParams),
}

impl Proxy {
    /// The workspace the fast kernel (`fast`) or the twin needs.
    pub fn ws_need(self, fast: bool, n: usize, c: usize, d: usize) -> usize {
        match (self, fast) {
            (Proxy::Nca(_), true) => proxy_nca_loss_workspace_len(n, c, d),
            (Proxy::Nca(_), false) => scalar::proxy_nca_loss_workspace_len(n, c, d),
            (Proxy::Anchor(_), true) => proxy_anchor_loss_workspace_len(n, c, d),
            (Proxy::Anchor(_), false) => scalar::proxy_anchor_loss_workspace_len(n, c, d),
        }
    }

    /// A workspace for both the fast kernel and the twin.
    pub fn ws_len(self, n: usize, c: usize, d: usize) -> usize {
        self.ws_need(true, n, c, d)
            .max(self.ws_need(false, n, c, d))
    }

    /// The loss alone, fast or twin.
    pub fn loss(
        self,
        fast: bool,
        x: Matrix<'_>,
        l: &[u32],
        p: Matrix<'_>,
        ws: &mut [f32],
    ) -> Result<f32, Error> {
        match (self, fast) {
            (Proxy::Nca(q), true) => proxy_nca_loss(x, l, p, q, ws),
            (Proxy::Nca(q), false) => scalar::proxy_nca_loss(x, l, p, q, ws),
            (Proxy::Anchor(q), true) => proxy_anchor_loss(x, l, p, q, ws),
            (Proxy::Anchor(q), false) => scalar::proxy_anchor_loss(x, l, p, q, ws),
        }
    }

    /// The loss with the gradients of the embeddings (`g`) and of the proxies (`gp`).
    #[allow(clippy::too_many_arguments)]
    pub fn grad(
        self,
        fast: bool,
        x: Matrix<'_>,
        l: &[u32],
        p: Matrix<'_>,
        g: &mut [f32],
        gp: &mut [f32],
        ws: &mut [f32],
    ) -> Result<f32, Error> {
        match (self, fast) {
            (Proxy::Nca(q), true) => proxy_nca_loss_grad(x, l, p, q, g, gp, ws),
            (Proxy::Nca(q), false) => scalar::proxy_nca_loss_grad(x, l, p, q, g, gp, ws),
            (Proxy::Anchor(q), true) => proxy_anchor_loss_grad(x, l, p, q, g, gp, ws),
            (Proxy::Anchor(q), false) => scalar::proxy_anchor_loss_grad(x, l, p, q, g, gp, ws),
        }
    }

    /// `(loss tolerance, per-row factor, per-proxy factor)`: the gradient tolerance of a
    /// row is its factor divided by the row's clamped norm.
    pub fn tolerances(self, n: usize, c: usize, d: usize) -> (f64, f64, f64) {
        match self {
            Proxy::Nca(q) => proxy_nca_tolerances(q, n, c, d),
            Proxy::Anchor(q) => proxy_anchor_tolerances(q, n, c, d),
        }
    }
}
