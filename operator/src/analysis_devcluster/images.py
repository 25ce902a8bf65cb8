"""Build the images the dev cluster's node runs: the repository's Dockerfiles, a Debian base, a pause image.

Called by :mod:`analysis_devcluster.node` (before it imports the images into
containerd), by ``make images`` (``python -m analysis_devcluster.images``)
and by the image tests. No registry is reachable from a dev or CI machine,
so nothing is pulled:

* the **base** is Debian itself: ``debootstrap --variant=minbase`` with
  python3, python3-venv, passwd and ca-certificates, committed with buildah
  and handed to each Dockerfile as ``--build-arg BASE_IMAGE=...`` (the
  Dockerfiles keep their public default, ``python:<version>-slim-bookworm``
  or ``debian:bookworm-slim``, for users);
* the **pause** image, which every pod sandbox needs, is a static C program
  (:data:`PAUSE_SOURCE`) that blocks in ``pause()`` and reaps children;
* the **operator**, **worker** and **redis** images are built from
  ``Dockerfile``, ``worker-image/Dockerfile`` and ``redis-image/Dockerfile``
  with ``buildah bud --layers`` (or ``docker build`` for ``make images``,
  whichever is present), with host networking (pip and apt reach their
  registries) and an empty CNI configuration directory, so that a build never
  attaches to the node's pod network.

Every image is cached by a digest of its inputs (the Dockerfile, the build
context as ``.dockerignore`` filters it, the base image and the build
arguments) as a docker archive under ``~/.cache/analysis-operator/images``;
an image whose archive exists is not built again. Inside a build, buildah's
layer cache and the Dockerfiles' pip cache mount make a change of the
project's source rebuild only the last layers. The archives are what
containerd imports and what ``kind load image-archive`` takes.

It deliberately pushes nowhere and tags nothing outside buildah's local
storage and the archives.
"""

import argparse
import contextlib
import dataclasses
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import analysis_core
from analysis_devcluster import binaries

CACHE_ENV = "ANALYSIS_IMAGES_CACHE"
BUILDER_ENV = "ANALYSIS_IMAGE_BUILDER"
DEBIAN_SUITE = "bookworm"
DEBIAN_MIRROR_ENV = "ANALYSIS_DEBIAN_MIRROR"
BASE_PACKAGES = ("python3", "python3-venv", "passwd", "ca-certificates")
BASE_REPOSITORY = "localhost/analysis-devcluster-base"
# The name containerd's CRI looks for (its sandbox_image); the kubelet of 1.34 pins the same.
PAUSE_IMAGE = "registry.k8s.io/pause:3.10"
PAUSE_SOURCE = r"""
/* The pod sandbox's only process: it holds the pod's namespaces open, reaps
   zombies (it is PID 1 of a shared PID namespace) and exits on SIGINT/SIGTERM. */
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

static void reap(int sig) { (void)sig; while (waitpid(-1, 0, WNOHANG) > 0) {} }
static void quit(int sig) { (void)sig; _exit(0); }

int main(void) {
    struct sigaction action = {0};
    action.sa_handler = quit;
    sigaction(SIGINT, &action, 0);
    sigaction(SIGTERM, &action, 0);
    action.sa_handler = reap;
    action.sa_flags = SA_NOCLDSTOP;
    sigaction(SIGCHLD, &action, 0);
    for (;;) pause();
}
"""
# Bumped whenever the recipe of the base or pause image changes, so that their cached archives are rebuilt.
_RECIPE = "1"


class BuildError(RuntimeError):
    """An image could not be built; the message ends with the tail of the builder's output."""


@dataclasses.dataclass(frozen=True)
class Spec:
    """One image built from a Dockerfile of the repository."""

    repository: str
    dockerfile: str
    # What the image's entrypoint is, for the record (the Dockerfile decides).
    entrypoint: str
    # The build context, relative to the repository root.
    context: str = "."

    def name(self) -> str:
        """``repository:tag`` as pods and the chart name it (the tag is the project's version)."""
        return f"{self.repository}:{analysis_core.__version__}"


OPERATOR = Spec("analysis-operator", "Dockerfile", "analysis-operator")
WORKER = Spec("analysis-worker", "worker-image/Dockerfile", "analysis-worker")
REDIS = Spec("analysis-redis", "redis-image/Dockerfile", "redis-server", context="redis-image")
PROJECT_IMAGES = (OPERATOR, WORKER, REDIS)


