"""The Anthropic Messages API behind ``base.Provider``.

The worker (through ``providers.build()``) makes one ``AnthropicProvider`` per
configured endpoint, calls ``complete()`` once per item attempt and
``aclose()`` at shutdown. Each call is one ``POST /v1/messages`` with the
prompt as the single user message; the answer's text, token usage, request id
and rate-limit headers come back as a ``base.Completion``.

Every failure leaves as ``analysis_core.errors.ProviderError`` with the SDK's
exception chained; a refusal for credit or billing, which the API sends as a
400 ``invalid_request_error`` told apart only by its message, is
``QuotaExhausted`` (``_http.anthropic_quota``), as are billing errors and a
403 for the model. It deliberately does not retry (``max_retries=0``: the
queue's policy is the only one), stream, use tools, look at the prompt, or
send ``request.temperature`` (the current API version refuses sampling
parameters). The part of the prompt every item of the stage shares
(``request.cache_prefix``) goes as a text block of its own marked
``cache_control``, so that the API caches it and later calls read it at a
tenth of the input price. The API key goes to the SDK and nowhere else: never into a
message or a log.

``request.timeout_seconds`` is the SDK's httpx2 timeout, which bounds each phase
(connect, each read) rather than the whole call; the worker's deadline
around ``complete()`` bounds the total.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import Any

import anthropic

from analysis_core import errors
from analysis_worker.providers import _http, base, batches

# The HTTP status each error type of the API comes with: an errored request of a batch carries only the type.
_ERROR_STATUSES = {
    "invalid_request_error": 400,
    "authentication_error": 401,
    "billing_error": 402,
    "permission_error": 403,
    "not_found_error": 404,
    "request_too_large": 413,
    "rate_limit_error": 429,
    "api_error": 500,
    "overloaded_error": 529,
}


class AnthropicProvider:
    """One Anthropic endpoint (model, key, optional base URL) with its own async client."""

    def __init__(
        self,
        *,
        model: str,
        api_key: str,
        base_url: str | None = None,
        strict_validation: bool = False,
        egress: base.Egress | None = None,
    ) -> None:
        if not api_key:
            # An empty key would let the SDK go looking for credentials in the
            # environment and in profiles on disk; a worker must use what it was given.
            raise ValueError("AnthropicProvider needs a non-empty api_key")
        self._model = model
        self._api_key = api_key
        self._client = anthropic.AsyncAnthropic(
            api_key=api_key,
            base_url=base_url,
            max_retries=0,
            _strict_response_validation=strict_validation,
            http_client=None if egress is None else anthropic.DefaultAsyncHttpxClient(**egress.client_options()),
        )

    @property
    def model(self) -> str:
        return self._model

    async def aclose(self) -> None:
        await self._client.close()

    def params(self, request: base.Request) -> dict[str, Any]:
        """The Messages API's parameters for ``request``: a call's, and a provider batch request's ``params``."""
        # request.temperature is dropped on purpose: API version 2026-10-21
        # (what anthropic 2.x sends) rejects temperature/top_p/top_k with a 400
        # even at their defaults, and the SDK no longer accepts the argument.
        params: dict[str, Any] = {
            "model": self._model,
            "max_tokens": request.max_tokens,
            "messages": [anthropic.types.UserMessageParam(role="user", content=_content(request))],
        }
        if request.system is not None:
            params["system"] = request.system
        return params

    async def complete(self, request: base.Request) -> base.Completion:
        try:
            raw = await self._client.messages.with_raw_response.create(
                # An explicit timeout also disables the SDK's client-side
                # "streaming is required" refusal for large max_tokens.
                timeout=request.timeout_seconds,
                **self.params(request),
            )
        except anthropic.AnthropicError as exc:
            raise self._error(exc) from exc
        except Exception as exc:
            raise errors.ProviderError(errors.ErrorClass.UNKNOWN, self._describe(exc)) from exc

        request_id = raw.headers.get("request-id")
        try:
            message = await raw.parse()
        except anthropic.AnthropicError as exc:
            raise self._error(exc) from exc
        except ValueError as exc:  # json.JSONDecodeError: a malformed or cut-off body
            raise errors.ProviderError(
                errors.ErrorClass.BAD_OUTPUT, self._describe(exc), status=raw.status_code, request_id=request_id
            ) from exc
        return self.completion(
            message, status=raw.status_code, request_id=request_id, rate_limit=_http.anthropic_rate_limit(raw.headers)
        )

    def completion(
        self,
        message: object,
        *,
        status: int | None = None,
        request_id: str | None = None,
        rate_limit: base.RateLimitState | None = None,
    ) -> base.Completion:
        """A ``Message`` (a call's answer, or a provider batch's succeeded result) as a ``Completion``."""
        # Without strict validation the SDK hands back whatever it could read
        # (even a bare string), so check the shape here rather than trust it.
        if not isinstance(message, anthropic.types.Message):
            raise errors.ProviderError(
                errors.ErrorClass.BAD_OUTPUT,
                f"expected a message, got {type(message).__name__}",
                status=status,
                request_id=request_id,
            )
        try:
            text = "".join(block.text for block in message.content if block.type == "text")
            # input_tokens leaves out what the cache wrote and read: the prompt is all three.
            cache_write = int(message.usage.cache_creation_input_tokens or 0)
            cache_read = int(message.usage.cache_read_input_tokens or 0)
            input_tokens = int(message.usage.input_tokens) + cache_write + cache_read
            output_tokens = int(message.usage.output_tokens)
        except (AttributeError, TypeError, ValueError) as exc:
            raise errors.ProviderError(
                errors.ErrorClass.BAD_OUTPUT, self._describe(exc), status=status, request_id=request_id
            ) from exc
        if not text:
            raise errors.ProviderError(
                errors.ErrorClass.BAD_OUTPUT,
                f"no text content (stop_reason={message.stop_reason})",
                status=status,
                request_id=request_id,
            )
        return base.Completion(
            text=text,
            input_tokens=input_tokens,
            output_tokens=output_tokens,
            model=message.model or self._model,
            request_id=request_id,
            rate_limit=rate_limit,
            cache_write_tokens=cache_write,
            cache_read_tokens=cache_read,
        )

    # ---------------------------------------------------------------- Message Batches (batches.BatchProvider)

    async def submit_batch(self, requests: Sequence[tuple[str, base.Request]], tag: str) -> str:
        entries = [{"custom_id": custom_id, "params": self.params(request)} for custom_id, request in requests]
        try:
            created = await self._client.messages.batches.create(requests=entries)  # type: ignore[arg-type]
        except anthropic.AnthropicError as exc:
            raise self._error(exc) from exc
        return created.id

    async def find_batch(self, tag: str) -> str | None:
        return None  # a message batch keeps no metadata to find it by

    async def forget_unsubmitted(self, tag: str) -> None:
        return None  # a message batch is created in one request: nothing is left of one never created

    async def batch_progress(self, batch_id: str) -> batches.Progress:
        try:
            batch = await self._client.messages.batches.retrieve(batch_id)
        except anthropic.AnthropicError as exc:
            raise self._error(exc) from exc
        counts = batch.request_counts
        done = counts.succeeded + counts.errored + counts.canceled + counts.expired
        return batches.Progress(
            batch.id, batch.processing_status, batch.processing_status == "ended", done + counts.processing, done
        )

    async def batch_results(self, batch_id: str) -> AsyncIterator[batches.Result]:
        try:
            lines = await self._client.messages.batches.results(batch_id)
            async for line in lines:
                yield self._result(line)
        except anthropic.AnthropicError as exc:
            raise self._error(exc) from exc

    def _result(self, line: anthropic.types.messages.MessageBatchIndividualResponse) -> batches.Result:
        result = line.result
        if result.type == "succeeded":
            try:
                return batches.Result(line.custom_id, completion=self.completion(result.message))
            except errors.ProviderError as exc:
                return batches.Result(line.custom_id, error=exc)
        if result.type == "errored":
            error = result.error.error
            status = _ERROR_STATUSES.get(error.type, 500)
            message = _http.redact(f"{error.type}: {error.message}", self._api_key)
            quota = _http.anthropic_quota(status, error.type, None, error.message, self._model)
            failure = _http.status_error(status, {}, message=message, request_id=None, rate_limit=None, quota=quota)
            return batches.Result(line.custom_id, error=failure)
        return batches.expired(line.custom_id) if result.type == "expired" else batches.canceled(line.custom_id)

    async def cancel_batch(self, batch_id: str) -> None:
        try:
            await self._client.messages.batches.cancel(batch_id)
        except anthropic.AnthropicError as exc:
            raise self._error(exc) from exc

    async def forget_batch(self, batch_id: str) -> None:
        try:
            await self._client.messages.batches.delete(batch_id)
        except anthropic.NotFoundError:
            return
        except anthropic.AnthropicError as exc:
            raise self._error(exc) from exc

    def _describe(self, exc: BaseException) -> str:
        return _http.describe(exc, self._api_key)

    def _error(self, exc: anthropic.AnthropicError) -> errors.ProviderError:
        """Classify an SDK exception; the caller chains it."""
        if isinstance(exc, anthropic.APIStatusError):
            headers = exc.response.headers
            detail = exc.api_message if exc.api_message is not None else str(exc)
            return _http.status_error(
                exc.status_code,
                headers,
                message=_http.redact(f"{type(exc).__name__} ({exc.type}): {detail}", self._api_key),
                request_id=exc.request_id,
                rate_limit=_http.anthropic_rate_limit(headers),
                quota=_http.anthropic_quota(exc.status_code, exc.type, exc.error_code, detail, self._model),
            )
        return _http.transport_error(exc, anthropic, api_key=self._api_key, request_id_header="request-id")


def _content(request: base.Request) -> str | list[anthropic.types.TextBlockParam]:
    """The user message: the prompt, with its shared prefix as a block of its own for the prompt cache."""
    shared = request.prompt[: request.cache_prefix]
    if not shared:
        return request.prompt
    blocks: list[anthropic.types.TextBlockParam] = [
        {"type": "text", "text": shared, "cache_control": {"type": "ephemeral"}}
    ]
    if len(request.prompt) > len(shared):
        blocks.append({"type": "text", "text": request.prompt[len(shared) :]})
    return blocks
