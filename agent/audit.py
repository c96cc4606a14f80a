"""The one audit pipeline that the batch CLI and the streaming agent both call.

samples -> embed the chosen modalities -> fuse -> discover and test slices -> explain -> report.

Each slice is named on the fold whose slicer found it, and every name is checked on the held-out
fold that tested the slice (:func:`validated_tokens`); slices that are one failure are grouped into
findings (:func:`agent.findings.group_slices`).
"""

from __future__ import annotations

import logging
import secrets
from collections import Counter
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
from scipy import sparse
from threadpoolctl import threadpool_limits
from tqdm import tqdm

from agent.config import Settings
from agent.dicom import header_values
from agent.embed.base import Embedder
from agent.errors import AgentError, FitError, ImageRefusedError
from agent.events import ClassLabel
from agent.explain import TokenSpace, r_attr, scrub, separation, tokens
from agent.exporter import shown
from agent.findings import group_slices
from agent.fuse import MODALITIES, Fused, fuse
from agent.metrics import error_precision_at_k
from agent.report import Member, SliceReport, SliceResult, TokenResult, Window
from agent.sample import Problem, Sample
from agent.slicing import (
    ErrorAwareMixture,
    ErrorScoreSlicer,
    ErrorsOnlyMixture,
    NeighbourScanSlicer,
    SliceFinding,
    Slicer,
    Space,
    TermRuleSlicer,
    discover_in_spaces,
)
from agent.slicing.base import whitened_rows
from agent.slicing.mixture import MixtureParams
from agent.warm import WarmStart, stable_folds

if TYPE_CHECKING:
    from agent.images import ImageAccess
    from agent.pacs import FetchedImage

__all__ = [
    "Embedded",
    "FitView",
    "audit_embedded",
    "available_modalities",
    "default_target_class",
    "embed_samples",
    "fit_slices",
    "run_audit",
    "validated_tokens",
    "window_capacity",
]

log = logging.getLogger(__name__)


@dataclass
class Embedded:
    """Per-case embeddings by modality (NaN rows where a case lacks one) and the text to score.

    ``reports`` are scrubbed (what was embedded); ``raw_reports`` and ``metadata`` stay in memory
    only so that the explainer can learn, over the whole window, which words name a person.
    """

    blocks: dict[str, np.ndarray]
    texts: list[str]
    reports: list[str]
    metadata_words: frozenset[str]
    problems: list[Problem]
    raw_reports: list[str] = field(default_factory=list)
    metadata: list[dict[str, object]] = field(default_factory=list)
    image_keys: list[str | None] = field(default_factory=list)
    """Per case, the cache key of its image vector (None without one): what the store keeps so
    that later refits find the vector without decoding the file again."""
    decoded: int = 0
    """Images decoded by this call, from files or fetched (cases whose vector was found by key are not)."""


@dataclass(frozen=True)
class FitView:
    """What one audit fitted, for those who describe its slices further (the early warning): the
    window, its embeddings and fusion, and each reported slice beside the finding it came from."""

    samples: Sequence[Sample]
    target: ClassLabel
    blocks: dict[str, np.ndarray]
    fused: Fused
    slices: tuple[SliceResult, ...]
    findings: tuple[SliceFinding, ...]


def available_modalities(samples: Sequence[Sample]) -> tuple[str, ...]:
    """The modalities a stream actually carries, in canonical order."""
    has = {
        "image": any(s.has_image for s in samples),
        "report": any(s.report for s in samples),
        "metadata": any(s.metadata or s.has_image for s in samples),
    }
    return tuple(m for m in MODALITIES if has[m])


def default_target_class(samples: Sequence[Sample], *, min_count: int = 1) -> ClassLabel:
    """The least frequent confirmed label among those with ``min_count`` samples or more (among
    all, when none has as many): in screening, the finding is the rare class.

    The floor keeps a stray class out: one inference and its label carrying a class written by
    a broken or hostile upstream (an identifier in the class field) would otherwise be the rarest,
    and the audit of the real finding would silently turn into an audit of that one case.

    >>> from types import SimpleNamespace as S
    >>> window = [S(label="normal")] * 90 + [S(label="ptx")] * 12 + [S(label="MRN0012345")]
    >>> default_target_class(window), default_target_class(window, min_count=10)
    ('MRN0012345', 'ptx')
    """
    counts = Counter(s.label for s in samples)
    if not counts:
        raise FitError("no labeled samples: nothing to audit")
    enough = [c for c in counts if counts[c] >= min_count] or list(counts)
    return min(enough, key=lambda c: (counts[c], str(c)))


