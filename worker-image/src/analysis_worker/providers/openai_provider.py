"""The OpenAI Chat Completions API behind ``base.Provider``.

The worker (through ``providers.build()``) makes one ``OpenAIProvider`` per
configured endpoint (OpenAI itself or any server speaking its wire format, via
``base_url`` ending in ``/v1``), calls ``complete()`` once per item attempt and
``aclose()`` at shutdown. Each call is one ``POST {base_url}/chat/completions``
with an optional system message and the prompt as the user message; the
answer's text, token usage, request id and rate-limit headers come back as a
``base.Completion``.

Every failure leaves as ``analysis_core.errors.ProviderError`` with the SDK's
exception chained; ``insufficient_quota`` (a 429 that no wait lifts) and a
403 for the model are ``QuotaExhausted`` (``_http.openai_quota``). It
deliberately does not retry (``max_retries=0``: the queue's policy is the only
one), stream, use tools, or ask for more than one choice. The API key goes to
the SDK and nowhere else: never into a message or a log.

The output cap goes as ``max_completion_tokens``: ``max_tokens`` is
deprecated, and the reasoning models (the o-series, gpt-5) refuse it with a
400. Those models also refuse sampling parameters, so ``temperature`` is left
out for them (:func:`refuses_sampling`).

``request.timeout_seconds`` is the SDK's httpx2 timeout, which bounds each phase
(connect, each read) rather than the whole call; the worker's deadline
around ``complete()`` bounds the total.
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import AsyncIterator, Sequence
from typing import Any, Final

import openai

from analysis_core import errors
from analysis_worker.providers import _http, base, batches

BATCH_ENDPOINT: Final = "/v1/chat/completions"  # what the provider batches of this adapter run
# Model families that reason before answering and accept only the default sampling (o1, o3-mini, o4-mini, gpt-5...).
_REASONING_MODEL = re.compile(r"^(o\d|gpt-5)(\b|[-.])")


# A batch that failed validation with this code was refused for the organization's enqueued-token limit.
QUEUE_FULL_CODE = "token_limit_exceeded"


def _input_name(tag: str) -> str:
    """The name of a provider batch's input file: its tag's."""
    return f"{tag}.jsonl"


def refuses_sampling(model: str) -> bool:
    """Whether ``model`` is one of OpenAI's reasoning models, which reject ``temperature`` and the like."""
    return _REASONING_MODEL.match(model) is not None


