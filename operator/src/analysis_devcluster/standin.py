"""A stand-in for the Anthropic and OpenAI HTTP APIs, with a scripted fault plan.

It speaks just enough of ``POST /v1/messages`` (Anthropic; the SDK's base_url
is the server URL) and ``POST /v1/chat/completions`` (OpenAI; base_url ends in
``/v1``) for the real SDKs, built with ``_strict_response_validation=True``,
to accept its answers and to raise their proper exception classes for its
errors. Tests use :class:`StandIn` in-process (a server thread with its own
event loop); a demo runs ``python -m analysis_devcluster.standin --port N``
and drives it over HTTP (``PUT /_standin/plan``, ``GET /_standin/requests``,
``GET /_standin/concurrency``, ``POST /_standin/reset``). Workers in other processes just point their
provider's base URL at it. With ``tls=(certfile, keyfile)`` it serves HTTPS
instead (``pki.write_serving`` makes a private CA and a certificate for it),
as a provider's gateway with its own CA does.

A fault plan is an ordered list of steps; each request consumes the first
step that matches it (``match``: a substring of its prompt; ``api``:
"anthropic" or "openai"; ``times``: how many requests it serves), and with
no step left it answers with a deterministic success; a step's ``delay_s``
holds its answer back (a provider's latency). Every request is recorded,
without its key, with the kind of answer it got (``kind``) and the address it
came from (``peer``), so a test counts what reached the provider, how it was
answered, and over which connection (through a proxy, say); and the requests
in flight are counted, with the most at once (``concurrency``), so a test sees
how many calls a stage had out at its peak.

Refusals for quota and billing answer with the providers' real bodies, each
in the words of the API called: ``insufficient_quota`` and ``low_credit``
are one fault, an account that cannot pay, named as each provider names it
(OpenAI's 429 ``insufficient_quota``; Anthropic's 400
``invalid_request_error`` about the credit balance); ``model_forbidden`` is a
403 for the requested model (OpenAI's ``model_not_found``, Anthropic's
``permission_error``).

Both prompt caches are modelled (``promptcache``): Anthropic's breakpoints
(``cache_control``) and OpenAI's automatic prefixes, each with its minimum
length, what a call writes readable only once it has answered, and the usage
fields each reports; every call's record says what it read and wrote.

Both batch APIs are served too (``standin_batches``: Anthropic's Message
Batches, OpenAI's Batch API with its files), each request of a provider batch
answered as the same call would be, with faults of single requests and of
whole batches, and a count of submissions per ``custom_id``.

It deliberately does not stream, count real tokens, check models or
parameters beyond what it records, or persist anything.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import hmac
import json
import math
import os
import re
import signal
import ssl
import threading
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from analysis_devcluster import promptcache, standin_batches, threaded

APIS = ("anthropic", "openai")
_NUMBERS = frozenset(
    {"retry_after_s", "retry_after_ms", "reset_s", "delay_s", "input_tokens", "output_tokens", "size_mb"}
)
_STEP_KEYS = _NUMBERS | {"kind", "match", "api", "times", "text"}
# (HTTP status, Anthropic error type, OpenAI error type, OpenAI code) per error kind.
_ERRORS = {
    "rate_limit": (429, "rate_limit_error", "requests", "rate_limit_exceeded"),
    "server_error": (500, "api_error", "server_error", None),
    "overloaded": (529, "overloaded_error", "server_error", "service_unavailable"),
    "unauthorized": (401, "authentication_error", "invalid_request_error", "invalid_api_key"),
    "bad_request": (400, "invalid_request_error", "invalid_request_error", None),
}
# The providers' own words for an account that cannot pay, and for a model the key may not use.
OPENAI_INSUFFICIENT_QUOTA = (
    "You exceeded your current quota, please check your plan and billing details. For more information on this "
    "error, read the docs: https://platform.openai.com/docs/guides/error-codes/api-errors."
)
ANTHROPIC_LOW_CREDIT = (
    "Your credit balance is too low to access the Anthropic API. Please go to Plans & Billing to upgrade or "
    "purchase credits."
)
ANTHROPIC_FORBIDDEN = "Your API key does not have permission to use the specified resource."
_REFUSALS = frozenset({"insufficient_quota", "low_credit", "model_forbidden"})
# "expired": a request of a provider batch that expires; the batch kinds apply to a whole provider batch.
KINDS = frozenset(
    {*_ERRORS, *_REFUSALS, "ok", "timeout", "malformed", "truncated", "huge", "expired", *standin_batches.BATCH_KINDS}
)
_LIMIT = 1000  # the advertised request quota by default; "remaining" counts down from it


def validate_step(step: Any) -> dict[str, Any]:
    """A copy of ``step`` with ``times`` filled in; ValueError (TypeError for a non-object) saying what is wrong."""
    if not isinstance(step, dict):
        raise TypeError(f"a plan step must be an object, not {type(step).__name__}: {step!r}")
    if step.get("kind") not in KINDS:
        raise ValueError(f"unknown step kind {step.get('kind')!r}; known: {', '.join(sorted(KINDS))}")
    unknown = set(step) - _STEP_KEYS
    if unknown:
        raise ValueError(f"unknown step keys {sorted(unknown)} in {step!r}")
    if step.get("api") not in (None, *APIS):
        raise ValueError(f"step api must be one of {APIS}, not {step['api']!r}")
    for key in ("match", "text"):
        if key in step and not isinstance(step[key], str):
            raise ValueError(f"step {key} must be a string: {step!r}")
    times = step.get("times", 1)
    if not isinstance(times, int) or isinstance(times, bool) or times < 1:
        raise ValueError(f"step times must be a positive integer: {step!r}")
    for key in _NUMBERS:
        value = step.get(key)
        integral = key.endswith("tokens")
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, int if integral else int | float) or value < 0
        ):
            raise ValueError(f"step {key} must be a non-negative {'integer' if integral else 'number'}: {step!r}")
    return {**step, "times": times}


def _duration(seconds: float) -> str:
    """OpenAI's reset format: ``6m0s``, ``1.5s``, ``12ms``."""
    if seconds < 1:
        return f"{round(seconds * 1000)}ms"
    minutes, rest = divmod(seconds, 60)
    return f"{int(minutes)}m{rest:g}s" if minutes else f"{rest:g}s"


