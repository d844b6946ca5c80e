"""Running a service process: logging, then uvicorn serving the service's FastAPI app.

uvicorn turns SIGTERM/SIGINT into a lifespan shutdown, where the service stops its consumers
(finishing and committing the current batch), its producer and its pools.
"""

from __future__ import annotations

import uvicorn
from fastapi import FastAPI

from driftline.logging import configure_logging
from driftline.settings import ServiceSettings


def serve(app: FastAPI, settings: ServiceSettings, service: str) -> None:
    configure_logging(service, settings.stack.log_level, settings.stack.log_format)
    uvicorn.run(
        app,
        host=settings.host,
        port=settings.port,
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=30,
        lifespan="on",
    )
