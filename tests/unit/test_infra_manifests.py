"""The production shape in infra/ covers every service and every topic.

No Docker engine or Kubernetes cluster is needed: the Dockerfile is parsed here (instructions,
stages, continuation lines), the Kubernetes manifests and the compose file with PyYAML. The
services come from services/*/pyproject.toml and the topics from schemas/topics.yaml, so adding
either without its manifests fails here. Each image's lock file (infra/docker/locks/<target>.txt,
written by `make lock`) is read as a requirements file and held to requirements.lock and to the
pyprojects of the packages the image installs.
"""

from __future__ import annotations

import importlib.metadata
import json
import posixpath
import re
import shlex
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from driftline.catalog import Catalog
from driftline.project import EXAMPLE_PROJECT
from driftline.settings import LOCAL_API_TOKEN, LOCAL_MINIO_SECRET, LOCAL_POSTGRES_PASSWORD, StackSettings

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "infra" / "docker" / "Dockerfile"
DOCKERIGNORE = ROOT / "infra" / "docker" / "Dockerfile.dockerignore"
K8S = ROOT / "infra" / "k8s"
STRIMZI = K8S / "strimzi"
COMPOSE = ROOT / "infra" / "compose" / "compose.yaml"
DEPLOYMENT_DOC = ROOT / "docs" / "deployment.md"
IMAGE_LOCKS = ROOT / "infra" / "docker" / "locks"
REQUIREMENTS_LOCK = ROOT / "requirements.lock"

CONTAINER_PORT = 8080
CLI_TARGET = "cli"
SECRET_NAME = "driftline-secrets"
PROJECT_CONFIGMAP = "driftline-project"

# Settings every pod needs (Kafka, registry, PostgreSQL, MinIO, project file, tokens).
REQUIRED_SETTINGS = {
    "DRIFTLINE_LOCAL_MODE",
    "DRIFTLINE_KAFKA_BOOTSTRAP_SERVERS",
    "DRIFTLINE_SCHEMA_REGISTRY_URL",
    "DRIFTLINE_POSTGRES_DSN",
    "DRIFTLINE_MINIO_ENDPOINT",
    "DRIFTLINE_MINIO_ACCESS_KEY",
    "DRIFTLINE_MINIO_SECRET_KEY",
    "DRIFTLINE_MINIO_SECURE",
    "DRIFTLINE_ARTIFACT_BUCKET",
    "DRIFTLINE_PROJECT_FILE",
    "DRIFTLINE_API_TOKENS",
}
# ...of which these must come from a Secret (Kubernetes) or the environment (compose).
SECRET_SETTINGS = {
    "DRIFTLINE_POSTGRES_DSN",
    "DRIFTLINE_MINIO_ACCESS_KEY",
    "DRIFTLINE_MINIO_SECRET_KEY",
    "DRIFTLINE_API_TOKENS",
}
# ...and these from a Secret too, when the install uses them (secretKeyRef optional: SASL, basic auth).
OPTIONAL_SECRET_SETTINGS = {
    "DRIFTLINE_KAFKA_SASL_PASSWORD": "kafka-sasl-password",
    "DRIFTLINE_SCHEMA_REGISTRY_PASSWORD": "schema-registry-password",
}
TLS_SECRET, TLS_DIR = "driftline-tls", "/etc/driftline/tls"  # CA bundles and client certificates
# The Kubernetes version whose API schemas (kubernetes-validate's, offline) the manifests must fit.
K8S_VERSION = "1.33.0"
# Read by the library outside StackSettings (catalog.py).
EXTRA_SETTINGS = {"DRIFTLINE_SCHEMAS_DIR"}
SECRETISH_NAME = re.compile(r"(DSN|SECRET|TOKEN|PASSWORD|ACCESS_KEY)", re.IGNORECASE)
URL_WITH_CREDENTIALS = re.compile(r"://[^/\s:@]+:[^/\s@]+@")


# --------------------------------------------------------------------------------------------
# What the repository says must be covered


def discover_services() -> list[str]:
    """Service names from services/*/pyproject.toml (project driftline-<name>, script driftline-<name>)."""
    names = []
    for pyproject in sorted((ROOT / "services").glob("*/pyproject.toml")):
        name = pyproject.parent.name
        project = tomllib.loads(pyproject.read_text())["project"]
        assert project["name"] == f"driftline-{name}", f"{pyproject}: project name is not driftline-{name}"
        assert f"driftline-{name}" in project.get("scripts", {}), f"{pyproject}: no driftline-{name} console script"
        names.append(name)
    return names


SERVICES = discover_services()
IMAGE_TARGETS = [*SERVICES, CLI_TARGET]

# Images whose packages need no ML stack and no stream processor: their locks must not carry one.
LEAN_TARGETS = ("ingestion", "registry", CLI_TARGET)
ML_STACK = {"numpy", "scipy", "scikit-learn", "skops", "faust-streaming", "river"}


def target_pyproject(target: str) -> Path:
    """The pyproject of the package an image target is built for (a service, or the CLI library)."""
    if target == CLI_TARGET:
        return ROOT / "libs" / "driftline-cli" / "pyproject.toml"
    return ROOT / "services" / target / "pyproject.toml"


def image_lock(target: str) -> Path:
    return IMAGE_LOCKS / f"{target}.txt"


def workspace_libraries(pyproject: Path) -> set[str]:
    """libs/<dir> a package needs: the workspace libraries it names in its dependencies, transitively."""
    lib_dirs = {
        tomllib.loads(p.read_text())["project"]["name"]: p.parent
        for p in sorted((ROOT / "libs").glob("*/pyproject.toml"))
    }
    needed: set[str] = set()
    todo = [pyproject]
    while todo:
        deps = tomllib.loads(todo.pop().read_text())["project"].get("dependencies", [])
        for dep in deps:
            name = re.split(r"[\s\[<>=!~;]", dep, maxsplit=1)[0]
            if name in lib_dirs and f"libs/{lib_dirs[name].name}" not in needed:
                needed.add(f"libs/{lib_dirs[name].name}")
                todo.append(lib_dirs[name] / "pyproject.toml")
    return needed


TOPICS = list(Catalog.load(ROOT / "schemas" / "topics.yaml"))