class _State:
    """The plan, the record and the expected key, shared by the server thread and callers; one lock guards all."""

    def __init__(self, api_key: str | None, advertised_requests: int = _LIMIT) -> None:
        self.api_key = api_key
        self.advertised_requests = advertised_requests
        self.lock = threading.Lock()
        self.plan: list[dict[str, Any]] = []
        self.seen: list[dict[str, Any]] = []
        self.in_flight = 0  # provider requests received and not yet answered
        self.peak = 0  # the most in flight at once since the last reset
        self.cache = promptcache.PromptCache()
        self.batches = standin_batches.Batches(
            lambda api, body, key: _respond(self, api, body, key), self.take_batch, turnaround_s=1.0
        )

    def set_plan(self, steps: list[dict[str, Any]]) -> None:
        plan = [validate_step(step) for step in steps]  # all or nothing: validate before replacing
        with self.lock:
            self.plan = plan

    def reset(self) -> None:
        with self.lock:
            self.plan, self.seen = [], []
            self.peak = self.in_flight
        self.cache.reset()
        self.batches.reset()

    def arrived(self) -> None:
        with self.lock:
            self.in_flight += 1
            self.peak = max(self.peak, self.in_flight)

    def left(self) -> None:
        with self.lock:
            self.in_flight -= 1

    def concurrency(self) -> dict[str, int]:
        """Requests in flight now, and the most at once since the last reset."""
        with self.lock:
            return {"in_flight": self.in_flight, "peak": self.peak}

    def requests(self) -> list[dict[str, Any]]:
        with self.lock:
            return [dict(entry) for entry in self.seen]

    def answered(self, call: dict[str, Any], kind: str) -> None:
        """Record how ``call`` (an entry of ``seen``) was answered: a step's kind, ``ok``, or a refusal."""
        with self.lock:
            call["kind"] = kind

    def take(self, api: str, prompt: str) -> dict[str, Any] | None:
        """The first step for one request with this prompt (a call's, or one request's of a provider batch)."""
        return self._take(
            api, lambda step: step["kind"] not in standin_batches.BATCH_KINDS and step.get("match", "") in prompt
        )

    def take_batch(self, api: str, prompts: list[str]) -> dict[str, Any] | None:
        """The first batch step for a provider batch of requests with these prompts (any of them may match)."""
        return self._take(
            api,
            lambda step: (
                step["kind"] in standin_batches.BATCH_KINDS and any(step.get("match", "") in p for p in prompts)
            ),
        )

    def _take(self, api: str, applies: Callable[[dict[str, Any]], bool]) -> dict[str, Any] | None:
        with self.lock:
            for index, step in enumerate(self.plan):
                if step.get("api") not in (None, api) or not applies(step):
                    continue
                step["times"] -= 1
                if step["times"] == 0:
                    del self.plan[index]
                return step
            return None


