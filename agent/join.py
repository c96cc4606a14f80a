"""Join inference events with their labels and reports by study, for a finite stream.

Pure: takes decoded events (with where they came from) and returns joined samples and the
problems found. The streaming agent keeps the same rules in its durable store.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field

from agent.events import ClassLabel, Event, InferenceEvent, LabelEvent, ReportEvent
from agent.sample import Problem, Sample

__all__ = ["JoinResult", "Problem", "Sample", "join_events"]


@dataclass
class JoinResult:
    samples: list[Sample]
    problems: list[Problem]
    unlabeled: int = 0
    counts: Counter[str] = field(default_factory=Counter)


def join_events(
    events: Iterable[tuple[str, Event]], *, classes: Mapping[str, Collection[ClassLabel]] | None = None
) -> JoinResult:
    """Join ``(where, event)`` pairs by ``study_uid``.

    Duplicates (a repeated ``event_id``) are no-ops and reported. A label or report for a
    study with no inference is an orphan. A label outside the model's classes is an
    ``unknown_class`` problem: the classes are ``classes[model]`` when given, else every
    class the model has predicted. An inference with no label is counted as unlabeled (it
    may still be waiting), not as a problem.
    """
    problems: list[Problem] = []
    seen_ids: set[str] = set()
    inferences: dict[tuple[str, str], tuple[str, InferenceEvent]] = {}
    labels: dict[str, list[tuple[str, LabelEvent]]] = {}
    reports: dict[str, tuple[str, ReportEvent]] = {}
    counts: Counter[str] = Counter()
    for where, event in events:
        if event.event_id in seen_ids:
            problems.append(Problem(where, "duplicate", f"event_id {event.event_id!r} seen before; ignored"))
            continue
        seen_ids.add(event.event_id)
        counts[event.type] += 1
        if isinstance(event, InferenceEvent):
            key = (event.model, event.study_uid)
            if key in inferences:
                problems.append(
                    Problem(
                        where, "conflicting_inference", "second inference for this study and model; ignored"
                    )
                )
                continue
            inferences[key] = (where, event)
        elif isinstance(event, LabelEvent):
            labels.setdefault(event.study_uid, []).append((where, event))
        else:
            reports.setdefault(event.study_uid, (where, event))

    studies = {study for _, study in inferences}
    for study, entries in labels.items():
        if study not in studies:
            problems.extend(
                Problem(w, "orphan_label", "label for a study with no inference") for w, _ in entries
            )
    for study, (where, _) in reports.items():
        if study not in studies:
            problems.append(Problem(where, "orphan_report", "report for a study with no inference"))

    known: dict[str, set[ClassLabel]] = {}
    for (model, _), (_, inf) in inferences.items():
        known.setdefault(model, set(classes[model]) if classes and model in classes else set())
        if not (classes and model in classes):
            known[model].add(inf.prediction)

    samples: list[Sample] = []
    unlabeled = 0
    for (model, study), (_, inf) in inferences.items():
        label = None
        for where, candidate in labels.get(study, []):
            if candidate.model not in (None, model):
                continue
            if candidate.label not in known[model]:
                problems.append(
                    Problem(
                        where, "unknown_class", f"label {candidate.label!r} is not a class of model {model!r}"
                    )
                )
                continue
            if label is None:
                label = candidate
        if label is None:
            unlabeled += 1
            continue
        report = reports.get(study)
        samples.append(
            Sample(
                study_uid=study,
                model=model,
                prediction=inf.prediction,
                label=label.label,
                timestamp=inf.timestamp,
                score=inf.score,
                report=report[1].text if report else None,
                metadata=inf.metadata,
                image=inf.image,
                event_id=inf.event_id,
            )
        )
    samples.sort(key=lambda s: (s.timestamp, s.study_uid))
    return JoinResult(samples=samples, problems=problems, unlabeled=unlabeled, counts=counts)