def env_name(service: str, setting: str) -> str:
    return f"DRIFTLINE_{service.upper().replace('-', '_')}_{setting}"


def known_setting(name: str) -> bool:
    stack_fields = {f"DRIFTLINE_{f.upper()}" for f in StackSettings.model_fields}
    service_fields = {env_name(s, f) for s in SERVICES for f in ("HOST", "PORT", "INSTANCE_ID")}
    return name in stack_fields | service_fields | EXTRA_SETTINGS


def test_the_repository_has_services_and_topics() -> None:
    assert len(SERVICES) >= 6, SERVICES
    assert len(TOPICS) >= 12, [t.name for t in TOPICS]
    misspelt = {name for name in REQUIRED_SETTINGS if not known_setting(name)}
    assert not misspelt, f"not Driftline settings: {sorted(misspelt)}"


# --------------------------------------------------------------------------------------------
# A small Dockerfile parser: instructions (with continuation lines and comments), stages


@dataclass
class Instruction:
    keyword: str
    args: str
    line: int

    def json_args(self) -> list[str] | None:
        """The exec (JSON array) form, or None for the shell form."""
        text = self.args.strip()
        if text.startswith("["):
            value = json.loads(text)
            assert isinstance(value, list) and all(isinstance(v, str) for v in value), self
            return value
        return None

    def flags_and_rest(self) -> tuple[dict[str, list[str]], str]:
        """Leading --name=value flags (COPY --from, RUN --mount…) and the remaining text."""
        flags: dict[str, list[str]] = {}
        rest = self.args.strip()
        while rest.startswith("--"):
            token, _, rest = rest.partition(" ")
            key, _, value = token[2:].partition("=")
            flags.setdefault(key, []).append(value)
            rest = rest.strip()
        return flags, rest


@dataclass
class Stage:
    name: str
    base: str
    instructions: list[Instruction] = field(default_factory=list)

    def of(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]


def parse_instructions(text: str) -> list[Instruction]:
    out: list[Instruction] = []
    buffer: list[str] = []
    start = 0
    for number, raw in enumerate(text.splitlines(), start=1):
        stripped = raw.strip()
        if stripped.startswith("#") or (not stripped and not buffer):
            continue  # comments (also inside a continued instruction) and blank lines
        if not buffer:
            start = number
        if stripped.endswith("\\"):
            buffer.append(stripped[:-1].strip())
            continue
        buffer.append(stripped)
        joined = " ".join(part for part in buffer if part)
        buffer = []
        keyword, _, args = joined.partition(" ")
        out.append(Instruction(keyword.upper(), args.strip(), start))
    assert not buffer, "the Dockerfile ends inside a continued instruction"
    return out


@dataclass
class Dockerfile:
    global_args: dict[str, str]
    stages: dict[str, Stage]

    def expand(self, text: str) -> str:
        """Substitutes the global ARG defaults (${NAME} and $NAME), as FROM does."""
        for name, value in self.global_args.items():
            text = text.replace("${" + name + "}", value).replace("$" + name, value)
        return text

    def lineage(self, name: str) -> list[Stage]:
        """The stage and the stages it is built FROM, nearest first."""
        chain = []
        stage: Stage | None = self.stages[name]
        while stage is not None:
            chain.append(stage)
            stage = self.stages.get(stage.base)
        return chain

    def closure(self, name: str) -> list[Stage]:
        """Every stage that contributes to ``name``: its lineage and any COPY --from / RUN --mount from=."""
        seen: dict[str, Stage] = {}
        todo = [name]
        while todo:
            current = todo.pop()
            if current in seen or current not in self.stages:
                continue
            stage = self.stages[current]
            seen[current] = stage
            todo.append(stage.base)
            for inst in stage.instructions:
                flags, _ = inst.flags_and_rest()
                todo.extend(flags.get("from", []))
                for mount in flags.get("mount", []):
                    options = dict(part.partition("=")[::2] for part in mount.split(","))
                    if "from" in options:
                        todo.append(options["from"])
        return list(seen.values())

    def effective(self, name: str, keyword: str) -> Instruction | None:
        """The last instruction of a kind that applies to a stage (inherited from its lineage)."""
        for stage in self.lineage(name):
            found = stage.of(keyword)
            if found:
                return found[-1]
        return None

    def env(self, name: str) -> dict[str, str]:
        values: dict[str, str] = {}
        for stage in reversed(self.lineage(name)):
            for inst in stage.of("ENV"):
                for token in shlex.split(inst.args):
                    key, sep, value = token.partition("=")
                    assert sep, f"line {inst.line}: use ENV KEY=value"
                    values[key] = value
        return values


def parse_dockerfile(text: str) -> Dockerfile:
    global_args: dict[str, str] = {}
    stages: dict[str, Stage] = {}
    current: Stage | None = None
    for inst in parse_instructions(text):
        if inst.keyword == "FROM":
            _, rest = inst.flags_and_rest()
            words = rest.split()
            assert len(words) in (1, 3) and (len(words) == 1 or words[1].upper() == "AS"), inst
            name = words[2] if len(words) == 3 else f"stage-{len(stages)}"
            assert name not in stages, f"line {inst.line}: stage {name} defined twice"
            current = stages[name] = Stage(name, words[0])
        elif current is None:
            assert inst.keyword == "ARG", f"line {inst.line}: only ARG may come before the first FROM"
            key, _, value = inst.args.partition("=")
            global_args[key.strip()] = value.strip()
        else:
            current.instructions.append(inst)
    return Dockerfile(global_args, stages)


@cache
def dockerfile() -> Dockerfile:
    return parse_dockerfile(DOCKERFILE.read_text())


def test_the_dockerfile_parser_reads_continuations_comments_and_stages() -> None:
    parsed = parse_dockerfile(
        "ARG BASE=python:3.11.9-slim\n"
        "FROM ${BASE} AS one\n"
        "# a comment\n"
        "RUN --mount=type=bind,from=two,source=/x,target=/y \\\n"
        "    # a comment inside the continuation\n"
        "    echo a \\\n"
        "    && echo b\n"
        "\n"
        'CMD ["run", "it"]\n'
        "FROM one AS two\n"
        "ENV A=1 B=two\n"
    )
    assert list(parsed.stages) == ["one", "two"]
    run = parsed.stages["one"].of("RUN")[0]
    assert run.args.endswith("echo a && echo b") and run.line == 4
    assert parsed.expand(parsed.stages["one"].base) == "python:3.11.9-slim"
    assert parsed.effective("two", "CMD").json_args() == ["run", "it"]  # type: ignore[union-attr]
    assert parsed.env("two") == {"A": "1", "B": "two"}
    assert {s.name for s in parsed.closure("one")} == {"one", "two"}


