"""A report table as data: rows of cells in titled groups, with its caption, footnote and notes. The writers
(writers.py) render this, and only this, as markdown, LaTeX, CSV and HTML."""

from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd


@dataclass
class Cell:
    """One value of a comparison: mean ± std (ddof=1; nan with one seed) over the n of n_asked seeds that finished,
    both printed with the format spec `digits`; `best` / `second` per column (ties share a rank); `significance`:
    "§" (best beats second, paired t-test over seeds) and/or "†" (paired bootstrap over images), p < 0.05;
    `search`: (k, n) seeds whose architecture search did not engage, or None. A plain cell (a label, a published
    number, a pre-formatted value) has `text` instead."""

    mean: float = float("nan")
    std: float = float("nan")
    n: int = 0
    n_asked: int = 0
    digits: str = ".2f"
    best: bool = False
    second: bool = False
    significance: str = ""
    search: tuple[int, int] | None = None
    text: str | None = None


@dataclass
class Row:
    """`labels`: the row's label columns (a method and its parameters); `cells`: one per value column, None where
    the method has no value."""

    labels: list[str]
    cells: list[Cell | None]


@dataclass
class Group:
    """Rows under a title row ("PEFT methods"); `title` None: untitled rows. `reference`: the paper's published
    numbers."""

    title: str | None
    rows: list[Row]
    reference: bool = False


@dataclass
class Table:
    """One report table. `index`: the label columns' titles; `columns`: the value columns, (dataset label, metric)
    for a comparison (LaTeX groups them by dataset) or plain titles; `column_names`: the titles of the columns'
    levels (grid tables); `footnote` and `notes`: lines under it (`{second}` in the footnote names how the second
    best is marked); `data`: the numbers behind the cells, one row per cell, as the CSV holds them.
    `style`: "comparison" (the paper's layouts: group rows, best/second marks, booktabs) or "grid" (a plain
    frame of texts rendered by pandas, its group titles not shown: the generic tables and the miniature)."""

    name: str
    caption: str
    index: list[str]
    columns: list
    groups: list[Group] = field(default_factory=list)
    footnote: str = ""
    notes: list[str] = field(default_factory=list)
    data: pd.DataFrame = field(default_factory=pd.DataFrame)
    style: str = "comparison"
    column_names: list[str | None] = field(default_factory=list)

    @property
    def rows(self) -> list[Row]:
        return [row for group in self.groups for row in group.rows]

    def reference_rows(self) -> int:
        """How many rows of published numbers the table shows."""
        return sum(len(g.rows) for g in self.groups if g.reference)
