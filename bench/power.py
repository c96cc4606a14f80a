"""Power of the audit: small planted slices in real report text and headers, and a visual marker.

Real text: the Indiana University chest X-ray reports and DICOM headers (read at run time from
torchxrayvision's data folder, never copied; see :mod:`agent.bench.indiana`). The label is the
``finding`` MeSH flag. Each draw builds a window of ``--windows`` cases in which a planted group
makes up a share (``--shares``) of the cases:

* ``words``: the group carries a report word that no other case of the window carries;
* ``header``: the group has a header value that the audit's metadata sentence shows (view,
  age decade) and no other case has;
* ``both``: the group has a report word and a header value; the rest may have either, not both;
* ``image``: simulated radiographs (:mod:`agent.simulate.images`); the group carries a burned-in
  corner annotation that no report word or header mentions (windows of 1,000 at most: the pool
  is rendered and embedded once, each case plain and marked).

A black-box classifier errs at 50% inside the group and 6% outside, over both classes (the group
spans both). Null windows draw cases at random and spread errors uniformly at the planted
windows' overall rate. Each case's report, header sentence and image is embedded once, into
``--cache``, and every draw reads its rows from there.

Methods, each scored by the precision@10 of its rank-1 slice against the planted group
(detected: at least 0.9):

* ``product``: :func:`agent.audit.audit_embedded` with the settings given (``--config``); also
  counted: its findings, those on the planted group, and on null windows whether it reports any;
* ``domino``: Domino's in-sample mixture on the same fused embedding, its first slice by
  Domino's own rule (:func:`agent.bench.paper.candidate_slices`); it reports slices on every
  window, so its null false-alarm rate is 1 by construction;
* ``tfidf``: the global TF-IDF baseline over all errors; its rank-1 token's errors, as a
  slice (precision: the share of the errors carrying the token that are in the group).

Usage::

    nice python bench/power.py --draws 10 --null-draws 20 --out docs/bench/power
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
from threadpoolctl import threadpool_limits

from agent.audit import Embedded, audit_embedded, embed_samples, window_capacity
from agent.bench.indiana import load_indiana
from agent.bench.paper import candidate_slices
from agent.config import Settings, load_settings
from agent.dicom import metadata_sentence
from agent.embed.base import Embedder
from agent.embed.cache import CachedEmbedder, SqliteCache
from agent.embed.factory import make_embedder
from agent.explain import TokenSpace, tokens
from agent.fuse import fuse
from agent.metrics import precision_at_k
from agent.report import SliceReport
from agent.sample import Sample
from agent.simulate.images import ImageSpec, burn_in_annotation, case_report, draw_cases, render

log = logging.getLogger("power")

KINDS = ("words", "header", "both", "image")
METHODS = ("product", "domino", "tfidf")
_START = datetime(2026, 11, 23, 8, 0, tzinfo=UTC)
_LATERAL = frozenset({"LL", "RL", "LATERAL", "LARGE LATERAL"})
_GROUP_ERROR, _BASE_ERROR = 0.5, 0.06
_DETECTED = 0.9


@dataclass(frozen=True)
class Pool:
    """Every case a window can draw, embedded once: labels, per-case words and header values."""

    name: str
    uids: list[str]
    labels: np.ndarray
    emb: Embedded
    words: list[frozenset[str]]
    values: list[frozenset[str]]
    marked: np.ndarray | None = None
    twin: np.ndarray | None = None
    """For the image pool: the row of the same case with the other marking."""


@dataclass(frozen=True)
class Record:
    """One method on one window."""

    kind: str
    window: int
    share: float
    draw: int
    method: str
    definition: str
    p_at_10: float
    p_at_10_best: float
    """Precision@10 of the method's best slice against the group (Domino's paper reading)."""
    detected: bool
    alarm: bool
    n_findings: int
    n_findings_on_group: int
    n_slices: int
    seconds: float


# ------------------------------------------------------------------------------------ pools


def _header_values(meta: dict[str, object]) -> frozenset[str]:
    """The header values the audit can see (the metadata sentence shows view and age band)."""
    out = set()
    view = str(meta.get("ViewPosition") or "").upper()
    if view:
        out.add(f"ViewPosition={'lateral' if view in _LATERAL else view}")
    age = str(meta.get("PatientAge") or "")
    if age[:2].isdigit():
        out.add(f"PatientAge={age[:2]}0s")
    return frozenset(out)


def _samples(
    uids: Sequence[str], y: np.ndarray, y_pred: np.ndarray, pool: Pool, rows: np.ndarray
) -> list[Sample]:
    return [
        Sample(
            study_uid=uids[i],
            model="finding",
            prediction="finding" if y_pred[j] else "no_finding",
            label="finding" if y[j] else "no_finding",
            timestamp=_START + timedelta(minutes=j),
            report=pool.emb.reports[i] or None,
            metadata=pool.emb.metadata[i],
        )
        for j, i in enumerate(rows)
    ]


def indiana_pool(embedder: Embedder) -> Pool:
    """The Indiana images with a view, their reports and headers embedded (report, metadata)."""
    cases = load_indiana()
    samples = [
        Sample(
            study_uid=c.uid,
            model="finding",
            prediction="finding",
            label="finding",
            timestamp=_START,
            report=c.report,
            metadata=dict(c.metadata),
        )
        for c in cases
    ]
    started = time.perf_counter()
    emb = embed_samples(samples, ("report", "metadata"), embedder, batch_size=64)
    log.info("Indiana pool: %d cases embedded in %.0f s", len(cases), time.perf_counter() - started)
    return Pool(
        "indiana",
        [c.uid for c in cases],
        np.array([c.finding for c in cases]),
        emb,
        [frozenset(tokens(r)) for r in emb.reports],
        [_header_values(m) for m in emb.metadata],
    )


def _image_vectors(embedder: Embedder, cases: Sequence[Any], cache: Path) -> np.ndarray:
    """Each case's image embedded plain, then marked (``2n`` rows); kept in ``cache`` once drawn."""
    if cache.is_file():
        return np.asarray(np.load(cache))
    spec = ImageSpec()
    started = time.perf_counter()
    plain = [render(c, spec) for c in cases]
    images = [*plain, *(burn_in_annotation(p, c.seed) for p, c in zip(plain, cases, strict=True))]
    vectors = np.concatenate(
        [
            embedder.embed_images([im.astype(np.float32) / 4095.0 for im in images[s : s + 64]])
            for s in range(0, len(images), 64)
        ]
    )
    log.info(
        "image pool: %d images rendered and embedded in %.0f s", len(images), time.perf_counter() - started
    )
    np.save(cache, vectors)
    return vectors


