"""Projects as data: versioned definitions on the compacted ``projects`` topic.

A project file (:mod:`driftline.project`) and the payload schema it names are published, validated
and versioned, as a ``ProjectApplied`` record keyed by the project's name (``driftline projects
apply``). The topic is compacted: the latest record per project is its definition; ``driftline
projects delete`` writes a deletion record (``deleted=true``) and then a Kafka tombstone, so
compaction reclaims the key. Services follow the topic (:class:`ProjectBook`, fed by a
:class:`driftline.follow.TopicFollower`) and so learn every project without a restart.

An apply is planned against the current definition first (:func:`plan`):

* the same content (digest) is not a new version;
* a change that would break the running project is refused (:class:`ProjectRefused`): another
  event type, entity key, model name or label classes; a feature that the current model uses no
  longer defined; a payload schema that cannot read the events already written (Avro BACKWARD:
  a new field without a default, a field whose type cannot be promoted); an event type or model
  name that another project already has;
* a compatible change (a new feature, a new window, other policies) gets the next version; when
  the feature definitions changed and ``features.version`` did not, the feature-set version gets
  the project version appended (``1`` → ``1+3``), so vectors of the two definitions never share
  a version.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from driftline.events import Event, envelope
from driftline.project import Project, load_project
from driftline.records import ProjectApplied
from driftline.validation import find_event_schema

# The sections whose change makes vectors of another feature set.
_FEATURE_SECTIONS = ("raw", "categorical", "derived", "windows")


class ProjectRefused(ValueError):
    """An apply that would break a running project, or that clashes with another project."""

    def __init__(self, name: str, problems: list[str]) -> None:
        self.name = name
        self.problems = problems
        super().__init__(f"project {name!r} refused: " + "; ".join(problems))


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


@dataclass(frozen=True)
class Definition:
    """A project and its payload schema, as published (``spec`` is the validated document)."""

    project: Project
    payload_schema: dict[str, Any]

    @classmethod
    def from_file(cls, path: Path | str) -> Definition:
        """Load and validate a project file and the payload ``.avsc`` it names (next to it, or in
        ``schemas/events/``); ValueError/FileNotFoundError say what is wrong."""
        project = load_project(path)
        schema = find_event_schema(project.event.schema_name, project.path)
        definition = cls(project, schema)
        definition.validator()  # the entity key must be a payload field, the schema flat
        return definition

    @classmethod
    def from_record(cls, record: ProjectApplied) -> Definition:
        return cls(Project.model_validate(json.loads(record.spec)), json.loads(record.payload_schema))

    @property
    def name(self) -> str:
        return self.project.name

    def document(self) -> dict[str, Any]:
        doc: dict[str, Any] = self.project.model_dump(mode="json", by_alias=True, exclude={"path"})
        return doc

    @property
    def spec(self) -> str:
        return _canonical(self.document())

    @property
    def payload(self) -> str:
        return _canonical(self.payload_schema)

    @property
    def digest(self) -> str:
        return hashlib.sha256(f"{self.spec}\n{self.payload}".encode()).hexdigest()

    def validator(self) -> Any:
        from driftline.validation import Validator

        return Validator.from_definition(self.project, self.payload_schema)


@dataclass(frozen=True)
class Applied:
    """A project's current definition, as the ``projects`` topic holds it."""

    definition: Definition
    version: int
    feature_set_version: str
    digest: str
    applied_at: datetime
    applied_by: str
    changes: tuple[str, ...] = ()

    @property
    def name(self) -> str:
        return self.definition.name

    @property
    def project(self) -> Project:
        return self.definition.project

    @classmethod
    def from_record(cls, record: ProjectApplied) -> Applied:
        return cls(
            Definition.from_record(record),
            record.version,
            record.feature_set_version,
            record.digest,
            record.event_time,
            record.applied_by,
            tuple(record.changes),
        )

    def summary(self) -> dict[str, Any]:
        p = self.project
        return {
            "project": p.name,
            "version": self.version,
            "event_type": p.event.type,
            "model": p.model.name,
            "feature_set_version": self.feature_set_version,
            "features": len(p.features.names),
            "applied_at": self.applied_at.isoformat(),
            "applied_by": self.applied_by,
            "digest": self.digest[:12],
        }


# -- planning an apply ------------------------------------------------------------------------------


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    """Dotted paths of a document; lists of named items are keyed by name, other lists are values."""
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for key, item in value.items():
            out |= _flatten(item, f"{prefix}.{key}" if prefix else str(key))
        return out
    if isinstance(value, list) and value and all(isinstance(v, dict) and "name" in v for v in value):
        out = {}
        for item in value:
            out |= _flatten({k: v for k, v in item.items() if k != "name"}, f"{prefix}[{item['name']}]")
        return out
    return {prefix: value}


