"""What a pod spec means for a local process: argv, environment, volumes and path translation.

Called by :mod:`analysis_devcluster.podrun` each time the local node starts a
container. Everything here is synchronous and does no network I/O: the caller
fetches the Secrets, ConfigMaps and service-account tokens the pod refers to
(:func:`referenced_objects`, :func:`token_sources`) and passes them in as
:class:`Sources`; a missing object is ``None``.

The rules follow the kubelet's:

* argv: ``command`` + ``args`` with ``$(VAR)`` expanded from the container's
  env (``$$`` escapes, unknown names stay as written); without ``command``,
  the image's entrypoint from the node's image table, keyed by the image's
  repository (``registry/path/NAME:tag@digest`` → ``NAME``) + ``args``.
* env: ``envFrom`` (in order, with ``prefix``), then ``env`` (in order; a
  ``value`` may use ``$(VAR)`` of earlier ones); ``secretKeyRef``,
  ``configMapKeyRef`` (honouring ``optional``), ``fieldRef`` (downward API)
  and ``resourceFieldRef``. A missing non-optional object or key raises
  :class:`ConfigError` with the kubelet's message (CreateContainerConfigError).
* volumes, materialised as directories since there are no mount namespaces:
  ``emptyDir`` (empty), ``configMap`` and ``secret`` (one file per key, or per
  ``items`` entry at its ``path``, with ``defaultMode``/``mode``),
  ``downwardAPI``, ``projected`` (those three plus ``serviceAccountToken``),
  ``hostPath`` (the host directory itself) and ``persistentVolumeClaim`` (a
  directory per claim that outlives its pods). A missing non-optional source
  raises :class:`MountError` (the kubelet's FailedMount: ContainerCreating).
* paths: a container's ``volumeMounts`` become (mountPath → local directory)
  pairs; :func:`translate` rewrites any string that *is* a mountPath or
  *starts with* ``mountPath/`` (the longest mountPath wins, ``subPath`` is
  appended). The node applies it to env values, argv and ``workingDir``.
* in-cluster access: the ``KUBERNETES_SERVICE_*`` variables a kubelet derives
  from the ``kubernetes`` Service (:func:`kubernetes_service_env`), and, for a
  container whose service-account token sits at a local directory
  (:func:`service_account_dir`), a kubeconfig that uses it
  (:func:`in_cluster_kubeconfig`), since no process here can read the fixed
  in-cluster path.

It deliberately does not support ``subPathExpr``, ``fieldRef`` on fields the
kubelet does not support either, or volume types with no local meaning (CSI,
iSCSI, NFS and the like): those raise MountError naming the type.
"""

from __future__ import annotations

import base64
import dataclasses
import decimal
import json
import math
import os
import re
import urllib.parse
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

Obj = dict[str, Any]

_DEFAULT_MODE = 0o644
SERVICE_ACCOUNT_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"
_FIELD_KEY = re.compile(r"^metadata\.(labels|annotations)\['(.+)'\]$")
_BINARY_SUFFIXES = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60}
_DECIMAL_SUFFIXES = {"n": -9, "u": -6, "m": -3, "": 0, "k": 3, "M": 6, "G": 9, "T": 12, "P": 15, "E": 18}
_QUANTITY = re.compile(r"^([+-]?[0-9.]+)((?:[eE][+-]?[0-9]+)|Ki|Mi|Gi|Ti|Pi|Ei|n|u|m|k|M|G|T|P|E|)$")


class ConfigError(Exception):
    """The container's configuration cannot be built now (the kubelet's CreateContainerConfigError)."""


class MountError(Exception):
    """A volume cannot be set up now (the kubelet's FailedMount; the pod stays ContainerCreating)."""


@dataclasses.dataclass(frozen=True)
class Placement:
    """Where a pod runs: what the downward API and resource refs report."""

    node_name: str
    host_ip: str
    pod_ip: str
    allocatable: Mapping[str, str]


