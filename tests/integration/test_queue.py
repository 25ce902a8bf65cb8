"""The queue protocol against a real redis-server: leases, redelivery, dead letters, idempotent completion."""

import asyncio
import uuid
from collections.abc import AsyncIterator

import pytest
import redis.exceptions
from redis.asyncio.cluster import RedisCluster

from analysis_core import keys, plan, queue, scripts, wire
from analysis_operator import producer
from analysis_worker import consumer

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module", params=["one-instance", "cluster-of-three"])
def redis_url(request: pytest.FixtureRequest) -> str:
    """Every test of the module on the dev cluster's Redis, then on a real Redis Cluster of three primaries."""
    if request.param == "cluster-of-three":
        return str(request.getfixturevalue("redis_cluster").url)
    return str(request.getfixturevalue("devcluster").redis_url)


@pytest.fixture
async def clients(redis_url: str) -> AsyncIterator[tuple[queue.Redis, queue.Redis]]:
    client, blocking = queue.connect(redis_url), queue.connect_blocking(redis_url)
    try:
        yield client, blocking
    finally:
        await blocking.aclose()
        await client.aclose()


def stage_queue(clients: tuple[queue.Redis, queue.Redis], uid: str, stage: str, name: str) -> consumer.StageQueue:
    return consumer.StageQueue(clients[0], clients[1], uid, stage, name)


async def seeded(
    clients: tuple[queue.Redis, queue.Redis], items: list[str], stages: tuple[str, ...] = ("a", "b")
) -> str:
    uid = uuid.uuid4().hex
    assert await producer.seed(clients[0], uid, list(stages), items) == len(items)
    return uid


async def test_seeding_is_idempotent_and_counted(clients: tuple[queue.Redis, queue.Redis]) -> None:
    uid = await seeded(clients, ["NVDA", "AMD", "TSM"])
    assert await producer.seed(clients[0], uid, ["a", "b"], ["NVDA", "AMD", "TSM"]) == 0
    counts = await consumer.stage_counts(clients[0], uid, "a")
    assert (counts.ready, counts.running, counts.retrying) == (3, 0, 0)
    assert not counts.drained
    later = await consumer.stage_counts(clients[0], uid, "b")
    assert later.drained  # the group exists even before anything reaches the stage


async def test_a_batch_keeps_its_layout_version_and_one_newer_than_the_operator_is_refused(
    clients: tuple[queue.Redis, queue.Redis],
) -> None:
    uid = await seeded(clients, ["NVDA"])
    assert (await producer.snapshot(clients[0], uid, ["a", "b"])).layout == keys.LAYOUT_VERSION
    assert await consumer.layout(clients[0], uid) == keys.LAYOUT_VERSION
    assert await consumer.layout(clients[0], uuid.uuid4().hex) is None  # not seeded yet
    await clients[0].set(keys.BatchKeys(uid).seeded, keys.LAYOUT_VERSION + 1)  # as a later release would seed it
    with pytest.raises(producer.NewerLayout, match=f"layout version {keys.LAYOUT_VERSION + 1}, newer than"):
        await producer.snapshot(clients[0], uid, ["a", "b"])


async def test_complete_routes_and_acknowledges_once(clients: tuple[queue.Redis, queue.Redis]) -> None:
    uid = await seeded(clients, ["NVDA"])
    q = stage_queue(clients, uid, "a", "pod-1")
    (delivery,) = (await q.claim(10, 100)).deliveries
    assert delivery.message == queue.Message("NVDA", since_ms=delivery.message.since_ms)
    assert delivery.message.since_ms > 0  # the claim starts the clock of its first attempt
    assert (await q.counts()).running == 1
    idem = q.keys.idem("a", "NVDA", 0, 1)
    route = consumer.Route("b", queue.Message("NVDA", input=idem))
    done = await q.complete(
        delivery, {"status": "succeeded"}, result="analysis", increments={"succeeded": 1}, routes=[route]
    )
    assert done
    # A second completion of the same key (a slow duplicate) changes nothing.
    again = await q.complete(
        delivery, {"status": "succeeded"}, result="other", increments={"succeeded": 1}, routes=[route]
    )
    assert not again
    counts = await q.counts()
    assert counts.drained
    assert counts.counters == {"succeeded": 1}
    assert await q.result(idem) == "analysis"
    nxt = stage_queue(clients, uid, "b", "pod-2")
    (routed,) = (await nxt.claim(10, 100)).deliveries
    assert routed.message.input == idem
    assert (await nxt.counts()).running == 1
    assert (await q.claim(10, 50)).deliveries == []


