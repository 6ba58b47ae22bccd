"""The faiss side of the retrieval workloads R1-R4 (benches/common/workloads.rs).

Run it in the same session as `cargo bench --bench workloads -- R` so both sides see the
same machine state:

    python3 -m venv venv && venv/bin/pip install faiss-cpu numpy
    venv/bin/python benches/anchors/faiss_knn.py          # one thread, as the benches

Shapes and k are those of the workload table; data are standard normal (numpy's
generator: the values differ from the Rust generator's, the distribution does not).
Squared Euclidean uses `IndexFlatL2`. Cosine uses `IndexFlatIP` over a gallery
normalised once at enrolment (outside the timing), the queries normalised inside each
timed call. Each line prints the best and the median of the timed calls, in ms.
"""

import sys
import time

import faiss
import numpy as np

THREADS = int(sys.argv[1]) if len(sys.argv) > 1 else 1
faiss.omp_set_num_threads(THREADS)
RNG = np.random.default_rng(0)
K = 10

WORKLOADS = [
    ("R1_knn_q1024_g8192_d64_k10_sqeuclid", 1024, 8192, 64, "l2", 20),
    ("R2_knn_q1024_g8192_d64_k10_cosine", 1024, 8192, 64, "cos", 20),
    ("R3_knn_q1000_g100000_d128_k10_sqeuclid", 1000, 100_000, 128, "l2", 5),
    ("R4_knn_q1_g100000_d128_k10_cosine", 1, 100_000, 128, "cos", 50),
    ("R4_knn_q1_g100000_d128_k10_sqeuclid", 1, 100_000, 128, "l2", 50),
]


def timed(call, reps):
    call()
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        call()
        times.append(time.perf_counter() - t)
    times.sort()
    return times[0], times[len(times) // 2]


def main():
    print(f"faiss {faiss.__version__}, numpy {np.__version__}, {THREADS} thread(s)")
    for name, nq, ng, d, metric, reps in WORKLOADS:
        q = RNG.standard_normal((nq, d), dtype=np.float32)
        g = RNG.standard_normal((ng, d), dtype=np.float32)
        if metric == "cos":
            index = faiss.IndexFlatIP(d)
            index.add(g / np.linalg.norm(g, axis=1, keepdims=True))

            def call():
                index.search(q / np.linalg.norm(q, axis=1, keepdims=True), K)
        else:
            index = faiss.IndexFlatL2(d)
            index.add(g)

            def call():
                index.search(q, K)

        best, median = timed(call, reps)
        print(f"{name}: best {best * 1e3:.2f} ms, median {median * 1e3:.2f} ms")


if __name__ == "__main__":
    main()