# --------------------------------------------------------------------------------------------
# Dockerfile


def image_tag(image: str) -> str | None:
    """The tag of an image reference, or its digest; None when it has neither (that means latest)."""
    name, _, digest = image.partition("@")
    tag = name.rsplit("/", 1)[-1].partition(":")[2]
    return tag or digest or None


def assert_pinned(image: str, where: str) -> None:
    tag = image_tag(image)
    assert tag, f"{where}: image {image!r} has no tag (that means latest)"
    assert tag != "latest", f"{where}: image {image!r} uses the latest tag"


def test_external_base_images_are_pinned() -> None:
    parsed = dockerfile()
    external = [s for s in parsed.stages.values() if s.base not in parsed.stages]
    assert external, "no FROM of a base image"
    for stage in external:
        image = parsed.expand(stage.base)
        assert "$" not in image, f"stage {stage.name}: unresolved ARG in {stage.base}"
        assert_pinned(image, f"Dockerfile stage {stage.name}")


@pytest.mark.parametrize("service", SERVICES)
def test_each_service_has_its_own_final_stage(service: str) -> None:
    parsed = dockerfile()
    assert service in parsed.stages, f"infra/docker/Dockerfile has no stage (target) named {service!r}"

    cmd = parsed.effective(service, "CMD")
    entrypoint = parsed.effective(service, "ENTRYPOINT")
    assert cmd is not None and cmd.json_args() is not None, f"{service}: CMD in exec form expected"
    command = ((entrypoint.json_args() or []) if entrypoint else []) + (cmd.json_args() or [])
    assert command in ([f"driftline-{service}"], ["python", "-m", f"driftline_{service}"]), command

    env = parsed.env(service)
    assert env.get(env_name(service, "HOST")) == "0.0.0.0"
    assert env.get(env_name(service, "PORT")) == str(CONTAINER_PORT)
    exposed = [word for inst in parsed.lineage(service)[0].of("EXPOSE") for word in inst.args.split()]
    assert str(CONTAINER_PORT) in exposed, f"{service}: EXPOSE {CONTAINER_PORT} missing"

    user = parsed.effective(service, "USER")
    assert user is not None and user.args.split(":")[0] not in ("root", "0"), f"{service}: runs as root"

    health = parsed.effective(service, "HEALTHCHECK")
    assert health is not None and f":{CONTAINER_PORT}/healthz" in health.args, f"{service}: no /healthz healthcheck"

    # Its code: its own service and the libraries its pyproject names (the core one at least), no
    # other service and no other library.
    copied = {src for stage in parsed.closure(service) for src in copy_sources(stage)}
    assert f"services/{service}" in copied, f"{service}: services/{service} is never copied into its build"
    others = {f"services/{other}" for other in SERVICES if other != service}
    assert not copied & others, f"{service}: its image is built with {sorted(copied & others)}"
    assert_syncs_only_its_own_lock(parsed, service, copied)
    libs = workspace_libraries(ROOT / "services" / service / "pyproject.toml")
    assert "libs/driftline" in libs, f"{service}: its pyproject does not depend on the core library"
    assert {c for c in copied if c.startswith("libs/")} == libs, f"{service}: built with {sorted(copied)}, needs {libs}"


def test_the_cli_stage_runs_the_driftline_cli() -> None:
    parsed = dockerfile()
    assert CLI_TARGET in parsed.stages
    entrypoint = parsed.effective(CLI_TARGET, "ENTRYPOINT")
    assert entrypoint is not None and entrypoint.json_args() == ["driftline"]
    copied = {src for stage in parsed.closure(CLI_TARGET) for src in copy_sources(stage)}
    libs = workspace_libraries(ROOT / "libs" / "driftline-cli" / "pyproject.toml") | {"libs/driftline-cli"}
    assert {c for c in copied if c.startswith("libs/")} == libs, f"cli: built with {sorted(copied)}, needs {libs}"
    assert not any(c.startswith("services/") for c in copied), f"cli: built with {sorted(copied)}"
    assert_syncs_only_its_own_lock(parsed, CLI_TARGET, copied)
    user = parsed.effective(CLI_TARGET, "USER")
    assert user is not None and user.args.split(":")[0] not in ("root", "0"), "cli: runs as root"


def copy_sources(stage: Stage) -> list[str]:
    """Build-context paths a stage COPYs (not those copied from another stage)."""
    sources = []
    for inst in stage.of("COPY") + stage.of("ADD"):
        flags, rest = inst.flags_and_rest()
        if "from" in flags:
            continue
        words = json.loads(rest) if rest.startswith("[") else rest.split()
        sources.extend(word.rstrip("/") for word in words[:-1])
    return sources


def test_images_are_built_from_the_repository_root_and_get_the_schemas() -> None:
    parsed = dockerfile()
    for stage in parsed.stages.values():
        assert not stage.of("ADD"), f"stage {stage.name}: use COPY, not ADD"
        for source in copy_sources(stage):
            assert not source.startswith(("/", "..")), f"stage {stage.name}: COPY {source} is outside the context"
            assert (ROOT / source).exists(), f"stage {stage.name}: COPY {source}: no such path from the repo root"
            assert not ignored(source), f"stage {stage.name}: COPY {source} is excluded by {DOCKERIGNORE.name}"

    # schemas/ is copied and DRIFTLINE_SCHEMAS_DIR names where (the image has no checkout).
    for service in [*SERVICES, CLI_TARGET]:
        destinations = {}
        for stage in parsed.lineage(service):
            for inst in stage.of("COPY"):
                flags, rest = inst.flags_and_rest()
                words = rest.split()
                if "from" not in flags and words[:-1] == ["schemas"]:
                    destinations[words[-1].rstrip("/")] = inst
        schemas_dir = parsed.env(service).get("DRIFTLINE_SCHEMAS_DIR", "").rstrip("/")
        assert schemas_dir in destinations, (
            f"{service}: DRIFTLINE_SCHEMAS_DIR={schemas_dir!r} is not where schemas/ goes"
        )
        assert parsed.env(service).get("DRIFTLINE_LOCAL_MODE") == "false", f"{service}: images default to local mode"


