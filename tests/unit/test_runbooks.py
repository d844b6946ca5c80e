"""The commands of the runbooks (docs/runbooks/*.md) and of README.md work as written.

Every shell command of a fenced ``bash`` block, and (in the runbooks) every command in inline
code, is split into its simple commands (``;``, ``&&``, ``|``, ``for … do … done``) and checked
against the code, without a stack and without running anything:

* ``driftline …`` parses with the real typer app (click's ``make_context``: subcommands, options,
  argument types and files must exist; nothing is invoked);
* ``make X`` names a target of the Makefile;
* ``curl`` hits a route of the FastAPI app of the service on that port (the service's own app,
  routes matched as starlette dispatches a request), with the method the command uses;
* a ``grep`` of a ``/metrics`` answer names metrics that service exports (defined in its package,
  or by the library code it runs: consumer-runner metrics only where the service declares
  consumer groups); a ``grep`` of the services' log names log events the code logs;
* files (``tail``, ``ls``, ``.``), state files under ``.state/dev`` (written by infra/), scripts
  and their subcommands, ``python -m`` modules, ``DRIFTLINE_*`` variables, the Kafka version in a
  classpath and ``--topic`` names exist.

A command of a kind no check knows fails here, so a new kind of command comes with its check.
``<placeholders>`` stand for a value (``1``).
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import itertools
import re
import shlex
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import pydantic_settings
import pytest
import typer
from fastapi import FastAPI
from starlette.routing import Match

from driftline.catalog import default_catalog
from driftline_cli.dlq import ERROR_FAMILIES, DeadLetter, error_types
from driftline_cli.main import app as cli_app

ROOT = Path(__file__).resolve().parents[2]
RUNBOOK_DIR = ROOT / "docs" / "runbooks"
RUNBOOKS = sorted(RUNBOOK_DIR.glob("*.md"))
README = ROOT / "README.md"
SERVICES = ("ingestion", "features", "training", "registry", "deployment", "monitoring")
PLACEHOLDER = re.compile(r"<[^<>\n]+>")
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.S | re.M)
INLINE = re.compile(r"`([^`]+)`")
OPERATORS = {";", "&&", "||", "|", "&"}
CLI = {"driftline", ".venv/bin/driftline"}
UNCHECKED = {"echo", "done"}  # nothing to hold to the code
COMMAND_WORDS = CLI | {"make", "curl", "java", "set", ".venv/bin/python", "tail", "ls"}


# --- extraction -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Command:
    doc: Path
    line: int
    text: str  # as written (placeholders kept)

    @property
    def where(self) -> str:
        return f"{self.doc.relative_to(ROOT)}:{self.line}"


def _line_of(text: str, pos: int) -> int:
    return text.count("\n", 0, pos) + 1


def fenced_commands(doc: Path) -> Iterator[Command]:
    text = doc.read_text()
    for m in FENCE.finditer(text):
        if m.group(1) not in ("bash", "sh", "shell"):
            continue
        first = _line_of(text, m.start(2))
        lines = m.group(2).replace("\\\n", " ").splitlines()  # continuation lines: one command
        for i, line in enumerate(lines):
            if line.strip() and not line.lstrip().startswith("#"):
                yield Command(doc, first + i, line.strip())


def _prose(text: str) -> str:
    """The text without its fenced blocks (same length, so positions keep their line numbers)."""
    return FENCE.sub(lambda m: re.sub(r"[^\n]", " ", m.group(0)), text)


def inline_spans(doc: Path) -> Iterator[tuple[int, str]]:
    text = _prose(doc.read_text())
    for m in INLINE.finditer(text):
        yield _line_of(text, m.start()), " ".join(m.group(1).split())


def _first_word(span: str) -> str | None:
    try:
        words = shlex.split(PLACEHOLDER.sub("1", span))
    except ValueError:
        return None
    words = [w for w in words if not re.fullmatch(r"[A-Z_][A-Z0-9_]*=.*", w)]
    return words[0] if words else None


def inline_commands(doc: Path) -> Iterator[Command]:
    for line, span in inline_spans(doc):
        word = _first_word(span)
        if len(span.split()) < 2:  # a name (`driftline`, `make`), not a command
            continue
        if word in COMMAND_WORDS or (word or "").startswith("infra/"):
            yield Command(doc, line, span)


def runbook_commands() -> list[Command]:
    """Every command of the runbooks (blocks and inline code) and of README.md's blocks."""
    out = [c for doc in RUNBOOKS for c in (*fenced_commands(doc), *inline_commands(doc))]
    return out + list(fenced_commands(README))


