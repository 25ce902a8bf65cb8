"""Every Redis key name of a batch, and nothing else.

All keys of one batch start with the hash tag ``{<batch-uid>}`` so the Lua
scripts, which touch several keys at once, also work on Redis Cluster (one
batch lives in one slot). The operator deletes a batch's data by these names
(plus ``batch_pattern`` for a scan), so a key made anywhere else would leak.

An attempt is identified by its idempotency key
``<batch-uid>/<stage>/<item>/<round>/<attempt>`` (``BatchKeys.idem``), which
is also the field name in the outcome and result hashes. Item ids never
contain "/" except as the fan-out separator, and uids and stage names never
do, so the parts stay unambiguous: two from the left, two from the right.
"""

from __future__ import annotations

import dataclasses

from analysis_core import wire

GROUP = "workers"  # the one consumer group of every stage stream
# The version of this layout (key names, fields, what scripts keep where). A batch's seeded marker holds the
# version it was seeded with; an operator or worker refuses a batch of a newer layout than its own, and a change
# an older process would misread bumps it (docs/design.md#upgrades).
LAYOUT_VERSION = 1

# The parts of a stage's rate limiter (``BatchKeys.limiter``), in the order ``limiter_acquire.lua`` takes them.
LIMITER_REQUESTS = "req"  # sorted set: granted requests by time
LIMITER_TOKENS = "tok"  # sorted set: token reservations by time
LIMITER_AMOUNTS = "amt"  # hash: reservation -> tokens
LIMITER_SUM = "sum"  # string: tokens reserved in the window
LIMITER_PAUSE = "pause"  # string: until when (ms) the stage is paused
LIMITER_QUOTA = "quota"  # hash (wire.QUOTA_*): the provider refused for quota; one probe at a time until it passes
LIMITER_PARTS = (LIMITER_REQUESTS, LIMITER_TOKENS, LIMITER_AMOUNTS, LIMITER_SUM, LIMITER_PAUSE, LIMITER_QUOTA)

# A batch's use of a provider account (``BatchKeys.allowance``), in the order the scripts take them. Only the
# operator writes the grant; workers spend it, say what they wait for, and report (docs/design.md#provider-accounts).
ALLOWANCE_GRANT = "grant"  # hash (wire.ALLOW_*): what the batch may spend until the operator's next grant
ALLOWANCE_WAITING = "waiting"  # sorted set: calls waiting for the account, by when their ask expires (ms)
ALLOWANCE_WANTS = "wants"  # hash: waiting call -> the input tokens it would reserve (its output: maxTokens)
ALLOWANCE_FLIGHT = "flight"  # sorted set: calls in flight on the account, by when they are given up (ms)
ALLOWANCE_REPORT = "report"  # hash (wire.REPORT_*): settlements, pauses and refusals for the operator
ALLOWANCE_PARTS = (ALLOWANCE_GRANT, ALLOWANCE_WAITING, ALLOWANCE_WANTS, ALLOWANCE_FLIGHT, ALLOWANCE_REPORT)

# A provider account's own state (``AccountKeys``): written by the operator only.
ACCOUNT_LOG = "log"  # sorted set: grant epochs by time (ms)
ACCOUNT_AMOUNTS = "amounts"  # hash: "<epoch>:<requests|input|output>" -> amount granted (less refunds)
ACCOUNT_SUMS = "sums"  # hash: requests, input, output granted within the window
ACCOUNT_PARTS = (ACCOUNT_LOG, ACCOUNT_AMOUNTS, ACCOUNT_SUMS)


@dataclasses.dataclass(frozen=True)
class AccountKeys:
    """Key names of one provider account (an AnalysisProvider), under a hash tag of its own.

    No script touches these and a batch's keys together: the operator moves
    capacity from the account into batches' allowances in separate steps.
    """

    name: str

    @property
    def tag(self) -> str:
        return "{account:" + self.name + "}"

    @property
    def pattern(self) -> str:
        """SCAN pattern matching every key of the account (the tag's braces escaped)."""
        return "\\{account:" + self.name + "\\}:*"

    def part(self, part: str) -> str:
        """One of ``ACCOUNT_PARTS``."""
        return f"{self.tag}:{part}"


