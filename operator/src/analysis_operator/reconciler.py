"""The level-based reconciler of one AnalysisBatch: observe, decide, converge, report.

One :class:`Reconciler` lives per batch, inside the batch's Kopf daemon
(``handlers.py``), and ``step`` runs about once a second, sooner when a spec
change kicks it. Every step starts from what *is*, never from what the last
step did:

1. compile the plan from the spec and the ConfigMaps it references (once per
   generation while it compiles; every step while a reference is broken, so
   a fix is noticed within a step);
2. publish the plan ConfigMap and the workers' ServiceAccount; seed the
   first stage once (``producer.seed`` is idempotent); mirror ``spec.suspend``
   into the flag workers read before each claim;
3. read one atomic Redis snapshot and act on it: release approved items,
   collect fan-in stages, seal stages nothing can feed any more
   (``completion`` proves each of these safe to do late);
4. size each stage's Job or Deployment to ceil(min(concurrency, backlog +
   in flight) / calls per pod) pods and apply it when it differs from what
   the Kopf indexes show; shrinking never stops a pod that holds an item
   (``_scale_in``);
5. export finished items to results ConfigMaps;
6. compute the status and write it when it changed, at most once per
   ``status_interval_s``, posting an Event for each condition that flips.

Anything it cannot fix by itself (a missing ConfigMap, a Secret the pods
cannot find, a plan that does not compile, Redis away) becomes a
:class:`status.Problem`, i.e. a condition with a CamelCase reason and a
message that names the field or object, and clears on the first step after
the cause is gone.

Nothing here blocks the event loop: Kubernetes and Redis calls are async,
and the work between them is small and bounded by the plan's size.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import re
import time
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import kopf
import pydantic
import yaml

from analysis_core import plan, pricing, queue, tenancy
from analysis_core.api import v1alpha1, wellknown
from analysis_operator import accounts, builders, completion, export, kube, objectstore, producer, sinks, status
from analysis_operator.config import OperatorConfig

R = v1alpha1.Reason

ANNOTATION_SPEC_HASH = "analysis.dev/spec-hash"  # on Jobs and Deployments: the spec last applied
STORE_BACKOFF_S = 30.0  # the longest wait before the export tries a failing store again
# The API server refused the batch's status this often, for this long: the batch fails (status.unwritable).
STATUS_REFUSALS = 3
STATUS_REFUSED_S = 30.0
BUSY_POD_COST = "1000"  # pod-deletion-cost of a worker with an item in flight (idle ones: 0)
SECRET_REAPPLY_S = 30.0  # how often the workers' ServiceAccount and Redis Secret are applied again
MOUNT_GRACE_S = 5.0  # a worker pod creating its containers this long: ask the kubelet's Events why
MOUNT_PODS_ASKED = 3  # at most so many such pods' Events per step (they share their Secrets)

log = logging.getLogger("analysis_operator")


@dataclasses.dataclass(frozen=True)
class Workload:
    """A Job or Deployment of the batch, as the index saw it."""

    kind: str
    name: str
    stage: str
    spec_hash: str
    size: int  # parallelism or replicas
    complete: bool = False  # a Job whose pods finished the stage
    failed: str = ""  # a Job that gave up (the reason), e.g. BackoffLimitExceeded


@dataclasses.dataclass(frozen=True)
class Pod:
    """A worker pod of the batch, as the index saw it."""

    name: str
    stage: str
    phase: str
    deleting: bool
    waiting_reason: str = ""
    waiting_message: str = ""
    deletion_cost: str | None = None
    owner: str = ""  # the Job (or ReplicaSet) whose pod it is
    creating_since: float | None = None  # epoch seconds of its creation, while its containers are being created

    @property
    def started(self) -> bool:
        return self.phase == "Running"

    @property
    def live(self) -> bool:
        return not self.deleting and self.phase in ("Pending", "Running")


@dataclasses.dataclass(frozen=True)
class Children:
    workloads: Sequence[Workload] = ()
    pods: Sequence[Pod] = ()


@dataclasses.dataclass(frozen=True)
class Account:
    """An AnalysisProvider, as the index saw it."""

    name: str
    generation: int
    spec: Mapping[str, Any]


@dataclasses.dataclass
class _Compiled:
    generation: int
    plan: plan.Plan
    spec: v1alpha1.AnalysisBatchSpec
    items: list[str]
    accounts: tuple[tuple[str, int], ...] = ()  # the AnalysisProviders it was compiled against, by generation
    account_specs: Mapping[str, v1alpha1.AnalysisProviderSpec] = dataclasses.field(default_factory=dict)


class Reconciler:
    """The state one batch's reconciler keeps between steps; all of it can be rebuilt from scratch."""

    def __init__(
        self, cfg: OperatorConfig, kube_: kube.Kube, redis: queue.Redis, registry: accounts.Registry | None = None
    ) -> None:
        self.cfg = cfg
        self.kube = kube_
        self.redis = redis
        self.registry = registry if registry is not None else accounts.Registry()
        self._compiled: _Compiled | None = None
        self._prices = _price_table(cfg.worker.prices)
        self._published: str | None = None  # plan text last applied
        self._ca_published: dict[str, str] | None = None  # the accounts' CA bundles last applied
        self._account_applied = False
        self._secret_due = 0.0  # monotonic: when the ServiceAccount and the Redis Secret are applied again
        self._user_asserted = False  # the batch's Redis user was set by this reconciler (then: only checked)
        self._written: dict[str, Any] | None = None  # the status last written
        self._written_at = 0.0
        self._applied: dict[str, str] = {}  # workload name -> spec hash last applied
        self._shrink_since: dict[str, float] = {}  # stage -> since when it wants fewer pods
        self._results_due = 0.0
        self._results: dict[str, Any] | None = None  # status.results as last exported
        self._sinks: dict[v1alpha1.ResultsSink, sinks.Sink] = {}
        self._sink_problem: status.Problem | None = None  # why the last export pass could not write everything
        self._sink_failures = 0  # export passes in a row that the sink refused (backoff)
        self._sink_retry_at = 0.0  # monotonic: no export pass before this
        self._pending = 0  # ended items the sink does not hold yet (they wait in Redis)
        self._diverged: status.Problem | None = None  # the sink got ahead of Redis (a lossy failover): export stops
        self._first_failure: str | None = None  # the first failed row, for a Failed batch's message
        self._refusals = 0  # status writes the API server refused in a row
        self._refused_since: float | None = None
        self._gave_up: str | None = None  # why the status could not be written: the batch failed
        self._failures_scanned = False  # the finals list was read from its start for _first_failure

    # ---------------------------------------------------------------- step

    async def step(
        self, body: kopf.Body, children: Children, known: Mapping[str, Account] | None = None
    ) -> dict[str, Any]:
        """One pass; returns the status as computed (written or not). ``known``: the AnalysisProviders by name."""
        meta = body["metadata"]
        batch = builders.Batch(meta["name"], meta["namespace"], meta["uid"])
        generation = int(meta.get("generation") or 1)
        previous = self._written if self._written is not None else dict(body.get("status") or {})
        problems: list[status.Problem] = []
        compiled = await self._compile(batch, body.get("spec") or {}, generation, known or {}, problems)
        obs = status.Observation(generation=generation, now=datetime.now(UTC), problems=problems)
        if compiled is not None:
            obs = await self._drive(batch, body, compiled, children, obs)
        if self._gave_up is not None and self._written is not None:
            return self._written  # Failed for good: its workers stop (``_drive``), its status stays as written
        new = status.compute(obs, previous)
        await self._write_status(batch, body, previous, new)
        return self._written if self._gave_up is not None and self._written is not None else new

    # ---------------------------------------------------------------- 1. compile

    async def _compile(
        self,
        batch: builders.Batch,
        raw_spec: Mapping[str, Any],
        generation: int,
        known: Mapping[str, Account],
        problems: list[status.Problem],
    ) -> _Compiled | None:
        if (
            self._compiled is not None
            and self._compiled.generation == generation
            and all(known.get(name, _GONE).generation == seen for name, seen in self._compiled.accounts)
        ):
            return self._compiled
        try:
            spec = v1alpha1.AnalysisBatchSpec.model_validate(raw_spec)
        except pydantic.ValidationError as exc:
            first = exc.errors()[0]
            field = "spec." + ".".join(str(part) for part in first["loc"])
            problems.append(status.Problem(R.INVALID_SPEC, f"{field}: {first['msg']}"))
            return None
        used = account_problems(spec, batch.namespace, known, problems)
        prompts: dict[str, str] = {}
        for index, stage in enumerate(spec.stages):
            if stage.prompt_from is not None:
                ref = stage.prompt_from.config_map_key_ref
                text = await self._configmap_key(batch, ref, f"spec.stages[{index}].promptFrom", problems)
                if text is not None:
                    prompts[stage.name] = text
        items = list(spec.items or [])
        if spec.items_from is not None:
            ref = spec.items_from.config_map_key_ref
            text = await self._configmap_key(batch, ref, "spec.itemsFrom", problems)
            if text is not None:
                items = parse_items(text, ref, problems)
        if problems:
            return None
        try:
            the_plan = plan.compile_plan(batch.uid, spec, generation=generation, prompts=prompts, accounts=used)
        except plan.PlanError as exc:
            detail = "; ".join(f"{field}: {message}" for field, message in exc.problems)
            problems.append(status.Problem(R.INVALID_PLAN, detail))
            return None
        problems.extend(unpriced_budget(the_plan, self._prices))
        if problems:
            return None
        seen = tuple(sorted((name, known[name].generation) for name in used))
        self._compiled = _Compiled(generation, the_plan, spec, items, seen, used)
        self.registry.use(batch.uid, account_members(batch, the_plan))
        return self._compiled

    async def _configmap_key(
        self, batch: builders.Batch, ref: v1alpha1.ConfigMapKeyRef, field: str, problems: list[status.Problem]
    ) -> str | None:
        configmap = await self.kube.get(kube.CONFIGMAPS, batch.namespace, ref.name)
        if configmap is None:
            problems.append(
                status.Problem(
                    R.CONFIGMAP_NOT_FOUND, f"{field}.configMapKeyRef: ConfigMap {batch.namespace}/{ref.name} not found"
                )
            )
            return None
        data = configmap.data or {}
        if ref.key not in data:
            keys_ = ", ".join(sorted(data)) or "none"
            problems.append(
                status.Problem(
                    R.CONFIGMAP_KEY_NOT_FOUND,
                    f"{field}.configMapKeyRef: ConfigMap {batch.namespace}/{ref.name} has no key {ref.key!r} "
                    f"(keys: {keys_})",
                )
            )
            return None
        return str(data[ref.key])

    # ---------------------------------------------------------------- 2-5. drive

    async def _drive(
        self,
        batch: builders.Batch,
        body: kopf.Body,
        compiled: _Compiled,
        children: Children,
        obs: status.Observation,
    ) -> status.Observation:
        the_plan, spec = compiled.plan, compiled.spec
        problems = list(obs.problems)
        await self._publish(batch, body, the_plan, problems)
        await self._publish_ca_bundles(batch, body, compiled, problems)
        workers = _live_workers(children)
        problems.extend(pod_problems(the_plan, children))
        problems.extend(await self._mount_problems(batch, the_plan, children))
        problems.extend(f for f in (_job_failure(w) for w in children.workloads) if f)
        try:
            await self._assert_user(batch, body)
            snapshot, state = await self._advance(batch, body, compiled)
            problems.extend(quota_problems(the_plan, snapshot))
            problems.extend(account_quota_problems(the_plan, snapshot, self.registry))
            problems.extend(account_held_elsewhere_problems(the_plan, self.registry))
        except queue.UNAVAILABLE as exc:
            problems.append(status.Problem(R.REDIS_UNAVAILABLE, f"Redis cannot be reached: {exc}", stalled=False))
            return dataclasses.replace(obs, plan=the_plan, workers=workers, problems=problems, suspended=spec.suspend)
        except producer.NewerLayout as exc:
            problems.append(status.Problem(R.REDIS_LAYOUT_UNSUPPORTED, str(exc)))
            return dataclasses.replace(obs, plan=the_plan, workers=workers, problems=problems, suspended=spec.suspend)
        terminal = state.phase is not completion.Phase.RUNNING
        stopping = spec.suspend or terminal or self._gave_up is not None
        await self._converge(batch, body, the_plan, snapshot, children, stopping=stopping, problems=problems)
        exported = await self._export(batch, body, spec, final=terminal, problems=problems)
        if terminal and (self._pending or self._diverged is not None):
            # Ended, but not every result is in the sink yet: not Complete (or Failed) until it is.
            waiting = f"{self._pending} results wait in Redis for the results sink"
            if self._diverged is not None:
                waiting = f"the results export stopped: {self._diverged.message}"
            state = dataclasses.replace(state, phase=completion.Phase.RUNNING, reason=waiting)
        if state.phase is completion.Phase.FAILED:
            await self._find_first_failure(batch)
            if self._first_failure:
                state = dataclasses.replace(state, reason=f"{state.reason}; {self._first_failure}")
        # What an approval stage still holds, approved in part or not at all (released items have moved on).
        held = {s.name: snapshot.stages[s.name].ready for s in the_plan.stages if s.type is v1alpha1.StageType.APPROVAL}
        held_items = await self._held_items(batch, held)
        return dataclasses.replace(
            obs,
            plan=the_plan,
            snapshot=snapshot,
            state=state,
            workers=workers,
            held=held,
            held_items=held_items,
            problems=problems,
            suspended=spec.suspend,
            results=exported,
            retried_failed=snapshot.retry_token,
        )

    async def _held_items(self, batch: builders.Batch, held: Mapping[str, int]) -> dict[str, list[str]]:
        """Which items wait at each approval stage that holds any, the first few (for status; best effort)."""
        try:
            return {
                gate: await producer.held_items(self.redis, batch.uid, gate, status.HELD_ITEMS_SHOWN)
                for gate, n in held.items()
                if n
            }
        except queue.UNAVAILABLE:
            return {}

    async def _publish(
        self, batch: builders.Batch, body: kopf.Body, the_plan: plan.Plan, problems: list[status.Problem]
    ) -> None:
        """The plan ConfigMap, the workers' ServiceAccount and Redis Secret, applied when they change."""
        try:
            now = time.monotonic()
            if not self._account_applied or now >= self._secret_due:
                # Applied again now and then: a deleted Secret comes back (the same password, derived again).
                await self.kube.apply(_owned(builders.service_account(batch), body))
                if self.cfg.redis_password is not None:
                    credential = tenancy.username(batch.uid), tenancy.password(self.cfg.redis_password, batch.uid)
                    await self.kube.apply(_owned(builders.redis_secret(batch, *credential), body))
                self._account_applied = True
                self._secret_due = now + SECRET_REAPPLY_S
            text = the_plan.dumps()
            if text != self._published:
                await self.kube.apply(_owned(builders.plan_configmap(batch, the_plan, self.cfg.worker), body))
                self._published = text
        except kube.ApiError as exc:
            what = "the plan, the ServiceAccount or the Redis Secret"
            problems.append(status.Problem(R.PUBLISH_FAILED, f"cannot write {what}: {kube.describe(exc)}"))

    async def _mount_problems(
        self, batch: builders.Batch, the_plan: plan.Plan, children: Children
    ) -> list[status.Problem]:
        """Worker pods stuck creating their containers: the kubelet's FailedMount Events say which Secret is missing."""
        stuck = [
            p
            for p in children.pods
            if p.creating_since is not None and not p.deleting and time.time() - p.creating_since >= MOUNT_GRACE_S
        ]
        if not stuck:
            return []
        secrets = key_secrets(the_plan)
        out: dict[str, status.Problem] = {}
        for pod in stuck[:MOUNT_PODS_ASKED]:
            try:
                messages = await self.kube.events_about(batch.namespace, pod.name, "FailedMount")
            except kube.ApiError:  # an install without the right to list Events: the pod's state says less
                return list(out.values())
            for message in reversed(messages):  # the newest that says something
                problem = mount_problem(message, secrets, pod.stage)
                if problem is not None:
                    out.setdefault(problem.reason, problem)
                    break
        return list(out.values())

    async def _assert_user(self, batch: builders.Batch, body: kopf.Body) -> None:
        """The batch's Redis user: set once by this reconciler, then set again whenever Redis lost it.

        Redis keeps ACL users neither in its AOF nor on its replicas: after a
        restart it has none, and the batch's workers cannot log in until this
        runs again (they wait, as for a Redis that is down).
        """
        admin = self.cfg.redis_password
        if admin is None:
            return
        if self._user_asserted and await producer.has_user(self.redis, batch.uid):
            return
        await producer.ensure_user(self.redis, batch.uid, admin)
        if self._user_asserted:
            kopf.info(body, reason=R.REDIS_USER_RESTORED, message="Redis had lost the batch's user; set it again")
        self._user_asserted = True

    async def _publish_ca_bundles(
        self, batch: builders.Batch, body: kopf.Body, compiled: _Compiled, problems: list[status.Problem]
    ) -> None:
        """The provider accounts' ``egress.caBundle``, copied from the operator's namespace into the batch's."""
        bundles: dict[str, str] = {}
        for name, provider in compiled.plan.providers.items():
            if provider.account is None or not provider.account.ca_bundle:
                continue
            account = provider.account.name
            egress = compiled.account_specs[account].egress
            ref = egress.ca_bundle if egress is not None else None
            if ref is None:
                continue
            field = f"AnalysisProvider {account} spec.egress.caBundle (for spec.providers.{name}.providerRef)"
            if self.cfg.namespace is None:
                problems.append(
                    status.Problem(
                        R.CONFIGMAP_NOT_FOUND,
                        f"{field}: the operator does not know its namespace (ANALYSIS_OPERATOR_NAMESPACE is unset)",
                    )
                )
                return
            found = await self.kube.get(kube.CONFIGMAPS, self.cfg.namespace, ref.name)
            data = (found.data or {}) if found is not None else {}
            if ref.key not in data:
                what = "not found" if found is None else f"has no key {ref.key!r}"
                code = R.CONFIGMAP_NOT_FOUND if found is None else R.CONFIGMAP_KEY_NOT_FOUND
                problems.append(status.Problem(code, f"{field}: ConfigMap {self.cfg.namespace}/{ref.name} {what}"))
                return
            bundles[name] = str(data[ref.key])
        if bundles and bundles != self._ca_published:
            try:
                await self.kube.apply(_owned(builders.ca_bundle_configmap(batch, bundles), body))
            except kube.ApiError as exc:
                problems.append(
                    status.Problem(R.PUBLISH_FAILED, f"cannot write the CA bundle ConfigMap: {kube.describe(exc)}")
                )
                return
            self._ca_published = bundles

    async def _advance(
        self, batch: builders.Batch, body: kopf.Body, compiled: _Compiled
    ) -> tuple[producer.Snapshot, completion.BatchState]:
        """Seed, mirror flags, release, collect, seal; the snapshot and state after all that."""
        the_plan, spec = compiled.plan, compiled.spec
        names = [s.name for s in the_plan.stages]
        snapshot = await producer.snapshot(self.redis, batch.uid, names)
        if not snapshot.seeded:
            await producer.seed(self.redis, batch.uid, names, compiled.items)
            snapshot = await producer.snapshot(self.redis, batch.uid, names)
        if await self._retry_failed_if_asked(batch, body, the_plan, snapshot):
            # Re-run items are back in their stages and the sealed set is cleared:
            # deciding from the older snapshot could seal a stage they still have to reach.
            snapshot = await producer.snapshot(self.redis, batch.uid, names)
        state = completion.state(the_plan, snapshot, spec.failure_policy.max_failed_items)
        why = self._stop_claims_why(spec, state)
        if why and not snapshot.suspended:
            await producer.suspend(self.redis, batch.uid, why)
        elif not why and snapshot.suspended:
            await producer.resume(self.redis, batch.uid)
        over = snapshot.budget_exceeded
        if over and (the_plan.budget is None or the_plan.budget.exceeded(snapshot.usage) is None):
            await producer.clear_budget_exceeded(self.redis, batch.uid)  # the budget was raised
        acted = False
        for gate, items in the_plan.approvals.items():
            if snapshot.stages[gate].ready:
                following = the_plan.stage(gate).next
                gather = following is not None and the_plan.stage(following).collect
                acted |= await producer.release(self.redis, batch.uid, gate, following, items, gather=gather) > 0
        for stage in completion.collectable(the_plan, snapshot):
            acted |= await producer.collect(self.redis, batch.uid, stage) > 0
        if acted:
            snapshot = await producer.snapshot(self.redis, batch.uid, names)
        sealable = completion.sealable(the_plan, snapshot)
        for stage in sealable:
            await producer.seal(self.redis, batch.uid, stage)
        if sealable:
            snapshot = await producer.snapshot(self.redis, batch.uid, names)
        return snapshot, completion.state(the_plan, snapshot, spec.failure_policy.max_failed_items)

    def _stop_claims_why(self, spec: v1alpha1.AnalysisBatchSpec, state: completion.BatchState) -> str:
        """Why workers must not claim (the flag they read before each claim), or "" when they may."""
        if spec.suspend:
            return "spec.suspend"
        if self._gave_up is not None:
            return "the batch failed: its status cannot be written"
        if state.phase is completion.Phase.FAILED:
            return "the batch failed"
        if self._pending > self.cfg.results_max_pending:  # backpressure: the results sink is away or full
            return f"{self._pending} results wait for the results sink (at most {self.cfg.results_max_pending})"
        return ""

    async def _retry_failed_if_asked(
        self, batch: builders.Batch, body: kopf.Body, the_plan: plan.Plan, snapshot: producer.Snapshot
    ) -> bool:
        """The ``analysis.dev/retry-failed`` annotation: each new value re-runs failed and dead-lettered items once.

        True when it acted on a new value (the snapshot is then out of date).
        """
        token = (body["metadata"].get("annotations") or {}).get(wellknown.ANNOTATION_RETRY_FAILED)
        if not token or snapshot.retry_token == token:
            return False
        rerun = await producer.retry_failed(self.redis, batch.uid, [s.name for s in the_plan.stages])
        await producer.mark_retried(self.redis, batch.uid, token)
        kopf.info(body, reason=R.RETRY_FAILED, message=f"re-running {rerun} failed or dead-lettered items")
        return True

    # ---------------------------------------------------------------- 4. children

    async def _converge(
        self,
        batch: builders.Batch,
        body: kopf.Body,
        the_plan: plan.Plan,
        snapshot: producer.Snapshot,
        children: Children,
        *,
        stopping: bool,
        problems: list[status.Problem],
    ) -> None:
        run = snapshot.run
        for stage in the_plan.stages:
            if stage.provider is None:
                continue
            counts = snapshot.stages[stage.name]
            mine = [w for w in children.workloads if w.stage == stage.name]
            current = sum(w.size for w in mine if not w.complete)
            wanted = builders.sized(stage, counts, self.cfg.worker, stopping=stopping)
            # A Job stage that can still be fed keeps its pods: the Job controller delays every pod it makes again
            # after pods it lost (10 s, doubling per pod), so shrinking between a judge's rounds cost minutes.
            hold = stage.executor is v1alpha1.Executor.JOB and completion.may_be_fed(the_plan, snapshot, stage.name)
            size = self._stabilized(stage.name, wanted, current, stopping, hold=hold)
            name = builders.workload(batch, the_plan, stage, self.cfg.worker, size=size, run=run)["metadata"]["name"]
            observed = next((w for w in mine if w.name == name), None)
            try:
                await self._retire_workloads(
                    batch, [w for w in mine if w.name != name and w.kind == observed_kind(stage)]
                )
                if observed is not None and not observed.complete and not _finishing(stage, counts, snapshot):
                    size = await self._scale_in(batch, stage.name, observed, size, snapshot, children)
                desired = _owned(builders.workload(batch, the_plan, stage, self.cfg.worker, size=size, run=run), body)
                digest = _spec_hash(desired)
                desired["metadata"].setdefault("annotations", {})[ANNOTATION_SPEC_HASH] = digest
                if not self._wanted(stage, counts, snapshot, observed, size, digest):
                    continue
                await self.kube.apply(desired)
                self._applied[name] = digest
            except kube.ApiError as exc:  # retiring, scaling in or applying: the workload named is the one at stake
                problems.append(
                    status.Problem(R.WORKLOAD_APPLY_FAILED, f"{observed_kind(stage)} {name}: {kube.describe(exc)}")
                )

    def _stabilized(self, stage: str, size: int, current: int, stopping: bool, *, hold: bool = False) -> int:
        """Grow at once; shrink only after the stage wanted fewer pods for ``scale_down_delay_s``, never while
        ``hold`` (a Job stage that can still be fed).

        A judge loop sends items back and forth, so a stage's backlog dips and
        recovers within seconds; killing an idle worker and starting another a
        moment later costs a process start each time, and for a Job the Job
        controller's delay before it makes pods again (measured: 80 s after 4
        pods went, bench/scale_batches.py ``deep``). Stopping (suspend, a failed
        batch) shrinks at once.
        """
        now = time.monotonic()
        if stopping or size >= current:
            self._shrink_since.pop(stage, None)
            return size
        if hold:
            self._shrink_since.pop(stage, None)
            return current
        since = self._shrink_since.setdefault(stage, now)
        return size if now - since >= self.cfg.scale_down_delay_s else current

    def _wanted(
        self,
        stage: plan.StagePlan,
        counts: queue.StageCounts,
        snapshot: producer.Snapshot,
        observed: Workload | None,
        size: int,
        digest: str,
    ) -> bool:
        """Whether to apply the stage's workload now."""
        if observed is None:
            return size > 0  # made when the stage first has work; until then there is nothing to run
        if observed.complete:
            return False  # its pods finished the stage; a re-run gets a new Job (``run``)
        if _finishing(stage, counts, snapshot):
            return False  # its pods are exiting 0 on their own, which completes the Job
        return observed.spec_hash != digest and self._applied.get(observed.name) != digest

    async def _retire_workloads(self, batch: builders.Batch, stale: Sequence[Workload]) -> None:
        """Jobs of an older template or run: their pods hand back what they hold and go."""
        for workload in stale:
            resource = kube.JOBS if workload.kind == "Job" else kube.DEPLOYMENTS
            await self.kube.delete(resource, batch.namespace, workload.name)

    async def _scale_in(
        self,
        batch: builders.Batch,
        stage: str,
        observed: Workload,
        size: int,
        snapshot: producer.Snapshot,
        children: Children,
    ) -> int:
        """The size to apply, never stopping a pod that holds an item (``builders.scale_in``).

        A Job's idle pods are retired first (``producer.retire``: atomically,
        only while they hold nothing, and they never claim again), deleted,
        and only then is parallelism lowered by as many, so the Job controller
        has no active pod of its own choosing to delete. A pod retired before
        that is still there (a failed delete) is deleted again; the Job
        controller replaces it if the Job still wants it. A Deployment's busy
        pods get a high deletion cost before it shrinks, and its replicas never
        go below them.
        """
        held = snapshot.held.get(stage, {})
        retired = snapshot.retired.get(stage, frozenset())
        owned = observed.name if observed.kind == "Job" else ""
        pods = [p for p in children.pods if p.stage == stage and p.live and (not owned or p.owner == owned)]
        if observed.kind == "Deployment":
            shrunk = builders.scale_in(observed.kind, observed.size, size, [(p.name, p.started) for p in pods], held)
            if shrunk.size < observed.size:
                await self._protect_busy(batch, pods, held)
            return shrunk.size
        shrunk = builders.scale_in(
            observed.kind, observed.size, size, [(p.name, p.started) for p in pods], held, retired
        )
        confirmed = set(await producer.retire(self.redis, batch.uid, stage, shrunk.retire))
        for pod in pods:
            if pod.name in confirmed or pod.name in retired:
                await self.kube.delete(kube.PODS, batch.namespace, pod.name)
        return shrunk.size + len(set(shrunk.retire) - confirmed)

    async def _protect_busy(self, batch: builders.Batch, pods: Sequence[Pod], held: Mapping[str, int]) -> None:
        """Before a Deployment shrinks: busy workers get a high pod-deletion-cost, so idle ones go first."""
        for pod in pods:
            cost = BUSY_POD_COST if held.get(pod.name, 0) > 0 else "0"
            if pod.deletion_cost != cost:
                patch = {"metadata": {"annotations": {builders.ANNOTATION_DELETION_COST: cost}}}
                await self.kube.merge_patch(kube.PODS, batch.namespace, pod.name, patch)

    # ---------------------------------------------------------------- 5. results

    async def _export(
        self,
        batch: builders.Batch,
        body: kopf.Body,
        spec: v1alpha1.AnalysisBatchSpec,
        *,
        final: bool,
        problems: list[status.Problem],
    ) -> Mapping[str, Any] | None:
        """Append newly ended items to the results sink (``sinks.py``); returns ``status.results``.

        Runs every ``results_interval_s`` while items finish, and to the end
        before a finished batch reports so. The sink's cursor is derived from
        what it holds, so a restart or a failed write neither loses nor
        repeats rows. What it cannot write waits in Redis (``self._pending``):
        a condition says why, the next passes back off up to
        ``STORE_BACKOFF_S``, and claims pause once more than
        ``results_max_pending`` wait (``_advance``).
        """
        if self._diverged is not None:
            problems.append(self._diverged)
            return self._results
        sink = self._sink(batch, body, spec, problems)
        if sink is None:  # every ended item waits in Redis until the sink can be used
            self._pending = await producer.finals_length(self.redis, batch.uid)
            return self._results
        now = time.monotonic()
        if now < self._sink_retry_at or (not final and now < self._results_due):
            if self._sink_problem is not None:
                problems.append(self._sink_problem)
            if self._results is not None and self._results.get("sink") == sink.kind:
                # Between passes (and while a failing sink is backed off), what waits still counts every step:
                # claims pause as soon as it passes the cap, not at the next pass.
                self._pending = max(0, await producer.finals_length(self.redis, batch.uid) - sink.rows)
                self._results = {**self._results, "pending": self._pending}
            return self._results
        self._results_due = now + self.cfg.results_interval_s
        try:
            cursor, length, problem = await self._export_pass(batch, sink, final=final)
        except sinks.Diverged as exc:
            self._diverged = status.Problem(R.RESULTS_DIVERGED, str(exc))
            problems.append(self._diverged)
            return self._results
        self._sink_failures = self._sink_failures + 1 if problem is not None else 0
        delay = min(STORE_BACKOFF_S, 2.0**self._sink_failures) if self._sink_failures else 0.0
        self._sink_retry_at = time.monotonic() + delay
        self._sink_problem = problem
        if problem is not None:
            problems.append(problem)
        self._pending = max(0, length - cursor)
        self._results = {**sink.manifest(), "pending": self._pending}
        return self._results

    async def _export_pass(
        self, batch: builders.Batch, sink: sinks.Sink, *, final: bool
    ) -> tuple[int, int, status.Problem | None]:
        """One export pass: ``(cursor, length, why it stopped short)``; raises ``sinks.Diverged``."""
        try:
            cursor, length = await sinks.export_pass(
                sink, self.redis, batch.uid, final=final, replicas=self.cfg.redis_wait_replicas, seen=self._seen
            )
            return cursor, length, None
        except kube.ApiError as exc:
            if not kube.is_conflict(exc):
                raise
            sink.forget()  # another writer moved first: list again next pass
            problem = None
        except objectstore.StoreError as exc:
            # A wrong bucket or credential needs someone; an endpoint that does not answer may come back.
            problem = status.Problem(
                R.RESULTS_STORE_UNAVAILABLE,
                f"spec.results.sink: ObjectStore: {exc}; the results wait in Redis and the upload is retried",
                stalled=exc.setting != objectstore.ENDPOINT,
            )
        except sinks.Full as exc:
            problem = status.Problem(R.RESULTS_TOO_LARGE, f"spec.results.sink: ConfigMap: {exc}")
        except sinks.NotReplicated as exc:
            problem = status.Problem(R.REDIS_NOT_REPLICATED, f"{exc}; the results wait in Redis", stalled=False)
        return sink.rows, await producer.finals_length(self.redis, batch.uid), problem

    def _seen(self, rows: Sequence[Mapping[str, Any]]) -> None:
        if self._first_failure is None:
            self._first_failure = _first_failure(rows)

    def _sink(
        self, batch: builders.Batch, body: kopf.Body, spec: v1alpha1.AnalysisBatchSpec, problems: list[status.Problem]
    ) -> sinks.Sink | None:
        """The sink ``spec.results`` chooses (kept between passes), or None with a problem saying why not."""
        wanted = spec.results.sink if spec.results is not None else None
        store_settings = self.cfg.results_store
        kind = wanted or (v1alpha1.ResultsSink.OBJECT_STORE if store_settings else v1alpha1.ResultsSink.CONFIG_MAP)
        if kind is v1alpha1.ResultsSink.CONFIG_MAP:
            if kind not in self._sinks:
                retain = spec.results is None or spec.results.on_delete is v1alpha1.ResultsOnDelete.RETAIN
                # Retained results carry no owner, so that garbage collection leaves them when the batch goes.
                own: sinks.Own = (lambda chunk: chunk) if retain else functools.partial(_owned, owner=body)
                self._sinks[kind] = sinks.ConfigMapSink(self.kube, batch, own)
            return self._sinks[kind]
        if store_settings is None:
            problems.append(
                status.Problem(
                    R.RESULTS_STORE_UNAVAILABLE,
                    "spec.results.sink: ObjectStore, but this install has no results store (the operator's "
                    "chart value results.objectStore.bucket is not set); the results wait in Redis",
                )
            )
            return None
        try:
            store = objectstore.open_store(store_settings)
        except objectstore.StoreError as exc:
            problems.append(status.Problem(R.RESULTS_STORE_UNAVAILABLE, f"spec.results.sink: ObjectStore: {exc}"))
            return None
        known = self._sinks.get(kind)
        if not isinstance(known, sinks.ObjectStoreSink) or known.store is not store:
            self._sinks[kind] = sinks.ObjectStoreSink(store, batch)
        return self._sinks[kind]

    async def _find_first_failure(self, batch: builders.Batch) -> None:
        """For a Failed batch's message: the first failed row, read from the finals once when the export has
        not seen it (rows exported before an operator restart)."""
        if self._first_failure is not None or self._failures_scanned:
            return
        try:
            length = await producer.finals_length(self.redis, batch.uid)
            for start in range(0, length, sinks.EXPORT_PAGE):
                records = await producer.finals(self.redis, batch.uid, start, sinks.EXPORT_PAGE)
                self._first_failure = _first_failure([export.row(r) for r in records])
                if self._first_failure is not None:
                    break
        except queue.UNAVAILABLE:
            return
        self._failures_scanned = True

    # ---------------------------------------------------------------- 6. status

    async def _write_status(
        self, batch: builders.Batch, body: kopf.Body, previous: Mapping[str, Any], new: dict[str, Any]
    ) -> None:
        if status.essence(new) == status.essence(previous):
            return
        now = time.monotonic()
        if self._written is not None and now - self._written_at < self.cfg.status_interval_s:
            return  # the next step after the interval writes it (the newest by then)
        patch = {"status": {**{key: None for key in previous if key not in new}, **new}}
        try:
            await self.kube.merge_patch(kube.BATCHES.Status, batch.namespace, batch.name, patch)
        except kube.ApiError as exc:
            if not kube.is_refused(exc):
                raise  # a conflict, a throttle, a server away: the next step writes again
            self._refusals += 1
            self._refused_since = self._refused_since if self._refused_since is not None else now
            if self._refusals < STATUS_REFUSALS or now - self._refused_since < STATUS_REFUSED_S:
                raise
            await self._give_up(batch, body, previous, exc)
            return
        self._refusals, self._refused_since = 0, None
        self._written, self._written_at = new, now
        for event in status.events(previous, new):
            kopf.event(body, type=event.type, reason=event.reason, message=event.message)

    async def _give_up(
        self, batch: builders.Batch, body: kopf.Body, previous: Mapping[str, Any], exc: kube.ApiError
    ) -> None:
        """The API server keeps refusing the status: the batch fails, says why (a small status, an Event), and
        its workers stop. Terminal for this reconciler; an operator restart tries the full status once more."""
        held = time.monotonic() - (self._refused_since or time.monotonic())
        why = (
            f"the batch's status was refused {self._refusals} times in {held:.0f}s, so it cannot report progress "
            f"and stops: {kube.describe(exc)}"
        )[:4000]
        generation = int(body["metadata"].get("generation") or 1)
        minimal = status.unwritable(previous, generation, datetime.now(UTC), why)
        self._gave_up, self._written, self._written_at = why, minimal, time.monotonic()
        log.error(f"{batch.namespace}/{batch.name}: {why}")
        kopf.warn(body, reason=R.STATUS_WRITE_FAILED, message=why)
        with contextlib.suppress(*queue.UNAVAILABLE):
            await producer.suspend(self.redis, batch.uid, "the batch failed: its status cannot be written")
        cleared = {key: None for key in {*previous, *(body.get("status") or {})} if key not in minimal}
        try:
            await self.kube.merge_patch(
                kube.BATCHES.Status, batch.namespace, batch.name, {"status": {**cleared, **minimal}}
            )
        except kube.ERRORS as refused:
            log.error(f"{batch.namespace}/{batch.name}: not even the failed status was taken: {kube.describe(refused)}")


