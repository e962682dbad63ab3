"""Per-element attribution: which elements drive a set's prediction (:func:`explain`), group summaries and plots."""
from .core import METHODS, READOUTS, Explanation, Readout, explain, register_readout

__all__ = ["explain", "METHODS", "Explanation", "Readout", "READOUTS", "register_readout"]
