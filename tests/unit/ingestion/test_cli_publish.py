"""`driftline publish` when publishing stops mid-file: the summary of what was done comes first."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson
import pytest
from typer.testing import CliRunner

from driftline.project import load_project
from driftline.validation import Kind, Validator
from driftline_cli import publish as publish_cli
from driftline_cli.main import app
from driftline_sdk import Publisher, PublishError, PublishResult
from tests.unit.ingestion.fakes import loan_event


class StopsAfter:
    """A transport that stores the first ``ok`` batches (refusing one row of each) and then fails."""

    def __init__(self, ok: int) -> None:
        self.ok = ok
        self.calls = 0
        self.validator = Validator.from_project(load_project())

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None

    async def schemas(self) -> dict[str, Any]:
        return self.validator.describe()

    async def send(self, kind: Kind, items: Sequence[Any], start: int) -> PublishResult:
        self.calls += 1
        if self.calls > self.ok:
            raise PublishError("ingestion service unreachable: ConnectError()")
        error = {"index": start, "field": "payload.age", "error_type": "wrong_type", "reason": "made up"}
        ids = [None, *(item["event_id"] for item in items[1:])]
        return PublishResult(accepted=len(items) - 1, rejected=1, dead_lettered=1, errors=[error], event_ids=ids)

    async def send_unparseable(self, kind: Kind, data: bytes, reason: str, index: int) -> PublishResult:
        raise AssertionError("no unparseable rows here")


def test_when_publishing_stops_mid_file_the_partial_summary_is_printed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    transport = StopsAfter(ok=2)
    monkeypatch.setattr(
        publish_cli.Publisher, "http", lambda *a, **k: Publisher(transport, batch_size=10, concurrency=1)
    )
    rows = tmp_path / "loans.jsonl"
    rows.write_bytes(b"".join(orjson.dumps(loan_event(customer_id=f"c{i}")) + b"\n" for i in range(50)))

    out = CliRunner().invoke(app, ["publish", str(rows), "--no-progress"])

    assert out.exit_code == 2, out.output
    assert "unreachable" in out.output
    assert "accepted=18 duplicates=0 rejected=2 dead_lettered=2" in out.output
    assert "publishing stopped" in out.output
    assert "made up" in out.output  # the refused rows so far, by line
