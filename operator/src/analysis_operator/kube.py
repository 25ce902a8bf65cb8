"""The operator's one asynchronous Kubernetes client: a thin layer over aiohttp.

Why not a client library: the reconciler needs a handful of verbs on a
handful of kinds (get, list, server-side apply, merge-patch of status,
delete, create an Event), and every child is a plain dict built by
``builders``. The official client would add tens of megabytes of generated
models per operator process for none of that (Kopf's own notes measure it as
most of an idle operator's memory), and ``kubernetes.aio`` models do not go
through ``kopf.adopt``. So: one ``aiohttp`` session, made at startup and
closed at cleanup, with the credentials Kopf's own login functions read (the
pod's service account in a cluster, the kubeconfig elsewhere).

Children are written with server-side apply (``fieldManager:
analysis-operator``, forced): creating and updating are one idempotent call,
a replayed reconcile is a no-op, and fields other controllers own (a Job's
selector, its controller-set labels) are left alone. Nothing here retries on
its own: the reconciler is level-based and simply runs again.
"""

from __future__ import annotations

import dataclasses
import json
import urllib.parse
from collections.abc import Callable, Mapping
from typing import Any

import aiohttp
import kopf

FIELD_MANAGER = "analysis-operator"


class ApiError(Exception):
    """A non-2xx answer: the HTTP status, the Status reason (``NotFound``, ``Conflict``...) and message."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(f"{status} {reason}: {message}")
        self.status = status
        self.reason = reason
        self.message = message


@dataclasses.dataclass(frozen=True)
class Kind:
    """Where a kind lives in the API: ``/api/v1`` or ``/apis/<group>/<version>``, and its plural."""

    api_version: str
    plural: str
    namespaced: bool = True

    def path(self, namespace: str | None = None, name: str | None = None, subresource: str | None = None) -> str:
        root = "/api/v1" if self.api_version == "v1" else f"/apis/{self.api_version}"
        parts = [root]
        if self.namespaced and namespace:
            parts += ["namespaces", namespace]
        parts.append(self.plural)
        if name:
            parts.append(name)
        if subresource:
            parts.append(subresource)
        return "/".join(parts)


CONFIGMAPS = Kind("v1", "configmaps")
SERVICEACCOUNTS = Kind("v1", "serviceaccounts")
SECRETS = Kind("v1", "secrets")  # written (the workers' Redis password), never read
PODS = Kind("v1", "pods")
EVENTS = Kind("v1", "events")
JOBS = Kind("batch/v1", "jobs")
DEPLOYMENTS = Kind("apps/v1", "deployments")
KINDS = {("v1", "ConfigMap"): CONFIGMAPS, ("v1", "ServiceAccount"): SERVICEACCOUNTS, ("v1", "Pod"): PODS,
         ("v1", "Secret"): SECRETS, ("batch/v1", "Job"): JOBS, ("apps/v1", "Deployment"): DEPLOYMENTS}  # fmt: skip


def kind_of(obj: Mapping[str, Any]) -> Kind:
    return KINDS[(obj["apiVersion"], obj["kind"])]


def login(settings: kopf.OperatorSettings) -> kopf.ConnectionInfo:
    """Credentials as Kopf reads them: the pod's service account first, else the kubeconfig."""
    info = kopf.login_with_service_account(settings=settings) or kopf.login_with_kubeconfig(settings=settings)
    if info is None:
        raise kopf.LoginError("no service account token and no kubeconfig: cannot reach Kubernetes")
    return info