async def script_calls(client: queue.Redis) -> int:
    """Scripts Redis has run so far (FCALL of the project's functions), on every primary of a cluster."""
    if isinstance(client, RedisCluster):
        nodes = [await client.info("commandstats", target_nodes=node) for node in client.get_primaries()]
    else:
        nodes = [await client.info("commandstats")]
    return sum(
        int(stats.get(f"cmdstat_{name}", {}).get("calls", 0)) for stats in nodes for name in ("fcall", "fcall_ro")
    )


async def test_completions_finished_together_are_one_script_call_each_attempt_on_its_own(
    clients: tuple[queue.Redis, queue.Redis],
) -> None:
    uid = await seeded(clients, ["NVDA", "AMD", "TSM"])
    q = stage_queue(clients, uid, "a", "pod")
    nvda, amd, tsm = (await q.claim(3, 100)).deliveries
    assert [d.message.item for d in (nvda, amd, tsm)] == ["NVDA", "AMD", "TSM"]
    k = q.keys
    to_b = [consumer.Route("b", queue.Message("NVDA", input=k.idem("a", "NVDA", 0, 1)))]
    to_c = [
        consumer.Route("c", queue.Message("AMD/x", input="AMD-x"), gather=True),  # c collects
        consumer.Route("b", queue.Message("AMD/y", input="y-input")),
    ]
    ok = {"status": "succeeded"}
    before = await script_calls(clients[0])
    finished = await asyncio.gather(
        q.finish(consumer.Completion(nvda, ok, "n", {"succeeded": 1}, to_b)),
        q.finish(consumer.Completion(amd, ok, "a", {"succeeded": 1, "children": 2}, to_c, {"AMD-x": "x"})),
        q.finish(consumer.Completion(tsm, {"status": "failed"}, None, {"failed": 1}, final=True)),
        q.finish(consumer.Completion(nvda, ok, "again", {"succeeded": 1}, to_b)),  # a duplicate, in the same turn
    )
    assert await script_calls(clients[0]) == before + 1
    assert [f.first for f in finished] == [True, True, True, False]
    counts = await q.counts()
    assert counts.drained
    assert counts.counters == {"succeeded": 2, "children": 2, "failed": 1}
    # Each attempt's routes went where they lead, in order.
    b = stage_queue(clients, uid, "b", "pod-b")
    assert [d.message.item for d in (await b.claim(10, 100)).deliveries] == ["NVDA", "AMD/y"]
    assert await clients[0].hgetall(k.gathered("c")) == {"AMD/x": "AMD-x"}
    assert await q.result(k.idem("a", "NVDA", 0, 1)) == "n"
    assert await q.result("AMD-x") == "x"
    assert await clients[0].lrange(k.finals, 0, -1) == [k.idem("a", "TSM", 0, 1)]


async def test_many_completions_finished_together_go_in_two_halves_each_claiming_its_successors(
    clients: tuple[queue.Redis, queue.Redis],
) -> None:
    n = consumer.SPLIT_AT
    uid = await seeded(clients, [f"I{i:03d}" for i in range(2 * n)])
    q = stage_queue(clients, uid, "a", "pod")
    deliveries = (await q.claim(n, 2 * n)).deliveries
    before = await script_calls(clients[0])
    ok = {"status": "succeeded"}
    finished = await asyncio.gather(
        *(q.finish(consumer.Completion(d, ok, "x", {"succeeded": 1}, claim=1)) for d in deliveries)
    )
    assert await script_calls(clients[0]) == before + 2
    # Each completion took its own successor, in the order of the stream.
    assert [f.claimed[0].message.item for f in finished] == [f"I{i:03d}" for i in range(n, 2 * n)]
    assert (await q.counts()).counters == {"succeeded": n}
    assert (await q.counts()).running == n


