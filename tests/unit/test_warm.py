"""Warm refits: the state they keep, its store, the basis's drift check, the mixtures' start, an
honest held-out test over many warm refits, and the planted failures found as by a cold refit."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
from sklearn.exceptions import ConvergenceWarning
from test_refit_golden import HashingEmbedder, _stream_samples

from agent.audit import fit_slices, run_audit, window_capacity
from agent.config import Settings, load_settings
from agent.fuse import fuse
from agent.simulate import StreamSpec, generate_stream, planted_gaussian
from agent.slicing import ErrorAwareMixture
from agent.slicing.mixture import MixtureParams
from agent.warm import WarmStart, WarmState, stable_folds


def _blocks(n: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    image = (rng.normal(size=(n, 30)) * np.linspace(0.2, 3.0, 30)).astype(np.float32)
    report = rng.normal(size=(n, 10)).astype(np.float32)
    report[::9] = np.nan  # cases without a report
    return {"image": image, "report": report}


def _state(seed: int = 0) -> WarmState:
    data = planted_gaussian(600, 12, seed=seed)
    fused = fuse({"x": data.X}, n_components=6)
    mixture = ErrorAwareMixture(4, random_state=0).fit(fused.embedding, data.y, data.y_pred)
    assert fused.basis is not None
    return WarmState(fused.basis, {0: MixtureParams.of(mixture), 1: MixtureParams.of(mixture)}, age=3)


def test_stable_folds_follow_the_key_not_the_window():
    keys = [f"1.2.3.{i}" for i in range(4000)]
    folds = stable_folds(keys, 2, 0)
    assert 0.45 < folds.mean() < 0.55
    order = np.random.default_rng(0).permutation(len(keys))
    assert (stable_folds([keys[i] for i in order], 2, 0) == folds[order]).all()
    assert (stable_folds(keys[100:], 2, 0) == folds[100:]).all()
    assert (stable_folds(keys, 2, 1) != folds).mean() > 0.4  # another seed, other folds
    assert set(stable_folds(keys, 3, 0)) == {0, 1, 2}


def test_warm_state_round_trip_and_unreadable_bytes():
    state = _state()
    back = WarmState.from_bytes(state.to_bytes())
    assert back is not None and back.age == 3
    assert back.basis.modalities == ("x",) and back.basis.widths == (12,)
    assert back.basis.axes.dtype == np.float32
    np.testing.assert_allclose(back.basis.axes, state.basis.axes)
    np.testing.assert_allclose(back.mixtures[1].means, state.mixtures[1].means, rtol=1e-6)
    assert back.spaces == {}
    assert WarmState.from_bytes(None) is None
    assert WarmState.from_bytes(b"not an npz") is None
    assert WarmState.from_bytes(state.to_bytes()[:100]) is None
    # Each modality's own space travels with it, under its name.
    nested = WarmState(state.basis, state.mixtures, 3, spaces={"image": _state(1), "report": _state(2)})
    back = WarmState.from_bytes(nested.to_bytes())
    assert back is not None and set(back.spaces) == {"image", "report"} and set(back.mixtures) == {0, 1}
    for name, seed in (("image", 1), ("report", 2)):
        np.testing.assert_allclose(back.spaces[name].basis.axes, _state(seed).basis.axes)
        np.testing.assert_allclose(
            back.spaces[name].mixtures[0].means, _state(seed).mixtures[0].means, rtol=1e-6
        )
        assert back.spaces[name].spaces == {}


def test_store_keeps_the_last_warm_state(make_store):
    store = make_store()
    assert store.warm_state("m", "pos") is None
    first, second = _state(0).to_bytes(), _state(1).to_bytes()
    assert store.record_refit("m", "pos", 1, {"slices": []}, {}, warm_state=first)
    assert store.warm_state("m", "pos") == first
    assert store.record_refit("m", "pos", 2, {"slices": []}, {})  # none given: the last one stays
    assert store.warm_state("m", "pos") == first
    assert store.record_refit("m", "pos", 3, {"slices": []}, {}, warm_state=second)
    assert store.warm_state("m", "pos") == second
    assert store.warm_state("m", "neg") is None
    # A worker that lost its lease leaves the state alone.
    assert not store.record_refit(
        "m", "pos", 4, {"slices": []}, {}, lease=("refit:m", "w1"), warm_state=first
    )
    assert store.warm_state("m", "pos") == second


def test_fuse_reuses_a_basis_that_still_fits_and_refits_one_that_drifted():
    blocks = _blocks(3000, 0)
    cold = fuse(blocks, n_components=8)
    assert cold.basis is not None and not cold.reused
    again = fuse(_blocks(3000, 1), n_components=8, basis=cold.basis)
    assert again.reused and again.basis is cold.basis
    assert again.explained_variance == pytest.approx(cold.explained_variance, rel=0.05)
    same = fuse(blocks, n_components=8, basis=cold.basis)
    np.testing.assert_allclose(same.embedding, cold.embedding, atol=1e-5)
    # The variance moves to the axes the basis left out: it no longer fits.
    moved = {"image": blocks["image"][:, ::-1].copy(), "report": blocks["report"]}
    drifted = fuse(moved, n_components=8, basis=cold.basis)
    assert not drifted.reused and drifted.explained_variance > 0.9 * cold.explained_variance
    np.testing.assert_allclose(drifted.embedding, fuse(moved, n_components=8).embedding)
    # Other widths or dimensions: the given basis does not apply.
    assert not fuse(blocks, n_components=7, basis=cold.basis).reused
    assert not fuse({"image": blocks["image"]}, n_components=8, basis=cold.basis).reused


def _count_projected(monkeypatch) -> list[int]:
    """Rows each projection pass computes (all of the window when ``rows`` is None)."""
    import agent.fuse as fuse_module

    counts: list[int] = []
    original = fuse_module._Blocks.project

    def counting(self, basis, centre, rows=None):
        counts.append(self.n if rows is None else len(rows))
        return original(self, basis, centre, rows)

    monkeypatch.setattr(fuse_module._Blocks, "project", counting)
    return counts


def test_fuse_projects_only_the_cases_it_has_not_seen_on_the_basis(monkeypatch):
    blocks = _blocks(3000, 0)
    blocks["image"][209] = 0.0  # a zero row (a missing image): its fingerprint is never trusted
    first = fuse(blocks, n_components=8, remember=True)
    assert first.projected is not None and first.basis is not None
    assert not first.embedding.flags.writeable  # the memory's rows: nothing may change them
    # The next window: 2,800 of the cases slid along, 200 new, one case whose report arrived
    # since (same position, new content), one whose image was re-embedded.
    fresh = _blocks(200, 1)
    nxt = {m: np.concatenate([blocks[m][200:], fresh[m]]) for m in blocks}
    arrived = 9 * 30 - 200  # a case that had no report (every ninth) ...
    assert np.isnan(nxt["report"][arrived]).all()
    nxt["report"][arrived] = np.random.default_rng(5).normal(size=10)  # ... has one now
    nxt["image"][7] *= 2.0  # same direction, new norm: the unit row is the same
    nxt["image"][8, 0] += 1.0
    counts = _count_projected(monkeypatch)
    warm = fuse(nxt, n_components=8, basis=first.basis, projected=first.projected, remember=True)
    assert warm.reused
    # Read from memory: every case seen before, unchanged, those without a report included;
    # projected: the new, the one whose report arrived, the two changed images (a fingerprint
    # is of the rows as given) and the zero image.
    assert counts == [200 + 3 + 1]
    plain = fuse(nxt, n_components=8, basis=first.basis)
    np.testing.assert_allclose(warm.embedding, plain.embedding, atol=1e-5)
    assert warm.explained_variance == pytest.approx(plain.explained_variance, rel=1e-5)
    assert warm.missing == plain.missing and warm.missing["image"] == 1 and warm.missing["report"] > 300
    # A memory of another basis is not read.
    other = fuse(_blocks(3000, 2), n_components=8, remember=True)
    counts.clear()
    fuse(nxt, n_components=8, basis=first.basis, projected=other.projected)
    assert counts == [3000]


def test_a_row_whose_fingerprint_overflows_is_never_read_as_a_missing_one(monkeypatch):
    import agent.fuse as fuse_module

    blocks = {m: b.astype(np.float64) for m, b in _blocks(400, 0).items()}
    blocks["image"][3] = np.nan  # case 3 has no image ...
    first = fuse(blocks, n_components=6, remember=True)
    # ... and in the next window, the same report with an image whose probe products are both
    # 1e39: finite in float64, infinite in float32, where a missing row's fingerprint lies.
    p = np.random.default_rng(30).standard_normal((2, 30))  # the probes of a 30-wide block
    assert np.array_equal(
        p.astype(np.float32), fuse_module._Blocks([blocks["image"]], 64, fingerprint=True)._probes[0]
    )
    nxt = {m: b.copy() for m, b in blocks.items()}
    nxt["image"][3] = p.T @ np.linalg.solve(p @ p.T, np.full(2, 1e39))
    counts = _count_projected(monkeypatch)
    warm = fuse(nxt, n_components=6, basis=first.basis, projected=first.projected, remember=True)
    assert counts == [1]  # projected, not read from memory as the missing image
    plain = fuse(nxt, n_components=6, basis=first.basis)
    np.testing.assert_allclose(warm.embedding, plain.embedding, atol=1e-5)
    assert warm.missing == plain.missing and warm.missing["image"] == 0


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
def test_projections_stay_in_memory_and_follow_their_basis():
    blocks = _blocks(2000, 0)
    settings = Settings()
    data = planted_gaussian(2000, 40, seed=1)
    dims, components = window_capacity(settings, 2000)
    warm = WarmStart(None)
    fit_slices(blocks, data.y, data.y_pred, settings, dims, components,
               keys=[f"k{i}" for i in range(2000)], warm=warm)  # fmt: skip
    state = warm.current
    assert state is not None and state.projected is not None
    assert state.projected.nbytes >= 2000 * (state.basis.axes.shape[1] + 1) * 4
    again = WarmState.from_bytes(state.to_bytes())
    assert again is not None and again.projected is None  # not saved
    assert again.basis.same_as(state.basis) and set(again.mixtures) == set(state.mixtures)
    # A worker's memory joins the shared state when the basis is the one it projected on ...
    joined = again.with_projections_of(state)
    assert joined.projected is state.projected and WarmStart(joined).projected() is state.projected
    # ... and not when another worker has fitted another basis since.
    other = fuse(_blocks(2000, 3), n_components=dims)
    assert other.basis is not None
    assert WarmState(other.basis).with_projections_of(state).projected is None
    # Nor when the basis is due a refresh: that refit fits a new one.
    assert WarmStart(joined, refresh_refits=1).projected() is None


def test_mixture_starts_from_parameters_of_the_same_shape_only():
    data = planted_gaussian(1500, 8, seed=3)
    cold = ErrorAwareMixture(6, random_state=0).fit(data.X, data.y, data.y_pred)
    start = MixtureParams.of(cold)
    warm = ErrorAwareMixture(6, random_state=0, init_params=start).fit(data.X, data.y, data.y_pred)
    assert warm.warm_started_ and not cold.warm_started_
    assert warm.n_iter_ <= cold.n_iter_
    assert warm.lower_bound_ == pytest.approx(cold.lower_bound_, abs=1e-3)
    other = ErrorAwareMixture(5, random_state=0, init_params=start).fit(data.X, data.y, data.y_pred)
    assert not other.warm_started_


def test_warm_state_starts_the_next_refit_and_refreshes_the_basis():
    settings = Settings()
    data = planted_gaussian(1400, 16, seed=4)
    keys = [f"k{i}" for i in range(len(data.y))]
    dims, components = window_capacity(settings, 1000)
    state, seen = None, []
    for r in range(4):
        rows = slice(100 * r, 100 * r + 1000)
        warm = WarmStart(state, refresh_refits=3)
        fit_slices({"x": data.X[rows]}, data.y[rows], data.y_pred[rows], settings, dims, components,
                   keys=keys[rows], warm=warm)  # fmt: skip
        seen.append((warm.describe()["basis"], warm.warm_folds))
        state = warm.current
    assert seen == [("fitted", ()), ("reused", (0, 1)), ("reused", (0, 1)), ("fitted", ())]


def _chain(data, keys, refits: int, *, warm: bool, n: int = 1500, step: int = 75):
    """Refit a window sliding by ``step`` over ``data``; each refit's state and findings."""
    settings = Settings()
    dims, components = window_capacity(settings, n)
    state, out = None, []
    for r in range(refits + 1):
        rows = slice(r * step, r * step + n)
        start = WarmStart(state if warm else None)
        X = data.X[rows].astype(np.float32)
        _, found = fit_slices({"x": X}, data.y[rows], data.y_pred[rows], settings, dims, components,
                              keys=keys[rows], warm=start)  # fmt: skip
        state = start.current
        out.append((start, found))
    return out


