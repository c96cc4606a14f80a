"""Benchmark: a batch audit of a report + metadata stream from a cold embedding cache, end to end.

Simulates ``--n`` studies with a planted failure (``slice-agent simulate``), then runs
``slice-agent audit FILE --modalities report,metadata`` once per variant, each in a fresh child
process (the audit's embedding cache is in memory: every run starts cold). A variant sets the
audit's torch threads (``embed.batch_threads``), the text tower's precision
(``embed.text_int8``) and runtime (``embed.runtime``) through the environment. For each run:
wall time, CPU time (user + sys of the child, which a loaded machine inflates far less than wall
time), peak resident set, the load average before and after, and the report's slices and findings
compared with the first variant's (each slice's and each finding's best Jaccard overlap of members).

    PYTHONPATH=. nice python bench/audit_speed.py --n 3000 --variants 1:fp32 2:fp32 2:int8 \\
        --out docs/bench/audit_speed.json
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


def _members(report: dict[str, Any]) -> tuple[list[set[str]], list[set[str]]]:
    """Each slice's members, and each finding's (the union of its slices')."""
    slices = {s["id"]: {m["study_uid"] for m in s["members"]} for s in report["slices"]}
    findings = [set().union(*(slices[i] for i in f["sub_slices"])) for f in report["findings"]]
    return list(slices.values()), findings


def _best_overlap(want: list[set[str]], have: list[set[str]]) -> list[float]:
    """For each set in ``want``, its largest Jaccard overlap with a set in ``have``."""
    return [round(max((len(a & b) / len(a | b) for b in have), default=0.0), 3) for a in want]


def _run(events: Path, out: Path, threads: str, precision: str, runtime: str) -> dict[str, Any]:
    # Only what differs from the defaults is set, so that code from before these settings runs too.
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLICE_AGENT_EMBED__")}
    if precision == "int8":
        env["SLICE_AGENT_EMBED__TEXT_INT8"] = "true"
    if threads != "all":
        env["SLICE_AGENT_EMBED__BATCH_THREADS"] = threads
    if runtime:
        env["SLICE_AGENT_EMBED__RUNTIME"] = runtime
    command = [sys.executable, "-m", "agent.cli", "audit", str(events), "--out", str(out)]
    command += ["--modalities", "report,metadata"]
    load_before = os.getloadavg()
    started = time.perf_counter()
    child = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(child.pid, 0)
    wall = time.perf_counter() - started
    stderr = child.stderr.read().decode(errors="replace") if child.stderr else ""
    if status != 0:
        raise SystemExit(f"the audit failed ({status}):\n{stderr[-2000:]}")
    return {
        "threads": threads,
        "precision": precision,
        "runtime": runtime or "default",
        "wall_s": round(wall, 1),
        "cpu_s": round(usage.ru_utime + usage.ru_stime, 1),
        "peak_rss_mib": round(usage.ru_maxrss / 1024),
        "load_before": [round(x, 2) for x in load_before],
        "load_after": [round(x, 2) for x in os.getloadavg()],
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", type=int, default=3000, help="studies in the stream")
    parser.add_argument("--failure", default="devices", help="the planted failure")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--variants",
        nargs="+",
        default=["1:fp32", "all:fp32"],
        help="THREADS:PRECISION[:RUNTIME], THREADS a number or 'all' (one per core), PRECISION fp32 or"
        " int8, RUNTIME onnx or torch (the text tower's; unset: the tree's default)",
    )
    parser.add_argument("--out", type=Path, help="write the results here (JSON)")
    args = parser.parse_args()

    runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="audit-speed-") as work:
        events = Path(work) / "events.jsonl"
        simulate = [sys.executable, "-m", "agent.cli", "simulate", str(events), "--n", str(args.n)]
        simulate += ["--failure", args.failure, "--seed", str(args.seed)]
        subprocess.run(simulate, check=True, stdout=subprocess.DEVNULL)
        reference: tuple[list[set[str]], list[set[str]]] | None = None
        for i, variant in enumerate(args.variants):
            threads, _, rest = variant.partition(":")
            precision, _, runtime = rest.partition(":")
            out = Path(work) / f"report-{i}.json"
            run = _run(events, out, threads, precision or "fp32", runtime)
            slices, findings = _members(json.loads(out.read_text(encoding="utf-8")))
            reference = reference or (slices, findings)
            run["slices"] = [len(s) for s in slices]
            run["findings"] = [len(f) for f in findings]
            run["slice_overlap_with_first"] = _best_overlap(reference[0], slices)
            run["finding_overlap_with_first"] = _best_overlap(reference[1], findings)
            runs.append(run)
            print(json.dumps(run), flush=True)

    result = {
        "command": " ".join(sys.argv),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.processor() or 'cpu'}",
        "python": platform.python_version(),
        "studies": args.n,
        "failure": args.failure,
        "runs": runs,
    }
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    print(
        "| threads | text tower | runtime | wall | CPU (user+sys) | peak RSS | load before"
        " | same slices as the first |"
    )
    print("|---|---|---|---:|---:|---:|---|---|")
    for r in runs:
        cells = [r["threads"], r["precision"], r["runtime"], f"{r['wall_s']} s", f"{r['cpu_s']} s"]
        cells += [f"{r['peak_rss_mib']} MiB", r["load_before"][0], r["slice_overlap_with_first"]]
        print("| " + " | ".join(str(c) for c in cells) + " |")


if __name__ == "__main__":
    main()
