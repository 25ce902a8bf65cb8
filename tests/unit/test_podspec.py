"""The local node's pure parts: a container spec's argv and in-cluster access, and how container logs are read.

Argv: paths translated only where the spec gave them. Logs: the kubelet's
reading of ``containerLogs`` options and container states, over a log file
with its runs and arrival times written here by hand (and once by a real
process, for following).
"""

import asyncio
import base64
import io
import re
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from analysis_devcluster import podlogs, podspec

pytestmark = pytest.mark.unit

PAIRS = [("/tmp", Path("/state/pods/p/volumes/tmp")), ("/etc/analysis", Path("/state/pods/p/volumes/plan"))]


def translate(part: str) -> str:
    return podspec.translate(part, PAIRS)


def test_an_image_entrypoint_is_a_host_path_and_is_not_translated() -> None:
    # A checkout under /tmp (as CI clones it) must not be rewritten into the pod's /tmp emptyDir.
    images = {"python": ["/tmp/ci/main/.venv/bin/python3"]}
    container = {"image": "python:3.12-slim", "args": ["-c", "x", "/etc/analysis/plan.json"]}
    assert podspec.argv(container, images, {}, translate) == [
        "/tmp/ci/main/.venv/bin/python3", "-c", "x", "/state/pods/p/volumes/plan/plan.json",
    ]  # fmt: skip


def test_a_spec_command_is_translated_and_expanded() -> None:
    container = {"image": "any", "command": ["/tmp/tool", "$(WHERE)"], "args": ["/etc/analysis"]}
    assert podspec.argv(container, {}, {"WHERE": "/tmp/out"}, translate) == [
        "/state/pods/p/volumes/tmp/tool", "/state/pods/p/volumes/tmp/out", "/state/pods/p/volumes/plan",
    ]  # fmt: skip


def test_an_unknown_image_without_a_command_has_no_argv() -> None:
    assert podspec.argv({"image": "ghcr.io/x/unknown:1"}, {"python": ["/usr/bin/python3"]}, {}, translate) is None


# ------------------------------------------------------------------ in-cluster access


def test_the_service_account_directory_is_the_local_one_behind_the_mount() -> None:
    pairs = [("/var/run/secrets/kubernetes.io/serviceaccount", Path("/state/pods/p/volumes/kube-api-access-x"))]
    assert podspec.service_account_dir(pairs) == Path("/state/pods/p/volumes/kube-api-access-x")
    assert podspec.service_account_dir(PAIRS) is None


def test_the_kubernetes_service_variables_name_the_apiserver_itself() -> None:
    env = podspec.kubernetes_service_env("https://127.0.0.1:6443")
    assert env["KUBERNETES_SERVICE_HOST"] == "127.0.0.1"
    assert env["KUBERNETES_SERVICE_PORT"] == env["KUBERNETES_SERVICE_PORT_HTTPS"] == "6443"
    assert env["KUBERNETES_PORT"] == env["KUBERNETES_PORT_6443_TCP"] == "tcp://127.0.0.1:6443"
    assert (env["KUBERNETES_PORT_6443_TCP_ADDR"], env["KUBERNETES_PORT_6443_TCP_PORT"]) == ("127.0.0.1", "6443")


def test_the_in_cluster_kubeconfig_uses_the_mounted_token_and_ca() -> None:
    directory = Path("/state/pods/p/volumes/kube-api-access-x")
    config = podspec.in_cluster_kubeconfig(
        server="https://127.0.0.1:6443",
        namespace="research",
        account="worker",
        token_file=directory / "token",
        token="t0ken",
        ca_file=directory / "ca.crt",
        ca_pem=b"unused",
    )
    context = config["contexts"][0]["context"]
    assert config["current-context"] == config["contexts"][0]["name"]
    assert context["namespace"] == "research"
    user = next(u["user"] for u in config["users"] if u["name"] == context["user"])
    assert user == {"tokenFile": str(directory / "token"), "token": "t0ken"}
    cluster = next(c["cluster"] for c in config["clusters"] if c["name"] == context["cluster"])
    assert cluster == {"server": "https://127.0.0.1:6443", "certificate-authority": str(directory / "ca.crt")}
    # Without a mounted ca.crt, the cluster's CA goes inline.
    inline = podspec.in_cluster_kubeconfig(
        server="https://127.0.0.1:6443",
        namespace="research",
        account="worker",
        token_file=directory / "token",
        token="t0ken",
        ca_file=None,
        ca_pem=b"PEM",
    )
    assert base64.b64decode(inline["clusters"][0]["cluster"]["certificate-authority-data"]) == b"PEM"


