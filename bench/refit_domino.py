"""Benchmark: a cold refit against the Domino algorithm, wall time and peak memory above the input.

Domino v0.1.5 cannot be fetched offline, so its algorithm is rebuilt from scikit-learn with
Domino's ``DominoSlicer`` settings: ``PCA(128)`` fitted on the window, the window transformed,
``GaussianMixture(25, covariance_type="diag", max_iter=100, tol=1e-3, reg_covar=1e-6)`` fitted
on it, and ``predict_proba`` on the window transformed again (what ``fit`` + ``predict_proba``
do). The product side is the refit minus embedding and tokens: :func:`agent.fuse.fuse` on an
image block (512-d) and a report block (256-d), then :func:`agent.slicing.discover_slices`
with the default settings (two folds, 25 components, memberships and the held-out test).

Both sides read the same 768-d float32 window (planted slice, ``agent.simulate``) in a fresh
child process, with BLAS and OpenMP pinned to ``--threads`` by threadpoolctl. Memory above the
input: the tracemalloc peak (numpy buffers) and the peak resident set (``VmHWM``, reset after the
input is loaded) minus the resident set then. Sides are interleaved, so both share the load;
the process CPU time is reported beside the wall time, as a busy machine stretches the latter.

    PYTHONPATH=. python bench/refit_domino.py --sizes 10000 50000 --threads 1 \
        --label after --out docs/bench/refit_domino.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path
from typing import Any

import numpy as np

DIM = 768
IMAGE_DIM = 512


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def _make_window(n: int, path: Path) -> None:
    from agent.simulate import planted_gaussian

    data = planted_gaussian(n, DIM, n_clusters=12, seed=0)
    np.savez(path, X=data.X.astype(np.float32), y=data.y, y_pred=data.y_pred)


def _domino(X: np.ndarray, y: np.ndarray, y_pred: np.ndarray) -> dict[str, float]:
    import warnings

    from sklearn.decomposition import PCA
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.mixture import GaussianMixture

    warnings.simplefilter("ignore", ConvergenceWarning)
    t0 = time.perf_counter()
    pca = PCA(n_components=128).fit(X)
    reduced = pca.transform(X)
    t1 = time.perf_counter()
    mm = GaussianMixture(25, covariance_type="diag", max_iter=100, tol=1e-3, reg_covar=1e-6, random_state=0)
    mm.fit(reduced)
    del reduced
    mm.predict_proba(pca.transform(X))
    t2 = time.perf_counter()
    return {"pca_seconds": t1 - t0, "mixture_seconds": t2 - t1}


def _product(blocks: dict[str, np.ndarray], y: np.ndarray, y_pred: np.ndarray) -> dict[str, float]:
    from agent.audit import _make_slicer, window_capacity
    from agent.config import Settings
    from agent.fuse import fuse
    from agent.slicing import discover_slices

    settings = Settings()
    a = settings.audit
    dims, components = window_capacity(settings, len(y))
    t0 = time.perf_counter()
    fused = fuse(blocks, n_components=dims, random_state=a.seed)
    t1 = time.perf_counter()
    findings = discover_slices(
        _make_slicer(settings, components),
        fused.embedding,
        y,
        y_pred,
        n_slices=a.n_slices,
        n_splits=a.n_splits,
        beta=a.beta,
        alpha=a.alpha,
        min_size=a.min_slice_size,
        random_state=a.seed,
    )
    t2 = time.perf_counter()
    return {"fuse_seconds": t1 - t0, "slices_seconds": t2 - t1, "slices": float(len(findings))}


def _child(side: str, path: Path, threads: int) -> dict[str, Any]:
    import sklearn.decomposition
    import sklearn.mixture  # noqa: F401
    from threadpoolctl import threadpool_limits

    import agent.audit  # noqa: F401

    with np.load(path) as f:
        X, y, y_pred = f["X"], f["y"], f["y_pred"]
    window: Any = X
    if side == "product":  # the product gets one block per modality; both hold 768 floats a row
        window = {
            "image": np.ascontiguousarray(X[:, :IMAGE_DIM]),
            "report": np.ascontiguousarray(X[:, IMAGE_DIM:]),
        }
        del X
    run = _domino if side == "domino" else _product
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current resident set
    rss0 = _status_kib("VmRSS")
    tracemalloc.start()
    with threadpool_limits(limits=threads):
        started, cpu = time.perf_counter(), time.process_time()
        stages = run(window, y, y_pred)
        wall, cpu = time.perf_counter() - started, time.process_time() - cpu
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return {
        "side": side,
        "wall_seconds": round(wall, 3),
        "cpu_seconds": round(cpu, 3),
        "traced_peak_mib": round(peak / 2**20, 1),
        "rss_peak_above_input_mib": round((_status_kib("VmHWM") - rss0) / 1024, 1),
        **{k: round(v, 3) for k, v in stages.items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 50_000])
    parser.add_argument("--threads", type=int, default=1, help="BLAS / OpenMP threads, both sides")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--label", default="", help="a name for this run (before / after)")
    parser.add_argument("--out", type=Path, default=None, help="JSON file; runs are appended by label")
    parser.add_argument("--child", nargs=2, metavar=("SIDE", "WINDOW"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        sys.stdout.write(json.dumps(_child(args.child[0], Path(args.child[1]), args.threads)) + "\n")
        return

    rows = []
    with tempfile.TemporaryDirectory(prefix="refit-bench-") as tmp:
        for n in args.sizes:
            window = Path(tmp) / f"window-{n}.npz"
            _make_window(n, window)
            for _ in range(args.repeats):
                for side in ("domino", "product"):
                    cmd = [
                        sys.executable,
                        __file__,
                        "--threads",
                        str(args.threads),
                        "--child",
                        side,
                        str(window),
                    ]
                    load = os.getloadavg()[0]
                    out = subprocess.run(cmd, capture_output=True, text=True, check=True)
                    row = {"n": n, **json.loads(out.stdout.strip().splitlines()[-1]), "load_1min": load}
                    rows.append(row)
                    sys.stderr.write(json.dumps(row) + "\n")
    from threadpoolctl import threadpool_info

    run = {
        "label": args.label,
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, CPython {platform.python_version()}",
        "blas": sorted({f"{i.get('internal_api')} {i.get('version')}" for i in threadpool_info()}),
        "command": f"PYTHONPATH=. python bench/refit_domino.py --sizes {' '.join(map(str, args.sizes))} "
        f"--threads {args.threads} --repeats {args.repeats} --label {args.label}",
        "git": subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True
        ).stdout.strip(),
        "load_average_end": [round(x, 2) for x in os.getloadavg()],
        "rows": rows,
    }
    if args.out:
        runs = json.loads(args.out.read_text()) if args.out.exists() else []
        runs = [r for r in runs if r.get("label") != args.label] + [run]
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(runs, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
