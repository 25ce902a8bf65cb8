"""One active operator among its replicas: a coordination Lease, held before Kopf starts and renewed beside it.

Kopf's own peering does not give this: replicas of equal priority all freeze,
and its lease lasts 60 s. So ``cli.main`` runs :meth:`Elector.acquire` before
it starts Kopf: a standby replica starts no handlers at all, it only watches
the Lease (and answers the kubelet's liveness probe, :func:`standby_health`).
Once it holds the Lease, a thread renews it every :data:`RENEW_S` seconds,
independent of Kopf's event loop, and Kopf starts.

Timing, in the terms of client-go's leader election: the Lease lasts
:data:`LEASE_S`; a leader that has not renewed it for :data:`DEADLINE_S`
(shorter) calls ``on_lost``, which ends the process at once, so it stops
handling before any standby may take over. A standby takes over a Lease only
after it has seen the same renewal for :data:`LEASE_S` by its own clock (never
by comparing the holder's timestamps with its own: clocks differ), or at once
when the holder gave it up (a leader stopping cleanly empties
``holderIdentity``: :meth:`Elector.release`). Every write names the
``resourceVersion`` it read, so of two standbys racing for an expired Lease
exactly one wins (409 for the other).

The decision is the pure :func:`decide`; the rest is I/O.
"""

from __future__ import annotations

import dataclasses
import datetime
import http.server
import logging
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import lightkube
from lightkube.models.coordination_v1 import LeaseSpec
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.coordination_v1 import Lease

log = logging.getLogger(__name__)

LEASE_S = 10  # leaseDurationSeconds: how long a standby waits on a renewal it saw before it takes over
RENEW_S = 2.0  # how often the leader renews
DEADLINE_S = 7.0  # a leader that has not renewed for this long gives up (well before LEASE_S)
POLL_S = 1.0  # how often a standby reads the Lease
FORBIDDEN = 403
RBAC_GRACE_S = 30.0  # a standby's first seconds, when its Role may not be in force yet (installed with it)


@dataclasses.dataclass(frozen=True)
class Seen:
    """The Lease as read: who holds it, its last renewal (as the holder wrote it), how long it lasts."""

    holder: str
    renewed: str
    duration_s: int


TAKE, HOLD, WAIT = "take", "hold", "wait"  # what decide() answers


def decide(seen: Seen | None, me: str, unchanged_since: float, now: float) -> str:
    """What a replica does about the Lease: ``take`` it (create or overwrite), ``hold`` it (renew), or ``wait``.

    ``unchanged_since``: when this replica first saw the Lease as it is now (same holder and renewal), on its own
    monotonic clock; ``now`` on the same clock.
    """
    if seen is None or not seen.holder:
        return TAKE
    if seen.holder == me:
        return HOLD
    return TAKE if now - unchanged_since >= seen.duration_s else WAIT


def _micro_time() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _seen(lease: Lease | None) -> Seen | None:
    if lease is None:
        return None
    spec = lease.spec or LeaseSpec()
    renewed = spec.renewTime.isoformat() if spec.renewTime is not None else ""
    return Seen(spec.holderIdentity or "", renewed, spec.leaseDurationSeconds or LEASE_S)


def _version(lease: Lease) -> str:
    return (lease.metadata.resourceVersion if lease.metadata is not None else None) or ""


