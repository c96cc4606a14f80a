"""slice-agent: find and explain the slices of cases on which a medical image classifier fails."""

__version__ = "0.1.0"

__all__ = ["__version__"]
