"""Weighted fair shares of a provider account: whose calls go next when several wait.

The operator grants an account's capacity a few calls at a time
(``accounts.Allocator``); this module decides who gets each call. It is
stride scheduling (a deterministic form of weighted fair queuing), in two
levels: between the namespaces waiting, in proportion to the weights the
platform admin gave them; inside a namespace, equally between its batches.
So a namespace's share does not grow with the number of batches it splits
its work into, and a batch that arrives behind a huge one gets its turn at
the next grant.

Each claimant has a pass: the work it was granted, divided by its weight.
The next call goes to the namespace with the lowest pass, and inside it to
the batch with the lowest pass. A claimant that was not waiting at the last
grant comes back at no lower a pass than the lowest of those that kept
waiting, so an idle namespace does not bank credit and then crowd out the
others, and an idle share goes to whoever waits (the scheduler is work
conserving). Calls granted but not spent (a batch wanted fewer than it was
given) are given back, pass included (``refund``).

When the call at the head of the line does not fit (too many tokens for
what the window has left), granting stops rather than letting smaller calls
of others pass: otherwise a large call could wait forever.

Pure: no Redis, no clock; the allocator keeps one ``Shares`` per account.
"""

from __future__ import annotations

import dataclasses
import heapq
from collections.abc import Iterable, Mapping


@dataclasses.dataclass(frozen=True)
class Claim:
    """What one batch (one of its providers on the account) waits for now."""

    key: str
    namespace: str
    weight: int  # its namespace's weight
    calls: int  # calls it wants granted
    input: int = 0  # input tokens per call (what each reserves)
    output: int = 0  # output tokens per call


@dataclasses.dataclass
class Capacity:
    """What the account can still grant now; None: not limited."""

    requests: int | None = None
    input: int | None = None
    output: int | None = None
    in_flight: int | None = None

    def fits(self, claim: Claim) -> bool:
        return (
            (self.requests is None or self.requests >= 1)
            and (self.in_flight is None or self.in_flight >= 1)
            and (self.input is None or self.input >= claim.input)
            and (self.output is None or self.output >= claim.output)
        )

    def take(self, claim: Claim) -> None:
        if self.requests is not None:
            self.requests -= 1
        if self.in_flight is not None:
            self.in_flight -= 1
        if self.input is not None:
            self.input -= claim.input
        if self.output is not None:
            self.output -= claim.output


class Shares:
    """The passes of one account's namespaces and batches, kept from one grant to the next."""

    def __init__(self) -> None:
        self._namespaces: dict[str, float] = {}
        self._batches: dict[str, float] = {}
        self._waiting_namespaces: set[str] = set()
        self._waiting_batches: set[str] = set()

    def split(
        self, claims: Iterable[Claim], capacity: Capacity, namespace_room: Mapping[str, int] | None = None
    ) -> dict[str, int]:
        """Calls granted to each claim's key; ``namespace_room``: at most this many more for a namespace (its caps)."""
        wanting = [c for c in claims if c.calls > 0]
        by_namespace: dict[str, list[Claim]] = {}
        for claim in wanting:
            by_namespace.setdefault(claim.namespace, []).append(claim)
        self._join(self._namespaces, self._waiting_namespaces, set(by_namespace))
        for members in by_namespace.values():
            self._join(self._batches, self._waiting_batches, {c.key for c in members}, scope=members)
        self._waiting_namespaces = set(by_namespace)
        self._waiting_batches = {c.key for c in wanting}

        room = {ns: (namespace_room or {}).get(ns, -1) for ns in by_namespace}  # -1: no cap
        left = {c.key: c.calls for c in wanting}
        granted: dict[str, int] = {}
        heap = [(self._namespaces[ns], ns) for ns in by_namespace if room[ns] != 0]
        heapq.heapify(heap)
        while heap:
            _, ns = heapq.heappop(heap)
            members = [c for c in by_namespace[ns] if left[c.key] > 0]
            claim = min(members, key=lambda c: (self._batches[c.key], c.key))
            if not capacity.fits(claim):
                break
            capacity.take(claim)
            left[claim.key] -= 1
            granted[claim.key] = granted.get(claim.key, 0) + 1
            self._namespaces[ns] += 1 / claim.weight
            self._batches[claim.key] += 1
            if room[ns] > 0:
                room[ns] -= 1
            if room[ns] != 0 and any(left[c.key] > 0 for c in by_namespace[ns]):
                heapq.heappush(heap, (self._namespaces[ns], ns))
        return granted

    def refund(self, claim: Claim, calls: int) -> None:
        """``calls`` granted to ``claim`` were never spent: its passes go back as if they had not been granted."""
        if calls <= 0:
            return
        if claim.namespace in self._namespaces:
            self._namespaces[claim.namespace] -= calls / claim.weight
        if claim.key in self._batches:
            self._batches[claim.key] -= calls

    def forget(self, key: str) -> None:
        """A batch that no longer uses the account."""
        self._batches.pop(key, None)
        self._waiting_batches.discard(key)

    @staticmethod
    def _join(
        passes: dict[str, float], waiting_before: set[str], waiting_now: set[str], scope: list[Claim] | None = None
    ) -> None:
        """Claimants that start waiting come in at no lower a pass than the lowest of those that kept waiting."""
        kept = [passes[k] for k in waiting_now & waiting_before if k in passes]
        if scope is not None:  # batches: compare within their namespace only
            kept = [passes[c.key] for c in scope if c.key in waiting_before and c.key in passes]
        floor = min(kept) if kept else min((passes[k] for k in waiting_now if k in passes), default=0.0)
        for key in waiting_now:
            if key not in waiting_before or key not in passes:
                passes[key] = max(passes.get(key, floor), floor)
