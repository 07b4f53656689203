"""How every `stokehold` command prints a table: boxed on a terminal, plain columns in a pipe.

On a terminal the table is rich's, and a cell too wide for the screen wraps (`fold`) rather
than being cut. When stdout is not a terminal (`| cat`, `| grep`, a file) there is no box,
no title and no width limit: one header line, then one line per row, columns padded with
spaces and never cut, so names stay whole and `awk '{print $1}'` works. Lives here, the
package every other one imports, so that each command group prints tables the same way.
"""

from __future__ import annotations

from collections.abc import Sequence

from rich.console import Console
from rich.table import Table
from rich.text import Text

Cell = str | Text


def plain_table(columns: Sequence[str], rows: Sequence[Sequence[Cell]]) -> str:
    """The table as text: a header line and one line per row, every column as wide as its widest cell (pure)."""
    lines = [[str(cell) for cell in columns], *[[_plain(cell) for cell in row] for row in rows]]
    widths = [max(len(line[index]) for line in lines) for index in range(len(columns))]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip() for line in lines)


def _plain(cell: Cell) -> str:
    text = cell.plain if isinstance(cell, Text) else str(cell)
    return " ".join(text.split()) or "-"  # one line per row, and no empty column that would shift the others


def print_table(
    console: Console,
    columns: Sequence[str],
    rows: Sequence[Sequence[Cell]],
    *,
    title: str | None = None,
    caption: str | None = None,
) -> None:
    """A rich table on a terminal; `plain_table` anywhere else."""
    if not console.is_terminal:
        console.out(plain_table(columns, rows), highlight=False)
        return
    table = Table(title=title, title_justify="left", caption=caption, caption_justify="left")
    for column in columns:
        table.add_column(column, overflow="fold")
    for row in rows:
        table.add_row(*row)
    console.print(table)


__all__ = ["plain_table", "print_table"]
