# syntax=docker/dockerfile:1
#
# The operator image: `analysis-operator` (Kopf) with the `operator` extra, and
# none of the provider SDKs (anthropic, openai), which only workers need.
#
#   docker build -t analysis-operator:0.1.0 .
#   make images          # both images, with buildah or docker, saved as archives
#
# Built with the repository root as context (see .dockerignore). Three stages:
# `requirements` reduces pyproject.toml to the dependency list of the extra;
# `builder` installs those dependencies into a virtual environment at
# /opt/venv (a layer that is rebuilt only when the list changes, with pip's
# cache kept between builds), then the project itself without dependencies,
# from a wheel built in a separate build venv out of this image's packages
# only (analysis_core, analysis_operator: no worker, no dev cluster, and so,
# by hatch_build.py, no command of theirs); the final stage copies only
# /opt/venv onto the same base, so the source tree, pip and the build backend
# never reach the image. Every dependency ships a manylinux wheel, so no stage
# needs a compiler.
#
# Any Debian bookworm base with python3 (>= 3.11) and python3-venv works:
# the default is the official slim Python image; the dev cluster passes a
# Debian base of its own (BASE_IMAGE), whose python3 has no `python` or `pip`
# on PATH and refuses system-wide installs (PEP 668). Both bases get the same
# treatment: python3 -m venv, and everything installed into the venv.

# The exact patch release, never a floating tag. For a release build, also pin
# the digest you pulled: --build-arg BASE_IMAGE=python:3.11.14-slim-bookworm@sha256:...
ARG PYTHON_VERSION=3.11.14
ARG BASE_IMAGE=python:${PYTHON_VERSION}-slim-bookworm

FROM ${BASE_IMAGE} AS requirements
COPY pyproject.toml /src/
RUN python3 -c 'import tomllib, sys; p = tomllib.load(open(sys.argv[1], "rb"))["project"]; \
print("\n".join(p["dependencies"] + p["optional-dependencies"][sys.argv[2]]))' /src/pyproject.toml operator \
    > /requirements.txt

FROM ${BASE_IMAGE} AS builder
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore
RUN python3 -m venv /opt/venv && python3 -m venv /opt/build
COPY --from=requirements /requirements.txt /tmp/requirements.txt
# The optional secret `pip-ca` is a CA bundle for pip, for builds behind a
# TLS-intercepting proxy (`make images` passes the host's); it is mounted for
# this step only and never stored in a layer.
RUN --mount=type=cache,target=/root/.cache/pip --mount=type=secret,id=pip-ca \
    if [ -s /run/secrets/pip-ca ]; then export PIP_CERT=/run/secrets/pip-ca; fi \
 && /opt/venv/bin/pip install -r /tmp/requirements.txt \
 && /opt/build/bin/pip install "hatchling>=1.27"
WORKDIR /src
COPY pyproject.toml README.md hatch_build.py ./
COPY operator/src/analysis_core operator/src/analysis_core
COPY operator/src/analysis_operator operator/src/analysis_operator
RUN /opt/build/bin/pip wheel --no-deps --no-build-isolation --wheel-dir /tmp/wheels . \
 && /opt/venv/bin/pip install --no-deps --no-index /tmp/wheels/*.whl \
 && /opt/venv/bin/pip uninstall --yes pip setuptools

FROM ${BASE_IMAGE}
ARG VERSION=0.1.0
ARG REVISION=unknown
ARG BASE_IMAGE
LABEL org.opencontainers.image.title="analysis-operator" \
      org.opencontainers.image.description="Kubernetes operator that runs multi-stage LLM analysis pipelines declared as AnalysisBatch resources" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.base.name="${BASE_IMAGE}"
# A base image's own pip, setuptools and wheel (the slim Python image has
# them, a Debian python3 does not) are build tools too; the user is the
# conventional "nonroot" uid that the chart's securityContext runs as.
RUN if python3 -m pip --version >/dev/null 2>&1; then \
      python3 -m pip uninstall --yes --no-cache-dir pip setuptools wheel; fi \
 && groupadd --system --gid 65532 nonroot \
 && useradd --system --uid 65532 --gid 65532 --home-dir /nonexistent --no-create-home \
      --shell /usr/sbin/nologin nonroot
COPY --from=builder /opt/venv /opt/venv
# The root filesystem is read-only in the pod: bytecode was compiled at install
# time and nothing tries to write more. Unbuffered, so logs reach kubectl at once.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
USER 65532:65532
# No HEALTHCHECK: Kubernetes ignores it. The Deployment's liveness probe asks
# Kopf's endpoint (`--liveness=http://0.0.0.0:<port>/healthz`, set by the chart).
# Kopf handles SIGTERM itself, so the operator can be PID 1.
ENTRYPOINT ["analysis-operator"]