def image_pool(embedder: Embedder, n: int, seed: int, cache: Path) -> Pool:
    """``n`` simulated cases, each rendered plain and with a burned-in annotation (``2n`` rows)."""
    rng = np.random.default_rng([seed, 42])
    cases = draw_cases(rng, n)
    safe = "".join(ch if ch.isalnum() else "-" for ch in embedder.name)
    vectors = _image_vectors(embedder, cases, cache / f"images-{safe}-{n}-{seed}.npy")
    meta = [
        {
            "Modality": "CR",
            "BodyPartExamined": "CHEST",
            "ViewPosition": c.view,
            "PatientSex": c.sex,
            "PatientAge": f"{c.age:03d}Y",
            "Manufacturer": c.manufacturer,
        }
        for c in cases
    ]
    samples = [
        Sample(c.uid, "finding", "finding", "finding", _START, report=case_report(c), metadata=m)
        for c, m in zip(cases, meta, strict=True)
    ]
    text = embed_samples(samples, ("report", "metadata"), embedder, batch_size=64)
    twice = np.concatenate([np.arange(n), np.arange(n)])
    blocks = {"image": vectors, **{k: v[twice] for k, v in text.blocks.items()}}
    emb = Embedded(
        blocks,
        [text.texts[i] for i in twice],
        [text.reports[i] for i in twice],
        text.metadata_words,
        [],
        [text.raw_reports[i] for i in twice],
        [text.metadata[i] for i in twice],
    )
    return Pool(
        "image",
        [f"{c.uid}.{tag}" for tag in ("p", "m") for c in cases],
        np.array([c.finding for c in cases] * 2),
        emb,
        [frozenset(tokens(r)) for r in emb.reports],
        [frozenset() for _ in twice],
        marked=np.arange(2 * n) >= n,
        twin=np.concatenate([np.arange(n, 2 * n), np.arange(n)]),
    )


