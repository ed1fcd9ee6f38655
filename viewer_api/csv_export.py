"""CSV downloads that open safely in Excel: UTF-8 with a byte-order mark, and no cell that a
spreadsheet would run as a formula.

Cells hold names people typed (an applicant, a hospital, a procedure): one starting with
``=``, ``+``, ``-``, ``@``, a tab or a carriage return is what CSV formula injection uses, so
such text is prefixed with an apostrophe. Numbers are left alone, negative ones included.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Sequence
from typing import Any

from fastapi import Response

FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def safe_cell(value: Any) -> Any:
    """A cell Excel will not run as a formula (text starting with ``=`` etc. is quoted);
    None is an empty cell."""
    if value is None:
        return ""
    if isinstance(value, str) and value.startswith(FORMULA_START):
        return "'" + value
    return value


def csv_text(rows: Iterable[Sequence[Any]]) -> str:
    """The rows as CSV text with CRLF line ends and the byte-order mark Excel needs to read
    UTF-8, every cell passed through `safe_cell`."""
    buffer = io.StringIO()
    buffer.write("\ufeff")
    writer = csv.writer(buffer, lineterminator="\r\n")
    for line in rows:
        writer.writerow([safe_cell(value) for value in line])
    return buffer.getvalue()


def csv_response(rows: Iterable[Sequence[Any]], filename: str) -> Response:
    """The rows as a ``text/csv`` attachment named ``filename``, never cached."""
    headers = {
        "Content-Disposition": f'attachment; filename="{filename}"',
        "Cache-Control": "no-store",
    }
    return Response(
        csv_text(rows).encode("utf-8"), media_type="text/csv; charset=utf-8", headers=headers
    )
