"""Driftline registry service: model versions, lineage, and the champion/challenger promotion policy."""
