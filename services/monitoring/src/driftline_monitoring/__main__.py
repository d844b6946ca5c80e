"""``python -m driftline_monitoring`` (console script ``driftline-monitoring``)."""

from __future__ import annotations

from driftline.service import serve
from driftline_monitoring.bootstrap import SERVICE, build_app
from driftline_monitoring.config import MonitoringSettings


def main() -> None:
    settings = MonitoringSettings()
    serve(build_app(settings), settings, SERVICE)


if __name__ == "__main__":
    main()