@dataclasses.dataclass(frozen=True)
class Sources:
    """The objects a pod refers to, fetched by the caller; ``None`` means it does not exist."""

    secrets: Mapping[str, Obj | None] = dataclasses.field(default_factory=dict)
    config_maps: Mapping[str, Obj | None] = dataclasses.field(default_factory=dict)
    # (audience, expirationSeconds) -> token, for projected serviceAccountToken sources.
    tokens: Mapping[tuple[str, int], str] = dataclasses.field(default_factory=dict)


# ------------------------------------------------------------------ argv


def image_repository(image: str) -> str:
    """``ghcr.io/org/analysis-worker:1.2@sha256:…`` → ``analysis-worker``."""
    without_digest = image.split("@", 1)[0]
    last = without_digest.rsplit("/", 1)[-1]
    return last.split(":", 1)[0]


def expand(text: str, variables: Mapping[str, str]) -> str:
    """Kubernetes ``$(VAR)`` expansion: ``$$`` → ``$``; an unknown or unterminated reference stays as written."""
    out: list[str] = []
    i = 0
    while i < len(text):
        char = text[i]
        if char != "$" or i + 1 == len(text):
            out.append(char)
            i += 1
            continue
        following = text[i + 1]
        if following == "$":
            out.append("$")
            i += 2
        elif following == "(" and ")" in text[i + 2 :]:
            end = text.index(")", i + 2)
            name = text[i + 2 : end]
            out.append(variables.get(name, f"$({name})"))
            i = end + 1
        else:
            out.append("$" + following)
            i += 2
    return "".join(out)


def argv(
    container: Obj,
    images: Mapping[str, Sequence[str]],
    env: Mapping[str, str],
    translate_path: Callable[[str], str] = str,
) -> list[str] | None:
    """The container's argv with ``$(VAR)`` expanded, or None if it needs an entrypoint the node does not know.

    ``translate_path`` maps the pod spec's own parts (command, args) to local
    paths; an entrypoint from the node's image table is a path on this host
    already and is left alone (a checkout under /tmp must not be rewritten into
    the pod's /tmp emptyDir).
    """
    spec_parts = [translate_path(expand(str(part), env)) for part in container.get("args", [])]
    command = container.get("command")
    if command:
        return [translate_path(expand(str(part), env)) for part in command] + spec_parts
    entrypoint = images.get(image_repository(container.get("image", "")))
    if entrypoint is None:
        return None
    return [*entrypoint, *spec_parts]


# ------------------------------------------------------------------ references


def _env_refs(container: Obj) -> Iterator[tuple[str, str]]:
    for source in container.get("envFrom", []):
        if "secretRef" in source:
            yield "secret", source["secretRef"]["name"]
        if "configMapRef" in source:
            yield "configmap", source["configMapRef"]["name"]
    for variable in container.get("env", []):
        value_from = variable.get("valueFrom", {})
        if "secretKeyRef" in value_from:
            yield "secret", value_from["secretKeyRef"]["name"]
        if "configMapKeyRef" in value_from:
            yield "configmap", value_from["configMapKeyRef"]["name"]


def _volume_refs(volume: Obj) -> Iterator[tuple[str, str]]:
    if "secret" in volume:
        yield "secret", volume["secret"]["secretName"]
    if "configMap" in volume:
        yield "configmap", volume["configMap"]["name"]
    for source in volume.get("projected", {}).get("sources", None) or []:
        if "secret" in source:
            yield "secret", source["secret"]["name"]
        if "configMap" in source:
            yield "configmap", source["configMap"]["name"]


def containers(pod: Obj) -> list[Obj]:
    """Init containers, then containers."""
    spec = pod.get("spec", {})
    return [*spec.get("initContainers", []), *spec.get("containers", [])]