def _text_of(content: Any) -> str:
    """A message's text, whether ``content`` is a string or a list of ``{"type": "text"}`` blocks."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(b.get("text", "") for b in content if isinstance(b, dict) and b.get("type") == "text")
    return ""


# OpenAI's reasoning models (o1, o3-mini, o4-mini, gpt-5...): they refuse max_tokens and any non-default sampling.
# Written here on purpose rather than imported from the worker's provider: the stand-in plays OpenAI, and a test
# in which both sides shared one rule could not catch the provider getting it wrong.
_REASONING_MODEL = re.compile(r"^(o\d|gpt-5)(\b|[-.])")


def _refused_parameter(api: str, body: dict[str, Any]) -> dict[str, Any] | None:
    """The 400 body OpenAI answers a reasoning model's unsupported parameter with, or None."""
    if api != "openai" or not _REASONING_MODEL.match(str(body.get("model", ""))):
        return None
    if "max_tokens" in body:
        message = (
            "Unsupported parameter: 'max_tokens' is not supported with this model. Use 'max_completion_tokens' instead."
        )
        param = "max_tokens"
    elif body.get("temperature", 1) != 1:
        message = "Unsupported value: 'temperature' does not support this value with this model. Only the default (1) value is supported."
        param = "temperature"
    else:
        return None
    code = "unsupported_parameter" if param == "max_tokens" else "unsupported_value"
    return {"error": {"message": message, "type": "invalid_request_error", "param": param, "code": code}}


def _error_response(api: str, kind: str, message: str, headers: dict[str, str]) -> web.Response:
    status, anthropic_type, openai_type, code = _ERRORS[kind]
    if api == "anthropic":
        body: dict[str, Any] = {"type": "error", "error": {"type": anthropic_type, "message": message}}
    else:
        status = 503 if kind == "overloaded" else status  # OpenAI has no 529
        body = {"error": {"message": message, "type": openai_type, "param": None, "code": code}}
    return web.json_response(body, status=status, headers=headers)


def _refusal_response(api: str, kind: str, model: str, headers: dict[str, str]) -> web.Response:
    """A refusal for quota or billing (``_REFUSALS``), with the body the real API sends."""
    if api == "openai":
        if kind == "model_forbidden":
            error = {
                "message": f"Project `proj_standin` does not have access to model `{model}`",
                "type": "invalid_request_error",
                "param": None,
                "code": "model_not_found",
            }
            return web.json_response({"error": error}, status=403, headers=headers)
        error = {
            "message": OPENAI_INSUFFICIENT_QUOTA,
            "type": "insufficient_quota",
            "param": None,
            "code": "insufficient_quota",
        }
        return web.json_response({"error": error}, status=429, headers=headers)
    status, error_type, message = (
        (403, "permission_error", ANTHROPIC_FORBIDDEN)
        if kind == "model_forbidden"
        else (400, "invalid_request_error", ANTHROPIC_LOW_CREDIT)
    )
    body = {"type": "error", "error": {"type": error_type, "message": message}, "request_id": headers["request-id"]}
    return web.json_response(body, status=status, headers=headers)


def _rate_headers(api: str, remaining: int, reset_s: float, limit: int = _LIMIT) -> dict[str, str]:
    if api == "anthropic":
        moment = datetime.datetime.now(datetime.UTC) + datetime.timedelta(seconds=reset_s)
        stamp = moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")
        return {
            "anthropic-ratelimit-requests-limit": str(limit),
            "anthropic-ratelimit-requests-remaining": str(remaining),
            "anthropic-ratelimit-requests-reset": stamp,
        }
    return {
        "x-ratelimit-limit-requests": str(limit),
        "x-ratelimit-remaining-requests": str(remaining),
        "x-ratelimit-reset-requests": _duration(reset_s),
    }


