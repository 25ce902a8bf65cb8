"""The image cache keeps one archive per image name: a tagged build (an earlier release's tree) is an image of its own."""

from pathlib import Path

import pytest

from analysis_devcluster import images

pytestmark = pytest.mark.unit


def test_a_new_archive_replaces_older_ones_of_its_own_name_only(tmp_path: Path) -> None:
    names = [
        "analysis-worker-0123456789abcdef.tar",  # an older build of this checkout's worker
        "analysis-worker-0.1.0-647840b-0123456789abcdef.tar",  # the earlier release's worker
        "analysis-worker-0.1.0-647840b-fedcba9876543210.tar",  # and an older build of that
        "analysis-operator-0123456789abcdef.tar",
        "analysis-devcluster-base-0123456789ab.tar",
    ]
    for name in names:
        (tmp_path / name).write_bytes(b"")
    fresh = tmp_path / "analysis-worker-aaaaaaaaaaaaaaaa.tar"
    fresh.write_bytes(b"")
    images._keep_only(fresh, "analysis-worker")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([fresh.name, *names[1:]])
    tagged = tmp_path / "analysis-worker-0.1.0-647840b-bbbbbbbbbbbbbbbb.tar"
    tagged.write_bytes(b"")
    images._keep_only(tagged, "analysis-worker-0.1.0-647840b")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([fresh.name, tagged.name, *names[3:]])