def _batched(
    items: Sequence[object], size: int, desc: str, progress: bool
) -> list[tuple[int, Sequence[object]]]:
    starts = range(0, len(items), size)
    bar = tqdm(starts, desc=desc, unit="batch", disable=not progress or len(items) == 0, leave=False)
    return [(i, items[i : i + size]) for i in bar]


def embed_samples(
    samples: Sequence[Sample],
    modalities: Sequence[str],
    embedder: Embedder,
    *,
    batch_size: int = 32,
    image_size: int = 224,
    progress: bool = False,
    images: ImageAccess | None = None,
    fetched: Mapping[int, FetchedImage] | None = None,
) -> Embedded:
    """Embed what each case carries; unreadable images are problems, not crashes.

    Image files are read only through ``images`` (:class:`~agent.images.ImageAccess`, from the
    ``images`` settings); without it every image path is refused as ``image_refused``. An image on
    the PACS is never fetched here: ``fetched`` holds, by case index, what the caller fetched
    through the same boundary (:class:`agent.pacs.PacsClient`); a case whose image is on the PACS
    and neither fetched nor embedded before has no image vector.
    """
    from agent import dicom
    from agent.embed.cache import cached_vectors, image_key

    n = len(samples)
    problems: list[Problem] = []
    metadata: list[dict[str, object]] = []
    pixels: list[np.ndarray | None] = []
    # A case whose image was embedded before (on arrival) keeps its vector's key: no decoding again.
    known: dict[int, np.ndarray] = {}
    if "image" in modalities:
        keyed = [i for i, s in enumerate(samples) if s.has_image and s.image_key]
        found = cached_vectors(embedder, [samples[i].image_key or "" for i in keyed])
        known = {
            i: v
            for i, v in zip(keyed, found, strict=True)
            if v is not None and v.shape == (embedder.image_dim,)
        }
    fetched = fetched or {}
    decoded = 0
    for i, s in enumerate(samples):
        meta = dict(s.metadata or {})
        image = None
        if i in fetched:
            meta = meta or dict(fetched[i].header)
            if "image" in modalities and i not in known:
                image = fetched[i].pixels
                decoded += 1
        elif s.image and (("image" in modalities and i not in known) or not meta):
            try:
                if not meta:
                    meta = dict(dicom.read_header(s.image, access=images))
                if "image" in modalities and i not in known:
                    image = dicom.read_pixels(s.image, size=image_size, access=images)
                    decoded += 1
            except ImageRefusedError as err:
                problems.append(Problem(f"study {s.study_uid}", err.reason, str(err)))
            except (AgentError, OSError) as err:
                problems.append(Problem(f"study {s.study_uid}", "unreadable_image", str(err)))
        metadata.append(meta)
        pixels.append(image)

    sentences = [
        _read(dicom.metadata_sentence, m, f"study {s.study_uid}", "metadata", problems) if m else ""
        for s, m in zip(samples, metadata, strict=True)
    ]
    # Reports are scrubbed before they are embedded, not only before tokens are scored: the
    # header's names, numbers and dates are noise to the encoder and must not shape slices.
    reports = [
        _read(scrub, s.report, f"study {s.study_uid}", "report", problems) if s.report else ""
        for s in samples
    ]
    blocks: dict[str, np.ndarray] = {}

    def embed_texts(texts: list[str], desc: str) -> np.ndarray:
        # Each distinct text is embedded once: metadata sentences repeat across most of a window
        # (one per view, device, sex and age band), and so do templated reports.
        out = np.full((n, embedder.text_dim), np.nan, dtype=np.float32)
        rows = [i for i, t in enumerate(texts) if t]
        # Batches of texts of like length: a batch is padded to its longest text, so a window of
        # reports from 20 to 100 word pieces in arrival order pays about half its encoder time
        # for padding.
        distinct = sorted(dict.fromkeys(texts[i] for i in rows), key=len)
        vectors = np.empty((len(distinct), embedder.text_dim), dtype=np.float32)
        for start, chunk in _batched(distinct, batch_size, desc, progress):
            vectors[start : start + len(chunk)] = embedder.embed_texts(list(chunk))  # type: ignore[arg-type]
        where = {text: j for j, text in enumerate(distinct)}
        out[rows] = vectors[[where[texts[i]] for i in rows]]
        return out

    for modality in modalities:
        if modality == "image":
            out = np.full((n, embedder.image_dim), np.nan, dtype=np.float32)
            for i, vector in known.items():
                out[i] = vector
            rows = [i for i, p in enumerate(pixels) if p is not None]
            for start, chunk in _batched([pixels[i] for i in rows], batch_size, "images", progress):
                out[rows[start : start + len(chunk)]] = embedder.embed_images(list(chunk))  # type: ignore[arg-type]
            blocks["image"] = out
        elif modality == "report":
            blocks["report"] = embed_texts(reports, "reports")
        elif modality == "metadata":
            blocks["metadata"] = embed_texts(sentences, "metadata")
    vocabulary = frozenset(w for sentence in set(sentences) for w in tokens(sentence))
    texts = [f"{r}\n{m}" for r, m in zip(reports, sentences, strict=True)]
    raw = [s.report or "" for s in samples]
    keys = [
        samples[i].image_key if i in known else image_key(embedder.name, p) if p is not None else None
        for i, p in enumerate(pixels)
    ]
    return Embedded(blocks, texts, reports, vocabulary, problems, raw, metadata, keys, decoded)