def test_a_folds_mixture_never_sees_the_labels_it_is_tested_on():
    """Two streams alike but for the labels and predictions of the cases of fold 0: after warm
    refits, fold 0's mixtures are the same to the bit (they never saw those labels), fold 1's
    differ (they were fitted on them), and so do the held-out tests of fold 0."""
    data = planted_gaussian(1500 + 75 * 4, 16, n_clusters=6, seed=7)
    keys = [f"1.2.{i}" for i in range(len(data.y))]
    fold0 = stable_folds(keys, 2, Settings().audit.seed) == 0
    rng = np.random.default_rng(1)
    y = np.where(fold0, (rng.random(len(keys)) < 0.4).astype(float), data.y)
    y_pred = np.where(fold0 & (rng.random(len(keys)) < 0.3), 1 - y, np.where(fold0, y, data.y_pred))
    other = type(data)(data.X, y, y_pred, data.in_group)
    warnings.simplefilter("ignore", ConvergenceWarning)
    a, b = _chain(data, keys, 4, warm=True), _chain(other, keys, 4, warm=True)
    for (start_a, _), (start_b, _) in zip(a[1:], b[1:], strict=True):
        assert start_a.warm_folds == start_b.warm_folds == (0, 1)
        ma, mb = start_a.current.mixtures, start_b.current.mixtures
        for name in ("weights", "means", "variances", "y_probs", "y_pred_probs"):
            np.testing.assert_array_equal(getattr(ma[0], name), getattr(mb[0], name))
        assert not np.array_equal(ma[1].means, mb[1].means)


