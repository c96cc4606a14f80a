"""Two workers in one consumer group split the models, and together find what one worker finds."""

from __future__ import annotations

from harness import open_store, stream_settings, wait_for, write_config
from kafka.partitioner.default import murmur2

from agent.simulate import StreamSpec, generate_stream, write_jsonl
from agent.stream import ensure_topics, load_latest, publish_file

N_STUDIES = 400
CANDIDATES = ["pneumothorax", "effusion", "edema", "nodule", "fracture", "cardiomegaly", "atelectasis"]


def _partition(model: str, n: int) -> int:
    return (murmur2(model.encode()) & 0x7FFFFFFF) % n


def _stream(model: str, failure: str, prefix: str) -> list[dict]:
    """The seed-3 stream (its texts are in the session's embedding cache) under a model and study prefix."""
    events, _ = generate_stream(
        StreamSpec(n_studies=N_STUDIES, model=model, failure=failure, seed=3, slice_error=0.9)
    )
    for e in events:
        e["study_uid"] = f"{prefix}{e['study_uid']}"
        e["event_id"] = f"{prefix}{e['event_id']}"
    return events


def _final(config, model):
    report = load_latest(stream_settings(config).reports_dir, model, model)
    return report if report and report["refit"]["labels_total"] == N_STUDIES else None


def _slices(report):
    return [
        (
            s["size"],
            [(m["study_uid"], round(m["probability"], 6)) for m in s["members"]],
            round(s["error_rate"], 9),
            round(s["rest_error_rate"], 9),
            f"{s['p_value']:.6e}",
            [t["token"] for t in s["tokens"]],
        )
        for s in report["slices"]
    ]


def test_two_workers_split_the_models_and_match_one_worker(tansu, agents, embed_cache, tmp_path):
    common = {
        "bootstrap": tansu.bootstrap,
        "name": "split",
        "embed_cache": embed_cache,
        "refit_every_labels": 10**6,
        "refit_every_seconds": 5,
    }
    pair = [write_config(tmp_path / f"worker{i}", group="split-pair", **common) for i in (1, 2)]
    solo = write_config(tmp_path / "solo", group="split-solo", **common)
    settings = stream_settings(solo)
    ensure_topics(settings)
    workers = [agents(config, tmp_path / f"{config.parent.name}.log") for config in [*pair, solo]]
    for worker in workers:
        worker.start()
    stores = [open_store(config) for config in [*pair, solo]]

    def split_assignment():
        latest = [s.assignments()[-1] if s.assignments() else [] for s in stores[:2]]
        mine = [{p for t, p in a if t == settings.inference_topic} for a in latest]
        together = sorted(latest[0] + latest[1])
        ok = all(mine) and not (mine[0] & mine[1]) and len(together) == 3 * settings.partitions
        return mine if ok and len(set(together)) == len(together) else None

    owned = wait_for(
        split_assignment, timeout=300, what="the pair to split the partitions", diagnose=workers[1].tail
    )
    for store, mine in zip(stores, owned, strict=False):
        # Co-partitioning: each worker holds the same partition numbers of the three topics.
        assert {p for _, p in store.assignments()[-1]} == mine
    # One model on a partition of each worker.
    models = [next(m for m in CANDIDATES if _partition(m, settings.partitions) in mine) for mine in owned]
    events = _stream(models[0], "devices", "a.") + _stream(models[1], "portable", "b.")
    events.sort(key=lambda e: e["timestamp"])
    # Each model's last label goes last, once everything else is stored everywhere, so that the
    # refit it triggers sees the same complete windows (reports included) on every worker.
    last = {e["study_uid"][:2]: i for i, e in enumerate(events) if e["type"] == "label"}
    held = [events[i] for i in sorted(last.values())]
    path, tail = tmp_path / "events.jsonl", tmp_path / "last-labels.jsonl"
    write_jsonl([e for i, e in enumerate(events) if i not in last.values()], path)
    write_jsonl(held, tail)
    publish_file(path, settings, create_topics=False)
    expected = {0: 3 * N_STUDIES - 1, 1: 3 * N_STUDIES - 1, 2: 6 * N_STUDIES - 2}
    for i, n in expected.items():
        wait_for(
            lambda i=i, n=n: stores[i].sizes()["seen"] == n,
            timeout=300,
            what=f"{n} events stored by {workers[i].log.stem}",
            diagnose=workers[i].tail,
        )
    publish_file(tail, settings, create_topics=False)

    for store_index, model in [(0, models[0]), (1, models[1]), (2, models[0]), (2, models[1])]:
        config = [*pair, solo][store_index]
        wait_for(
            lambda config=config, model=model: _final(config, model),
            timeout=480,
            what=f"a refit of {model} on all its labels by {config.parent.name}",
            diagnose=workers[store_index].tail,
        )
    assert all(w.alive for w in workers)

    # The pair split the models: each worker holds one model's window, the solo worker both.
    assert stores[0].models() == [models[0]] and stores[1].models() == [models[1]]
    assert stores[2].models() == sorted(models)
    for i, model in enumerate(models):
        pair_report = _final(pair[i], model)
        solo_report = _final(solo, model)
        assert pair_report["window"] == solo_report["window"]
        assert _slices(pair_report) == _slices(solo_report)
        ours, theirs = stores[i].window(model), stores[2].window(model)
        assert ours == theirs and len(ours) == N_STUDIES
    assert _final(solo, models[0])["slices"], "the planted devices failure should be found"
    for worker in workers:
        assert worker.stop() == 0, worker.tail()