def _success_body(api: str, model: str, text: str, prompt: promptcache.Usage, tokens_out: int) -> dict[str, Any]:
    if api == "anthropic":
        return {
            "id": f"msg_{uuid.uuid4().hex[:24]}",
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": [{"type": "text", "text": text}],
            "stop_reason": "end_turn",
            "stop_sequence": None,
            "usage": {
                "input_tokens": prompt.input,
                "output_tokens": tokens_out,
                "cache_creation_input_tokens": prompt.cache_write,
                "cache_read_input_tokens": prompt.cache_read,
            },
        }
    tokens_in = prompt.input + prompt.cache_read
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex[:24]}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "finish_reason": "stop",
                "logprobs": None,
                "message": {"role": "assistant", "content": text, "refusal": None},
            }
        ],
        "usage": {
            "prompt_tokens": tokens_in,
            "completion_tokens": tokens_out,
            "total_tokens": tokens_in + tokens_out,
            "prompt_tokens_details": {"cached_tokens": prompt.cache_read, "audio_tokens": 0},
        },
    }


def _blocks(content: Any) -> list[tuple[str, bool]]:
    """A system prompt's or a message's text blocks, each with whether it carries ``cache_control``."""
    if isinstance(content, str):
        return [(content, False)]
    if not isinstance(content, list):
        return []
    return [
        (str(block.get("text", "")), isinstance(block.get("cache_control"), dict))
        for block in content
        if isinstance(block, dict) and block.get("type") == "text"
    ]


def _cached(state: _State, api: str, body: dict[str, Any], key: str) -> tuple[promptcache.Usage, promptcache.Pending]:
    """What the call's prompt reads from and writes to the cache (Anthropic: system, then each message)."""
    messages = [m for m in body.get("messages") or [] if isinstance(m, dict)]
    model = str(body.get("model", ""))
    if api == "anthropic":
        blocks = _blocks(body.get("system")) + [b for m in messages for b in _blocks(m.get("content"))]
        return state.cache.anthropic(key, model, blocks)
    return state.cache.openai(key, model, "".join(text for m in messages for text, _ in _blocks(m.get("content"))))


def _prompt_usage(
    state: _State, api: str, body: dict[str, Any], key: str, step: dict[str, Any]
) -> tuple[promptcache.Usage, promptcache.Pending]:
    """What an answered request's prompt counts: as its step says (``input_tokens``: no cache), else the cache's."""
    if "input_tokens" in step:
        return promptcache.Usage(input=step["input_tokens"]), promptcache.Pending(state.cache, [])
    return _cached(state, api, body, key)


def _respond(state: _State, api: str, body: dict[str, Any], key: str) -> standin_batches.Answer:
    """One request of a provider batch, answered as the same call would be (its step, the cache, usage)."""
    prompt = standin_batches.prompt_of(body)
    step = state.take(api, prompt) or {"kind": "ok"}
    kind = step["kind"]
    if kind == "expired":
        return standin_batches.Answer("expired", {})
    if kind in _ERRORS or kind in _REFUSALS:
        status, anthropic_type, openai_type, code = _ERRORS.get(kind, _ERRORS["bad_request"])
        message = f"stand-in {kind}"
        if api == "anthropic":
            return standin_batches.Answer(
                kind, {"type": "error", "error": {"type": anthropic_type, "message": message}}, status
            )
        error = {"message": message, "type": openai_type, "param": None, "code": code}
        return standin_batches.Answer(kind, {"error": error}, status)
    text = step.get("text", "stand-in answer: " + prompt[:200])
    usage, pending = _prompt_usage(state, api, body, key, step)
    tokens_out = step.get("output_tokens", math.ceil(len(text) / 4))
    answer = _success_body(api, str(body.get("model", "")), text, usage, tokens_out)
    pending.commit()
    return standin_batches.Answer("ok", answer)


