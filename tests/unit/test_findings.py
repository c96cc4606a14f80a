from __future__ import annotations

import numpy as np
import pytest

from agent.audit import validated_tokens
from agent.explain import TokenSpace
from agent.findings import group_slices
from agent.report import Member, SliceReport, SliceResult, TokenResult, Window


def _slice(rank, uids, words, *, size=None, error=0.6, rest=0.1, p=1e-4):
    members = tuple(Member(u, 1.0) for u in uids)
    tokens = tuple(TokenResult(w, 0.1, None, 0.8, 0.001) for w in words)
    n = len(uids) if size is None else size
    return SliceResult(rank, f"s-{rank}", n, error, rest, p, 1.0, 20, members, tokens)


def test_member_overlap_merges_slices_without_shared_names():
    a = _slice(1, [f"u{i}" for i in range(20)], ["tube"])
    b = _slice(2, [f"u{i}" for i in range(10, 25)], ["lateral"])  # 10 of 15 shared: 0.67
    c = _slice(3, [f"v{i}" for i in range(20)], ["effusion"])
    found = group_slices([a, b, c])
    assert [f.sub_slices for f in found] == [("s-1", "s-2"), ("s-3",)]
    assert found[0].size == 25  # distinct studies, not the sum


def test_below_the_overlap_slices_stay_apart():
    a = _slice(1, [f"u{i}" for i in range(20)], ["tube"])
    b = _slice(2, [f"u{i}" for i in range(15, 35)], ["lateral"])  # 5 of 20: 0.25
    assert len(group_slices([a, b])) == 2


def test_a_shared_validated_word_merges_and_bigrams_count_their_words():
    a = _slice(1, ["a", "b"], ["tip", "svc"])
    b = _slice(2, ["c", "d"], ["chest tube"])
    c = _slice(3, ["e", "f"], ["tube", "place"])
    d = _slice(4, ["g", "h"], ["lateral", "view"])
    found = group_slices([a, b, c, d])
    assert sorted(f.sub_slices for f in found) == [("s-1",), ("s-2", "s-3"), ("s-4",)]
    assert len(group_slices([a, b, c, d], shared_names=2)) == 4


def test_sub_slices_rank_by_size_and_effect_and_the_finding_takes_the_best_p_value():
    small_sharp = _slice(1, [f"a{i}" for i in range(10)], ["tube"], error=0.9, rest=0.1, p=1e-9)
    large_mild = _slice(2, [f"b{i}" for i in range(100)], ["tube"], error=0.4, rest=0.1, p=1e-3)
    other = _slice(3, [f"c{i}" for i in range(30)], ["lateral"], error=0.5, rest=0.1, p=1e-6)
    found = group_slices([small_sharp, large_mild, other])
    first = found[0]
    # 100 x 0.3 = 30 excess errors against 10 x 0.8 = 8: the large slice leads its finding.
    assert first.sub_slices == ("s-2", "s-1")
    assert first.p_value == 1e-9 and first.error_rate == 0.9
    assert first.id == "f-2" and first.rank == 1
    assert [f.rank for f in found] == [1, 2] and found[1].sub_slices == ("s-3",)


def test_finding_names_keep_each_word_once_best_auroc_first():
    a = _slice(1, ["a"], [])
    a = SliceResult(**{**a.__dict__, "tokens": (TokenResult("tube", 0.2, None, 0.7, 0.01),)})
    b = SliceResult(
        **{
            **_slice(2, ["b"], []).__dict__,
            "tokens": (TokenResult("tube", 0.1, None, 0.9, 0.001), TokenResult("tip", 0.1, None, 0.8, 0.01)),
        }
    )
    (f,) = group_slices([a, b])
    assert [(t.token, t.auroc) for t in f.tokens] == [("tube", 0.9), ("tip", 0.8)]


def test_report_round_trips_findings_and_old_reports_still_load():
    s = _slice(1, ["u1", "u2"], ["tube"])
    r = SliceReport("m", 1, ("report",), Window(2, 1, None, None), (s,), (), findings=group_slices([s]))
    back = SliceReport.from_dict(r.to_dict())
    assert back.findings == r.findings
    assert back.slices[0].tokens[0].auroc == 0.8 and back.slices[0].tokens[0].p_value == 0.001
    old = r.to_dict()
    del old["findings"]
    for t in old["slices"][0]["tokens"]:
        del t["auroc"], t["p_value"]
    del old["slices"][0]["rejected_tokens"]
    legacy = SliceReport.from_dict(old)
    assert legacy.findings == () and legacy.slices[0].tokens[0].auroc is None
    renamed = r.with_slice_ids(["s-track"])
    assert renamed.findings[0].sub_slices == ("s-track",) and renamed.findings[0].id == "f-track"
    assert "finding 1" in r.table()


