"""The names inside a batch's Redis data: stream fields, counters, flags, outcome fields and statuses.

Key names are ``keys``; this module names what the keys hold. Each name is
written here once. Python imports it; the Lua scripts get the same constants
as locals of the same name (``scripts`` puts them in front of each script's
text when it reads it), so ``f[MSG_ITEM]`` in a script and
``wire.MSG_ITEM`` in Python are one definition.
``tests/unit/test_wire.py`` fails on a script or a Redis-speaking module that
spells one of these names as a literal, and on a changed value.

The values are what running batches already hold: changing one would strand
a batch across an upgrade, so a value never changes; a new name is added
instead. What the names are:

- ``MSG_*``: the fields of a stage's message (a stream entry, and a retry
  waiting in the delayed set), flat as ``queue.Message.fields`` writes them;
- ``COUNT_*``: a stage's counters (``keys.BatchKeys.counts``), monotonic but
  for a re-run, which takes a failure back; ``approved_in_round`` and
  ``rejected_in_round`` name a judge's per-round counters;
- ``USAGE_*``: tokens and cost, counted per stage and for the batch
  (``keys.BatchKeys.usage``), in integers (cost in nano-dollars);
- ``FLAG_*``: fields of the batch's flags hash; workers obey the first two
  before every claim and the third as they stop, the operator keeps the last
  two for itself;
- ``OUTCOME_*``: the fields of an attempt's outcome JSON (``outcomes`` hash),
  written once per idempotency key by whoever finishes the attempt;
- ``STATUS_*``: the values of an outcome's status;
- ``ROUTE_*``: the fields of a follow-up route handed to ``complete.lua``;
- ``RELEASE_*``: where ``release.lua`` sends released items;
- ``COLLECTED_*``: the fields of each element of a collect stage's combined
  input (a JSON list, what its prompt sees as ``input``);
- ``BEAT_*``: the fields of a worker's heartbeat (``keys.BatchKeys.health``);
- ``PB_*``: a provider batch's record (``keys.BatchKeys.provider_batches``)
  and what ``provider_batch.lua`` does with it;
- ``CLAIM_*``: why ``claim.lua`` claimed nothing;
- ``QUOTA_*``: the fields of a stage's quota pause (``keys.LIMITER_QUOTA``),
  which the worker whose call the provider refused for quota or billing
  writes, its probes update, and the operator reads into a condition;
- ``ALLOW_*``: a batch's allowance of a provider account
  (``keys.ALLOWANCE_GRANT``), which only the operator writes and the workers
  spend; ``REPORT_*``: what the workers tell the operator
  about that account (docs/design.md#provider-accounts).
"""

from __future__ import annotations

# ---- a stage's message
MSG_ITEM = "item"
MSG_ROUND = "round"
MSG_ATTEMPT = "attempt"
MSG_INPUT = "input"  # where the input is: a key of the results hash ("" for initial items)
MSG_SINCE = "since"  # ms: the first attempt in this stage and round started (0: not yet)
MSG_FEEDBACK = "feedback"
MSG_FIRST = "first"  # the attempt this run started at (a re-run starts past the old ones)

# ---- a stage's counters
COUNT_SUCCEEDED = "succeeded"
COUNT_FAILED = "failed"
COUNT_RETRIES = "retries"  # retries that used an attempt
COUNT_RATE_LIMITED = "rate_limited"  # retries that kept their attempt
COUNT_REDELIVERED = "redelivered"  # expired leases taken over
COUNT_DEAD_LETTERED = "dead_lettered"
COUNT_RERUN = "rerun"  # failed or dead-lettered ends requeued by a re-run
COUNT_CHILDREN = "children"  # fan-out children made
COUNT_APPROVED = "approved"  # a judge's verdicts, and items an approval gate released
COUNT_REJECTED = "rejected"
COUNT_EXHAUSTED = "exhausted"  # rejected with no rounds left
COUNT_PROVIDER_BATCHES = "provider_batches"  # mode: Batch: provider batches submitted (once each)
COUNT_PROVIDER_BATCHES_ENDED = "provider_batches_ended"  # and collected
COUNT_APPROVED_ROUND = "approved_round_"  # + the round: approved_in_round
COUNT_REJECTED_ROUND = "rejected_round_"  # + the round: rejected_in_round

