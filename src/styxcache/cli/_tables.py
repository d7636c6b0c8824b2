"""Tables that stay readable when piped: rich on a terminal, plain TSV otherwise."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import IO

__all__ = ["print_table"]


def print_table(
    title: str,
    columns: Sequence[str],
    rows: Sequence[Sequence[str]],
    *,
    file: IO[str] | None = None,
) -> None:
    """Print a table: rich on a terminal; tab-separated lines elsewhere.

    Piped output is a header line and one line per row, cells separated by
    tabs (newlines inside a cell become `; `), never wrapped or cut, so
    `cut`, `awk` and `grep` work on it.

    Args:
        title: Shown above the table on a terminal.
        columns: Column names.
        rows: Cell texts.
        file: Where to print (stdout).
    """
    out = file if file is not None else sys.stdout
    is_tty = getattr(out, "isatty", None)
    if is_tty is not None and is_tty():
        from rich.console import Console
        from rich.table import Table

        table = Table(title=title)
        for column in columns:
            table.add_column(column, overflow="fold")
        for row in rows:
            table.add_row(*row)
        Console(file=out, markup=False, highlight=False).print(table)
        return

    def cell(text: str) -> str:
        return text.replace("\t", " ").replace("\n", "; ")

    out.write("\t".join(columns) + "\n")
    for row in rows:
        out.write("\t".join(cell(c) for c in row) + "\n")
    out.flush()
