"""The provider plug point: what the worker asks of any LLM endpoint.

The worker renders a prompt into a ``Request``, awaits ``Provider.complete``
under the stage's deadline, and gets a ``Completion`` with the text and the
token usage, or a ``ProviderError`` (from ``analysis_core.errors``) that says
which class of failure it was and, for rate limits, how long to wait.
Implementations hold one async SDK client each, made once and closed with
``aclose``; they never retry on their own (SDK ``max_retries=0``): the queue's
retry policy is the only one.
"""

from __future__ import annotations

import dataclasses
import enum
import ssl
from typing import Any, Protocol

from analysis_core import pricing


class OutputKind(enum.StrEnum):
    TEXT = "text"
    JSON = "json"
    VERDICT = "verdict"  # a judge's {"approved": bool, "feedback": str, "score": float}


@dataclasses.dataclass(frozen=True)
class FanOutHint:
    """Where the stage expects a list in its JSON output (``spec.stages[].fanOut``)."""

    path: str  # "$" or "$.a.b"
    key: str | None = None
    sort_by: str | None = None


@dataclasses.dataclass(frozen=True)
class Request:
    prompt: str
    max_tokens: int
    timeout_seconds: float  # the stage's timeoutSeconds
    output: OutputKind = OutputKind.TEXT
    temperature: float | None = None
    system: str | None = None
    # Who asks: the offline provider derives its answer from these; real providers ignore them.
    item: str = ""
    stage: str = ""
    round: int = 0
    attempt: int = 1
    json_schema: dict[str, Any] | None = None
    fan_out: FanOutHint | None = None
    # How many characters at the start of the prompt every item of the stage shares (templates.split): a provider
    # that caches on request (Anthropic) marks them for its prompt cache; 0: nothing shared.
    cache_prefix: int = 0


@dataclasses.dataclass(frozen=True)
class RateLimitState:
    """What the provider's rate-limit headers said; lets the limiter pause before a 429."""

    requests_remaining: int | None = None
    tokens_remaining: int | None = None
    reset_after_s: float | None = None  # until the exhausted quota refills


@dataclasses.dataclass(frozen=True)
class Completion:
    text: str
    input_tokens: int  # every prompt token, cached or not (providers count differently; the adapters add up)
    output_tokens: int
    model: str
    request_id: str | None = None
    rate_limit: RateLimitState | None = None
    cache_write_tokens: int = 0  # of input_tokens: written to the provider's prompt cache
    cache_read_tokens: int = 0  # of input_tokens: read from it

    @property
    def tokens(self) -> pricing.Tokens:
        """The call's tokens as the price table counts them (input: the prompt tokens the cache had no part in)."""
        cached = self.cache_write_tokens + self.cache_read_tokens
        return pricing.Tokens(
            max(0, self.input_tokens - cached), self.output_tokens, self.cache_write_tokens, self.cache_read_tokens
        )


@dataclasses.dataclass(frozen=True)
class Egress:
    """How a provider account's gateway is reached: a proxy, and CA certificates to trust besides the usual ones."""

    proxy_url: str | None = None
    ca_file: str | None = None  # PEM certificates (the account's caBundle, mounted by the operator)

    def client_options(self) -> dict[str, Any]:
        """Keyword arguments of the SDKs' ``DefaultAsyncHttpxClient`` (their own defaults, plus these)."""
        options: dict[str, Any] = {}
        if self.proxy_url:
            options["proxy"] = self.proxy_url
        if self.ca_file:
            # The system's certificates, which the SDKs trust by default, and the account's on top.
            context = ssl.create_default_context()
            context.load_verify_locations(cafile=self.ca_file)
            options["verify"] = context
        return options


class Provider(Protocol):
    """One configured endpoint (type, model, key, base URL)."""

    @property
    def model(self) -> str: ...

    async def complete(self, request: Request) -> Completion:
        """One call; raises ``ProviderError`` on any failure."""
        ...

    async def aclose(self) -> None: ...
