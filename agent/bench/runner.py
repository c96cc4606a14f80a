"""The bootstrap runner: planted failures, audits with every embedding, one record per audit.

For each source (simulated images, real Indiana text), failure mode and iteration:

1. draw a training set with the mode's bias and a test set in which the planted group makes up
   ``group_share`` of the cases and the other cells keep the biased training proportions (the
   paper keeps "the error strength and the underperforming proportion fixed"; the Indiana test
   sets draw the other cases from the whole collection);
2. get the classifier's predictions on the test set: a ResNet-18 trained on the simulated
   images, or, for the Indiana text (no pixels), a black box that errs on the planted group at
   ``group_error`` and elsewhere at ``base_error`` (:class:`BlackBox`);
3. keep the run only when the classifier is at least ``min_gap`` less accurate on the group
   than on the rest of its class (the paper's validity rule);
4. embed the test set once, then for every embedding combination of the paper's Table 1 and
   both slicers: the paper's figure (best precision@10 among Domino's in-sample slices, see
   :mod:`agent.bench.paper`), the product's figure (precision@10 of the slice
   :func:`agent.audit.run_audit` ranks first, 0 when it reports none; and the best of all the
   slices it reports) and their top tokens;
   and, once per test set, the global TF-IDF baseline.

Null runs audit the same test sets with a classifier trained without the bias
(``null_unbiased``; for the text source, a black box without the group) and with the planted
run's errors shuffled uniformly over the test set (``null_shuffled``); for them only whether a
significant slice was reported matters.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np

from agent.audit import Embedded, embed_samples, run_audit
from agent.bench.classifier import TrainConfig, train_classifier
from agent.bench.indiana import IndianaCase, load_indiana
from agent.bench.modes import MODES, FailureMode, Strengths, flip_labels, held_out_cells, training_cells
from agent.bench.paper import baseline_precision, best_candidate, candidate_slices
from agent.config import Settings
from agent.dicom import read_header
from agent.embed.base import Embedder
from agent.errors import AgentError
from agent.explain import TokenSpace
from agent.fuse import MODALITIES, fuse
from agent.images import ImageAccess
from agent.metrics import precision_at_k
from agent.sample import Sample
from agent.simulate.images import Case, ImageSpec, Population, case_report, draw_cases, render, write_dicom

__all__ = [
    "EMBEDDINGS",
    "INDIANA_MODELS",
    "SOURCES",
    "BenchConfig",
    "BenchResult",
    "BlackBox",
    "RunRecord",
    "run_bench",
]

log = logging.getLogger(__name__)

#: The embedding combinations of the paper's Table 1, in its order, with the modalities fused.
EMBEDDINGS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("Image only", ("image",)),
    ("Image + Text", ("image", "report")),
    ("Image + Text + Metadata", ("image", "report", "metadata")),
    ("Report Text", ("report",)),
    ("Metadata only", ("metadata",)),
    ("Report + Metadata", ("report", "metadata")),
    ("Image + Metadata", ("image", "metadata")),
)
SOURCES = ("simulated", "indiana")
SLICERS = ("error_aware", "errors_only")
_START = datetime(2026, 11, 23, 8, 0, tzinfo=UTC)


@dataclass(frozen=True)
class BlackBox:
    """The simulated classifier of the text-only source: errors at one rate in the group, another outside."""

    base_error: float = 0.1
    group_error: float = 0.5


@dataclass(frozen=True)
class BenchConfig:
    """What one benchmark run does. :meth:`quick` is the CPU preset; the defaults follow the paper.

    The classifier's knobs (:class:`TrainConfig`: a 64-pixel input, 5 epochs) are the same in
    both presets: they set how strongly the planted biases show, and the bias strengths were
    checked at these values only.

    Parameters
    ----------
    iterations
        Bootstrap iterations per failure mode on the simulated images (the paper: 100).
    text_iterations
        Iterations per failure mode on the Indiana text (no training: cheap).
    null_iterations
        Of the image iterations, how many also run the two null runs (an unbiased classifier,
        shuffled errors).
    n_train, n_test
        Training and test set sizes (the paper: 1000 and 300).
    group_share
        Share of the test set in the planted group (the paper: 20%).
    min_gap
        Smallest accuracy gap between the attribute groups of the planted class for a valid run.
    k
        Precision@k.
    indiana_dir
        Folder holding the Indiana files; by default torchxrayvision's data folder.
    """

    iterations: int = 100
    text_iterations: int = 100
    null_iterations: int = 100
    n_train: int = 1000
    n_test: int = 300
    group_share: float = 0.2
    min_gap: float = 0.10
    k: int = 10
    strengths: Strengths = field(default_factory=Strengths)
    train: TrainConfig = field(default_factory=TrainConfig)
    image: ImageSpec = field(default_factory=ImageSpec)
    population: Population = field(default_factory=Population)
    black_box: BlackBox = field(default_factory=BlackBox)
    sources: tuple[str, ...] = SOURCES
    modes: tuple[str, ...] = tuple(m.key for m in MODES)
    slicers: tuple[str, ...] = SLICERS
    indiana_dir: str | None = None
    seed: int = 0

    @classmethod
    def quick(cls) -> BenchConfig:
        """The preset for a 2-core CPU: the same runs as the default, far fewer of them."""
        return cls(iterations=2, text_iterations=4, null_iterations=1)

    def with_changes(self, *, train: dict[str, Any] | None = None, **changes: Any) -> BenchConfig:
        """A copy with the given fields (and training knobs) changed; None means "not given", kept as is.

        >>> BenchConfig.quick().with_changes(iterations=1, n_test=None, train={"epochs": 1}).train.epochs
        1
        """
        knobs = {k: v for k, v in (train or {}).items() if v is not None}
        given = {k: v for k, v in changes.items() if v is not None}
        return replace(self, train=replace(self.train, **knobs), **given)


@dataclass(frozen=True)
class RunRecord:
    """One audit: one test set, one embedding, one slicer. NaN where a figure does not apply."""

    source: str
    mode: str
    kind: str
    iteration: int
    embedding: str
    slicer: str
    valid: bool
    accuracy_gap: float
    n_test: int
    n_errors: int
    group_error_rate: float
    rest_error_rate: float
    p_at_k_best: float
    p_at_k_first: float
    p_at_k_reported: float
    n_significant: int
    first_p_value: float
    first_error_precision: float
    best_tokens: tuple[str, ...]
    first_tokens: tuple[str, ...]
    baseline_attribute: float
    baseline_group: float
    baseline_tokens: tuple[str, ...]
    planted_in_best: bool
    planted_in_first: bool
    planted_in_baseline: bool
    seconds: float


@dataclass
class BenchResult:
    """Every record, the configuration and what the run noted along the way."""

    config: BenchConfig
    records: list[RunRecord] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0


@dataclass
class _Trial:
    """One test set with one classifier's predictions, ready to audit."""

    source: str
    mode: FailureMode
    kind: str
    iteration: int
    samples: list[Sample]
    y: np.ndarray
    y_pred: np.ndarray
    attribute: np.ndarray
    seed: int
    valid: bool = True
    accuracy_gap: float = float("nan")

    @property
    def in_group(self) -> np.ndarray:
        gy, ga = self.mode.group
        return np.asarray((self.y == gy) & (self.attribute == bool(ga)))

    @property
    def err(self) -> np.ndarray:
        return np.asarray(self.y != self.y_pred)


