"""The operator's Kubernetes calls: lightkube's ``AsyncClient`` and the few verbs the reconciler needs on top.

``handlers.startup`` makes one :class:`Kube` per operator process and closes
it at cleanup; the reconciler, the teardown and the TTL expiry call its
verbs. Kopf keeps its own connection for watching and for Events
(``kopf.event``); this one only reads and writes the batches' children and
the batches' status.

Why lightkube (measured in docs/design.md#why-lightkube): the official client's
asyncio twin imports every generated model of every API group at once, about
38 MB per process; lightkube loads the typed models of a group only when
imported (here ``core/v1``, ``batch/v1``, ``apps/v1``), speaks server-side
apply, and takes plain dicts, which is what ``builders`` produce and should
keep producing.

What this module adds to the client:

- :func:`config`: the credentials, in the order Kopf reads its own: the pod's
  service account (its token re-read after a 401, as tokens rotate), else the
  files of ``KUBECONFIG`` merged the way kubectl merges them, else
  ``~/.kube/config``;
- :meth:`Kube.apply`: server-side apply of a child as ``builders`` made it
  (``fieldManager: analysis-operator``, forced): creating and updating are one
  idempotent call, a replayed reconcile is a no-op, and fields other
  controllers own (a Job's selector, its controller-set labels) are left alone;
- verbs shaped for a level-based caller: ``get`` answers None for a missing
  object, ``delete`` False for one already gone, ``list`` a list;
- the kinds it touches (:data:`KINDS`, :data:`BATCHES`) and the errors a call
  raises (:data:`ERRORS`, :func:`describe`).

Errors are lightkube's own ``ApiError`` (the API server's ``Status`` in
``.status``: ``code``, ``reason``, ``message``), re-exported here so callers
name one module. Nothing here retries: the reconciler is level-based and
simply runs again.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar, cast

import httpx2
import lightkube
import yaml
from lightkube.core import resource
from lightkube.generic_resource import create_global_resource, create_namespaced_resource
from lightkube.operators import not_exists
from lightkube.resources.apps_v1 import Deployment
from lightkube.resources.batch_v1 import Job
from lightkube.resources.core_v1 import ConfigMap, Event, Pod, Secret, ServiceAccount
from lightkube.types import CascadeType, PatchType

from analysis_core.api import GROUP, KIND, PLURAL, PROVIDER_KIND, PROVIDER_PLURAL, VERSION

FIELD_MANAGER = "analysis-operator"
ABSENT = not_exists()  # as a label's value in ``list``'s labels: objects without that label

ApiError = lightkube.ApiError
UNPROCESSABLE = 422  # the API server refused the request as invalid, or a JSON patch's test failed
# What a failed call raises: the API server's refusal (ApiError; an error answer that is not a JSON Status, from
# a proxy say, stays a plain HTTPStatusError), or no answer at all (connect, TLS, timeout: TransportError).
ERRORS: tuple[type[Exception], ...] = (httpx2.HTTPStatusError, httpx2.TransportError)

CONFIGMAPS = ConfigMap
SERVICEACCOUNTS = ServiceAccount
SECRETS = Secret  # written (the workers' Redis password), never read
PODS = Pod
EVENTS = Event  # read: the kubelet's word on a worker pod that cannot mount its Secrets
JOBS = Job
DEPLOYMENTS = Deployment
BATCHES = create_namespaced_resource(GROUP, VERSION, KIND, PLURAL)  # ``BATCHES.Status``: the status subresource
PROVIDERS = create_global_resource(GROUP, VERSION, PROVIDER_KIND, PROVIDER_PLURAL)  # cluster-scoped accounts
# The children ``builders`` make, by (apiVersion, kind).
KINDS: dict[tuple[str, str], type[resource.NamespacedResource]] = {
    ("v1", "ConfigMap"): CONFIGMAPS,
    ("v1", "ServiceAccount"): SERVICEACCOUNTS,
    ("v1", "Secret"): SECRETS,
    ("v1", "Pod"): PODS,
    ("batch/v1", "Job"): JOBS,
    ("apps/v1", "Deployment"): DEPLOYMENTS,
}
# Kubeconfig fields that name a file, relative to the kubeconfig that holds them.
KUBECONFIG_FILES = ("certificate-authority", "client-certificate", "client-key", "tokenFile")

R = TypeVar("R", bound=resource.NamespacedResource)


def kind_of(obj: Mapping[str, Any]) -> type[resource.NamespacedResource]:
    return KINDS[(obj["apiVersion"], obj["kind"])]


def describe(exc: BaseException) -> str:
    """An error for a condition message or a log line: ``422 Invalid: <the server's message>`` for an ApiError."""
    if isinstance(exc, ApiError):
        return f"{exc.status.code} {exc.status.reason or 'Unknown'}: {exc.status.message or ''}"
    return str(exc) or type(exc).__name__


