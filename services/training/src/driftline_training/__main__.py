"""``python -m driftline_training`` / ``driftline-training``: run the training service."""

from __future__ import annotations

from driftline.logging import configure_logging
from driftline.service import serve
from driftline_training.bootstrap import build_app
from driftline_training.config import TrainingSettings


def main() -> None:
    settings = TrainingSettings()
    # Before the app is built, so start-up warnings (the local-mode token) are JSON lines too.
    configure_logging("training", settings.stack.log_level, settings.stack.log_format)
    serve(build_app(settings), settings, "training")


if __name__ == "__main__":
    main()
