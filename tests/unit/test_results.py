"""Result rows and chunks: caps, rolling over, the cursor a restart derives (``export``); readers, the table."""

import json
from typing import Any

import pytest

from analysis_core.api import wellknown
from analysis_operator import builders, export, producer, results

pytestmark = pytest.mark.unit

BATCH = builders.Batch("semis-q3", "research", "0b9c6c1e-5d7a-4c1b-9a3e-1f2d3c4b5a69")


def record(item: str, *, output: str | None = "fine", status: Any = "succeeded", **more: Any) -> producer.FinalRecord:
    fields: dict[str, Any] = {"stage": "report", "round": 0, "attempt": 1, **more}
    idem = f"{BATCH.uid}/{fields['stage']}/{item}/{fields['round']}/{fields['attempt']}"
    return producer.FinalRecord(item=item, status=status, idem=idem, output=output, **fields)


def row(item: str, size: int = 10, **more: Any) -> dict[str, Any]:
    return export.row(record(item, output="x" * size, **more))


def applied(existing: list[dict[str, Any]], planned: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """What the chunks are after writing ``planned`` (as the API server would: by name)."""
    by_name = {cm["metadata"]["name"]: cm for cm in existing}
    for cm in planned:
        by_name[cm["metadata"]["name"]] = json.loads(json.dumps(cm))
    return list(by_name.values())


def data_bytes(cm: dict[str, Any]) -> int:
    return len(cm["data"][results.RESULTS_KEY].encode())


def test_a_row_holds_what_the_item_ended_with() -> None:
    assert export.row(record("NVDA", output='{"rating": "buy"}')) == {
        "item": "NVDA",
        "stage": "report",
        "status": "succeeded",
        "output": {"rating": "buy"},
        "error": None,
        "errorClass": None,
        "round": 0,
        "attempt": 1,
    }
    # JSON in a Markdown fence is parsed too; a prose answer or a JSON scalar stays the text it was.
    assert export.row(record("A", output="```json\n[1, 2]\n```"))["output"] == [1, 2]
    assert export.row(record("A", output="42"))["output"] == "42"
    assert export.row(record("A", output="Buy: strong {demand}"))["output"] == "Buy: strong {demand}"
    failed = export.row(
        record("AMD", output=None, status="failed", error="rejected 3 times", error_class="JudgeRejected", round=2)
    )
    assert (failed["status"], failed["output"], failed["errorClass"], failed["round"]) == (
        "failed",
        None,
        "JudgeRejected",
        2,
    )
    # Nothing but the documented columns: no model, tokens or anything else a pod knows.
    assert set(export.row(record("A", model="claude", input_tokens=3))) == {
        "item",
        "stage",
        "status",
        "output",
        "error",
        "errorClass",
        "round",
        "attempt",
    }


def test_a_large_output_is_cut_to_the_row_cap_and_says_so() -> None:
    big = json.dumps({"text": 'quote " and newline \n and ✓ ' * 20_000})  # escapes grow it when encoded
    line = export.encode(export.row(record("NVDA", output=big)))
    assert len(line.encode()) <= export.ROW_BYTES
    decoded = json.loads(line)
    assert decoded["truncated"] is True
    assert isinstance(decoded["output"], str)
    # Parsed JSON is cut as its compact serialization.
    assert json.dumps(json.loads(big), ensure_ascii=False, separators=(",", ":")).startswith(decoded["output"])
    assert len(decoded["output"]) > export.ROW_BYTES // 4  # cut to fit, not emptied
    small = json.loads(export.encode(export.row(record("AMD", output="short"))))
    assert "truncated" not in small


def test_chunks_fill_up_then_roll_over_and_never_pass_the_cap() -> None:
    cap = 1000
    first = export.plan_export(BATCH, [], [row(f"I{i:02d}", 100) for i in range(3)], chunk_bytes=cap)
    assert [cm["metadata"]["name"] for cm in first] == ["semis-q3-results-0"]
    assert "resourceVersion" not in first[0]["metadata"]  # a creation
    chunks = applied([], first)
    chunks[0]["metadata"]["resourceVersion"] = "41"
    # Appending goes to the last chunk until it is full, then opens the next.
    more = export.plan_export(BATCH, chunks, [row(f"I{i:02d}", 100) for i in range(3, 20)], chunk_bytes=cap)
    assert [cm["metadata"]["name"] for cm in more] == [f"semis-q3-results-{i}" for i in range(len(more))]
    assert more[0]["metadata"]["resourceVersion"] == "41"  # a replacement of the version it was planned from
    assert all("resourceVersion" not in cm["metadata"] for cm in more[1:])
    chunks = applied(chunks, more)
    assert all(data_bytes(cm) <= cap for cm in chunks)
    assert data_bytes(chunks[0]) > cap - 200  # filled before rolling over
    rows = results.read_rows(chunks)
    assert [r["item"] for r in rows] == [f"I{i:02d}" for i in range(20)]
    for cm in chunks:
        assert cm["metadata"]["labels"][results.LABEL_RESULTS] == "true"
        assert cm["metadata"]["labels"][wellknown.LABEL_BATCH_UID] == BATCH.uid
        assert results.rows_in(cm) == len(cm["data"][results.RESULTS_KEY].splitlines())
    assert export.plan_export(BATCH, chunks, []) == []


def test_the_cursor_is_derived_from_the_chunks_so_a_restart_neither_loses_nor_duplicates() -> None:
    finals = [row(f"T{i:03d}", 150) for i in range(40)]
    cap = 2000
    chunks: list[dict[str, Any]] = []
    step = 0
    while results.exported(chunks) < len(finals):
        cursor = results.exported(chunks)
        planned = export.plan_export(BATCH, chunks, finals[cursor : cursor + 7], chunk_bytes=cap)
        # Every third pass the operator "crashes" after the first write: the next pass derives where it was.
        writes = planned[:1] if step % 3 == 2 else planned
        chunks = applied(chunks, writes)
        step += 1
    assert results.read_rows(chunks) == [json.loads(export.encode(r)) for r in finals]
    assert results.exported(chunks) == len(finals)
    # The chunks are read in index order whatever order they are listed in (names of long batches are hashed).
    assert results.read_rows(list(reversed(chunks))) == results.read_rows(chunks)
    # A chunk without its row annotation is counted from its data.
    stripped = json.loads(json.dumps(chunks))
    for cm in stripped:
        del cm["metadata"]["annotations"][results.ANNOTATION_ROWS]
    assert results.exported(stripped) == len(finals)


def test_replacements_keep_their_owner() -> None:
    (chunk,) = export.plan_export(BATCH, [], [row("A")])
    owner = [{"apiVersion": "analysis.dev/v1alpha1", "kind": "AnalysisBatch", "name": BATCH.name, "uid": BATCH.uid}]
    chunk["metadata"].update(resourceVersion="7", ownerReferences=owner)
    (again,) = export.plan_export(BATCH, [chunk], [row("B")])
    assert again["metadata"]["ownerReferences"] == owner
    assert again["metadata"]["annotations"][results.ANNOTATION_ROWS] == "2"


def test_names_and_labels() -> None:
    assert export.chunk_name(BATCH, 3) == "semis-q3-results-3"
    long_batch = builders.Batch("b" * 60, "ns", BATCH.uid)
    assert len(export.chunk_name(long_batch, 12)) <= 63
    cm = export.results_configmap(BATCH, 0, ['{"item":"A"}'])
    assert cm["metadata"]["labels"] == {**builders.labels(BATCH), results.LABEL_RESULTS: "true"}
    assert cm["metadata"]["annotations"] == {results.ANNOTATION_ROWS: "1", results.ANNOTATION_INDEX: "0"}
    assert results.selector(BATCH.uid) == f"{wellknown.LABEL_BATCH_UID}={BATCH.uid},{results.LABEL_RESULTS}=true"


def test_the_latest_row_of_each_item_wins() -> None:
    rows = [
        {"item": "NVDA", "status": "failed", "attempt": 1},
        {"item": "AMD", "status": "succeeded", "attempt": 1},
        {"item": "NVDA", "status": "succeeded", "attempt": 2},  # its re-run, later in the list
    ]
    assert results.latest_per_item(rows) == [rows[1], rows[2]]
    # A fan-out parent that failed, was re-run and then fanned out: its children's later rows replace its own.
    fanned = [
        {"item": "semis", "status": "failed", "attempt": 1},
        {"item": "cloud/A", "status": "succeeded", "attempt": 1},
        {"item": "semis/NVDA", "status": "succeeded", "attempt": 1},
        {"item": "cloud", "status": "failed", "attempt": 1},  # after its children: a later failure (a fan-in)
    ]
    assert results.latest_per_item(fanned) == [fanned[3], fanned[1], fanned[2]]


def test_the_table_summarises_each_row_on_one_line_cut_to_the_width() -> None:
    rows = [
        {"item": "NVDA", "stage": "report", "status": "succeeded", "output": "Strong\n\ndemand   ahead."},
        {
            "item": "AMD",
            "stage": "review",
            "status": "failed",
            "output": None,
            "error": "rejected 3 times",
            "errorClass": "JudgeRejected",
        },
        {"item": "semis/TSM", "stage": "report", "status": "succeeded", "output": {"rating": "buy"}},
        {"item": "X", "stage": "report", "status": "succeeded", "output": "y" * 500, "truncated": True},
    ]
    assert results.summary(rows[0]) == "Strong demand ahead."
    assert results.summary(rows[1]) == "JudgeRejected: rejected 3 times"
    assert results.summary(rows[2]) == '{"rating":"buy"}'
    assert results.summary(rows[3]).startswith("(truncated) yyy")
    lines = results.format_table(rows, 70).splitlines()
    assert lines[0].split() == ["ITEM", "STAGE", "STATUS", "SUMMARY"]
    assert lines[1].split()[:4] == ["NVDA", "report", "succeeded", "Strong"]
    assert lines[2].endswith("JudgeRejected: rejected 3 times")
    assert all(len(line) <= 70 for line in lines)
    assert lines[4].endswith("…")
    # Columns line up.
    assert len({line.index(line.split()[2]) for line in lines}) == 1