def is_refused(exc: ApiError) -> bool:
    """The API server refused the request itself (invalid, forbidden, too large), so sending it again will not do:
    400, 403, 413, 422, or etcd's "request is too large" (a 500)."""
    code = exc.status.code
    return code in (400, 403, 413, 422) or (code == 500 and "too large" in (exc.status.message or "").lower())


def is_conflict(exc: ApiError) -> bool:
    """409: another writer moved first (a stale ``resourceVersion``, or the object already exists)."""
    return exc.status.code == 409


# ---------------------------------------------------------------- credentials


def config() -> lightkube.KubeConfig:
    """The pod's service account, else ``KUBECONFIG`` (one or more files), else ``~/.kube/config``."""
    try:
        return lightkube.KubeConfig.from_service_account()
    except lightkube.ConfigError:
        pass
    paths = [Path(p).expanduser() for p in os.environ.get("KUBECONFIG", "").split(os.pathsep) if p]
    paths = paths or [Path("~/.kube/config").expanduser()]
    if len(paths) == 1:
        return lightkube.KubeConfig.from_file(paths[0])
    loaded = [(path, yaml.safe_load(path.read_text(encoding="utf-8")) or {}) for path in paths if path.is_file()]
    if not loaded:
        raise lightkube.ConfigError(f"none of the KUBECONFIG files exists: {os.pathsep.join(map(str, paths))}")
    return lightkube.KubeConfig.from_dict(merge_kubeconfigs(loaded), fname=loaded[0][0])


def merge_kubeconfigs(files: Sequence[tuple[Path, Mapping[str, Any]]]) -> dict[str, Any]:
    """Kubeconfig files merged as kubectl merges ``KUBECONFIG``: the first file to name an entry or a context wins.

    A relative file reference (a CA, a client certificate or key, a token file)
    is made absolute against the file that holds it, since the merged result
    has only one file to be relative to.
    """
    merged: dict[str, Any] = {"clusters": [], "contexts": [], "users": []}
    for path, content in files:
        if merged.get("current-context") is None and content.get("current-context"):
            merged["current-context"] = content["current-context"]
        for section, inner in (("clusters", "cluster"), ("contexts", "context"), ("users", "user")):
            named = {entry["name"] for entry in merged[section]}
            for entry in content.get(section) or []:
                if entry["name"] in named:
                    continue
                fields = dict(entry.get(inner) or {})
                for field in KUBECONFIG_FILES:
                    if fields.get(field) and not Path(fields[field]).expanduser().is_absolute():
                        fields[field] = str(path.parent / fields[field])
                merged[section].append({"name": entry["name"], inner: fields})
                named.add(entry["name"])
    return merged


# ---------------------------------------------------------------- the client


