"""Slicers (scikit-learn style estimators) and the honest slice-discovery procedure."""

from agent.slicing.errors_only import ErrorsOnlyMixture
from agent.slicing.mixture import ErrorAwareMixture
from agent.slicing.rules import TermRuleSlicer
from agent.slicing.scan import NeighbourScanSlicer
from agent.slicing.score import ErrorScoreSlicer
from agent.slicing.significance import SliceFinding, Slicer, Space, discover_in_spaces, discover_slices

__all__ = [
    "ErrorAwareMixture",
    "ErrorScoreSlicer",
    "ErrorsOnlyMixture",
    "NeighbourScanSlicer",
    "SliceFinding",
    "Slicer",
    "Space",
    "TermRuleSlicer",
    "discover_in_spaces",
    "discover_slices",
]