@dataclasses.dataclass(frozen=True)
class Built:
    """An image and the docker archive that holds it."""

    name: str
    archive: Path
    digest: str  # of the inputs
    seconds: float  # spent building it now; 0 when the archive was cached
    cached: bool


def cache_dir() -> Path:
    configured = os.environ.get(CACHE_ENV)
    base = Path(configured) if configured else Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return (base if configured else base / "analysis-operator" / "images").absolute()


def _run(argv: Sequence[str], *, what: str, timeout: float = 1800, cwd: Path | None = None) -> str:
    result = subprocess.run(
        list(argv),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        cwd=cwd,
        stdin=subprocess.DEVNULL,
    )
    if result.returncode != 0:
        output = (result.stdout + result.stderr).strip().splitlines()[-40:]
        raise BuildError(f"{what}: `{' '.join(argv[:3])} ...` exited {result.returncode}:\n" + "\n".join(output))
    return result.stdout


# ---------------------------------------------------------------- the build context and its digest


def _glob_regex(pattern: str) -> re.Pattern[str]:
    """A .dockerignore pattern (Go's filepath.Match, plus ``**``) as a regular expression over a relative path."""
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


@dataclasses.dataclass(frozen=True)
class IgnoreRules:
    """The rules of a ``.dockerignore``: the last rule matching a path (or one of its parents) decides."""

    rules: tuple[tuple[bool, str, re.Pattern[str]], ...]  # (is an exception "!...", the pattern's text, pattern)

    @classmethod
    def read(cls, path: Path) -> "IgnoreRules":
        rules = []
        for raw in path.read_text(encoding="utf-8").splitlines():
            line = raw.strip()
            if line and not line.startswith("#"):
                text = line.lstrip("!").strip().strip("/")
                rules.append((line.startswith("!"), text, _glob_regex(text)))
        return cls(tuple(rules))

    def ignored(self, relative: str) -> bool:
        parts = relative.split("/")
        prefixes = ["/".join(parts[: n + 1]) for n in range(len(parts))]
        verdict = False
        for exception, _text, pattern in self.rules:
            if any(pattern.fullmatch(prefix) for prefix in prefixes):
                verdict = not exception
        return verdict


def context_files(root: Path) -> list[str]:
    """The relative paths of every file the build context ``root`` holds, through its ``.dockerignore`` if any."""
    ignore = root / ".dockerignore"
    rules = IgnoreRules.read(ignore) if ignore.exists() else IgnoreRules(())
    found = []
    for directory, subdirs, files in os.walk(root):
        relative_dir = Path(directory).relative_to(root).as_posix()
        prefix = "" if relative_dir == "." else f"{relative_dir}/"
        # A directory that is ignored and holds no exception below it is not walked (.git, .venv, .devcluster).
        subdirs[:] = sorted(d for d in subdirs if not _pruned(rules, f"{prefix}{d}"))
        found += [f"{prefix}{name}" for name in files if not rules.ignored(f"{prefix}{name}")]
    return sorted(found)


def _pruned(rules: IgnoreRules, relative: str) -> bool:
    if not rules.ignored(relative):
        return False
    # An exception that may name something below this directory keeps it walkable.
    return not any(exception and (text.startswith(f"{relative}/") or "*" in text) for exception, text, _ in rules.rules)


def inputs_digest(root: Path, spec: Spec, build_args: dict[str, str], name: str | None = None) -> str:
    """A digest of everything that decides the image: its name (default :meth:`Spec.name`), its Dockerfile, the
    context's files and the build arguments."""
    digest = hashlib.sha256()
    digest.update(f"{name or spec.name()}\0{spec.dockerfile}\0".encode())
    for key in sorted(build_args):
        digest.update(f"arg {key}={build_args[key]}\0".encode())
    digest.update((root / spec.dockerfile).read_bytes())
    context = root / spec.context
    for relative in context_files(context):
        digest.update(f"\0file {relative}\0".encode())
        digest.update((context / relative).read_bytes())
    return digest.hexdigest()


# ---------------------------------------------------------------- the builder (buildah or docker)


