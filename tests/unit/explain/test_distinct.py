from __future__ import annotations

import numpy as np
import pytest

from agent.explain import TokenSpace, r_attr


def test_ds_matches_hand_computed_tfidf():
    # Four one-line documents; min_df=1 so every token counts.
    texts = ["tube tube lung", "lung", "tube heart", "heart lung"]
    space = TokenSpace(min_df=1, ngram_range=(1, 1)).fit(texts)
    vocab = list(space.vocabulary_)
    # Hand computation of scikit-learn's smoothed idf, sublinear tf and l2 norm.
    n = 4
    df = {"tube": 2, "lung": 3, "heart": 2}
    idf = {t: np.log((1 + n) / (1 + d)) + 1 for t, d in df.items()}
    tf = [{"tube": 2, "lung": 1}, {"lung": 1}, {"tube": 1, "heart": 1}, {"heart": 1, "lung": 1}]
    rows = []
    for counts in tf:
        v = {t: (1 + np.log(c)) * idf[t] for t, c in counts.items()}
        norm = np.sqrt(sum(x * x for x in v.values()))
        rows.append({t: x / norm for t, x in v.items()})
    err, ref = [0, 2], [1, 3]
    for token in ("tube", "lung", "heart"):
        mean_err = np.mean([rows[i].get(token, 0.0) for i in err])
        mean_ref = np.mean([rows[i].get(token, 0.0) for i in ref])
        got = space.mean_tfidf(err)[vocab.index(token)] - space.mean_tfidf(ref)[vocab.index(token)]
        assert got == pytest.approx(mean_err - mean_ref, abs=1e-12)
    top = space.distinctiveness(err, ref, top_k=5)
    assert top[0].token == "tube"
    assert all(t.ds > 0 for t in top)


def test_r_attr_matches_hand_computed_cosines():
    tokens = np.array([[1.0, 0.0], [0.0, 2.0]])
    err = np.array([[3.0, 4.0], [1.0, 0.0]])  # unit: (0.6, 0.8), (1, 0)
    ref = np.array([[0.0, 1.0]])
    expected_first = (0.6 + 1.0) / 2 - 0.0
    expected_second = (0.8 + 0.0) / 2 - 1.0
    np.testing.assert_allclose(r_attr(tokens, err, ref), [expected_first, expected_second])


def test_r_attr_is_nan_without_a_reference():
    assert np.isnan(r_attr(np.ones((1, 2)), np.ones((3, 2)), np.empty((0, 2)))).all()


def test_identifiers_never_become_tokens():
    base = "FINDINGS: Right chest tube in place. No effusion."
    texts = [
        f"Patient: Grace Hopper\nMRN: {1000 + i}\nReferring physician: Dr. Alan Turing\n"
        f"{base} Discussed with Dr. Turing on 2026-11-{i % 28 + 1:02d} at 10:3{i % 10}. "
        f"Seen by Hopkins today."
        for i in range(12)
    ] + ["FINDINGS: Lungs are clear. Heart size is normal."] * 12
    space = TokenSpace(min_df=2).fit(texts)
    vocab = set(space.vocabulary_)
    for forbidden in ("grace", "hopper", "alan", "turing", "mrn", "hopkins", "accession"):
        assert forbidden not in vocab
    assert {"tube", "chest", "right"} <= vocab
    top = [t.token for t in space.distinctiveness(range(12), range(12, 24), top_k=10)]
    assert "tube" in top and not (set(top) & {"grace", "hopper", "turing", "hopkins"})


def test_min_df_drops_tokens_unique_to_one_case():
    texts = ["rareword chest", "chest", "chest", "lung"]
    assert "rareword" not in set(TokenSpace(min_df=2).fit(texts).vocabulary_)


def test_empty_vocabulary_is_not_an_error():
    space = TokenSpace(min_df=1).fit(["12 34", "2026-01-01"])
    assert space.distinctiveness([0], [1]) == []


def test_bigrams_never_span_a_blocked_word_or_punctuation():
    from agent.explain import terms

    got = terms("chest tube Quenneville tube. Place line", frozenset({"quenneville"}))
    assert "chest tube" in got
    assert not any("quenneville" in t for t in got)
    assert "tube tube" not in got and "tube place" not in got
    assert "place line" in got


def test_a_bigram_is_shown_only_where_it_beats_its_words():
    # Each word is common in both groups; only the pair marks the group.
    group = ["Left lower zone opacity.", "Opacity in the left lower zone."] * 6
    rest = ["Left upper zone clear.", "Right lower zone clear."] * 6
    space = TokenSpace(min_df=2).fit(group + rest)
    top = [t.token for t in space.distinctiveness(range(12), range(12, 24), top_k=5)]
    assert top[0] == "left lower"
    assert "left" not in top and "lower" not in top  # named by their bigram instead
    # Where a word alone sets the group apart more, the word is shown and the bigram is not.
    group = ["Chest tube in place.", "Endotracheal tube seen.", "Chest tube, right."] * 4
    rest = ["Chest clear.", "Chest normal.", "Chest stable."] * 4
    top = [t.token for t in TokenSpace(min_df=2).fit(group + rest).distinctiveness(range(12), range(12, 24))]
    assert top[0] == "tube" and "chest tube" not in top
    words_only = TokenSpace(min_df=2, ngram_range=(1, 1)).fit(group + rest)
    assert not any(" " in t for t in words_only.vocabulary_)
    with pytest.raises(ValueError, match="ngram_range"):
        TokenSpace(ngram_range=(1, 3)).fit(group)