def _describe_call(api: str, body: dict[str, Any], request: web.Request, expected_key: str | None) -> dict[str, Any]:
    """The record of one provider call: what a test may assert on, and never the key itself."""
    messages = body.get("messages")
    turns = [m for m in messages if isinstance(m, dict)] if isinstance(messages, list) else []
    users = [m.get("content") for m in turns if m.get("role") == "user"]
    systems = [m.get("content") for m in turns if m.get("role") in ("system", "developer")]
    key = standin_batches.presented_key(request)
    retry_count = request.headers.get("x-stainless-retry-count", "")
    return {
        "api": api,
        "path": request.path,
        "model": str(body.get("model", "")),
        "prompt": _text_of(users[-1]) if users else "",
        "system": _text_of(body.get("system") if api == "anthropic" else (systems[0] if systems else None)) or None,
        "max_tokens": body.get("max_tokens", body.get("max_completion_tokens")),
        # Which name the cap came under: OpenAI's reasoning models refuse the deprecated max_tokens.
        "max_tokens_field": next((f for f in ("max_tokens", "max_completion_tokens") if f in body), None),
        "temperature": body.get("temperature"),
        "key_matched": bool(key) and (expected_key is None or hmac.compare_digest(key, expected_key)),
        "key_present": bool(key),
        "retry_count": int(retry_count) if retry_count.isdigit() else None,
        "peer": _peer(request),
        "time": time.time(),
        "kind": None,  # how it was answered: a step's kind, or "ok" (set once the answer is chosen)
    }


def _peer(request: web.Request) -> str | None:
    """``host:port`` of the connection a request came over (a proxy's, when it came through one)."""
    peer = request.transport.get_extra_info("peername") if request.transport is not None else None
    return f"{peer[0]}:{peer[1]}" if peer else None


def _step_headers(api: str, step: dict[str, Any]) -> dict[str, str]:
    """The retry-after and rate-limit headers a fault step asks for."""
    headers = {}
    if "retry_after_ms" in step:
        headers["retry-after-ms"] = f"{step['retry_after_ms']:g}"
    if "retry_after_s" in step:
        headers["retry-after"] = f"{step['retry_after_s']:g}"
    if step["kind"] == "rate_limit":
        reset_s = step.get("reset_s", step.get("retry_after_s", step.get("retry_after_ms", 1000) / 1000))
        headers.update(_rate_headers(api, 0, reset_s))
    return headers


async def _handle(state: _State, api: str, request: web.Request) -> web.Response:
    state.arrived()
    try:
        return await _answer(state, api, request)
    finally:
        state.left()


