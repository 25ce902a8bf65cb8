"""The stand-in's batch APIs: Anthropic's Message Batches and OpenAI's Batch API, as their SDKs call them.

Anthropic: ``POST /v1/messages/batches`` takes ``{"requests": [{custom_id,
params}]}``; ``GET .../{id}`` retrieves, ``GET /v1/messages/batches`` lists,
``POST .../{id}/cancel`` cancels, ``DELETE .../{id}`` deletes, and once the
batch has ended its ``results_url`` (absolute, on this server) streams one
JSON line per request: ``{custom_id, result: {type: succeeded, message} |
{type: errored, error} | {type: canceled} | {type: expired}}``.

OpenAI: ``POST /v1/files`` (multipart, ``purpose=batch``) uploads the input,
JSON lines ``{custom_id, method, url, body}``; ``POST /v1/batches`` with
``input_file_id``, ``endpoint`` and ``completion_window`` (only ``24h``)
starts it; ``GET``/``POST .../cancel``/list as above; the output and error
files (``GET /v1/files/{id}/content``) hold a line per request; ``GET
/v1/files`` lists the files, ``DELETE /v1/files/{id}`` deletes one.

A batch is processed all at once when its turnaround has passed (the
server's ``turnaround_s``, or a ``batch_slow`` step's ``delay_s``), on the
first look after that: each request is answered as the same call would be
(``respond``: the fault plan's request steps, the prompt cache, usage). The
plan's batch steps apply to a whole batch (matched by any of its prompts):
``batch_slow`` delays it, ``batch_expired`` lets every request expire,
``batch_failed`` refuses it (Anthropic: the create answers 500; OpenAI: the
batch fails validation), ``batch_queue_full`` refuses it for the provider's
queue of batches (Anthropic: a 429 with a retry-after; OpenAI: validation
fails with ``token_limit_exceeded``, its enqueued-token limit), and two hold
the create so that a test can kill
the submitting worker inside it: ``batch_create_hang`` waits ``delay_s``
and then fails having created nothing, ``batch_created_hang`` creates the
batch and then waits before it answers. A request step of kind ``expired``
lets that one request expire.

What a test reads: every submission per ``custom_id`` (``submissions``, so a
request sent in two batches is seen), the batches with their states, and the
files alive and deleted. The providers' limits are kept: 100,000 requests and
custom ids of ``[a-zA-Z0-9_-]{1,64}`` for Anthropic, 50,000 and ``24h`` for
OpenAI, no custom id twice in a batch.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import json
import re
import threading
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

BATCH_KINDS = frozenset(
    {"batch_slow", "batch_expired", "batch_failed", "batch_queue_full", "batch_create_hang", "batch_created_hang"}
)
# How long a create held by batch_create_hang or batch_created_hang waits before it answers (its step's delay_s).
HANG_S = 10.0
ANTHROPIC_MAX_REQUESTS = 100_000
OPENAI_MAX_REQUESTS = 50_000
ANTHROPIC_CUSTOM_ID = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
OPENAI_ENDPOINT = "/v1/chat/completions"
DAY_S = 24 * 3600


@dataclasses.dataclass(frozen=True)
class Answer:
    """How one request of a batch was answered: ``kind`` (ok, an error kind, expired), and its body."""

    kind: str
    body: dict[str, Any]  # the message or chat completion; for an error, the provider's error body
    status: int = 200


# respond(api, request body, API key) -> the answer; take_batch_step(api, prompts) -> a batch step or None
Respond = Callable[[str, dict[str, Any], str], Answer]
TakeBatchStep = Callable[[str, list[str]], dict[str, Any] | None]


@dataclasses.dataclass
class Batch:
    id: str
    api: str
    key: str
    requests: list[tuple[str, dict[str, Any]]]  # (custom_id, body)
    created: float
    ready_at: float
    step: dict[str, Any] | None
    input_file_id: str = ""
    status: str = "in_progress"  # Anthropic's processing_status, or OpenAI's status
    ended: float | None = None
    cancel_at: float | None = None
    results: list[dict[str, Any]] = dataclasses.field(default_factory=list)  # one line per request, once ended
    output_file_id: str | None = None
    error_file_id: str | None = None
    errors: list[dict[str, Any]] | None = None
    metadata: dict[str, str] | None = None


@dataclasses.dataclass
class File:
    id: str
    name: str
    purpose: str
    content: bytes
    created: float


def prompt_of(body: dict[str, Any]) -> str:
    """The text of a request's last user message (what the fault plan's ``match`` is looked for in)."""
    messages = [m for m in body.get("messages") or [] if isinstance(m, dict) and m.get("role") == "user"]
    if not messages:
        return ""
    content = messages[-1].get("content")
    if isinstance(content, str):
        return content
    return "".join(b.get("text", "") for b in content or [] if isinstance(b, dict) and b.get("type") == "text")


def presented_key(request: web.Request) -> str:
    """The API key a request presents: ``Authorization: Bearer`` (OpenAI) or ``x-api-key`` (Anthropic)."""
    bearer = request.headers.get("Authorization", "")
    if bearer.lower().startswith("bearer "):
        return bearer[7:].strip()
    return request.headers.get("x-api-key", "").strip()


def _stamp(moment: float) -> str:
    return (
        datetime.datetime.fromtimestamp(moment, datetime.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    )


class Batches:
    """Every batch and file of the server; one lock. ``respond`` and ``take_batch_step`` come from the stand-in."""

    def __init__(self, respond: Respond, take_batch_step: TakeBatchStep, turnaround_s: float = 1.0) -> None:
        self.respond = respond
        self.take_batch_step = take_batch_step
        self.turnaround_s = turnaround_s
        self.lock = threading.RLock()  # held while a batch advances, which writes files under it too
        self.batches: dict[str, Batch] = {}
        self.files: dict[str, File] = {}
        self.deleted_files: list[str] = []
        self.submissions: Counter[str] = Counter()  # custom_id -> times it was submitted in a batch
        self.made: list[Batch] = []  # every batch created, deleted or not (when each was created and answered)
        self.held = 0  # creates held by a batch_create_hang or batch_created_hang step now

    def reset(self) -> None:
        with self.lock:
            self.batches.clear()
            self.files.clear()
            self.deleted_files.clear()
            self.submissions.clear()
            self.made.clear()

    # ------------------------------------------------------------ the lifecycle

    def _create(
        self,
        api: str,
        key: str,
        requests: list[tuple[str, dict[str, Any]]],
        step: dict[str, Any] | None,
        input_file_id: str = "",
    ) -> Batch:
        delay = float(step.get("delay_s", self.turnaround_s)) if step and step["kind"] == "batch_slow" else None
        now = time.time()
        prefix = "msgbatch_" if api == "anthropic" else "batch_"
        batch = Batch(
            id=prefix + uuid.uuid4().hex[:24],
            api=api,
            key=key,
            requests=requests,
            created=now,
            ready_at=now + (self.turnaround_s if delay is None else delay),
            step=step,
            input_file_id=input_file_id,
            status="in_progress" if api == "anthropic" else "validating",
        )
        with self.lock:
            self.batches[batch.id] = batch
            self.submissions.update(custom_id for custom_id, _ in requests)
            self.made.append(batch)
        return batch

    def _advance(self, batch: Batch) -> None:
        """Bring ``batch`` up to now: validated, processed once its turnaround has passed, or canceled."""
        now = time.time()
        if batch.ended is not None:
            return
        if batch.api == "openai" and batch.status == "validating":
            problems = self._invalid(batch)
            if problems:
                batch.status, batch.errors, batch.ended = "failed", problems, now
                return
            batch.status = "in_progress"
        if batch.cancel_at is not None:
            if batch.status not in ("canceling", "cancelling"):
                batch.status = "canceling" if batch.api == "anthropic" else "cancelling"
                return  # a look later, it has ended
            self._end(batch, [(custom_id, "canceled", None) for custom_id, _ in batch.requests])
            return
        if now < batch.ready_at:
            return
        kind = batch.step["kind"] if batch.step else None
        if kind == "batch_expired":
            self._end(batch, [(custom_id, "expired", None) for custom_id, _ in batch.requests])
            return
        answered: list[tuple[str, str, Answer | None]] = []
        for custom_id, body in batch.requests:
            answer = self.respond(batch.api, body, batch.key)
            answered.append((custom_id, answer.kind, answer))
        self._end(batch, answered)

    def _invalid(self, batch: Batch) -> list[dict[str, Any]]:
        """OpenAI's validation: what makes the whole batch fail."""
        if batch.step is not None and batch.step["kind"] == "batch_failed":
            return [{"code": "invalid_request", "message": "stand-in batch_failed", "line": 1, "param": None}]
        if batch.step is not None and batch.step["kind"] == "batch_queue_full":
            message = "Enqueued token limit reached (stand-in batch_queue_full)."
            return [{"code": "token_limit_exceeded", "message": message, "line": None, "param": None}]
        if len(batch.requests) > OPENAI_MAX_REQUESTS:
            message = f"The batch has {len(batch.requests)} requests; at most {OPENAI_MAX_REQUESTS} are allowed."
            return [{"code": "too_many_requests", "message": message, "line": None, "param": None}]
        seen: set[str] = set()
        for line, (custom_id, _) in enumerate(batch.requests, start=1):
            if custom_id in seen:
                message = f"The custom_id '{custom_id}' is used more than once in the batch."
                return [{"code": "duplicate_custom_id", "message": message, "line": line, "param": "custom_id"}]
            seen.add(custom_id)
        return []

    def _end(self, batch: Batch, answered: list[tuple[str, str, Answer | None]]) -> None:
        now = time.time()
        batch.ended = now
        if batch.api == "anthropic":
            batch.status = "ended"
            batch.results = [self._anthropic_line(custom_id, kind, answer) for custom_id, kind, answer in answered]
            return
        expired = bool(batch.step and batch.step["kind"] == "batch_expired")
        batch.status = "cancelled" if batch.cancel_at is not None else "expired" if expired else "completed"
        out: list[dict[str, Any]] = []
        errors: list[dict[str, Any]] = []
        for custom_id, kind, answer in answered:
            line = self._openai_line(custom_id, kind, answer)
            (out if kind == "ok" else errors).append(line)
        batch.results = out + errors
        if out:
            batch.output_file_id = self._file("batch_output.jsonl", "batch_output", out).id
        if errors:
            batch.error_file_id = self._file("batch_errors.jsonl", "batch_output", errors).id

    @staticmethod
    def _anthropic_line(custom_id: str, kind: str, answer: Answer | None) -> dict[str, Any]:
        if kind in ("canceled", "expired"):
            return {"custom_id": custom_id, "result": {"type": kind}}
        assert answer is not None
        if answer.kind == "ok":
            return {"custom_id": custom_id, "result": {"type": "succeeded", "message": answer.body}}
        return {"custom_id": custom_id, "result": {"type": "errored", "error": answer.body}}

    @staticmethod
    def _openai_line(custom_id: str, kind: str, answer: Answer | None) -> dict[str, Any]:
        line_id = "batch_req_" + uuid.uuid4().hex[:24]
        if kind in ("canceled", "expired"):
            code = "batch_cancelled" if kind == "canceled" else "batch_expired"
            message = "This request was not processed: the batch was cancelled or expired."
            return {
                "id": line_id,
                "custom_id": custom_id,
                "response": None,
                "error": {"code": code, "message": message},
            }
        assert answer is not None
        response = {
            "status_code": answer.status,
            "request_id": "req_standin_" + uuid.uuid4().hex[:16],
            "body": answer.body,
        }
        return {"id": line_id, "custom_id": custom_id, "response": response, "error": None}

    def _file(self, name: str, purpose: str, lines: list[dict[str, Any]]) -> File:
        content = "".join(json.dumps(line) + "\n" for line in lines).encode()
        made = File("file-" + uuid.uuid4().hex[:24], name, purpose, content, time.time())
        with self.lock:
            self.files[made.id] = made
        return made

    def cancel(self, batch: Batch) -> None:
        if batch.ended is None and batch.cancel_at is None:
            batch.cancel_at = time.time()

    # ------------------------------------------------------------ the providers' shapes

    def anthropic_view(self, batch: Batch, base: str) -> dict[str, Any]:
        counts = Counter(line["result"]["type"] for line in batch.results)
        ended = batch.ended is not None
        return {
            "id": batch.id,
            "type": "message_batch",
            "processing_status": batch.status,
            "request_counts": {
                "processing": 0 if ended else len(batch.requests),
                "succeeded": counts["succeeded"],
                "errored": counts["errored"],
                "canceled": counts["canceled"],
                "expired": counts["expired"],
            },
            "created_at": _stamp(batch.created),
            "expires_at": _stamp(batch.created + DAY_S),
            "ended_at": _stamp(batch.ended) if batch.ended is not None else None,
            "cancel_initiated_at": _stamp(batch.cancel_at) if batch.cancel_at is not None else None,
            "archived_at": None,
            "results_url": f"{base}/v1/messages/batches/{batch.id}/results" if ended else None,
        }

    def openai_view(self, batch: Batch) -> dict[str, Any]:
        done = batch.ended is not None
        failed = sum(1 for line in batch.results if line["error"] is not None or line["response"]["status_code"] != 200)
        stamp = int(batch.ended) if batch.ended is not None else None
        return {
            "id": batch.id,
            "object": "batch",
            "endpoint": OPENAI_ENDPOINT,
            "errors": {"object": "list", "data": batch.errors} if batch.errors else None,
            "input_file_id": batch.input_file_id,
            "completion_window": "24h",
            "status": batch.status,
            "output_file_id": batch.output_file_id,
            "error_file_id": batch.error_file_id,
            "created_at": int(batch.created),
            "in_progress_at": int(batch.created) if batch.status != "validating" else None,
            "expires_at": int(batch.created + DAY_S),
            "finalizing_at": stamp if batch.status == "completed" else None,
            "completed_at": stamp if batch.status == "completed" else None,
            "failed_at": stamp if batch.status == "failed" else None,
            "expired_at": stamp if batch.status == "expired" else None,
            "cancelling_at": int(batch.cancel_at) if batch.cancel_at is not None else None,
            "cancelled_at": stamp if batch.status == "cancelled" else None,
            "request_counts": {
                "total": len(batch.requests),
                "completed": len(batch.results) - failed if done else 0,
                "failed": failed if done else 0,
            },
            "metadata": batch.metadata,
        }

    # ------------------------------------------------------------ the routes

    def routes(self, authorized: Callable[[web.Request, str], web.Response | None]) -> list[web.RouteDef]:
        """The batch and file routes; ``authorized(request, api)`` answers a request without a valid key."""

        Handler = Callable[[web.Request], Awaitable[web.Response]]

        def guarded(api: str, handler: Handler) -> Handler:
            async def run(request: web.Request) -> web.Response:
                refused = authorized(request, api)
                if refused is not None:
                    return refused
                return await handler(request)

            return run

        return [
            web.post("/v1/messages/batches", guarded("anthropic", self._anthropic_create)),
            web.get("/v1/messages/batches", guarded("anthropic", self._anthropic_list)),
            web.get("/v1/messages/batches/{id}", guarded("anthropic", self._anthropic_get)),
            web.post("/v1/messages/batches/{id}/cancel", guarded("anthropic", self._anthropic_cancel)),
            web.delete("/v1/messages/batches/{id}", guarded("anthropic", self._anthropic_delete)),
            web.get("/v1/messages/batches/{id}/results", guarded("anthropic", self._anthropic_results)),
            web.post("/v1/files", guarded("openai", self._file_upload)),
            web.get("/v1/files", guarded("openai", self._file_list)),
            web.get("/v1/files/{id}", guarded("openai", self._file_get)),
            web.get("/v1/files/{id}/content", guarded("openai", self._file_content)),
            web.delete("/v1/files/{id}", guarded("openai", self._file_delete)),
            web.post("/v1/batches", guarded("openai", self._openai_create)),
            web.get("/v1/batches", guarded("openai", self._openai_list)),
            web.get("/v1/batches/{id}", guarded("openai", self._openai_get)),
            web.post("/v1/batches/{id}/cancel", guarded("openai", self._openai_cancel)),
        ]

    @staticmethod
    def _base(request: web.Request) -> str:
        return f"{request.scheme}://{request.host}"

    def _batch(self, request: web.Request, api: str) -> Batch:
        batch = self.batches.get(request.match_info["id"])
        if batch is None or batch.api != api:
            raise _not_found(api, f"no batch {request.match_info['id']}")
        with self.lock:
            self._advance(batch)
        return batch

    async def _anthropic_create(self, request: web.Request) -> web.Response:
        body = await request.json()
        requests = body.get("requests") if isinstance(body, dict) else None
        if not isinstance(requests, list) or not requests:
            return _anthropic_error(400, "requests: a non-empty list is required")
        if len(requests) > ANTHROPIC_MAX_REQUESTS:
            return _anthropic_error(400, f"requests: at most {ANTHROPIC_MAX_REQUESTS} requests in one batch")
        parsed, seen = [], set()
        for index, entry in enumerate(requests):
            custom_id = entry.get("custom_id") if isinstance(entry, dict) else None
            if not isinstance(custom_id, str) or not ANTHROPIC_CUSTOM_ID.match(custom_id):
                return _anthropic_error(
                    400, f"requests.{index}.custom_id: String should match pattern '^[a-zA-Z0-9_-]{{1,64}}$'"
                )
            if custom_id in seen:
                return _anthropic_error(400, f"requests.{index}.custom_id: duplicate custom_id {custom_id!r}")
            seen.add(custom_id)
            parsed.append((custom_id, dict(entry.get("params") or {})))
        step = self.take_batch_step("anthropic", [prompt_of(p) for _, p in parsed])
        if step is not None and step["kind"] == "batch_failed":
            return _anthropic_error(500, "stand-in batch_failed", error_type="api_error")
        if step is not None and step["kind"] == "batch_queue_full":
            refused = _anthropic_error(429, "stand-in batch_queue_full: too many requests queued", "rate_limit_error")
            refused.headers["retry-after"] = "1"
            return refused
        if await self._held_before(step):
            return _anthropic_error(500, "stand-in batch_create_hang: nothing was created", error_type="api_error")
        batch = self._create("anthropic", presented_key(request), parsed, step)
        await self._held_after(step)
        return web.json_response(self.anthropic_view(batch, self._base(request)))

    async def _held_before(self, step: dict[str, Any] | None) -> bool:
        """batch_create_hang: the create waits, then fails having created nothing (the client may be gone)."""
        if step is None or step["kind"] != "batch_create_hang":
            return False
        await self._hold(step)
        return True

    async def _held_after(self, step: dict[str, Any] | None) -> None:
        """batch_created_hang: the batch exists, and the answer that says so waits (the client may be gone)."""
        if step is not None and step["kind"] == "batch_created_hang":
            await self._hold(step)

    async def _hold(self, step: dict[str, Any]) -> None:
        with self.lock:
            self.held += 1
        try:
            await asyncio.sleep(float(step.get("delay_s", HANG_S)))
        finally:
            with self.lock:
                self.held -= 1

    async def _anthropic_get(self, request: web.Request) -> web.Response:
        return web.json_response(self.anthropic_view(self._batch(request, "anthropic"), self._base(request)))

    async def _anthropic_list(self, request: web.Request) -> web.Response:
        with self.lock:
            mine = [b for b in self.batches.values() if b.api == "anthropic"]
            for batch in mine:
                self._advance(batch)
        data = [self.anthropic_view(b, self._base(request)) for b in reversed(mine)]
        first, last = (data[0]["id"], data[-1]["id"]) if data else (None, None)
        return web.json_response({"data": data, "has_more": False, "first_id": first, "last_id": last})

    async def _anthropic_cancel(self, request: web.Request) -> web.Response:
        batch = self._batch(request, "anthropic")
        with self.lock:
            self.cancel(batch)
            self._advance(batch)
        return web.json_response(self.anthropic_view(batch, self._base(request)))

    async def _anthropic_delete(self, request: web.Request) -> web.Response:
        batch = self._batch(request, "anthropic")
        if batch.ended is None:
            return _anthropic_error(400, "a batch must end before it is deleted; cancel it first")
        with self.lock:
            del self.batches[batch.id]
        return web.json_response({"id": batch.id, "type": "message_batch_deleted"})

    async def _anthropic_results(self, request: web.Request) -> web.Response:
        batch = self._batch(request, "anthropic")
        if batch.ended is None:
            return _anthropic_error(400, "the batch has not ended: its results are not ready")
        text = "".join(json.dumps(line) + "\n" for line in batch.results)
        return web.Response(text=text, content_type="application/binary")

    async def _file_upload(self, request: web.Request) -> web.Response:
        form = await request.post()
        upload, purpose = form.get("file"), str(form.get("purpose", ""))
        if not isinstance(upload, web.FileField):
            return _openai_error(400, "file: a file is required", param="file")
        content = upload.file.read()
        made = File("file-" + uuid.uuid4().hex[:24], upload.filename or "upload.jsonl", purpose, content, time.time())
        with self.lock:
            self.files[made.id] = made
        return web.json_response(_file_view(made))

    async def _file_list(self, request: web.Request) -> web.Response:
        purpose = request.query.get("purpose")
        with self.lock:
            listed = [_file_view(f) for f in self.files.values() if purpose in (None, f.purpose)]
        first, last = (listed[0]["id"], listed[-1]["id"]) if listed else (None, None)
        return web.json_response(
            {"object": "list", "data": listed, "first_id": first, "last_id": last, "has_more": False}
        )

    def _file_of(self, request: web.Request) -> File:
        found = self.files.get(request.match_info["id"])
        if found is None:
            raise _not_found("openai", f"No such File object: {request.match_info['id']}")
        return found

    async def _file_get(self, request: web.Request) -> web.Response:
        return web.json_response(_file_view(self._file_of(request)))

    async def _file_content(self, request: web.Request) -> web.Response:
        return web.Response(body=self._file_of(request).content, content_type="application/octet-stream")

    async def _file_delete(self, request: web.Request) -> web.Response:
        found = self._file_of(request)
        with self.lock:
            del self.files[found.id]
            self.deleted_files.append(found.id)
        return web.json_response({"id": found.id, "object": "file", "deleted": True})

    async def _openai_create(self, request: web.Request) -> web.Response:
        body = await request.json()
        if not isinstance(body, dict):
            return _openai_error(400, "the body is not a JSON object")
        if body.get("endpoint") != OPENAI_ENDPOINT:
            return _openai_error(400, f"endpoint: only {OPENAI_ENDPOINT} is served here", param="endpoint")
        if body.get("completion_window") != "24h":
            return _openai_error(400, "completion_window: the only supported value is '24h'", param="completion_window")
        source = self.files.get(str(body.get("input_file_id")))
        if source is None or source.purpose != "batch":
            return _openai_error(400, "input_file_id: no file of purpose batch has that id", param="input_file_id")
        parsed = []
        for number, text in enumerate(source.content.decode().splitlines(), start=1):
            if not text.strip():
                continue
            try:
                line = json.loads(text)
            except ValueError:
                return _openai_error(400, f"line {number} of the input file is not JSON", param="input_file_id")
            if line.get("url") != OPENAI_ENDPOINT or line.get("method") != "POST":
                return _openai_error(400, f"line {number}: url must be {OPENAI_ENDPOINT} with method POST")
            parsed.append((str(line.get("custom_id", "")), dict(line.get("body") or {})))
        step = self.take_batch_step("openai", [prompt_of(p) for _, p in parsed])
        if await self._held_before(step):
            return _openai_error(500, "stand-in batch_create_hang: nothing was created")
        batch = self._create("openai", presented_key(request), parsed, step, input_file_id=source.id)
        metadata = body.get("metadata")
        batch.metadata = {str(k): str(v) for k, v in metadata.items()} if isinstance(metadata, dict) else None
        await self._held_after(step)
        return web.json_response(self.openai_view(batch))

    async def _openai_get(self, request: web.Request) -> web.Response:
        return web.json_response(self.openai_view(self._batch(request, "openai")))

    async def _openai_list(self, request: web.Request) -> web.Response:
        with self.lock:
            mine = [b for b in self.batches.values() if b.api == "openai"]
            for batch in mine:
                self._advance(batch)
        data = [self.openai_view(b) for b in reversed(mine)]
        first, last = (data[0]["id"], data[-1]["id"]) if data else (None, None)
        return web.json_response(
            {"object": "list", "data": data, "first_id": first, "last_id": last, "has_more": False}
        )

    async def _openai_cancel(self, request: web.Request) -> web.Response:
        batch = self._batch(request, "openai")
        with self.lock:
            self.cancel(batch)
            self._advance(batch)
        return web.json_response(self.openai_view(batch))


def _file_view(made: File) -> dict[str, Any]:
    return {
        "id": made.id,
        "object": "file",
        "bytes": len(made.content),
        "created_at": int(made.created),
        "filename": made.name,
        "purpose": made.purpose,
        "status": "processed",
        "expires_at": None,
        "status_details": None,
    }


def _anthropic_error(status: int, message: str, error_type: str = "invalid_request_error") -> web.Response:
    return web.json_response({"type": "error", "error": {"type": error_type, "message": message}}, status=status)


def _openai_error(status: int, message: str, param: str | None = None) -> web.Response:
    body = {"error": {"message": message, "type": "invalid_request_error", "param": param, "code": None}}
    return web.json_response(body, status=status)


def _not_found(api: str, message: str) -> web.HTTPNotFound:
    if api == "anthropic":
        body = {"type": "error", "error": {"type": "not_found_error", "message": message}}
    else:
        body = {"error": {"message": message, "type": "invalid_request_error", "param": "id", "code": None}}
    return web.HTTPNotFound(text=json.dumps(body), content_type="application/json")
