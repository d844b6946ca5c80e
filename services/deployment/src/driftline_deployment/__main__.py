"""``python -m driftline_deployment`` (console script ``driftline-deployment``)."""

from __future__ import annotations

import os

from driftline_deployment.config import DeploymentSettings


def main() -> None:
    settings = DeploymentSettings()
    if settings.model_threads:
        # The OpenMP runtime reads this once, when scikit-learn first loads it, and every thread
        # (worker threads included) starts from it: set it before importing anything that scores.
        os.environ.setdefault("OMP_NUM_THREADS", str(settings.model_threads))
    from driftline.service import run
    from driftline_deployment.service import SERVICE

    run(SERVICE, lambda: settings)


if __name__ == "__main__":
    main()
