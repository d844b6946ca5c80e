"""``python -m driftline_monitoring`` (console script ``driftline-monitoring``)."""

from __future__ import annotations

from driftline.service import run
from driftline_monitoring.config import MonitoringSettings
from driftline_monitoring.service import SERVICE


def main() -> None:
    run(SERVICE, MonitoringSettings)


if __name__ == "__main__":
    main()
