"""Throughput of "sim" negative pairing: vectorized HashIndex.query vs the per-query loop query_naive.

Random non-negative 256-d codes stand in for 16x16 hashes (the cost does not depend on the values).
Every query excludes itself by name and its patient, as in training.

    python benchmarks/bench_pairing.py                     # 60k index codes, 2,000 + 112,120 queries
    python benchmarks/bench_pairing.py --index 63000 --naive 200 --threads 2
"""

from __future__ import annotations

import argparse
import os
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--index", type=int, default=60_000, help="codes in the index (No Finding images)")
    parser.add_argument("--queries", type=int, default=2_000, help="queries for the query-vs-naive comparison")
    parser.add_argument("--naive", type=int, default=300, help="queries timed with query_naive")
    parser.add_argument("--full", type=int, default=112_120, help="queries of the full-dataset run (0: skip)")
    parser.add_argument("--chunk", type=int, default=4096)
    parser.add_argument("--threads", type=int, default=None, help="BLAS threads (sets OMP/OPENBLAS/MKL vars)")
    args = parser.parse_args()
    if args.threads:
        for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
            os.environ[var] = str(args.threads)

    import numpy as np  # after the thread variables

    from cianet.negatives import HashIndex, query_naive

    rng = np.random.default_rng(0)
    m = args.index
    patients = [f"{p:08d}" for p in rng.integers(0, max(1, m // 2), m)]
    index = HashIndex(rng.random((m, 256), dtype=np.float32), [f"n{i}" for i in range(m)], patients)

    def queries(q: int):
        codes = rng.random((q, 256), dtype=np.float32)
        rows = rng.integers(0, m, q)  # pretend each query is an index member: self + patient exclusion
        return codes, [index.names[r] for r in rows], [index.patients[r] for r in rows]

    codes, names, pats = queries(args.queries)
    t0, c0 = time.perf_counter(), time.process_time()
    fast = index.query(codes, exclude_names=names, exclude_patients=pats, chunk=args.chunk)
    t_fast, c_fast = time.perf_counter() - t0, time.process_time() - c0

    n = min(args.naive, args.queries)
    t0, c0 = time.perf_counter(), time.process_time()
    slow = query_naive(index, codes[:n], exclude_names=names[:n], exclude_patients=pats[:n])
    t_naive, c_naive = time.perf_counter() - t0, time.process_time() - c0
    agree = float(np.mean(fast[:n] == slow))

    print(f"index {m:,} codes x 256, chunk {args.chunk}, threads {args.threads or 'default'}")
    print("(wall time; CPU time of all threads in brackets: on a shared machine wall > CPU / threads)")
    print(f"query        {args.queries:>7,} queries  {t_fast:8.2f} s [{c_fast:6.2f}]  {args.queries / t_fast:>10,.0f} queries/s")
    print(f"query_naive  {n:>7,} queries  {t_naive:8.2f} s [{c_naive:6.2f}]  {n / t_naive:>10,.0f} queries/s"
          f"  (speed-up x{(args.queries / t_fast) / (n / t_naive):,.0f}, same answer on {agree:.1%})")
    if args.full:
        codes, names, pats = queries(args.full)
        t0, c0 = time.perf_counter(), time.process_time()
        index.query(codes, exclude_names=names, exclude_patients=pats, chunk=args.chunk)
        t_full, c_full = time.perf_counter() - t0, time.process_time() - c0
        print(f"query        {args.full:>7,} queries  {t_full:8.2f} s [{c_full:6.2f}]  {args.full / t_full:>10,.0f} queries/s")


if __name__ == "__main__":
    main()
