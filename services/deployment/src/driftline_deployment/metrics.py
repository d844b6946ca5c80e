"""The deployment service's Prometheus metrics, in one place (slots, handlers and the API count)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

MODEL_LOADS = Counter("driftline_deployment_model_loads_total", "Model loads by outcome", ["slot", "status"])
MODEL_VERSION = Gauge("driftline_deployment_model_version", "Version loaded per model and slot", ["model", "slot"])
PREDICTIONS_MADE = Counter(
    "driftline_deployment_predictions_total", "Predictions (slot: champion, challenger, canary)", ["source", "slot"]
)
UNSCORED = Counter("driftline_deployment_unscored_total", "Feature vectors received while no model was loaded")
SHADOW_ERRORS = Counter(
    "driftline_deployment_shadow_errors_total",
    "Consumer batches the challenger failed to score (the champion's predictions are unaffected)",
    ["model", "version"],
)
CANARY_ERRORS = Counter(
    "driftline_deployment_canary_errors_total",
    "Scoring calls (a consumer batch's or a request's rows) the canary failed; the champion served those rows",
    ["model", "version"],
)
SCORE_SECONDS = Histogram(
    "driftline_deployment_score_seconds",
    "Time in the model per scoring call",
    ["source"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1),
)
HTTP_PUBLISHED = Counter(
    "driftline_deployment_http_predictions_published_total", "HTTP predictions the broker acknowledged on predictions"
)
HTTP_REPUBLISHED = Counter(
    "driftline_deployment_http_predictions_resent_total", "HTTP predictions sent again after a failed delivery"
)
HTTP_UNPUBLISHED = Counter(
    "driftline_deployment_http_predictions_unpublished_total",
    "HTTP predictions given up: the pending buffer was full, or still unacknowledged at shutdown",
)
HTTP_PUBLISH_PENDING = Gauge(
    "driftline_deployment_http_predictions_pending", "HTTP predictions not yet acknowledged by the broker"
)
RAW_EVENT_SECONDS = Histogram(
    "driftline_deployment_raw_event_features_seconds",
    "Time to compute a request's raw-event features (validation, online-store read, feature code)",
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1),
)