def referenced_objects(pod: Obj, *, volumes: bool = True, env: bool = True) -> tuple[set[str], set[str]]:
    """The names of the Secrets and ConfigMaps that the pod's env and/or volumes refer to."""
    secrets: set[str] = set()
    config_maps: set[str] = set()
    refs: list[tuple[str, str]] = []
    if env:
        for container in containers(pod):
            refs.extend(_env_refs(container))
    if volumes:
        for volume in pod.get("spec", {}).get("volumes", []):
            refs.extend(_volume_refs(volume))
    for kind, name in refs:
        (secrets if kind == "secret" else config_maps).add(name)
    return secrets, config_maps


def token_sources(pod: Obj) -> list[tuple[str, int]]:
    """(audience, expirationSeconds) of every projected serviceAccountToken source."""
    found = []
    for volume in pod.get("spec", {}).get("volumes", []):
        for source in volume.get("projected", {}).get("sources", None) or []:
            token = source.get("serviceAccountToken")
            if token is not None:
                found.append((token.get("audience", ""), int(token.get("expirationSeconds", 3600))))
    return found


# ------------------------------------------------------------------ values


def _data(obj: Obj, kind: str) -> dict[str, bytes]:
    """The key → bytes of a Secret (base64 ``data``) or ConfigMap (``data`` + base64 ``binaryData``)."""
    if kind == "secret":
        return {key: base64.b64decode(value) for key, value in (obj.get("data") or {}).items()}
    data = {key: value.encode() for key, value in (obj.get("data") or {}).items()}
    data.update({key: base64.b64decode(value) for key, value in (obj.get("binaryData") or {}).items()})
    return data


_KIND_NAMES = {"secret": "Secret", "configmap": "ConfigMap"}


def _lookup(sources: Sources, kind: str, name: str) -> Obj | None:
    table = sources.secrets if kind == "secret" else sources.config_maps
    return table.get(name)


def _key_ref(pod: Obj, sources: Sources, kind: str, ref: Obj) -> str | None:
    """The value of a secretKeyRef/configMapKeyRef; None when optional and absent."""
    name, key, optional = ref["name"], ref["key"], bool(ref.get("optional", False))
    obj = _lookup(sources, kind, name)
    if obj is None:
        if optional:
            return None
        raise ConfigError(f'{kind} "{name}" not found')
    data = _data(obj, kind)
    if key not in data:
        if optional:
            return None
        namespace = pod["metadata"]["namespace"]
        raise ConfigError(f"couldn't find key {key} in {_KIND_NAMES[kind]} {namespace}/{name}")
    return data[key].decode(errors="replace")


def field_value(pod: Obj, path: str, placement: Placement) -> str:
    """A downward-API ``fieldRef.fieldPath`` of the pod, as the kubelet reports it."""
    metadata, spec = pod.get("metadata", {}), pod.get("spec", {})
    keyed = _FIELD_KEY.match(path)
    if keyed:
        return str((metadata.get(keyed.group(1)) or {}).get(keyed.group(2), ""))
    simple = {
        "metadata.name": metadata.get("name", ""),
        "metadata.namespace": metadata.get("namespace", ""),
        "metadata.uid": metadata.get("uid", ""),
        "spec.nodeName": placement.node_name,
        "spec.serviceAccountName": spec.get("serviceAccountName", ""),
        "status.hostIP": placement.host_ip,
        "status.hostIPs": placement.host_ip,
        "status.podIP": placement.pod_ip,
        "status.podIPs": placement.pod_ip,
    }
    if path in simple:
        return str(simple[path])
    if path in ("metadata.labels", "metadata.annotations"):
        return _format_map(metadata.get(path.split(".")[1]) or {})
    raise ConfigError(f"unsupported fieldPath: {path}")


def _format_map(values: Mapping[str, str]) -> str:
    """Labels/annotations as the kubelet writes them into a downwardAPI file: ``key="value"`` lines."""
    return "\n".join(f"{key}={json.dumps(values[key])}" for key in sorted(values))


