"""``python -m driftline_registry`` / ``driftline-registry``: run the registry service."""

from __future__ import annotations

from driftline.logging import configure_logging
from driftline.service import serve
from driftline_registry.bootstrap import build_app
from driftline_registry.config import RegistrySettings


def main() -> None:
    settings = RegistrySettings()
    # Before the app is built, so start-up warnings (the local-mode token) are JSON lines too.
    configure_logging("registry", settings.stack.log_level, settings.stack.log_format)
    serve(build_app(settings), settings, "registry")


if __name__ == "__main__":
    main()
