"""Driftline's ML domain: feature definitions (featuredefs), models and safe artifacts (models),
profiles and drift statistics (profiles)."""
