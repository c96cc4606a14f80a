"""A stream in which a known weak group grows, labels come late, and the early warning watches.

The model's traffic is chest radiographs described by their DICOM metadata (view, manufacturer,
sex, age, portable). One group, lateral views from one manufacturer, is the model's weakness: it
is wrong there at ``weak_error`` against ``base_error`` elsewhere. During a labeled history the
group is ``start_share`` of the traffic; from day 0 it grows linearly to ``end_share`` over
``ramp_days`` (``shift="none"``: it stays at ``start_share``). Each confirmed label arrives
``label_delay_days`` after its inference.

Each case's probability of being wrong is drawn around its group's rate; the case is wrong with
that probability, and its ``score`` is the probability that the prediction is right: calibrated
in every group, so that the weak group's growth is a covariate shift under which a calibrated
estimate holds. ``shift="prevalence"`` breaks that on purpose: from day 0 more and more positive
cases look negative to the model (a subtler presentation), which misses them with the
confidence it has on true negatives. Prevalence and error rise; the scores do not show it.

:func:`run_early_warning` drives a :class:`~agent.stream.sidecar.Sidecar` through such a stream
(store in memory, embedding in the calling thread, one refit at day 0, the early warning every
``evaluate_hours``) and returns when the label-free warning fired and when the labeled path (the
error-rate drift detector on confirmed labels) first saw it.
"""

from __future__ import annotations

import json
import time
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

import numpy as np

from agent.warn import WarningState

__all__ = [
    "EarlySpec",
    "EarlyWarningRun",
    "WordEmbedder",
    "early_samples",
    "early_stream",
    "run_early_warning",
]

DAY = 86_400.0
MODEL = "cxr-early"
TARGET = "finding"
WEAK = {"ViewPosition": "LL", "Manufacturer": "Agfa"}
_VIEWS = ("PA", "AP", "LL")
_MAKERS = ("Philips", "Siemens", "Carestream", "Agfa", "Fujifilm")
T0 = datetime(2026, 3, 2, tzinfo=UTC)


@dataclass(frozen=True)
class EarlySpec:
    """The stream: traffic per day, the weak group's share before and after the ramp, errors."""

    per_day: int = 150
    history_days: int = 30
    ramp_days: int = 14
    after_days: int = 14
    start_share: float = 0.05
    end_share: float = 0.25
    base_error: float = 0.05
    weak_error: float = 0.4
    prevalence: float = 0.3
    label_delay_days: float = 10.0
    shift: Literal["weak_group", "none", "prevalence"] = "weak_group"
    hidden_share: float = 0.3
    """``shift="prevalence"``: share of the traffic, at the end of the ramp, that is a positive
    case the model sees as a negative."""


@dataclass(frozen=True)
class Event:
    """One event and when it reaches the agent (seconds from :data:`T0`)."""

    arrives: float
    payload: dict[str, Any]


def _share(spec: EarlySpec, day: float) -> float:
    if spec.shift != "weak_group" or day <= 0:
        return spec.start_share
    return spec.start_share + (spec.end_share - spec.start_share) * min(day / spec.ramp_days, 1.0)


def _hidden(spec: EarlySpec, day: float) -> float:
    if spec.shift != "prevalence" or day <= 0:
        return 0.0
    return spec.hidden_share * min(day / spec.ramp_days, 1.0)


def _metadata(rng: np.random.Generator, weak: bool) -> dict[str, str]:
    while True:
        view = _VIEWS[rng.choice(3, p=[0.5, 0.35, 0.15])]
        maker = _MAKERS[rng.integers(len(_MAKERS))]
        if weak or (view, maker) != (WEAK["ViewPosition"], WEAK["Manufacturer"]):
            break
    if weak:
        view, maker = WEAK["ViewPosition"], WEAK["Manufacturer"]
    return {
        "Modality": "CR" if rng.random() < 0.6 else "DX",
        "BodyPartExamined": "CHEST",
        "ViewPosition": view,
        "Manufacturer": maker,
        "PatientSex": "F" if rng.random() < 0.5 else "M",
        "PatientAge": f"{int(rng.integers(20, 90)):03d}Y",
    }


