"""``analysis-worker``: run the worker of one stage, or ``--check`` its health.

Configured by environment only (``analysis_worker.config``); a bad
configuration is one log line naming every wrong variable, and exit code 2.
SIGTERM and SIGINT stop claiming and drain within the grace period, then
exit 0, except in Job mode, where only a sealed and drained stage exits 0
(that ends the work-queue Job) and an earlier stop exits 143, which the Job's
pod failure policy ignores. Redis refusing the password exits 2, like a bad
configuration. An unexpected error exits 1. ``--check`` exits 0 when this pod's heartbeat is fresh, 1 otherwise,
for an exec liveness probe.
"""

import asyncio
import functools
import logging
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path

import redis.exceptions

import analysis_core
from analysis_core import env, keys, plan, pricing, queue
from analysis_core.api import v1alpha1
from analysis_worker import batching, consumer, health, logs, loop, providers
from analysis_worker import config as config_
from analysis_worker.providers import base

log = logging.getLogger("analysis_worker")
CA_RELOAD_CHECK_S = 5.0  # how often the account's mounted CA bundle is looked at for a change
AUTH_WAIT_S = 60.0  # how long a refused login is waited out at start (the operator restores a lost user)


async def _serve(cfg: config_.WorkerConfig, the_plan: plan.Plan) -> int:
    stage = the_plan.stage(cfg.stage)
    provider_plan = the_plan.providers.get(stage.provider or "")
    if provider_plan is None:
        log.error("stage %s calls no provider; nothing for a worker to do", stage.name)
        return 2
    egress = None
    if provider_plan.account is not None and (provider_plan.account.proxy_url or provider_plan.account.ca_bundle):
        ca_file = str(cfg.ca_bundle_dir / f"{stage.provider}.pem") if provider_plan.account.ca_bundle else None
        egress = base.Egress(provider_plan.account.proxy_url, ca_file)
    api_key = cfg.api_key.get_secret_value() if cfg.api_key else None
    provider = providers.build(provider_plan, api_key, egress=egress)
    client = queue.connect(cfg.redis_url, cfg.redis_secret, cfg.redis_username)
    blocking = queue.connect_blocking(cfg.redis_url, cfg.redis_secret, cfg.redis_username)
    worker: loop.Worker | None = None
    try:
        seeded = await _first_contact(client, cfg)
        if seeded is not None and seeded > keys.LAYOUT_VERSION:
            log.error(
                "Redis holds batch %s in layout version %s, newer than this worker's (%s): run the worker "
                "image of the operator's release",
                cfg.batch_uid,
                seeded,
                keys.LAYOUT_VERSION,
            )
            return 2
        prices = pricing.PriceTable.load(cfg.prices_path)
        if stage.mode is v1alpha1.StageMode.BATCH:
            worker = batching.BatchWorker(cfg, the_plan, provider, client, blocking, prices)
        else:
            worker = loop.Worker(cfg, the_plan, provider, client, blocking, prices)
        running = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            running.add_signal_handler(sig, worker.stop)
        reloading = None
        if egress is not None and egress.ca_file:
            rebuild = functools.partial(providers.build, provider_plan, api_key, egress=egress)
            reloading = asyncio.create_task(_reload_on_change(Path(egress.ca_file), worker, rebuild))
        try:
            return await worker.run()
        finally:
            if reloading is not None:
                reloading.cancel()
                await asyncio.wait({reloading})  # it closes the clients it replaced
    finally:
        await (provider if worker is None else worker.provider).aclose()
        await blocking.aclose()
        await client.aclose()


async def _first_contact(client: queue.Redis, cfg: config_.WorkerConfig) -> int | None:
    """The batch's layout version, waiting up to ``AUTH_WAIT_S`` for Redis to know the worker's user.

    A Redis that restarted without an ACL file has forgotten the batch's user
    until the operator sets it again (within a reconcile or two); only a login
    refused that long is a configuration problem.
    """
    deadline = time.monotonic() + AUTH_WAIT_S
    while True:
        try:
            return await consumer.layout(client, cfg.batch_uid)
        except redis.exceptions.AuthenticationError as exc:
            if cfg.redis_secret is None or time.monotonic() >= deadline:  # no credential at all: nothing to wait for
                raise
            log.warning(
                "Redis refused the worker's login; trying again in a second", extra={"fields": {"error": str(exc)}}
            )
            await asyncio.sleep(1.0)


async def _reload_on_change(ca_file: Path, worker: loop.Worker, rebuild: Callable[[], base.Provider]) -> None:
    """A new client for the provider whenever the account's CA bundle changes on disk (the kubelet updates a
    mounted ConfigMap in place): calls after it trust the new certificates, calls in flight finish on the old
    client, and the old clients are closed when the worker ends (a bundle changes seldom)."""
    seen = _read(ca_file)
    replaced: list[base.Provider] = []
    try:
        while True:
            await asyncio.sleep(CA_RELOAD_CHECK_S)
            now = _read(ca_file)
            if now == seen or now is None:
                continue
            try:
                fresh = rebuild()
            except (OSError, ValueError) as exc:  # a broken bundle: keep the client that works, until the next change
                log.warning("the CA bundle changed but cannot be loaded: %s; keeping the old one", exc)
                seen = now
                continue
            seen = now
            replaced.append(worker.use_provider(fresh))
            log.info("CA bundle changed: calls from now on trust it", extra={"fields": {"file": str(ca_file)}})
    finally:
        for provider in replaced:
            await provider.aclose()


def _read(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except OSError:
        return None


def _parse(argv: list[str]) -> bool:
    """The command line (``--check``, ``--version``, ``--help``); True for ``--check``."""
    import argparse  # here: a worker pod runs without arguments, and starts without importing it

    parser = argparse.ArgumentParser(prog="analysis-worker", description="Process AnalysisBatch items of one stage.")
    parser.add_argument("--version", action="version", version=f"analysis-worker {analysis_core.__version__}")
    parser.add_argument("--check", action="store_true", help="exit 0 if this worker's heartbeat is fresh, else 1")
    return bool(parser.parse_args(argv).check)


def main(argv: list[str] | None = None) -> None:
    arguments = sys.argv[1:] if argv is None else argv
    check = _parse(arguments) if arguments else False
    try:
        cfg, the_plan = config_.from_env()
    except config_.ConfigError as exc:
        print(f"analysis-worker: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    if check:
        raise SystemExit(health.check(cfg))
    logs.setup(cfg.batch_uid, cfg.stage, cfg.log_format)
    try:
        code = asyncio.run(_serve(cfg, the_plan))
    except redis.exceptions.AuthenticationError as exc:
        # A configuration problem, not a crash: say which variable, without a traceback.
        source = env.REDIS_AUTH_DIR if cfg.redis_username else env.REDIS_PASSWORD
        log.error("Redis refused the worker: %s (the credential comes from %s)", exc, source)
        code = 2
    except Exception:
        log.exception("worker crashed")
        code = 1
    raise SystemExit(code)
