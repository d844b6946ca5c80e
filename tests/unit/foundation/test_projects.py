"""Projects as data: planning an apply (versions, feature-set versions, refusals) and the book."""

from __future__ import annotations

import asyncio
import copy
import io
from typing import Any

import fastavro
import pytest

from driftline.catalog import parsed_schema
from driftline.project import EXAMPLE_PROJECT as EXAMPLE_PROJECT_FILE
from driftline.project import Project
from driftline.projects import (
    Definition,
    ProjectBook,
    applied_record,
    book_of,
    deleted_record,
    payload_incompatibilities,
    plan,
)
from driftline.records import ProjectApplied


@pytest.fixture(scope="module")
def loan() -> Definition:
    return Definition.from_file(EXAMPLE_PROJECT_FILE)


def edited(d: Definition, edit: Any = None, schema_edit: Any = None) -> Definition:
    doc = copy.deepcopy(d.document())
    if edit:
        edit(doc)
    schema = copy.deepcopy(d.payload_schema)
    if schema_edit:
        schema_edit(schema)
    return Definition(Project.model_validate(doc), schema)


def applied(d: Definition, current: Any = None) -> Any:
    p = plan(d, current)
    assert not p.refused, p.refused
    book = ProjectBook()
    book.take(applied_record(d, p, producer="test", applied_by="test"))
    return book.get(d.name)


def test_a_new_project_is_version_1_with_its_declared_feature_set(loan: Definition) -> None:
    p = plan(loan, None)
    assert (p.version, p.feature_set_version, p.unchanged, p.refused) == (1, "1", False, [])


def test_the_same_content_again_is_not_a_new_version(loan: Definition) -> None:
    current = applied(loan)
    again = plan(Definition.from_file(EXAMPLE_PROJECT_FILE), current)
    assert again.unchanged and again.version == 1 and again.changes == []


def test_a_policy_change_is_the_next_version_on_the_same_feature_set(loan: Definition) -> None:
    current = applied(loan)
    p = plan(edited(loan, lambda doc: doc["drift"].update(window=800)), current)
    assert (p.version, p.feature_set_version, p.refused) == (2, "1", [])
    assert p.changes == ["drift.window: 600 -> 800"]


def test_a_new_window_rolls_forward_with_a_new_feature_set_version(loan: Definition) -> None:
    current = applied(loan)
    window = {"name": "loan_max_1h", "field": "loan", "agg": "max", "window": {"type": "tumbling", "size": "1h"}}
    p = plan(edited(loan, lambda doc: doc["features"]["windows"].append(window)), current)
    assert p.refused == [] and p.version == 2
    assert p.feature_set_version == "1+2"
    assert '+ features.windows[loan_max_1h].agg: "max"' in p.changes
    assert "feature_set_version: 1 -> 1+2" in p.changes
    # A declared bump is taken as it is.
    bumped = plan(
        edited(loan, lambda doc: (doc["features"]["windows"].append(window), doc["features"].update(version="2"))),
        current,
    )
    assert bumped.feature_set_version == "2"


def test_removing_a_feature_the_model_uses_is_refused(loan: Definition) -> None:
    current = applied(loan)

    def drop_equity(doc: dict[str, Any]) -> None:
        doc["features"]["derived"] = [f for f in doc["features"]["derived"] if f["name"] != "equity"]
        doc["model"]["features"].remove("equity")

    p = plan(edited(loan, drop_equity), current)
    assert p.refused == ["features ['equity'] are used by the current model and are no longer defined"]


@pytest.mark.parametrize(
    ("path", "value", "what"),
    [
        (("event", "type"), "other_event", "event.type"),
        (("event", "entity_key"), "zipcode", "event.entity_key"),
        (("model", "name"), "another-model", "model.name"),
        (("label", "classes"), ["deny", "approve", "review"], "label.classes"),
    ],
)
def test_identity_changes_are_refused(loan: Definition, path: tuple[str, str], value: Any, what: str) -> None:
    current = applied(loan)
    p = plan(edited(loan, lambda doc: doc[path[0]].__setitem__(path[1], value)), current)
    assert any(r.startswith(f"{what} cannot change") for r in p.refused), p.refused


