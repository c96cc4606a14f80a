"""Wall time of one cold audit of 3,000 Indiana studies on the report + metadata path.

Cold: a fresh embedder with no cache, so every distinct report and header sentence is embedded.
Prints the seconds of embedding and of the rest (fuse, discovery in every space, names, findings)
with the load average before and after.

    PYTHONPATH=. HF_HUB_OFFLINE=1 nice python bench/audit_time.py --n 3000
"""

from __future__ import annotations

import argparse
import os
import time
from datetime import UTC, datetime, timedelta

import numpy as np

from agent.audit import audit_embedded, embed_samples
from agent.bench.indiana import load_indiana
from agent.config import load_settings
from agent.embed.factory import make_embedder
from agent.sample import Sample


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=3000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    settings = load_settings()
    load = os.getloadavg()
    rng = np.random.default_rng(args.seed)
    pool = load_indiana()
    cases = [pool[int(i)] for i in rng.choice(len(pool), args.n, replace=False)]
    start = datetime(2026, 11, 23, tzinfo=UTC)
    wrong = rng.random(args.n) < 0.08
    samples = [
        Sample(
            c.uid,
            "finding",
            "finding" if c.finding != w else "no_finding",
            "finding" if c.finding else "no_finding",
            start + timedelta(minutes=i),
            report=c.report,
            metadata=dict(c.metadata),
        )
        for i, (c, w) in enumerate(zip(cases, wrong, strict=True))
    ]
    embedder = make_embedder(settings.embed.spec, threads=settings.embed.threads)
    t0 = time.perf_counter()
    emb = embed_samples(samples, ("report", "metadata"), embedder, batch_size=settings.embed.batch_size)
    t1 = time.perf_counter()
    report = audit_embedded(
        samples,
        emb,
        embedder=embedder,
        settings=settings,
        target="finding",
        modalities=("report", "metadata"),
    )
    t2 = time.perf_counter()
    after = os.getloadavg()
    print(
        f"n={args.n} distinct reports={len(set(emb.reports))} embed {t1 - t0:.1f} s, audit {t2 - t1:.1f} s, "
        f"total {t2 - t0:.1f} s; {len(report.slices)} slice(s); "
        f"load {load[0]:.2f} before, {after[0]:.2f} after"
    )


if __name__ == "__main__":
    main()
