"""The package version (one place besides pyproject.toml)."""
__version__ = "0.1.0"
