// The BullMQ side of bench/queue_bench.py: a no-op processor, its worker, a bulk enqueue and a pickup driver.
//
// Runs under Node with the packages of bench/bullmq/package-lock.json (`make bench-bullmq`). The benchmark
// (Python) starts every process, owns the Redis server and does all the timing of throughput; this file only
// speaks BullMQ, so that every job is added, fetched and finished by BullMQ's own client and Lua scripts.
//
//   node baseline.mjs info                 versions and the Redis key names of the queue, as JSON
//   node baseline.mjs enqueue URL N        adds N jobs with Queue.addBulk, prints how many are waiting
//   node baseline.mjs worker URL           one worker process until SIGTERM; BENCH_BULLMQ_CONCURRENCY
//                                          (default 10) jobs at a time; BENCH_BULLMQ_LOG_STARTS=1 prints
//                                          "start <job id> <ms>" when the processor starts a job
//   node baseline.mjs pickup URL           reads a JSON list of gaps (ms) on stdin; for each gap, sleeps it,
//                                          reads the clock and adds one job; prints {job id: that time} once
//                                          every job is added (not processed: the benchmark waits for that)
//
// The processor is the counterpart of a zero-latency offline call and of arq's no-op job: it returns a short
// string. Jobs are added with removeOnComplete and removeOnFail, so a finished job leaves no key behind (its
// return value is not kept, unlike arq's result and our outcome). Everything else is BullMQ's default:
// one attempt, drainDelay 5 s, lockDuration 30 s, the stalled check, the events stream.
// It does not measure anything itself beyond the clock readings it prints: queue_bench.py compares them.

import { readFileSync } from "node:fs";
import { createRequire } from "node:module";
import { setTimeout as sleep } from "node:timers/promises";

import { Queue, QueueKeys, Worker } from "bullmq";

const QUEUE = "bench";
const JOB = "noop";
const JOB_OPTIONS = { removeOnComplete: true, removeOnFail: true };
const ENQUEUE_CHUNK = 500; // jobs per addBulk call; enqueueing is not timed

function connection(url) {
  // Options, not an ioredis instance: BullMQ creates its connections with its own defaults.
  return { url };
}

function packageVersion(name) {
  const require = createRequire(import.meta.url);
  const path = require.resolve(`${name}/package.json`, { paths: [import.meta.dirname] });
  return JSON.parse(readFileSync(path, "utf8")).version;
}

function info() {
  const keys = new QueueKeys().getKeys(QUEUE);
  return {
    bullmq: packageVersion("bullmq"),
    ioredis: packageVersion("ioredis"),
    node: process.versions.node,
    queue: QUEUE,
    keys: { wait: keys.wait, active: keys.active, id: keys.id, prefix: keys[""] },
  };
}

async function enqueue(url, n) {
  const queue = new Queue(QUEUE, { connection: connection(url), defaultJobOptions: JOB_OPTIONS });
  try {
    for (let start = 0; start < n; start += ENQUEUE_CHUNK) {
      const jobs = [];
      for (let i = start; i < Math.min(n, start + ENQUEUE_CHUNK); i++) {
        jobs.push({ name: JOB, data: { item: `I${String(i).padStart(6, "0")}` } });
      }
      await queue.addBulk(jobs);
    }
    return await queue.getWaitingCount();
  } finally {
    await queue.close();
  }
}

async function worker(url) {
  const concurrency = Number(process.env.BENCH_BULLMQ_CONCURRENCY ?? "10");
  const logStarts = process.env.BENCH_BULLMQ_LOG_STARTS === "1";
  const processor = async (job) => {
    const startedMs = Date.now();
    if (logStarts) {
      // A file: Node writes it synchronously, so no line is lost when the process is stopped.
      process.stdout.write(`start ${job.id} ${startedMs}\n`);
    }
    return `ok ${job.data.item}`;
  };
  // The jobs carry removeOnComplete and removeOnFail already; the worker's own are there for jobs added otherwise.
  const w = new Worker(QUEUE, processor, { connection: connection(url), concurrency, ...JOB_OPTIONS });
  // Failures are not kept in Redis (removeOnFail), so they are reported here and the benchmark reads the log.
  w.on("failed", (job, err) => process.stdout.write(`failed ${job?.id} ${err?.message}\n`));
  w.on("error", (err) => process.stdout.write(`error ${err?.message}\n`));
  let closing = false;
  const stop = async () => {
    if (closing) return;
    closing = true;
    await w.close();
    process.exit(0);
  };
  process.on("SIGTERM", stop);
  process.on("SIGINT", stop);
  await w.waitUntilReady();
  process.stdout.write(`ready concurrency=${concurrency}\n`);
}

async function pickup(url, gapsMs) {
  const queue = new Queue(QUEUE, { connection: connection(url), defaultJobOptions: JOB_OPTIONS });
  const sent = {};
  try {
    await queue.waitUntilReady();
    for (const [i, gap] of gapsMs.entries()) {
      await sleep(gap);
      const enqueuedMs = Date.now(); // read just before the add, like the XADD of ours
      const job = await queue.add(JOB, { item: `P${String(i).padStart(5, "0")}` });
      sent[job.id] = enqueuedMs;
    }
    return sent;
  } finally {
    await queue.close();
  }
}

async function main(argv) {
  const [command, url, arg] = argv;
  if (command === "info" && argv.length === 1) {
    return info();
  }
  if (command === "enqueue" && argv.length === 3) {
    return enqueue(url, Number(arg));
  }
  if (command === "worker" && argv.length === 2) {
    await worker(url);
    return undefined;
  }
  if (command === "pickup" && argv.length === 2) {
    return pickup(url, JSON.parse(readFileSync(0, "utf8")));
  }
  throw new Error("usage: baseline.mjs info | enqueue REDIS_URL N | worker REDIS_URL | pickup REDIS_URL < gaps.json");
}

const result = await main(process.argv.slice(2));
if (result !== undefined) {
  process.stdout.write(`${JSON.stringify(result)}\n`);
}
