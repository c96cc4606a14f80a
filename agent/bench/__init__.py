"""The seed paper's evaluation as a command: planted failures, audits with every embedding, Table 1.

:func:`run_bench` runs the bootstrap (:class:`BenchConfig`; :meth:`BenchConfig.quick` for a CPU)
and :func:`write_outputs` writes the Markdown table, the CSVs of every run and token, and the
chart. ``slice-agent bench`` calls both.
"""

from agent.bench.classifier import TrainConfig
from agent.bench.modes import MODES, FailureMode, Strengths
from agent.bench.output import write_outputs
from agent.bench.runner import EMBEDDINGS, BenchConfig, BenchResult, BlackBox, RunRecord, run_bench

__all__ = [
    "EMBEDDINGS",
    "MODES",
    "BenchConfig",
    "BenchResult",
    "BlackBox",
    "FailureMode",
    "RunRecord",
    "Strengths",
    "TrainConfig",
    "run_bench",
    "write_outputs",
]