def builder() -> str:
    """``buildah`` or ``docker``: ``$ANALYSIS_IMAGE_BUILDER`` if set, else buildah if present, else docker."""
    chosen = os.environ.get(BUILDER_ENV)
    if chosen:
        if chosen not in ("buildah", "docker"):
            raise BuildError(f"{BUILDER_ENV}={chosen}: buildah or docker")
        return chosen
    for candidate in ("buildah", "docker"):
        if shutil.which(candidate):
            return candidate
    raise BuildError("neither buildah nor docker is on PATH: run `tools/system-packages.sh` (Debian package buildah)")


@contextlib.contextmanager
def _scratch() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="analysis-images-") as directory:
        yield Path(directory)


def host_ca_bundle() -> Path | None:
    """The CA bundle this host's pip trusts (``PIP_CERT``, ``SSL_CERT_FILE`` or Debian's), if there is one.

    Handed to builds as the secret ``pip-ca``: behind a TLS-intercepting proxy
    the image's own CA store does not know the proxy's CA. A secret is
    mounted for one RUN step and never stored in a layer.
    """
    for candidate in (
        os.environ.get("PIP_CERT"),
        os.environ.get("SSL_CERT_FILE"),
        "/etc/ssl/certs/ca-certificates.crt",
    ):
        if candidate and Path(candidate).is_file():
            return Path(candidate)
    return None


def _build_with(tool: str, root: Path, spec: Spec, build_args: dict[str, str], name: str) -> None:
    args = [f"--build-arg={key}={value}" for key, value in sorted(build_args.items())]
    ca = host_ca_bundle()
    if ca is not None:
        args.append(f"--secret=id=pip-ca,src={ca}")
    if tool == "docker":
        _run(
            [
                "docker",
                "build",
                "--network=host",
                *args,
                "-f",
                str(root / spec.dockerfile),
                "-t",
                name,
                str(root / spec.context),
            ],
            what=f"docker build of {name}",
        )
        return
    with _scratch() as empty:
        # --cni-config-dir: an empty directory, so that buildah never attaches a build to the node's bridge.
        _run(
            [
                "buildah",
                "bud",
                "--layers",
                "--network=host",
                f"--cni-config-dir={empty}",
                *args,
                "-f",
                str(root / spec.dockerfile),
                "-t",
                name,
                str(root / spec.context),
            ],
            what=f"buildah bud of {name}",
        )


@contextlib.contextmanager
def _from_scratch() -> Iterator[str]:
    """A buildah working container from scratch, removed if the block fails (``commit --rm`` removes it otherwise)."""
    container = _run(["buildah", "from", "--quiet", "scratch"], what="buildah from scratch").strip()
    try:
        yield container
    except BaseException:
        subprocess.run(["buildah", "rm", container], capture_output=True, check=False)
        raise


def _save_with(tool: str, name: str, archive: Path) -> None:
    """Save ``name`` as a docker archive (what ``docker save`` writes; containerd and kind import it)."""
    partial = archive.with_name(f".{archive.name}.partial")
    partial.unlink(missing_ok=True)
    if tool == "docker":
        _run(["docker", "save", "-o", str(partial), name], what=f"docker save of {name}")
    else:
        # buildah names a short name localhost/<name>; the archive names it as docker would, docker.io/library/...
        _run(
            [
                "buildah",
                "push",
                "--quiet",
                f"localhost/{name}" if "/" not in name.split(":")[0] else name,
                f"docker-archive:{partial}:{name}",
            ],
            what=f"buildah push of {name}",
        )
    partial.replace(archive)


def _keep_only(archive: Path, prefix: str) -> None:
    """Drop older archives of the same image (``<prefix>-<digest>.tar``) beside ``archive``.

    Only those: ``analysis-worker-<tag>-<digest>.tar`` of a tagged build is not an older ``analysis-worker``.
    """
    older = re.compile(re.escape(prefix) + r"-[0-9a-f]{12,16}\.tar")
    for other in archive.parent.glob(f"{prefix}-*.tar"):
        if other != archive and older.fullmatch(other.name):
            other.unlink(missing_ok=True)


# ---------------------------------------------------------------- the base and pause images


