"""Turning verified artifact bytes into a warmed-up estimator, off the event loop.

The skops load is pure-Python work that holds the GIL for most of its duration (~0.3 s for 300
trees), and a thread doing it makes every request on the event loop queue for the GIL
(scikit-learn releases and re-takes it once per tree), so :class:`ProcessLoader` loads in a child
process and hands back the loaded estimator. :class:`ThreadLoader` loads in a worker thread (for
tests and tools). Either raises :class:`LoadError` for a model that cannot serve.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import pickle
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any, Protocol

import numpy as np

from driftline_ml.models import load_model, positive_scores, preload


class LoadError(Exception):
    """The promoted model cannot serve (bad promotion, integrity, load or warm-up failure)."""


def load_and_warm(data: bytes, feature_names: Sequence[str], positive_class: str) -> Any:
    """Blocking: skops load under the trusted-types policy, then one prediction on a zero row."""
    estimator = load_model(data)
    expected = getattr(estimator, "n_features_in_", None)
    if expected is not None and expected != len(feature_names):
        raise LoadError(f"the model expects {expected} features but the promotion names {len(feature_names)}")
    if not hasattr(estimator, "predict_proba"):
        raise LoadError(f"{type(estimator).__name__} has no predict_proba")
    positive_scores(estimator, np.zeros((1, len(feature_names))), positive_class)
    return estimator


class ModelLoader(Protocol):
    """Turns verified artifact bytes into a warmed-up estimator, off the event loop."""

    def start(self) -> None:
        """The service serves from now on (its start-up loads are done)."""

    async def load(
        self, data: bytes, feature_names: Sequence[str], positive_class: str, *, startup: bool = False
    ) -> Any:
        """``startup``: a load before the service serves anything (rebuilding its slots)."""

    def close(self) -> None: ...


class ThreadLoader:
    """Loads in a worker thread of this process. Simple, but the load holds the GIL for most of
    its duration, so requests served meanwhile wait (see the module doc): for tests and tools."""

    def start(self) -> None:
        pass

    async def load(
        self, data: bytes, feature_names: Sequence[str], positive_class: str, *, startup: bool = False
    ) -> Any:
        return await asyncio.to_thread(load_and_warm, data, feature_names, positive_class)

    def close(self) -> None:
        pass


def _loader_process_started(parent_pid: int) -> None:
    # The child's CPU time goes to loads, the parent's to requests: on a small host, serving wins.
    os.nice(19)

    def exit_with_the_parent() -> None:  # even a parent killed with SIGKILL leaves no child behind
        while os.getppid() == parent_pid:
            time.sleep(1)
        os._exit(0)

    threading.Thread(target=exit_with_the_parent, name="loader-parent-watch", daemon=True).start()


def _child_ready() -> int:
    """Run in the child at start: import what a load needs (skops, scikit-learn: seconds)."""
    preload()
    return os.getpid()


def _load_in_child(data: bytes, feature_names: Sequence[str], positive_class: str) -> bytes:
    """In the loader process: the trusted-types load and the warm-up; the estimator, pickled.

    The pickle never touches the object store: it is made here, from an estimator that skops
    built from trusted types only, and read once by the parent over the pool's pipe.
    """
    return pickle.dumps(load_and_warm(data, feature_names, positive_class), protocol=pickle.HIGHEST_PROTOCOL)


def _unpickle_and_warm(blob: bytes, n_features: int, positive_class: str) -> Any:
    estimator = pickle.loads(blob)  # noqa: S301 - made by our loader process (see _load_in_child)
    positive_scores(estimator, np.zeros((1, n_features)), positive_class)  # first-call costs, not on a request
    return estimator


class ProcessLoader:
    """Loads in one long-lived child process (spawned: the service has threads), so the skops load
    competes with serving for a CPU core, never for the GIL. Receiving the estimator costs the
    parent a few milliseconds of unpickling in a thread. A child that dies (a crash on a hostile
    file) fails that load only; the next load starts a new child.

    Start-up loads (a restart rebuilding its slots) run in a thread of this process instead: no
    request is served yet, so there is no GIL to protect, and waiting for a child's interpreter
    and imports (seconds of CPU next to this process's own) would only lengthen the restart. The
    child is started once they are done (:meth:`start`), with low priority, so it is ready for
    the next promotion."""

    def __init__(self) -> None:
        self._pool: ProcessPoolExecutor | None = None

    def _executor(self) -> ProcessPoolExecutor:
        if self._pool is None:
            self._pool = ProcessPoolExecutor(
                max_workers=1,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=_loader_process_started,
                initargs=(os.getpid(),),
            )
        return self._pool

    def start(self) -> None:
        """Start the child now, with its imports (scikit-learn, skops: seconds), rather than at
        the first promotion that needs it."""
        self._executor().submit(_child_ready)

    async def load(
        self, data: bytes, feature_names: Sequence[str], positive_class: str, *, startup: bool = False
    ) -> Any:
        if startup:
            return await asyncio.to_thread(load_and_warm, data, feature_names, positive_class)
        pool = self._executor()
        try:
            blob = await asyncio.get_running_loop().run_in_executor(
                pool, _load_in_child, data, tuple(feature_names), positive_class
            )
        except BrokenProcessPool as exc:
            self._pool = None
            pool.shutdown(wait=False, cancel_futures=True)
            raise LoadError(f"the model loader process died while loading this model ({exc})") from exc
        return await asyncio.to_thread(_unpickle_and_warm, blob, len(feature_names), positive_class)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