def early_stream(spec: EarlySpec, seed: int = 0) -> tuple[list[Event], frozenset[str]]:
    """Every event of the stream in arrival order, and the study uids of the weak group."""
    rng = np.random.default_rng(seed)
    events: list[Event] = []
    weak_ids: set[str] = set()
    days = spec.history_days + spec.ramp_days + spec.after_days
    n = spec.per_day * days
    for i in range(n):
        t = (i + rng.random()) * DAY / spec.per_day - spec.history_days * DAY
        day = t / DAY
        uid = f"1.2.826.0.1.{seed}.{i}"
        weak = bool(rng.random() < _share(spec, day))
        hidden = not weak and bool(rng.random() < _hidden(spec, day))
        if weak:
            weak_ids.add(uid)
        rate = spec.weak_error if weak else spec.base_error
        # The case's chance of being wrong, drawn around its group's rate (Beta with 10 pseudo-cases).
        p_wrong = float(rng.beta(rate * 10, (1 - rate) * 10))
        label = TARGET if hidden or rng.random() < spec.prevalence else "none"
        if hidden:  # looks like a confident negative: missed
            p_wrong = float(rng.beta(spec.base_error * 10, (1 - spec.base_error) * 10))
            wrong = rng.random() < 0.9
        else:
            wrong = rng.random() < p_wrong
        other = "none" if label == TARGET else TARGET
        stamp = (T0 + timedelta(seconds=t)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        events.append(
            Event(
                t,
                {
                    "type": "inference",
                    "event_id": f"i-{seed}-{i}",
                    "study_uid": uid,
                    "model": MODEL,
                    "prediction": other if wrong else label,
                    "score": round(1.0 - p_wrong, 4),
                    "timestamp": stamp,
                    "metadata": _metadata(rng, weak),
                },
            )
        )
        delay = spec.label_delay_days * DAY * (1.0 + 0.1 * rng.random())
        label_stamp = (T0 + timedelta(seconds=t + delay)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        events.append(
            Event(
                t + delay,
                {
                    "type": "label",
                    "event_id": f"l-{seed}-{i}",
                    "study_uid": uid,
                    "label": label,
                    "timestamp": label_stamp,
                },
            )
        )
    events.sort(key=lambda e: e.arrives)
    return events, frozenset(weak_ids)


def early_samples(spec: EarlySpec, seed: int, start_day: float, end_day: float) -> list[Any]:
    """The stream's studies with inference time in ``[start_day, end_day)``, as labeled
    :class:`~agent.sample.Sample` objects (what a window would hold once every label came)."""
    from agent.sample import Sample

    events, _ = early_stream(spec, seed)
    labels = {e.payload["study_uid"]: e.payload["label"] for e in events if e.payload["type"] == "label"}
    out = []
    for e in events:
        p = e.payload
        if p["type"] != "inference" or not start_day * DAY <= e.arrives < end_day * DAY:
            continue
        out.append(
            Sample(
                p["study_uid"],
                p["model"],
                p["prediction"],
                labels[p["study_uid"]],
                datetime.fromisoformat(p["timestamp"].replace("Z", "+00:00")),
                score=p["score"],
                metadata=p["metadata"],
            )
        )
    return out


class WordEmbedder:
    """A small deterministic text embedder for simulations: the mean of per-word random vectors
    (seeded by the word), so that sentences sharing words lie close. No images."""

    name = "words-32"
    image_dim = 8
    text_dim = 32
    shared_space = False

    def embed_images(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """Not supported: the simulated stream carries no images."""
        raise NotImplementedError("the word embedder embeds no images")

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        """One vector per text."""
        out = np.zeros((len(texts), self.text_dim), dtype=np.float32)
        for i, text in enumerate(texts):
            words = [w.strip(".,()").lower() for w in text.split()] or [""]
            vecs = [np.random.default_rng(zlib.crc32(w.encode())).normal(size=self.text_dim) for w in words]
            out[i] = np.mean(vecs, axis=0)
        return out


@dataclass
class EarlyWarningRun:
    """What one simulated run showed (times in days from the start of the ramp)."""

    warned_at: float | None = None
    """When the first label-free warning was raised."""
    warned_weak_fraction: float | None = None
    """Share of the weak group among the warned slice's assigned cases."""
    confirmed_at: float | None = None
    """When the labeled path (error-rate drift on confirmed labels) first fired after day 0."""
    studies_between: int | None = None
    """Inferences that arrived between the warning and the confirmation."""
    warnings: int = 0
    buckets_tested: int = 0
    assigned: int = 0
    assign_seconds: float = 0.0
    states: list[WarningState] = field(default_factory=list)
    """The early warning's evaluations, one per ``evaluate_hours``."""

    @property
    def lead_days(self) -> float | None:
        """Days the warning came before the labeled path's confirmation."""
        if self.warned_at is None or self.confirmed_at is None:
            return None
        return self.confirmed_at - self.warned_at


def _settings(workdir: Path, spec: EarlySpec, overrides: dict[str, Any] | None) -> Any:
    from agent.config import load_settings

    base: dict[str, Any] = {
        "modalities": ["metadata"],
        "audit": {"seed": 0},
        "stream": {
            "store_path": ":memory:",
            "reports_dir": str(workdir / "reports"),
            "dead_letter_path": str(workdir / "dead-letters.jsonl"),
            "label_delay_seconds": 3 * spec.label_delay_days * DAY,
            "window_size": 5000,
            "refit_every_labels": 10**9,
            "refit_every_seconds": 1e12,
            "target_classes": {MODEL: [TARGET]},
            "classes": {MODEL: [TARGET, "none"]},
            "max_future_seconds": 1e9,
            "embed_on_arrival": False,
        },
        "embed": {"batch_size": 256},
    }
    for section, values in (overrides or {}).items():
        base[section] = {**base.get(section, {}), **values} if isinstance(values, dict) else values
    return load_settings(overrides=base)


def run_early_warning(
    spec: EarlySpec,
    workdir: Path,
    *,
    seed: int = 0,
    evaluate_hours: float = 6.0,
    overrides: dict[str, Any] | None = None,
    stop_when_confirmed: bool = False,
) -> EarlyWarningRun:
    """Drive a sidecar through the stream; refit once at day 0 on the labels that came by then.
    ``stop_when_confirmed`` ends the run once the warning fired and the labeled path confirmed."""
    from agent.store import Store
    from agent.stream.ingest import Message
    from agent.stream.sidecar import Sidecar

    events, weak_ids = early_stream(spec, seed)
    settings = _settings(workdir, spec, overrides)
    now = [T0.timestamp() - spec.history_days * DAY]
    clock = lambda: now[0]  # noqa: E731 - the simulated wall clock
    sidecar = Sidecar(
        settings, WordEmbedder(), store=Store.from_settings(settings.stream, clock=clock), clock=clock
    )
    run = EarlyWarningRun()
    observe = sidecar.warning.observe

    def timed(samples: Any, blocks: Any) -> int:
        started = time.perf_counter()
        n = observe(samples, blocks)
        run.assign_seconds += time.perf_counter() - started
        return n

    sidecar.arrival.on_inferences = timed
    step = evaluate_hours * 3600.0
    start = -spec.history_days * DAY
    end = (spec.ramp_days + spec.after_days) * DAY
    refitted = False
    i = 0
    arrived = []  # arrival times of inferences, for the studies between warning and confirmation
    try:
        for edge in np.arange(start + step, end + step, step):
            batch = []
            while i < len(events) and events[i].arrives < edge:
                batch.append(events[i])
                i += 1
            now[0] = T0.timestamp() + float(edge)
            arrived += [e.arrives for e in batch if e.payload["type"] == "inference"]
            for chunk in range(0, len(batch), 500):
                part = batch[chunk : chunk + 500]
                sidecar.ingest(
                    [
                        Message(f"sim:{seed}:{e.payload['event_id']}", json.dumps(e.payload).encode())
                        for e in part
                    ]
                )
            sidecar.arrival.drain()
            if not refitted and edge >= 0:
                sidecar.refit(MODEL, trigger="simulation")
                refitted = True
            states = sidecar.watch()
            run.states += states
            day = float(edge) / DAY
            if (
                refitted
                and run.confirmed_at is None
                and any(seq for _, seq, _ in sidecar.store.drift_events(MODEL) if _drift_after(sidecar, seq))
            ):
                run.confirmed_at = day
            if run.warned_at is None and any(s.new_warnings for s in states):
                run.warned_at = day
                run.warned_weak_fraction = _weak_fraction(sidecar, weak_ids)
            if stop_when_confirmed and run.warned_at is not None and run.confirmed_at is not None:
                break
        rows = sidecar.store.buckets(MODEL, TARGET)
        run.buckets_tested = len({r.bucket for r in rows})
        run.warnings = sum(r.warned for r in rows)
        run.assigned = sidecar.warning.assigned
        if run.warned_at is not None and run.confirmed_at is not None:
            lo, hi = (run.warned_at * DAY, run.confirmed_at * DAY)
            run.studies_between = sum(lo <= a < hi for a in arrived)
    finally:
        sidecar.close()
    return run


def _drift_after(sidecar: Any, seq: int) -> bool:
    """Whether the drift detected at sample ``seq`` concerns an inference from day 0 on."""
    outcomes = {s: ts for s, _, _, ts in sidecar.store.outcomes(MODEL)}
    return outcomes.get(seq, 0.0) >= T0.timestamp()


def _weak_fraction(sidecar: Any, weak_ids: frozenset[str]) -> float | None:
    """Share of the weak group among the cases assigned to the slices that warned."""
    warned = {r.slice_id for r in sidecar.store.buckets(MODEL, TARGET) if r.warned}
    cases = [o for o in sidecar.store.live_outcomes(MODEL, TARGET, float("-inf")) if warned & set(o.slices)]
    if not cases:
        return None
    return sum(o.study_uid in weak_ids for o in cases) / len(cases)
