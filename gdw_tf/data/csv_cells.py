"""CSV files a person opens in a spreadsheet: no live formula written, what it saves read back.

Writing. A spreadsheet evaluates a cell that starts with `=`, `+`, `-` or `@` (and some treat a
leading tab or carriage return the same way), so an id or a class name taken from the user's
files, such as a folder named `=HYPERLINK("…")`, would become a live formula. `escape_cell`
writes such a *text* cell with a leading `'`, which spreadsheets show as text. A number is not
text: a cell that is a decimal number (`NUMBER`: `-0.53`, `+7`, `1e-05`) is left as it is, so
a negative score stays a number. The rule is one regular expression, mirrored by the review
page's `csvCell`: a cell is escaped when it matches `'*[=+\\-@\\t\\r]` at its start and is not a
number. Counting the leading quotes makes the escape reversible: `unescape_cell` removes one
leading `'` exactly where `escape_cell` added one, so every text reads back as it was written
(`'=x` is written `''=x`; `'x` is written as it is).

Reading (`read_table`). What spreadsheets save is accepted: UTF-8 with or without a byte-order
mark; `,`, `;` or tab as the separator, found from the header line (the one separator that
splits it into the required columns); CRLF or LF line ends; quoted cells. Every cell is
unescaped. A row with fewer cells than the header is refused with its file and line; empty
rows are skipped.

Ids (`normalize_id`). Wherever ids are compared (corrections against each other and against a
run's data), they are compared as `normalize_id` gives them: text, as a normalised path
(`./photos//a.png` is `photos/a.png`); a number or `file.csv:12` stays as it is.
"""

import csv
import io
import os
import re
from collections.abc import Sequence

SEPARATORS = (",", ";", "\t")
# The start of a cell that a spreadsheet would evaluate (after any leading quotes).
FORMULA_START = re.compile(r"'*[=+\-@\t\r]")
# A decimal number: a cell that matches it whole is a number, never escaped.
NUMBER = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")


def escape_cell(value: object) -> str:
    """The CSV text of a cell: `str(value)`, with a leading `'` if a spreadsheet would evaluate
    it (the module docstring's rule; numbers are never escaped)."""
    text = str(value)
    return "'" + text if _needs_escape(text) else text


def unescape_cell(text: str) -> str:
    """The inverse of `escape_cell`: one leading `'` removed where `escape_cell` adds one."""
    return text[1:] if text.startswith("'") and _needs_escape(text[1:]) else text


def normalize_id(value: object) -> str:
    """An example's id as compared everywhere: text (NumPy scalars as plain numbers), as a
    normalised path (`./photos//a.png` → `photos/a.png`)."""
    text = str(value.item() if hasattr(value, "item") else value)
    return os.path.normpath(text) if text else text


def read_table(path: str, required: Sequence[str] = ("id",)) -> tuple[list, list]:
    """Reads a CSV as a spreadsheet may have saved it (the module docstring's rules).

    Args:
      path: the file.
      required: columns the header must name (`id` first: it is how the separator is found).

    Returns:
      `(columns, rows)`: the header's column names, and one `(line, {column: cell})` per
      non-empty row, cells unescaped (`line` counts from 1, the header's).

    Raises:
      ValueError: (one line, naming the file) for a missing or non-UTF-8 file, a header line
        without the required columns under every separator, or a row with missing cells.
    """
    if not os.path.isfile(path):
        raise ValueError(f"{path} does not exist.")
    try:
        with open(path, newline="", encoding="utf-8-sig") as file:
            text = file.read()
    except UnicodeDecodeError:
        raise ValueError(
            f"{path} is not UTF-8 text; save it from the spreadsheet as CSV UTF-8."
        ) from None
    header_line = re.split(r"\r\n|\r|\n", text, maxsplit=1)[0]
    headers = {sep: _header(header_line, sep) for sep in SEPARATORS}
    fits = [sep for sep, names in headers.items() if set(required) <= set(names)]
    if len(fits) != 1:
        named = [names for names in headers.values() if required[0] in names]
        if not fits and named:
            missing = [c for c in required if c not in named[0]]
            raise ValueError(
                f"{path} lacks the column(s) {', '.join(missing)}; its header (first line) "
                f"must name {', '.join(required)}."
            )
        raise ValueError(
            f"{path}: cannot tell the separator from the header line {header_line[:80]!r}; "
            f"it must name the columns {', '.join(required)}, separated by one of , ; or tab."
        )
    separator = fits[0]
    columns = headers[separator]
    reader = csv.reader(io.StringIO(text), delimiter=separator)
    next(reader)
    rows = []
    for cells in reader:
        if not any(cell.strip() for cell in cells):
            continue  # An empty row (spreadsheets leave them at the end).
        if len(cells) < len(columns) or any(c.strip() for c in cells[len(columns) :]):
            raise ValueError(
                f"{path} line {reader.line_num} has {len(cells)} cells but the header has "
                f"{len(columns)}; give every row one cell per column (empty is allowed, and a "
                f"cell that holds {separator!r} is quoted)."
            )
        rows.append((reader.line_num, dict(zip(columns, map(unescape_cell, cells)))))
    return columns, rows


def _header(line, separator):
    return [unescape_cell(name.strip()) for name in next(csv.reader([line], delimiter=separator))]


def _needs_escape(text):
    return FORMULA_START.match(text) is not None and NUMBER.fullmatch(text) is None
