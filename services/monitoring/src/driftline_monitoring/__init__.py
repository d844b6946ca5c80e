"""Driftline monitoring service: input, prediction and performance drift, published as drift episodes."""
