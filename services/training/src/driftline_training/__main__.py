"""``python -m driftline_training`` / ``driftline-training``: run the training service."""

from __future__ import annotations

from driftline.service import run
from driftline_training.config import TrainingSettings
from driftline_training.service import SERVICE


def main() -> None:
    run(SERVICE, TrainingSettings)


if __name__ == "__main__":
    main()
