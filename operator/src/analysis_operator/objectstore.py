"""The results store: an S3-compatible bucket the operator writes finished items to, through obstore.

One install configures one store (chart values ``results.objectStore``,
read by ``config``; credentials from a mounted Secret: :class:`Settings`);
only the operator holds its credential,
never a worker pod. :class:`Store` is the handful of calls the results
export needs (put, list, get, delete under a prefix), each bounded in time:
a store that does not answer fails the call within ``Settings.timeout_s``
and the export tries again on a later pass, with the rows still in Redis.

Every failure is a :class:`StoreError` whose message names the setting to
look at (the bucket, the endpoint, the credentials), since that is what an
operator of the platform can fix; the secret values themselves never appear
in a message.

Why obstore: a thin binding over Rust's ``object_store`` (one abi3 wheel,
no botocore model files to import), with atomic puts and bounded retries;
boto3 would add tens of MB to the operator's memory. Its blocking calls are
the ones used, run in a worker thread by the async methods (see
:class:`Store`).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import pathlib
from collections.abc import Iterator, Mapping, Sequence
from datetime import timedelta
from typing import Any

import obstore
from obstore import exceptions as obstore_errors
from obstore.store import S3Store

ACCESS_KEY_FILE = "access-key-id"  # the credential's two files in Settings.credentials_dir
SECRET_KEY_FILE = "secret-access-key"
# Settings' fields a failure can point at (StoreError.setting).
BUCKET, ENDPOINT, CREDENTIALS = "bucket", "endpoint", "credentials_dir"


class StoreError(Exception):
    """A store call failed; ``setting`` is the field of :class:`Settings` to look at, ``str()`` says why."""

    def __init__(self, setting: str, message: str) -> None:
        super().__init__(message)
        self.setting = setting


@dataclasses.dataclass(frozen=True)
class Settings:
    """Where the install's results go. The credential is read from its files on each :func:`open_store`."""

    bucket: str
    endpoint: str = ""
    prefix: str = ""
    region: str = "us-east-1"
    credentials_dir: str | None = None  # a mounted Secret's files ACCESS_KEY_FILE and SECRET_KEY_FILE
    timeout_s: float = 10.0
    # How a message names each field (BUCKET, ENDPOINT, CREDENTIALS): where it was set, e.g. a chart value.
    names: Mapping[str, str] = dataclasses.field(default_factory=dict, compare=False)

    def name(self, field: str) -> str:
        return self.names.get(field, field)

    def url(self, key: str = "") -> str:
        """``s3://bucket/key`` (what status and users name a location by)."""
        return f"s3://{self.bucket}/{key}"

    def key(self, *parts: str) -> str:
        """A key under the install's prefix."""
        return "/".join(p.strip("/") for p in (self.prefix, *parts) if p.strip("/"))


def credential_of(settings: Settings) -> tuple[str, str] | None:
    """The access key id and secret from ``settings.credentials_dir`` (None: none set, the environment's)."""
    if settings.credentials_dir is None:
        return None
    folder = pathlib.Path(settings.credentials_dir)
    values = []
    for name in (ACCESS_KEY_FILE, SECRET_KEY_FILE):
        try:
            values.append((folder / name).read_text(encoding="utf-8").strip())
        except OSError as exc:
            raise StoreError(
                CREDENTIALS, f"{settings.name(CREDENTIALS)}: cannot read {name} in {folder}: {exc.strerror or exc}"
            ) from None
        if not values[-1]:
            raise StoreError(CREDENTIALS, f"{settings.name(CREDENTIALS)}: {folder / name} is empty")
    return values[0], values[1]


Listing = list[tuple[str, int]]  # (key, size) of objects under a prefix, in key order

_OPEN: dict[Settings, tuple[tuple[str, str] | None, Store]] = {}


def open_store(settings: Settings) -> Store:
    """The store of ``settings``, one client per process: made again only when its credential's files changed.

    Reads the credential's files on every call (two small reads), so a
    rotated Secret is used from the next export on, and a missing one is a
    :class:`StoreError` naming the setting.
    """
    credential = credential_of(settings)
    known = _OPEN.get(settings)
    if known is not None and known[0] == credential:
        return known[1]
    store = Store(settings, credential)
    _OPEN[settings] = (credential, store)
    return store