async def test_a_step_finishes_at_most_so_many_attempts_and_the_rest_go_in_the_next(
    clients: tuple[queue.Redis, queue.Redis],
) -> None:
    n = 2 * consumer.COMPLETIONS_PER_STEP + 1
    uid = await seeded(clients, [f"I{i:03d}" for i in range(n)])
    q = stage_queue(clients, uid, "a", "pod")
    deliveries = (await q.claim(n, n)).deliveries
    assert len(deliveries) == n
    before = await script_calls(clients[0])
    ok = {"status": "succeeded"}
    finished = await asyncio.gather(*(q.finish(consumer.Completion(d, ok, "x", {"succeeded": 1})) for d in deliveries))
    assert await script_calls(clients[0]) == before + 3
    assert all(f.first for f in finished)
    assert (await q.counts()).counters == {"succeeded": n}


async def test_a_completion_claims_the_next_messages_unless_the_batch_is_suspended_or_over_budget(
    clients: tuple[queue.Redis, queue.Redis],
) -> None:
    client = clients[0]
    uid = await seeded(clients, [f"I{i}" for i in range(8)])
    budget = plan.BudgetPlan(max_tokens=100)
    q = consumer.StageQueue(client, clients[1], uid, "a", "pod", budget=budget)
    (delivery,) = (await q.claim(1, 100)).deliveries

    async def finish(delivery: consumer.Delivery, tokens: int, claim: int) -> list[consumer.Delivery]:
        increments = {"succeeded": 1, "input_tokens": tokens}
        done = await q.finish(consumer.Completion(delivery, {"status": "succeeded"}, "x", increments, claim=claim))
        assert done.first
        return done.claimed

    (second,) = await finish(delivery, 10, claim=1)
    assert second.message.item == "I1"
    assert await q.pending_ids() == [second.entry_id]  # leased to this consumer, as a claim leases it
    third, fourth = await finish(second, 10, claim=2)
    assert [third.message.item, fourth.message.item] == ["I2", "I3"]
    await producer.suspend(client, uid, "spec.suspend")
    assert await finish(third, 10, claim=1) == []
    await producer.resume(client, uid)
    # The budget is checked after the step's own usage counts: 30 + 69 is under 100, 99 + 1 reaches it.
    (fifth,) = await finish(fourth, 69, claim=1)
    usage = await consumer.usage(client, uid)
    assert budget.exceeded(usage) is None
    assert await finish(fifth, 1, claim=1) == []
    usage = await consumer.usage(client, uid)
    assert budget.exceeded(usage) == "100 tokens used, budget.maxTokens is 100"
    # A flag another worker raised stops it too, whatever the usage says.
    unlimited = stage_queue(clients, uid, "a", "other")
    (sixth,) = (await unlimited.claim(1, 100)).deliveries
    assert await consumer.raise_budget_exceeded(client, uid, "elsewhere")
    assert (await unlimited.finish(consumer.Completion(sixth, {}, "x", {}, claim=1))).claimed == []
    assert (await q.counts()).ready == 2


async def test_expired_lease_is_redelivered_and_the_first_completion_wins(
    clients: tuple[queue.Redis, queue.Redis],
) -> None:
    uid = await seeded(clients, ["NVDA"])
    slow = stage_queue(clients, uid, "a", "slow")
    other = stage_queue(clients, uid, "a", "other")
    (first,) = (await slow.claim(1, 100)).deliveries
    assert await other.reclaim(10, lease_ms=200, max_deliveries=5) == []  # still leased
    await asyncio.sleep(0.3)
    (second,) = await other.reclaim(10, lease_ms=200, max_deliveries=5)
    assert second.entry_id == first.entry_id
    assert second.deliveries == 2
    assert await slow.renew([first.entry_id]) == [first.entry_id]  # the lease moved on
    route = [consumer.Route("b", queue.Message("NVDA"))]
    assert await other.complete(second, {"status": "succeeded"}, result="x", increments={"succeeded": 1}, routes=route)
    assert not await slow.complete(
        first, {"status": "succeeded"}, result="y", increments={"succeeded": 1}, routes=route
    )
    assert (await consumer.stage_counts(clients[0], uid, "b")).ready == 1
    assert (await other.counts()).counters == {"succeeded": 1, "redelivered": 1}


