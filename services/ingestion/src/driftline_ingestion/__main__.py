"""``python -m driftline_ingestion`` / ``driftline-ingestion``: serve the ingestion API."""

from __future__ import annotations

from driftline.service import serve
from driftline_ingestion.api import SERVICE, build_app
from driftline_ingestion.config import IngestionSettings


def main() -> None:
    settings = IngestionSettings()
    serve(build_app(settings), settings, SERVICE)


if __name__ == "__main__":
    main()
