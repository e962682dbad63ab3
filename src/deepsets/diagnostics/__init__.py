"""Diagnostics: gradient norms per layer at initialization, plots."""