class Kube:
    """One session to one API server; ``relogin`` is called once after a 401 (rotated tokens)."""

    def __init__(self, relogin: Callable[[], kopf.ConnectionInfo], timeout_s: float = 30.0) -> None:
        self._relogin = relogin
        self._timeout = aiohttp.ClientTimeout(total=timeout_s, sock_connect=10)
        self._session: aiohttp.ClientSession | None = None
        self._server = ""

    def _connect(self) -> aiohttp.ClientSession:
        info = self._relogin()
        self._server = info.server.rstrip("/")
        headers = {**info.as_http_headers(), "User-Agent": f"{FIELD_MANAGER}"}
        return aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=info.as_ssl_context(), limit=20),
            headers=headers,
            timeout=self._timeout,
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def request(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        params: Mapping[str, str] | None = None,
        content_type: str = "application/json",
    ) -> Any:
        """One call; the decoded JSON answer, or ApiError."""
        for attempt in (1, 2):
            if self._session is None:
                self._session = self._connect()
            url = self._server + path
            if params:
                url += "?" + urllib.parse.urlencode(params)
            data = None if body is None else json.dumps(body, separators=(",", ":"))
            headers = {"Content-Type": content_type} if data is not None else {}
            async with self._session.request(method, url, data=data, headers=headers) as response:
                text = await response.text()
                if response.status == 401 and attempt == 1:
                    await self.close()  # a rotated service-account token: read it again, once
                    continue
                if response.status >= 400:
                    raise _error(response.status, text)
                return json.loads(text) if text else None
        raise AssertionError("unreachable")

    # ---------------------------------------------------------------- verbs

    async def get(self, kind: Kind, namespace: str, name: str) -> dict[str, Any] | None:
        """The object, or None when it does not exist."""
        try:
            return dict(await self.request("GET", kind.path(namespace, name)))
        except ApiError as exc:
            if exc.status == 404:
                return None
            raise

    async def list(self, kind: Kind, namespace: str, label_selector: str) -> list[dict[str, Any]]:
        answer = await self.request("GET", kind.path(namespace), params={"labelSelector": label_selector})
        return list(answer.get("items") or [])

    async def apply(self, obj: Mapping[str, Any]) -> dict[str, Any]:
        """Server-side apply: create or update to exactly these fields, owned by the operator."""
        kind = kind_of(obj)
        meta = obj["metadata"]
        return dict(
            await self.request(
                "PATCH",
                kind.path(meta["namespace"], meta["name"]),
                body=obj,
                params={"fieldManager": FIELD_MANAGER, "force": "true"},
                content_type="application/apply-patch+yaml",
            )
        )

    async def merge_patch(
        self, kind: Kind, namespace: str, name: str, patch: Mapping[str, Any], subresource: str | None = None
    ) -> dict[str, Any]:
        return dict(
            await self.request(
                "PATCH",
                kind.path(namespace, name, subresource),
                body=patch,
                content_type="application/merge-patch+json",
            )
        )

    async def delete(self, kind: Kind, namespace: str, name: str, propagation: str = "Background") -> bool:
        """Delete; False if it was already gone."""
        try:
            await self.request(
                "DELETE",
                kind.path(namespace, name),
                body={"kind": "DeleteOptions", "apiVersion": "v1", "propagationPolicy": propagation},
            )
        except ApiError as exc:
            if exc.status == 404:
                return False
            raise
        return True

    async def delete_collection(self, kind: Kind, namespace: str, label_selector: str) -> None:
        """Delete every object of ``kind`` matching the selector (Background propagation)."""
        await self.request(
            "DELETE",
            kind.path(namespace),
            body={"kind": "DeleteOptions", "apiVersion": "v1", "propagationPolicy": "Background"},
            params={"labelSelector": label_selector},
        )

    async def create(self, kind: Kind, namespace: str, obj: Mapping[str, Any]) -> dict[str, Any]:
        return dict(await self.request("POST", kind.path(namespace), body=obj))

    async def replace(self, kind: Kind, namespace: str, obj: Mapping[str, Any]) -> dict[str, Any]:
        """PUT: fails with 409 Conflict unless ``obj``'s resourceVersion is still the current one."""
        return dict(await self.request("PUT", kind.path(namespace, obj["metadata"]["name"]), body=obj))


def _error(status: int, text: str) -> ApiError:
    try:
        payload = json.loads(text)
    except ValueError:
        return ApiError(status, "Unknown", text[:300])
    if not isinstance(payload, dict):
        return ApiError(status, "Unknown", text[:300])
    return ApiError(status, str(payload.get("reason") or "Unknown"), str(payload.get("message") or text[:300]))