def test_payload_schema_changes_must_read_the_events_already_sent(loan: Definition) -> None:
    old = loan.payload_schema
    with_default = copy.deepcopy(old)
    with_default["fields"].append({"name": "channel", "type": ["null", "string"], "default": None})
    assert payload_incompatibilities(old, with_default) == []
    without_default = copy.deepcopy(old)
    without_default["fields"].append({"name": "channel", "type": "string"})
    assert payload_incompatibilities(old, without_default) == [
        "payload field 'channel' is new and has no default: events already sent lack it"
    ]
    types = {f["name"]: f["type"] for f in old["fields"]}
    numeric = next(n for n, t in types.items() if t in ("int", "long", "float"))
    widened = copy.deepcopy(old)
    narrowed = copy.deepcopy(old)
    for f in widened["fields"]:
        if f["name"] == numeric:
            f["type"] = "double"
    for f in narrowed["fields"]:
        if f["name"] == numeric:
            f["type"] = "string"
    assert payload_incompatibilities(old, widened) == []
    assert payload_incompatibilities(old, narrowed) and numeric in payload_incompatibilities(old, narrowed)[0]
    # Removing a payload field is fine for Avro; a feature that needs it is the feature check's.
    fewer = copy.deepcopy(old)
    fewer["fields"] = [f for f in fewer["fields"] if f["name"] != numeric]
    assert payload_incompatibilities(old, fewer) == []
    current = applied(loan)
    p = plan(edited(loan, schema_edit=lambda s: s["fields"].append({"name": "channel", "type": "string"})), current)
    assert p.refused and "channel" in p.refused[0]


def test_event_types_and_model_names_belong_to_one_project(loan: Definition) -> None:
    other = applied(edited(loan, lambda doc: doc.update(name="other")))
    p = plan(loan, None, [other])
    assert p.refused == [
        "event type 'loan_application' belongs to project 'other'",
        "model name 'loan-approval' belongs to project 'other'",
    ]


def test_the_record_is_valid_avro_and_comes_back_as_the_same_definition(loan: Definition) -> None:
    record = applied_record(loan, plan(loan, None), producer="test", applied_by="someone")
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, parsed_schema("ProjectApplied"), record.to_avro())
    buf.seek(0)
    back = ProjectApplied.from_avro(fastavro.schemaless_reader(buf, parsed_schema("ProjectApplied")))
    again = Definition.from_record(back)
    assert again.digest == loan.digest and again.project == loan.project.model_copy(update={"path": None})


def test_the_book_follows_applies_and_deletions_and_tells_its_listeners(loan: Definition) -> None:
    first = applied_record(loan, plan(loan, None), producer="t", applied_by="a")
    changed = edited(loan, lambda doc: doc["drift"].update(window=800))
    book = book_of([first])
    second = applied_record(changed, plan(changed, book.get(loan.name)), producer="t", applied_by="a")
    seen: list[tuple[str, int | None]] = []
    live = ProjectBook(listeners=[lambda name, state: seen.append((name, state.version if state else None))])

    async def go() -> None:
        await live.on_record(first)
        await live.on_record(first)  # the same digest again (two services applying one file): nothing
        await live.on_record(second)
        await live.on_record(deleted_record(live.get(loan.name), producer="t", applied_by="a"))  # type: ignore[arg-type]

    asyncio.run(go())
    assert seen == [(loan.name, 1), (loan.name, 2), (loan.name, None)]
    assert loan.name not in live
    replayed = book_of([first, second])
    assert replayed.get(loan.name).version == 2  # type: ignore[union-attr]
    assert replayed.by_event_type("loan_application") is replayed.get(loan.name)
    assert replayed.by_model("loan-approval") is replayed.get(loan.name)


def test_a_project_applied_again_after_its_deletion_goes_on_numbering(loan: Definition) -> None:
    first = applied_record(loan, plan(loan, None), producer="t", applied_by="a")
    book = book_of([first])
    gone = deleted_record(book.get(loan.name), producer="t", applied_by="a")  # type: ignore[arg-type]
    book.take(gone)
    again = book.plan(loan)
    assert loan.name not in book and (again.version, again.unchanged) == (3, False)