def debian_mirror() -> str:
    """The Debian mirror apt uses on this machine (debootstrap must reach the same one)."""
    configured = os.environ.get(DEBIAN_MIRROR_ENV)
    if configured:
        return configured
    sources = [
        *Path("/etc/apt").glob("sources.list.d/*.sources"),
        Path("/etc/apt/sources.list"),
        *Path("/etc/apt").glob("sources.list.d/*.list"),
    ]
    for source in sources:
        with contextlib.suppress(OSError):
            text = source.read_text(encoding="utf-8")
            match = re.search(r"^URIs:\s*(\S+/debian)/?\s*$", text, re.MULTILINE) or re.search(
                r"^deb\s+(?:\[[^]]*\]\s+)?(\S+/debian)/?\s+\S+", text, re.MULTILINE
            )
            if match:
                return match.group(1)
    return "http://deb.debian.org/debian"


def base_image() -> Built:
    """The Debian base (minbase + :data:`BASE_PACKAGES`) in buildah's storage and as an archive; built when missing."""
    mirror = debian_mirror()
    digest = hashlib.sha256(f"{_RECIPE}\0{DEBIAN_SUITE}\0{mirror}\0{' '.join(BASE_PACKAGES)}".encode()).hexdigest()
    name = f"{BASE_REPOSITORY}:{DEBIAN_SUITE}-{digest[:12]}"
    archive = cache_dir() / f"analysis-devcluster-base-{digest[:12]}.tar"
    stored = subprocess.run(["buildah", "inspect", "--type=image", name], capture_output=True, check=False)
    in_storage = stored.returncode == 0
    archive.parent.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    # The Dockerfiles build FROM buildah's storage, containerd imports the archive: either restores the other.
    if in_storage or archive.exists():
        if not archive.exists():
            _save_with("buildah", name, archive)
        elif not in_storage:
            _run(["buildah", "pull", "--quiet", f"docker-archive:{archive}"], what="loading the cached base image")
        return Built(name, archive, digest, time.monotonic() - started, cached=True)
    if shutil.which("debootstrap") is None:
        raise BuildError("debootstrap is not on PATH: run `tools/system-packages.sh` (Debian package debootstrap)")
    with _scratch() as scratch:
        rootfs = scratch / "rootfs"
        _run(
            [
                "debootstrap",
                "--variant=minbase",
                f"--include={','.join(BASE_PACKAGES)}",
                DEBIAN_SUITE,
                str(rootfs),
                mirror,
            ],
            what=f"debootstrap {DEBIAN_SUITE} from {mirror}",
            timeout=1200,
        )
        for leftover in ("var/cache/apt/archives", "var/lib/apt/lists"):
            for path in (rootfs / leftover).glob("*"):
                if path.is_file():
                    path.unlink()
        with _from_scratch() as container:
            mount = Path(_run(["buildah", "mount", container], what="buildah mount").strip())
            _run(["cp", "-a", f"{rootfs}/.", f"{mount}/"], what="copying the Debian tree")
            _run(["buildah", "umount", container], what="buildah umount")
            description = (
                f"Debian {DEBIAN_SUITE} minbase with {' '.join(BASE_PACKAGES)} (analysis-operator dev cluster)"
            )
            config = [
                "--env",
                "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                "--env",
                "LANG=C.UTF-8",
                "--cmd",
                "/bin/bash",
                "--label",
                f"org.opencontainers.image.description={description}",
            ]
            _run(["buildah", "config", *config, container], what="buildah config")
            _run(["buildah", "commit", "--quiet", "--rm", container, name], what="buildah commit of the base")
    _save_with("buildah", name, archive)
    _keep_only(archive, "analysis-devcluster-base")
    return Built(name, archive, digest, time.monotonic() - started, cached=False)