@dataclasses.dataclass(frozen=True)
class BatchKeys:
    """Key names of one batch."""

    uid: str

    @property
    def tag(self) -> str:
        return "{" + self.uid + "}"

    # ---- per stage

    def stream(self, stage: str) -> str:
        """Stream of work messages; its consumer group's PEL holds the leases."""
        return f"{self.tag}:stream:{stage}"

    def delayed(self, stage: str) -> str:
        """Sorted set of messages waiting for a retry, scored by due time (ms)."""
        return f"{self.tag}:delayed:{stage}"

    def counts(self, stage: str) -> str:
        """Hash of monotonic counters (succeeded, failed, retries, tokens, ...)."""
        return f"{self.tag}:counts:{stage}"

    def dead(self, stage: str) -> str:
        """Hash of dead-lettered messages: idempotency key -> why."""
        return f"{self.tag}:dead:{stage}"

    def gathered(self, stage: str) -> str:
        """Hash of items waiting for a collect stage: item -> its input reference."""
        return f"{self.tag}:gather:{stage}"

    def collected(self, stage: str) -> str:
        """Marker that a collect stage's items were combined (makes collecting idempotent)."""
        return f"{self.tag}:collected:{stage}"

    def retiring(self, stage: str) -> str:
        """Set of the stage's worker pods the operator retired to scale in: they claim nothing more, and go."""
        return f"{self.tag}:retiring:{stage}"

    def provider_batches(self, stage: str) -> str:
        """Hash of a ``mode: Batch`` stage's provider batches in flight: tag -> record JSON (``wire.PB_*``)."""
        return f"{self.tag}:pbatches:{stage}"

    def provider_batch_requests(self, stage: str) -> str:
        """Hash: a provider batch's tag -> JSON object of its requests, ``custom_id`` -> the stream entry it runs."""
        return f"{self.tag}:pbrequests:{stage}"

    def health(self, stage: str, consumer: str) -> str:
        """A worker's heartbeat, with a TTL."""
        return f"{self.tag}:health:{stage}:{consumer}"

    def limiter(self, stage: str, part: str) -> str:
        """The stage's rate limiter: ``part`` is one of ``LIMITER_PARTS``."""
        return f"{self.tag}:rl:{stage}:{part}"

    def allowance(self, provider: str, part: str) -> str:
        """The batch's use of the account behind ``spec.providers.<provider>``: ``part`` is one of ``ALLOWANCE_PARTS``."""
        return f"{self.tag}:account:{provider}:{part}"

    # ---- per batch

    @property
    def outcomes(self) -> str:
        """Hash: idempotency key -> outcome JSON. Written once per key: the first completion wins."""
        return f"{self.tag}:outcomes"

    @property
    def results(self) -> str:
        """Hash: idempotency key -> the output text of a successful attempt."""
        return f"{self.tag}:results"

    @property
    def usage(self) -> str:
        """Hash of the whole batch's tokens and cost, for budgets (the stage counters have them per stage)."""
        return f"{self.tag}:usage"

    @property
    def flags(self) -> str:
        """Hash of what workers tell the operator, e.g. budget_exceeded -> why."""
        return f"{self.tag}:flags"

    @property
    def sealed(self) -> str:
        """Set of stage names that can receive no more work (set by the operator)."""
        return f"{self.tag}:sealed"

    @property
    def seeded(self) -> str:
        """Marker that the initial items were enqueued (makes seeding idempotent), holding the layout version."""
        return f"{self.tag}:seeded"

    @property
    def finals(self) -> str:
        """List of the idempotency keys of attempts where an item's journey ended, in the order they ended.

        Appended in the same Lua step that records the outcome (``complete.lua``,
        ``reclaim.lua``, ``release.lua``), once per key; the operator exports it
        incrementally (``producer.finals``) with a cursor kept outside Redis.
        """
        return f"{self.tag}:finals"

    @property
    def exported(self) -> str:
        """String: how long the finals list was when an export pass last made sure replicas hold it.

        Written by the operator together with a ``WAIT`` on the same connection
        (``producer.replicate_finals``): the write that lets the wait cover
        what workers appended before it.
        """
        return f"{self.tag}:exported"

    @property
    def reruns(self) -> str:
        """Hash: idempotency key of a failed or dead-lettered end -> the key its re-run starts with.

        Written once per key (HSETNX, in ``rerun.lua``): what makes
        ``producer.retry_failed`` requeue an item at most once per failure.
        """
        return f"{self.tag}:reruns"

    @property
    def pattern(self) -> str:
        """SCAN pattern matching every key of the batch (the tag's braces escaped)."""
        return "\\{" + self.uid + "\\}:*"

    def idem(self, stage: str, item: str, round_: int, attempt: int) -> str:
        """The idempotency key of one attempt: ``batch-uid/stage/item/round/attempt``."""
        return f"{self.uid}/{stage}/{item}/{round_}/{attempt}"

    def collected_input(self, stage: str) -> str:
        """Field of the results hash holding a collect stage's combined input (``collect.lua`` writes it)."""
        return f"{self.uid}/{stage}/collected"


def child_input(idem: str, key: str) -> str:
    """Field of the results hash holding the input of fan-out child ``key`` of attempt ``idem``."""
    return f"{idem}{wire.CHILD_INPUT_MARK}{key}"


@dataclasses.dataclass(frozen=True)
class Idem:
    uid: str
    stage: str
    item: str
    round: int
    attempt: int


def parse_idem(key: str) -> Idem:
    """Inverse of ``BatchKeys.idem``; the item may itself contain "/" (fanned-out children)."""
    uid, stage, rest = key.split("/", 2)
    item, round_, attempt = rest.rsplit("/", 2)
    return Idem(uid, stage, item, int(round_), int(attempt))