def subset(emb: Embedded, rows: np.ndarray) -> Embedded:
    """The rows of a pool's embeddings that one window holds."""
    metadata = [emb.metadata[i] for i in rows]
    sentences = {metadata_sentence(m) for m in metadata if m}
    return Embedded(
        {k: v[rows] for k, v in emb.blocks.items()},
        [emb.texts[i] for i in rows],
        [emb.reports[i] for i in rows],
        frozenset(w for s in sentences for w in tokens(s)),
        [],
        [emb.raw_reports[i] for i in rows],
        metadata,
    )


# ------------------------------------------------------------------------------------ windows


@dataclass(frozen=True)
class Window:
    """One drawn window: pool rows, labels, predictions and the planted group (all-False on a null)."""

    rows: np.ndarray
    y: np.ndarray
    y_pred: np.ndarray
    in_group: np.ndarray
    definition: str


def _balanced(labels: np.ndarray, rows: np.ndarray) -> bool:
    share = labels[rows].mean() if len(rows) else 0.0
    return bool(0.15 <= share <= 0.85)


def _definitions(pool: Pool, kind: str, need: int) -> list[tuple[str, np.ndarray]]:
    """Every group definition of ``kind`` with at least ``need`` carriers that span both classes."""
    n = len(pool.uids)
    out: list[tuple[str, np.ndarray]] = []
    if kind in ("words", "both"):
        df: dict[str, int] = {}
        for ws in pool.words:
            for w in ws:
                df[w] = df.get(w, 0) + 1
        common = sorted(w for w, c in df.items() if c >= need and c <= 0.5 * n)
        word_mask = {w: np.array([w in ws for ws in pool.words]) for w in common}
    if kind in ("header", "both"):
        counts: dict[str, int] = {}
        for vs in pool.values:
            for v in vs:
                counts[v] = counts.get(v, 0) + 1
        values = sorted(v for v, c in counts.items() if c >= need)
        value_mask = {v: np.array([v in vs for vs in pool.values]) for v in values}
    if kind == "words":
        out = [(f"word {w}", m) for w, m in word_mask.items()]
    elif kind == "header":
        out = [(v, m) for v, m in value_mask.items() if m.sum() <= 0.5 * n]
    elif kind == "both":
        for w, wm in word_mask.items():
            for v, vm in value_mask.items():
                both = wm & vm
                # An intersection: neither the word nor the value alone defines it.
                if both.sum() >= need and both.sum() <= 0.6 * min(wm.sum(), vm.sum()):
                    out.append((f"word {w} and {v}", both))
    return [(d, m) for d, m in out if _balanced(pool.labels, np.flatnonzero(m))]


def planted_window(pool: Pool, kind: str, size: int, share: float, rng: np.random.Generator) -> Window | None:
    """A window of ``size`` in which ``share`` of the cases are a planted group of ``kind``."""
    n_group = round(share * size)
    if kind == "image":
        assert pool.marked is not None and pool.twin is not None
        half = len(pool.uids) // 2
        if size > half:
            return None
        base = rng.choice(half, size, replace=False)
        marked = rng.choice(size, n_group, replace=False)
        rows = base.copy()
        rows[marked] = pool.twin[base[marked]]
        definition = "burned-in annotation"
        in_group = pool.marked[rows]
    else:
        options = _definitions(pool, kind, int(np.ceil(n_group / 0.8)))
        if not options:
            return None
        definition, mask = options[int(rng.integers(len(options)))]
        carriers, others = np.flatnonzero(mask), np.flatnonzero(~mask)
        if len(others) < size - n_group:
            return None
        rows = np.concatenate(
            [rng.choice(carriers, n_group, replace=False), rng.choice(others, size - n_group, replace=False)]
        )
        rows = rng.permutation(rows)
        in_group = mask[rows]
    y = pool.labels[rows].astype(int)
    wrong = rng.random(size) < np.where(in_group, _GROUP_ERROR, _BASE_ERROR)
    return Window(rows, y, np.where(wrong, 1 - y, y), in_group, definition)