def tokens(text: str) -> list[str]:
    lexer = shlex.shlex(PLACEHOLDER.sub("1", text), posix=True, punctuation_chars=";&|")
    lexer.whitespace_split = True
    lexer.commenters = "#"
    return list(lexer)


@dataclass
class Simple:
    """One simple command: its words, the variables assigned before it, and how it is joined on."""

    words: list[str]
    env: dict[str, str]
    piped_from: Simple | None = None


def simple_commands(text: str) -> Iterator[Simple]:
    """The simple commands of a command line, with ``for VAR in …; do …; done`` expanded."""
    segments: list[tuple[list[str], str | None]] = []  # words, operator before
    current: list[str] = []
    before: str | None = None
    for tok in tokens(text):
        if tok in OPERATORS:
            segments.append((current, before))
            current, before = [], tok
        else:
            current.append(tok)
    segments.append((current, before))

    loop_var: str | None = None
    loop_values: list[str] = []
    previous: Simple | None = None
    for words, op in segments:
        if not words:
            continue
        if words[0] == "for":
            assert len(words) >= 3 and words[2] == "in", f"unparsed for loop: {text}"
            loop_var, loop_values = words[1], words[3:]
            continue
        if words[0] == "do":
            words = words[1:]
        if words == ["done"]:
            loop_var = None
            continue
        expansions = [words]
        if loop_var is not None:
            expansions = [[re.sub(rf"\$\{{?{loop_var}\}}?", value, w) for w in words] for value in loop_values]
        for ws in expansions:
            env: dict[str, str] = {}
            while ws and re.fullmatch(r"[A-Z_][A-Z0-9_]*=.*", ws[0]):
                name, _, value = ws[0].partition("=")
                env[name] = value
                ws = ws[1:]
            cmd = Simple(ws, env, previous if op == "|" else None)
            yield cmd
            previous = cmd


# --- what the code has ------------------------------------------------------------------------------


def _sources(*roots: str) -> Iterator[Path]:
    for root in roots:
        yield from sorted((ROOT / root).glob("**/src/**/*.py"))


@cache
def make_targets() -> frozenset[str]:
    text = (ROOT / "Makefile").read_text()
    return frozenset(re.findall(r"^([A-Za-z0-9][A-Za-z0-9_.-]*)\s*:(?!=)", text, re.M))


@cache
def service_apps() -> dict[int, tuple[str, FastAPI]]:
    """Port → (service, its FastAPI app as the service builds it; nothing started)."""
    from driftline.service import build_app

    out: dict[int, tuple[str, FastAPI]] = {}
    for name in SERVICES:
        service = importlib.import_module(f"driftline_{name}.service").SERVICE
        config = importlib.import_module(f"driftline_{name}.config")
        (settings_cls,) = [
            v
            for v in vars(config).values()
            if isinstance(v, type) and issubclass(v, pydantic_settings.BaseSettings) and v.__module__ == config.__name__
        ]
        port = settings_cls.model_fields["port"].default
        out[port] = (name, build_app(service, settings_cls()))
    return out


def route_match(app: FastAPI, path: str, method: str) -> Match:
    scope = {"type": "http", "path": path, "method": method, "root_path": "", "query_string": b"", "headers": []}
    best = Match.NONE
    for route in app.router.routes:
        match, _ = route.matches(scope)
        if match == Match.FULL:
            return match
        if match == Match.PARTIAL:
            best = match
    return best


METRIC = re.compile(r"\b(Counter|Gauge|Histogram|Summary|Info|Enum)\(\s*\"(driftline_[a-z0-9_]+)\"")
SUFFIXES = {
    "Counter": ("_total", "_created"),
    "Gauge": ("",),
    "Histogram": ("_bucket", "_sum", "_count", "_created"),
    "Summary": ("", "_sum", "_count", "_created"),
    "Info": ("_info",),
    "Enum": ("",),
}
CORE = ROOT / "libs" / "driftline" / "src" / "driftline"


def _exposed(kind: str, name: str) -> set[str]:
    base = name.removesuffix("_total") if kind == "Counter" else name
    return {name} | {base + s for s in SUFFIXES[kind]}


