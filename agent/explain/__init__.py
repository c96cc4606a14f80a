"""Explain error slices with the tokens that set them apart, scrubbed of identifiers."""

from agent.explain.distinct import Separation, TokenScore, TokenSpace, r_attr, separation
from agent.explain.scrub import STOP_WORDS, ProperNouns, scrub, terms, tokens

__all__ = [
    "STOP_WORDS",
    "ProperNouns",
    "Separation",
    "TokenScore",
    "TokenSpace",
    "r_attr",
    "scrub",
    "separation",
    "terms",
    "tokens",
]
