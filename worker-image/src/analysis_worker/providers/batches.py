"""What a provider's batch API looks like to the worker: requests in by ``custom_id``, results out by it.

Both providers take a batch of requests, each with a ``custom_id`` of the
caller's choosing, run them within their window at half the price, and give
the results back in any order, matched by that id. ``custom_id`` maps an
attempt's idempotency key to an id both accept (Anthropic allows only
``[a-zA-Z0-9_-]{1,64}``); the worker keeps the mapping. The providers'
adapters (``AnthropicProvider``, ``OpenAIProvider``) implement
``BatchProvider``: submit, find a submitted batch again by its tag (OpenAI's
metadata; Anthropic keeps none, so there it finds nothing), read its
progress, read its results, cancel it, and delete what the provider keeps of
it (its prompts and answers).

Each result is a ``Completion`` or a ``ProviderError`` classed as a call's
would be: an errored request by its error type or status, an expired one as
``Timeout`` (its window passed before it ran), a canceled one as ``Unknown``.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
from collections.abc import AsyncIterator, Sequence
from typing import Protocol

from analysis_core import errors
from analysis_worker.providers import base

CUSTOM_ID_LENGTH = 32  # characters of URL-safe base64: 192 bits of the key's digest
TAG_KEY = "analysis_dev_batch"  # the metadata key a submitted batch carries its tag under (OpenAI)


def custom_id(idem: str) -> str:
    """A short id for an attempt's idempotency key, within both providers' rules for ``custom_id``."""
    digest = hashlib.sha256(idem.encode()).digest()
    return base64.urlsafe_b64encode(digest).decode().rstrip("=")[:CUSTOM_ID_LENGTH]


@dataclasses.dataclass(frozen=True)
class Progress:
    """Where a provider batch is: ``ended`` once its results can be read; ``failed`` (why) if it failed whole."""

    id: str
    status: str  # the provider's word: in_progress, ended / validating, in_progress, completed, expired...
    ended: bool
    total: int
    done: int  # requests with a result so far (succeeded or not)
    failed: str | None = None
    # Failed whole because the provider's queue for batches is full (OpenAI's enqueued-token limit): nothing ran,
    # and the same requests may go again once batches ahead of them finish.
    queue_full: bool = False


@dataclasses.dataclass(frozen=True)
class Result:
    custom_id: str
    completion: base.Completion | None = None
    error: errors.ProviderError | None = None


def expired(custom_id_: str) -> Result:
    return Result(
        custom_id_,
        error=errors.ProviderError(
            errors.ErrorClass.TIMEOUT, "the provider batch's window passed before this request ran"
        ),
    )


def canceled(custom_id_: str) -> Result:
    return Result(
        custom_id_, error=errors.ProviderError(errors.ErrorClass.UNKNOWN, "the provider batch was canceled first")
    )


class BatchProvider(Protocol):
    async def submit_batch(self, requests: Sequence[tuple[str, base.Request]], tag: str) -> str:
        """Submit ``(custom_id, request)`` pairs as one provider batch; its id."""
        ...

    async def find_batch(self, tag: str) -> str | None:
        """A batch submitted with ``tag`` (after a crash between submitting and recording its id), or None."""
        ...

    async def forget_unsubmitted(self, tag: str) -> None:
        """Delete what the provider keeps of a batch that was never created (OpenAI: its uploaded input file)."""
        ...

    async def batch_progress(self, batch_id: str) -> Progress: ...

    def batch_results(self, batch_id: str) -> AsyncIterator[Result]:
        """Every request's result, in the provider's order; only once ``Progress.ended``."""
        ...

    async def cancel_batch(self, batch_id: str) -> None: ...

    async def forget_batch(self, batch_id: str) -> None:
        """Delete what the provider keeps of an ended batch (its input and output hold prompts and answers)."""
        ...