def shell_commands(inst: Instruction) -> list[str]:
    """The commands of a RUN (split at && and ;), without its --mount flags."""
    return [part.strip() for part in re.split(r"&&|;", inst.flags_and_rest()[1]) if part.strip()]


def copy_destinations(parsed: Dockerfile, name: str) -> dict[str, str]:
    """Build-context path -> absolute path, for what a stage and the stages it is built FROM COPY."""
    found: dict[str, str] = {}
    workdir = "/"
    for stage in reversed(parsed.lineage(name)):
        for inst in stage.instructions:
            if inst.keyword == "WORKDIR":
                workdir = posixpath.join(workdir, inst.args.strip())
            if inst.keyword != "COPY" or "from" in inst.flags_and_rest()[0]:
                continue
            *sources, destination = inst.flags_and_rest()[1].split()
            for source in sources:
                path = posixpath.join(workdir, destination)
                if destination.endswith("/") or len(sources) > 1:
                    path = posixpath.join(path, posixpath.basename(source.rstrip("/")))
                found[source.rstrip("/")] = posixpath.normpath(path)
    return found


def synced_files(stage: Stage) -> list[tuple[Instruction, str, list[str]]]:
    """(RUN, command, requirement files) of every `pip sync` in a stage."""
    out = []
    for inst in stage.of("RUN"):
        for command in shell_commands(inst):
            if re.search(r"\bpip sync\b", command):
                files = [word for word in shlex.split(command) if word.endswith((".txt", ".lock", ".in"))]
                out.append((inst, command, files))
    return out


def assert_syncs_only_its_own_lock(parsed: Dockerfile, target: str, copied: set[str]) -> None:
    """The target's dependencies are synced, hash-checked, from infra/docker/locks/<target>.txt alone."""
    own = str(image_lock(target).relative_to(ROOT))
    locks = {c for c in copied if c.endswith((".txt", ".lock"))}
    assert locks == {own}, f"{target}: its build copies the lock files {sorted(locks)}, expected only {own}"
    syncs = []
    for stage in parsed.closure(target):
        destinations = copy_destinations(parsed, stage.name)
        for inst, command, files in synced_files(stage):
            assert "--require-hashes" in command, f"{target}: line {inst.line}: {command}"
            assert files == [destinations.get(own)], (
                f"{target}: line {inst.line} syncs {files}, not {own} (copied to {destinations.get(own)})"
            )
            syncs.append(command)
    assert len(syncs) == 1, f"{target}: expected one `uv pip sync` of {own} in its build, found {syncs}"


@pytest.mark.parametrize("target", IMAGE_TARGETS)
def test_each_image_syncs_its_own_lock_file(target: str) -> None:
    parsed = dockerfile()
    copied = {src for stage in parsed.closure(target) for src in copy_sources(stage)}
    assert_syncs_only_its_own_lock(parsed, target, copied)
    assert "requirements.lock" not in copied, f"{target}: the whole dev lock is copied into its build"


def test_dependencies_come_only_from_the_lock_files() -> None:
    parsed = dockerfile()
    runs = [inst for stage in parsed.stages.values() for inst in stage.of("RUN")]
    commands = [command for inst in runs for command in shell_commands(inst)]
    syncs = [c for c in commands if re.search(r"\bpip sync\b", c)]
    assert syncs, "no lock file is ever synced"
    for command in syncs:
        assert "--require-hashes" in command, command
        assert re.search(r"/locks/[a-z0-9-]+\.txt$", command), f"syncs something else than an image lock: {command}"
    for command in commands:
        if re.search(r"\bpip install\b", command):
            if re.search(r"\buv==\S+", command):
                continue  # the pinned installer itself
            assert "--no-deps" in command, f"installs dependencies outside the lock: {command}"
            assert not re.search(r"\s(-r|--requirements?)[\s=]", command), f"installs a requirements file: {command}"
        assert not re.search(r"--(extra-)?index-url|--find-links", command), command


# --------------------------------------------------------------------------------------------
# The image lock files (infra/docker/locks/<target>.txt, exported by `make lock`)


@dataclass(frozen=True)
class Pin:
    version: str
    hashes: frozenset[str]
    marker: Marker | None


@cache
def read_lock(path: Path) -> dict[str, Pin]:
    """A hash-pinned requirements file (uv export's format): canonical name -> its pin."""
    entries: list[str] = []
    buffer: list[str] = []
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        buffer.append(line.removesuffix("\\").strip())
        if not line.endswith("\\"):
            entries.append(" ".join(buffer))
            buffer = []
    assert not buffer, f"{path}: ends inside a continued line"
    pins: dict[str, Pin] = {}
    for entry in entries:
        where = f"{path.relative_to(ROOT)}: {entry[:60]}"
        assert not entry.startswith("-"), f"{where}: options, editables or paths do not belong in a lock"
        requirement_text, _, hash_text = entry.partition(" --hash=")
        requirement = Requirement(requirement_text)
        specs = list(requirement.specifier)
        assert requirement.url is None and len(specs) == 1 and specs[0].operator == "==", f"{where}: not pinned with =="
        hashes = re.findall(r"sha256:[0-9a-f]{64}", hash_text)
        assert hashes and hash_text.count("--hash=") + 1 == len(hashes), f"{where}: not hash-pinned (sha256)"
        name = canonicalize_name(requirement.name)
        assert name not in pins, f"{where}: {name} pinned twice"
        pins[name] = Pin(specs[0].version, frozenset(hashes), requirement.marker)
    return pins


@cache
def workspace_packages() -> frozenset[str]:
    pyprojects = [
        *sorted((ROOT / "libs").glob("*/pyproject.toml")),
        *sorted((ROOT / "services").glob("*/pyproject.toml")),
    ]
    return frozenset(canonicalize_name(tomllib.loads(p.read_text())["project"]["name"]) for p in pyprojects)