def _metrics_of(path: Path) -> set[str]:
    return {n for kind, name in METRIC.findall(path.read_text()) for n in _exposed(kind, name)}


def _uses_consumer_groups(package: Path) -> bool:
    return "Consume(" in (package / "service.py").read_text()


@cache
def service_metrics(service: str) -> frozenset[str]:
    """Names a service's /metrics shows samples of: its package's metrics, and the library's metrics
    of what it runs (every service serves HTTP and produces; the consumer runner's metrics, lag
    included, only where the service declares consumer groups; any other library module only if the
    service imports it)."""
    package = ROOT / "services" / service / "src" / f"driftline_{service}"
    names: set[str] = set()
    for path in sorted(package.glob("**/*.py")):
        names |= _metrics_of(path)
    own = "\n".join(p.read_text() for p in package.glob("**/*.py"))
    for path in sorted((ROOT / "libs").glob("*/src/*/*.py")):
        found = _metrics_of(path)
        if not found:
            continue
        if path.parent == CORE and path.name in ("api.py", "producer.py"):
            used = True
        elif path.parent == CORE and path.name == "consumer.py":
            used = _uses_consumer_groups(package)
        elif path.parent == CORE and path.name == "lag.py":  # the consumer runner's, or imported
            used = _uses_consumer_groups(package) or "from driftline.lag import" in own
        else:
            module = f"{path.parent.name}.{path.stem}"
            used = re.search(rf"^\s*(from|import) {re.escape(module)}\b", own, re.M) is not None
        if used:
            names |= found
    return frozenset(names)


LOG_CALL = re.compile(r"\blog(?:ger)?\.(?:debug|info|warning|warn|error|exception|critical)\(\s*\"([a-z0-9_]+)\"")


@cache
def log_events() -> frozenset[str]:
    return frozenset(e for path in _sources("libs", "services") for e in LOG_CALL.findall(path.read_text()))


@cache
def infra_text() -> str:
    return "\n".join(p.read_text() for p in sorted((ROOT / "infra").glob("*.sh")))


@cache
def known_env() -> frozenset[str]:
    """DRIFTLINE_* variables something reads: settings classes (prefix + field) and the scripts."""
    for name in SERVICES:
        importlib.import_module(f"driftline_{name}.config")
    names: set[str] = set()
    todo: list[type[Any]] = [pydantic_settings.BaseSettings]
    while todo:
        cls = todo.pop()
        todo += cls.__subclasses__()
        prefix = str(cls.model_config.get("env_prefix", ""))
        for field_name, info in getattr(cls, "model_fields", {}).items():
            names.add((prefix + field_name).upper())
            for alias in (info.alias, info.validation_alias):
                if isinstance(alias, str):
                    names.add(alias.upper())
    literal = "\n".join([infra_text(), (ROOT / "Makefile").read_text()])
    literal += "\n".join(p.read_text() for p in _sources("libs", "services"))
    names |= set(re.findall(r"\bDRIFTLINE_[A-Z0-9_]+", literal))
    return frozenset(n for n in names if n.startswith("DRIFTLINE_"))


@cache
def otel_env() -> frozenset[str]:
    """The OpenTelemetry variables driftline.tracing names (``OTEL_EXPORTER_OTLP_`` as a prefix)."""
    text = (CORE / "tracing.py").read_text()
    return frozenset(re.findall(r"\bOTEL_[A-Z0-9_]+", text))


def script_labels(script: Path) -> set[str]:
    """The words a shell script's ``case`` statements accept."""
    labels: set[str] = set()
    for m in re.finditer(r"^\s*([a-z][a-z0-9 |_-]*)\)", script.read_text(), re.M):
        labels |= {w.strip() for w in m.group(1).split("|")}
    return labels


def state_file_known(rel: str) -> bool:
    """A path under .state/dev that infra/ writes (logs of its daemons, stack.env, ports.env…)."""
    rel = rel.rstrip("/")
    if rel in ("", "logs"):
        return True
    if rel.startswith("logs/"):
        name = rel.removeprefix("logs/")
        daemons = set(re.findall(r"start_daemon (\w+)", infra_text()))
        return f"$LOG_DIR/{name}" in infra_text() or name.removesuffix(".log") in daemons
    return f"$STATE_DIR/{rel}" in infra_text()


