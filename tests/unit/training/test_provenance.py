"""The code version a run records: the image's build argument, the checkout's commit, or "unknown"."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from driftline_training import provenance
from tests.unit.test_infra_manifests import dockerfile

ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture(autouse=True)
def fresh() -> Iterator[None]:
    provenance.code_version.cache_clear()
    yield
    provenance.code_version.cache_clear()


def test_outside_a_checkout_without_the_build_argument_the_version_is_unknown(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("DRIFTLINE_CODE_VERSION", raising=False)
    monkeypatch.setattr(provenance, "repo_root", lambda: None)
    assert provenance.code_version() == "unknown"


def test_the_build_argument_names_the_code(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DRIFTLINE_CODE_VERSION", "0123abc")
    monkeypatch.setattr(provenance, "repo_root", lambda: None)
    assert provenance.code_version() == "0123abc"
    monkeypatch.setenv("DRIFTLINE_CODE_VERSION", "")  # an image built without it
    provenance.code_version.cache_clear()
    assert provenance.code_version() == "unknown"


def test_in_a_checkout_the_version_is_its_commit(monkeypatch: pytest.MonkeyPatch) -> None:
    if not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    monkeypatch.delenv("DRIFTLINE_CODE_VERSION", raising=False)
    version = provenance.code_version()
    commit = version.removesuffix("-dirty")
    assert len(commit) == 40 and all(c in "0123456789abcdef" for c in commit), version


def test_every_image_gets_the_commit_as_a_build_argument() -> None:
    parsed = dockerfile()
    runtime = parsed.stages["runtime"]
    args = [i.args for i in runtime.instructions if i.keyword == "ARG"]
    assert any(a.startswith("DRIFTLINE_CODE_VERSION") for a in args), args
    assert "DRIFTLINE_CODE_VERSION" in parsed.env("runtime")
    build = (ROOT / "infra" / "docker" / "build.sh").read_text()
    assert "DRIFTLINE_CODE_VERSION=$commit" in build and "git -C" in build