class Store:
    """The install's bucket, as the export uses it. Keys are full keys (``Settings.key``).

    Each call is one of obstore's blocking calls: ``*_blocking`` on the calling
    thread (the plugin, which exits right after its reads), the async methods
    in a worker thread. Not obstore's async API: its results are handed back by
    a thread of obstore's runtime that takes the GIL once more after the
    awaiting coroutine may already have gone on, and if the interpreter is
    finalizing by then (a process exiting right after its last call, an
    operator stopping mid-export) that thread is ended inside Rust code and
    the process aborts (SIGABRT, after its output was written). A blocking
    call waits on its own thread, and worker threads are joined before the
    interpreter finalizes.
    """

    def __init__(self, settings: Settings, credential: tuple[str, str] | None) -> None:
        self.settings = settings
        config: dict[str, Any] = {"region": settings.region}
        if settings.endpoint:
            config["endpoint"] = settings.endpoint
            config["virtual_hosted_style_request"] = False
        if credential is not None:
            config["access_key_id"], config["secret_access_key"] = credential
        timeout = timedelta(seconds=settings.timeout_s)
        self._store = S3Store(
            settings.bucket,
            config=config,  # type: ignore[arg-type]
            client_options={
                "allow_http": settings.endpoint.startswith("http://"),
                "timeout": timeout,
                "connect_timeout": timedelta(seconds=min(3.0, settings.timeout_s)),
            },
            retry_config={"max_retries": 2, "retry_timeout": timeout},
        )

    async def put(self, key: str, data: bytes) -> None:
        """Write ``data`` at ``key``, whole or not at all (a put is atomic)."""
        await asyncio.to_thread(self.put_blocking, key, data)

    async def get(self, key: str) -> bytes | None:
        """The object at ``key``, or None when there is none."""
        return await asyncio.to_thread(self.get_blocking, key)

    async def list(self, prefix: str) -> Listing:
        """``(key, size)`` of every object under ``prefix`` (a folder: ends with /), in key order."""
        return await asyncio.to_thread(self.list_blocking, prefix)

    async def delete(self, keys: Sequence[str]) -> None:
        await asyncio.to_thread(self.delete_blocking, keys)

    def put_blocking(self, key: str, data: bytes) -> None:
        with self._classified():
            obstore.put(self._store, key, data, use_multipart=False)

    def get_blocking(self, key: str) -> bytes | None:
        try:
            with self._classified(missing=True):
                return bytes(obstore.get(self._store, key).bytes())
        except _Missing:
            return None

    def list_blocking(self, prefix: str) -> Listing:
        found: Listing = []
        with self._classified():
            for chunk in obstore.list(self._store, prefix.rstrip("/") + "/", chunk_size=1000):
                found.extend((meta["path"], int(meta["size"])) for meta in chunk)
        return sorted(found)

    def delete_blocking(self, keys: Sequence[str]) -> None:
        if keys:
            with self._classified():
                obstore.delete(self._store, list(keys))

    @contextlib.contextmanager
    def _classified(self, *, missing: bool = False) -> Iterator[None]:
        """Every failure of the calls inside as a :class:`StoreError`; with ``missing``, no such object as
        ``_Missing``."""
        try:
            yield
        except Exception as exc:  # noqa: BLE001 - obstore raises its own and Rust-side I/O errors: classify them all
            if missing and isinstance(exc, obstore_errors.NotFoundError):
                raise _Missing(str(exc)) from None
            raise classify(self.settings, exc) from None


class _Missing(Exception):
    pass


def classify(settings: Settings, exc: BaseException) -> StoreError:
    """A store failure as the setting it points at: the bucket, the credential, or the endpoint."""
    text = " ".join(str(exc).split())
    lowered = text.lower()
    where = settings.endpoint or f"AWS S3 ({settings.region})"
    if isinstance(exc, StoreError):
        return exc
    if "nosuchbucket" in lowered or "bucket does not exist" in lowered or "specified bucket" in lowered:
        return StoreError(BUCKET, f"{settings.name(BUCKET)}: bucket {settings.bucket!r} does not exist at {where}")
    if any(word in lowered for word in ("invalidaccesskeyid", "signaturedoesnotmatch")) or isinstance(
        exc, obstore_errors.UnauthenticatedError
    ):
        return StoreError(
            CREDENTIALS,
            f"{settings.name(CREDENTIALS)}: the store at {where} does not know the credential: {_short(text)}",
        )
    if isinstance(exc, obstore_errors.PermissionDeniedError) or "accessdenied" in lowered:
        return StoreError(
            BUCKET,
            f"{settings.name(BUCKET)}, {settings.name(CREDENTIALS)}: the store at {where} refused access to bucket "
            f"{settings.bucket!r} (a bucket that does not exist, or a credential without rights on it)",
        )
    return StoreError(ENDPOINT, f"{settings.name(ENDPOINT)}: the store at {where} did not answer: {_short(text)}")


def _short(text: str, limit: int = 300) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"
