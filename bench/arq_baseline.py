"""The arq side of ``bench/queue_bench.py``: a no-op job, its worker settings, and a bulk enqueue.

Runs only under arq's own virtual environment (``.venv-arq``: arq 0.28 needs
redis-py < 6, the project uses 8), never under the project's. Two uses:

- ``.venv-arq/bin/arq bench.arq_baseline.WorkerSettings`` (cwd and PYTHONPATH
  the repository root) runs one worker process; ``BENCH_ARQ_REDIS_URL`` and
  ``BENCH_ARQ_MAX_JOBS`` configure it;
- ``.venv-arq/bin/python bench/arq_baseline.py enqueue URL N`` enqueues N
  jobs with ``ArqRedis.enqueue_job`` (what an arq user calls), at most 50 in
  flight.

The job is the counterpart of a zero-latency offline call: it does nothing
and returns a short string, which arq stores as the job's result
(``keep_result`` default, one hour), as our worker stores its result and
outcome. Everything else is arq's default: ``poll_delay`` 0.5 s,
``queue_read_limit`` max(5 * max_jobs, 100), job timeout, retries, logging.
"""

from __future__ import annotations

import asyncio
import os
import sys
from typing import Any, ClassVar

from arq import create_pool
from arq.connections import RedisSettings

QUEUE = "arq:queue"


async def noop(ctx: dict[str, Any], item: str) -> str:
    return f"ok {item}"


class WorkerSettings:
    functions: ClassVar[list[Any]] = [noop]
    redis_settings = RedisSettings.from_dsn(os.environ.get("BENCH_ARQ_REDIS_URL", "redis://127.0.0.1:6379/0"))
    max_jobs = int(os.environ.get("BENCH_ARQ_MAX_JOBS", "10"))
    # arq's default unless the benchmark's "tuned" variant sets it.
    poll_delay = float(os.environ.get("BENCH_ARQ_POLL_DELAY", "0.5"))


async def enqueue(url: str, n: int, in_flight: int = 50) -> int:
    pool = await create_pool(RedisSettings.from_dsn(url))
    try:
        for start in range(0, n, in_flight):
            jobs = [pool.enqueue_job("noop", f"I{i:06d}") for i in range(start, min(n, start + in_flight))]
            await asyncio.gather(*jobs)
        return int(await pool.zcard(QUEUE))
    finally:
        await pool.aclose()


def main(argv: list[str]) -> None:
    if len(argv) != 4 or argv[1] != "enqueue":
        raise SystemExit(f"usage: {argv[0]} enqueue REDIS_URL N")
    queued = asyncio.run(enqueue(argv[2], int(argv[3])))
    print(queued)


if __name__ == "__main__":
    main(sys.argv)
