"""Token distinctiveness (TF-IDF) and its check by a CLIP-score difference.

For an error slice ``S_err`` and a reference slice ``S_ref`` (correct predictions of the same
class), the distinctiveness of token ``t`` is ``DS(t) = mean TF-IDF(t) over S_err - mean over
S_ref``. Tokens are single words and bigrams (two kept words side by side); a bigram is
shown only where it sets the slice apart more than each of its words does. A token is then
checked against the embeddings: ``r_attr(t) = mean <f(x), g(t)> over
S_err - the same over S_ref``, with ``f`` the image encoder when it shares a space with the
text encoder ``g`` (a CLIP score), or the text encoder itself over each case's report and
metadata text when it does not (the text-space analogue; the report says which was used).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from scipy.stats import mannwhitneyu
from sklearn.feature_extraction.text import TfidfVectorizer

from agent.explain.names import NameBlocklist
from agent.explain.scrub import ProperNouns, terms, tokens

__all__ = ["Separation", "TokenScore", "TokenSpace", "r_attr", "separation"]


@dataclass(frozen=True)
class TokenScore:
    token: str
    ds: float
    r_attr: float | None = None


@dataclass(frozen=True)
class Separation:
    """How well a token's presence separates a group from the rest: AUROC and one-sided p-value."""

    auroc: float
    p_value: float


def separation(present: np.ndarray, in_group: np.ndarray) -> Separation:
    """AUROC of a 0/1 (or graded) token score for ``in_group`` cases against the rest, with its p-value.

    The AUROC is the Mann-Whitney ``U`` of the group against the rest over ``n_group * n_rest``
    (ties count one half); the p-value is scipy's one-sided test that the group scores higher.
    Either side empty, or one score for every case, gives AUROC 0.5 and p-value 1.

    >>> s = separation(np.array([1, 1, 1, 0, 0, 0, 0, 1]), np.array([1, 1, 1, 1, 0, 0, 0, 0]))
    >>> s.auroc, round(s.p_value, 3)
    (0.75, 0.124)
    """
    score = np.asarray(present, dtype=np.float64)
    group = np.asarray(in_group, dtype=bool)
    a, b = score[group], score[~group]
    if len(a) == 0 or len(b) == 0 or np.ptp(score) == 0:
        return Separation(0.5, 1.0)
    res = mannwhitneyu(a, b, alternative="greater", method="asymptotic")
    return Separation(float(res.statistic) / (len(a) * len(b)), float(res.pvalue))


