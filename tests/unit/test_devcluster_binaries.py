"""The dev cluster's missing-binary errors: one line that names the fix."""

from pathlib import Path

import pytest

from analysis_devcluster import binaries

pytestmark = pytest.mark.unit


def test_missing_control_plane_binary_names_make_controlplane(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(binaries.BIN_ENV, str(tmp_path))
    with pytest.raises(binaries.MissingBinaryError) as raised:
        binaries.find("kube-apiserver")
    message = str(raised.value)
    assert "\n" not in message
    assert message == (f"kube-apiserver not found in {tmp_path}: run `make controlplane` (tools/controlplane/build.sh)")


def test_missing_redis_server_names_apt_get(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(
        binaries.MissingBinaryError, match=r"^redis-server not found on PATH: run `apt-get install redis-server`$"
    ):
        binaries.redis_server()


def test_check_all_fails_before_anything_starts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(binaries.BIN_ENV, str(tmp_path))
    with pytest.raises(binaries.MissingBinaryError, match="make controlplane"):
        binaries.check_all()
