"""Workers of one group share a PostgreSQL store: every label joins wherever it lands, the slices are
those one worker finds alone, a killed refit is taken over, and crashes lose and double nothing.

Labels and reports are published as a RIS would: keyed by study, naming no model.
"""

from __future__ import annotations

import itertools
import random
import time

from harness import stream_settings, wait_for, write_config

from agent.simulate import StreamSpec, generate_stream, write_jsonl
from agent.store import Store
from agent.stream import ensure_topics, publish_file

N_STUDIES = 400
MODELS = {"pneumothorax": "devices", "effusion": "portable"}
CLASSES = {m: [m, f"no_{m}"] for m in MODELS}


def _events() -> list[dict]:
    """Two models' seed-3 streams (texts in the session's embedding cache), studies kept apart."""
    out = []
    for prefix, (model, failure) in zip("ab", MODELS.items(), strict=True):
        events, _ = generate_stream(
            StreamSpec(n_studies=N_STUDIES, model=model, failure=failure, seed=3, slice_error=0.9)
        )
        for e in events:
            e["study_uid"] = f"{prefix}.{e['study_uid']}"
            e["event_id"] = f"{prefix}.{e['event_id']}"
        out += events
    out.sort(key=lambda e: e["timestamp"])
    return out


def _slices(report: dict) -> list[tuple]:
    return [
        (
            s["size"],
            [(m["study_uid"], round(m["probability"], 6)) for m in s["members"]],
            round(s["error_rate"], 9),
            f"{s['p_value']:.6e}",
            [t["token"] for t in s["tokens"]],
        )
        for s in report["slices"]
    ]


def _final(store: Store, model: str) -> dict | None:
    report = store.latest_report(model, model)
    return report if report and report["refit"]["labels_total"] == N_STUDIES else None


def _configs(tmp_path, tansu, embed_cache, url, n, **stream):
    common = {"bootstrap": tansu.bootstrap, "name": "shared", "embed_cache": embed_cache, "classes": CLASSES}
    return [
        write_config(tmp_path / f"worker{i}", group="shared-group", store_url=url, **common, **stream)
        for i in range(1, n + 1)
    ]


def test_three_workers_on_postgres_join_every_label_and_match_one_worker(
    tansu, agents, embed_cache, postgres_url, tmp_path
):
    # Cold refits: a warm refit starts from the one before, and the group and the solo worker
    # refit at different moments of the ingest, so only cold fits of one window can be equal
    # (tests/unit/test_warm.py compares warm with cold).
    timing = {"refit_every_labels": 10**6, "refit_every_seconds": 3, "warm_refits": False}
    trio = _configs(tmp_path, tansu, embed_cache, postgres_url, 3, **timing)
    solo = write_config(
        tmp_path / "solo",
        bootstrap=tansu.bootstrap,
        name="shared",
        embed_cache=embed_cache,
        group="solo-group",
        classes=CLASSES,
        **timing,
    )
    settings = stream_settings(solo)
    ensure_topics(settings)
    workers = [agents(c, tmp_path / f"{c.parent.name}.log") for c in [*trio, solo]]
    for w in workers:
        w.start()
    shared, alone = Store(postgres_url), None

    events = _events()
    # Each model's last label goes last, once everything else is stored, so that the refit it
    # triggers sees the complete window (reports included) in both stores.
    last = {e["study_uid"][0]: i for i, e in enumerate(events) if e["type"] == "label"}
    path, tail = tmp_path / "events.jsonl", tmp_path / "last-labels.jsonl"
    write_jsonl([e for i, e in enumerate(events) if i not in last.values()], path)
    write_jsonl([events[i] for i in sorted(last.values())], tail)
    publish_file(path, settings, create_topics=False)
    n = len(events) - len(last)
    wait_for(
        lambda: shared.sizes()["seen"] == n,
        timeout=300,
        what=f"{n} events in the shared store",
        diagnose=workers[0].tail,
    )
    alone = Store(stream_settings(solo).store_path)
    wait_for(
        lambda: alone.sizes()["seen"] == n,
        timeout=300,
        what=f"{n} events in the solo store",
        diagnose=workers[3].tail,
    )
    publish_file(tail, settings, create_topics=False)
    for store, name in [(shared, "the group"), (alone, "the solo worker")]:
        for model in MODELS:
            wait_for(
                lambda store=store, model=model: _final(store, model),
                timeout=300,
                what=f"a refit of {model} on all its labels by {name}",
                diagnose=workers[0].tail,
            )

    # Every label joined, wherever it landed: nothing orphaned, late or expired.
    counts = shared.counts()
    assert all(counts[f"joined:{m}"] == N_STUDIES for m in MODELS), counts
    assert shared.dead_letter_counts() == {} and not any(k.startswith("expired") for k in counts)
    assert shared.sizes()["labels"] == 0 and shared.sizes()["pending"] == 0
    # The group spread the partitions over its workers, and each took part.
    assert len(shared.assigned_workers()) >= 2, shared.assigned_workers()
    for model in MODELS:
        assert shared.window(model) == alone.window(model)
        ours, theirs = _final(shared, model), _final(alone, model)
        assert ours["window"] == theirs["window"] and _slices(ours) == _slices(theirs)
    assert _final(shared, "pneumothorax")["slices"], "the planted devices failure should be found"
    for w in workers:
        assert w.stop() == 0, w.tail()