def parse_quantity(text: str) -> decimal.Decimal:
    """A Kubernetes resource quantity (``100m``, ``512Mi``, ``1e3``, ``2``) as a number."""
    match = _QUANTITY.match(str(text).strip())
    if match is None:
        raise ConfigError(f"invalid quantity {text!r}")
    number, suffix = decimal.Decimal(match.group(1)), match.group(2)
    if suffix in _BINARY_SUFFIXES:
        return number * _BINARY_SUFFIXES[suffix]
    if suffix in _DECIMAL_SUFFIXES:
        return number.scaleb(_DECIMAL_SUFFIXES[suffix])
    return number.scaleb(int(suffix[1:]))


def resource_value(pod: Obj, default_container: str, ref: Obj, placement: Placement) -> str:
    """A ``resourceFieldRef``: the container's limit (node allocatable if unset) or request, ceil(/divisor)."""
    name = ref.get("containerName") or default_container
    container = next((c for c in containers(pod) if c.get("name") == name), None)
    if container is None:
        raise ConfigError(f"resourceFieldRef names an unknown container {name!r}")
    kind, _, resource = str(ref.get("resource", "")).partition(".")
    if kind not in ("limits", "requests") or not resource:
        raise ConfigError(f"unsupported resource: {ref.get('resource')}")
    resources = container.get("resources", {})
    amount = (resources.get(kind) or {}).get(resource)
    if amount is None and kind == "requests":
        amount = (resources.get("limits") or {}).get(resource, "0")
    if amount is None:
        amount = placement.allocatable.get(resource, "0")
    divisor = parse_quantity(str(ref.get("divisor", "1")))
    return str(math.ceil(parse_quantity(str(amount)) / divisor))


def _value_from(pod: Obj, container: Obj, source: Obj, sources: Sources, placement: Placement) -> str | None:
    if "secretKeyRef" in source:
        return _key_ref(pod, sources, "secret", source["secretKeyRef"])
    if "configMapKeyRef" in source:
        return _key_ref(pod, sources, "configmap", source["configMapKeyRef"])
    if "fieldRef" in source:
        return field_value(pod, source["fieldRef"]["fieldPath"], placement)
    if "resourceFieldRef" in source:
        return resource_value(pod, container["name"], source["resourceFieldRef"], placement)
    raise ConfigError(f"unsupported valueFrom: {sorted(source)}")


def _env_from(pod: Obj, source: Obj, sources: Sources) -> dict[str, str]:
    kind, ref = ("secret", source["secretRef"]) if "secretRef" in source else ("configmap", source["configMapRef"])
    obj = _lookup(sources, kind, ref["name"])
    if obj is None:
        if ref.get("optional"):
            return {}
        raise ConfigError(f'{kind} "{ref["name"]}" not found')
    prefix = source.get("prefix", "")
    return {prefix + key: value.decode(errors="replace") for key, value in _data(obj, kind).items()}


def container_env(pod: Obj, container: Obj, sources: Sources, placement: Placement) -> dict[str, str]:
    """The variables the pod spec gives the container (envFrom, then env), untranslated."""
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        env.update(_env_from(pod, source, sources))
    for variable in container.get("env", []):
        if "valueFrom" in variable:
            value = _value_from(pod, container, variable["valueFrom"], sources, placement)
            if value is None:
                continue
        else:
            value = expand(str(variable.get("value", "")), env)
        env[variable["name"]] = value
    return env


# ------------------------------------------------------------------ volumes


def _write(directory: Path, relative: str, data: bytes, mode: int) -> None:
    target = (directory / relative).resolve()
    if directory.resolve() not in target.parents:
        raise MountError(f"path {relative!r} escapes its volume")
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(data)
    os.chmod(target, mode)


def _project_keys(directory: Path, kind: str, name: str, spec: Obj, obj: Obj | None, default_mode: int) -> None:
    """Write a configMap/secret (volume or projected source) into ``directory``."""
    optional = bool(spec.get("optional", False))
    if obj is None:
        if optional:
            return
        raise MountError(f'{kind} "{name}" not found')
    data = _data(obj, kind)
    items = spec.get("items") or [{"key": key, "path": key} for key in data]
    for item in items:
        if item["key"] not in data:
            if optional:
                continue
            raise MountError(f"{kind} references non-existent {kind} key: {item['key']}")
        _write(directory, item["path"], data[item["key"]], int(item.get("mode", default_mode)))


