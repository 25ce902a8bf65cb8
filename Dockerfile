# syntax=docker/dockerfile:1
#
# The operator image: `analysis-operator` (Kopf) with the `operator` extra, and
# none of the provider SDKs (anthropic, openai), which only workers need.
#
#   docker build -t analysis-operator:0.1.0 .
#
# Built with the repository root as context (see .dockerignore). The builder
# stage installs the distribution into a virtual environment at /opt/venv; the
# final stage copies only that environment onto the same slim base, so the
# source tree, pip's cache and the build backend never reach the image. Every
# dependency ships a manylinux wheel, so neither stage needs a compiler.
#
# tests/integration/test_images.py reads this file: it copies what the builder
# stage copies, runs the line marked `install-step` in a fresh virtual
# environment and starts the entrypoint against a real control plane. Keep the
# install on that one marked line.

# The exact patch release, never a floating tag. For a release build, also pin
# the digest you pulled: --build-arg BASE_IMAGE=python:3.11.14-slim-bookworm@sha256:...
ARG PYTHON_VERSION=3.11.14
ARG BASE_IMAGE=python:${PYTHON_VERSION}-slim-bookworm

FROM ${BASE_IMAGE} AS builder
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
COPY pyproject.toml README.md ./
COPY operator/src operator/src
COPY worker-image/src worker-image/src
# install-step
RUN pip install ".[operator]"
# pip and setuptools came with the venv; the running operator needs neither.
RUN pip uninstall --yes pip setuptools

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
# The base image's own pip, setuptools and wheel are build tools too; the user
# is the conventional "nonroot" uid that the chart's securityContext runs as.
RUN python -m pip uninstall --yes --no-cache-dir pip setuptools wheel \
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