def accuracy_gap(y: np.ndarray, y_pred: np.ndarray, attribute: np.ndarray, group: tuple[int, int]) -> float:
    """Accuracy on the planted class without the group's attribute value minus accuracy on the group.

    >>> y = np.array([1, 1, 1, 1, 0]); a = np.array([1, 1, 0, 0, 1])
    >>> accuracy_gap(y, np.array([0, 1, 1, 1, 0]), a, (1, 1))
    0.5
    """
    gy, ga = group
    ok = np.asarray(y) == np.asarray(y_pred)
    inside = (y == gy) & (attribute == bool(ga))
    outside = (y == gy) & (attribute != bool(ga))
    if not inside.any() or not outside.any():
        return float("nan")
    return float(ok[outside].mean() - ok[inside].mean())


def _planted(tokens: Sequence[str], words: frozenset[str]) -> bool:
    return any(t in words for t in tokens)


def _split_test(n_test: int, share: float, available: int) -> tuple[int, int]:
    """Group and rest sizes: ``share`` of ``n_test``, shrunk when the group has too few cases."""
    group = round(share * n_test)
    if group > 0.8 * available:
        group = int(0.8 * available)
        return group, round(group / share) - group
    return group, n_test - group


# ------------------------------------------------------------------------------------ image source


def _cell(mode: FailureMode, y: int, a: int) -> Callable[[Case], bool]:
    return lambda c: mode.target(c) == bool(y) and mode.has_attribute(c) == bool(a)