# ---- tokens and cost (a stage's counters and the batch's usage hash)
USAGE_INPUT_TOKENS = "input_tokens"  # every prompt token, cached or not
USAGE_OUTPUT_TOKENS = "output_tokens"
USAGE_COST_NUSD = "cost_nusd"
# Of the input tokens, those the provider wrote to its prompt cache, and those it read from it.
USAGE_CACHE_WRITE_TOKENS = "cache_write_tokens"
USAGE_CACHE_READ_TOKENS = "cache_read_tokens"

# ---- the batch's flags
FLAG_SUSPENDED = "suspended"  # -> why; set by the operator from spec.suspend (or a failed batch)
FLAG_BUDGET_EXCEEDED = "budget_exceeded"  # -> why; raised by the first worker that sees the budget used up
FLAG_DELETING = "deleting"  # -> why; the batch is being deleted: workers cancel its provider batches as they stop
FLAG_RETRY_TOKEN = "retry_token"  # the retry-failed annotation value the operator last acted on
FLAG_RUN = "run"  # how many re-runs there were; part of every Job's name

# ---- an attempt's outcome
OUTCOME_STATUS = "status"  # one of STATUS_*
OUTCOME_ERROR = "error"
OUTCOME_ERROR_CLASS = "error_class"
OUTCOME_INPUT = "input"  # the attempt's input reference; a re-run starts from it
OUTCOME_FEEDBACK = "feedback"
OUTCOME_OUTPUT_KEY = "output_key"  # the result the item ended with, when not the attempt's own
OUTCOME_MODEL = "model"
OUTCOME_INPUT_TOKENS = "in"
OUTCOME_OUTPUT_TOKENS = "out"
OUTCOME_POD = "pod"
OUTCOME_DELIVERIES = "deliveries"  # a dead letter's
OUTCOME_APPROVED = "approved"  # an approval gate's release
OUTCOME_CLAIMED_MS = "claimed_ms"
OUTCOME_CALLED_MS = "called_ms"
# What a fanned-out child's input field carries between its parent's attempt key and its own key (keys.child_input).
CHILD_INPUT_MARK = "#"
# The outcome an attempt keeps once its item ended with a success and nothing can need it any more (complete.lua):
# its key stays, so a late duplicate of the attempt is still recognised, but not what it said or produced.
OUTCOME_SPENT = "spent"

# ---- outcome statuses
STATUS_SUCCEEDED = "succeeded"
STATUS_REJECTED = "rejected"  # a judge sent the item back
STATUS_FAILED = "failed"
STATUS_RETRY = "retry"
STATUS_DEAD = "dead"

# ---- a route handed to complete.lua
ROUTE_FIELDS = "fields"  # the message's flat fields, for a stream
ROUTE_GATHER = "gather"  # the item, for a collect stage's gathering hash
ROUTE_INPUT = "input"  # its input reference, with ROUTE_GATHER

# ---- where release.lua sends released items
RELEASE_STREAM = "stream"  # the next stage's stream
RELEASE_GATHER = "gather"  # the next stage's gathering hash (it collects)
RELEASE_NONE = "none"  # nowhere: the gate is the last stage

# ---- an element of a collect stage's combined input
COLLECTED_ITEM = "item"
COLLECTED_OUTPUT = "output"

# ---- a worker's heartbeat
BEAT_IN_FLIGHT = "in_flight"  # items the worker holds
BEAT_AT = "at"  # when it was written (epoch seconds)
BEAT_POD = "pod"