def _project_downward(directory: Path, pod: Obj, spec: Obj, placement: Placement, default_mode: int) -> None:
    for item in spec.get("items", []):
        try:
            if "fieldRef" in item:
                value = field_value(pod, item["fieldRef"]["fieldPath"], placement)
            else:
                value = resource_value(pod, "", item["resourceFieldRef"], placement)
        except ConfigError as error:
            raise MountError(str(error)) from None
        _write(directory, item["path"], value.encode(), int(item.get("mode", default_mode)))


def _project(directory: Path, pod: Obj, volume: Obj, sources: Sources, placement: Placement) -> None:
    projected = volume["projected"]
    mode = int(projected.get("defaultMode", _DEFAULT_MODE))
    for source in projected.get("sources") or []:
        if "configMap" in source:
            spec = source["configMap"]
            _project_keys(directory, "configmap", spec["name"], spec, sources.config_maps.get(spec["name"]), mode)
        elif "secret" in source:
            spec = source["secret"]
            _project_keys(directory, "secret", spec["name"], spec, sources.secrets.get(spec["name"]), mode)
        elif "downwardAPI" in source:
            _project_downward(directory, pod, source["downwardAPI"], placement, mode)
        elif "serviceAccountToken" in source:
            spec = source["serviceAccountToken"]
            key = (spec.get("audience", ""), int(spec.get("expirationSeconds", 3600)))
            if key not in sources.tokens:
                raise MountError("failed to fetch token: no token for the pod's service account")
            _write(directory, spec["path"], sources.tokens[key].encode(), 0o600)
        else:
            raise MountError(f"projected volume source {sorted(source)} is not supported by the devcluster node")


def _materialise_one(volume: Obj, roots: tuple[Path, Path], pod: Obj, sources: Sources, placement: Placement) -> Path:
    """Create one volume's directory and fill it; return the directory."""
    name: str = volume["name"]
    root, claims = roots
    if "hostPath" in volume:
        return Path(volume["hostPath"]["path"])
    if "persistentVolumeClaim" in volume:
        directory = claims / f"{pod['metadata']['namespace']}_{volume['persistentVolumeClaim']['claimName']}"
        directory.mkdir(parents=True, exist_ok=True)
        return directory
    directory = root / name
    directory.mkdir(parents=True, exist_ok=True)
    if "emptyDir" in volume:
        return directory
    if "configMap" in volume:
        spec = volume["configMap"]
        mode = int(spec.get("defaultMode", _DEFAULT_MODE))
        _project_keys(directory, "configmap", spec["name"], spec, sources.config_maps.get(spec["name"]), mode)
    elif "secret" in volume:
        spec = volume["secret"]
        mode = int(spec.get("defaultMode", _DEFAULT_MODE))
        _project_keys(directory, "secret", spec["secretName"], spec, sources.secrets.get(spec["secretName"]), mode)
    elif "downwardAPI" in volume:
        spec = volume["downwardAPI"]
        _project_downward(directory, pod, spec, placement, int(spec.get("defaultMode", _DEFAULT_MODE)))
    elif "projected" in volume:
        _project(directory, pod, volume, sources, placement)
    else:
        kinds = sorted(set(volume) - {"name"})
        raise MountError(f"volume {name!r}: type {', '.join(kinds)} is not supported by the devcluster node")
    return directory


def materialise(pod: Obj, root: Path, claims: Path, sources: Sources, placement: Placement) -> dict[str, Path]:
    """Create every volume of the pod under ``root``; volume name → directory.

    A persistentVolumeClaim is ``claims/<namespace>_<claim>``, shared by the
    pods that use the claim and kept after them, as a claim's volume is.
    """
    directories = {}
    for volume in pod.get("spec", {}).get("volumes", []):
        try:
            directories[volume["name"]] = _materialise_one(volume, (root, claims), pod, sources, placement)
        except OSError as error:
            raise MountError(f'MountVolume.SetUp failed for volume "{volume["name"]}" : {error}') from None
        except MountError as error:
            raise MountError(f'MountVolume.SetUp failed for volume "{volume["name"]}" : {error}') from None
    return directories


