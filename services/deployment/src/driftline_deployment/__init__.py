"""Driftline deployment service: hot-swapped model serving, stream scoring and shadow challengers."""