async def test_renewing_a_finished_delivery_reports_no_lease_lost(clients: tuple[queue.Redis, queue.Redis]) -> None:
    # A completion whose reply has not reached the worker yet: the renewal that crosses it must not cry "lost".
    uid = await seeded(clients, ["NVDA"])
    holder = stage_queue(clients, uid, "a", "holder")
    (delivery,) = (await holder.claim(1, 100)).deliveries
    assert await holder.complete(delivery, {"status": "succeeded"}, result="x", increments={"succeeded": 1})
    assert await holder.renew([delivery.entry_id]) == []


async def test_renewed_lease_is_not_taken_over(clients: tuple[queue.Redis, queue.Redis]) -> None:
    uid = await seeded(clients, ["NVDA"])
    holder = stage_queue(clients, uid, "a", "holder")
    other = stage_queue(clients, uid, "a", "other")
    (delivery,) = (await holder.claim(1, 100)).deliveries
    for _ in range(3):
        await asyncio.sleep(0.12)
        assert await holder.renew([delivery.entry_id]) == []
    assert await other.reclaim(10, lease_ms=200, max_deliveries=5) == []


async def test_dead_letter_after_the_delivery_bound(clients: tuple[queue.Redis, queue.Redis]) -> None:
    uid = await seeded(clients, ["NVDA"])
    q = stage_queue(clients, uid, "a", "pod")
    (delivery,) = (await q.claim(1, 100)).deliveries
    await asyncio.sleep(0.06)
    (again,) = await q.reclaim(10, lease_ms=50, max_deliveries=2)
    assert again.deliveries == 2
    await asyncio.sleep(0.06)
    assert await q.reclaim(10, lease_ms=50, max_deliveries=2) == []  # third delivery: dead-lettered
    counts = await q.counts()
    assert counts.drained
    assert counts.counters["dead_lettered"] == 1
    idem = q.keys.idem("a", "NVDA", 0, 1)
    assert "delivered 3 times" in (await clients[0].hget(q.keys.dead("a"), idem) or "")
    # A worker that was only slow cannot resurrect it.
    assert not await q.complete(delivery, {"status": "succeeded"}, result="late", increments={"succeeded": 1})
    assert await q.result(idem) is None


async def test_retry_waits_in_the_delayed_set_and_counts_attempts(clients: tuple[queue.Redis, queue.Redis]) -> None:
    uid = await seeded(clients, ["NVDA"])
    q = stage_queue(clients, uid, "a", "pod")
    (delivery,) = (await q.claim(1, 100)).deliveries
    retry = queue.Message("NVDA", attempt=2, since_ms=123)
    assert await q.retry(delivery, retry, delay_ms=150, outcome={"status": "retry"}, increments={"retries": 1})
    # The same attempt cannot be retried twice (a slow duplicate failing too).
    assert not await q.retry(delivery, retry, delay_ms=0, outcome={"status": "retry"}, increments={"retries": 1})
    counts = await q.counts()
    assert (counts.ready, counts.running, counts.retrying) == (0, 0, 1)
    moved, wait_ms = await q.promote()
    assert moved == 0
    assert 0 < wait_ms <= 150
    await asyncio.sleep(wait_ms / 1000 + 0.02)
    assert (await q.promote())[0] == 1
    (redelivered,) = (await q.claim(1, 100)).deliveries
    assert redelivered.message == retry
    assert (await q.counts()).counters == {"retries": 1}


async def test_a_rate_limited_retry_keeps_its_attempt(clients: tuple[queue.Redis, queue.Redis]) -> None:
    uid = await seeded(clients, ["NVDA"])
    q = stage_queue(clients, uid, "a", "pod")
    (delivery,) = (await q.claim(1, 100)).deliveries
    assert await q.retry(delivery, delivery.message, delay_ms=0, outcome=None, increments={"rate_limited": 1})
    await q.promote()
    (again,) = (await q.claim(1, 100)).deliveries
    assert again.message.attempt == 1
    assert await q.complete(again, {"status": "succeeded"}, result="ok", increments={"succeeded": 1})