async def _answer(state: _State, api: str, request: web.Request) -> web.Response:
    headers = {"request-id" if api == "anthropic" else "x-request-id": f"req_standin_{uuid.uuid4().hex[:16]}"}
    try:
        body = await request.json()
    except ValueError as exc:
        return _error_response(api, "bad_request", f"invalid JSON body: {exc}", headers)
    if not isinstance(body, dict):
        return _error_response(api, "bad_request", "the body is not a JSON object", headers)
    call = _describe_call(api, body, request, state.api_key)
    with state.lock:
        state.seen.append(call)
        remaining = max(0, state.advertised_requests - len(state.seen))
    if not call["key_matched"]:
        state.answered(call, "unauthorized")
        message = "invalid x-api-key" if call["key_present"] else "missing API key"
        return _error_response(api, "unauthorized", message, headers)

    refused = _refused_parameter(api, body)
    if refused is not None:
        state.answered(call, "bad_request")
        return web.json_response(refused, status=400, headers=headers)
    step = state.take(api, call["prompt"]) or {"kind": "ok"}
    kind = step["kind"]
    state.answered(call, kind)
    headers.update(_step_headers(api, step))
    # The cache is read as the call starts; what it writes is readable once it has answered.
    prompt, pending = _prompt_usage(state, api, body, standin_batches.presented_key(request), step)
    with state.lock:
        call["cache_read"], call["cache_write"], call["input_tokens"] = (
            prompt.cache_read,
            prompt.cache_write,
            prompt.input,
        )
    # Any step may take its time (a provider's latency); a timeout takes 5 s unless it says otherwise.
    delay_s = step.get("delay_s", 5.0 if kind == "timeout" else 0.0)
    if delay_s:
        await asyncio.sleep(delay_s)
    if kind in _ERRORS:
        return _error_response(api, kind, f"stand-in {kind}", headers)
    if kind in _REFUSALS:
        return _refusal_response(api, kind, call["model"], headers)
    text = step.get("text", "stand-in answer: " + call["prompt"][:200])
    if kind == "huge":
        # A well-formed answer of size_mb megabytes: more than a small worker's memory limit can hold.
        text = "x" * int(step.get("size_mb", 256) * 1_000_000)
    tokens_out = step.get("output_tokens", math.ceil(len(text) / 4))
    with state.lock:
        call["output_tokens"] = tokens_out
    headers.update(_rate_headers(api, remaining, 60.0, state.advertised_requests))
    payload = json.dumps(_success_body(api, call["model"], text, prompt, tokens_out))
    pending.commit()
    if kind == "malformed":
        payload = "<html>stand-in: this is not JSON</html>"
    elif kind == "truncated":
        payload = payload[: len(payload) // 2]
    return web.Response(text=payload, content_type="application/json", headers=headers)


def make_app(state: _State) -> web.Application:
    """The aiohttp application: both provider routes plus the control API."""

    async def anthropic_messages(request: web.Request) -> web.Response:
        return await _handle(state, "anthropic", request)

    async def openai_chat(request: web.Request) -> web.Response:
        return await _handle(state, "openai", request)

    async def put_plan(request: web.Request) -> web.Response:
        try:
            steps = await request.json()
            if not isinstance(steps, list):
                return web.json_response({"error": "the plan must be a JSON list of steps"}, status=400)
            state.set_plan(steps)
        except (TypeError, ValueError) as exc:
            return web.json_response({"error": str(exc)}, status=400)
        return web.json_response({"steps": len(steps)})

    async def get_requests(request: web.Request) -> web.Response:
        return web.json_response(state.requests())

    async def get_concurrency(request: web.Request) -> web.Response:
        return web.json_response(state.concurrency())

    async def post_reset(request: web.Request) -> web.Response:
        state.reset()
        return web.json_response({"reset": True})

    def authorized(request: web.Request, api: str) -> web.Response | None:
        key = standin_batches.presented_key(request)
        if key and (state.api_key is None or hmac.compare_digest(key, state.api_key)):
            return None
        headers = {"request-id" if api == "anthropic" else "x-request-id": f"req_standin_{uuid.uuid4().hex[:16]}"}
        return _error_response(api, "unauthorized", "invalid x-api-key" if key else "missing API key", headers)

    app = web.Application(client_max_size=300 * 1024 * 1024)  # a provider batch's input: Anthropic takes 256 MB
    app.add_routes(state.batches.routes(authorized))
    app.router.add_post("/v1/messages", anthropic_messages)
    app.router.add_post("/v1/chat/completions", openai_chat)
    app.router.add_put("/_standin/plan", put_plan)
    app.router.add_get("/_standin/requests", get_requests)
    app.router.add_get("/_standin/concurrency", get_concurrency)
    app.router.add_post("/_standin/reset", post_reset)
    return app


async def _start(state: _State, host: str, port: int, tls: ssl.SSLContext | None = None) -> tuple[web.AppRunner, int]:
    # handler_cancellation: a "timeout" step's sleep ends when the client gives
    # up, so stopping never waits for answers nobody reads.
    runner = web.AppRunner(make_app(state), handler_cancellation=True, shutdown_timeout=2.0, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port, ssl_context=tls)
    await site.start()
    return runner, int(runner.addresses[0][1])


def server_context(certfile: str | os.PathLike[str], keyfile: str | os.PathLike[str]) -> ssl.SSLContext:
    """A TLS server context presenting ``certfile`` (PEM, its chain) with ``keyfile``."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(certfile, keyfile)
    return context


class StandIn(threaded.ThreadedServer):
    """The stand-in server on ``host`` (a free port by default), in a thread with its own event loop.

    ``tls``: a certificate and its key (PEM files); it then serves HTTPS, and its URLs say so.
    ``advertised_requests``: the request quota its successes advertise; "remaining" counts down from it with every
    request recorded since the last reset, and at 0 the workers pause for the advertised reset (60 s). A caller that
    sends more than the default 1000 between resets (a benchmark) raises it.
    """

    what = "stand-in"

    def __init__(
        self,
        *,
        api_key: str | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        tls: tuple[str | os.PathLike[str], str | os.PathLike[str]] | None = None,
        advertised_requests: int = _LIMIT,
    ) -> None:
        super().__init__(host, port)
        self._state = _State(api_key, advertised_requests)
        self._tls = None if tls is None else server_context(*tls)

    @property
    def url(self) -> str:
        if not self.running:
            raise RuntimeError("the stand-in is not running")
        return f"{'http' if self._tls is None else 'https'}://{self._host}:{self._port}"

    @property
    def anthropic_base_url(self) -> str:
        return self.url

    @property
    def openai_base_url(self) -> str:
        return f"{self.url}/v1"

    def base_url(self, api: str) -> str:
        """Where an ``api`` (anthropic or openai) SDK client of this stand-in points."""
        return self.anthropic_base_url if api == "anthropic" else self.openai_base_url

    def batch_spec(self, api: str, items: list[str], *, model: str = "stand-in-model", **stage: Any) -> dict[str, Any]:
        """An AnalysisBatch spec whose one stage, ``analyze``, calls this stand-in as ``api`` for ``model``.

        The key is read from the Secret ``llm-keys`` (key: ``api``); ``stage`` adds stage fields in the CRD's
        spelling (``concurrency``, ``retry``, ``rateLimit``, ``prompt``...).
        """
        provider = {
            "type": api,
            "model": model,
            "baseURL": self.base_url(api),
            "apiKeySecretRef": {"name": "llm-keys", "key": api},
        }
        stages = [{"name": "analyze", "provider": "llm", "prompt": "Analyze {{ item }}", **stage}]
        return {"items": items, "providers": {"llm": provider}, "stages": stages}

    def set_plan(self, steps: list[dict[str, Any]]) -> None:
        self._state.set_plan(steps)

    def requests(self) -> list[dict[str, Any]]:
        return self._state.requests()

    def reset(self) -> None:
        """Forget the plan and the record; the peak starts again from the requests in flight now."""
        self._state.reset()

    def concurrency(self) -> dict[str, int]:
        """``in_flight``: provider requests received and not yet answered; ``peak``: the most at once since reset."""
        return self._state.concurrency()

    def batch_turnaround(self, seconds: float) -> None:
        """How long a provider batch takes from its submission to its results (a batch_slow step: its own)."""
        self._state.batches.turnaround_s = seconds

    def batch_submissions(self) -> dict[str, int]:
        """How many times each custom_id was submitted in a provider batch, since the last reset."""
        with self._state.batches.lock:
            return dict(self._state.batches.submissions)

    def batch_timeline(self) -> list[dict[str, float | None]]:
        """When (epoch seconds) each provider batch since the last reset, deleted or not, was created, was due to
        be answered, and was answered (the first look after it was due; None before)."""
        with self._state.batches.lock:
            return [{"created": b.created, "ready_at": b.ready_at, "ended": b.ended} for b in self._state.batches.made]

    def provider_batches(self) -> list[dict[str, Any]]:
        """Every provider batch since the last reset: id, api, status, requests."""
        with self._state.batches.lock:
            return [
                {"id": b.id, "api": b.api, "status": b.status, "requests": len(b.requests)}
                for b in self._state.batches.batches.values()
            ]

    def held_creates(self) -> int:
        """Creates of a provider batch held now by a batch_create_hang or batch_created_hang step."""
        with self._state.batches.lock:
            return self._state.batches.held

    def files(self) -> tuple[list[str], list[str]]:
        """The ids of the OpenAI files held, and of those deleted, since the last reset."""
        with self._state.batches.lock:
            return list(self._state.batches.files), list(self._state.batches.deleted_files)

    async def _open(self) -> tuple[int, Callable[[], Awaitable[None]]]:
        runner, port = await _start(self._state, self._host, self._port, self._tls)
        return port, runner.cleanup


async def _serve_forever(port: int, api_key: str | None) -> None:
    runner, bound = await _start(_State(api_key), "127.0.0.1", port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    print(f"stand-in listening on http://127.0.0.1:{bound}", flush=True)  # noqa: T201  (the CLI's one line)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()


def main(argv: list[str] | None = None) -> int:
    """``python -m analysis_devcluster.standin --port N [--api-key K]``: serve in the foreground until Ctrl-C."""
    parser = argparse.ArgumentParser(
        prog="python -m analysis_devcluster.standin", description="Serve the Anthropic/OpenAI stand-in."
    )
    parser.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (default: a free one)")
    parser.add_argument("--api-key", default=None, help="the only key accepted (default: any non-empty key)")
    args = parser.parse_args(argv)
    asyncio.run(_serve_forever(args.port, args.api_key))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
