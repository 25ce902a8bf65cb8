"""A real S3-compatible server for the tests: SeaweedFS (``weed server``), built from its Go module.

``tools/seaweedfs/build.sh`` (``make seaweedfs``) builds ``weed`` into
``.devcluster/bin``. :class:`SeaweedFS` runs one all-in-one server (master,
volume, filer and the S3 gateway) on free ports of ``host`` (loopback, or
the dev cluster's bridge gateway so that pods reach it), with its data,
logs and configuration in one directory. It can be stopped and started again
on the same data and ports: an outage the results export has to ride out.

Identities (the S3 gateway's ``-s3.config``): ``operator`` may read, write
and list the buckets the test makes, and nothing else (so a bucket that does
not exist is refused, not created on the fly); ``readers`` adds, per prefix,
one that may only read and list under it, as a platform team would hand a
tenant (``reader``). Their keys are random per server; the operator's are
also written as the two files a mounted Secret would give
(``credentials_dir``).
"""

from __future__ import annotations

import contextlib
import json
import secrets
import subprocess
import time
from collections.abc import Iterator, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Self

import obstore
from obstore.store import S3Store

from analysis_devcluster import binaries, processes

START_BUDGET_S = 60.0
ACCESS_KEY_FILE = "access-key-id"  # the file names of analysis_operator.objectstore's credential directory
SECRET_KEY_FILE = "secret-access-key"