async def test_hand_back_makes_work_available_at_once(clients: tuple[queue.Redis, queue.Redis]) -> None:
    uid = await seeded(clients, ["NVDA", "AMD"])
    leaving = stage_queue(clients, uid, "a", "leaving")
    staying = stage_queue(clients, uid, "a", "staying")
    claimed = (await leaving.claim(2, 100)).deliveries
    assert len(claimed) == 2
    assert set(await leaving.pending_ids()) == {d.entry_id for d in claimed}
    assert await leaving.hand_back(await leaving.pending_ids()) == 2
    taken = (await staying.claim(5, 100)).deliveries
    assert sorted(d.message.item for d in taken) == ["AMD", "NVDA"]
    assert await leaving.pending_ids() == []


async def test_a_wait_on_an_empty_stage_wakes_when_work_arrives(clients: tuple[queue.Redis, queue.Redis]) -> None:
    uid = uuid.uuid4().hex
    await producer.seed(clients[0], uid, ["a"], [])
    q = stage_queue(clients, uid, "a", "pod")
    empty = await q.claim(1, 100)
    assert (empty.deliveries, empty.empty_because) == ([], wire.CLAIM_EMPTY)
    waiting = asyncio.create_task(q.wait_for_new(empty.last_id, 5000))
    await asyncio.sleep(0.05)
    assert not waiting.done()
    fields = queue.Message("NVDA").fields()
    await clients[0].xadd(keys.BatchKeys(uid).stream("a"), dict(zip(fields[::2], fields[1::2], strict=True)))
    await asyncio.wait_for(waiting, timeout=2)  # well before the 5 s block ends
    (delivery,) = (await q.claim(1, 100)).deliveries  # the wait claimed nothing: the claim does
    assert delivery.message.item == "NVDA"


async def test_workers_together_claim_no_more_than_the_stages_concurrency(
    clients: tuple[queue.Redis, queue.Redis],
) -> None:
    uid = await seeded(clients, ["A", "B", "C", "D", "E"])
    one, two = stage_queue(clients, uid, "a", "pod-1"), stage_queue(clients, uid, "a", "pod-2")
    assert len((await one.claim(3, 4)).deliveries) == 3
    (last,) = (await two.claim(3, 4)).deliveries  # the fourth: the stage holds its concurrency's worth
    full = await two.claim(3, 4)
    assert (full.deliveries, full.empty_because) == ([], wire.CLAIM_FULL)
    assert await two.complete(last, {"status": "succeeded"}, result="ok", increments={"succeeded": 1})
    assert len((await two.claim(3, 4)).deliveries) == 1  # a slot freed: E


async def test_a_completions_claim_keeps_the_stages_concurrency_and_a_retired_worker_takes_no_successor(
    clients: tuple[queue.Redis, queue.Redis],
) -> None:
    client, uid = clients[0], await seeded(clients, ["A", "B", "C", "D", "E"])
    one = consumer.StageQueue(client, clients[1], uid, "a", "pod-1", concurrency=3)
    two = consumer.StageQueue(client, clients[1], uid, "a", "pod-2", concurrency=3)
    a, _ = (await one.claim(2, 3)).deliveries
    (c,) = (await two.claim(2, 3)).deliveries  # the stage holds three: its concurrency
    ok = {"status": "succeeded"}
    # Finishing one of three frees one slot: asking for two claims only one.
    done = await one.finish(consumer.Completion(a, ok, "x", {"succeeded": 1}, claim=2))
    assert [d.message.item for d in done.claimed] == ["D"]
    # complete.lua checks retirement as claim.lua does: a retired worker takes no successor, even with room.
    # (retire.lua retires only workers that hold nothing; this one is marked directly, holding C.)
    await client.sadd(keys.BatchKeys(uid).retiring("a"), "pod-2")
    roomy = consumer.StageQueue(client, clients[1], uid, "a", "pod-2", concurrency=10)
    finished = await roomy.finish(consumer.Completion(c, ok, "x", {"succeeded": 1}, claim=1))
    assert (finished.first, finished.claimed) == (True, [])
    assert [d.message.item for d in (await one.claim(5, 10)).deliveries] == ["E"]


