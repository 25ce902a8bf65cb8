"""Provider accounts: one limit per AnalysisProvider across every namespace, batch and stage, shared fairly.

The operator is the only writer of an account's state. Workers never touch
it: each batch has an allowance of the account under its own hash tag,
which the operator grants and the batch's workers spend
(``analysis_worker.account``). So a tenant's Redis credential, confined to
its batch's keys, can neither reset, delete nor inflate the account; at worst
it spends its own batch's allowance badly (docs/design.md#provider-accounts).

An ``Allocator`` per account (its ``tick`` run by the AnalysisProvider's
daemon in ``handlers``) grants about ten times a second:

1. on each batch's keys (``lua/account_take.lua``): take back what is left
   of its last allowance, and read its calls waiting, their tokens, its calls
   in flight and its workers' report (token settlements, a provider's
   retry-after, refusals for quota, a probe that passed);
2. on the account's keys (``lua/account_window.lua``): refund the unspent
   allowances and settle real token use into the window's log, drop what
   left the window, read what the window holds;
3. in memory: what the account can grant now (its limits scaled to the
   window, less what the window holds; calls paced evenly over the span the
   window is checked over (below);
   calls in flight under ``maxInFlight``; nothing while paused), and who gets
   it (``fairshare``, with the namespaces' weights and caps);
4. on the account's keys (``lua/account_grant.lua``): record the grant;
5. on each batch's keys (``lua/account_give.lua``): its new allowance,
   which expires on its own shortly after the next grant is due.

Why this keeps every window within the limits: a grant is counted in the
account's log at its time and can only be spent until it expires, so the
window the log is checked over is the account's window plus that lifetime
and the guard the stage limiter uses (calls reach the provider some time
after their grant). Refunds and settlements only ever lower the log.

The pauses are the account's, for everyone on it: a provider's retry-after
reported by any worker stops all grants until then; a refusal for quota or
billing holds every batch on the account (or, when the provider refused one
model, those on that model) until a probe passes: after a wait that doubles
with each refused probe, one call of one waiting batch is let through.

``Registry`` is what the batches' reconcilers tell the allocators (which
batches use which account) and what the allocators tell the reconcilers and
the account's status (pauses, use, another install holding the account). It
is in memory: every running batch registers again at its first step after an
operator restart, and the account's window is in Redis.

One install holds an account at a time (``held_elsewhere``, the claim in its
status): the window is in that install's Redis, so two installs granting it
would each grant the whole limit.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import logging
import math
import time
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from analysis_core import keys as keys_
from analysis_core import queue, scripts, wire
from analysis_core.api import v1alpha1
from analysis_operator import fairshare

log = logging.getLogger("analysis_operator.accounts")

TICK_S = 0.1  # how often an account grants
IDLE_TICK_S = 0.5  # how often an account no batch uses looks again
# An allowance outlives the next grant by this much, then expires on its own (a stopped operator's last grant).
ALLOWANCE_LIFETIME_S = 0.3
GUARD_FRACTION, GUARD_MIN_S = 0.02, 0.25  # as analysis_worker.ratelimit: calls arrive after their grant
# Calls are paced evenly over the span the log is checked over, with at most this long's worth at once: paced over
# the window alone, the log would fill before the span ends and every span would begin with a burst.
BURST_S = 0.25
PROBE_MAX_S = 300.0  # the longest wait between two probes of an account refused for quota
PROBE_MARGIN_S = 5.0  # a probe that never reports back is given up this long past its call's deadline
WHOLE_ACCOUNT = ""  # the model of a refusal that concerns the whole account
# One install's operator holds an account at a time: its limit is kept in that install's Redis. The holder claims
# the account in its status and renews the claim this often; another install takes it over only once the claim is
# older than the lease (a holder gone for good), and its batches wait until then.
CLAIM_RENEW_S = 5.0
CLAIM_LEASE_S = 15.0
# A report's settlement fields (+ the grant's epoch), and the part of the account's log each settles.
SETTLED = ((wire.REPORT_SETTLED_INPUT, wire.ALLOW_INPUT), (wire.REPORT_SETTLED_OUTPUT, wire.ALLOW_OUTPUT))


@dataclasses.dataclass(frozen=True)
class Member:
    """One batch's provider on an account: what the allocator grants to."""

    uid: str
    namespace: str
    batch: str
    provider: str  # the key under spec.providers
    model: str
    timeout_s: float  # the longest call deadline of the stages that use it
    max_tokens: int  # the output tokens each call reserves

    @property
    def key(self) -> str:
        return f"{self.uid}/{self.provider}"

    def keys(self) -> list[str]:
        k = keys_.BatchKeys(self.uid)
        return [k.allowance(self.provider, part) for part in keys_.ALLOWANCE_PARTS]