# ------------------------------------------------------------------ log options and container states

NOW = 1_700_000_000 * 10**9


def test_log_options_decode_as_the_kubelet_decodes_them() -> None:
    assert podlogs.parse_options({}, NOW) == podlogs.Options()
    options = podlogs.parse_options(
        {"follow": "true", "previous": "1", "timestamps": "", "tailLines": "5", "limitBytes": "9"}, NOW
    )
    assert options == podlogs.Options(follow=True, previous=True, timestamps=True, tail_lines=5, limit_bytes=9)
    assert not any(podlogs.parse_options({"follow": value}, NOW).follow for value in ("false", "False", "0", "f"))
    assert podlogs.parse_options({"tail": "3"}, NOW).tail_lines == 3
    assert podlogs.parse_options({"tail": "all", "tailLines": "3"}, NOW).tail_lines is None


def test_since_is_the_later_of_since_seconds_and_since_time() -> None:
    assert podlogs.parse_options({"sinceSeconds": "10"}, NOW).since_ns == NOW - 10 * 10**9
    assert podlogs.parse_options({"sinceTime": "2023-11-14T22:13:20Z"}, NOW).since_ns == NOW
    assert podlogs.parse_options({"sinceTime": "2023-11-14T23:13:20+01:00"}, NOW).since_ns == NOW


@pytest.mark.parametrize(
    ("query", "status"),
    [
        ({"tailLines": "x"}, 400),
        ({"sinceTime": "yesterday"}, 400),
        ({"tailLines": "-1"}, 422),
        ({"limitBytes": "0"}, 422),
        ({"sinceSeconds": "0"}, 422),
        ({"sinceSeconds": "5", "sinceTime": "2023-11-14T22:13:20Z"}, 422),
    ],
)
def test_log_options_the_kubelet_refuses(query: dict[str, str], status: int) -> None:
    with pytest.raises(podlogs.BadRequest) as refused:
        podlogs.parse_options(query, NOW)
    assert refused.value.status == status


RUNNING = {"state": {"running": {}}, "lastState": {}, "containerID": "devcluster://2"}
RESTARTED = {
    "state": {"running": {}},
    "lastState": {"terminated": {"exitCode": 1, "containerID": "devcluster://1"}},
    "containerID": "devcluster://2",
}
BACKING_OFF = {"state": {"waiting": {"reason": "CrashLoopBackOff"}}, "lastState": RESTARTED["lastState"]}


def test_the_run_to_read_follows_the_container_state() -> None:
    def run(status: dict[str, object], previous: bool = False) -> str:
        return podlogs.log_container_id(status, "main", "p", previous=previous)

    assert run(RUNNING) == "devcluster://2"
    assert run(RESTARTED, previous=True) == "devcluster://1"
    assert run(BACKING_OFF) == "devcluster://1"
    done = {"state": {"terminated": {"exitCode": 0, "containerID": "devcluster://3"}}, "lastState": {}}
    assert run(done) == "devcluster://3"


@pytest.mark.parametrize(
    ("status", "previous", "message"),
    [
        (None, False, 'container "main" in pod "p" is not available'),
        (RUNNING, True, 'previous terminated container "main" in pod "p" not found'),
        ({"state": {"waiting": {"reason": "ImageNotLocal"}}}, False, "is waiting to start: ImageNotLocal"),
        ({"state": {"terminated": {"exitCode": 128}}}, False, 'container "main" in pod "p" is terminated'),
    ],
)
def test_no_log_to_give_says_why_as_the_kubelet_does(
    status: dict[str, object] | None, previous: bool, message: str
) -> None:
    with pytest.raises(podlogs.LogError, match=message):
        podlogs.log_container_id(status, "main", "p", previous=previous)


# ------------------------------------------------------------------ reading a log


def test_timestamps_are_fixed_width_rfc3339_in_utc() -> None:
    assert podlogs.format_ns(NOW + 5) == "2023-11-14T22:13:20.000000005Z"


def test_the_tail_starts_at_the_nth_last_line() -> None:
    data = io.BytesIO(b"skip\na\nb\nc\n")
    assert podlogs.tail_start(data, 5, 13, 2) == 9  # "b\n" of the bytes after "skip\n"
    assert podlogs.tail_start(data, 5, 13, 9) == 5
    assert podlogs.tail_start(data, 5, 13, 0) == 13
    unfinished = io.BytesIO(b"a\nb\nc")
    assert podlogs.tail_start(unfinished, 0, 5, 1) == 4


