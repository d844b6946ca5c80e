"""`python -m driftline_features` (console script `driftline-features`)."""

from __future__ import annotations

from driftline.service import serve
from driftline_features.bootstrap import build_app
from driftline_features.config import SERVICE, FeaturesSettings


def main() -> None:
    settings = FeaturesSettings()
    serve(build_app(settings), settings, SERVICE)


if __name__ == "__main__":
    main()
