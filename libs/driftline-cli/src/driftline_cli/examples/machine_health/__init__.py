"""The machine-health example project's data: a seeded stream of sensor readings with labels."""