def test_warm_refits_of_null_streams_raise_no_more_false_alarms_than_cold_ones():
    """Errors uniform over the embedding: a reported slice is a false alarm. Over 80 refits of
    windows sliding by 5%, warm ones (each started from the one before) raise about as many as
    cold ones on the same windows and folds, and few: overlapping windows share a chance cluster,
    so alarms come in runs (one cluster, two or three refits) and the rate scatters about
    ``alpha``. Measured on 12 other null streams of 20 refits each (seeds 100 to 111): warm 6 of
    240, cold 11 of 240; here warm 3, cold 2 of 80."""
    warnings.simplefilter("ignore", ConvergenceWarning)
    alarms = {True: 0, False: 0}
    total = warm_starts = 0
    for seed in range(8):
        data = planted_gaussian(1500 + 75 * 10, 24, n_clusters=8, planted=False, seed=seed)
        keys = [f"{seed}.{i}" for i in range(len(data.y))]
        for warm in (True, False):
            refits = _chain(data, keys, 10, warm=warm)[1:]
            alarms[warm] += sum(bool(found) for _, found in refits)
            if warm:
                total += len(refits)
                warm_starts += sum(start.warm_folds == (0, 1) for start, _ in refits)
    assert warm_starts >= 0.9 * total  # every tenth refits its basis, and its mixtures, cold
    assert alarms[True] <= alarms[False] + 2  # one run of alarms more, at most
    assert alarms[True] / total <= 2 * Settings().audit.alpha