# ------------------------------------------------------------------ paths


def mounts(container: Obj, volumes: Mapping[str, Path]) -> list[tuple[str, Path]]:
    """(mountPath, local directory) pairs of the container, longest mountPath first."""
    pairs = []
    for mount in container.get("volumeMounts", []):
        local = volumes.get(mount["name"])
        if local is None:
            raise ConfigError(f"volumeMount {mount['name']!r} names no volume of the pod")
        sub_path = mount.get("subPath")
        if sub_path:
            local = local / sub_path
            if not local.exists():
                local.mkdir(parents=True, exist_ok=True)
        pairs.append((mount["mountPath"].rstrip("/") or "/", local))
    return sorted(pairs, key=lambda pair: len(pair[0]), reverse=True)


def translate(value: str, pairs: Sequence[tuple[str, Path]]) -> str:
    """``value`` with a leading mountPath (the whole value, or followed by ``/``) replaced by its local directory."""
    for mount_path, local in pairs:
        if value == mount_path:
            return str(local)
        prefix = "" if mount_path == "/" else mount_path
        if value.startswith(prefix + "/"):
            return str(local) + value[len(prefix) :]
    return value


# ------------------------------------------------------------------ in-cluster access


def service_account_dir(pairs: Sequence[tuple[str, Path]]) -> Path | None:
    """The local directory mounted at the in-cluster service-account path, if the container has one."""
    local = translate(SERVICE_ACCOUNT_DIR, pairs)
    return None if local == SERVICE_ACCOUNT_DIR else Path(local)


def kubernetes_service_env(server: str) -> dict[str, str]:
    """What a kubelet sets from the ``kubernetes`` Service in every container, pointing at ``server`` instead.

    The Service's ClusterIP is not reachable from a local process, so host
    and port are the apiserver's own (loopback) address.
    """
    url = urllib.parse.urlsplit(server)
    host, port = url.hostname or "127.0.0.1", str(url.port or 443)
    link = f"tcp://{host}:{port}"
    return {
        "KUBERNETES_SERVICE_HOST": host,
        "KUBERNETES_SERVICE_PORT": port,
        "KUBERNETES_SERVICE_PORT_HTTPS": port,
        "KUBERNETES_PORT": link,
        f"KUBERNETES_PORT_{port}_TCP": link,
        f"KUBERNETES_PORT_{port}_TCP_PROTO": "tcp",
        f"KUBERNETES_PORT_{port}_TCP_PORT": port,
        f"KUBERNETES_PORT_{port}_TCP_ADDR": host,
    }


def in_cluster_kubeconfig(
    *,
    server: str,
    namespace: str,
    account: str,
    token_file: Path,
    token: str,
    ca_file: Path | None,
    ca_pem: bytes | None,
) -> Obj:
    """A kubeconfig for the service account whose token is in ``token_file``: what in-cluster config would use.

    The token is given twice: ``tokenFile`` for client-go (which rereads it),
    and inline for clients that read only ``token`` (Kopf's
    ``login_with_kubeconfig``). The CA is the mounted ``ca.crt`` if there is
    one, else ``ca_pem`` (the cluster's CA as the node knows it).
    """
    cluster: Obj = {"server": server}
    if ca_file is not None:
        cluster["certificate-authority"] = str(ca_file)
    elif ca_pem is not None:
        cluster["certificate-authority-data"] = base64.b64encode(ca_pem).decode()
    user = f"system:serviceaccount:{namespace}:{account}"
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "in-cluster", "cluster": cluster}],
        "users": [{"name": user, "user": {"tokenFile": str(token_file), "token": token}}],
        "contexts": [
            {"name": "in-cluster", "context": {"cluster": "in-cluster", "user": user, "namespace": namespace}}
        ],
        "current-context": "in-cluster",
    }
