"""Deterministic example streams and windows with planted failures, for the demo, tests and benchmarks."""

from agent.simulate.gaussian import PlantedData, planted_gaussian
from agent.simulate.textstream import FAILURES, StreamSpec, generate_stream, write_jsonl

__all__ = ["FAILURES", "PlantedData", "StreamSpec", "generate_stream", "planted_gaussian", "write_jsonl"]
