"""A minimal asyncio client for the kube-apiserver, enough for the local node.

Called by :mod:`analysis_devcluster.node` and :mod:`analysis_devcluster.podrun`.
It reads a kubeconfig (the current context; inline ``*-data`` or file
references; a client certificate or a bearer token), speaks JSON over HTTPS
with aiohttp, and offers plain requests (:meth:`Client.request`) and a watch
stream (:meth:`Client.watch`) that yields decoded events.

Errors: an answer with an HTTP error status raises :class:`ApiError` (with the
``Status`` reason and message); a connection that fails, or an apiserver that
is restarting, raises one of :data:`TRANSIENT`, which callers retry.

It deliberately has no typed models, no retries, no caching and no discovery:
callers name the paths they need.
"""

from __future__ import annotations

import base64
import json
import os
import ssl
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import aiohttp
import yaml

# What a caller should treat as "the apiserver is not reachable right now".
TRANSIENT = (aiohttp.ClientError, TimeoutError, ConnectionError)
_PATCH_TYPES = {
    "strategic": "application/strategic-merge-patch+json",
    "merge": "application/merge-patch+json",
}
_REQUEST_TIMEOUT = 15.0


class ApiError(Exception):
    """The apiserver answered with an error status."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(f"{status} {reason}: {message}")
        self.status = status
        self.reason = reason
        self.message = message


# Every failure of a request: an error answer, or no answer.
FAILURES = (ApiError, *TRANSIENT)


def _context(config: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The cluster and user entries of the kubeconfig's current context."""
    current = config.get("current-context")
    contexts = {entry["name"]: entry["context"] for entry in config.get("contexts", [])}
    if current not in contexts:
        raise ValueError(f"kubeconfig has no current context (current-context: {current!r})")
    context = contexts[current]
    clusters = {entry["name"]: entry["cluster"] for entry in config.get("clusters", [])}
    users = {entry["name"]: entry.get("user", {}) for entry in config.get("users", [])}
    return clusters[context["cluster"]], users.get(context.get("user", ""), {})


def _pem(entry: Mapping[str, Any], key: str, base: Path) -> bytes | None:
    """The bytes of ``key-data`` (base64) or of the file ``key`` names, or None."""
    data = entry.get(f"{key}-data")
    if data:
        return base64.b64decode(data)
    path: str | None = entry.get(key)
    if path:
        return (base / path).read_bytes()
    return None


def _write_private(path: Path, data: bytes) -> Path:
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    return path


class Client:
    """One HTTPS session to one apiserver. Use ``async with`` (or call :meth:`close`)."""

    def __init__(
        self, server: str, ssl_context: ssl.SSLContext, token: str | None = None, ca_pem: bytes | None = None
    ) -> None:
        self.server = server.rstrip("/")
        self.ca_pem = ca_pem  # the cluster's CA as the kubeconfig gave it, if it did
        self._ssl = ssl_context
        self._headers = {"Accept": "application/json"}
        if token:
            self._headers["Authorization"] = f"Bearer {token}"
        self._session: aiohttp.ClientSession | None = None

    @classmethod
    def from_kubeconfig(cls, path: Path, secrets_dir: Path) -> Client:
        """A client for the kubeconfig's current context.

        ``ssl`` loads client certificates from files only, so inline ones are
        written (mode 0600) into ``secrets_dir``.
        """
        config = yaml.safe_load(path.read_text())
        cluster, user = _context(config)
        base = path.parent
        ca = _pem(cluster, "certificate-authority", base)
        context = ssl.create_default_context(cadata=ca.decode() if ca else None)
        if cluster.get("insecure-skip-tls-verify"):
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        cert, key = _pem(user, "client-certificate", base), _pem(user, "client-key", base)
        if cert and key:
            context.load_cert_chain(
                _write_private(secrets_dir / "client.crt", cert), _write_private(secrets_dir / "client.key", key)
            )
        return cls(cluster["server"], context, user.get("token"), ca)

    def _open(self) -> aiohttp.ClientSession:
        if self._session is None:
            # No connection limit: a watch holds its connection for minutes. Idle connections are
            # kept a while: a TLS handshake with a client certificate costs milliseconds.
            connector = aiohttp.TCPConnector(ssl=self._ssl, limit=0, keepalive_timeout=60)
            self._session = aiohttp.ClientSession(connector=connector, headers=self._headers)
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def __aenter__(self) -> Self:
        self._open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    async def request(
        self,
        method: str,
        path: str,
        *,
        body: Mapping[str, Any] | None = None,
        params: Mapping[str, str] | None = None,
        patch: str | None = None,
        limit_s: float = _REQUEST_TIMEOUT,
    ) -> dict[str, Any]:
        """``method`` on ``path`` with an optional JSON body; the decoded answer, or ApiError.

        ``patch`` names the patch flavour for PATCH: ``"strategic"`` or ``"merge"``.
        """
        headers = {"Content-Type": _PATCH_TYPES[patch] if patch else "application/json"}
        data = json.dumps(body).encode() if body is not None else None
        async with self._open().request(
            method,
            self.server + path,
            data=data,
            params=params,
            headers=headers,
            timeout=aiohttp.ClientTimeout(total=limit_s),
        ) as response:
            text = await response.text()
            if response.status >= 400:
                raise _error(response.status, text)
            answer: dict[str, Any] = json.loads(text) if text else {}
            return answer

    async def watch(self, path: str, resource_version: str, timeout_s: int = 300) -> AsyncIterator[dict[str, Any]]:
        """The events of a watch on ``path`` from ``resource_version``, until the server ends it.

        An ``ERROR`` event is raised as ApiError (410 when the version is too old).
        """
        params = {
            "watch": "1",
            "resourceVersion": resource_version,
            "allowWatchBookmarks": "true",
            "timeoutSeconds": str(timeout_s),
        }
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=5.0, sock_read=timeout_s + 30.0)
        async with self._open().get(self.server + path, params=params, timeout=timeout) as response:
            if response.status >= 400:
                raise _error(response.status, await response.text())
            buffered = b""
            async for chunk in response.content.iter_any():
                buffered += chunk
                *lines, buffered = buffered.split(b"\n")
                for line in lines:
                    if line.strip():
                        yield _event(json.loads(line))


def _event(event: dict[str, Any]) -> dict[str, Any]:
    if event.get("type") == "ERROR":
        status = event.get("object", {})
        raise ApiError(int(status.get("code", 500)), status.get("reason", ""), status.get("message", ""))
    return event


def _error(status: int, text: str) -> ApiError:
    try:
        body = json.loads(text)
    except ValueError:
        body = {"message": text.strip()}
    if not isinstance(body, dict):
        body = {"message": str(body)}
    return ApiError(status, str(body.get("reason", "")), str(body.get("message", text.strip())))