def _samples(
    cases: Sequence[Any], model: str, prob: np.ndarray, labels: np.ndarray, paths: Sequence[Path] | None
) -> list[Sample]:
    """Samples as the audit receives them. For a DICOM, the header is read once here (as the audit
    would read it), so that each of the many audits of one test set does not read it again."""
    negative = f"no_{model}"
    out = []
    for i, case in enumerate(cases):
        report = case.report if isinstance(case, IndianaCase) else case_report(case)
        metadata = case.metadata if isinstance(case, IndianaCase) else None
        if paths is not None:
            metadata = dict(read_header(paths[i], access=ImageAccess(roots=(paths[i].parent.resolve(),))))
        out.append(
            Sample(
                study_uid=case.uid,
                model=model,
                prediction=model if prob[i] >= 0.5 else negative,
                label=model if labels[i] else negative,
                timestamp=_START + timedelta(minutes=i),
                score=float(prob[i]),
                report=report,
                metadata=metadata,
                image=str(paths[i]) if paths is not None else None,
                event_id=f"bench-{case.uid}",
            )
        )
    return out


def _image_trials(
    mode: FailureMode, index: int, iteration: int, config: BenchConfig, workdir: Path
) -> list[_Trial]:
    rng = np.random.default_rng([config.seed, index, iteration])
    pop = config.population
    test: list[Case] = []
    for (cy, ca), count in held_out_cells(mode, config.n_test, config.group_share, config.strengths).items():
        test += draw_cases(rng, count, _cell(mode, cy, ca), population=pop, start=len(test))
    order = rng.permutation(len(test))
    test = [test[i] for i in order]
    pixels = np.stack([render(c, config.image) for c in test])
    folder = workdir / f"{mode.key}-{iteration}"
    paths = [
        write_dicom(c, p, folder / f"{k:04d}.dcm") for k, (c, p) in enumerate(zip(test, pixels, strict=True))
    ]
    y = np.array([mode.target(c) for c in test], dtype=int)
    attribute = np.array([mode.has_attribute(c) for c in test], dtype=bool)

    trials = []
    kinds = [("planted", True)] + ([("null_unbiased", False)] if iteration < config.null_iterations else [])
    for kind, biased in kinds:
        train: list[Case] = []
        for (cy, ca), count in training_cells(mode, config.n_train, config.strengths, biased=biased).items():
            train += draw_cases(rng, count, _cell(mode, cy, ca), population=pop, start=10**6 + len(train))
        labels = np.array([mode.target(c) for c in train], dtype=int)
        if mode.key == "noisy" and biased:
            frontal_pos = (labels == 1) & np.array([mode.has_attribute(c) for c in train])
            labels = flip_labels(labels, frontal_pos, config.strengths.noise_rate, rng)
        seed = int(rng.integers(2**31 - 1))
        classifier = train_classifier(
            np.stack([render(c, config.image) for c in train]), labels, config.train, seed=seed
        )
        prob = classifier.predict_proba(pixels)
        y_pred = (prob >= 0.5).astype(int)
        gap = accuracy_gap(y, y_pred, attribute, mode.group)
        trials.append(
            _Trial(
                "simulated",
                mode,
                kind,
                iteration,
                _samples(test, mode.model, prob, y, paths),
                y,
                y_pred,
                attribute,
                seed,
                valid=bool(gap >= config.min_gap) if biased else True,
                accuracy_gap=gap,
            )
        )
    if iteration < config.null_iterations:
        trials.append(_shuffled(trials[0], rng))
    return trials