def document_changes(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """One line per changed path: ``drift.window: 600 -> 800``, ``+ features.windows[x].agg: max``."""
    before, after = _flatten(dict(old)), _flatten(dict(new))
    lines: list[str] = []
    for path in sorted(set(before) | set(after)):
        if path not in after:
            lines.append(f"- {path}: {_canonical(before[path])}")
        elif path not in before:
            lines.append(f"+ {path}: {_canonical(after[path])}")
        elif before[path] != after[path]:
            lines.append(f"{path}: {_canonical(before[path])} -> {_canonical(after[path])}")
    return lines


_PROMOTIONS = {
    "int": {"int", "long", "float", "double"},
    "long": {"long", "float", "double"},
    "float": {"float", "double"},
    "double": {"double"},
    "string": {"string", "bytes"},
    "bytes": {"bytes", "string"},
    "boolean": {"boolean"},
}


def _type_key(t: Any) -> Any:
    """A field type reduced to what decides whether a reader can read it: a primitive's name, an
    enum's symbols, a union's branches."""
    if isinstance(t, list):
        return tuple(sorted(str(_type_key(b)) for b in t))
    if isinstance(t, dict):
        if t.get("type") == "enum":
            return ("enum", tuple(t.get("symbols", ())))
        return _type_key(t.get("type"))
    return t


def _readable(writer: Any, reader: Any) -> bool:
    """Avro schema resolution for the flat payload types: can a reader of ``reader`` read data
    written with ``writer``?"""
    w, r = _type_key(writer), _type_key(reader)
    if isinstance(r, tuple) and r and r[0] == "enum":
        return bool(isinstance(w, tuple) and w and w[0] == "enum" and set(w[1]) <= set(r[1]))
    if isinstance(w, tuple) and w and w[0] == "enum":
        return False
    if isinstance(r, tuple):  # a union reader: every writer branch must fit one of its branches
        branches = [b for b in (reader if isinstance(reader, list) else [reader])]
        writers = writer if isinstance(writer, list) else [writer]
        return all(any(_readable(wb, rb) for rb in branches) for wb in writers)
    if isinstance(w, tuple):  # a union writer, a plain reader: every branch must promote to it
        return all(_readable(wb, reader) for wb in writer)
    return r in _PROMOTIONS.get(str(w), {str(w)})


def payload_incompatibilities(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """Why the new payload schema cannot read events written with the old one (BACKWARD), if it
    cannot: a new field without a default, a field whose type cannot be promoted."""
    before = {f["name"]: f for f in old.get("fields", [])}
    problems = []
    for f in new.get("fields", []):
        name = f["name"]
        if name not in before:
            if "default" not in f:
                problems.append(f"payload field {name!r} is new and has no default: events already sent lack it")
            continue
        if not _readable(before[name]["type"], f["type"]):
            problems.append(
                f"payload field {name!r} changes type {_canonical(before[name]['type'])} -> {_canonical(f['type'])}"
            )
    return problems


def _features_of(project: Project) -> dict[str, Any]:
    doc = project.features.model_dump(mode="json")
    return {k: doc[k] for k in _FEATURE_SECTIONS}


@dataclass(frozen=True)
class Plan:
    """What an apply would do: ``unchanged``, or the next ``version`` with its ``changes``; a
    non-empty ``refused`` means it is not applied."""

    name: str
    version: int
    feature_set_version: str
    changes: list[str]
    refused: list[str]
    unchanged: bool
    digest: str

    @property
    def first(self) -> bool:
        return self.version == 1 and not self.unchanged


def plan(
    definition: Definition, current: Applied | None, others: Iterable[Applied] = (), *, deleted_version: int = 0
) -> Plan:
    """The apply of ``definition`` over the project's ``current`` definition (None: a new project,
    or one deleted at ``deleted_version``, whose numbering goes on), next to the ``others`` on the
    topic (their event types and model names are taken)."""
    new = definition.project
    refused: list[str] = []
    for other in others:
        if other.name == new.name:
            continue
        if other.project.event.type == new.event.type:
            refused.append(f"event type {new.event.type!r} belongs to project {other.name!r}")
        if other.project.model.name == new.model.name:
            refused.append(f"model name {new.model.name!r} belongs to project {other.name!r}")
    digest = definition.digest
    declared = new.features.version
    if current is None:
        return Plan(new.name, deleted_version + 1, declared, [], refused, False, digest)
    if current.digest == digest:
        return Plan(new.name, current.version, current.feature_set_version, [], refused, True, digest)
    old = current.project
    for what, before, after in (
        ("event.type", old.event.type, new.event.type),
        ("event.entity_key", old.event.entity_key, new.event.entity_key),
        ("model.name", old.model.name, new.model.name),
        ("label.classes", old.label.classes, new.label.classes),
        ("label.positive_class", old.label.positive_class, new.label.positive_class),
    ):
        if before != after:
            refused.append(f"{what} cannot change ({before!r} -> {after!r}): apply it as a new project")
    gone = [f for f in old.model_features if f not in new.features.names]
    if gone:
        refused.append(f"features {gone} are used by the current model and are no longer defined")
    refused += payload_incompatibilities(current.definition.payload_schema, definition.payload_schema)
    version = current.version + 1
    if _features_of(old) == _features_of(new) and declared == old.features.version:
        feature_set_version = current.feature_set_version
    elif declared != old.features.version:
        feature_set_version = declared
    else:
        feature_set_version = f"{declared}+{version}"
    changes = document_changes(current.definition.document(), definition.document())
    if definition.payload != current.definition.payload:
        changes += [
            f"payload schema: {line}"
            for line in document_changes(
                {"fields": current.definition.payload_schema.get("fields", [])},
                {"fields": definition.payload_schema.get("fields", [])},
            )
        ]
    if feature_set_version != current.feature_set_version:
        changes.append(f"feature_set_version: {current.feature_set_version} -> {feature_set_version}")
    return Plan(new.name, version, feature_set_version, changes, refused, False, digest)


def applied_record(definition: Definition, p: Plan, *, producer: str, applied_by: str) -> ProjectApplied:
    return ProjectApplied(
        **envelope(producer),
        project=definition.name,
        version=p.version,
        spec=definition.spec,
        payload_schema=definition.payload,
        digest=p.digest,
        feature_set_version=p.feature_set_version,
        changes=tuple(p.changes),
        applied_by=applied_by,
    )


def deleted_record(current: Applied, *, producer: str, applied_by: str) -> ProjectApplied:
    return ProjectApplied(
        **envelope(producer),
        project=current.name,
        version=current.version + 1,
        deleted=True,
        spec="",
        payload_schema="",
        digest="",
        feature_set_version=current.feature_set_version,
        changes=("deleted",),
        applied_by=applied_by,
    )


# -- the book every service keeps --------------------------------------------------------------------

Listener = Callable[[str, "Applied | None"], Awaitable[None] | None]


@dataclass
class ProjectBook:
    """The projects on the topic, by name: replayed at start, then kept live. ``listeners`` are
    called with (name, the new definition or None when deleted) after every change."""

    projects: dict[str, Applied] = field(default_factory=dict)
    listeners: list[Listener] = field(default_factory=list)
    deleted: dict[str, int] = field(default_factory=dict)  # deleted project → the deletion's version
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    def __contains__(self, name: object) -> bool:
        return name in self.projects

    def __len__(self) -> int:
        return len(self.projects)

    def get(self, name: str) -> Applied | None:
        return self.projects.get(name)

    def names(self) -> list[str]:
        return sorted(self.projects)

    def values(self) -> list[Applied]:
        return [self.projects[n] for n in self.names()]

    def plan(self, definition: Definition) -> Plan:
        """The apply of ``definition`` against what the book holds (see :func:`plan`)."""
        return plan(
            definition,
            self.get(definition.name),
            self.values(),
            deleted_version=self.deleted.get(definition.name, 0),
        )

    def by_event_type(self, event_type: str) -> Applied | None:
        return next((a for a in self.projects.values() if a.project.event.type == event_type), None)

    def by_model(self, model_name: str) -> Applied | None:
        return next((a for a in self.projects.values() if a.project.model.name == model_name), None)

    def take(self, record: ProjectApplied) -> tuple[bool, Applied | None]:
        """Fold one record in: (whether it changed the project, its new state; None: deleted). The
        same digest again changes nothing, nor does a definition that this version cannot parse."""
        current = self.projects.get(record.project)
        if record.deleted:
            self.deleted[record.project] = record.version
            if current is None:
                return False, None
            del self.projects[record.project]
            return True, None
        if current is not None and current.digest == record.digest:
            return False, current
        try:
            applied = Applied.from_record(record)
        except ValueError:
            return False, current  # written by a newer Driftline, with settings this one refuses
        self.projects[record.project] = applied
        return True, applied

    async def _notify(self, name: str, state: Applied | None) -> None:
        for listener in self.listeners:
            result = listener(name, state)
            if result is not None:
                await result
        self.changed.set()

    async def replay(self, history: list[Event[Any]]) -> None:
        touched: dict[str, Applied | None] = {}
        for event in history:
            changed, state = self.take(event.record)
            if changed:
                touched[event.record.project] = state
        for name, state in touched.items():
            await self._notify(name, state)

    async def on_record(self, record: ProjectApplied) -> None:
        changed, state = self.take(record)
        if changed:
            await self._notify(record.project, state)


def book_of(records: Iterable[ProjectApplied]) -> ProjectBook:
    book = ProjectBook()
    for record in records:
        book.take(record)
    return book
