"""``make demo``'s rows of ``kubectl get analysisbatches``: cut at the header's columns, printed in fixed widths."""

import pytest

from analysis_devcluster import demo

pytestmark = pytest.mark.unit

EARLY = [
    "NAME             PHASE     STAGE      PROGRESS   RETRIES   JUDGE   TOKENS   COST   AGE",
    "stock-research   Running   research   0/1        0         0✓ 0✗   0        $0     0s",
]
LATER = [
    "NAME             PHASE      STAGE   PROGRESS   RETRIES   JUDGE   TOKENS   COST   AGE",
    "stock-research   Complete           5/5        0         4✓ 5✗   3.8k     $0     11s",
]


def test_cells_keep_spaces_inside_a_cell_and_empty_cells() -> None:
    header, row = demo.cells(EARLY)
    assert header[:3] == ["NAME", "PHASE", "STAGE"]
    assert row[5] == "0✓ 0✗"
    _, later = demo.cells(LATER)
    assert later[1:3] == ["Complete", ""]
    assert later[-1] == "11s"


def test_rows_of_different_calls_line_up() -> None:
    header, first = demo.cells(EARLY)
    widths = [max(len(name) + 3, len(cell) + 3, 10) for name, cell in zip(header, first, strict=True)]
    lines = [demo.aligned(header, widths), demo.aligned(first, widths), demo.aligned(demo.cells(LATER)[1], widths)]
    # Each column starts at the same offset in every line.
    for word in ("PHASE", "PROGRESS", "TOKENS"):
        column = lines[0].index(word)
        assert all(line[column - 1] == " " and line[column] != " " for line in lines), lines