def _shuffled(trial: _Trial, rng: np.random.Generator) -> _Trial:
    """The planted trial with its errors moved to random cases: a classifier with no systematic failure."""
    err = rng.permutation(trial.err)
    y_pred = np.where(err, 1 - trial.y, trial.y)
    model = trial.mode.model
    samples = [
        replace(s, prediction=model if p else f"no_{model}", score=float(p))
        for s, p in zip(trial.samples, y_pred, strict=True)
    ]
    gap = accuracy_gap(trial.y, y_pred, trial.attribute, trial.mode.group)
    return replace(trial, kind="null_shuffled", samples=samples, y_pred=y_pred, valid=True, accuracy_gap=gap)


# ------------------------------------------------------------------------------------ text source

#: For the Indiana text, each mode's classifier (target class). Indiana has 34 pneumothorax
#: images with a known view, too few for a test set, so its correlation mode audits a finding
#: classifier (support devices remain the error attribute).
INDIANA_MODELS = {"correlation": "finding", "rare": "cardiomegaly", "noisy": "finding"}
_INDIANA_RULES: dict[str, tuple[Callable[[IndianaCase], bool], Callable[[IndianaCase], bool]]] = {
    "correlation": (lambda c: c.finding, lambda c: c.devices),
    "rare": (lambda c: c.cardiomegaly, lambda c: c.lateral),
    "noisy": (lambda c: c.finding, lambda c: c.frontal),
}


def _indiana_trials(
    mode: FailureMode, index: int, iteration: int, config: BenchConfig, pool: Sequence[IndianaCase]
) -> list[_Trial]:
    rng = np.random.default_rng([config.seed, 100 + index, iteration])
    target, has_attr = _INDIANA_RULES[mode.key]
    gy, ga = mode.group
    group_rows = [i for i, c in enumerate(pool) if target(c) == bool(gy) and has_attr(c) == bool(ga)]
    rest_rows = sorted(set(range(len(pool))) - set(group_rows))
    n_group, n_rest = _split_test(config.n_test, config.group_share, len(group_rows))
    rows = np.concatenate(
        [rng.choice(group_rows, n_group, replace=False), rng.choice(rest_rows, n_rest, replace=False)]
    )
    rows = rng.permutation(rows)
    cases = [pool[int(i)] for i in rows]
    y = np.array([target(c) for c in cases], dtype=int)
    attribute = np.array([has_attr(c) for c in cases], dtype=bool)
    in_group = (y == gy) & (attribute == bool(ga))
    box = config.black_box
    wrong = rng.random(len(cases)) < np.where(in_group, box.group_error, box.base_error)
    y_pred = np.where(wrong, 1 - y, y)
    model = INDIANA_MODELS[mode.key]
    planted = _Trial(
        "indiana",
        replace(mode, model=model),
        "planted",
        iteration,
        _samples(cases, model, y_pred.astype(float), y, None),
        y,
        y_pred,
        attribute,
        int(rng.integers(2**31 - 1)),
        accuracy_gap=accuracy_gap(y, y_pred, attribute, mode.group),
    )
    planted.valid = bool(planted.accuracy_gap >= config.min_gap)
    rate = box.group_error * config.group_share + box.base_error * (1 - config.group_share)
    wrong = rng.random(len(cases)) < rate
    y_null = np.where(wrong, 1 - y, y)
    null = replace(
        planted,
        kind="null_unbiased",
        samples=_samples(cases, model, y_null.astype(float), y, None),
        y_pred=y_null,
        valid=True,
        accuracy_gap=accuracy_gap(y, y_null, attribute, mode.group),
    )
    return [planted, null]


# ------------------------------------------------------------------------------------ auditing