def test_long_lines_are_cut_into_pieces_as_a_runtime_cuts_them() -> None:
    long = b"x" * (16 * 1024 + 3) + b"\n"
    data = io.BytesIO(b"a\n" + long + b"end")
    pieces = list(podlogs.pieces(data, 0, len(data.getvalue())))
    assert [offset for offset, _ in pieces] == [0, 2, 2 + 16 * 1024, 2 + len(long)]
    assert [piece for _, piece in pieces] == [b"a\n", b"x" * 16 * 1024, b"xxx\n", b"end"]


def write_log(path: Path, runs: list[tuple[bytes, str, list[int]]]) -> None:
    """A log as the node writes it: each run's bytes, a runs line, and a times record per line (at NOW + n s)."""
    offset = 0
    with (
        path.open("wb") as log,
        podlogs.runs_path(path).open("w") as runs_file,
        podlogs.times_path(path).open("wb") as times,
    ):
        for data, container_id, seconds in runs:
            runs_file.write(f"{offset} {NOW} {container_id}\n")
            lines = data.splitlines(keepends=True)
            for line, second in zip(lines, seconds, strict=True):
                times.write(struct.pack("<QQ", offset, NOW + second * 10**9))
                log.write(line)
                offset += len(line)


async def read(path: Path, container_id: str, **options: object) -> bytes:
    chunks = podlogs.stream(path, container_id, podlogs.Options(**options), None)  # type: ignore[arg-type]
    return b"".join([chunk async for chunk in chunks])


async def test_a_run_is_read_alone_with_its_times(tmp_path: Path) -> None:
    path = tmp_path / "main.log"
    write_log(path, [(b"one\ntwo\n", "id-1", [1, 2]), (b"three\nfour\nfive", "id-2", [3, 4, 5])])
    assert await read(path, "id-1") == b"one\ntwo\n"
    assert await read(path, "id-2") == b"three\nfour\nfive"
    assert await read(path, "id-2", tail_lines=2) == b"four\nfive"
    assert await read(path, "id-2", since_ns=NOW + 4 * 10**9) == b"four\nfive"
    assert await read(path, "id-2", limit_bytes=8) == b"three\nfo"
    stamped = await read(path, "id-1", timestamps=True)
    assert stamped == b"2023-11-14T22:13:21.000000000Z one\n2023-11-14T22:13:22.000000000Z two\n"
    assert await read(path, "id-1", timestamps=True, limit_bytes=33) == stamped[:33]
    with pytest.raises(podlogs.LogError):
        podlogs.stream(path, "id-3", podlogs.Options(), None)


FOLLOWED = """
import sys
print("first", flush=True)
sys.stdout.write("par")
sys.stdout.flush()
sys.stdin.readline()
print("tial", flush=True)
sys.stdout.write("end")
"""


@pytest.mark.parametrize("timestamps", [False, True])
async def test_a_follower_gets_whole_lines_as_they_come_until_the_output_ends(tmp_path: Path, timestamps: bool) -> None:
    path = tmp_path / "main.log"
    output = podlogs.Output(path)
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-c", FOLLOWED, stdin=subprocess.PIPE, stdout=output.write_fd
    )
    try:
        output.start("test://1")
        chunks = podlogs.stream(path, "test://1", podlogs.Options(follow=True, timestamps=timestamps), output)
        first = await anext(chunks)
        while output.end < len(b"first\npar"):  # "par" is in the log: a follower could send it, and must not
            await output.next_change()
        assert process.stdin is not None
        process.stdin.write(b"go\n")
        await process.stdin.drain()
        rest = [chunk async for chunk in chunks]
    finally:
        if process.returncode is None:
            process.kill()
        await process.wait()
        await output.drained()
    unstamped = re.compile(rb"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{9}Z " if timestamps else rb"^", re.MULTILINE)
    assert unstamped.sub(b"", first) == b"first\n"
    assert unstamped.sub(b"", rest[0]).startswith(b"partial\n")
    assert unstamped.sub(b"", b"".join(rest)) == b"partial\nend"
    assert len(unstamped.findall(first + b"".join(rest))) == 3
    assert path.read_bytes() == b"first\npartial\nend"
    assert await read(path, "test://1", tail_lines=1) == b"end"