def _space(n_group: int = 30, n_rest: int = 60) -> tuple[TokenSpace, np.ndarray]:
    texts = [f"Right chest tube in place. Lungs clear. case{i % 3}" for i in range(n_group)] + [
        f"Lungs clear. No effusion. case{i % 3}" for i in range(n_rest)
    ]
    in_group = np.r_[np.ones(n_group, bool), np.zeros(n_rest, bool)]
    return TokenSpace(min_df=2).fit(texts), in_group


def test_a_name_that_separates_held_out_members_passes():
    space, in_group = _space()
    rows = np.arange(len(in_group))
    candidates = [TokenResult("chest tube", 0.3), TokenResult("lungs", 0.1), TokenResult("tube", 0.2)]
    passed, failed = validated_tokens(space, candidates, rows, in_group, alpha=0.05)
    assert [t.token for t in passed] == ["chest tube", "tube"]
    assert passed[0].auroc == pytest.approx(1.0) and passed[0].p_value < 1e-6
    assert [t.token for t in failed] == ["lungs"] and failed[0].auroc == pytest.approx(0.5)


def test_a_name_that_only_fits_the_fitting_fold_fails_on_held_out_cases():
    space, in_group = _space()
    rows = np.arange(len(in_group))
    # Held out, "tube" marks the rest: AUROC below one half.
    passed, failed = validated_tokens(space, [TokenResult("tube", 0.2)], rows, ~in_group, alpha=0.05)
    assert passed == () and failed[0].auroc < 0.5
    # Too few held-out cases to reach alpha after Bonferroni over five candidates.
    few = np.r_[0, 1, 40, 41]
    cands = [TokenResult(w, 0.1) for w in ("tube", "chest", "right", "place", "chest tube")]
    passed, failed = validated_tokens(space, cands, few, in_group[few], alpha=0.05)
    assert passed == () and all(t.p_value is not None and t.p_value > 0.05 for t in failed)


def test_a_validated_name_among_the_others_rejected_candidates_merges():
    a = _slice(1, ["a", "b"], ["tube", "place"])
    b = SliceResult(
        **{**_slice(2, ["c", "d"], ["tip"]).__dict__, "rejected_tokens": (TokenResult("tube", 0.1),)}
    )
    assert len(group_slices([a, b])) == 1
    # Rejected on both sides is not enough: neither name passed its held-out check.
    c = SliceResult(
        **{**_slice(3, ["e"], ["tip"]).__dict__, "rejected_tokens": (TokenResult("carina", 0.1),)}
    )
    d = SliceResult(
        **{**_slice(4, ["f"], ["svc"]).__dict__, "rejected_tokens": (TokenResult("carina", 0.1),)}
    )
    assert len(group_slices([c, d])) == 2


def test_slices_whose_profiles_point_the_same_way_are_one_finding():
    """No shared member or name, but the same direction in the embedding: one failure."""
    lines = _slice(1, [f"u{i}" for i in range(20)], ["picc"])
    tubes = _slice(2, [f"v{i}" for i in range(20)], ["tube"])
    view = _slice(3, [f"w{i}" for i in range(20)], ["lateral"])
    devices, other = np.array([1.0, 0.2, 0.0]), np.array([0.0, 0.1, 1.0])
    found = group_slices([lines, tubes, view], profiles=[devices, devices + np.array([0.1, 0.3, 0.0]), other])
    assert [f.sub_slices for f in found] == [("s-1", "s-2"), ("s-3",)]
    # Without profiles (or with orthogonal ones) they stay three findings.
    assert len(group_slices([lines, tubes, view])) == 3
    assert len(group_slices([lines, tubes, view], profiles=[devices, other, -devices])) == 3


def test_a_plural_name_is_its_singular():
    a = _slice(1, [f"u{i}" for i in range(20)], ["tubes", "support"])
    b = _slice(2, [f"v{i}" for i in range(20)], ["tube"])
    c = _slice(3, [f"w{i}" for i in range(20)], ["glass"])
    d = _slice(4, [f"x{i}" for i in range(20)], ["glas"])
    assert [f.sub_slices for f in group_slices([a, b, c, d])] == [("s-1", "s-2"), ("s-3",), ("s-4",)]