def _union(report) -> set[str]:
    return {m.study_uid for s in report.slices for m in s.members}


@pytest.mark.parametrize(("failure", "seed"), [("devices", 3), ("lateral", 5)])
def test_warm_refits_find_the_planted_failure_as_cold_ones_do(failure, seed):
    """A warm start lands the mixtures in their own optimum, so members differ from a cold refit's
    about as much as two cold refits with different seeds differ (Jaccard 0.5 to 0.7 on these
    streams); the planted failure is found alike: a slice in every refit, most of its errors
    covered, and a name in common."""
    settings = load_settings(overrides={"audit": {"pca_components": 64}})
    samples = _stream_samples(failure, 1700, seed)
    _, planted = generate_stream(StreamSpec(n_studies=1700, failure=failure, seed=seed, slice_error=0.8))
    embedder = HashingEmbedder()
    state = None
    for r in range(3):
        window = samples[75 * r : 75 * r + 1500]
        warm = WarmStart(state)
        got, _ = run_audit(window, embedder=embedder, settings=settings, warm=warm)
        state = warm.current
        if r == 0:
            continue
        assert warm.warm_folds == (0, 1)
        cold, _ = run_audit(window, embedder=embedder, settings=settings, warm=WarmStart(None))
        errors = {x.study_uid for x in window if planted[x.study_uid] and x.label != x.prediction}
        assert got.slices and cold.slices
        # Two cold refits with other seeds cover from 0.66 to 0.97 of these errors.
        assert len(errors & _union(got)) / len(errors) >= 0.7
        assert len(errors & _union(cold)) / len(errors) >= 0.7
        names = {t.token for s in got.slices for t in s.tokens}
        assert names & {t.token for s in cold.slices for t in s.tokens}


