"""The two images, without Docker: each Dockerfile's install step, reproduced and run for real.

There is no Docker daemon in CI, so this is the next best thing. The test reads
``Dockerfile`` and ``worker-image/Dockerfile`` themselves: it builds what their
builder stage would see (the files its ``COPY`` lines name, filtered through
``.dockerignore`` as a build context is), runs the one line marked
``install-step`` literally (``/bin/sh -c``, as ``RUN`` does) in a fresh virtual
environment under ``tmp_path``, and then starts the entrypoint from that
environment: the operator against the session's real control plane and Redis
until it has taken on a batch, the worker against Redis until it has processed
every item of a published plan. So a dependency missing from an extra fails
here rather than in a cluster, and so does kopf leaking into the worker image or
a provider SDK into the operator's.

pip reaches the package index, with its usual cache (the Dockerfiles switch
the cache off with ``PIP_NO_CACHE_DIR`` in the builder's environment, not on the
install line, so the test runs the same line and still uses the cache).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import yaml

import analysis_core
from analysis_core import keys
from analysis_devcluster import cluster, processes

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(900)]

REPO_ROOT = Path(__file__).resolve().parents[2]
MARKER = "install-step"
VENV_DIR = "/opt/venv"
NONROOT = "65532"  # builders.WORKER_UID; the chart runs the operator as the same user
ARGOCD_IGNORE = REPO_ROOT / "gitops/argocd/ignore-differences.yaml"


@dataclasses.dataclass(frozen=True)
class Image:
    name: str
    dockerfile: Path
    extra: str
    entrypoint: str
    absent: tuple[str, ...]  # what the image must not carry


OPERATOR = Image("operator", REPO_ROOT / "Dockerfile", "operator", "analysis-operator", ("anthropic", "openai"))
WORKER = Image("worker", REPO_ROOT / "worker-image/Dockerfile", "worker", "analysis-worker", ("kopf",))
IMAGES = [pytest.param(OPERATOR, id="operator"), pytest.param(WORKER, id="worker")]


# ---------------------------------------------------------------- reading a Dockerfile


@dataclasses.dataclass(frozen=True)
class Instruction:
    keyword: str
    args: str
    marked: bool  # right after the `# install-step` comment


@dataclasses.dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[Instruction] = dataclasses.field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        return [i.args for i in self.instructions if i.keyword == keyword]


@dataclasses.dataclass
class Dockerfile:
    args: dict[str, str]  # the global ARGs (before the first FROM) and their defaults
    stages: list[Stage]

    @property
    def final(self) -> Stage:
        return self.stages[-1]

    def builder(self) -> tuple[Stage, Instruction]:
        """The stage holding the marked install line, and that line; there must be exactly one."""
        found = [(s, i) for s in self.stages for i in s.instructions if i.marked]
        assert len(found) == 1, f"expected one instruction after '# {MARKER}', found {len(found)}"
        assert found[0][1].keyword == "RUN", f"'# {MARKER}' must precede a RUN, not {found[0][1].keyword}"
        return found[0]


def logical_lines(text: str) -> Iterator[tuple[bool, str]]:
    """(is_comment, text) per logical line: continuations joined, comments inside them dropped, as Docker does."""
    pending: list[str] = []
    for raw in text.splitlines():
        line = raw.strip()
        if pending and (not line or line.startswith("#")):
            continue
        if not line:
            continue
        if not pending and line.startswith("#"):
            yield True, line[1:].strip()
            continue
        if line.endswith("\\"):
            pending.append(line[:-1].strip())
            continue
        pending.append(line)
        yield False, " ".join(pending)
        pending = []
    assert not pending, "the Dockerfile ends inside a continued line"


def expand(text: str, variables: dict[str, str]) -> str:
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: variables[m.group(1) or m.group(2)], text)


def parse(text: str) -> Dockerfile:
    parsed = Dockerfile({}, [])
    marked = False
    for is_comment, line in logical_lines(text):
        if is_comment:
            marked = marked or line == MARKER
            continue
        keyword, _, rest = line.partition(" ")
        keyword, rest = keyword.upper(), rest.strip()
        if keyword == "FROM":
            words = rest.split()
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            parsed.stages.append(Stage(expand(words[0], parsed.args), name))
        elif not parsed.stages:
            assert keyword == "ARG", f"only ARG may precede the first FROM, not {keyword}"
            variable, _, default = rest.partition("=")
            parsed.args[variable] = expand(default, parsed.args)
        else:
            parsed.stages[-1].instructions.append(Instruction(keyword, rest, marked))
        marked = False
    return parsed


def shell_command(run_args: str) -> str:
    """What a shell-form RUN hands to ``/bin/sh -c``: its arguments after any ``--mount=``-style flags."""
    words = run_args.split(" ")
    while words and words[0].startswith("--"):
        words.pop(0)
    command = " ".join(words)
    assert not command.startswith("["), "the install step must be a shell-form RUN"
    return command


# ---------------------------------------------------------------- the build context (.dockerignore)


def glob_regex(pattern: str) -> re.Pattern[str]:
    """A .dockerignore pattern (Go filepath.Match, plus ``**``) as a regular expression over a relative path."""
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        elif pattern[i] == "[":
            end = pattern.index("]", i)
            out, i = out + pattern[i : end + 1], end + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out)


def ignore_rules(path: Path) -> list[tuple[bool, re.Pattern[str]]]:
    """(is_exception, pattern) per rule, in order: the last rule that matches a path (or a parent of it) wins."""
    rules = []
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        exception = line.startswith("!")
        rules.append((exception, glob_regex(line.lstrip("!").strip().strip("/"))))
    return rules


def ignored(relative: str, rules: list[tuple[bool, re.Pattern[str]]]) -> bool:
    parts = relative.split("/")
    prefixes = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    verdict = False
    for exception, pattern in rules:
        if any(pattern.fullmatch(p) for p in prefixes):
            verdict = not exception
    return verdict


def copy_sources(stage: Stage, until: Instruction) -> list[tuple[list[str], str]]:
    """The ``COPY src... dest`` lines of the builder stage before the install line (none may copy from a stage)."""
    copies = []
    for instruction in stage.instructions:
        if instruction is until:
            break
        if instruction.keyword == "COPY":
            words = instruction.args.split()
            assert not words[0].startswith("--"), f"the builder stage copies only from the context: {instruction.args}"
            copies.append((words[:-1], words[-1]))
    return copies


def build_context(stage: Stage, install: Instruction, destination: Path) -> Path:
    """The builder's working directory as the COPY lines would fill it from the repository, through .dockerignore."""
    rules = ignore_rules(REPO_ROOT / ".dockerignore")
    for sources, dest in copy_sources(stage, install):
        assert not dest.startswith("/"), f"COPY into the WORKDIR with a relative destination, not {dest}"
        target = destination / dest
        for source in sources:
            origin = REPO_ROOT / source
            assert origin.exists(), f"COPY {source}: no such file in the repository"
            assert not ignored(source, rules), f"COPY {source}: .dockerignore keeps it out of the build context"
            if origin.is_file():
                into_dir = dest.endswith("/") or len(sources) > 1
                final = target / origin.name if into_dir else target
                final.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(origin, final)
                continue
            for file in sorted(p for p in origin.rglob("*") if p.is_file()):
                relative = file.relative_to(REPO_ROOT).as_posix()
                if not ignored(relative, rules):
                    final = target / file.relative_to(origin)
                    final.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(file, final)
    return destination


