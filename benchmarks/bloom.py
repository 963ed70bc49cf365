"""Bloom summary: 1M random digests into a filter sized for 1% FPR; size, FPR and speed.

The FPR is measured on other random digests and reported against the filter's own theory
(fpr_ratio = fpr / fpr_theory, the baseline being the textbook formula for this m, k and n).
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from _common import Timer, emit, log, parse  # noqa: E402

from meshcache.core.bloom import BloomFilter  # noqa: E402

N = 1_000_000


def main() -> None:
    args = parse(__doc__.splitlines()[0])
    probes = 200_000 if args.quick else N
    entries = os.urandom(32 * N)
    others = os.urandom(32 * probes)
    f = BloomFilter.for_capacity(N, 0.01)
    with Timer() as t_add:
        f.add_many(entries)
    with Timer() as t_test:
        hits = f.contains_many(others)
    with Timer() as t_neg:
        assert all(f.contains_many(entries[:32 * probes])), "false negative"
    fpr = sum(hits) / probes
    theory = f.fpr_theory(N)
    # single-call path, for reference (pure Python per digest)
    few = 20_000
    with Timer() as t_single:
        for i in range(0, 32 * few, 32):
            entries[i:i + 32] in f
    size = len(f.encode())
    log(f"m={f.m} bits k={f.k} encoded={size} B; single `in`: {few / t_single.seconds:,.0f}/s; "
        f"members re-tested at {probes / t_neg.seconds:,.0f}/s")
    emit({"bytes": size, "fpr": fpr, "fpr_theory": theory,
          "adds_per_s": round(N / t_add.seconds), "tests_per_s": round(probes / t_test.seconds),
          "fpr_ratio": fpr / theory, "single_tests_per_s": round(few / t_single.seconds),
          "entries": N, "probes": probes})


if __name__ == "__main__":
    main()
