"""``python -m driftline_ingestion`` / ``driftline-ingestion``: serve the ingestion API."""

from __future__ import annotations

from driftline.logging import configure_logging
from driftline.service import serve
from driftline_ingestion.config import IngestionSettings
from driftline_ingestion.service import SERVICE, build_app


def main() -> None:
    settings = IngestionSettings()
    # Before the app is built, so start-up warnings are JSON lines too (as ``driftline.service.run``).
    configure_logging(SERVICE.name, settings.stack.log_level, settings.stack.log_format)
    serve(build_app(settings), settings, SERVICE.name)


if __name__ == "__main__":
    main()
