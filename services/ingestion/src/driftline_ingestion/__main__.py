"""``python -m driftline_ingestion`` / ``driftline-ingestion``: serve the ingestion API."""

from __future__ import annotations

from driftline.service import run
from driftline_ingestion.config import IngestionSettings
from driftline_ingestion.service import SERVICE


def main() -> None:
    run(SERVICE, IngestionSettings)


if __name__ == "__main__":
    main()