def named_dependencies(target: str) -> dict[str, list[Requirement]]:
    """Third-party requirements of the package a target is built for and of its workspace libraries, by pyproject."""
    pyproject = target_pyproject(target)
    pyprojects = [pyproject, *(ROOT / lib / "pyproject.toml" for lib in sorted(workspace_libraries(pyproject)))]
    named = {}
    for path in pyprojects:
        requirements = [Requirement(dep) for dep in tomllib.loads(path.read_text())["project"].get("dependencies", [])]
        named[str(path.relative_to(ROOT))] = [
            r for r in requirements if canonicalize_name(r.name) not in workspace_packages() and marker_holds(r.marker)
        ]
    return named


def marker_holds(marker: Marker | None, extra: str = "") -> bool:
    """Whether a requirement applies in the images (Linux, CPython 3.11), for one extra of its parent."""
    if marker is None:
        return True
    environment = {"sys_platform": "linux", "platform_system": "Linux", "os_name": "posix", "extra": extra}
    environment |= {"python_version": "3.11", "implementation_name": "cpython"}
    environment |= {"platform_python_implementation": "CPython"}
    return marker.evaluate(environment)


def test_there_is_one_lock_file_per_image_target() -> None:
    found = {p.name for p in IMAGE_LOCKS.iterdir()} if IMAGE_LOCKS.is_dir() else set()
    expected = {image_lock(t).name for t in IMAGE_TARGETS}
    assert found == expected, (
        f"{IMAGE_LOCKS.relative_to(ROOT)}: has {sorted(found)}, `make lock` writes {sorted(expected)}"
    )


@pytest.mark.parametrize("target", IMAGE_TARGETS)
def test_each_image_lock_is_hash_pinned_and_agrees_with_requirements_lock(target: str) -> None:
    pins = read_lock(image_lock(target))
    full = read_lock(REQUIREMENTS_LOCK)
    assert pins, f"{target}: empty lock"
    unknown = sorted(set(pins) - set(full))
    assert not unknown, f"{target}: pins packages requirements.lock does not have: {unknown} (run `make lock`)"
    versions = {n: (p.version, full[n].version) for n, p in pins.items() if p.version != full[n].version}
    assert not versions, f"{target}: versions differ from requirements.lock (image, dev): {versions} (run `make lock`)"
    hashes = sorted(n for n, p in pins.items() if p.hashes != full[n].hashes)
    assert not hashes, f"{target}: hashes differ from requirements.lock for {hashes} (run `make lock`)"
    workspace = sorted(set(pins) & workspace_packages())
    assert not workspace, f"{target}: workspace packages come as wheels, not from the lock: {workspace}"
    dev_group = tomllib.loads((ROOT / "pyproject.toml").read_text())["dependency-groups"]["dev"]
    dev = sorted(set(pins) & {canonicalize_name(Requirement(d).name) for d in dev_group})
    assert not dev, f"{target}: the image lock carries dev tools {dev} (export it with --no-dev)"


@pytest.mark.parametrize("target", LEAN_TARGETS)
def test_the_lean_images_carry_no_ml_stack(target: str) -> None:
    heavy = sorted(set(read_lock(image_lock(target))) & ML_STACK)
    assert not heavy, f"{target}: its lock carries {heavy}, which none of its packages depends on"


@pytest.mark.parametrize("target", IMAGE_TARGETS)
def test_each_image_lock_has_what_its_pyprojects_name(target: str) -> None:
    pins = read_lock(image_lock(target))
    for pyproject, requirements in named_dependencies(target).items():
        assert requirements or pyproject.startswith("services/"), f"{pyproject}: no third-party dependency?"
        for requirement in requirements:
            name = canonicalize_name(requirement.name)
            assert name in pins, f"{target}: {pyproject} needs {requirement}, its image lock has no {name}"
            version = pins[name].version
            assert requirement.specifier.contains(version, prereleases=True), (
                f"{target}: {pyproject} needs {requirement}, its image lock pins {name}=={version}"
            )


@pytest.mark.parametrize("target", IMAGE_TARGETS)
def test_each_image_lock_is_closed_under_dependencies(target: str) -> None:
    """What the pinned distributions require (read from the dev venv, which holds the same versions)
    is pinned too: the check `uv pip check` makes at build time, without building."""
    pins = read_lock(image_lock(target))
    todo = [(r, extra) for rs in named_dependencies(target).values() for r in rs for extra in ("", *r.extras)]
    seen: set[tuple[str, str]] = set()
    while todo:
        requirement, extra = todo.pop()
        name = canonicalize_name(requirement.name)
        if (name, extra) in seen:
            continue
        seen.add((name, extra))
        assert name in pins, f"{target}: {requirement} is required (via an image package), its lock has no {name}"
        try:
            distribution = importlib.metadata.distribution(name)
        except importlib.metadata.PackageNotFoundError:
            pytest.fail(f"{name} is not installed in the dev venv: run `make venv`")
        assert distribution.version == pins[name].version, f"{name}: the dev venv is not requirements.lock's: make venv"
        for text in distribution.requires or []:
            needed = Requirement(text)
            if marker_holds(needed.marker, extra):
                todo.extend((needed, sub) for sub in ("", *needed.extras))


# Dockerfile.dockerignore: the context is the whole checkout, so the ignore file keeps the local
# stack's state (.state/, with local credentials), the venv and git history out of it.
def ignore_patterns() -> list[tuple[bool, re.Pattern[str]]]:
    patterns = []
    for line in DOCKERIGNORE.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negated = line.startswith("!")
        pattern = line.lstrip("!").strip("/")
        regex = re.escape(pattern).replace(r"\*\*/", "(?:.*/)?").replace(r"\*\*", ".*")
        regex = regex.replace(r"\*", "[^/]*").replace(r"\?", "[^/]")
        patterns.append((negated, re.compile(regex)))
    return patterns


def ignored(path: str) -> bool:
    parts = path.strip("/").split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    result = False
    for negated, regex in ignore_patterns():
        if any(regex.fullmatch(prefix) for prefix in prefixes):
            result = not negated
    return result


