"""The pytorch-metric-learning side of M1 (semi-hard threshold mining) and W9
(multi-similarity loss over all pairs), benches/miners.rs.

Run it in the same session as `cargo bench --bench miners -- "M1|W9"`:

    python3 -m venv venv && venv/bin/pip install torch pytorch-metric-learning
    venv/bin/python benches/anchors/pml_miners.py

- M1: `TripletMarginMiner(margin=0.2, type_of_triplets="semihard")` alone (no loss) on
  256 L2-normalised standard normal rows of dimension 128, P x K labels `i // 8`, pml's
  default distance (Euclidean distance of normalised rows), as the bench.
- W9: `MultiSimilarityLoss()` (alpha 2, beta 50, base 0.5, cosine similarity) forward
  plus backward over every pair of 1024 standard normal rows of dimension 256, P x K
  labels `i // 4`, as the bench.

One thread. Prints the best and the median of the timed calls, in ms.
"""

import time

import pytorch_metric_learning
import torch
from pytorch_metric_learning.losses import MultiSimilarityLoss
from pytorch_metric_learning.miners import TripletMarginMiner

torch.set_num_threads(1)
torch.manual_seed(0)


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

    n, d = 256, 128
    x = torch.nn.functional.normalize(torch.randn(n, d), dim=1)
    labels = torch.arange(n) // 8
    miner = TripletMarginMiner(margin=0.2, type_of_triplets="semihard")

    def mine():
        with torch.no_grad():
            miner(x, labels)

    best, median = timed(mine)
    print(f"M1_triplet_mine_semihard_n256_d128: best {best * 1e3:.2f} ms, median {median * 1e3:.2f} ms")

    n, d = 1024, 256
    x = torch.randn(n, d, requires_grad=True)
    labels = torch.arange(n) // 4
    loss_fn = MultiSimilarityLoss()

    def fwd_bwd():
        x.grad = None
        loss_fn(x, labels).backward()

    best, median = timed(fwd_bwd, reps=20)
    print(f"W9_multi_similarity_fwd_bwd_n1024_d256: best {best * 1e3:.2f} ms, median {median * 1e3:.2f} ms")


if __name__ == "__main__":
    main()
