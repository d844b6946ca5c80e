"""``python -m driftline_registry`` / ``driftline-registry``: run the registry service."""

from __future__ import annotations

from driftline.service import run
from driftline_registry.config import RegistrySettings
from driftline_registry.service import SERVICE


def main() -> None:
    run(SERVICE, RegistrySettings)


if __name__ == "__main__":
    main()