def path_problem(path: str, doc: Path) -> str | None:
    if path.startswith(".state/dev/"):
        return None if state_file_known(path.removeprefix(".state/dev/")) else f"nothing in infra/ writes {path}"
    if path.startswith(".state/dev"):
        return None
    if (ROOT / path).exists() or (doc.parent / path).exists():
        return None
    return f"no such file: {path}"


# --- the checks -------------------------------------------------------------------------------------


def cli_problem(args: list[str]) -> str | None:
    """Parse ``driftline ARGS`` as the real app would, down to the leaf command; invoke nothing.
    (typer ships its own copy of click, so its classes are recognised by what they do.)"""
    cmd: Any = typer.main.get_command(cli_app)
    name, rest, parent, path = "driftline", args, None, ["driftline"]
    try:
        while True:
            ctx = cmd.make_context(name, list(rest), parent=parent)
            if not hasattr(cmd, "resolve_command"):  # a leaf command: parsed
                return dlq_filter_problem(path, ctx.params)
            rest = [*ctx._protected_args, *ctx.args]
            if not rest:
                return "no subcommand"
            sub_name, sub, rest = cmd.resolve_command(ctx, rest)
            assert sub is not None and sub_name is not None
            name, cmd, parent = sub_name, sub, ctx
            path.append(sub_name)
    except Exception as exc:
        if type(exc).__name__ == "Exit":  # --help and friends
            code = getattr(exc, "exit_code", 0)
            return None if code == 0 else f"exits {code}"
        if hasattr(exc, "format_message"):  # click's UsageError, BadParameter, NoSuchOption…
            return f"does not parse: {type(exc).__name__}: {exc.format_message()}"
        raise


CLIENT_SOURCES = ("http", "sdk", "cli")  # sources of refused client input (http:/v1/events, sdk-kafka:…)


def dlq_filter_problem(path: list[str], params: dict[str, Any]) -> str | None:
    """A ``dlq list/replay`` filter must be able to match what the code dead-letters."""
    if path[1:2] != ["dlq"] or not params.get("error_type"):
        return None
    types = error_types(params["error_type"]) or frozenset()
    unknown = sorted(types - dead_letter_error_types())
    if unknown:
        return f"no code dead-letters the error types {unknown}"
    source = params.get("source") or ""
    if source.startswith(CLIENT_SOURCES) and not types <= validation_error_types():
        return f"source {source!r} is refused client input, of the validation family's types, not {sorted(types)}"
    return None


def grep_names(cmd: Simple) -> list[str] | str:
    words = cmd.words[1:]
    extended = any(w in ("-E", "--extended-regexp") or re.fullmatch(r"-[a-zA-Z]*E[a-zA-Z]*", w) for w in words)
    patterns = [w for w in words if not w.startswith("-")]
    if not patterns:
        return "grep without a pattern"
    names = patterns[0].split("|") if extended else patterns[0].split(r"\|")
    bad = [n for n in names if not re.fullmatch(r"[a-z0-9_]+", n)]
    if bad:
        return f"write the names out in full (no regex) so they can be checked: {bad}"
    return names


def curl_target(cmd: Simple) -> tuple[int, str, str] | str:
    words = cmd.words[1:]
    method = "GET"
    url = None
    i = 0
    while i < len(words):
        w = words[i]
        if w in ("-X", "--request"):
            method, i = words[i + 1], i + 2
            continue
        if w in ("-d", "--data", "--data-raw", "--json", "-H", "--header", "-o", "-w", "--max-time", "-m"):
            if w in ("-d", "--data", "--data-raw", "--json"):
                method = "POST" if method == "GET" else method
            i += 2
            continue
        if not w.startswith("-"):
            url = w
        i += 1
    if url is None:
        return "curl without a URL"
    m = re.fullmatch(r"(?:https?://)?(?:localhost|127\.0\.0\.1):(\d+)(/[^?#]*)?(?:[?#].*)?", url)
    if m is None:
        return f"not a URL of a local service: {url}"
    return int(m.group(1)), m.group(2) or "/", method


def route_problem(port: int, path: str, method: str) -> str | None:
    apps = service_apps()
    if port not in apps:
        return f"no service listens on port {port} (services: {sorted(apps)})"
    name, app = apps[port]
    match = route_match(app, path, method)
    if match == Match.FULL:
        return None
    if match == Match.PARTIAL:
        return f"{name} ({port}) has {path} but not for {method}"
    return f"{name} ({port}) has no route {method} {path}"