def _tokens(space: TokenSpace, trial: _Trial, members: np.ndarray, slice_class: float) -> tuple[str, ...]:
    err_rows = np.flatnonzero(members & trial.err)
    ref_rows = np.flatnonzero(~trial.err & (trial.y == slice_class) & ~members)
    rows = err_rows if len(err_rows) else np.flatnonzero(members)
    return tuple(t.token for t in space.distinctiveness(rows, ref_rows, top_k=5))


def _audit_trial(
    trial: _Trial,
    emb: Embedded,
    space: TokenSpace,
    embedder: Embedder,
    settings: Settings,
    config: BenchConfig,
    embeddings: Sequence[tuple[str, tuple[str, ...]]],
) -> list[RunRecord]:
    err = trial.err
    marked = trial.attribute if trial.mode.group[1] else ~trial.attribute
    baseline_tokens = tuple(
        t.token for t in space.distinctiveness(np.flatnonzero(err), np.flatnonzero(~err), top_k=5)
    )
    common: dict[str, Any] = {
        "source": trial.source,
        "mode": trial.mode.key,
        "kind": trial.kind,
        "iteration": trial.iteration,
        "valid": trial.valid,
        "accuracy_gap": trial.accuracy_gap,
        "n_test": len(trial.y),
        "n_errors": int(err.sum()),
        "group_error_rate": float(err[trial.in_group].mean()) if trial.in_group.any() else math.nan,
        "rest_error_rate": float(err[~trial.in_group].mean()) if (~trial.in_group).any() else math.nan,
        "baseline_attribute": baseline_precision(err, marked),
        "baseline_group": baseline_precision(err, trial.in_group),
        "baseline_tokens": baseline_tokens,
        "planted_in_baseline": _planted(baseline_tokens, trial.mode.words),
    }
    positive = trial.mode.model
    records = []
    for name, modalities in embeddings:
        fused = fuse(
            {m: emb.blocks[m] for m in modalities},
            n_components=settings.audit.pca_components,
            random_state=trial.seed,
        )
        for slicer in config.slicers:
            started = time.perf_counter()
            audit = settings.audit.model_copy(update={"slicer": slicer, "seed": trial.seed})
            best, p_best = -1, math.nan
            best_tokens: tuple[str, ...] = ()
            if trial.kind == "planted":
                candidates = candidate_slices(
                    fused.embedding, trial.y, trial.y_pred, slicer=slicer, audit=audit, seed=trial.seed
                )
                best, p_best = best_candidate(candidates, trial.in_group, config.k)
                if best >= 0:
                    c = candidates[best]
                    best_tokens = _tokens(space, trial, c.members, c.slice_class)
            try:
                report, _ = run_audit(
                    trial.samples,
                    embedder=embedder,
                    settings=settings.model_copy(update={"audit": audit}),
                    target_class=positive,
                    modalities=modalities,
                )
                slices = report.slices
            except AgentError as err_:
                log.warning("audit failed (%s, %s, %s): %s", trial.mode.key, name, slicer, err_)
                slices = ()
            uid_row = {s.study_uid: i for i, s in enumerate(trial.samples)}
            orders = [np.array([uid_row[m.study_uid] for m in sl.members]) for sl in slices]
            p_reported = precision_at_k(orders, trial.in_group, config.k)
            if slices:
                first = slices[0]
                p_first = precision_at_k(orders[:1], trial.in_group, config.k)
                first_tokens = tuple(t.token for t in first.tokens[:5])
                first_p, first_err = first.p_value, first.error_precision_at_10
            else:
                p_first, first_tokens, first_p, first_err = 0.0, (), math.nan, math.nan
            records.append(
                RunRecord(
                    **common,
                    embedding=name,
                    slicer=slicer,
                    p_at_k_best=p_best,
                    p_at_k_first=p_first,
                    p_at_k_reported=p_reported,
                    n_significant=len(slices),
                    first_p_value=first_p,
                    first_error_precision=first_err,
                    best_tokens=best_tokens,
                    first_tokens=first_tokens,
                    planted_in_best=_planted(best_tokens, trial.mode.words),
                    planted_in_first=_planted(first_tokens, trial.mode.words),
                    seconds=time.perf_counter() - started,
                )
            )
    return records