def pause_image() -> Built:
    """The pause image as a docker archive named :data:`PAUSE_IMAGE`; built with ``gcc -static`` when missing."""
    digest = hashlib.sha256(f"{_RECIPE}\0{PAUSE_SOURCE}".encode()).hexdigest()
    archive = cache_dir() / f"pause-{digest[:12]}.tar"
    if archive.exists():
        return Built(PAUSE_IMAGE, archive, digest, 0.0, cached=True)
    started = time.monotonic()
    archive.parent.mkdir(parents=True, exist_ok=True)
    with _scratch() as scratch:
        (scratch / "pause.c").write_text(PAUSE_SOURCE, encoding="utf-8")
        _run(
            ["gcc", "-static", "-Os", "-s", "-o", str(scratch / "pause"), str(scratch / "pause.c")],
            what="compiling pause.c",
        )
        with _from_scratch() as container:
            _run(
                ["buildah", "copy", "--quiet", "--chmod", "0755", container, str(scratch / "pause"), "/pause"],
                what="buildah copy",
            )
            _run(
                ["buildah", "config", "--entrypoint", '["/pause"]', "--user", "65535:65535", container],
                what="buildah config",
            )
            _run(["buildah", "commit", "--quiet", "--rm", container, PAUSE_IMAGE], what="buildah commit of pause")
    _save_with("buildah", PAUSE_IMAGE, archive)
    _keep_only(archive, "pause")
    return Built(PAUSE_IMAGE, archive, digest, time.monotonic() - started, cached=False)


# ---------------------------------------------------------------- the project's images


def build(
    spec: Spec,
    *,
    base: str | None = None,
    tool: str | None = None,
    root: Path | None = None,
    tag: str | None = None,
) -> Built:
    """Build ``spec`` on ``base`` (None: the Dockerfile's own default) unless its archive is cached.

    ``root``: the tree to build from (default this checkout); ``tag``: name the image ``<repository>:<tag>``
    instead of the project's version, as for an earlier release's tree built beside this one's images.
    """
    root = root or binaries.repo_root()
    tool = tool or builder()
    name = f"{spec.repository}:{tag}" if tag else spec.name()
    build_args = {"BASE_IMAGE": base} if base else {}
    digest = inputs_digest(root, spec, build_args, name)
    kept = f"{spec.repository}-{tag}" if tag else spec.repository  # what one archive at a time is kept of
    archive = cache_dir() / f"{kept}-{digest[:16]}.tar"
    if archive.exists():
        return Built(name, archive, digest, 0.0, cached=True)
    archive.parent.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    _build_with(tool, root, spec, build_args, name)
    _save_with(tool, name, archive)
    _keep_only(archive, kept)
    return Built(name, archive, digest, time.monotonic() - started, cached=False)


def build_all(specs: Sequence[Spec] = PROJECT_IMAGES) -> list[Built]:
    """What the dev cluster's node needs: the pause image and ``specs`` on the Debian base (all with buildah)."""
    base = base_image()
    return [pause_image(), *(build(spec, base=base.name, tool="buildah") for spec in specs)]


def main(argv: Sequence[str] | None = None) -> int:
    """``make images`` (archives to ``--out``) and ``make node-images`` (``--node``: what the dev cluster imports)."""
    parser = argparse.ArgumentParser(prog="python -m analysis_devcluster.images", description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("dist/images"), help="where the archives go")
    parser.add_argument(
        "--base",
        default="",
        help="BASE_IMAGE for every Dockerfile; 'debian' builds the Debian base here first (buildah); "
        "empty: each Dockerfile's public default (needs a registry)",
    )
    parser.add_argument("--node", action="store_true", help="build (or find cached) what the dev cluster's node runs")
    parser.add_argument(
        "images",
        nargs="*",
        help=f"which images, of {', '.join(s.repository for s in PROJECT_IMAGES)} (default: all)",
    )
    args = parser.parse_args(argv)
    known = [s.repository for s in PROJECT_IMAGES]
    wanted = args.images or known
    if set(wanted) - set(known):
        parser.error(f"unknown images {sorted(set(wanted) - set(known))}; known: {', '.join(known)}")
    if args.node:
        for built in build_all():
            how = "cached" if built.cached else f"built in {built.seconds:.1f}s"
            sys.stdout.write(f"{built.name}: {built.archive} ({how})\n")
        return 0
    tool = builder()
    base = args.base or None
    if base == "debian":
        if tool != "buildah":
            raise SystemExit("--base=debian needs buildah")
        base = base_image().name
    args.out.mkdir(parents=True, exist_ok=True)
    for spec in (s for s in PROJECT_IMAGES if s.repository in wanted):
        built = build(spec, base=base, tool=tool)
        target = args.out / f"{spec.repository}-{analysis_core.__version__}.tar"
        shutil.copyfile(built.archive, target)
        how = "cached" if built.cached else f"built in {built.seconds:.1f}s"
        sys.stdout.write(f"{built.name}: {target} ({how}); kind load image-archive {target}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