def check_simple(cmd: Simple, doc: Path) -> list[str]:
    problems = [f"unknown variable {v}" for v in cmd.env if v.startswith("DRIFTLINE_") and v not in known_env()]
    for word in cmd.words:
        for var in re.findall(r"\$\{?(DRIFTLINE_[A-Z0-9_]+)", word):
            if var not in known_env():
                problems.append(f"unknown variable ${var}")
    if not cmd.words:
        return problems
    head, args = cmd.words[0], cmd.words[1:]
    source = cmd.piped_from
    if head in CLI:
        problem = cli_problem(args)
        problems += [f"driftline {' '.join(args)}: {problem}"] if problem else []
    elif head == "make":
        targets = [a for a in args if not a.startswith("-") and "=" not in a]
        problems += [f"make: no target {t!r} in the Makefile" for t in targets if t not in make_targets()]
        if not targets:
            problems.append("make without a target")
    elif head == "curl":
        target = curl_target(cmd)
        if isinstance(target, str):
            problems.append(target)
        else:
            problem = route_problem(*target)
            problems += [problem] if problem else []
    elif head == "grep":
        if source is None:
            problems.append("grep of nothing the test knows (pipe from curl …/metrics or a services log)")
        else:
            names = grep_names(cmd)
            if isinstance(names, str):
                return [*problems, names]
            target = curl_target(source) if source.words[:1] == ["curl"] else None
            if isinstance(target, tuple) and target[1] == "/metrics":
                name = service_apps()[target[0]][0] if target[0] in service_apps() else "?"
                exported = service_metrics(name) if name != "?" else frozenset()
                problems += [f"{name} ({target[0]}) exports no metric {n}" for n in names if n not in exported]
            elif source.words[:1] in (["tail"], ["cat"]) and any(w.endswith("services.log") for w in source.words):
                problems += [f"no log event {n} in the code" for n in names if n not in log_events()]
            else:
                problems.append(f"grep of output the test does not know: {' '.join(source.words)}")
    elif head in ("tail", "ls", "cat", "."):
        for arg in args:
            if not arg.startswith("-") and not arg.isdigit():
                problem = path_problem(arg, doc)
                problems += [problem] if problem else []
    elif head == "set":
        problems += [f"set {a}: only -a/+a expected" for a in args if a not in ("-a", "+a")]
    elif head == "export":
        for arg in args:
            name, eq, _ = arg.partition("=")
            if not eq:
                problems.append(f"export {arg}: only NAME=value is checked")
            elif name.startswith("DRIFTLINE_"):
                problems += [f"unknown variable {name}"] if name not in known_env() else []
            elif name.startswith("OTEL_"):
                known = otel_env()
                if name not in known and not any(k.endswith("_") and name.startswith(k) for k in known):
                    problems.append(f"{name} is not a variable driftline/tracing.py says it honours")
            else:
                problems.append(f"export {name}: neither a DRIFTLINE_ nor an OTEL_ variable")
    elif head in ("python3", ".venv/bin/python"):
        if args[:1] != ["-m"] or len(args) < 2:
            problems.append(f"{head} {' '.join(args)}: only `-m MODULE` is checked")
        elif importlib.util.find_spec(args[1]) is None:
            problems.append(f"no module {args[1]}")
    elif head.startswith("infra/"):
        script = ROOT / head
        if not script.is_file():
            problems.append(f"no script {head}")
        else:
            labels = script_labels(script)
            problems += [f"{head} does not take {a!r}" for a in args if not a.startswith("-") and a not in labels]
    elif head == "java":
        problems += java_problems(args)
    elif head not in UNCHECKED:
        problems.append(f"no check knows the command {head!r}: add one to tests/unit/test_runbooks.py")
    return problems


@cache
def default_cache_dir() -> str:
    """CACHE_DIR of infra/lib.sh with no DRIFTLINE_CACHE_DIR or XDG_CACHE_HOME set, written with $HOME."""
    (line,) = re.findall(r"^CACHE_DIR=.*$", (ROOT / "infra" / "lib.sh").read_text(), re.M)
    home = "/home-of-the-operator"
    script = f'{line}; printf %s "$CACHE_DIR"'
    out = subprocess.run(["bash", "-c", script], env={"HOME": home}, capture_output=True, text=True, check=True)
    return out.stdout.replace(home, "$HOME", 1)