# ---- a stage's quota pause: the provider refused a call for quota or billing (errors.ErrorClass.QUOTA_EXHAUSTED)
QUOTA_MESSAGE = "refusal"  # the provider's words, from the latest refusal
QUOTA_MODEL = "model"  # set when the refusal concerns this model only (a 403 for it); absent: the whole account
QUOTA_SINCE = "since"  # ms (Redis time): the first refusal
QUOTA_BACKOFF = "probe_wait_ms"  # from a refused probe to the next; doubles up to a cap
QUOTA_PROBES = "probes"  # probes let through so far
QUOTA_PROBE = "probe"  # the reservation id of the call probing now; absent: none
QUOTA_PROBE_UNTIL = "probe_until"  # ms: a probe that never reports back stops holding the others then


# ---- a batch's allowance of a provider account (keys.ALLOWANCE_GRANT): written by the operator, spent by workers
ALLOW_REQUESTS = "grant_requests"  # calls left; a call takes one
ALLOW_INPUT = "grant_input"  # input tokens left (absent: the account does not limit them)
ALLOW_OUTPUT = "grant_output"  # output tokens left (absent: not limited)
ALLOW_EPOCH = "grant_epoch"  # the grant's id in the account's log (ms, Redis time): what settlements name
ALLOW_NEXT = "grant_next"  # ms: when the operator grants again; a worker without an allowance asks then
ALLOW_PAUSED_UNTIL = "grant_paused_until"  # ms: the account is paused (a provider's retry-after) until then
ALLOW_HELD = "grant_held"  # why the batch gets nothing now: the provider's refusal for quota, in its words
ALLOW_PROBE = "grant_probe"  # "1": this allowance is the one probe of an account the provider refuses for quota

# ---- what a worker tells the operator about the account (keys.ALLOWANCE_REPORT); the operator reads and clears it
REPORT_SETTLED_INPUT = "settled_input_"  # + a grant's epoch -> input tokens used minus reserved, summed
REPORT_SETTLED_OUTPUT = "settled_output_"  # + a grant's epoch -> output tokens used minus reserved, summed
REPORT_PAUSE_UNTIL = "report_pause_until"  # ms (Redis time): the provider said wait (a 429's retry-after)
REPORT_REFUSED = "report_refused"  # the provider's words refusing a call for quota or billing
REPORT_REFUSED_MODEL = "report_refused_model"  # the model, when the refusal concerns that model only ("" otherwise)
REPORT_REFUSED_AT = "report_refused_at"  # ms: when
REPORT_PASSED_AT = "report_passed_at"  # ms: a probe call the provider answered (the account can pay again)

# ---- a provider batch's record (keys.BatchKeys.provider_batches), written by its stage's worker (mode: Batch)
PB_AT = "prepared_ms"  # ms: when the batch was prepared (its requests chosen, before it was submitted)
PB_ID = "batch_id"  # the provider's id of the batch, once submitted ("" until then)
PB_REQUESTS = "request_count"  # how many requests it carries
PB_RESERVED_NUSD = "reserved_nusd"  # the worst case of its cost, held against the budget until it is collected
PB_RESERVED_TOKENS = "reserved_tokens"  # and of its tokens
# What provider_batch.lua does with a record
PB_PREPARE = "prepare"  # write it and its requests (once)
PB_SUBMITTED = "submitted"  # record the provider's id (once), counting COUNT_PROVIDER_BATCHES
PB_ENDED = "ended"  # remove it and its requests, counting COUNT_PROVIDER_BATCHES_ENDED if it was submitted

# ---- what claim.lua answers when it claims nothing
CLAIM_FULL = "full"  # the stage's workers hold its concurrency's worth of items together
CLAIM_EMPTY = "empty"  # nothing new in the stream; with the id to wait for newer entries after
CLAIM_RETIRED = "retired"  # the operator retired this worker to scale the stage in: it claims nothing more


def approved_in_round(round_: int) -> str:
    """A judge's counter of approvals in round ``round_``."""
    return f"{COUNT_APPROVED_ROUND}{round_}"


def rejected_in_round(round_: int) -> str:
    """A judge's counter of rejections in round ``round_``."""
    return f"{COUNT_REJECTED_ROUND}{round_}"


def constants() -> dict[str, str]:
    """Every name above by its constant's name: what the Lua scripts get and what the drift test looks for."""
    return {name: value for name, value in globals().items() if name.isupper() and isinstance(value, str)}
