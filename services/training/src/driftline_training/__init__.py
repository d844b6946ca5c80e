"""Driftline training service: labelled examples, governed retraining, safe model artifacts."""
