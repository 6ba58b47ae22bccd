"""The pytorch-metric-learning side of W10 (ArcFace) and W11 (CosFace), benches/faces.rs.

Run it in the same session as `cargo bench --bench faces`:

    python3 -m venv venv && venv/bin/pip install torch pytorch-metric-learning
    venv/bin/python benches/anchors/pml_faces.py

256 rows, 1,000 classes, d = 512, standard normal data, labels `7 i mod C` as the bench,
pml's defaults (ArcFace margin 28.6 degrees, CosFace margin 0.35, scale 64), one thread;
each timed call is the loss forward plus backward (gradients for the rows and the class
weights). Prints the best and the median of the timed calls, in ms.
"""

import time

import pytorch_metric_learning
import torch
from pytorch_metric_learning.losses import ArcFaceLoss, CosFaceLoss

torch.set_num_threads(1)
torch.manual_seed(0)
N, C, D = 256, 1000, 512


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
    x = torch.randn(N, D, requires_grad=True)
    labels = torch.arange(N) * 7 % C
    for name, loss_fn in [
        ("W10_arcface_fwd_bwd_n256_c1000_d512", ArcFaceLoss(num_classes=C, embedding_size=D)),
        ("W11_cosface_fwd_bwd_n256_c1000_d512", CosFaceLoss(num_classes=C, embedding_size=D)),
    ]:
        def call():
            x.grad = None
            loss_fn.W.grad = None
            loss_fn(x, labels).backward()

        best, median = timed(call)
        print(f"{name}: best {best * 1e3:.2f} ms, median {median * 1e3:.2f} ms")


if __name__ == "__main__":
    main()