@dataclasses.dataclass
class Quota:
    """The provider refuses the account (or one model on it) for quota or billing."""

    message: str
    since_ms: int
    backoff_s: float
    next_probe_ms: int
    probe: str | None = None  # the member probing now
    probe_sent_ms: int = 0
    probe_deadline_ms: int = 0


@dataclasses.dataclass(frozen=True)
class NamespaceUse:
    name: str
    batches: int
    waiting: int
    granted: int  # calls spent in the last window
    in_flight: int


@dataclasses.dataclass(frozen=True)
class AccountView:
    """What the account's status and its batches' conditions show."""

    window_s: int
    requests: int
    input_tokens: int
    output_tokens: int
    in_flight: int
    batches: int
    waiting_batches: int
    namespaces: list[NamespaceUse]
    paused_until_ms: int
    quota: dict[str, Quota]  # by model (WHOLE_ACCOUNT: the account)
    granted_total: dict[str, int]  # calls spent since the allocator started, by namespace


class Registry:
    """Which batches use which account, and what each account's allocator last saw."""

    def __init__(self) -> None:
        self._members: dict[str, dict[str, Member]] = {}  # account -> member key -> member
        self._uses: dict[str, set[str]] = {}  # batch uid -> accounts
        self.views: dict[str, AccountView] = {}
        self.elsewhere: dict[str, str] = {}  # account -> the other install that holds it

    def use(self, uid: str, members: Mapping[str, Sequence[Member]]) -> None:
        """The batch ``uid`` now uses these accounts (by name) with these members; nothing else."""
        for account in self._uses.pop(uid, set()):
            held = self._members.get(account, {})
            for key in [k for k, m in held.items() if m.uid == uid]:
                del held[key]
        for account, these in members.items():
            self._members.setdefault(account, {}).update({m.key: m for m in these})
        if members:
            self._uses[uid] = set(members)

    def release(self, uid: str) -> None:
        """The batch no longer uses any account (it finished or was deleted)."""
        self.use(uid, {})

    def members(self, account: str) -> list[Member]:
        return list(self._members.get(account, {}).values())

    def users(self, account: str) -> list[str]:
        """The batches that use ``account``, as namespace/name."""
        return sorted({f"{m.namespace}/{m.batch}" for m in self.members(account)})

    def quota(self, account: str, model: str) -> Quota | None:
        """The refusal for quota holding ``model`` on ``account``, if any."""
        view = self.views.get(account)
        if view is None:
            return None
        return view.quota.get(WHOLE_ACCOUNT) or view.quota.get(model)


@dataclasses.dataclass
class _Seen:
    """One member at one grant."""

    member: Member
    left: int
    left_input: int  # -1: the grant did not limit them
    left_output: int
    epoch: str
    waiting: int
    want_in: int
    want_out: int
    in_flight: int
    report: dict[str, str]


