"""The execution plan: an AnalysisBatch spec compiled into what workers run.

The operator compiles the spec (``compile_plan``), publishes the plan as JSON
in a ConfigMap, and every worker reads it at start (``Plan.load``). The plan
resolves what the spec leaves implicit: prompts read from ConfigMaps, the
stage that follows each stage, defaults of judge-only fields, retry policy in
seconds, the rate-limit window. It carries no secrets: a provider names the
Secret key that the operator maps into the worker's environment.

This module is pure (no Redis, no Kubernetes); it does not validate what the
CRD schema already guarantees.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pydantic

from analysis_core import errors
from analysis_core.api import v1alpha1

PLAN_VERSION = 1


class _Frozen(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(frozen=True, extra="forbid")


class ProviderPlan(_Frozen):
    type: v1alpha1.ProviderType
    model: str
    base_url: str | None = None
    max_tokens: int = 4096
    temperature: float | None = None
    api_key_secret: v1alpha1.SecretKeyRef | None = None
    offline: v1alpha1.OfflineOptions | None = None


class RateLimitPlan(_Frozen):
    requests: int | None = None
    tokens: int | None = None
    window_s: float = 60.0


class RetryPlan(_Frozen):
    max_attempts: int = 3
    initial_s: float = 2.0
    factor: float = 2.0
    max_s: float = 300.0
    jitter: float = 0.2
    deadline_s: float | None = None

    def policy(self) -> errors.RetryPolicy:
        return errors.RetryPolicy(**self.model_dump())


class StagePlan(_Frozen):
    name: str
    index: int
    type: v1alpha1.StageType
    provider: str | None = None
    prompt: str | None = None
    output: v1alpha1.OutputFormat = v1alpha1.OutputFormat.TEXT
    json_schema: dict[str, Any] | None = None
    fan_out: v1alpha1.FanOut | None = None
    collect: bool = False
    reviews: str | None = None
    max_rejections: int = 3
    on_exhausted: v1alpha1.OnExhausted = v1alpha1.OnExhausted.FAIL
    concurrency: int = 4
    rate_limit: RateLimitPlan | None = None
    timeout_s: float = 300.0
    retry: RetryPlan = RetryPlan()
    executor: v1alpha1.Executor = v1alpha1.Executor.JOB
    next: str | None = None  # the stage that receives this stage's output


class Plan(_Frozen):
    version: int = PLAN_VERSION
    uid: str
    generation: int = 1
    providers: dict[str, ProviderPlan]
    stages: list[StagePlan]
    vars: dict[str, str] = {}
    # How often a message may be delivered before it is dead-lettered.
    max_deliveries: int = 5
    # The lease (visibility timeout); workers renew it at a third of this while a call runs.
    lease_s: float = 30.0

    def stage(self, name: str) -> StagePlan:
        for stage in self.stages:
            if stage.name == name:
                return stage
        raise KeyError(f"the plan has no stage {name!r} (stages: {', '.join(s.name for s in self.stages)})")

    def dumps(self) -> str:
        return self.model_dump_json(exclude_none=True)

    @classmethod
    def loads(cls, text: str) -> Plan:
        return cls.model_validate(json.loads(text))

    @classmethod
    def load(cls, path: Path) -> Plan:
        return cls.loads(path.read_text(encoding="utf-8"))


def compile_plan(
    uid: str,
    spec: v1alpha1.AnalysisBatchSpec,
    *,
    generation: int = 1,
    prompts: Mapping[str, str] | None = None,
) -> Plan:
    """The plan of ``spec``; ``prompts`` holds the text of each stage's ``promptFrom``, read by the caller."""
    prompts = prompts or {}
    providers = {
        name: ProviderPlan(
            type=p.type,
            model=p.model or "offline",
            base_url=p.base_url,
            max_tokens=p.max_tokens,
            temperature=p.temperature,
            api_key_secret=p.api_key_secret_ref,
            offline=p.offline or (v1alpha1.OfflineOptions() if p.type is v1alpha1.ProviderType.OFFLINE else None),
        )
        for name, p in spec.providers.items()
    }
    stages = []
    for index, s in enumerate(spec.stages):
        backoff = s.retry.backoff
        stages.append(
            StagePlan(
                name=s.name,
                index=index,
                type=s.type,
                provider=s.provider,
                prompt=s.prompt if s.prompt is not None else prompts.get(s.name),
                output=s.output,
                json_schema=s.json_schema,
                fan_out=s.fan_out,
                collect=s.collect,
                reviews=s.reviews,
                max_rejections=3 if s.max_rejections is None else s.max_rejections,
                on_exhausted=s.on_exhausted or v1alpha1.OnExhausted.FAIL,
                concurrency=s.concurrency,
                rate_limit=None
                if s.rate_limit is None
                else RateLimitPlan(requests=s.rate_limit.requests_per_minute, tokens=s.rate_limit.tokens_per_minute),
                timeout_s=float(s.timeout_seconds),
                retry=RetryPlan(
                    max_attempts=s.retry.max_attempts,
                    initial_s=backoff.initial_seconds,
                    factor=backoff.factor,
                    max_s=backoff.max_seconds,
                    jitter=backoff.jitter,
                    deadline_s=None if s.retry.deadline_seconds is None else float(s.retry.deadline_seconds),
                ),
                executor=s.executor,
                next=spec.stages[index + 1].name if index + 1 < len(spec.stages) else None,
            )
        )
    return Plan(uid=uid, generation=generation, providers=providers, stages=stages, vars=dict(spec.vars or {}))
