"""Benchmark: a warm streaming refit against the Domino algorithm (cold, as Domino has no warm mode).

A stream of 768-d float32 cases with a planted slice (``agent.simulate``) is refitted over a
window of ``n`` cases that slides by ``--step`` of the window (5%) between refits. The product's
first refit is cold (it fits the PCA basis and the mixtures); the next ``--refits`` are warm
(:mod:`agent.warm`: the basis reused after its drift check, each fold's mixture started from the
last refit's), timed one by one. Each refit is :func:`agent.audit.fit_slices` with the default
settings and the stream's fixed folds, i.e. the refit minus embedding and tokens, as in
``bench/refit_domino.py``. The baseline is ``bench/refit_domino.py``'s Domino-style fit
(scikit-learn ``PCA(128)`` + ``GaussianMixture(25, diag)`` from Domino's confusion start, then
``predict_proba``) on the last window.

Each side runs in a fresh child process with BLAS and OpenMP pinned to ``--threads`` by
threadpoolctl; the peak resident set is ``VmHWM`` reset just before the timed part, less the
resident set then (the stream and, for the product, the state of the cold refit are the input).

    PYTHONPATH=. python bench/refit_warm.py --sizes 10000 50000 --threads 1 --out docs/bench/refit_warm.json
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
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from refit_domino import DIM, IMAGE_DIM, _domino, _status_kib


def _make_stream(n: int, step: int, refits: int, path: Path) -> None:
    from agent.simulate import planted_gaussian

    data = planted_gaussian(n + step * refits, DIM, n_clusters=12, seed=0)
    np.savez(path, X=data.X.astype(np.float32), y=data.y, y_pred=data.y_pred)


def _product(
    X: np.ndarray, y: np.ndarray, y_pred: np.ndarray, n: int, step: int, refits: int, spaces: str
) -> dict[str, Any]:
    from agent.audit import fit_slices, window_capacity
    from agent.config import Settings
    from agent.warm import WarmStart

    settings = Settings()
    if spaces != "default":
        settings = settings.model_copy(
            update={"audit": settings.audit.model_copy(update={"spaces": tuple(spaces.split(","))})}
        )
    keys = [f"1.2.826.0.1.{i}" for i in range(len(y))]
    dims, components = window_capacity(settings, n)
    image, report = X[:, :IMAGE_DIM], X[:, IMAGE_DIM:]

    def refit(r: int, warm: WarmStart) -> int:
        rows = slice(r * step, r * step + n)
        blocks = {"image": image[rows], "report": report[rows]}
        _, found = fit_slices(
            blocks, y[rows], y_pred[rows], settings, dims, components, keys=keys[rows], warm=warm
        )
        return len(found)

    cold = WarmStart(None)
    started = time.perf_counter()
    refit(0, cold)
    cold_seconds = time.perf_counter() - started
    state = cold.current
    del cold
    Path("/proc/self/clear_refs").write_text("5")
    rss0 = _status_kib("VmRSS")
    walls, cpus, starts, slices = [], [], [], []
    for r in range(1, refits + 1):
        warm = WarmStart(state)
        state = None  # as the stream's refitter: the refit holds the last state, and lets it go
        wall, cpu = time.perf_counter(), time.process_time()
        slices.append(refit(r, warm))
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
        starts.append(warm.describe())
        state = warm.current
    return {
        "cold_seconds": round(cold_seconds, 3),
        "wall_seconds": round(float(np.median(walls)), 3),
        "cpu_seconds": round(float(np.median(cpus)), 3),
        "walls": [round(w, 3) for w in walls],
        "rss_peak_above_input_mib": round((_status_kib("VmHWM") - rss0) / 1024, 1),
        "starts": starts,
        "slices": slices,
    }


def _baseline(X: np.ndarray, y: np.ndarray, y_pred: np.ndarray, n: int) -> dict[str, Any]:
    X, y, y_pred = X[-n:], y[-n:], y_pred[-n:]
    Path("/proc/self/clear_refs").write_text("5")
    rss0 = _status_kib("VmRSS")
    wall, cpu = time.perf_counter(), time.process_time()
    _domino(X, y, y_pred)
    return {
        "wall_seconds": round(time.perf_counter() - wall, 3),
        "cpu_seconds": round(time.process_time() - cpu, 3),
        "rss_peak_above_input_mib": round((_status_kib("VmHWM") - rss0) / 1024, 1),
    }


def _child(
    side: str, path: Path, n: int, step: int, refits: int, threads: int, spaces: str
) -> dict[str, Any]:
    import sklearn.decomposition
    import sklearn.mixture  # noqa: F401
    from threadpoolctl import threadpool_limits

    import agent.audit  # noqa: F401

    with np.load(path) as f:
        X, y, y_pred = f["X"], f["y"], f["y_pred"]
    with threadpool_limits(limits=threads):
        if side == "domino":
            return {"side": side, **_baseline(X, y, y_pred, n)}
        return {"side": side, "spaces": spaces, **_product(X, y, y_pred, n, step, refits, spaces)}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 50_000])
    parser.add_argument("--step", type=float, default=0.05, help="new cases per refit, share of the window")
    parser.add_argument("--refits", type=int, default=5, help="warm refits timed after the cold one")
    parser.add_argument("--threads", type=int, default=1, help="BLAS / OpenMP threads, both sides")
    parser.add_argument(
        "--spaces",
        default="default",
        help="the product's audit.spaces, comma-separated (default: the product's default; 'fused' is"
        " the mixture refit alone, like for like with Domino)",
    )
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument(
        "--child", nargs=5, metavar=("SIDE", "STREAM", "N", "STEP", "REFITS"), help=argparse.SUPPRESS
    )
    args = parser.parse_args()
    if args.child:
        side, path, n, step, refits = args.child
        result = _child(side, Path(path), int(n), int(step), int(refits), args.threads, args.spaces)
        sys.stdout.write(json.dumps(result) + "\n")
        return

    rows = []
    with tempfile.TemporaryDirectory(prefix="refit-warm-") as tmp:
        for n in args.sizes:
            step = max(1, round(n * args.step))
            stream = Path(tmp) / f"stream-{n}.npz"
            _make_stream(n, step, args.refits, stream)
            for side in ("domino", "product"):
                cmd = [sys.executable, __file__, "--threads", str(args.threads), "--spaces", args.spaces]
                cmd += ["--child", side, str(stream)]
                cmd += [str(n), str(step), str(args.refits)]
                load = round(os.getloadavg()[0], 2)
                out = subprocess.run(cmd, capture_output=True, text=True, check=True)
                row = {
                    "n": n,
                    "step": step,
                    "load_1min": load,
                    **json.loads(out.stdout.strip().splitlines()[-1]),
                }
                rows.append(row)
                sys.stderr.write(json.dumps(row) + "\n")
    summary = []
    for n in args.sizes:
        d, p = (next(r for r in rows if r["n"] == n and r["side"] == s) for s in ("domino", "product"))
        summary.append(
            {
                "n": n,
                "domino_over_warm_wall": round(d["wall_seconds"] / p["wall_seconds"], 1),
                "domino_over_warm_cpu": round(d["cpu_seconds"] / p["cpu_seconds"], 1),
                "memory_domino_over_warm": round(
                    d["rss_peak_above_input_mib"] / max(p["rss_peak_above_input_mib"], 0.1), 2
                ),
            }
        )
        sys.stderr.write(json.dumps(summary[-1]) + "\n")
    run = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, CPython {platform.python_version()}",
        "command": f"PYTHONPATH=. python bench/refit_warm.py --sizes {' '.join(map(str, args.sizes))} "
        f"--step {args.step} --refits {args.refits} --threads {args.threads} --spaces {args.spaces}",
        "git": subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True
        ).stdout.strip(),
        "load_average_end": [round(x, 2) for x in os.getloadavg()],
        "summary": summary,
        "rows": rows,
    }
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(run, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