def test_a_worker_killed_mid_refit_is_taken_over_and_slice_ids_carry_on(
    tansu, agents, embed_cache, postgres_url, tmp_path
):
    lease = 6.0
    configs = _configs(
        tmp_path,
        tansu,
        embed_cache,
        postgres_url,
        3,
        refit_every_labels=10**6,
        refit_every_seconds=2,
        refit_lease_seconds=lease,
    )
    settings = stream_settings(configs[0])
    ensure_topics(settings)
    workers = [agents(c, tmp_path / f"{c.parent.name}.log") for c in configs]
    for w in workers:
        w.start()
    store = Store(postgres_url)
    events = [e for e in _events() if not e["study_uid"].startswith("b.")]
    cut = int(len(events) * 0.7)
    first, rest = tmp_path / "first.jsonl", tmp_path / "rest.jsonl"
    write_jsonl(events[:cut], first)
    write_jsonl(events[cut:], rest)
    publish_file(first, settings, create_topics=False)
    before = wait_for(
        lambda: (r := store.latest_report("pneumothorax", "pneumothorax")) and r["slices"] and r,
        timeout=300,
        what="a refit with slices on the first part",
        diagnose=workers[0].tail,
    )
    ids_before = {s["id"] for s in before["slices"]}
    number_before = before["refit"]["number"]

    publish_file(rest, settings, create_topics=False)
    # Catch a refit of the rest in flight and SIGKILL the worker that holds its lease.
    pids = {w.proc.pid: w for w in workers}

    def refitting():
        held = store.lease("refit:pneumothorax")
        if held and held[1] > time.time() and store.labels_since_refit("pneumothorax"):
            pid = int(held[0].split(":")[1])
            return (pids.get(pid), held) if pid in pids else None
        return None

    victim, (holder, _, generation) = wait_for(
        refitting, timeout=300, interval=0.05, what="a refit in flight", diagnose=workers[0].tail
    )
    victim.kill()
    killed_at = time.monotonic()
    taken = wait_for(
        lambda: (h := store.lease("refit:pneumothorax")) and h[0] != holder and h,
        timeout=120,
        what="another worker to take the lease",
        diagnose=workers[0].tail,
    )
    taken_after = time.monotonic() - killed_at
    # The dead holder's lease lapses after `lease` seconds; the next timer tick (1 s) takes it.
    assert taken_after <= lease + 10, taken_after
    assert taken[2] > generation
    final = wait_for(
        lambda: _final(store, "pneumothorax"),
        timeout=300,
        what="a refit on the full window after the takeover",
        diagnose=workers[1].tail,
    )
    assert final["refit"]["number"] > number_before and final["window"]["n"] == N_STUDIES
    assert ids_before & {s["id"] for s in final["slices"]}, (ids_before, final["slices"])
    for w in workers:
        if w.alive:
            assert w.stop() == 0, w.tail()


def test_twenty_sigkills_across_three_workers_lose_and_double_nothing(
    tansu, agents, embed_cache, postgres_url, tmp_path
):
    rng = random.Random(8)
    configs = _configs(
        tmp_path,
        tansu,
        embed_cache,
        postgres_url,
        3,
        batch_size=10,
        batch_seconds=0.3,
        refit_every_labels=10**6,
        refit_every_seconds=10**6,
    )
    settings = stream_settings(configs[0])
    ensure_topics(settings)
    workers = [agents(c, tmp_path / f"{c.parent.name}.log") for c in configs]
    for w in workers:
        w.start()
    store = Store(postgres_url)
    events = [e for e in _events() if not e["study_uid"].startswith("b.")][: 3 * 240]
    path = tmp_path / "events.jsonl"
    write_jsonl(events, path)
    parts = 20
    bounds = [1 + len(events) * i // parts for i in range(parts + 1)]
    kills = 0
    for start, stop in itertools.pairwise(bounds):
        publish_file(path, settings, create_topics=False, start_line=start, stop_line=stop)
        target = store.sizes()["seen"] + rng.randint(1, max(1, stop - start - 1))
        wait_for(
            lambda target=target: store.sizes()["seen"] >= target,
            timeout=120,
            interval=0.02,
            what=f"{target} events stored",
            diagnose=lambda: "\n".join(w.tail(20) for w in workers),
        )
        victim = rng.choice([w for w in workers if w.alive])
        victim.kill()
        kills += 1
        victim.start()
    assert kills == 20
    labels = {e["study_uid"]: e["label"] for e in events if e["type"] == "label"}
    wait_for(
        lambda: store.sizes()["seen"] == len(events) and store.window_size("pneumothorax") == len(labels),
        timeout=180,
        what="every event stored after the last restart",
        diagnose=lambda: f"{store.sizes()}\n" + "\n".join(w.tail(20) for w in workers),
    )
    window = store.window("pneumothorax")
    assert sorted(s.study_uid for s in window) == sorted(labels)  # none lost, none twice
    assert all(s.label == labels[s.study_uid] for s in window)
    counts = store.counts()
    assert counts["joined:pneumothorax"] == len(labels) and "duplicate" not in counts
    assert store.dead_letter_counts() == {}
    for w in workers:
        assert w.stop() == 0, w.tail()
