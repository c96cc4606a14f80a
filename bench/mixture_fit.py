"""Benchmark: error-aware mixture fit time against scikit-learn's GaussianMixture.

Both fit the same synthetic window (planted slice, PCA-sized embedding) with the same
settings: diagonal covariance, the same component count, the same iteration cap and
tolerance. Ratios come from one run on one machine, so both sides share its load.

    .venv/bin/python bench/mixture_fit.py --sizes 10000 50000 --dim 128 --components 25
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
import warnings
from pathlib import Path

from sklearn.exceptions import ConvergenceWarning
from sklearn.mixture import GaussianMixture
from threadpoolctl import threadpool_info

from agent.simulate import planted_gaussian
from agent.slicing import ErrorAwareMixture


def _best_of(repeats: int, fit) -> tuple[float, object]:
    best, model = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        model = fit()
        best = min(best, time.perf_counter() - start)
    return best, model


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 50_000])
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--components", type=int, default=25)
    parser.add_argument("--max-iter", type=int, default=100)
    parser.add_argument("--tol", type=float, default=1e-3)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()

    warnings.simplefilter("ignore", ConvergenceWarning)
    rows = []
    for n in args.sizes:
        data = planted_gaussian(n, args.dim, n_clusters=12, seed=0)
        ours_s, ours = _best_of(
            args.repeats,
            lambda d=data: ErrorAwareMixture(
                args.components, max_iter=args.max_iter, tol=args.tol, random_state=0
            ).fit(d.X, d.y, d.y_pred),
        )
        sk_s, sk = _best_of(
            args.repeats,
            lambda d=data: GaussianMixture(
                args.components,
                covariance_type="diag",
                max_iter=args.max_iter,
                tol=args.tol,
                reg_covar=1e-6,
                random_state=0,
            ).fit(d.X),
        )
        row = {
            "n": n,
            "dim": args.dim,
            "components": args.components,
            "error_aware_seconds": round(ours_s, 3),
            "error_aware_iterations": ours.n_iter_,
            "sklearn_seconds": round(sk_s, 3),
            "sklearn_iterations": sk.n_iter_,
            "error_aware_ms_per_iteration": round(1000 * ours_s / ours.n_iter_, 2),
            "sklearn_ms_per_iteration": round(1000 * sk_s / sk.n_iter_, 2),
            "speed_ratio_total": round(sk_s / ours_s, 2),
        }
        rows.append(row)
        print(json.dumps(row))
    blas = [
        f"{i.get('internal_api')} {i.get('version')} ({i.get('num_threads')} threads)"
        for i in threadpool_info()
    ]
    result = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.python_implementation()} "
        f"{platform.python_version()}",
        "blas": blas,
        "command": "python bench/mixture_fit.py "
        + " ".join(
            f"--{k.replace('_', '-')} {' '.join(map(str, v)) if isinstance(v, list) else v}"
            for k, v in vars(args).items()
            if k != "out" and v is not None
        ),
        "rows": rows,
    }
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
