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

from typing import Any

import anthropic

from analysis_core import errors
from analysis_worker.providers import _http, base


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

    async def complete(self, request: base.Request) -> base.Completion:
        # request.temperature is dropped on purpose: API version 2026-10-21
        # (what anthropic 2.x sends) rejects temperature/top_p/top_k with a 400
        # even at their defaults, and the SDK no longer accepts the argument.
        optional: dict[str, Any] = {}
        if request.system is not None:
            optional["system"] = request.system
        try:
            raw = await self._client.messages.with_raw_response.create(
                model=self._model,
                max_tokens=request.max_tokens,
                messages=[anthropic.types.UserMessageParam(role="user", content=_content(request))],
                # An explicit timeout also disables the SDK's client-side
                # "streaming is required" refusal for large max_tokens.
                timeout=request.timeout_seconds,
                **optional,
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

        # Without strict validation the SDK hands back whatever it could read
        # (even a bare string), so check the shape here rather than trust it.
        if not isinstance(message, anthropic.types.Message):
            raise errors.ProviderError(
                errors.ErrorClass.BAD_OUTPUT,
                f"expected a message, got {type(message).__name__}",
                status=raw.status_code,
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
                errors.ErrorClass.BAD_OUTPUT, self._describe(exc), status=raw.status_code, request_id=request_id
            ) from exc
        if not text:
            raise errors.ProviderError(
                errors.ErrorClass.BAD_OUTPUT,
                f"no text content (stop_reason={message.stop_reason})",
                status=raw.status_code,
                request_id=request_id,
            )
        return base.Completion(
            text=text,
            input_tokens=input_tokens,
            output_tokens=output_tokens,
            model=message.model or self._model,
            request_id=request_id,
            rate_limit=_http.anthropic_rate_limit(raw.headers),
            cache_write_tokens=cache_write,
            cache_read_tokens=cache_read,
        )

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