def _read(describe: Callable[[Any], str], value: Any, where: str, what: str, problems: list[Problem]) -> str:
    """``describe(value)``, the text a case's metadata or report is embedded as; a value that
    fails it is a problem (``unembeddable``, its kind named, never its value) and the case goes
    on without that modality, as with an unreadable image. Without this, one case's value
    failing every time (an age of 10**400 did) failed every batch, and every refit, of its window."""
    try:
        return describe(value)
    except Exception as err:  # written by whoever sent the event: no failure of it stops a batch
        problems.append(
            Problem(where, "unembeddable", f"its {what} could not be read ({type(err).__name__}); left out")
        )
        return ""


def _image_access(settings: Settings) -> ImageAccess:
    from agent.images import ImageAccess  # here: a text-only audit does not import pydicom

    return ImageAccess.from_settings(settings.images)


def _make_slicer(settings: Settings, n_components: int) -> Callable[[int], Slicer]:
    make = _slicer_from(settings, n_components)
    return lambda seed: make(seed, None)


def _slicer_from(settings: Settings, n_components: int) -> Callable[[int, MixtureParams | None], Slicer]:
    """The configured slicer for a seed; the error-aware one starts EM from the parameters given."""
    a = settings.audit
    if a.slicer == "errors_only":
        return lambda seed, _: ErrorsOnlyMixture(
            a.n_slices, min_cluster_size=a.min_slice_size, reg_covar=a.reg_covar, random_state=seed
        )
    return lambda seed, start: ErrorAwareMixture(
        n_components, gamma=a.gamma, reg_covar=a.reg_covar, random_state=seed, init_params=start
    )


def fit_slices(
    blocks: dict[str, np.ndarray],
    y: np.ndarray,
    y_pred: np.ndarray,
    settings: Settings,
    dims: int,
    components: int,
    *,
    keys: Sequence[str] = (),
    warm: WarmStart | None = None,
    space: TokenSpace | None = None,
    headers: Sequence[Mapping[str, object] | None] = (),
) -> tuple[Fused, list[SliceFinding]]:
    """The numerical part of an audit: fuse the blocks, then find and test slices in the spaces
    of ``audit.spaces`` (:func:`_spaces`; ``space``, the fitted token space, and ``headers``,
    each case's metadata, give the terms).

    With ``warm``, each case's fold is fixed by its key (``keys``, one per case), and the fusion
    and the fused space's mixtures, and each modality's own, start from ``warm.previous``;
    ``warm.current`` is set to what this fit leaves (the scans, score and term spaces start
    cold: they are fitted on the whole window, or hold no state worth carrying).
    It runs on ``audit.blas_threads`` BLAS and OpenMP threads: on a small sidecar more would
    fight the embedder's threads and the event loop for the same cores.
    """
    a = settings.audit
    with threadpool_limits(limits=a.blas_threads):
        if warm is None:
            fused = fuse(blocks, n_components=dims, random_state=a.seed)
        else:
            fused = warm.fuse(blocks, n_components=dims, random_state=a.seed)
        make_slicer = _make_slicer(settings, components)
        folds = None
        if warm is not None:
            make_slicer = warm.slicers(_slicer_from(settings, components), a.seed)
            folds = stable_folds(keys, a.n_splits, a.seed)
        findings = discover_in_spaces(
            _spaces(
                settings,
                fused.embedding,
                blocks,
                space,
                dims,
                components,
                mixture=make_slicer,
                headers=headers,
                warm=warm,
            ),
            y,
            y_pred,
            n_slices=a.n_slices,
            n_splits=a.n_splits,
            beta=a.beta,
            alpha=a.alpha,
            min_size=a.min_slice_size,
            random_state=a.seed,
            folds=folds,
        )
    if warm is not None:
        warm.finish()
    return fused, findings


