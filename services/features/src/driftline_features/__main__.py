"""`python -m driftline_features` (console script `driftline-features`)."""

from __future__ import annotations

from driftline.service import run
from driftline_features.config import FeaturesSettings
from driftline_features.service import SERVICE


def main() -> None:
    run(SERVICE, FeaturesSettings)


if __name__ == "__main__":
    main()