async def test_a_retired_worker_claims_and_reclaims_nothing_and_only_an_idle_one_is_retired(
    clients: tuple[queue.Redis, queue.Redis],
) -> None:
    client, uid = clients[0], await seeded(clients, ["A", "B"])
    busy, idle = stage_queue(clients, uid, "a", "pod-busy"), stage_queue(clients, uid, "a", "pod-idle")
    (held,) = (await busy.claim(1, 10)).deliveries
    assert await producer.retire(client, uid, "a", ["pod-busy", "pod-idle"]) == ["pod-idle"]
    retired = await idle.claim(1, 10)
    assert (retired.deliveries, retired.empty_because) == ([], wire.CLAIM_RETIRED)
    await asyncio.sleep(0.1)
    assert await idle.reclaim(10, lease_ms=50, max_deliveries=5) == []  # busy's lease expired; not for idle
    (again,) = await busy.reclaim(10, lease_ms=50, max_deliveries=5)
    assert again.message.item == held.message.item
    snap = await producer.snapshot(client, uid, ["a"])
    assert (snap.held["a"], snap.retired["a"]) == ({"pod-busy": 1}, frozenset({"pod-idle"}))


async def test_a_restarted_worker_resumes_what_it_held(clients: tuple[queue.Redis, queue.Redis]) -> None:
    uid = await seeded(clients, ["NVDA"])
    before = stage_queue(clients, uid, "a", "pod-0")
    (held,) = (await before.claim(1, 100)).deliveries
    after = stage_queue(clients, uid, "a", "pod-0")  # same pod name, new process
    (resumed,) = await after.claim_own_pending(10)
    assert resumed.entry_id == held.entry_id


async def test_sealing(clients: tuple[queue.Redis, queue.Redis]) -> None:
    uid = await seeded(clients, ["NVDA"])
    q = stage_queue(clients, uid, "a", "pod")
    assert not await q.sealed()
    await producer.seal(clients[0], uid, "a")
    assert await q.sealed()


async def test_a_redelivered_fan_out_completion_creates_no_second_set_of_children(
    clients: tuple[queue.Redis, queue.Redis],
) -> None:
    uid = await seeded(clients, ["semis"])
    q = stage_queue(clients, uid, "a", "pod")
    (delivery,) = (await q.claim(1, 100)).deliveries
    idem = q.keys.idem("a", "semis", 0, 1)
    children = [consumer.Route("b", queue.Message(f"semis/{t}", input=f"{idem}#{t}")) for t in ("NVDA", "AMD")]
    inputs = {f"{idem}#{t}": t for t in ("NVDA", "AMD")}
    for _ in range(2):  # the second is a slow duplicate of the same attempt
        await q.complete(
            delivery,
            {"status": "succeeded"},
            result="{}",
            increments={"succeeded": 1, "children": 2},
            routes=children,
            more_results=inputs,
        )
    downstream = await consumer.stage_counts(clients[0], uid, "b")
    assert downstream.ready == 2
    assert (await q.counts()).counters == {"succeeded": 1, "children": 2}


async def test_flags_the_operator_sets_are_what_workers_and_snapshots_read(
    clients: tuple[queue.Redis, queue.Redis],
) -> None:
    client = clients[0]
    uid = await seeded(clients, ["NVDA"])
    snap = await producer.snapshot(client, uid, ["a", "b"])
    assert (snap.suspended, snap.budget_exceeded, snap.retry_token, snap.run) == (False, None, None, 0)
    await producer.suspend(client, uid, "spec.suspend")
    assert await consumer.suspended(client, uid)
    assert await consumer.raise_budget_exceeded(client, uid, "400 tokens used")
    assert not await consumer.raise_budget_exceeded(client, uid, "500 tokens used")  # the first one says it
    await producer.mark_retried(client, uid, "t1")
    await producer.mark_retried(client, uid, "t2")
    snap = await producer.snapshot(client, uid, ["a", "b"])
    assert (snap.suspended, snap.budget_exceeded, snap.retry_token, snap.run) == (True, "400 tokens used", "t2", 2)
    await producer.resume(client, uid)
    await producer.clear_budget_exceeded(client, uid)
    assert not await consumer.suspended(client, uid)
    snap = await producer.snapshot(client, uid, ["a", "b"])
    assert (snap.suspended, snap.budget_exceeded, snap.run) == (False, None, 2)