# ---------------------------------------------------------------- observation helpers


def _finishing(stage: plan.StagePlan, counts: queue.StageCounts, snapshot: producer.Snapshot) -> bool:
    """A Job-mode stage sealed and drained: its pods exit 0 on their own, which completes the Job; leave it be."""
    return stage.executor is v1alpha1.Executor.JOB and stage.name in snapshot.sealed and counts.drained


def observed_kind(stage: plan.StagePlan) -> str:
    """The kind of the workload ``stage`` runs as."""
    return "Deployment" if stage.executor is v1alpha1.Executor.DEPLOYMENT else "Job"


def _owned(obj: dict[str, Any], owner: kopf.Body) -> dict[str, Any]:
    """``obj`` with the batch as its controlling owner (garbage-collected with it); labels stay ours only.

    ``kopf.adopt`` would also copy the batch's labels, and a GitOps tool's
    tracking label on a child would make the tool think it owns (and prune) it.
    """
    kopf.append_owner_reference(obj, owner=owner)
    return obj


def _spec_hash(obj: Mapping[str, Any]) -> str:
    payload = {"spec": obj.get("spec"), "labels": obj["metadata"].get("labels")}
    return builders._digest(payload)


@functools.cache
def _price_table(override: str | None) -> pricing.PriceTable:
    """The table workers price calls with (the packaged one, the operator's override over it), parsed once."""
    return pricing.PriceTable.from_text(override, "the operator's price table")