class Allocator:
    """Grants one account's capacity to the batches that use it."""

    def __init__(
        self, name: str, spec: v1alpha1.AnalysisProviderSpec, redis: queue.Redis, registry: Registry, *, probe_s: float
    ) -> None:
        self.name = name
        self.spec = spec
        self.redis = redis
        self.registry = registry
        self.probe_s = probe_s
        self.shares = fairshare.Shares()
        k = keys_.AccountKeys(name)
        self._account_keys = [k.part(part) for part in keys_.ACCOUNT_PARTS]
        self._take = scripts.function(redis, "account_take", loads=True)
        self._give = scripts.function(redis, "account_give", loads=True)
        self._window = scripts.function(redis, "account_window", loads=True)
        self._grant = scripts.function(redis, "account_grant", loads=True)
        self._bucket = 0.0
        self._last_tick = time.monotonic()
        self._granted: dict[str, int] = {}  # member key -> calls in its current allowance
        self._cost: dict[str, tuple[int, int]] = {}  # member key -> tokens per call (input as last seen, output)
        self._spent = collections.deque[tuple[float, str, int]]()  # (when, namespace, calls) within the window
        # Each grant's calls by namespace, less what was refunded: what namespace caps count, over the lookback.
        self._given = collections.deque[tuple[float, collections.Counter[str]]]()
        self._spent_total: dict[str, int] = {}
        self.paused_until_ms = 0
        self.quota: dict[str, Quota] = {}

    # ---------------------------------------------------------------- limits

    @property
    def window_s(self) -> float:
        return float(self.spec.limits.window_seconds)

    def _scaled(self, per_minute: int | None) -> int | None:
        """A per-minute limit over the account's window."""
        if per_minute is None:
            return None
        return max(1, math.floor(per_minute * self.window_s / 60))

    @property
    def lookback_ms(self) -> int:
        guard = max(self.window_s * GUARD_FRACTION, GUARD_MIN_S)
        return math.ceil((self.window_s + guard + ALLOWANCE_LIFETIME_S) * 1000)

    # ---------------------------------------------------------------- a grant

    async def tick(self) -> bool:
        """One grant; False when no batch uses the account."""
        members = self.registry.members(self.name)
        for key in set(self._granted) - {m.key for m in members}:
            self._granted.pop(key, None)
            self.shares.forget(key)
        if not members:
            self.registry.views[self.name] = self._view([], 0, (0, 0, 0))
            return False
        seen = await asyncio.gather(*(self._observe(m) for m in members))
        changes: list[Any] = []
        for s in seen:
            for part, left in (
                (wire.ALLOW_REQUESTS, s.left),
                (wire.ALLOW_INPUT, s.left_input),
                (wire.ALLOW_OUTPUT, s.left_output),
            ):
                if s.epoch and left > 0:
                    changes += [s.epoch, part, -left]
            for field, value in s.report.items():
                for prefix, part in SETTLED:
                    if field.startswith(prefix):
                        changes += [field[len(prefix) :], part, int(value)]
        now_ms, used_r, used_i, used_o = (
            int(v) for v in await self._window(keys=self._account_keys, args=[self.lookback_ms, *changes])
        )
        now = time.monotonic()
        self._learn(seen, now, now_ms)
        grants, probe = self._decide(seen, now, now_ms, (used_r, used_i, used_o))
        per_call = {s.member.key: self._cost.get(s.member.key, (0, s.member.max_tokens)) for s in seen}
        limits = self.spec.limits
        total_r = sum(grants.values())
        total_i = sum(n * per_call[k][0] for k, n in grants.items()) if limits.input_tokens_per_minute else 0
        total_o = sum(n * per_call[k][1] for k, n in grants.items()) if limits.output_tokens_per_minute else 0
        epoch = str(now_ms)
        if total_r:
            await self._grant(keys=self._account_keys, args=[epoch, total_r, total_i, total_o])
        await asyncio.gather(*(self._hand_out(s, grants.get(s.member.key, 0), per_call, epoch, probe) for s in seen))
        self._granted = {s.member.key: grants.get(s.member.key, 0) for s in seen}
        self.registry.views[self.name] = self._view(
            seen, now_ms, (used_r + total_r, used_i + total_i, used_o + total_o)
        )
        return True

    async def _observe(self, member: Member) -> _Seen:
        reply = await self._take(keys=member.keys())
        flat = [str(x) for x in reply[7]]
        report = dict(zip(flat[::2], flat[1::2], strict=True))
        waiting, want_in = int(reply[4]), int(reply[5])
        want_out = waiting * member.max_tokens
        if waiting:
            self._cost[member.key] = (math.ceil(want_in / waiting), member.max_tokens)
        return _Seen(
            member,
            int(reply[0]),
            int(reply[1]),
            int(reply[2]),
            str(reply[3]),
            waiting,
            want_in,
            want_out,
            int(reply[6]),
            report,
        )

    # ---------------------------------------------------------------- what the workers said

    def _learn(self, seen: Sequence[_Seen], now: float, now_ms: int) -> None:
        """Spent calls for the namespaces' figures; pauses, refusals and probes from the reports."""
        for s in seen:
            given = self._granted.get(s.member.key, 0)
            spent = self._spent_since_last_grant(s)
            if spent:
                self._spent.append((now, s.member.namespace, spent))
                self._spent_total[s.member.namespace] = self._spent_total.get(s.member.namespace, 0) + spent
            if s.left > 0:
                self.shares.refund(self._claim(s, 0), min(s.left, given))
                if self._given:
                    self._given[-1][1][s.member.namespace] -= min(s.left, given)
            pause = int(s.report.get(wire.REPORT_PAUSE_UNTIL, "0"))
            if pause > self.paused_until_ms:
                self.paused_until_ms = pause
                log.info(f"account {self.name}: paused for {(pause - now_ms) / 1000:.1f}s by the provider")
            if wire.REPORT_REFUSED in s.report:
                self._refused(s, now_ms)
            if wire.REPORT_PASSED_AT in s.report:
                self._passed(s, int(s.report[wire.REPORT_PASSED_AT]))
        while self._spent and self._spent[0][0] < now - self.window_s:
            self._spent.popleft()
        while self._given and self._given[0][0] < now - self.lookback_ms / 1000:
            self._given.popleft()
        for quota in self.quota.values():
            if quota.probe is not None and now_ms > quota.probe_deadline_ms:
                quota.probe = None  # never reported back: the next may go after the current wait
                quota.next_probe_ms = now_ms + int(quota.backoff_s * 1000)

    def _refused(self, s: _Seen, now_ms: int) -> None:
        model = s.report.get(wire.REPORT_REFUSED_MODEL, "") or WHOLE_ACCOUNT
        message = s.report[wire.REPORT_REFUSED]
        at = int(s.report.get(wire.REPORT_REFUSED_AT, str(now_ms)))
        quota = self.quota.get(model)
        if quota is None:
            self.quota[model] = Quota(message, at, self.probe_s, now_ms + int(self.probe_s * 1000))
            what = f"model {model}" if model else "the account"
            log.warning(f"account {self.name}: the provider refuses {what} for quota; probing: {message}")
            return
        quota.message = message
        if quota.probe == s.member.key and at >= quota.probe_sent_ms:
            quota.backoff_s = min(PROBE_MAX_S, quota.backoff_s * 2)
            quota.probe = None
            quota.next_probe_ms = now_ms + int(quota.backoff_s * 1000)

    def _passed(self, s: _Seen, at: int) -> None:
        for model, quota in list(self.quota.items()):
            if quota.probe == s.member.key and at >= quota.probe_sent_ms:
                del self.quota[model]
                log.info(f"account {self.name}: a probe passed; the account resumes")

    def _spent_since_last_grant(self, s: _Seen) -> int:
        """Calls of the member's last allowance that its workers spent (the rest came back with ``take``)."""
        return max(0, self._granted.get(s.member.key, 0) - max(0, s.left))

    def _held(self, member: Member) -> Quota | None:
        return self.quota.get(WHOLE_ACCOUNT) or self.quota.get(member.model)

    # ---------------------------------------------------------------- what to grant

    def _claim(self, s: _Seen, calls: int) -> fairshare.Claim:
        share = self.spec.share(s.member.namespace)
        cost = self._cost.get(s.member.key, (0, s.member.max_tokens))
        return fairshare.Claim(
            s.member.key, s.member.namespace, share.weight if share else 1, calls, input=cost[0], output=cost[1]
        )

    def _decide(
        self, seen: Sequence[_Seen], now: float, now_ms: int, used: tuple[int, int, int]
    ) -> tuple[dict[str, int], str | None]:
        """Calls granted to each member now, and the member granted the probe of a refused account, if any."""
        limits = self.spec.limits
        rate = (self._scaled(limits.requests_per_minute) or 0) / (self.lookback_ms / 1000)
        if rate:
            self._bucket = min(max(1.0, rate * BURST_S), self._bucket + rate * (now - self._last_tick))
        self._last_tick = now
        if self.paused_until_ms > now_ms:
            return {}, None

        def room(limit: int | None, taken: int) -> int | None:
            return None if limit is None else max(0, limit - taken)

        in_flight = sum(s.in_flight for s in seen)
        requests = room(self._scaled(limits.requests_per_minute), used[0])
        if requests is not None:
            requests = min(requests, math.floor(self._bucket))
        capacity = fairshare.Capacity(
            requests=requests,
            input=room(self._scaled(limits.input_tokens_per_minute), used[1]),
            output=room(self._scaled(limits.output_tokens_per_minute), used[2]),
            in_flight=room(limits.max_in_flight, in_flight),
        )
        grants: dict[str, int] = {}
        probe = self._probe(seen, capacity, now_ms)
        if probe is not None:
            grants[probe] = 1
        claims = []
        for s in seen:
            if self._held(s.member) is None and self.spec.share(s.member.namespace) is not None:
                # What it waits for now, and as many again as it spent since the last grant (calls keep coming).
                claims.append(self._claim(s, s.waiting + self._spent_since_last_grant(s)))
        granted = self.shares.split(claims, capacity, self._namespace_room(seen))
        for key, n in granted.items():
            grants[key] = grants.get(key, 0) + n
        if rate:
            self._bucket -= sum(grants.values())
        given: collections.Counter[str] = collections.Counter()
        namespace_of = {s.member.key: s.member.namespace for s in seen}
        for key, n in grants.items():
            given[namespace_of[key]] += n
        self._given.append((now, given))
        return grants, probe

    def _probe(self, seen: Sequence[_Seen], capacity: fairshare.Capacity, now_ms: int) -> str | None:
        """One call for one waiting batch of a refused account (or model) when its wait is over."""
        for model, quota in self.quota.items():
            if quota.probe is not None or now_ms < quota.next_probe_ms:
                continue
            waiting = sorted(
                (s for s in seen if s.waiting and (model == WHOLE_ACCOUNT or s.member.model == model)),
                key=lambda s: s.member.key,
            )
            if not waiting:
                continue
            chosen = waiting[(quota.since_ms // 1000 + int(quota.backoff_s)) % len(waiting)]
            claim = self._claim(chosen, 1)
            if not capacity.fits(claim):
                continue
            capacity.take(claim)
            quota.probe = chosen.member.key
            quota.probe_sent_ms = now_ms
            quota.probe_deadline_ms = now_ms + int((chosen.member.timeout_s + PROBE_MARGIN_S) * 1000)
            return chosen.member.key
        return None

    def _namespace_room(self, seen: Sequence[_Seen]) -> dict[str, int]:
        """How many more calls each capped namespace may have now (its caps; -1: none)."""
        out: dict[str, int] = {}
        for ns in {s.member.namespace for s in seen}:
            share = self.spec.share(ns)
            if share is None:
                continue
            room = -1
            if share.requests_per_minute is not None:
                given = sum(counts[ns] for _, counts in self._given)
                room = max(0, (self._scaled(share.requests_per_minute) or 0) - given)
            if share.max_in_flight is not None:
                flying = sum(s.in_flight for s in seen if s.member.namespace == ns)
                left = max(0, share.max_in_flight - flying)
                room = left if room < 0 else min(room, left)
            out[ns] = room
        return out

    async def _hand_out(
        self, s: _Seen, calls: int, per_call: Mapping[str, tuple[int, int]], epoch: str, probe: str | None
    ) -> None:
        limits = self.spec.limits
        cost = per_call[s.member.key]
        held = self._held(s.member)
        is_probe = probe == s.member.key
        await self._give(
            keys=[s.member.keys()[0]],
            args=[
                calls,
                calls * cost[0] if limits.input_tokens_per_minute else -1,
                calls * cost[1] if limits.output_tokens_per_minute else -1,
                epoch,
                math.ceil(TICK_S * 1000),
                math.ceil((TICK_S + ALLOWANCE_LIFETIME_S) * 1000),
                self.paused_until_ms,
                "" if held is None or is_probe else held.message,
                "1" if is_probe else "0",
            ],
        )

    # ---------------------------------------------------------------- what it shows

    def _view(self, seen: Sequence[_Seen], now_ms: int, used: tuple[int, int, int]) -> AccountView:
        batches: collections.Counter[str] = collections.Counter()
        waiting: collections.Counter[str] = collections.Counter()
        flying: collections.Counter[str] = collections.Counter()
        for s in seen:
            batches[s.member.namespace] += 1
            waiting[s.member.namespace] += s.waiting
            flying[s.member.namespace] += s.in_flight
        spent: dict[str, int] = {}
        for _, name, n in self._spent:
            spent[name] = spent.get(name, 0) + n
        return AccountView(
            window_s=int(self.window_s),
            requests=used[0],
            input_tokens=used[1],
            output_tokens=used[2],
            in_flight=sum(s.in_flight for s in seen),
            batches=len({s.member.uid for s in seen}),
            waiting_batches=len({s.member.uid for s in seen if s.waiting}),
            namespaces=[
                NamespaceUse(name, batches[name], waiting[name], spent.get(name, 0), flying[name])
                for name in sorted(batches)
            ],
            paused_until_ms=self.paused_until_ms if self.paused_until_ms > now_ms else 0,
            quota={k: dataclasses.replace(v) for k, v in self.quota.items()},
            granted_total=dict(self._spent_total),
        )


# ---------------------------------------------------------------- the AnalysisProvider's status


def iso_time(ms: int) -> str:
    """An API timestamp (RFC 3339, whole seconds, UTC) of ``ms`` since the epoch, as the account's status writes."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ms / 1000))


def held_elsewhere(status: Mapping[str, Any], me: str, now_ms: int) -> str | None:
    """The other install whose claim on the account is fresh, from the account's status; None: ``me`` may hold it."""
    served_by = status.get("servedBy")
    if not served_by or served_by == me:
        return None
    try:
        renewed = datetime.fromisoformat(str(status.get("renewTime"))).timestamp() * 1000
    except ValueError:
        return None  # never renewed (or unreadable): no claim
    return str(served_by) if now_ms - renewed <= CLAIM_LEASE_S * 1000 else None


def provider_status(
    view: AccountView,
    spec: v1alpha1.AnalysisProviderSpec,
    generation: int,
    previous: Mapping[str, Any],
    now_ms: int,
    *,
    served_by: str,
) -> dict[str, Any]:
    """The AnalysisProvider's status from what its allocator last saw; conditions keep their transition times.

    ``served_by``: this install, which holds the account; the status renews its claim (``renewTime``).
    """
    R, C, S = v1alpha1.Reason, v1alpha1.AccountConditionType, v1alpha1.ConditionStatus
    limit = spec.limits.requests_per_minute
    scaled = None if limit is None else max(1, math.floor(limit * spec.limits.window_seconds / 60))
    quota = view.quota.get(WHOLE_ACCOUNT) or next(iter(view.quota.values()), None)
    refused = ""
    if quota is not None:
        models = sorted(m for m in view.quota if m != WHOLE_ACCOUNT)
        what = "the account" if WHOLE_ACCOUNT in view.quota else f"model {', '.join(models)}"
        refused = (
            f"the provider refuses {what} for quota or billing since {iso_time(quota.since_ms)}: "
            f"{quota.message.rstrip('. ')}. "
            f"One probe call at a time, every {quota.backoff_s:g}s (doubling while refused); "
            "every batch on it resumes once one passes"
        )
    conditions = [
        (C.READY, S.TRUE, R.ACCOUNT_SERVING, f"serving {view.batches} batches"),
        (
            C.PAUSED,
            S.TRUE if view.paused_until_ms else S.FALSE,
            R.ACCOUNT_PAUSED if view.paused_until_ms else R.NOT_PAUSED,
            f"the provider asked to wait until {iso_time(view.paused_until_ms)}" if view.paused_until_ms else "",
        ),
        (
            C.QUOTA_EXHAUSTED,
            S.TRUE if refused else S.FALSE,
            R.PROVIDER_QUOTA_EXHAUSTED if refused else R.QUOTA_AVAILABLE,
            refused,
        ),
    ]
    old = {c.get("type"): c for c in previous.get("conditions") or []}
    now = iso_time(now_ms)
    return {
        "observedGeneration": generation,
        "windowSeconds": view.window_s,
        "requests": view.requests,
        "inputTokens": view.input_tokens,
        "outputTokens": view.output_tokens,
        "inFlight": view.in_flight,
        "requestsSummary": f"{view.requests}/{scaled}" if scaled is not None else str(view.requests),
        "batches": view.batches,
        "waitingBatches": view.waiting_batches,
        "waitingNamespaces": sorted(n.name for n in view.namespaces if n.waiting) or None,
        "namespaces": [
            {"name": n.name, "batches": n.batches, "waiting": n.waiting, "granted": n.granted, "inFlight": n.in_flight}
            for n in view.namespaces
        ]
        or None,
        "pausedUntil": iso_time(view.paused_until_ms) if view.paused_until_ms else None,
        "quotaExhausted": refused or None,
        "servedBy": served_by,
        "renewTime": iso_time(now_ms),
        "conditions": [
            {
                "type": str(kind),
                "status": str(status),
                "reason": str(reason),
                "message": message,
                "observedGeneration": generation,
                "lastTransitionTime": (
                    old[kind]["lastTransitionTime"]
                    if kind in old and old[kind].get("status") == status and old[kind].get("lastTransitionTime")
                    else now
                ),
            }
            for kind, status, reason, message in conditions
        ],
    }