def java_problems(args: list[str]) -> list[str]:
    problems = []
    kafka_version = re.search(r"^KAFKA_VERSION=(\S+)", infra_text(), re.M)
    assert kafka_version is not None
    for arg in args:
        for version in re.findall(r"kafka-(\d+\.\d+\.\d+)", arg):
            if version != kafka_version.group(1):
                problems.append(f"Kafka {version} is not the installed one ({kafka_version.group(1)})")
        if "/.cache/" in arg and not arg.startswith(default_cache_dir() + "/"):
            problems.append(f"the cache is {default_cache_dir()} (infra/lib.sh), not {arg}")
    topics = set(default_catalog().names())
    for flag, value in itertools.pairwise(args):
        if flag == "--topic" and value not in topics:
            problems.append(f"no topic {value} in schemas/topics.yaml")
    return problems


def check_command(command: Command) -> list[str]:
    try:
        simples = list(simple_commands(command.text))
    except ValueError as exc:
        return [f"cannot split into words: {exc}"]
    return [p for s in simples for p in check_simple(s, command.doc)]


# --- tests ------------------------------------------------------------------------------------------

COMMANDS = runbook_commands()


@pytest.fixture(autouse=True)
def _in_the_checkout(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)  # the runbooks' paths are relative to the checkout


@pytest.mark.parametrize("command", COMMANDS, ids=[c.where for c in COMMANDS])
def test_a_runbook_command_works_as_written(command: Command) -> None:
    problems = check_command(command)
    assert not problems, f"{command.where}: `{command.text}`:\n  " + "\n  ".join(problems)


def test_every_runbook_has_checked_commands() -> None:
    assert {c.doc for c in COMMANDS} >= set(RUNBOOKS) - {RUNBOOK_DIR / "README.md"} | {README}
    heads = {s.words[0] for c in COMMANDS for s in simple_commands(c.text) if s.words}
    assert {"driftline", "make", "curl", "grep"} <= heads


@pytest.mark.parametrize("doc", [*RUNBOOKS, README], ids=lambda d: d.name)
def test_links_urls_and_files_named_in_the_prose_exist(doc: Path) -> None:
    text = doc.read_text()
    problems = []
    for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text):
        if not re.match(r"https?://", target) and not (doc.parent / target).exists():
            problems.append(f"link to a missing file: {target}")
    for port, path in re.findall(r"https?://(?:127\.0\.0\.1|localhost):(\d+)(/[\w/{}.-]*)?", _prose(text)):
        if int(port) in service_apps():
            problem = route_problem(int(port), path or "/", "GET")
            problems += [problem] if problem else []
    if doc != README:
        for line, span in inline_spans(doc):
            problems += [f"line {line}: {p}" for p in prose_span_problems(span, doc)]
    assert not problems, f"{doc.relative_to(ROOT)}:\n  " + "\n  ".join(problems)


def prose_span_problems(span: str, doc: Path) -> list[str]:
    """Inline code that names a route, a file or a metric: it must exist."""
    span = PLACEHOLDER.sub("1", span)
    m = re.fullmatch(r"(GET|POST|PUT|DELETE) (?:(?:localhost|127\.0\.0\.1):(\d+))?(/\S*)", span)
    if m is not None:
        method, port, path = m.group(1), m.group(2), m.group(3).split("?")[0]
        if port:
            problem = route_problem(int(port), path, method)
            return [problem] if problem else []
        if any(route_match(app, path, method) == Match.FULL for _, app in service_apps().values()):
            return []
        return [f"no service has {method} {path}"]
    if re.fullmatch(r"/(v1/[\w/{}-]+|readyz|healthz|metrics)", span):
        if any(route_match(app, span, "GET") == Match.FULL for _, app in service_apps().values()):
            return []
        return [f"no service has GET {span}"]
    if re.fullmatch(r"[\w.-]+(/[\w.-]+)+/?", span) and re.search(r"\.(py|md|ya?ml|avsc|sh|env|log|toml)$|/$", span):
        problem = path_problem(span, doc)
        return [problem] if problem else []
    if re.fullmatch(r"\.state/dev/[\w./-]+", span):
        problem = path_problem(span, doc)
        return [problem] if problem else []
    metric = re.fullmatch(r"driftline_[a-z0-9_]+", span) and importlib.util.find_spec(span) is None
    if metric and not any(span in service_metrics(s) for s in SERVICES):
        return [f"no service exports the metric {span}"]
    return []


