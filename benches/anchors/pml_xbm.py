"""The pytorch-metric-learning side of X1 (a cross-batch memory step), benches/workloads.rs.

Run it in the same session as `cargo bench --bench workloads -- X1_`:

    python3 -m venv venv && venv/bin/pip install torch pytorch-metric-learning
    venv/bin/python benches/anchors/pml_xbm.py

`CrossBatchMemory(TripletMarginLoss(), embedding_size=128, memory_size=8192,
miner=BatchHardMiner())`: 256 queries of dimension 128 per step, standard normal data,
query labels `i mod 64`, one thread. The memory is filled by 32 untimed steps first, so
every timed step mines 256 queries against 8,192 rows (its own queries among them, as
the crate's bench holds them). Each timed call is the loss forward plus backward (the
gradient for the queries; the memory is detached). Prints the best and the median of the
timed calls, in ms.
"""

import time

import pytorch_metric_learning
import torch
from pytorch_metric_learning.losses import CrossBatchMemory, TripletMarginLoss
from pytorch_metric_learning.miners import BatchHardMiner

torch.set_num_threads(1)
torch.manual_seed(0)
Q, M, D = 256, 8192, 128


def timed(call, reps=20):
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
    loss_fn = CrossBatchMemory(
        TripletMarginLoss(), embedding_size=D, memory_size=M, miner=BatchHardMiner()
    )
    labels = torch.arange(Q) % 64
    for _ in range(M // Q):
        loss_fn(torch.randn(Q, D), labels)
    x = torch.randn(Q, D, requires_grad=True)

    def call():
        x.grad = None
        loss_fn(x, labels).backward()

    best, median = timed(call)
    print(f"X1_batch_hard_xbm_fwd_bwd_q256_m8192_d128: best {best * 1e3:.2f} ms, median {median * 1e3:.2f} ms")


if __name__ == "__main__":
    main()