async def test_the_operator_reads_what_each_worker_holds_from_the_leases_and_the_heartbeat_expires(
    clients: tuple[queue.Redis, queue.Redis],
) -> None:
    client, uid = clients[0], await seeded(clients, ["A", "B", "C"])
    assert len((await stage_queue(clients, uid, "a", "pod-1").claim(2, 10)).deliveries) == 2
    await consumer.beat(client, uid, "a", "pod-1", in_flight=2, ttl_s=5, about={"claimed": 7})
    await consumer.beat(client, uid, "a", "pod-2", in_flight=0, ttl_s=5, about={})
    assert await consumer.beating(client, uid, "a", "pod-1")
    assert not await consumer.beating(client, uid, "a", "pod-3")
    snap = await producer.snapshot(client, uid, ["a", "b"])
    assert (snap.held, snap.retired) == ({"a": {"pod-1": 2}, "b": {}}, {"a": frozenset(), "b": frozenset()})
    await consumer.beat(client, uid, "a", "pod-1", in_flight=1, ttl_s=0.05, about={})
    await asyncio.sleep(0.2)
    assert not await consumer.beating(client, uid, "a", "pod-1")  # a worker that stops beating goes stale


async def test_removing_a_batch_leaves_other_batches_alone(clients: tuple[queue.Redis, queue.Redis]) -> None:
    client = clients[0]
    gone, kept = await seeded(clients, ["NVDA", "AMD"]), await seeded(clients, ["TSM"])
    await producer.suspend(client, gone, "the batch is being deleted")
    assert await producer.remove(client, gone, page=2) == 4  # both streams, the seeded marker, the flags
    assert await client.keys(keys.BatchKeys(gone).pattern) == []
    assert (await consumer.stage_counts(client, kept, "a")).ready == 1


async def test_the_functions_are_loaded_by_the_operator_side_and_awaited_by_the_worker_side(
    clients: tuple[queue.Redis, queue.Redis],
) -> None:
    uid = await seeded(clients, ["NVDA"])
    q = stage_queue(clients, uid, "a", "pod")
    client = clients[0]
    try:
        await client.function_flush()  # as a Redis without persistence after a restart
        # A worker cannot load them: it waits, as for a Redis that is down.
        with pytest.raises(scripts.NotLoaded) as caught:
            await q.claim(1, 100)
        assert isinstance(caught.value, queue.UNAVAILABLE)
        # The operator's next call loads them and goes on.
        assert (await producer.snapshot(client, uid, ["a", "b"])).layout == keys.LAYOUT_VERSION
        library = scripts.library()
        # RESP2: [name, value, name, value, ...]; a cluster answers per primary, and has it on each.
        answer = await client.function_list(library=library.name)
        if isinstance(client, RedisCluster):
            assert len(answer) == len(client.get_primaries())
            listings = [listed for per_node in answer.values() for listed in per_node]
        else:
            listings = answer
        assert listings
        for listed in listings:
            assert dict(zip(listed[::2], listed[1::2], strict=True))["library_name"] == library.name
        (delivery,) = (await q.claim(1, 100)).deliveries
        assert delivery.message.item == "NVDA"
        # An error inside a function names the script's file and line, not the library's.
        with pytest.raises(redis.exceptions.ResponseError, match=r"promote\.lua:\d+"):
            await scripts.function(client, "promote")(keys=[q.keys.delayed("a"), q.stream], args=["not a number"])
    finally:
        await scripts.load(client)