class SeaweedFS:
    """One SeaweedFS server with an S3 gateway; a context manager (stops it, keeps its files for the logs)."""

    def __init__(
        self,
        workdir: Path,
        *,
        host: str = "127.0.0.1",
        buckets: Sequence[str] = ("results",),
        readers: Sequence[tuple[str, str]] = (),
    ) -> None:
        """``readers``: ``(bucket, prefix)`` pairs, each given a read-only identity (``reader``)."""
        self.workdir = workdir
        self.host = host
        self.buckets = tuple(buckets)
        self._readers = {(bucket, prefix.strip("/")): _keys() for bucket, prefix in readers}
        self._operator = _keys()
        self._ports = processes.free_ports(9)
        self._component: processes.Component | None = None
        self._made = False

    # ------------------------------------------------------------ where

    @property
    def endpoint(self) -> str:
        return f"http://{self.host}:{self._ports[0]}"

    @property
    def operator_keys(self) -> tuple[str, str]:
        return self._operator

    def reader(self, bucket: str, prefix: str) -> tuple[str, str]:
        """The keys of the identity that may only read and list ``prefix`` of ``bucket``."""
        return self._readers[(bucket, prefix.strip("/"))]

    @property
    def credentials_dir(self) -> Path:
        """The operator's keys as a mounted Secret gives them (``objectstore.Settings.credentials_dir``)."""
        return self.workdir / "credentials"

    @property
    def log(self) -> Path:
        return self.workdir / "weed.log"

    def operator_env(self, bucket: str, prefix: str = "") -> dict[str, str]:
        """The operator's environment for a results store on ``bucket``."""
        store = "ANALYSIS_OPERATOR_RESULTS_STORE_"
        return {
            store + "BUCKET": bucket,
            store + "ENDPOINT": self.endpoint,
            store + "PREFIX": prefix,
            store + "CREDENTIALS_DIR": str(self.credentials_dir),
        }

    # ------------------------------------------------------------ life

    def start(self) -> None:
        """Start the server (again, on the same data and ports after ``stop``) and wait until S3 answers."""
        if self._component is not None and self._component.running():
            return
        self._configure()
        s3, master, volume, filer, grpc_s3, grpc_master, grpc_volume, grpc_filer, _spare = self._ports
        argv: list[str] = [
            str(binaries.weed()),
            f"-logdir={self.workdir / 'logs'}",
            "server",
            f"-dir={self.workdir / 'data'}",
            f"-ip={self.host}",
            f"-ip.bind={self.host}",
            f"-master.port={master}",
            f"-master.port.grpc={grpc_master}",
            f"-volume.port={volume}",
            f"-volume.port.grpc={grpc_volume}",
            "-filer",
            f"-filer.port={filer}",
            f"-filer.port.grpc={grpc_filer}",
            "-s3",
            f"-s3.port={s3}",
            f"-s3.port.grpc={grpc_s3}",
            f"-s3.config={self.workdir / 's3.json'}",
            "-master.volumeSizeLimitMB=64",
            "-volume.max=16",
            "-metricsPort=0",
            "-s3.port.iceberg=0",  # no Iceberg catalog or Lance namespace: they listen on fixed ports
            "-s3.port.lance=0",
            "-volume.preStopSeconds=0",  # a stop stops at once (the default keeps serving 10 s after SIGTERM)
            "-master.electionTimeout=1s",  # a restarted master elects itself within a second, not ten
        ]
        (self.workdir / "logs").mkdir(parents=True, exist_ok=True)
        (self.workdir / "data").mkdir(parents=True, exist_ok=True)
        self._component = processes.spawn("seaweedfs", argv, self.log)
        deadline = time.monotonic() + START_BUDGET_S
        processes.wait_until(
            self._component, "answering S3", lambda: processes.port_open(s3, host=self.host), deadline, START_BUDGET_S
        )
        if not self._made:
            for bucket in self.buckets:
                self._shell(f"s3.bucket.create -name {bucket}", deadline)
            self._made = True
        processes.wait_until(self._component, "writing", self._writable, deadline, START_BUDGET_S, interval=0.5)

    def stop(self) -> None:
        if self._component is not None:
            self._component.stop(grace=3.0)

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    @contextlib.contextmanager
    def down(self) -> Iterator[None]:
        """The store away (the process stopped) for the block, then back on the same data."""
        self.stop()
        try:
            yield
        finally:
            self.start()

    # ------------------------------------------------------------ inside

    def _configure(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        identities = [
            {
                "name": "operator",
                "credentials": [{"accessKey": self._operator[0], "secretKey": self._operator[1]}],
                "actions": [f"{action}:{bucket}" for bucket in self.buckets for action in ("Read", "Write", "List")],
            }
        ]
        for index, ((bucket, prefix), (access, secret)) in enumerate(sorted(self._readers.items())):
            identities.append(
                {
                    "name": f"reader-{index}",
                    "credentials": [{"accessKey": access, "secretKey": secret}],
                    "actions": [f"Read:{bucket}/{prefix}/*", f"List:{bucket}/{prefix}/*"],
                }
            )
        (self.workdir / "s3.json").write_text(json.dumps({"identities": identities}, indent=2))
        self.credentials_dir.mkdir(exist_ok=True)
        (self.credentials_dir / ACCESS_KEY_FILE).write_text(self._operator[0])
        (self.credentials_dir / SECRET_KEY_FILE).write_text(self._operator[1])

    def _shell(self, command: str, deadline: float) -> None:
        """Run one ``weed shell`` command against the master, retried until it succeeds or the deadline."""
        master = f"{self.host}:{self._ports[1]}.{self._ports[5]}"  # host:http.grpc (else it assumes http + 10000)
        argv = [str(binaries.weed()), f"-logdir={self.workdir / 'logs'}", "shell", f"-master={master}"]
        while True:
            done = subprocess.run(argv, input=command + "\n", capture_output=True, text=True, timeout=60, check=False)
            if done.returncode == 0 and "error" not in done.stdout.lower():
                return
            if time.monotonic() > deadline:
                raise processes.StartupError(f"weed shell {command!r} failed: {done.stdout[-500:]}{done.stderr[-500:]}")
            time.sleep(0.5)

    def _writable(self) -> bool:
        """A put by the operator identity lands (the volume server has registered): the store is usable."""
        store = S3Store(
            self.buckets[0],
            config={
                "endpoint": self.endpoint,
                "access_key_id": self._operator[0],
                "secret_access_key": self._operator[1],
                "region": "us-east-1",
                "virtual_hosted_style_request": False,
            },
            client_options={"allow_http": True, "timeout": timedelta(seconds=3)},
            retry_config={"max_retries": 0, "retry_timeout": timedelta(seconds=3)},
        )
        try:
            obstore.put(store, ".ready", b"", use_multipart=False)
        except Exception:  # noqa: BLE001 - any failure: not ready yet
            return False
        return True


def _keys() -> tuple[str, str]:
    return "AK" + secrets.token_hex(8).upper(), secrets.token_urlsafe(24)