class OpenAIProvider:
    """One OpenAI-compatible endpoint (model, key, optional base URL) with its own async client."""

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
            # An empty key would let the SDK fall back on OPENAI_API_KEY; a
            # worker must use what it was given.
            raise ValueError("OpenAIProvider needs a non-empty api_key")
        self._model = model
        self._api_key = api_key
        self._client = openai.AsyncOpenAI(
            api_key=api_key,
            base_url=base_url,
            max_retries=0,
            _strict_response_validation=strict_validation,
            http_client=None if egress is None else openai.DefaultAsyncHttpxClient(**egress.client_options()),
        )
        # The SDK loads its resources on first use: load them now, so the first call goes out as soon after its
        # grant as the others (a provider account's window allows for a short delay only).
        _ = self._client.chat.completions

    @property
    def model(self) -> str:
        return self._model

    async def aclose(self) -> None:
        await self._client.close()

    def body(self, request: base.Request) -> dict[str, Any]:
        """The Chat Completions parameters for ``request``: a call's, and a provider batch request's ``body``."""
        messages: list[openai.types.chat.ChatCompletionMessageParam] = []
        if request.system is not None:
            messages.append({"role": "system", "content": request.system})
        messages.append({"role": "user", "content": request.prompt})
        body: dict[str, Any] = {"model": self._model, "messages": messages, "max_completion_tokens": request.max_tokens}
        if request.temperature is not None and not refuses_sampling(self._model):
            body["temperature"] = request.temperature
        return body

    async def complete(self, request: base.Request) -> base.Completion:
        try:
            raw = await self._client.chat.completions.with_raw_response.create(
                timeout=request.timeout_seconds, **self.body(request)
            )
        except openai.OpenAIError as exc:
            raise self._error(exc) from exc
        except Exception as exc:
            raise errors.ProviderError(errors.ErrorClass.UNKNOWN, self._describe(exc)) from exc

        request_id = raw.headers.get("x-request-id")
        try:
            # Chat completions' raw response is the SDK's "legacy" kind: parse() is synchronous here.
            completion = raw.parse()
        except openai.OpenAIError as exc:
            raise self._error(exc) from exc
        except ValueError as exc:  # json.JSONDecodeError: a malformed or cut-off body
            raise errors.ProviderError(
                errors.ErrorClass.BAD_OUTPUT, self._describe(exc), status=raw.status_code, request_id=request_id
            ) from exc
        return self.completion(
            completion, status=raw.status_code, request_id=request_id, rate_limit=_http.openai_rate_limit(raw.headers)
        )

    def completion(
        self,
        completion: object,
        *,
        status: int | None = None,
        request_id: str | None = None,
        rate_limit: base.RateLimitState | None = None,
    ) -> base.Completion:
        """A ``ChatCompletion`` (a call's answer, or a provider batch's response body) as a ``Completion``."""
        # Without strict validation the SDK hands back whatever it could read
        # (even a bare string), so check the shape here rather than trust it.
        if not isinstance(completion, openai.types.chat.ChatCompletion):
            raise errors.ProviderError(
                errors.ErrorClass.BAD_OUTPUT,
                f"expected a chat completion, got {type(completion).__name__}",
                status=status,
                request_id=request_id,
            )
        try:
            choice = completion.choices[0] if completion.choices else None
            text = choice.message.content if choice is not None else None
            refusal = choice.message.refusal if choice is not None else None
            usage = completion.usage
            # usage is optional in the schema; a missing one is counted as zero, not as a failed (paid) call.
            input_tokens = int(usage.prompt_tokens) if usage is not None else 0
            output_tokens = int(usage.completion_tokens) if usage is not None else 0
            # prompt_tokens counts the cached ones too; OpenAI writes its cache by itself, at no extra charge.
            details = usage.prompt_tokens_details if usage is not None else None
            cache_read = int(details.cached_tokens or 0) if details is not None else 0
        except (AttributeError, TypeError, ValueError) as exc:
            raise errors.ProviderError(
                errors.ErrorClass.BAD_OUTPUT, self._describe(exc), status=status, request_id=request_id
            ) from exc
        if not text:
            reason = f"refused: {refusal}" if refusal else f"finish_reason={choice.finish_reason if choice else None}"
            raise errors.ProviderError(
                errors.ErrorClass.BAD_OUTPUT,
                _http.redact(f"no text content ({reason})", self._api_key),
                status=status,
                request_id=request_id,
            )
        return base.Completion(
            text=text,
            input_tokens=input_tokens,
            output_tokens=output_tokens,
            model=completion.model or self._model,
            request_id=request_id,
            rate_limit=rate_limit,
            cache_read_tokens=min(cache_read, input_tokens),
        )

    # ---------------------------------------------------------------- the Batch API (batches.BatchProvider)

    async def submit_batch(self, requests: Sequence[tuple[str, base.Request]], tag: str) -> str:
        lines = (
            json.dumps({"custom_id": custom_id, "method": "POST", "url": BATCH_ENDPOINT, "body": self.body(request)})
            for custom_id, request in requests
        )
        data = "".join(line + "\n" for line in lines).encode()
        try:
            # Named by the tag, so that a file a stopped worker uploaded and never used is found and deleted.
            uploaded = await self._client.files.create(file=(_input_name(tag), data), purpose="batch")
        except openai.OpenAIError as exc:
            raise self._error(exc) from exc
        try:
            created = await self._client.batches.create(
                input_file_id=uploaded.id,
                endpoint=BATCH_ENDPOINT,
                completion_window="24h",
                metadata={batches.TAG_KEY: tag},
            )
        except openai.OpenAIError as exc:
            failure = self._error(exc)
            if failure.status is not None:  # refused: no batch holds the file, whose lines are the prompts
                with contextlib.suppress(openai.OpenAIError):
                    await self._client.files.delete(uploaded.id)
            raise failure from exc
        return created.id

    async def forget_unsubmitted(self, tag: str) -> None:
        try:
            async for made in self._client.files.list(purpose="batch"):
                if made.filename == _input_name(tag):
                    await self._client.files.delete(made.id)
        except openai.OpenAIError as exc:
            raise self._error(exc) from exc

    async def find_batch(self, tag: str) -> str | None:
        try:
            async for batch in self._client.batches.list(limit=100):
                if (batch.metadata or {}).get(batches.TAG_KEY) == tag:
                    return batch.id
        except openai.OpenAIError as exc:
            raise self._error(exc) from exc
        return None

    async def batch_progress(self, batch_id: str) -> batches.Progress:
        try:
            batch = await self._client.batches.retrieve(batch_id)
        except openai.OpenAIError as exc:
            raise self._error(exc) from exc
        counts = batch.request_counts
        failed, codes = None, set()
        if batch.status == "failed":
            found = (batch.errors.data or []) if batch.errors else []
            codes = {e.code for e in found}
            failed = _http.redact(
                "; ".join(f"{e.code}: {e.message}" for e in found) or "the batch failed", self._api_key
            )
        return batches.Progress(
            batch.id,
            batch.status,
            batch.status in ("completed", "failed", "expired", "cancelled"),
            counts.total if counts else 0,
            counts.completed + counts.failed if counts else 0,
            failed,
            queue_full=QUEUE_FULL_CODE in codes,
        )

    async def batch_results(self, batch_id: str) -> AsyncIterator[batches.Result]:
        try:
            batch = await self._client.batches.retrieve(batch_id)
            for file_id in (batch.output_file_id, batch.error_file_id):
                if file_id is None:
                    continue
                content = await self._client.files.content(file_id)
                for text in content.text.splitlines():
                    if text.strip():
                        yield self._result(json.loads(text))
        except openai.OpenAIError as exc:
            raise self._error(exc) from exc

    def _result(self, line: dict[str, Any]) -> batches.Result:
        custom_id = str(line.get("custom_id", ""))
        response = line.get("response") or {}
        error = line.get("error") or {}
        if not response:
            code = str(error.get("code", ""))
            return batches.canceled(custom_id) if code == "batch_cancelled" else batches.expired(custom_id)
        status, body = int(response.get("status_code", 500)), response.get("body") or {}
        request_id = response.get("request_id")
        if status == 200:
            try:
                parsed = openai.types.chat.ChatCompletion.model_validate(body)
                return batches.Result(
                    custom_id, completion=self.completion(parsed, status=status, request_id=request_id)
                )
            except (errors.ProviderError, ValueError) as exc:
                failure = (
                    exc
                    if isinstance(exc, errors.ProviderError)
                    else errors.ProviderError(
                        errors.ErrorClass.BAD_OUTPUT, self._describe(exc), status=status, request_id=request_id
                    )
                )
                return batches.Result(custom_id, error=failure)
        detail = body.get("error") or {}
        message = _http.redact(f"{detail.get('type')} ({detail.get('code')}): {detail.get('message')}", self._api_key)
        quota = _http.openai_quota(
            status, detail.get("type"), detail.get("code"), str(detail.get("message", "")), self._model
        )
        failure = _http.status_error(status, {}, message=message, request_id=request_id, rate_limit=None, quota=quota)
        return batches.Result(custom_id, error=failure)

    async def cancel_batch(self, batch_id: str) -> None:
        try:
            await self._client.batches.cancel(batch_id)
        except openai.OpenAIError as exc:
            raise self._error(exc) from exc

    async def forget_batch(self, batch_id: str) -> None:
        try:
            batch = await self._client.batches.retrieve(batch_id)
            for file_id in (batch.input_file_id, batch.output_file_id, batch.error_file_id):
                if file_id:
                    try:
                        await self._client.files.delete(file_id)
                    except openai.NotFoundError:
                        continue  # deleted before (a retry of this)
        except openai.OpenAIError as exc:
            raise self._error(exc) from exc

    def _describe(self, exc: BaseException) -> str:
        return _http.describe(exc, self._api_key)

    def _error(self, exc: openai.OpenAIError) -> errors.ProviderError:
        """Classify an SDK exception; the caller chains it."""
        if isinstance(exc, openai.APIStatusError):
            headers = exc.response.headers
            # The body's own message; exc.message has the SDK's "Error code: 429 - " in front of it.
            body_message = exc.body.get("message") if isinstance(exc.body, dict) else None
            detail = body_message if isinstance(body_message, str) else exc.message
            return _http.status_error(
                exc.status_code,
                headers,
                message=_http.redact(f"{type(exc).__name__} ({exc.type}, {exc.code}): {exc.message}", self._api_key),
                request_id=exc.request_id,
                rate_limit=_http.openai_rate_limit(headers),
                quota=_http.openai_quota(exc.status_code, exc.type, exc.code, detail, self._model),
            )
        return _http.transport_error(exc, openai, api_key=self._api_key, request_id_header="x-request-id")