def null_window(pool: Pool, size: int, share: float, rng: np.random.Generator) -> Window:
    """Random cases, errors spread uniformly at a planted window's overall rate."""
    if pool.marked is not None:
        rows = rng.choice(len(pool.uids) // 2, size, replace=False)
    else:
        rows = rng.choice(len(pool.uids), size, replace=False)
    y = pool.labels[rows].astype(int)
    wrong = rng.random(size) < _GROUP_ERROR * share + _BASE_ERROR * (1 - share)
    return Window(rows, y, np.where(wrong, 1 - y, y), np.zeros(size, dtype=bool), "null")


# ------------------------------------------------------------------------------------ methods


def _rank(report: SliceReport, uid_row: dict[str, int]) -> list[np.ndarray]:
    return [np.array([uid_row[m.study_uid] for m in s.members]) for s in report.slices]


def run_product(
    pool: Pool,
    win: Window,
    emb: Embedded,
    modalities: tuple[str, ...],
    embedder: Embedder,
    settings: Settings,
) -> dict[str, Any]:
    samples = _samples(pool.uids, win.y, win.y_pred, pool, win.rows)
    report = audit_embedded(
        samples, emb, embedder=embedder, settings=settings, target="finding", modalities=modalities
    )
    uid_row = {s.study_uid: i for i, s in enumerate(samples)}
    orders = _rank(report, uid_row)
    by_id = {s.id: o for s, o in zip(report.slices, orders, strict=True)}
    on_group = sum(
        any(precision_at_k([by_id[sid]], win.in_group, 10) >= 0.5 for sid in f.sub_slices)
        for f in report.findings
    )
    return {
        "p_at_10": precision_at_k(orders[:1], win.in_group, 10) if orders else 0.0,
        "p_at_10_best": precision_at_k(orders, win.in_group, 10),
        "alarm": bool(report.slices),
        "n_findings": len(report.findings),
        "n_findings_on_group": on_group,
        "n_slices": len(report.slices),
    }


def run_domino(
    win: Window, emb: Embedded, modalities: tuple[str, ...], settings: Settings, seed: int
) -> dict[str, Any]:
    dims, components = window_capacity(settings, len(win.y))
    fused = fuse({m: emb.blocks[m] for m in modalities}, n_components=dims, random_state=seed)
    audit = settings.audit.model_copy(update={"n_components": components})
    found = candidate_slices(fused.embedding, win.y, win.y_pred, slicer="error_aware", audit=audit, seed=seed)
    return {
        "p_at_10": precision_at_k([found[0].order], win.in_group, 10) if found else 0.0,
        "p_at_10_best": precision_at_k([c.order for c in found], win.in_group, 10),
        "alarm": bool(found),
        "n_findings": len(found),
        "n_findings_on_group": sum(precision_at_k([c.order], win.in_group, 10) >= 0.5 for c in found),
        "n_slices": len(found),
    }


def run_tfidf(win: Window, emb: Embedded, settings: Settings) -> dict[str, Any]:
    space = TokenSpace(min_df=settings.audit.token_min_df, metadata_vocabulary=emb.metadata_words)
    space.fit(emb.texts, reports=emb.raw_reports, metadata=emb.metadata)
    err = win.y != win.y_pred
    top = space.distinctiveness(np.flatnonzero(err), np.flatnonzero(~err), top_k=1)
    p = 0.0
    if top:
        err_rows = np.flatnonzero(err)
        carrying = err_rows[space.presence(top[0].token, err_rows)]
        p = float(win.in_group[carrying].mean()) if len(carrying) else 0.0
    return {
        "p_at_10": p,
        "p_at_10_best": p,
        "alarm": bool(top),
        "n_findings": int(bool(top)),
        "n_findings_on_group": int(p >= 0.5),
        "n_slices": int(bool(top)),
    }


# ------------------------------------------------------------------------------------ driver


def _modalities(pool: Pool) -> tuple[str, ...]:
    return ("image", "report", "metadata") if pool.marked is not None else ("report", "metadata")


def evaluate(
    pool: Pool,
    win: Window,
    *,
    kind: str,
    share: float,
    draw: int,
    methods: Sequence[str],
    embedder: Embedder,
    settings: Settings,
    seed: int,
) -> list[Record]:
    emb = subset(pool.emb, win.rows)
    modalities = _modalities(pool)
    audit_settings = settings.model_copy(update={"audit": settings.audit.model_copy(update={"seed": seed})})
    runs: dict[str, Callable[[], dict[str, Any]]] = {
        "product": lambda: run_product(pool, win, emb, modalities, embedder, audit_settings),
        "domino": lambda: run_domino(win, emb, modalities, audit_settings, seed),
        "tfidf": lambda: run_tfidf(win, emb, audit_settings),
    }
    out = []
    for method in methods:
        started = time.perf_counter()
        r = runs[method]()
        out.append(
            Record(
                kind=kind,
                window=len(win.rows),
                share=share,
                draw=draw,
                method=method,
                definition=win.definition,
                detected=bool(kind != "null" and r["p_at_10"] >= _DETECTED),
                seconds=time.perf_counter() - started,
                **r,
            )
        )
    return out


def summarise(records: Sequence[Record]) -> str:
    """Markdown tables: detection rate per kind, window, share and method; null false alarms."""
    columns = [*(f"{m} detected" for m in METHODS), "domino best of its slices"]
    lines = [
        "| kind | window | share | draws | " + " | ".join(columns) + " | product findings on group"
        " (mean) | product findings (mean) |",
        "|" + "---|" * (6 + len(columns)),
    ]
    keys = sorted(
        {(r.kind, r.window, r.share) for r in records if r.kind != "null"},
        key=lambda k: (KINDS.index(k[0]), k[1], k[2]),
    )
    for kind, window, share in keys:
        cell = [r for r in records if (r.kind, r.window, r.share) == (kind, window, share)]
        rates = []
        for m in METHODS:
            got = [r.detected for r in cell if r.method == m]
            rates.append(f"{np.mean(got):.2f}" if got else "-")
        best = [r.p_at_10_best >= _DETECTED for r in cell if r.method == "domino"]
        rates.append(f"{np.mean(best):.2f}" if best else "-")
        prod = [r for r in cell if r.method == "product"]
        draws = len({r.draw for r in cell})
        on_group = f"{np.mean([r.n_findings_on_group for r in prod]):.2f}" if prod else "-"
        findings = f"{np.mean([r.n_findings for r in prod]):.2f}" if prod else "-"
        lines.append(
            f"| {kind} | {window} | {share:.0%} | {draws} | "
            + " | ".join(rates)
            + f" | {on_group} | {findings} |"
        )
    nulls = [r for r in records if r.kind == "null" and r.method == "product"]
    if nulls:
        lines += ["", "| null windows | draws | product false alarms | rate |", "|---|---|---|---|"]
        for window in sorted({r.window for r in nulls}):
            for source in sorted({r.definition for r in nulls}):
                cell = [r for r in nulls if r.window == window and r.definition == source]
                if cell:
                    alarms = sum(r.alarm for r in cell)
                    lines.append(f"| {source} {window} | {len(cell)} | {alarms} | {alarms / len(cell):.2f} |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--draws", type=int, default=10, help="planted draws per cell")
    parser.add_argument("--null-draws", type=int, default=20, help="null draws per window size and source")
    parser.add_argument("--windows", type=int, nargs="+", default=[1000, 3000])
    parser.add_argument("--shares", type=float, nargs="+", default=[0.02, 0.03, 0.05, 0.10])
    parser.add_argument("--kinds", nargs="+", default=list(KINDS), choices=KINDS)
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument(
        "--image-pool", type=int, default=1200, help="simulated cases (each plain and marked)"
    )
    parser.add_argument("--null-share", type=float, default=0.05, help="sets the null windows' error rate")
    parser.add_argument("--config", type=Path, default=None, help="YAML settings (audit, embedder)")
    parser.add_argument("--cache", type=Path, default=Path("out/power-cache/embeddings.sqlite"))
    parser.add_argument("--out", type=Path, default=Path("docs/bench/power"))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    logging.getLogger("agent").setLevel(logging.WARNING)
    settings = load_settings(args.config)
    args.cache.parent.mkdir(parents=True, exist_ok=True)
    embedder = CachedEmbedder(
        make_embedder(settings.embed.spec, threads=settings.embed.threads), SqliteCache(args.cache)
    )
    started = time.perf_counter()
    records: list[Record] = []
    text_kinds = [k for k in args.kinds if k != "image"]
    pools: list[tuple[Pool, list[str]]] = []
    if text_kinds:
        pools.append((indiana_pool(embedder), text_kinds))
    if "image" in args.kinds:
        pools.append((image_pool(embedder, args.image_pool, args.seed, args.cache.parent), ["image"]))
    with threadpool_limits(limits=settings.audit.blas_threads, user_api="blas"):
        for pool, kinds in pools:
            for window in args.windows:
                if pool.marked is not None and window > len(pool.uids) // 2:
                    log.info("image pool holds %d cases: no window of %d", len(pool.uids) // 2, window)
                    continue
                for kind in kinds:
                    for share in args.shares:
                        for draw in range(args.draws):
                            rng = np.random.default_rng(
                                [args.seed, KINDS.index(kind), window, round(share * 1000), draw]
                            )
                            win = planted_window(pool, kind, window, share, rng)
                            if win is None:
                                log.info(
                                    "%s %d %.0f%%: no definition with enough carriers",
                                    kind,
                                    window,
                                    100 * share,
                                )
                                break
                            got = evaluate(
                                pool,
                                win,
                                kind=kind,
                                share=share,
                                draw=draw,
                                methods=args.methods,
                                embedder=embedder,
                                settings=settings,
                                seed=draw,
                            )
                            records += got
                            log.info(
                                "%s %d %.0f%% #%d %s: %s",
                                kind,
                                window,
                                100 * share,
                                draw,
                                win.definition,
                                ", ".join(f"{r.method} {r.p_at_10:.1f}/{r.n_findings}" for r in got),
                            )
                for draw in range(args.null_draws):
                    rng = np.random.default_rng([args.seed, 99, window, draw])
                    win = null_window(pool, window, args.null_share, rng)
                    got = evaluate(
                        pool,
                        win,
                        kind="null",
                        share=0.0,
                        draw=draw,
                        methods=["product"],
                        embedder=embedder,
                        settings=settings,
                        seed=draw,
                    )
                    records += [replace(r, definition=pool.name) for r in got]
                    log.info("null %s %d #%d: product %d slice(s)", pool.name, window, draw, got[0].n_slices)
    args.out.mkdir(parents=True, exist_ok=True)
    table = summarise(records)
    load = os.getloadavg()
    header = (
        f"command: {' '.join(['python bench/power.py', *(argv if argv is not None else sys.argv[1:])])}\n"
        f"machine: {platform.machine()}, {os.cpu_count()} cores; load average at end "
        f"{load[0]:.2f} {load[1]:.2f} {load[2]:.2f}; {time.perf_counter() - started:.0f} s\n"
    )
    (args.out / "power.md").write_text(header + "\n" + table + "\n")
    (args.out / "power.json").write_text(json.dumps([asdict(r) for r in records], indent=1))
    print(header)
    print(table)


if __name__ == "__main__":
    main()
