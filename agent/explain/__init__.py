"""Explain error slices with the tokens that set them apart, scrubbed of identifiers."""

from agent.explain.distinct import TokenScore, TokenSpace, r_attr
from agent.explain.scrub import STOP_WORDS, ProperNouns, scrub, tokens

__all__ = ["STOP_WORDS", "ProperNouns", "TokenScore", "TokenSpace", "r_attr", "scrub", "tokens"]