def test_a_streams_warm_refits_read_their_cases_from_the_last_refits_projections(tmp_path):
    """A sidecar keeps its last refit's projections between refits: once the basis is reused,
    the cases the window still holds are read, not projected (the refit report says how many)."""
    from agent.simulate.early import MODEL, EarlySpec, WordEmbedder, _settings, early_stream
    from agent.stream.replay import replay_file
    from agent.stream.sidecar import Sidecar

    spec = EarlySpec(per_day=100, history_days=40, ramp_days=0, after_days=0)
    events, _ = early_stream(spec, seed=1)
    path = tmp_path / "events.jsonl"
    path.write_text("".join(json.dumps(e.payload) + "\n" for e in events))
    settings = _settings(
        tmp_path,
        spec,
        {"stream": {"refit_every_labels": 500, "window_size": 2000, "basis_refresh_refits": 100}},
    )
    sidecar = Sidecar(settings, WordEmbedder())
    try:
        summary = replay_file(path, sidecar, final_refit=False)
    finally:
        sidecar.close()
    assert len(summary.refits) >= 4
    folder = tmp_path / "reports" / MODEL
    starts = [json.loads(p.read_text())["refit"]["start"] for p in sorted(folder.glob("*/refit-*.json"))]
    assert starts and starts[0]["basis"] == "fitted" and starts[0]["cases_remembered"] == 0
    reused = [s for s in starts if s["basis"] == "reused"]
    assert reused, starts
    remembered = [s["cases_remembered"] for s in reused]
    # Each reused refit read cases from memory: those the refit before held, and new cases whose
    # header sentence (the only modality here) one of them had already. Once the window is full
    # (2,000 cases, 500 new labels between refits), that is most of it.
    assert min(remembered) > 0 and max(remembered) >= 1800, remembered
