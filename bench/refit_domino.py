"""Benchmark: a cold refit against the Domino algorithm, wall time and peak memory above the input.

Domino v0.1.5 cannot be fetched offline, so its algorithm is rebuilt from scikit-learn with
Domino's ``DominoSlicer`` settings: ``PCA(128)`` fitted on the window, the window transformed,
``GaussianMixture(25, covariance_type="diag", max_iter=100, tol=1e-3, reg_covar=1e-6)`` fitted
on it from Domino's ``init_params="confusion"`` start (responsibilities from each case's
confusion cell plus 1e-3 noise, as ``DominoMixture`` computes them), and ``predict_proba`` on the
window transformed again (what ``fit`` + ``predict_proba`` do). scikit-learn's E-step lacks
Domino's label and prediction terms, so this baseline is, if anything, a little faster than
Domino itself. The mixture runs in float64, as Domino's does (from a confusion start scikit-learn
collapses a component in float32).

The product side is the refit minus embedding and tokens: :func:`agent.fuse.fuse` on an
image block (512-d) and a report block (256-d), then :func:`agent.slicing.discover_slices`
with the default settings (two folds, 25 components, memberships and the held-out test).

Both sides read the same 768-d float32 window (planted slice, ``agent.simulate``) in a fresh
child process, with BLAS and OpenMP pinned to ``--threads`` by threadpoolctl. Each run is made
twice, in two children: once timed (wall and process CPU time, and the peak resident set,
``VmHWM`` reset after the input is loaded, minus the resident set then), once under tracemalloc
for the peak of traced allocations (numpy buffers) above the input; tracemalloc slows Python-level
work, so it never runs in the timed child. Sides are interleaved, so both share the load; the
CPU time is reported beside the wall time, as a busy machine stretches the latter.

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


def _confusion_init(
    X: np.ndarray, y: np.ndarray, y_pred: np.ndarray, k: int, rng: np.random.RandomState
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Domino's ``init_params="confusion"``: responsibilities from the confusion cell of each
    case, repeated over the components, plus ``confusion_noise=1e-3``; then one M-step."""
    onehot_y = np.stack([1 - y, y], axis=1)
    onehot_p = np.stack([1 - y_pred, y_pred], axis=1)
    resp = (onehot_y[:, :, None] * onehot_p[:, None, :]).reshape(len(y), -1)
    resp = np.concatenate([resp] * (k // 4 + 1), axis=1)[:, :k]
    resp /= resp.sum(axis=1, keepdims=True)
    resp += rng.rand(len(y), k) * 1e-3
    resp /= resp.sum(axis=1, keepdims=True)
    nk = resp.sum(axis=0) + 10 * np.finfo(resp.dtype).eps
    means = (resp.T @ X) / nk[:, None]
    variances = (resp.T @ (X * X)) / nk[:, None] - means**2 + 1e-6
    return nk / len(X), means, 1.0 / np.maximum(variances, 1e-6)


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
    reduced = reduced.astype(
        np.float64
    )  # in float32 this start collapses a component; Domino's EM is float64
    weights, means, precisions = _confusion_init(reduced, y, y_pred, 25, np.random.RandomState(0))
    mm = GaussianMixture(
        25,
        covariance_type="diag",
        max_iter=100,
        tol=1e-3,
        reg_covar=1e-6,
        weights_init=weights,
        means_init=means,
        precisions_init=precisions,
    )
    mm.fit(reduced)
    del reduced
    mm.predict_proba(pca.transform(X).astype(np.float64))
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


def _child(side: str, path: Path, threads: int, traced: bool) -> dict[str, Any]:
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
    if traced:
        tracemalloc.start()
    with threadpool_limits(limits=threads):
        started, cpu = time.perf_counter(), time.process_time()
        stages = run(window, y, y_pred)
        wall, cpu = time.perf_counter() - started, time.process_time() - cpu
    if traced:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        return {"traced_peak_mib": round(peak / 2**20, 1)}
    return {
        "side": side,
        "wall_seconds": round(wall, 3),
        "cpu_seconds": round(cpu, 3),
        "rss_peak_above_input_mib": round((_status_kib("VmHWM") - rss0) / 1024, 1),
        **{k: round(v, 3) for k, v in stages.items()},
    }


def _summary(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per window size: each side's median, and Domino's over the product's (above 1: product better)."""
    out = []
    for n in sorted({r["n"] for r in rows}):
        med = {
            side: {
                key: float(np.median([r[key] for r in rows if r["n"] == n and r["side"] == side]))
                for key in ("wall_seconds", "cpu_seconds", "traced_peak_mib", "rss_peak_above_input_mib")
            }
            for side in ("domino", "product")
        }
        ratio = {k: round(med["domino"][k] / med["product"][k], 2) for k in med["domino"]}
        out.append({"n": n, "median": med, "domino_over_product": ratio})
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 50_000])
    parser.add_argument("--threads", type=int, default=1, help="BLAS / OpenMP threads, both sides")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--label", default="", help="a name for this run (before / after)")
    parser.add_argument("--out", type=Path, default=None, help="JSON file; runs are appended by label")
    parser.add_argument("--child", nargs=3, metavar=("SIDE", "WINDOW", "MODE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        side, window, mode = args.child
        sys.stdout.write(json.dumps(_child(side, Path(window), args.threads, mode == "traced")) + "\n")
        return

    rows = []
    with tempfile.TemporaryDirectory(prefix="refit-bench-") as tmp:
        for n in args.sizes:
            window = Path(tmp) / f"window-{n}.npz"
            _make_window(n, window)
            for _ in range(args.repeats):
                for side in ("domino", "product"):
                    row: dict[str, Any] = {"n": n, "load_1min": round(os.getloadavg()[0], 2)}
                    for mode in ("timed", "traced"):
                        cmd = [
                            sys.executable,
                            __file__,
                            "--threads",
                            str(args.threads),
                            "--child",
                            side,
                            str(window),
                            mode,
                        ]
                        out = subprocess.run(cmd, capture_output=True, text=True, check=True)
                        row.update(json.loads(out.stdout.strip().splitlines()[-1]))
                    rows.append(row)
                    sys.stderr.write(json.dumps(row) + "\n")
        summary = _summary(rows)
        for line in summary:
            sys.stderr.write(json.dumps(line) + "\n")
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
        "summary": summary,
        "rows": rows,
    }
    if args.out:
        runs = json.loads(args.out.read_text()) if args.out.exists() else []
        runs = [r for r in runs if r.get("label") != args.label] + [run]
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(runs, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
