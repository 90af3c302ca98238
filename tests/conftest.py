"""Shared fixtures live in tests/plugins/ (loaded through pyproject's addopts)."""