class Kube:
    """One lightkube ``AsyncClient`` to one API server, with the operator's verbs; ``client`` for anything else."""

    def __init__(self, timeout_s: float = 30.0, *, trust_env: bool = False) -> None:
        # trust_env as Kopf's own connection has it (off by default): both reach the API server the same way.
        self.client = lightkube.AsyncClient(
            config(),
            timeout=httpx2.Timeout(timeout_s, connect=10),
            field_manager=FIELD_MANAGER,
            trust_env=trust_env,
        )

    async def close(self) -> None:
        await self.client.close()

    async def get(self, kind: type[R], namespace: str, name: str) -> R | None:
        """The object, or None when it does not exist."""
        try:
            return await self.client.get(kind, name, namespace=namespace)
        except ApiError as exc:
            if exc.status.code == 404:
                return None
            raise

    async def list(self, kind: type[R], namespace: str, labels: Mapping[str, Any]) -> list[R]:
        """Every object of ``kind`` in ``namespace`` matching all of ``labels`` (values, or lightkube operators)."""
        return [obj async for obj in self.client.list(kind, namespace=namespace, labels=dict(labels))]

    async def events_about(self, namespace: str, name: str, reason: str) -> tuple[str, ...]:
        """The messages of ``reason`` Events about the object ``name`` (a pod), oldest first."""
        fields: dict[str, Any] = {"involvedObject.name": name, "reason": reason}
        found = [event async for event in self.client.list(EVENTS, namespace=namespace, fields=fields)]
        found.sort(key=lambda event: str(event.lastTimestamp or event.eventTime or ""))
        return tuple(event.message or "" for event in found)

    async def apply(self, obj: Mapping[str, Any]) -> None:
        """Server-side apply: create or update to exactly these fields, owned by the operator."""
        meta = obj["metadata"]
        await self.client.patch(
            kind_of(obj),
            meta["name"],
            dict(obj),
            namespace=meta["namespace"],
            patch_type=PatchType.APPLY,
            field_manager=FIELD_MANAGER,
            force=True,
        )

    async def merge_patch(self, kind: type[R], namespace: str, name: str, patch: Mapping[str, Any]) -> None:
        """A JSON merge patch; ``kind`` may be a subresource (``BATCHES.Status``)."""
        await self.client.patch(kind, name, dict(patch), namespace=namespace, patch_type=PatchType.MERGE)

    async def claim_provider(self, name: str, served_by: str, renew_time: str, resource_version: str) -> bool:
        """Take an AnalysisProvider for this install (``status.servedBy``), if it is still at ``resource_version``.

        The resourceVersion is the precondition: of two installs claiming the
        account they both read, one gets a conflict. False then (look again).
        """
        patch = {
            "metadata": {"resourceVersion": resource_version},
            "status": {"servedBy": served_by, "renewTime": renew_time},
        }
        try:
            await self.client.patch(PROVIDERS.Status, name, patch, patch_type=PatchType.MERGE)
        except ApiError as exc:
            if is_conflict(exc):
                return False
            raise
        return True

    async def patch_provider_status(self, name: str, status: Mapping[str, Any], *, holder: str) -> bool:
        """Replace an AnalysisProvider's status if ``holder`` still holds the account; False if another took it.

        A JSON patch whose first operation tests ``status.servedBy``: the API
        server applies all of it or nothing. Null fields are left out.
        """
        value = {key: item for key, item in status.items() if item is not None}
        operations = [
            {"op": "test", "path": "/status/servedBy", "value": holder},
            {"op": "replace", "path": "/status", "value": value},
        ]
        try:
            await self.client.patch(PROVIDERS.Status, name, operations, patch_type=PatchType.JSON)
        except ApiError as exc:
            if exc.status.code == UNPROCESSABLE:  # the test failed: servedBy is another install, or gone
                return False
            raise
        return True

    async def delete(self, kind: type[R], namespace: str, name: str) -> bool:
        """Delete, its dependents in the background; False if it was already gone."""
        try:
            await self.client.delete(kind, name, namespace=namespace, cascade=CascadeType.BACKGROUND)
        except ApiError as exc:
            if exc.status.code == 404:
                return False
            raise
        return True

    async def delete_labelled(self, kind: type[R], namespace: str, labels: Mapping[str, Any]) -> int:
        """Delete every object of ``kind`` carrying ``labels``; how many were deleted now.

        One delete per object: lightkube's ``deletecollection`` takes no label
        selector, and deleting a whole collection without one is not an option.
        """
        deleted = 0
        for obj in await self.list(kind, namespace, labels):
            # Every lightkube resource has metadata; the bound of ``R`` (lightkube's base class) does not say so.
            name = obj.metadata.name if obj.metadata is not None else None  # type: ignore[attr-defined]
            if name and await self.delete(kind, namespace, name):
                deleted += 1
        return deleted

    async def create(self, obj: Mapping[str, Any]) -> dict[str, Any]:
        """Create; 409 AlreadyExists when it does. The object as created (with its ``resourceVersion``)."""
        created = await self.client.create(_model(obj))
        return cast(dict[str, Any], created.to_dict())  # type: ignore[attr-defined]

    async def replace(self, obj: Mapping[str, Any]) -> dict[str, Any]:
        """PUT: 409 Conflict unless ``obj``'s ``resourceVersion`` is still the current one. The object as written."""
        replaced = await self.client.replace(_model(obj))
        return cast(dict[str, Any], replaced.to_dict())  # type: ignore[attr-defined]


def _model(obj: Mapping[str, Any]) -> resource.NamespacedResource:
    """``obj`` as its typed model, which ``create`` and ``replace`` take (a ConfigMap loses nothing in the trip)."""
    return cast(resource.NamespacedResource, kind_of(obj).from_dict(dict(obj)))  # type: ignore[attr-defined]