def _invalid_records(
    trial: _Trial, config: BenchConfig, embeddings: Sequence[tuple[str, tuple[str, ...]]]
) -> list[RunRecord]:
    err = trial.err
    return [
        RunRecord(
            source=trial.source,
            mode=trial.mode.key,
            kind=trial.kind,
            iteration=trial.iteration,
            embedding=name,
            slicer=slicer,
            valid=False,
            accuracy_gap=trial.accuracy_gap,
            n_test=len(trial.y),
            n_errors=int(err.sum()),
            group_error_rate=float(err[trial.in_group].mean()) if trial.in_group.any() else math.nan,
            rest_error_rate=float(err[~trial.in_group].mean()),
            p_at_k_best=math.nan,
            p_at_k_first=math.nan,
            p_at_k_reported=math.nan,
            n_significant=0,
            first_p_value=math.nan,
            first_error_precision=math.nan,
            best_tokens=(),
            first_tokens=(),
            baseline_attribute=math.nan,
            baseline_group=math.nan,
            baseline_tokens=(),
            planted_in_best=False,
            planted_in_first=False,
            planted_in_baseline=False,
            seconds=0.0,
        )
        for name, _ in embeddings
        for slicer in config.slicers
    ]


def run_bench(
    config: BenchConfig,
    *,
    embedder: Embedder,
    settings: Settings,
    workdir: Path,
    progress: Callable[[str], None] | None = None,
) -> BenchResult:
    """Run every source, mode and iteration that ``config`` names; return one record per audit.

    ``workdir`` receives the test sets' DICOM files; ``progress`` is called with one line per
    finished test set.
    """
    started = time.perf_counter()
    # The bench writes its DICOM files under workdir: the one folder its images are read from.
    roots = (*settings.images.roots, workdir.resolve())
    settings = settings.model_copy(update={"images": settings.images.model_copy(update={"roots": roots})})
    access = ImageAccess.from_settings(settings.images)
    result = BenchResult(config)
    say = progress or (lambda line: None)
    modes = [m for m in MODES if m.key in config.modes]
    pool: list[IndianaCase] | None = None
    if "indiana" in config.sources:
        pool = load_indiana(config.indiana_dir)
        result.notes.append(
            f"Indiana: {len(pool)} images with a view position in their header; no pixels, so no image "
            "embedding; the classifier is a black box that errs on the planted group at "
            f"{config.black_box.group_error:g} and elsewhere at {config.black_box.base_error:g}"
        )
    for source in config.sources:
        embeddings = [e for e in EMBEDDINGS if source == "simulated" or "image" not in e[1]]
        modalities = tuple(m for m in MODALITIES if any(m in e[1] for e in embeddings))
        for index, mode in enumerate(modes):
            n = config.iterations if source == "simulated" else config.text_iterations
            for iteration in range(n):
                t0 = time.perf_counter()
                if source == "simulated":
                    trials = _image_trials(mode, index, iteration, config, workdir)
                else:
                    assert pool is not None
                    trials = _indiana_trials(mode, index, iteration, config, pool)
                t_train = time.perf_counter() - t0
                emb = embed_samples(trials[0].samples, modalities, embedder, images=access)
                space = TokenSpace(
                    min_df=settings.audit.token_min_df, metadata_vocabulary=emb.metadata_words
                ).fit(emb.texts, reports=emb.raw_reports, metadata=emb.metadata)
                for trial in trials:
                    if trial.valid:
                        result.records += _audit_trial(
                            trial, emb, space, embedder, settings, config, embeddings
                        )
                    else:
                        result.records += _invalid_records(trial, config, embeddings)
                planted = trials[0]
                say(
                    f"{source} {mode.key} {iteration + 1}/{n}: gap {planted.accuracy_gap:+.2f} "
                    f"({'valid' if planted.valid else 'invalid'}), {int(planted.err.sum())} errors, "
                    f"data+classifier {t_train:.0f} s, total {time.perf_counter() - t0:.0f} s"
                )
    result.seconds = time.perf_counter() - started
    return result