def test_the_build_context_leaves_out_local_state() -> None:
    for path in [".state/test/stack.env", ".venv/bin/python", ".git/HEAD", "tests/conftest.py"]:
        assert ignored(path), f"{path} would be sent to the builder"
    for path in ["services/training/src/driftline_training/__pycache__/x.pyc", "libs/driftline/dist/x.whl"]:
        assert ignored(path), path
    for path in ["schemas/topics.yaml", *(str(image_lock(t).relative_to(ROOT)) for t in IMAGE_TARGETS)]:
        assert not ignored(path), path
    for lib in sorted((ROOT / "libs").glob("*/pyproject.toml")):
        assert not ignored(str(lib.relative_to(ROOT))), lib
    for service in SERVICES:
        assert not ignored(f"services/{service}/pyproject.toml"), service


# --------------------------------------------------------------------------------------------
# Kubernetes


def yaml_documents(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


@cache
def k8s_objects() -> list[dict[str, Any]]:
    objects = []
    for path in sorted(K8S.rglob("*.yaml")):
        for doc in yaml_documents(path):
            assert "kind" in doc, f"{path}: a document without kind"
            if doc["kind"] != "Kustomization":
                objects.append({**doc, "_file": str(path.relative_to(ROOT))})
    return objects


def of_kind(kind: str) -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = {}
    for obj in k8s_objects():
        if obj["kind"] == kind:
            name = obj["metadata"]["name"]
            assert name not in found, f"two {kind}s named {name}"
            found[name] = obj
    return found


def test_the_kustomizations_list_every_manifest() -> None:
    for directory in [K8S, STRIMZI]:
        kustomization = yaml.safe_load((directory / "kustomization.yaml").read_text())
        resources = kustomization["resources"]
        for resource in resources:
            assert (directory / resource).exists(), f"{directory}: resource {resource} does not exist"
        files = {p.name for p in directory.glob("*.yaml") if p.name != "kustomization.yaml"}
        assert files <= set(resources), f"{directory}: not in kustomization.yaml: {sorted(files - set(resources))}"
    base = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    for image in base.get("images", []):
        assert image.get("newTag") and image["newTag"] != "latest", image


def containers_of(obj: dict[str, Any]) -> list[dict[str, Any]]:
    spec = obj["spec"]["template"]["spec"]
    return list(spec.get("initContainers", [])) + list(spec["containers"])


def all_images() -> Iterator[tuple[str, str]]:
    for obj in k8s_objects():
        if obj["kind"] in ("Deployment", "Job", "StatefulSet", "DaemonSet", "CronJob"):
            for container in containers_of(obj):
                yield f"{obj['_file']}: {obj['metadata']['name']}", container["image"]


def test_no_image_uses_latest() -> None:
    images = list(all_images())
    assert images
    for where, image in images:
        assert_pinned(image, where)


def resolved_env(obj: dict[str, Any], container: dict[str, Any]) -> dict[str, Any]:
    """The container's environment: ConfigMaps from envFrom (read from the manifests), then env."""
    configmaps = of_kind("ConfigMap")
    env: dict[str, Any] = {}
    for source in container.get("envFrom", []):
        assert "configMapRef" in source, f"{obj['metadata']['name']}: envFrom only from ConfigMaps"
        name = source["configMapRef"]["name"]
        assert name in configmaps, f"{obj['metadata']['name']}: ConfigMap {name} is not in infra/k8s"
        env.update({key: {"value": value} for key, value in configmaps[name]["data"].items()})
    for item in container.get("env", []):
        env[item["name"]] = item
    return env


def check_pod_settings(obj: dict[str, Any], container: dict[str, Any]) -> None:
    where = f"{obj['_file']}: {obj['metadata']['name']}"
    env = resolved_env(obj, container)
    missing = REQUIRED_SETTINGS - set(env)
    assert not missing, f"{where}: settings missing: {sorted(missing)}"
    for name in env:
        assert known_setting(name), f"{where}: {name} is not a Driftline setting (typo?)"
    assert env["DRIFTLINE_LOCAL_MODE"].get("value") == "false", f"{where}: production pods run with local mode off"
    for name in SECRET_SETTINGS:
        ref = env[name].get("valueFrom", {}).get("secretKeyRef")
        assert ref and ref.get("name") == SECRET_NAME and ref.get("key"), f"{where}: {name} must come from a Secret"
    for name, key in OPTIONAL_SECRET_SETTINGS.items():
        assert name in env, f"{where}: {name} (from the Secret, optional) missing"
        ref = env[name].get("valueFrom", {}).get("secretKeyRef")
        assert ref == {"name": SECRET_NAME, "key": key, "optional": True}, f"{where}: {name} from {SECRET_NAME}/{key}"
    # The settings the pod gets (the Secret's required keys filled in) make a valid StackSettings.
    values = {}
    for name, item in env.items():
        field = name.removeprefix("DRIFTLINE_").lower()
        if field not in StackSettings.model_fields:
            continue
        ref = item.get("valueFrom", {}).get("secretKeyRef")
        if ref is None:
            values[field] = item["value"]
        elif not ref.get("optional"):
            values[field] = f"value-of-{ref['key']}"
    stack = StackSettings(**values)
    assert not stack.local_mode and stack.kafka.security_protocol in ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")

    # The project file is a file of the mounted project ConfigMap.
    pod = obj["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    project_file = env["DRIFTLINE_PROJECT_FILE"]["value"]
    mounts = [
        m
        for m in container.get("volumeMounts", [])
        if project_file.startswith(m["mountPath"].rstrip("/") + "/")
        and volumes.get(m["name"], {}).get("configMap", {}).get("name") == PROJECT_CONFIGMAP
    ]
    assert mounts, f"{where}: {project_file} is not in a mounted {PROJECT_CONFIGMAP} ConfigMap"
    # CA files and client certificates: the optional Secret driftline-tls, mounted read-only.
    tls = [
        m
        for m in container.get("volumeMounts", [])
        if m["mountPath"] == TLS_DIR and volumes.get(m["name"], {}).get("secret", {}).get("secretName") == TLS_SECRET
    ]
    assert tls and tls[0].get("readOnly") is True, f"{where}: Secret {TLS_SECRET} is not mounted read-only at {TLS_DIR}"
    assert volumes[tls[0]["name"]]["secret"].get("optional") is True, f"{where}: {TLS_SECRET} must be optional"
    for name, item in env.items():
        if name.endswith("_FILE") and "value" in item and name != "DRIFTLINE_PROJECT_FILE":
            assert item["value"].startswith(TLS_DIR + "/"), f"{where}: {name} is not a file of {TLS_DIR}"

    security = pod.get("securityContext", {})
    assert security.get("runAsNonRoot") is True, f"{where}: runAsNonRoot"
    resources = container.get("resources", {})
    for kind in ("requests", "limits"):
        for resource in ("cpu", "memory"):
            assert resources.get(kind, {}).get(resource), f"{where}: resources.{kind}.{resource} missing"


@pytest.mark.parametrize("service", SERVICES)
def test_each_service_has_a_deployment_and_a_service(service: str) -> None:
    deployments, k8s_services = of_kind("Deployment"), of_kind("Service")
    name = f"driftline-{service}"
    assert name in deployments, f"no Deployment {name} in infra/k8s"
    deployment = deployments[name]
    template = deployment["spec"]["template"]
    labels = template["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert deployment["spec"].get("replicas", 1) >= 1

    (container,) = template["spec"]["containers"]
    repository = container["image"].rsplit(":", 1)[0]
    assert repository.rsplit("/", 1)[-1] == service, f"{name}: image {container['image']} is not the {service} image"
    assert_pinned(container["image"], name)
    if "command" in container:
        assert container["command"] in ([f"driftline-{service}"], ["python", "-m", f"driftline_{service}"])

    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert CONTAINER_PORT in ports.values(), f"{name}: containerPort {CONTAINER_PORT}"
    env = resolved_env(deployment, container)
    assert env[env_name(service, "HOST")].get("value") == "0.0.0.0"
    assert int(env[env_name(service, "PORT")]["value"]) == CONTAINER_PORT

    for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
        http = container.get(probe, {}).get("httpGet")
        assert http and http["path"] == path, f"{name}: {probe} must GET {path}"
        assert ports.get(http["port"], http["port"]) == CONTAINER_PORT, f"{name}: {probe} on another port"
    check_pod_settings(deployment, container)

    assert name in k8s_services, f"no Service {name} in infra/k8s"
    svc = k8s_services[name]
    assert svc["spec"]["selector"].items() <= labels.items(), f"Service {name} does not select its pods"
    for port in svc["spec"]["ports"]:
        target = port.get("targetPort", port["port"])
        assert ports.get(target, target) == CONTAINER_PORT, f"Service {name}: targetPort {target}"


def test_no_deployment_for_an_unknown_service() -> None:
    assert set(of_kind("Deployment")) == {f"driftline-{s}" for s in SERVICES}


def test_the_init_job_runs_driftline_stack_init() -> None:
    jobs = [
        job
        for job in of_kind("Job").values()
        if any(
            " ".join(c.get("command", []) + c.get("args", [])) == "driftline stack init"
            for c in job["spec"]["template"]["spec"]["containers"]
        )
    ]
    assert len(jobs) == 1, "exactly one Job must run `driftline stack init`"
    (job,) = jobs
    (container,) = job["spec"]["template"]["spec"]["containers"]
    assert container["image"].rsplit(":", 1)[0].rsplit("/", 1)[-1] == CLI_TARGET
    assert CLI_TARGET in dockerfile().stages
    assert job["spec"]["template"]["spec"]["restartPolicy"] in ("OnFailure", "Never")
    check_pod_settings(job, container)


def test_kafka_topics_match_the_catalog_exactly() -> None:
    declared = [obj for obj in k8s_objects() if obj["kind"] == "KafkaTopic"]
    names = [obj["spec"].get("topicName", obj["metadata"]["name"]) for obj in declared]
    assert len(names) == len(set(names)), "a KafkaTopic is declared twice"
    assert set(names) == {t.name for t in TOPICS}, (
        f"KafkaTopics differ from schemas/topics.yaml: missing {sorted({t.name for t in TOPICS} - set(names))}, "
        f"extra {sorted(set(names) - {t.name for t in TOPICS})}"
    )
    by_name = dict(zip(names, declared, strict=True))
    for topic in TOPICS:
        spec = by_name[topic.name]["spec"]
        assert spec["partitions"] == topic.partitions, f"{topic.name}: partitions"
        assert spec["replicas"] >= topic.replication_factor, f"{topic.name}: replicas"
        config = {k: str(v) for k, v in spec.get("config", {}).items()}
        for key, value in topic.kafka_config().items():
            assert config.get(key) == value, f"{topic.name}: {key} is {config.get(key)!r}, the catalog says {value!r}"
        assert by_name[topic.name]["metadata"]["labels"].get("strimzi.io/cluster"), f"{topic.name}: cluster label"


def all_strings(value: Any) -> Iterator[str]:
    if isinstance(value, dict):
        for key, item in value.items():
            yield str(key)
            yield from all_strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from all_strings(item)
    elif value is not None:
        yield str(value)


def infra_files() -> list[Path]:
    files = [DOCKERFILE, DOCKERIGNORE, COMPOSE, DEPLOYMENT_DOC, *sorted(K8S.rglob("*.yaml"))]
    files += sorted((ROOT / "infra" / "docker").glob("*.sh"))
    files += sorted(IMAGE_LOCKS.glob("*.txt"))
    return files


def schema_checked(obj: dict[str, Any]) -> bool:
    """Kubernetes API objects; custom resources (Strimzi's KafkaTopic) have no schema in the validator."""
    return "." not in obj["apiVersion"].split("/")[0] or obj["apiVersion"].split("/")[0].endswith(".k8s.io")


def test_every_kubernetes_manifest_fits_the_api_schemas() -> None:
    """kubernetes-validate (the API's OpenAPI schemas, shipped in the package: no cluster, no
    network), strict: a misspelt or misplaced field fails, not only a wrong type."""
    checked = 0
    for obj in k8s_objects():
        if not schema_checked(obj):
            continue
        resource = {k: v for k, v in obj.items() if k != "_file"}
        try:
            kubernetes_validate.validate(resource, K8S_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            raise AssertionError(f"{obj['_file']}: {obj['kind']} {obj['metadata']['name']}: {exc.message}") from None
        checked += 1
    kinds = {o["kind"] for o in k8s_objects() if schema_checked(o)}
    assert {"Deployment", "Service", "ConfigMap", "Job", "Namespace"} <= kinds and checked >= 15


@pytest.mark.parametrize(
    ("break_it", "message"),
    [
        (lambda d: d["spec"].update(replicas="two"), "is not of type 'integer'"),
        (lambda d: d["spec"]["template"]["spec"]["containers"][0].update(enviroment=[]), "'enviroment' was unexpected"),
        (lambda d: d["spec"]["template"]["spec"]["volumes"][0].update(secrett={}), "'secrett' was unexpected"),
    ],
)
def test_the_schema_check_catches_a_broken_manifest(break_it: Any, message: str) -> None:
    import copy

    deployment = copy.deepcopy(of_kind("Deployment")["driftline-training"])
    del deployment["_file"]
    break_it(deployment)
    with pytest.raises(kubernetes_validate.ValidationError, match=message):
        kubernetes_validate.validate(deployment, K8S_VERSION, strict=True)


def test_no_secret_is_written_in_a_manifest() -> None:
    for obj in k8s_objects():
        where = f"{obj['_file']}: {obj['kind']} {obj['metadata']['name']}"
        assert obj["kind"] != "Secret", f"{where}: Secrets are created out of band, never committed"
        if obj["kind"] == "ConfigMap":
            for key in obj.get("data", {}):
                assert not SECRETISH_NAME.search(key), f"{where}: {key} belongs in a Secret"
        if obj["kind"] in ("Deployment", "Job"):
            for container in containers_of(obj):
                for item in container.get("env", []):
                    if SECRETISH_NAME.search(item["name"]):
                        assert "value" not in item, f"{where}: {item['name']} is written in plain text"
        for text in all_strings(obj):
            assert not URL_WITH_CREDENTIALS.search(text), f"{where}: credentials in a URL: {text}"
    for path in infra_files():
        text = path.read_text()
        for local_secret in (LOCAL_POSTGRES_PASSWORD, LOCAL_MINIO_SECRET, LOCAL_API_TOKEN):
            assert local_secret not in text, f"{path}: the local-mode secret {local_secret!r}"


def test_no_registry_host_or_machine_path_in_infra_files() -> None:
    forbidden = re.compile(r"pypi\.org|pythonhosted|docker\.io|ghcr\.io|quay\.io|/root/|/home/|/work/|/Users/")
    for path in infra_files():
        match = forbidden.search(path.read_text())
        assert not match, f"{path}: names {match.group(0)!r}"


# --------------------------------------------------------------------------------------------
# Compose


@cache
def compose() -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return doc


def interpolated(value: Any) -> bool:
    return isinstance(value, str) and re.fullmatch(r"\$\{[A-Z0-9_]+(:?[?-][^}]*)?\}", value) is not None


def check_compose_build(name: str, spec: dict[str, Any], target: str) -> None:
    build = spec["build"]
    assert (COMPOSE.parent / build["context"]).resolve() == ROOT, f"compose {name}: build context is not the repo root"
    assert (ROOT / build["dockerfile"]).resolve() == DOCKERFILE, f"compose {name}: another Dockerfile"
    assert build["target"] == target and target in dockerfile().stages, f"compose {name}: target {target}"
    default_tag = re.sub(r"\$\{[A-Z0-9_]+:-([^}]*)\}", r"\1", spec["image"])
    assert_pinned(default_tag, f"compose {name}")


def check_compose_env(name: str, env: dict[str, Any]) -> None:
    missing = REQUIRED_SETTINGS - set(env)
    assert not missing, f"compose {name}: settings missing: {sorted(missing)}"
    for key, value in env.items():
        assert known_setting(key), f"compose {name}: {key} is not a Driftline setting"
        if SECRETISH_NAME.search(key):
            assert interpolated(value) and ":-" not in value, f"compose {name}: {key} must come from the environment"
    assert str(env["DRIFTLINE_LOCAL_MODE"]).lower() == "false"


def test_compose_runs_every_service_and_the_init_job() -> None:
    services = compose()["services"]
    assert set(services) == {*SERVICES, "stack-init"}
    init = services["stack-init"]
    assert " ".join(init.get("entrypoint", []) + init.get("command", [])) == "driftline stack init"
    check_compose_build("stack-init", init, CLI_TARGET)
    check_compose_env("stack-init", init["environment"])
    for service in SERVICES:
        spec = services[service]
        check_compose_build(service, spec, service)
        env = spec["environment"]
        check_compose_env(service, env)
        assert env[env_name(service, "HOST")] == "0.0.0.0"
        assert int(env[env_name(service, "PORT")]) == CONTAINER_PORT
        assert any(p.endswith(f":{CONTAINER_PORT}") for p in spec["ports"]), f"compose {service}: port"
        assert spec["depends_on"]["stack-init"]["condition"] == "service_completed_successfully"
        assert f":{CONTAINER_PORT}/readyz" in " ".join(spec["healthcheck"]["test"]), f"compose {service}: healthcheck"


def test_compose_mounts_the_shipped_example_project_by_default() -> None:
    source = compose()["x-driftline-project"]["source"]
    default = re.fullmatch(r"\$\{DRIFTLINE_PROJECT_FILE_ON_HOST:-(.+)\}", source)
    assert default, f"compose: project file source {source!r} has no default"
    assert EXAMPLE_PROJECT is not None
    assert (COMPOSE.parent / default.group(1)).resolve() == EXAMPLE_PROJECT.resolve()


# --------------------------------------------------------------------------------------------
# The deployment guide


def test_the_deployment_guide_covers_services_topics_and_settings() -> None:
    text = DEPLOYMENT_DOC.read_text()
    for service in SERVICES:
        assert f"driftline-{service}" in text, f"docs/deployment.md does not mention driftline-{service}"
    for topic in TOPICS:
        assert f"`{topic.name}`" in text, f"docs/deployment.md does not mention the topic {topic.name}"
    for setting in REQUIRED_SETTINGS | {"DRIFTLINE_SCHEMAS_DIR", "DRIFTLINE_TOPIC_REPLICATION_FACTOR"}:
        assert setting in text, f"docs/deployment.md does not mention {setting}"
    assert "driftline stack init" in text