def unpriced_budget(the_plan: plan.Plan, prices: pricing.PriceTable) -> list[status.Problem]:
    """A cost budget needs a price for every model the batch calls: an unpriced call would count as $0 against it."""
    if the_plan.budget is None or the_plan.budget.max_cost_nusd is None:
        return []
    called = sorted({stage.provider for stage in the_plan.stages if stage.provider is not None})
    missing = [
        f"spec.providers.{name}.model: {the_plan.providers[name].model}"
        for name in called
        if not prices.known(the_plan.providers[name].model)
    ]
    if not missing:
        return []
    return [
        status.Problem(
            R.UNPRICED_MODEL,
            f"{'; '.join(missing)}: no price in the operator's price table, so spec.budget.maxCostUSD cannot count "
            "its calls; add the model to the price table (the chart's prices value) or drop maxCostUSD",
        )
    ]


def quota_problems(the_plan: plan.Plan, snapshot: producer.Snapshot) -> list[status.Problem]:
    """Stages with work whose provider refused for quota or billing: they wait, and only someone can fix the account.

    The stage's workers pause it and probe the provider with backoff; the
    problem goes away with the pause, when a probe passes (or when nothing
    in the stage waits any more).
    """
    problems = []
    for stage in the_plan.stages:
        pause = snapshot.quota.get(stage.name)
        if pause is None or stage.provider is None or snapshot.stages[stage.name].drained:
            continue
        provider = the_plan.providers[stage.provider]
        since = datetime.fromtimestamp(pause.since_ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        what = f"access to model {pause.model}" if pause.model else "calls for quota or billing"
        problems.append(
            status.Problem(
                R.PROVIDER_QUOTA_EXHAUSTED,
                f"spec.providers.{stage.provider} ({provider.type}, model {provider.model}) refuses {what} since "
                f"{since}: {pause.message}. Stage {stage.name} is paused and probes the provider every "
                f"{pause.backoff_ms / 1000:g}s (doubling while it refuses); it resumes by itself once a probe passes",
            )
        )
    return problems


_GONE = Account("", -1, {})


def account_problems(
    spec: v1alpha1.AnalysisBatchSpec, namespace: str, known: Mapping[str, Account], problems: list[status.Problem]
) -> dict[str, v1alpha1.AnalysisProviderSpec]:
    """The AnalysisProviders the batch's ``providerRef``s name, by name; a missing or forbidden one is a problem.

    The batch waits with the condition until the account exists and admits
    its namespace; the next step after that compiles it.
    """
    used: dict[str, v1alpha1.AnalysisProviderSpec] = {}
    for name, provider in spec.providers.items():
        if provider.provider_ref is None:
            continue
        ref, field = provider.provider_ref.name, f"spec.providers.{name}.providerRef"
        found = known.get(ref)
        if found is None:
            problems.append(status.Problem(R.PROVIDER_NOT_FOUND, f"{field}: AnalysisProvider {ref} not found"))
            continue
        try:
            account = v1alpha1.AnalysisProviderSpec.model_validate(found.spec)
        except pydantic.ValidationError as exc:
            why = exc.errors()[0]["msg"]
            problems.append(status.Problem(R.PROVIDER_NOT_FOUND, f"{field}: AnalysisProvider {ref} is invalid: {why}"))
            continue
        if account.share(namespace) is None:
            admitted = ", ".join(n.name for n in account.namespaces)
            problems.append(
                status.Problem(
                    R.PROVIDER_NOT_ALLOWED,
                    f"{field}: AnalysisProvider {ref} does not admit namespace {namespace} (its spec.namespaces: "
                    f"{admitted}); ask the platform admin to add it",
                )
            )
            continue
        used[ref] = account
    return used


def account_members(batch: builders.Batch, the_plan: plan.Plan) -> dict[str, list[accounts.Member]]:
    """The batch's providers on shared accounts, by account, as the allocators grant to them."""
    out: dict[str, list[accounts.Member]] = {}
    for name, provider in the_plan.providers.items():
        if provider.account is None:
            continue
        timeouts = [s.timeout_seconds for s in the_plan.stages if s.provider == name]
        member = accounts.Member(
            batch.uid,
            batch.namespace,
            batch.name,
            name,
            provider.model,
            max(timeouts, default=plan.LEASE_S),
            provider.max_tokens,
        )
        out.setdefault(provider.account.name, []).append(member)
    return out


def account_quota_problems(
    the_plan: plan.Plan, snapshot: producer.Snapshot, registry: accounts.Registry
) -> list[status.Problem]:
    """Stages with work on an account the provider refuses for quota or billing: every batch on it waits."""
    problems = []
    for stage in the_plan.stages:
        provider = the_plan.providers.get(stage.provider or "")
        if provider is None or provider.account is None or snapshot.stages[stage.name].drained:
            continue
        quota = registry.quota(provider.account.name, provider.model)
        if quota is None:
            continue
        since = datetime.fromtimestamp(quota.since_ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        problems.append(
            status.Problem(
                R.PROVIDER_QUOTA_EXHAUSTED,
                f"spec.providers.{stage.provider} uses AnalysisProvider {provider.account.name} ({provider.type}, "
                f"model {provider.model}), which the provider refuses for quota or billing since {since}: "
                f"{quota.message}. Every batch on the account waits; the operator lets one probe call through every "
                f"{quota.backoff_s:g}s (doubling while refused) and resumes them all once one passes",
            )
        )
        break
    return problems


def account_held_elsewhere_problems(the_plan: plan.Plan, registry: accounts.Registry) -> list[status.Problem]:
    """Providers on an account another install holds: this install grants nothing on it, so their calls wait."""
    problems = []
    for name, provider in the_plan.providers.items():
        if provider.account is None:
            continue
        other = registry.elsewhere.get(provider.account.name)
        if other is None:
            continue
        problems.append(
            status.Problem(
                R.PROVIDER_SERVED_ELSEWHERE,
                f"spec.providers.{name}.providerRef: AnalysisProvider {provider.account.name} is held by the "
                f"operator install in {other}, which keeps its limit in its own Redis; an account serves one install "
                "at a time, so this batch's calls wait until that install lets go of it (or run the batch in a "
                "namespace that install watches)",
            )
        )
    return problems


def parse_items(text: str, ref: v1alpha1.ConfigMapKeyRef, problems: list[status.Problem]) -> list[str]:
    """A YAML or JSON list of ids, or one id per line."""
    field = f"spec.itemsFrom.configMapKeyRef (ConfigMap {ref.name}, key {ref.key})"
    try:
        loaded = yaml.safe_load(text)
    except yaml.YAMLError:
        loaded = None
    if isinstance(loaded, list):
        items = [str(item).strip() for item in loaded]
    else:
        items = [line.strip() for line in text.splitlines()]
    items = [item for item in items if item and not item.startswith("#")]
    if not items:
        problems.append(status.Problem(R.NO_ITEMS, f"{field}: lists no items"))
    elif len(set(items)) != len(items):
        problems.append(status.Problem(R.DUPLICATE_ITEMS, f"{field}: lists an item more than once"))
    elif any("/" in item for item in items):
        problems.append(status.Problem(R.INVALID_ITEMS, f"{field}: item ids cannot contain '/'"))
    return items


def _first_failure(rows: Sequence[Mapping[str, Any]]) -> str | None:
    for row in rows:
        if row.get("status") in ("failed", "dead"):
            error = f"{row.get('errorClass') or 'Error'}: {row.get('error') or ''}".strip()
            return f"first failure: {row.get('item')} in stage {row.get('stage')}: {error}"[:1000]
    return None


def _live_workers(children: Children) -> dict[str, int]:
    out: dict[str, int] = {}
    for pod in children.pods:
        if pod.live:
            out[pod.stage] = out.get(pod.stage, 0) + 1
    return out


def _job_failure(workload: Workload) -> status.Problem | None:
    if not workload.failed:
        return None
    return status.Problem(R.WORKERS_FAILED, f"Job {workload.name} gave up: {workload.failed}")


_SECRET_WORDS = ("secret", "Secret")
# (a Secret?, a key of it?) -> what a pod that cannot start for a missing object reports
_NOT_FOUND = {
    (True, True): R.SECRET_KEY_NOT_FOUND,
    (True, False): R.SECRET_NOT_FOUND,
    (False, True): R.CONFIGMAP_KEY_NOT_FOUND,
    (False, False): R.CONFIGMAP_NOT_FOUND,
}


def key_secrets(the_plan: plan.Plan) -> dict[str, str]:
    """The providers' key Secrets: Secret name -> the spec field that names it."""
    return {
        p.api_key_secret_ref.name: f"spec.providers.{name}.apiKeySecretRef"
        for name, p in the_plan.providers.items()
        if p.api_key_secret_ref is not None
    }


def pod_problems(the_plan: plan.Plan, children: Children) -> list[status.Problem]:
    """What the worker pods report that a person has to fix, named by the spec field behind it."""
    secrets = key_secrets(the_plan)
    out: dict[str, status.Problem] = {}
    for pod in children.pods:
        reason, message = pod.waiting_reason, pod.waiting_message
        if not reason or pod.deleting:
            continue
        if reason == "CreateContainerConfigError":
            field = next((f for name, f in secrets.items() if f'"{name}"' in message or f"/{name}" in message), None)
            secret = any(w in message for w in _SECRET_WORDS)
            missing_key = "couldn't find key" in message
            code = _NOT_FOUND[secret, missing_key]
            where = f"{field}: " if field else f"stage {pod.stage}: "
            out.setdefault(code, status.Problem(code, f"{where}{message}"))
        elif reason in ("ErrImagePull", "ImagePullBackOff", "InvalidImageName", "ErrImageNeverPull", "ImageNotLocal"):
            out.setdefault(
                R.WORKER_IMAGE_UNAVAILABLE,
                status.Problem(R.WORKER_IMAGE_UNAVAILABLE, f"stage {pod.stage}: {reason}: {message}"),
            )
        elif reason == "CrashLoopBackOff":
            out.setdefault(
                R.WORKERS_CRASHING, status.Problem(R.WORKERS_CRASHING, f"stage {pod.stage}: pod {pod.name}: {message}")
            )
    return list(out.values())


# ---------------------------------------------------------------- index summaries


def account_summary(body: kopf.Body) -> Account:
    """What a batch needs of an AnalysisProvider: its spec, and its generation to notice a change."""
    meta = body["metadata"]
    return Account(meta["name"], int(meta.get("generation") or 1), dict(body.get("spec") or {}))


def workload_summary(body: kopf.Body) -> Workload:
    """What the reconciler needs of a Job or Deployment (kept small: indexes live in memory)."""
    meta, spec, st = body["metadata"], body.get("spec") or {}, body.get("status") or {}
    kind = body.get("kind", "Job")
    conditions = {c.get("type"): c for c in st.get("conditions") or [] if c.get("status") == "True"}
    failed = conditions.get("Failed")
    return Workload(
        kind=kind,
        name=meta["name"],
        stage=(meta.get("labels") or {}).get(wellknown.LABEL_STAGE, ""),
        spec_hash=(meta.get("annotations") or {}).get(ANNOTATION_SPEC_HASH, ""),
        size=int(spec.get("parallelism" if kind == "Job" else "replicas") or 0),
        complete=kind == "Job" and "Complete" in conditions,
        failed="" if failed is None else f"{failed.get('reason', '')}: {failed.get('message', '')}",
    )


def pod_summary(body: kopf.Body) -> Pod:
    meta, st = body["metadata"], body.get("status") or {}
    waiting: Mapping[str, Any] = {}
    creating = False
    for container in st.get("containerStatuses") or []:
        state = container.get("state") or {}
        if "waiting" in state and state["waiting"].get("reason") not in (None, "ContainerCreating", "PodInitializing"):
            waiting = state["waiting"]
        creating = creating or (state.get("waiting") or {}).get("reason") == "ContainerCreating"
    created = meta.get("creationTimestamp")
    return Pod(
        name=meta["name"],
        stage=(meta.get("labels") or {}).get(wellknown.LABEL_STAGE, ""),
        phase=str(st.get("phase") or "Pending"),
        deleting=bool(meta.get("deletionTimestamp")),
        waiting_reason=str(waiting.get("reason") or ""),
        waiting_message=str(waiting.get("message") or ""),
        deletion_cost=(meta.get("annotations") or {}).get(builders.ANNOTATION_DELETION_COST),
        owner=next((str(ref.get("name", "")) for ref in meta.get("ownerReferences") or []), ""),
        creating_since=_epoch(created) if creating and created else None,
    )


def _epoch(timestamp: str) -> float:
    return datetime.fromisoformat(timestamp).timestamp()


def mount_problem(message: str, secrets: Mapping[str, str], stage: str) -> status.Problem | None:
    """What a kubelet's FailedMount message about a worker pod means for the person who wrote the spec.

    ``secrets``: Secret name -> the spec field that names it. A Secret mounted as files (the API key, the
    Redis credential) that is missing stops the pod before it starts, with only an Event to say so.
    """
    found = re.search(r'secret "([^"]+)" not found', message)
    missing_key = "non-existent secret key" in message or "couldn't find key" in message
    if found is None and not missing_key:
        return None
    name = found.group(1) if found else next((n for n in secrets if f'"{n}"' in message or f"/{n}" in message), "")
    field = secrets.get(name)
    code = _NOT_FOUND[True, missing_key]
    where = f"{field}: " if field else f"stage {stage}: "
    return status.Problem(code, f"{where}{message}")