# ---------------------------------------------------------------- installing an image's environment


@dataclasses.dataclass(frozen=True)
class Installed:
    image: Image
    venv: Path
    command: str
    seconds: float
    log: str

    @property
    def bin(self) -> Path:
        return self.venv / "bin"

    def python(self, code: str, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
        """Run ``code`` with this environment's interpreter, away from the source tree (cwd is a scratch folder)."""
        argv = [str(self.bin / "python"), "-c", code, *args]
        return subprocess.run(
            argv, cwd=cwd, env=clean_env(self.venv), capture_output=True, text=True, timeout=120, check=False
        )


def clean_env(venv: Path) -> dict[str, str]:
    """The caller's environment (network, pip's index and cache settings) with ``venv`` first on PATH and nothing
    that would let the main environment or the source tree leak in."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env.pop("PIP_NO_CACHE_DIR", None)  # the builder switches the cache off; here it is what keeps the test fast
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{os.environ.get('PATH', '/usr/bin:/bin')}"
    env["VIRTUAL_ENV"] = str(venv)
    return env


def install(image: Image, workdir: Path) -> Installed:
    dockerfile = parse(image.dockerfile.read_text(encoding="utf-8"))
    stage, step = dockerfile.builder()
    context = build_context(stage, step, workdir / "context")
    venv = workdir / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, capture_output=True, timeout=120)
    command = shell_command(step.args)
    started = time.monotonic()
    result = subprocess.run(
        ["/bin/sh", "-c", command], cwd=context, env=clean_env(venv), capture_output=True, text=True, timeout=840,
        check=False,
    )  # fmt: skip
    seconds = time.monotonic() - started
    log = result.stdout + result.stderr
    if result.returncode != 0:
        pytest.fail(f"{image.name} image install step failed ({command!r}, exit {result.returncode}):\n{log[-4000:]}")
    return Installed(image, venv, command, seconds, log)


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Callable[[Image], Installed]:
    """Each image's environment, installed once per module on first use."""
    done: dict[str, Installed] = {}

    def get(image: Image) -> Installed:
        if image.name not in done:
            done[image.name] = install(image, tmp_path_factory.mktemp(f"image-{image.name}"))
        return done[image.name]

    return get


# ---------------------------------------------------------------- the Dockerfiles themselves


@pytest.mark.parametrize("image", IMAGES)
def test_dockerfile_shape(image: Image) -> None:
    """Multi-stage on one pinned slim base, only the venv carried over, non-root, the right entrypoint."""
    dockerfile = parse(image.dockerfile.read_text(encoding="utf-8"))
    builder, step = dockerfile.builder()
    final = dockerfile.final
    assert builder is not final, "the install must happen in a builder stage, not in the shipped one"
    assert builder.base == final.base, "builder and final stage need the same interpreter (the venv links to it)"
    pinned = re.fullmatch(r"python:(\d+)\.(\d+)\.(\d+)-slim-bookworm(@sha256:[0-9a-f]{64})?", final.base)
    assert pinned, f"base image {final.base!r} is not an exact python X.Y.Z-slim-bookworm tag"
    # This test installs with its own interpreter: it reproduces the image only if the minor versions agree.
    assert (int(pinned[1]), int(pinned[2])) == sys.version_info[:2], (final.base, sys.version)
    assert f"python -m venv {VENV_DIR}" in builder.all("RUN")
    assert shell_command(step.args) == f'pip install ".[{image.extra}]"'
    assert final.all("COPY") == [f"--from={builder.name} {VENV_DIR} {VENV_DIR}"]
    assert any(env.startswith(f"PATH={VENV_DIR}/bin:") for env in final.all("ENV"))
    assert final.all("USER") == [f"{NONROOT}:{NONROOT}"]
    assert json.loads(final.all("ENTRYPOINT")[-1]) == [image.entrypoint]
    assert all(i.keyword != "HEALTHCHECK" for s in dockerfile.stages for i in s.instructions)
    labels = " ".join(final.all("LABEL"))
    for label in ("title", "description", "version", "revision", "licenses", "base.name"):
        assert f"org.opencontainers.image.{label}=" in labels
    assert f"VERSION={analysis_core.__version__}" in final.all("ARG"), "the image version label drifted"


def test_build_context_keeps_out_everything_but_the_sources() -> None:
    """.devcluster holds private keys and kubeconfigs; .venv and .git are large: none may reach a build context."""
    rules = ignore_rules(REPO_ROOT / ".dockerignore")
    for secret in (".devcluster/kubeconfig", ".devcluster/state/pki/ca.key", ".venv/bin/python", ".git/config",
                   ".env", "bench/results/x.json", "tests/conftest.py", "charts/analysis-operator/values.yaml"):  # fmt: skip
        assert ignored(secret, rules), f"{secret} would be sent to the Docker daemon"
    for needed in ("pyproject.toml", "README.md", "operator/src/analysis_core/__init__.py",
                   "operator/src/analysis_core/lua/seed.lua", "worker-image/src/analysis_worker/cli.py"):  # fmt: skip
        assert not ignored(needed, rules), f"{needed} is needed by the install step"
    assert ignored("operator/src/analysis_core/__pycache__/keys.cpython-311.pyc", rules)


# ---------------------------------------------------------------- what each environment holds


def importable(env: Installed, module: str, cwd: Path) -> bool:
    result = env.python(f"import {module}", cwd=cwd)
    if result.returncode == 0:
        return True
    assert "ModuleNotFoundError" in result.stderr, f"import {module} broke for another reason:\n{result.stderr}"
    return False


IMPORT_EVERY_MODULE = """
import importlib, json, pkgutil, sys
failures, files = {}, {}
for top in sys.argv[1:]:
    package = importlib.import_module(top)
    files[top] = package.__file__
    for info in pkgutil.walk_packages(package.__path__, top + "."):
        if info.name.endswith(".__main__"):
            continue  # runs the command line on import
        try:
            importlib.import_module(info.name)
        except Exception as exc:
            failures[info.name] = f"{type(exc).__name__}: {exc}"
print(json.dumps({"failures": failures, "files": files}))
"""


@pytest.mark.parametrize(
    ("image", "packages", "present"),
    [
        pytest.param(OPERATOR, ("analysis_core", "analysis_operator"), ("kopf", "aiohttp", "prometheus_client"),
                     id="operator"),
        pytest.param(WORKER, ("analysis_core", "analysis_worker"), ("anthropic", "openai", "prometheus_client"),
                     id="worker"),
    ],
)  # fmt: skip
def test_image_environment_imports_all_its_code_and_nothing_it_must_not_carry(
    installed: Callable[[Image], Installed],
    tmp_path: Path,
    image: Image,
    packages: tuple[str, ...],
    present: tuple[str, ...],
) -> None:
    env = installed(image)
    assert (env.bin / image.entrypoint).is_file(), f"{image.entrypoint} is not installed as a console script"
    result = env.python(IMPORT_EVERY_MODULE, *packages, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    # Every module, including the ones imported lazily (each provider SDK only when a stage uses it).
    assert report["failures"] == {}
    for package, file in report["files"].items():
        assert Path(file).is_relative_to(env.venv), f"{package} came from {file}, not from the installed image"
    for module in present:
        assert importable(env, module, tmp_path), f"{module} is missing from the {image.name} image"
    for module in image.absent:
        assert not importable(env, module, tmp_path), f"{module} must not be in the {image.name} image"


# ---------------------------------------------------------------- the entrypoints, for real


def wait_for(check: Callable[[], Any], within_s: float, what: str, details: Callable[[], str]) -> Any:
    return processes.eventually(check, within_s, what, interval=0.25, details=details)


def stop(process: subprocess.Popen[bytes], grace_s: float = 30) -> int | None:
    """SIGTERM, then SIGKILL after ``grace_s``; the exit code of a clean stop, None if it had to be killed."""
    if process.poll() is not None:
        return process.returncode
    process.send_signal(signal.SIGTERM)
    try:
        return process.wait(grace_s)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(10)
        return None


def http_get(url: str) -> tuple[int, str] | None:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status, response.read().decode()
    except OSError:
        return None


def test_operator_entrypoint_from_its_image_takes_on_a_batch(
    installed: Callable[[Image], Installed],
    devcluster: cluster.DevCluster,
    crds_installed: Path,
    namespace: str,
    redis_url: str,
    tmp_path: Path,
) -> None:
    env = installed(OPERATOR)
    liveness = processes.free_port()
    log = tmp_path / "operator.log"
    environ = {
        "PATH": f"{env.bin}{os.pathsep}/usr/bin:/bin",
        "HOME": str(tmp_path),
        "KUBECONFIG": str(devcluster.kubeconfig),
        "ANALYSIS_OPERATOR_REDIS_URL": redis_url,
        "ANALYSIS_OPERATOR_WORKER_IMAGE": f"analysis-worker:{analysis_core.__version__}",
        "ANALYSIS_OPERATOR_METRICS_PORT": str(processes.free_port()),
    }
    healthz = f"http://127.0.0.1:{liveness}/healthz"
    argv = [str(env.bin / OPERATOR.entrypoint), "--namespace", namespace, f"--liveness={healthz}"]
    with log.open("ab") as out:
        operator = subprocess.Popen(argv, cwd=tmp_path, env=environ, stdout=out, stderr=subprocess.STDOUT,
                                    start_new_session=True)  # fmt: skip

    def details() -> str:
        text = log.read_text(encoding="utf-8", errors="replace")
        return "operator log:\n" + "\n".join(text.splitlines()[-40:])

    try:
        manifest = yaml.safe_load((REPO_ROOT / "examples/ticker-summary.yaml").read_text(encoding="utf-8"))
        devcluster.kubectl("-n", namespace, "apply", "-f", "-", input=yaml.safe_dump(manifest))
        name = manifest["metadata"]["name"]

        def taken_on() -> dict[str, Any] | None:
            batch = json.loads(devcluster.kubectl("-n", namespace, "get", "analysisbatch", name, "-o", "json").stdout)
            st = batch.get("status") or {}
            current = st.get("observedGeneration") == batch["metadata"]["generation"]
            return batch if current and st.get("items", {}).get("total") else None

        batch = wait_for(taken_on, 60, "seeded and reported by the operator", details)
        assert operator.poll() is None, details()
        st = batch["status"]
        assert st["phase"] == "Running"
        assert st["items"]["total"] == len(manifest["spec"]["items"])
        assert {c["type"]: c["status"] for c in st["conditions"]}["Reconciling"] == "True"
        uid = batch["metadata"]["uid"]
        jobs = json.loads(devcluster.kubectl("-n", namespace, "get", "jobs", "-l", f"analysis.dev/batch-uid={uid}",
                                             "-o", "json").stdout)["items"]  # fmt: skip
        assert [j["spec"]["template"]["spec"]["containers"][0]["command"] for j in jobs] == [["analysis-worker"]]
        answer = wait_for(lambda: http_get(healthz), 20, "answering /healthz", details)
        assert answer[0] == 200
        assert "secondsSinceLastEvent" in json.loads(answer[1])
        check_argocd_ignores_what_kopf_wrote(batch["metadata"].get("annotations") or {})
    finally:
        code = stop(operator)
    assert code == 0, f"the operator did not stop cleanly on SIGTERM (exit {code})\n{details()}"


def check_argocd_ignores_what_kopf_wrote(annotations: dict[str, str]) -> None:
    """The README's Argo CD ignore rule, run with jq (``del(...)``, as Argo CD applies it) on a live batch."""
    kopf_wrote = sorted(k for k in annotations if k.startswith("analysis.dev/"))
    assert "analysis.dev/last-handled-configuration" in kopf_wrote, annotations
    rule = yaml.safe_load(ARGOCD_IGNORE.read_text(encoding="utf-8"))
    people_wrote = {"analysis.dev/retry-failed": "1", "team": "research"}  # what must stay visible in a diff
    live = {"metadata": {"annotations": {**annotations, **people_wrote}}}
    for expression in rule["jqPathExpressions"]:
        result = subprocess.run(["jq", "-c", f"del({expression})"], input=json.dumps(live), capture_output=True,
                                text=True, timeout=30, check=True)  # fmt: skip
        live = json.loads(result.stdout)
    others = {k: v for k, v in annotations.items() if k not in kopf_wrote}  # e.g. kubectl's last-applied
    assert live["metadata"]["annotations"] == {**others, **people_wrote}, kopf_wrote


def test_worker_entrypoint_from_its_image_processes_a_plan(
    installed: Callable[[Image], Installed],
    workers: Any,
    redis_client: redis.Redis,
    tmp_path: Path,
) -> None:
    env = installed(WORKER)
    items = ["NVDA", "AMD", "TSM"]
    spec = {
        "items": items,
        "providers": {"local": {"type": "offline", "offline": {"seed": 3, "latencyMilliseconds": 5}}},
        "stages": [{"name": "summarize", "provider": "local", "prompt": "Summarize {{ item }}"}],
    }
    batch = workers.batch(spec)
    asyncio.run(batch.seed())
    environ = workers.env(batch, "summarize", "image-worker-0")
    environ["PATH"] = f"{env.bin}{os.pathsep}/usr/bin:/bin"
    log = tmp_path / "worker.log"
    with log.open("ab") as out:
        worker = subprocess.Popen([str(env.bin / WORKER.entrypoint)], cwd=tmp_path, env=environ, stdout=out,
                                  stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
    k = keys.BatchKeys(batch.uid)

    def details() -> str:
        return "worker log:\n" + log.read_text(encoding="utf-8", errors="replace")[-4000:]

    try:
        wait_for(lambda: redis_client.hlen(k.outcomes) == len(items), 60, "done with every item", details)
        outcomes = [json.loads(v) for v in redis_client.hgetall(k.outcomes).values()]
        assert [o["status"] for o in outcomes] == ["succeeded"] * len(items), details()
        assert redis_client.hlen(k.results) == len(items)
        # The pod's liveness probe runs the same command, found on the image's PATH.
        probe = subprocess.run(["analysis-worker", "--check"], env=environ, cwd=tmp_path, capture_output=True,
                               timeout=30, check=False)  # fmt: skip
        assert probe.returncode == 0, probe.stderr
    finally:
        code = stop(worker)
    assert code == 0, f"the worker did not drain and exit 0 on SIGTERM (exit {code})\n{details()}"
