"""Benchmark: the early warning's lead time over the labeled path, its false alarms, and its cost.

Two measurements:

``lead``
    The simulated stream of :mod:`agent.simulate.early` (150 studies a day; a weak group grows from
    5 % to 25 % of the traffic over two weeks; labels ten days late) through a sidecar, per seed:
    when the label-free warning fired, when the labeled path (the error-rate drift detector on
    confirmed labels) first fired, and the studies that arrived between. The same stream with no
    shift, over the same four weeks, counts false warnings (tested buckets that warned).
``assign``
    Microseconds per inference of the assignment alone (fusion through the refit's PCA basis,
    every known slice's mixture territory, the calibrated error probability), on batches of 128,
    for the simulated stream's description and for one of the default embedder's widths (image 1280
    + metadata 384, 128 PCA dimensions, 5 slices of 25 components each). The store write that keeps
    each assignment is measured beside it, from the sidecar runs.

    .venv/bin/python bench/early_warning.py --seeds 0 1 2 3 4 --out docs/bench/early_warning.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from agent.simulate.early import EarlySpec, run_early_warning
from agent.warn import Calibration, KnownSlice, SliceSpace


def lead(seeds: list[int]) -> dict[str, Any]:
    """Lead time per seed on the growing weak group, and false warnings on the stream with no shift."""
    runs = []
    for seed in seeds:
        with tempfile.TemporaryDirectory() as tmp:
            started = time.perf_counter()
            shift = run_early_warning(EarlySpec(), Path(tmp) / "shift", seed=seed, stop_when_confirmed=True)
            still = run_early_warning(EarlySpec(shift="none"), Path(tmp) / "still", seed=seed)
            seconds = time.perf_counter() - started
        row = {
            "seed": seed,
            "warned_at_day": shift.warned_at,
            "confirmed_at_day": shift.confirmed_at,
            "lead_days": shift.lead_days,
            "lead_studies": shift.studies_between,
            "warned_weak_fraction": shift.warned_weak_fraction,
            "no_shift_buckets_tested": still.buckets_tested,
            "no_shift_false_warnings": still.warnings,
            "no_shift_warned": still.warned_at is not None,
            "assign_and_store_us_per_event": 1e6
            * (shift.assign_seconds + still.assign_seconds)
            / max(shift.assigned + still.assigned, 1),
            "wall_seconds": round(seconds, 1),
        }
        print(json.dumps(row), flush=True)
        runs.append(row)
    return {"runs": runs}


def _space(
    widths: tuple[int, ...], k: int, slices: int, components: int, rng: np.random.Generator
) -> SliceSpace:
    width = sum(widths)
    basis, _ = np.linalg.qr(rng.normal(size=(width, k)))
    cal = Calibration.fit(rng.random(500), rng.random(500) < 0.5, (rng.random(500) < 0.1).astype(float))
    known = tuple(
        KnownSlice(
            f"s-{j}",
            j + 1,
            0,
            rng.normal(scale=0.05, size=(components, k)),
            rng.uniform(0.001, 0.01, size=(components, k)),
            np.full(components, 1 / components),
            50,
            1000,
            0.3,
            0.8,
            cal,
        )
        for j in range(slices)
    )
    return SliceSpace(
        "m", "finding", 1, ("image", "metadata"), widths, np.zeros(width, np.float32),
        basis.astype(np.float32), known, cal, 1000, 0.1, 0.1,
    )  # fmt: skip


def assign_cost(repeats: int = 50, batch: int = 128) -> dict[str, Any]:
    """Microseconds per inference of fusion, territories and calibration, on batches."""
    rng = np.random.default_rng(0)
    out = {}
    for name, widths, k in (("default embedder widths", (1280, 384), 128), ("simulated stream", (8, 32), 32)):
        space = _space(widths, k, 5, 25, rng)
        blocks = {
            m: rng.normal(size=(batch, w)).astype(np.float32)
            for m, w in zip(space.modalities, widths, strict=True)
        }
        scores = rng.random(batch)
        side = rng.random(batch) < 0.5
        times = []
        for _ in range(repeats):
            started = time.perf_counter()
            inside = space.assign(space.fuse(blocks, batch))
            space.error_probabilities(scores, side, inside)
            times.append(time.perf_counter() - started)
        out[name] = {
            "widths": list(widths),
            "pca": k,
            "slices": 5,
            "components": 25,
            "batch": batch,
            "us_per_event_median": round(1e6 * float(np.median(times)) / batch, 1),
            "us_per_event_p90": round(1e6 * float(np.quantile(times, 0.9)) / batch, 1),
        }
        print(json.dumps({name: out[name]}), flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--skip-lead", action="store_true", help="measure the assignment cost only")
    args = parser.parse_args()
    result: dict[str, Any] = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "load_average_before": os.getloadavg(),
        "assign": assign_cost(),
    }
    if not args.skip_lead:
        result["lead"] = lead(args.seeds)
    result["load_average_after"] = os.getloadavg()
    if args.out is not None:
        args.out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