class TokenSpace:
    """TF-IDF over the scrubbed text of every case in a window, with a vocabulary that cannot name.

    A token is scored only if it occurs in at least ``min_df`` studies and is not in the
    window's block-list, learnt over the whole window before anything is scored: words used as
    proper nouns (capitalised inside sentences, never in lower case), words seen in any name
    context of any report in any letter case, and words of DICOM person-name fields
    (:class:`~agent.explain.names.NameBlocklist`). So a word that occurs only as a person's name
    never becomes a token, however it is written.

    Parameters
    ----------
    min_df
        A token must occur in at least this many cases (documents) to be scored.
    metadata_vocabulary
        Words that come from the agent's own metadata sentences: known safe, so exempt from
        the proper-noun filter (a manufacturer's name is an attribute, not a patient's). They
        are not exempt from the name contexts or the person-name fields.
    ngram_range
        ``(1, 1)`` for words only, ``(1, 2)`` for words and bigrams (every word of a bigram
        passes the block-list; :func:`~agent.explain.scrub.terms`).

    Examples
    --------
    >>> space = TokenSpace(min_df=1).fit(["chest tube", "normal", "chest tube", "normal lungs"])
    >>> [t.token for t in space.distinctiveness([0, 2], [1, 3], top_k=2)]
    ['chest', 'tube']
    """

    def __init__(
        self,
        *,
        min_df: int = 3,
        metadata_vocabulary: frozenset[str] = frozenset(),
        ngram_range: tuple[int, int] = (1, 2),
    ) -> None:
        self.min_df = min_df
        self.metadata_vocabulary = metadata_vocabulary
        self.ngram_range = ngram_range

    def fit(
        self,
        texts: Sequence[str],
        *,
        reports: Sequence[str | None] | None = None,
        metadata: Sequence[Mapping[str, object] | None] = (),
        known_names: Callable[[Collection[str]], Collection[str]] | None = None,
    ) -> TokenSpace:
        """Learn the block-list and TF-IDF over ``texts`` (one per study).

        Parameters
        ----------
        texts
            What is tokenised and scored: the scrubbed report and metadata sentence of each study.
        reports
            The raw, unscrubbed reports, where names are seen in their context (default: ``texts``).
        metadata
            Each study's metadata, whose person-name fields are blocked wherever they appear.
        known_names
            Given the candidate words, returns those known as names from elsewhere (the streaming
            store keeps digests of the words of person-name fields seen at ingest, where the
            metadata itself is reduced to non-identifying tags); blocked like the others.
        """
        if tuple(self.ngram_range) not in ((1, 1), (1, 2)):
            raise ValueError(f"expected ngram_range (1, 1) or (1, 2), got {self.ngram_range!r}")
        raw = [r for r in (reports if reports is not None else texts) if r]
        nouns = ProperNouns().fit(raw).words_
        self.proper_nouns_ = nouns - self.metadata_vocabulary
        self.names_ = NameBlocklist().fit(raw, metadata).words_
        if known_names is not None:
            candidates = {w for t in texts for w in tokens(t)}
            self.names_ = self.names_ | frozenset(known_names(candidates))
        self.blocked_ = self.proper_nouns_ | self.names_
        bigrams = self.ngram_range[1] == 2
        docs = [terms(t, self.blocked_, bigrams=bigrams) for t in texts]
        min_df = min(self.min_df, max(len(docs), 1))
        self.vectorizer_ = TfidfVectorizer(
            analyzer=lambda doc: doc, min_df=min_df, lowercase=False, norm="l2", sublinear_tf=True
        )
        try:
            self.matrix_ = self.vectorizer_.fit_transform(docs).tocsr()
            self.vocabulary_ = np.asarray(self.vectorizer_.get_feature_names_out())
        except ValueError:  # empty vocabulary: nothing survives scrubbing and min_df
            self.matrix_ = None
            self.vocabulary_ = np.asarray([], dtype=object)
        return self

    def mean_tfidf(self, rows: Sequence[int] | np.ndarray) -> np.ndarray:
        rows = np.asarray(rows, dtype=int)
        if self.matrix_ is None or len(rows) == 0:
            return np.zeros(len(self.vocabulary_))
        return np.asarray(self.matrix_[rows].mean(axis=0)).ravel()

    def distinctiveness(
        self, err_rows: Sequence[int] | np.ndarray, ref_rows: Sequence[int] | np.ndarray, *, top_k: int = 5
    ) -> list[TokenScore]:
        """The ``top_k`` tokens by ``DS`` (only those with ``DS > 0``).

        A bigram is kept only where its ``DS`` exceeds that of each of its words (it names the
        group better than either alone), and then its words are not listed beside it.
        """
        ds = self.mean_tfidf(err_rows) - self.mean_tfidf(ref_rows)
        index = {str(t): i for i, t in enumerate(self.vocabulary_)}
        out: list[TokenScore] = []
        covered: set[str] = set()
        for i in np.argsort(-ds, kind="stable"):
            if ds[i] <= 0 or len(out) == top_k:
                break
            token = str(self.vocabulary_[i])
            words = token.split(" ")
            if len(words) > 1:
                if any(w in index and ds[index[w]] >= ds[i] for w in words):
                    continue
                covered.update(words)
            elif token in covered:
                continue
            out.append(TokenScore(token, float(ds[i])))
        return out

    def presence(self, token: str, rows: Sequence[int] | np.ndarray) -> np.ndarray:
        """Whether ``token`` occurs in each of ``rows`` (False for a token outside the vocabulary)."""
        rows = np.asarray(rows, dtype=int)
        where = np.flatnonzero(self.vocabulary_ == token)
        if self.matrix_ is None or len(where) == 0:
            return np.zeros(len(rows), dtype=bool)
        return np.asarray(self.matrix_[rows][:, int(where[0])].toarray()).ravel() > 0


def r_attr(token_vectors: np.ndarray, err_vectors: np.ndarray, ref_vectors: np.ndarray) -> np.ndarray:
    """``mean <x, t>`` over the error slice minus over the reference slice, for each token row ``t``.

    Vectors are L2-normalised here, so the inner product is a cosine similarity.

    >>> t = np.array([[1.0, 0.0]])
    >>> r_attr(t, np.array([[1.0, 0.0], [1.0, 0.0]]), np.array([[0.0, 1.0]])).round(3).tolist()
    [1.0]
    """

    def unit(a: np.ndarray) -> np.ndarray:
        a = np.asarray(a, dtype=np.float64)
        return a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)

    if len(err_vectors) == 0 or len(ref_vectors) == 0:
        return np.full(len(token_vectors), np.nan)
    t = unit(token_vectors)
    return np.asarray((unit(err_vectors) @ t.T).mean(axis=0) - (unit(ref_vectors) @ t.T).mean(axis=0))