def _spaces(
    settings: Settings,
    fused: np.ndarray,
    blocks: dict[str, np.ndarray],
    space: TokenSpace | None,
    dims: int,
    components: int,
    *,
    mixture: Callable[[int], Slicer] | None = None,
    headers: Sequence[Mapping[str, object] | None] = (),
    warm: WarmStart | None = None,
) -> list[Space]:
    """The views slices are sought in (``audit.spaces``), under one multiplicity correction.

    ``fused``: the fused embedding. ``modalities``: each modality's own embedding, when there is
    more than one (a marker only the pixels show is drowned beside two text blocks). ``scores``:
    in each modality's own embedding, the cases an error score fitted on the fitting fold ranks
    highest (:class:`~agent.slicing.ErrorScoreSlicer`: a group that is a minor direction of
    the embedding's variance, which a mixture does not cut along). ``terms``:
    the binary presence of each report and header term carried by at least ``min_slice_size``
    cases (:class:`~agent.slicing.TermRuleSlicer`; a slice two rare words define is a needle
    in a whole-report embedding); each case's safe header values (``headers``: ``view=lateral``,
    ``age=sixties``) are columns of their own as well, so that a lateral view is not the word
    "lateral" that reports of frontal films use too. ``mixture`` makes the fused space's
    slicers (by default the configured one, cold). With ``warm``, each modality's own space
    starts from its last refit's basis, projections and mixtures (:meth:`WarmStart.space`).
    """
    a = settings.audit
    cold = _make_slicer(settings, components)
    if mixture is None:
        mixture = cold
    out = [Space("fused", fused, mixture)] if "fused" in a.spaces else []
    scan = "neighbours" in a.spaces and a.permutations > 0

    def own_space(name: str, block: np.ndarray) -> tuple[np.ndarray, Callable[[int], Slicer]]:
        """A modality's own embedding and mixture slicers: cold, or from its last refit's state."""
        if warm is None:
            return fuse({name: block}, n_components=dims, random_state=a.seed).embedding, cold
        start = warm.space(name)
        X = start.fuse({name: block}, n_components=dims, random_state=a.seed).embedding
        return X, start.slicers(_slicer_from(settings, components), a.seed)

    own = {
        name: own_space(name, block)
        for name, block in blocks.items()
        if ("modalities" in a.spaces and len(blocks) > 1) or "scores" in a.spaces or scan
    }
    if "modalities" in a.spaces and len(blocks) > 1:
        out += [Space(name, X, make) for name, (X, make) in own.items()]
    if "scores" in a.spaces:
        out += [Space(f"{name} score", X, lambda seed: ErrorScoreSlicer()) for name, (X, _) in own.items()]
    if scan:
        out += [
            Space(
                f"{name} neighbours",
                X,
                lambda seed: NeighbourScanSlicer(min_support=a.min_slice_size),
                permutations=a.permutations,
            )
            for name, (X, _) in own.items()
        ]
    columns = [] if space is None or space.matrix_ is None else [(space.matrix_ > 0).tocsc()]
    if "terms" in a.spaces and len(headers) == len(fused):
        columns.append(_header_terms(headers))
    if "terms" in a.spaces and columns:
        present = sparse.hstack(columns).tocsc()
        carried = np.flatnonzero(np.asarray(present.sum(axis=0)).ravel() >= a.min_slice_size)
        if len(carried):
            terms = present[:, carried].astype(np.float32)  # sparse: n * terms is never dense
            out.append(
                Space(
                    "terms",
                    terms,
                    lambda seed: TermRuleSlicer(min_support=a.min_slice_size),
                    permutations=a.permutations,
                )
            )
    return out or [Space("fused", fused, mixture)]