class Elector:
    """Acquire, renew and release one Lease as ``identity``, with lightkube's synchronous client."""

    def __init__(
        self,
        client: lightkube.Client,
        namespace: str,
        name: str,
        identity: str,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.client, self.namespace, self.name, self.identity = client, namespace, name, identity
        self.clock = clock
        self._last: tuple[str, str] | None = None  # (holder, renewal) as last read
        self._since = 0.0  # when it first read as _last
        self._renewed_at = 0.0  # when this replica last wrote the Lease as its holder
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # ---------------------------------------------------------------- reading and writing

    def _read(self) -> Lease | None:
        try:
            return self.client.get(Lease, self.name, namespace=self.namespace)
        except lightkube.ApiError as exc:
            if exc.status.code == 404:
                return None
            raise

    def _observe(self, lease: Lease | None) -> Seen | None:
        seen = _seen(lease)
        key = (seen.holder, seen.renewed) if seen is not None else None
        if key != self._last:
            self._last, self._since = key, self.clock()
        return seen

    def _write(self, lease: Lease | None, *, taking: bool) -> bool:
        """Write the Lease as held by this replica; False when another writer moved first (409)."""
        now = _micro_time()
        spec = (lease.spec if lease is not None else None) or LeaseSpec()
        transitions = (spec.leaseTransitions or 0) + (1 if taking and lease is not None else 0)
        held = LeaseSpec(
            holderIdentity=self.identity,
            leaseDurationSeconds=LEASE_S,
            acquireTime=now if taking else spec.acquireTime,
            renewTime=now,
            leaseTransitions=transitions,
        )
        if not self._put(lease, held):
            return False
        self._renewed_at = self.clock()
        return True

    def _put(self, lease: Lease | None, spec: LeaseSpec) -> bool:
        """Create the Lease (``lease`` None: there was none) or replace the version read; False on a 409."""
        try:
            if lease is None:
                self.client.create(Lease(metadata=ObjectMeta(name=self.name, namespace=self.namespace), spec=spec))
            else:
                metadata = ObjectMeta(name=self.name, namespace=self.namespace, resourceVersion=_version(lease))
                self.client.replace(Lease(metadata=metadata, spec=spec))
        except lightkube.ApiError as exc:
            if exc.status.code == 409:
                return False
            raise
        return True

    # ---------------------------------------------------------------- the three phases

    def try_once(self) -> bool:
        """One look at the Lease: take it or renew it if this replica may; True when it holds it afterwards."""
        lease = self._read()
        seen = self._observe(lease)
        decision = decide(seen, self.identity, self._since, self.clock())
        if decision == WAIT:
            return False
        return self._write(lease, taking=decision == TAKE)

    def acquire(self, poll_s: float = POLL_S) -> None:
        """Return once this replica holds the Lease; until then it only reads it, every ``poll_s``."""
        waiting_on: str | None = None
        started = self.clock()
        while True:
            try:
                if self.try_once():
                    log.info(f"leading: holding Lease {self.namespace}/{self.name} as {self.identity}")
                    return
            except lightkube.ApiError as exc:
                # Installed together, a pod can start before the API server's authorizer has its new Role:
                # refusals in the first seconds are that; later ones are worth a warning.
                early = exc.status.code == FORBIDDEN and self.clock() - started < RBAC_GRACE_S
                level = logging.DEBUG if early else logging.WARNING
                log.log(level, f"cannot read or write Lease {self.namespace}/{self.name}: {exc}")
            except Exception as exc:  # noqa: BLE001 - an API server away: keep standing by
                log.warning(f"cannot read or write Lease {self.namespace}/{self.name}: {exc}")
            holder = self._last[0] if self._last else None
            if holder != waiting_on:
                waiting_on = holder
                log.info(f"standing by: Lease {self.namespace}/{self.name} is held by {holder}")
            time.sleep(poll_s)

    def keep(self, on_lost: Callable[[str], None], renew_s: float = RENEW_S, deadline_s: float = DEADLINE_S) -> None:
        """Renew the Lease every ``renew_s`` in a thread; ``on_lost(why)`` once it cannot hold it any more.

        Lost: another holder took it (a renewal found someone else's name), or no renewal succeeded for
        ``deadline_s``.
        """

        def run() -> None:
            while not self._stop.wait(renew_s):
                try:
                    if self.try_once():
                        continue
                    if self._last is not None and self._last[0] not in ("", self.identity):
                        on_lost(f"Lease {self.namespace}/{self.name} is now held by {self._last[0]}")
                        return
                except Exception as exc:  # noqa: BLE001 - any failure to renew counts against the deadline
                    log.warning(f"renewing Lease {self.namespace}/{self.name} failed: {exc}")
                if self.clock() - self._renewed_at >= deadline_s:
                    on_lost(f"Lease {self.namespace}/{self.name} not renewed for {deadline_s:g}s")
                    return

        self._thread = threading.Thread(target=run, name="lease-renewal", daemon=True)
        self._thread.start()

    def release(self) -> None:
        """Stop renewing and give the Lease up (if still held), so a standby takes over without waiting it out."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=RENEW_S + 5)
        try:
            lease = self._read()
            seen = _seen(lease)
            if lease is None or seen is None or seen.holder != self.identity:
                return
            spec = lease.spec or LeaseSpec()
            given_up = LeaseSpec(
                holderIdentity="",
                leaseDurationSeconds=1,
                acquireTime=spec.acquireTime,
                renewTime=_micro_time(),
                leaseTransitions=spec.leaseTransitions,
            )
            if self._put(lease, given_up):
                log.info(f"released Lease {self.namespace}/{self.name}")
        except Exception as exc:  # noqa: BLE001 - a standby takes over after LEASE_S anyway
            log.warning(f"could not release Lease {self.namespace}/{self.name}: {exc}")


# ---------------------------------------------------------------- the standby's liveness


def liveness_address(args: Sequence[str]) -> tuple[str, int] | None:
    """Host and port of Kopf's ``--liveness=http://host:port/path`` among ``args``, if given."""
    for index, arg in enumerate(args):
        url = arg.removeprefix("--liveness=") if arg.startswith("--liveness=") else None
        if arg == "--liveness" and index + 1 < len(args):
            url = args[index + 1]
        if url:
            parts = urllib.parse.urlsplit(url)
            if parts.port is not None:
                return parts.hostname or "0.0.0.0", parts.port
    return None


class _Standby(http.server.BaseHTTPRequestHandler):
    """A standby's answers: alive to any probe, and a scrape of its metrics port that says it stands by."""

    def do_GET(self) -> None:
        if self.path.split("?", 1)[0] == "/metrics":
            body, kind = STANDBY_METRICS.encode(), "text/plain; version=0.0.4; charset=utf-8"
        else:
            body, kind = b'{"standby": true}\n', "application/json"
        self.send_response(200)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the standard library's name
        return


# What a standby's metrics port answers: a valid exposition, so that its scrape target is up, saying it stands by.
STANDBY_METRICS = (
    "# HELP analysis_operator_standby 1 while this replica waits for the leader Lease (it runs no handlers).\n"
    "# TYPE analysis_operator_standby gauge\n"
    "analysis_operator_standby 1\n"
)


@contextmanager
def standby_health(*addresses: tuple[str, int] | None) -> Iterator[None]:
    """While a standby waits: answer on Kopf's liveness address and the metrics port (theirs once Kopf runs)."""
    servers = [http.server.ThreadingHTTPServer(address, _Standby) for address in addresses if address is not None]
    for server in servers:
        threading.Thread(target=server.serve_forever, name="standby-health", daemon=True).start()
    try:
        yield
    finally:
        for server in servers:
            server.shutdown()
            server.server_close()