# --- the DLQ's error types --------------------------------------------------------------------------


@cache
def validation_error_types() -> frozenset[str]:
    """The error_type constants driftline.validation defines (``MALFORMED_JSON = "malformed_json"``…)."""
    tree = ast.parse((CORE / "validation.py").read_text())
    return frozenset(
        node.value.value
        for node in tree.body
        if isinstance(node, ast.Assign)
        and all(isinstance(t, ast.Name) and t.id.isupper() for t in node.targets)
        and isinstance(node.value, ast.Constant)
        and isinstance(node.value.value, str)
        and re.fullmatch(r"[a-z_]+", node.value.value)
    )


@cache
def dead_letter_error_types() -> frozenset[str]:
    """Every error type the code writes to events.dlq: the validation errors client input is refused
    with, the PoisonRecord types handlers raise, and the literals the dead-letter calls pass."""
    found = set(validation_error_types())
    for path in _sources("libs", "services"):
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.Call):
                continue
            func = node.func
            name = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else ""
            if name == "PoisonRecord":
                given = [*node.args[1:2], *(k.value for k in node.keywords if k.arg == "error_type")]
                if not given:
                    found.add("rejected")  # PoisonRecord's default
                found |= {a.value for a in given if isinstance(a, ast.Constant) and isinstance(a.value, str)}
            elif name.endswith("dead_letter") or name.startswith("_dead_letter"):
                values = [*node.args[1:], *(k.value for k in node.keywords if k.arg == "error_type")]
                found |= {
                    a.value
                    for a in values
                    if isinstance(a, ast.Constant)
                    and isinstance(a.value, str)
                    and re.fullmatch(r"[a-z]+(_[a-z]+)+", a.value)
                }
    return frozenset(found)


def test_the_dlq_runbook_names_every_error_type_the_code_dead_letters() -> None:
    text = (RUNBOOK_DIR / "dlq-triage-replay.md").read_text()
    named = set(INLINE.findall(_prose(text)))
    missing = dead_letter_error_types() - named
    assert not missing, f"dlq-triage-replay.md does not explain the error types {sorted(missing)}"


def test_the_validation_family_is_every_error_type_client_input_is_refused_with() -> None:
    assert ERROR_FAMILIES["validation"] == validation_error_types()


def test_the_dlq_filter_selects_what_ingestion_refused_by_family_and_by_list() -> None:
    from driftline.project import EXAMPLE_PROJECT, load_project
    from driftline.validation import Rejection, Validator, parse_body

    validator = Validator.from_project(load_project(EXAMPLE_PROJECT))
    bodies = [
        b"{not json",
        b'{"type": "loan_application", "payload": {"salary": "lots"}}',
        b'{"type": "loan_application", "payload": {}, "colour": "red"}',
        b'{"type": "no_such_type", "payload": {}}',
    ]
    records: list[DeadLetter] = []
    for offset, body in enumerate(bodies):
        parsed = parse_body(body, "events", max_batch=10)
        if isinstance(parsed, Rejection):
            rejection = parsed
        else:
            valid, rejected = validator.validate("events", parsed, producer="t", source="t")
            assert not valid and rejected
            rejection = rejected[0]
        records.append(DeadLetter(offset, {"source": "http:/v1/events", "error_type": rejection.error_type}))
    records.append(DeadLetter(9, {"source": "consumer:training", "error_type": "invalid_label"}))
    refused_types = [d.value["error_type"] for d in records[:4]]
    assert len(set(refused_types)) > 1 and "validation_error" not in refused_types

    validation = error_types(["validation"])
    assert [d.offset for d in records if d.matches("http", validation)] == [0, 1, 2, 3]
    assert [d.offset for d in records if d.matches(None, validation)] == [0, 1, 2, 3]
    two = error_types([f"{refused_types[1]},{refused_types[2]}"])
    assert two == error_types([refused_types[1], refused_types[2]])
    assert {d.offset for d in records if d.matches(None, two)} == {1, 2} | {
        i for i, t in enumerate(refused_types) if t in (refused_types[1], refused_types[2])
    }
    assert [d.offset for d in records if d.matches("consumer:", None)] == [9]
    assert error_types(None) is None and error_types([]) is None
