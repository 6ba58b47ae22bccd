"""The PyTorch side of W7 (InfoNCE) and W8 (SupCon), benches/faces.rs.

Run it in the same session as `cargo bench --bench faces -- 'W7|W8'`:

    python3 -m venv venv && venv/bin/pip install torch pytorch-metric-learning
    venv/bin/python benches/anchors/pml_nce.py

W7: the hand-written InfoNCE of text retrieval with in-batch negatives (as
sentence-transformers' MultipleNegativesRankingLoss computes it): cross-entropy over
20 x the cosine similarities of 1024 queries against 1024 documents, d = 256, query i's
positive is document i; gradients for the queries and the documents.
W8: pml's `SupConLoss` (temperature 0.1) on 1024 rows, d = 256, 256 classes of 4 rows
(`labels[i] = i / 4`, as the bench); gradient for the rows.
Standard normal data, one thread; each timed call is the forward plus the backward.
Prints the best and the median of the timed calls, in ms.
"""

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import time

import pytorch_metric_learning
import torch
import torch.nn.functional as F
from pytorch_metric_learning.losses import SupConLoss

torch.set_num_threads(1)
torch.manual_seed(0)
N, D, K = 1024, 256, 4


def timed(call, reps=30):
    for _ in range(3):
        call()
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        call()
        times.append(time.perf_counter() - t)
    times.sort()
    return times[0], times[len(times) // 2]


def main():
    print(f"torch {torch.__version__}, pytorch-metric-learning {pytorch_metric_learning.__version__}, 1 thread")
    q = torch.randn(N, D, requires_grad=True)
    docs = torch.randn(N, D, requires_grad=True)
    target = torch.arange(N)

    def infonce():
        q.grad = None
        docs.grad = None
        scores = 20.0 * (F.normalize(q, dim=1) @ F.normalize(docs, dim=1).T)
        F.cross_entropy(scores, target).backward()

    best, median = timed(infonce)
    print(f"W7_infonce_fwd_bwd_n1024_d256: best {best * 1e3:.2f} ms, median {median * 1e3:.2f} ms")

    x = torch.randn(N, D, requires_grad=True)
    labels = torch.arange(N) // K
    supcon = SupConLoss(temperature=0.1)

    def sup():
        x.grad = None
        supcon(x, labels).backward()

    best, median = timed(sup)
    print(f"W8_supcon_fwd_bwd_n1024_d256: best {best * 1e3:.2f} ms, median {median * 1e3:.2f} ms")


if __name__ == "__main__":
    main()
