"""Where benchmark results go and how they are written: CSV and Markdown tables."""

import csv
import datetime
from pathlib import Path

from .paths import ROOT

# Today's results: the benchmarks' reports go side by side here.
RESULTS_DIR = ROOT / "loadtests" / "results" / f"{datetime.date.today()}"


def write_csv(path, rows, fields=None):
    """Rows (dicts) as CSV with a header; `fields` picks and orders the columns."""
    fields = fields or list(rows[0])
    with Path(path).open("w", newline="") as out:
        writer = csv.DictWriter(out, fields, extrasaction="ignore", lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)


def markdown_table(header, rows):
    """A Markdown table of `header` and rows of already formatted cells."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)