def _header_terms(headers: Sequence[Mapping[str, object] | None]) -> sparse.csc_matrix:
    """``(n, values)`` presence of each case's safe header values (:func:`~agent.dicom.header_values`)."""
    words = [set(header_values(h)) if h else set() for h in headers]
    vocabulary = {w: i for i, w in enumerate(sorted(set().union(*words)))}
    rows = [i for i, ws in enumerate(words) for _ in ws]
    cols = [vocabulary[w] for ws in words for w in ws]
    return sparse.csc_matrix(
        (np.ones(len(rows), dtype=np.float32), (rows, cols)), shape=(len(headers), len(vocabulary))
    )


def window_capacity(settings: Settings, n: int) -> tuple[int, int]:
    """PCA dimensions and mixture components a window of ``n`` cases can support.

    A diagonal Gaussian needs several cases per dimension and per component; on a small
    window the configured 128 dimensions and 25 components only fit noise. Each fitting
    fold holds ``n * (n_splits - 1) / n_splits`` cases.
    """
    a = settings.audit
    n_fit = n * (a.n_splits - 1) // a.n_splits
    dims = max(2, min(a.pca_components, n // a.cases_per_dimension))
    components = max(2, min(a.n_components, n_fit // a.cases_per_component))
    return dims, components


def _slice_id() -> str:
    """A random slice id: nothing about the members can be read back from it (it shows in logs)."""
    return f"s-{secrets.token_hex(5)}"


def _unit_mean(blocks: Sequence[np.ndarray]) -> np.ndarray:
    """Per-case mean of the available unit vectors among same-width blocks (NaN rows skipped)."""
    stacked = np.stack([b / np.linalg.norm(b, axis=1, keepdims=True) for b in blocks])
    mean = np.nanmean(np.where(np.isfinite(stacked), stacked, np.nan), axis=0)
    return np.nan_to_num(mean)


def _whitened(block: np.ndarray, dims: int, seed: int) -> np.ndarray:
    """A block's principal components, each at unit variance, as unit rows (NaN rows: zeros)."""
    ok = np.all(np.isfinite(block), axis=1)
    out = np.zeros((len(block), dims))
    if ok.sum() > 2:
        X = whitened_rows(fuse({"block": block[ok]}, n_components=dims, random_state=seed).embedding)
        out[ok, : X.shape[1]] = X
    return out


def _profile(vectors: np.ndarray, members: np.ndarray, same_class: np.ndarray) -> np.ndarray:
    """Mean case vector of a slice's members less that of the rest of its class (finite rows)."""
    ok = np.all(np.isfinite(vectors), axis=1)
    inside, rest = vectors[members & ok], vectors[same_class & ~members & ok]
    if not len(inside) or not len(rest):
        return np.zeros(vectors.shape[1])
    return np.asarray(inside.mean(axis=0) - rest.mean(axis=0), dtype=np.float64)


def validated_tokens(
    space: TokenSpace,
    candidates: Sequence[TokenResult],
    held_out_rows: np.ndarray,
    in_slice: np.ndarray,
    *,
    alpha: float,
) -> tuple[tuple[TokenResult, ...], tuple[TokenResult, ...]]:
    """Check each candidate name on held-out cases; return those that pass and those that fail.

    A token passes when its presence separates the held-out members of the slice
    (``in_slice``, aligned with ``held_out_rows``) from the other held-out cases: AUROC above
    0.5, and one-sided Mann-Whitney p-value, Bonferroni-adjusted over the candidates, at most
    ``alpha``.
    """
    passed: list[TokenResult] = []
    failed: list[TokenResult] = []
    for t in candidates:
        sep = separation(space.presence(t.token, held_out_rows), in_slice)
        p = min(1.0, sep.p_value * len(candidates))
        checked = TokenResult(t.token, t.ds, t.r_attr, sep.auroc, p)
        (passed if sep.auroc > 0.5 and p <= alpha else failed).append(checked)
    return tuple(passed), tuple(failed)


def run_audit(
    samples: Sequence[Sample],
    *,
    embedder: Embedder,
    settings: Settings,
    target_class: ClassLabel | None = None,
    modalities: Sequence[str] | None = None,
    progress: bool = False,
    known_names: Callable[[Collection[str]], Collection[str]] | None = None,
    warm: WarmStart | None = None,
    on_fit: Callable[[FitView], None] | None = None,
) -> tuple[SliceReport, list[Problem]]:
    """Audit one model's labeled samples for one target class (binary: target vs rest).

    ``known_names`` tells which candidate token words are names known from elsewhere (the store's
    person-name digests); they never become tokens. With ``warm`` (a stream's refit) each case's
    fold is fixed by its study id, the fusion and the mixtures start from ``warm.previous``, and
    ``warm.current`` is what the next refit starts from (:mod:`agent.warm`). ``on_fit`` is called
    with what was fitted (:class:`FitView`) before the report is returned."""
    if not samples:
        raise FitError("no labeled samples: nothing to audit")
    models = {s.model for s in samples}
    if len(models) != 1:
        raise FitError(f"expected samples of one model, got {sorted(models)}")
    model = next(iter(models))
    if target_class is None:
        target = default_target_class(samples, min_count=settings.audit.min_slice_size)
    else:
        target = target_class
    chosen = tuple(modalities or settings.modalities or available_modalities(samples))
    if not chosen:
        raise FitError("the stream carries no image, report or metadata to embed")
    notes: list[str] = []
    carried = available_modalities(samples)
    absent = [m for m in chosen if m not in carried]
    if absent:
        notes.append(f"modalities requested but not in the stream, dropped: {', '.join(absent)}")
        chosen = tuple(m for m in chosen if m in carried)
        if not chosen:
            raise FitError(f"none of the requested modalities is in the stream ({', '.join(absent)})")

    y = np.array([s.label == target for s in samples], dtype=np.float64)
    y_pred = np.array([s.prediction == target for s in samples], dtype=np.float64)
    err = y != y_pred
    log.info(
        "auditing %s target=%s on %d cases (%d errors) with %s",
        shown(model),
        shown(target),
        len(samples),
        int(err.sum()),
        "+".join(chosen),
    )

    emb = embed_samples(
        samples,
        chosen,
        embedder,
        batch_size=settings.embed.batch_size,
        image_size=settings.embed.image_size,
        progress=progress,
        images=_image_access(settings),
    )
    return audit_embedded(
        samples,
        emb,
        embedder=embedder,
        settings=settings,
        target=target,
        modalities=chosen,
        notes=notes,
        known_names=known_names,
        warm=warm,
        on_fit=on_fit,
    ), emb.problems


def audit_embedded(
    samples: Sequence[Sample],
    emb: Embedded,
    *,
    embedder: Embedder,
    settings: Settings,
    target: ClassLabel,
    modalities: Sequence[str],
    notes: Sequence[str] = (),
    known_names: Callable[[Collection[str]], Collection[str]] | None = None,
    warm: WarmStart | None = None,
    on_fit: Callable[[FitView], None] | None = None,
) -> SliceReport:
    """Discover, test, name and group the slices of samples already embedded (``emb``).

    The part of :func:`run_audit` after embedding: a benchmark that embeds a pool of cases once
    audits many windows drawn from it through here.
    """
    a = settings.audit
    notes = list(notes)
    chosen = tuple(modalities)
    model = samples[0].model
    y = np.array([s.label == target for s in samples], dtype=np.float64)
    y_pred = np.array([s.prediction == target for s in samples], dtype=np.float64)
    err = y != y_pred
    dims, components = window_capacity(settings, len(samples))
    if (dims, components) != (a.pca_components, a.n_components) and a.slicer == "error_aware":
        notes.append(
            f"window of {len(samples)} cases: {dims} PCA dimensions, {components} mixture components"
        )
    space = TokenSpace(min_df=a.token_min_df, metadata_vocabulary=emb.metadata_words)
    space.fit(emb.texts, reports=emb.raw_reports, metadata=emb.metadata, known_names=known_names)
    fused, findings = fit_slices(
        emb.blocks,
        y,
        y_pred,
        settings,
        dims,
        components,
        keys=[s.study_uid for s in samples],
        warm=warm,
        space=space,
        headers=emb.metadata if "metadata" in chosen else (),
    )
    for name, count in fused.missing.items():
        if count:
            notes.append(f"{count} of {len(samples)} cases lack the {name} modality (zero block)")

    shared = embedder.shared_space and "image" in emb.blocks
    case_vectors: np.ndarray | None
    if shared:
        case_vectors = emb.blocks["image"]
    else:
        text_blocks = [emb.blocks[m] for m in ("report", "metadata") if m in emb.blocks]
        case_vectors = _unit_mean(text_blocks) if text_blocks else None
    # What a slice's profile is measured in: the case vectors, and the pixels beside the text
    # where they are a space of their own (a marker only the pixels show, found in each class,
    # is one failure: its two slices differ from their classes in the same image direction).
    # The pixels are whitened first (each principal axis at unit variance): a marker is a minor
    # axis, and in the raw vectors a few dozen members' mean differs mostly along major ones.
    profile_vectors = case_vectors
    if not shared and "image" in emb.blocks:
        pixels = _whitened(emb.blocks["image"], min(dims, 30), a.seed)
        profile_vectors = pixels if case_vectors is None else np.hstack([case_vectors, pixels])

    def scored(err_rows: np.ndarray, ref_rows: np.ndarray) -> tuple[TokenResult, ...]:
        top = space.distinctiveness(err_rows, ref_rows, top_k=a.top_tokens)
        if not top or case_vectors is None:
            return tuple(TokenResult(t.token, t.ds) for t in top)
        vecs = embedder.embed_texts([t.token for t in top])
        ok_err = err_rows[np.all(np.isfinite(case_vectors[err_rows]), axis=1)]
        ok_ref = ref_rows[np.all(np.isfinite(case_vectors[ref_rows]), axis=1)]
        r = r_attr(vecs, case_vectors[ok_err], case_vectors[ok_ref])
        return tuple(TokenResult(t.token, t.ds, float(v)) for t, v in zip(top, r, strict=True))

    uids = [s.study_uid for s in samples]
    slices: list[SliceResult] = []
    profiles: list[np.ndarray] = []
    everyone = np.ones(len(samples), dtype=bool)
    for finding in findings:
        order = finding.ranking()
        held = finding.held_out if finding.held_out is not None else ~everyone
        # Names are chosen on the cases that fitted the slicer and checked on those it never saw.
        fitting = ~held
        same_class = y == finding.slice_class
        err_members = order[err[order] & fitting[order]]
        chosen_on = err_members if len(err_members) else order[fitting[order]]
        ref = np.flatnonzero(~err & same_class & ~finding.members & fitting)
        check_rows = np.flatnonzero(held & same_class)
        names, rejected = validated_tokens(
            space, scored(chosen_on, ref), check_rows, finding.members[check_rows], alpha=a.alpha
        )
        if profile_vectors is not None:
            profiles.append(_profile(profile_vectors, finding.members, same_class))
        slices.append(
            SliceResult(
                rank=len(slices) + 1,
                id=_slice_id(),
                size=len(order),
                error_rate=finding.error_rate,
                rest_error_rate=finding.rest_error_rate,
                p_value=finding.p_value,
                error_precision_at_10=error_precision_at_k(order, err, 10),
                n_tested=finding.n_tested,
                members=tuple(Member(uids[i], float(finding.probability[i])) for i in order),
                tokens=names,
                slice_class=target if finding.slice_class == 1 else "rest",
                rejected_tokens=rejected,
            )
        )
    baseline = scored(np.flatnonzero(err), np.flatnonzero(~err))
    times = [s.timestamp for s in samples]
    report = SliceReport(
        model=model,
        target_class=target,
        modalities=chosen,
        window=Window(len(samples), int(err.sum()), min(times).isoformat(), max(times).isoformat()),
        slices=tuple(slices),
        baseline_tokens=baseline,
        slicer=a.slicer,
        r_attr_space=("image" if shared else "text") if case_vectors is not None else None,
        embedder=embedder.name,
        notes=tuple(notes),
        findings=group_slices(
            slices, top_tokens=a.top_tokens, profiles=profiles if profile_vectors is not None else None
        ),
    )
    if on_fit is not None:
        on_fit(FitView(samples, target, emb.blocks, fused, tuple(slices), tuple(findings)))
    log.info(
        "audit of %s done: %d significant slice(s) in %d finding(s)",
        shown(model),
        len(slices),
        len(report.findings),
    )
    return report
