"""A Table (cells.py) as markdown, LaTeX (booktabs), CSV and a self-contained HTML page: each renders the table's
data; none reads another's output. Best is bold everywhere; second best italic in markdown and HTML, underlined in
LaTeX."""

from __future__ import annotations

import base64
import html
from pathlib import Path

import pandas as pd

from ..store.atomic import write_csv_atomic, write_text_atomic
from .cells import Cell, Table
from .search import SEARCH_MARK

LATEX_SPECIALS = {**{c: "\\" + c for c in "&%$#_{}"}, "\\": r"\textbackslash{}", "~": r"\textasciitilde{}",
                  "^": r"\textasciicircum{}"}
# The marks of a comparison's cells and footnote as LaTeX prints them (after escaping).
LATEX_MARKS = {"±": r"$\pm$", "†": r"$\dagger$", "§": r"\S{}", SEARCH_MARK: r"$\ddagger$"}


def latex_escape(text: str) -> str:
    """`text` as LaTeX prints it literally: each of LaTeX's ten special characters escaped (a method or dataset
    name from someone's record can never inject a command)."""
    return "".join(LATEX_SPECIALS.get(c, c) for c in text)


# How each writer marks the best and second best cell of a column.
WRAP = {"md": ("**{}**", "_{}_"), "tex": (r"\textbf{{{}}}", r"\underline{{{}}}"), "html": ("<b>{}</b>", "<i>{}</i>")}


def cell_text(cell: Cell | None, to: str = "md") -> str:
    """A comparison cell for the writer `to` ("md", "tex" or "html"): mean ± std, bold when best, italic /
    underlined (LaTeX) when second, then its significance marks, "(n=k)" over fewer seeds than asked and "‡ k/n"
    where the search did not engage; "–" without a value. A plain cell: its text, escaped."""
    latex = to == "tex"
    if cell is None:
        return "–"
    if cell.text is not None:
        return {"md": cell.text, "tex": latex_escape(cell.text), "html": html.escape(cell.text)}[to]
    std = "" if pd.isna(cell.std) else (r" $\pm$ " if latex else " ± ") + format(cell.std, cell.digits)
    text = format(cell.mean, cell.digits) + std
    if cell.best or cell.second:
        text = WRAP[to][0 if cell.best else 1].format(text)
    if cell.significance:
        text += "$^{" + cell.significance.replace("§", r"\S").replace("†", r"\dagger") + "}$" if latex \
            else " " + cell.significance
    if cell.n < cell.n_asked:
        text += f" (n={cell.n})"
    if cell.search:
        k, n = cell.search
        text += rf" $^{{\ddagger\,{k}/{n}}}$" if latex else f" {SEARCH_MARK} {k}/{n}"
    return text


def _titles(table: Table) -> list[str]:
    """The value columns' titles as markdown and HTML print them: a column's levels joined by spaces."""
    return [" ".join(str(part) for part in col if part).strip() if isinstance(col, tuple) else col
            for col in table.columns]


def _header(table: Table) -> list[str]:
    """The markdown and HTML column titles: the label columns', then a comparison's values as "dataset metric"."""
    return [*table.index, *(_titles(table) if table.style == "grid" else (f"{d} {m}" for d, m in table.columns))]


def _grid_frame(table: Table, titles: bool) -> pd.DataFrame:
    """A grid table as the frame pandas renders: its label columns as the (multi-)index, its value columns by level
    (`titles`: by their joined titles instead), a missing value nan."""
    rows = table.rows
    values = [[float("nan") if c is None else c.text for c in row.cells] for row in rows]
    index = None
    if len(table.index) > 1:
        index = pd.MultiIndex.from_tuples([tuple(row.labels) for row in rows], names=table.index)
    elif table.index:
        index = pd.Index([row.labels[0] for row in rows], name=table.index[0])
    if titles:
        columns = pd.Index(_titles(table))
    elif isinstance(table.columns[0], tuple):
        columns = pd.MultiIndex.from_tuples(table.columns, names=table.column_names)
    else:
        columns = pd.Index(table.columns, name=table.column_names[0] if table.column_names else None)
    return pd.DataFrame(values, index=index, columns=columns)


def markdown(table: Table) -> str:
    """The caption, the pipe table and the footnote and notes, one paragraph a line."""
    if table.style == "grid":
        flat = _grid_frame(table, titles=True).reset_index() if table.index else _grid_frame(table, titles=True)
        parts = [table.caption] if table.caption else []
        return "\n\n".join([*parts, flat.to_markdown(index=False, disable_numparse=True), *table.notes]) + "\n"
    header = _header(table)
    ncol = len(header)
    md = [f"{table.caption}\n", "| " + " | ".join(header) + " |", "|" + "---|" * ncol]
    for group in (g for g in table.groups if g.rows):
        md.append(f"| *{group.title}* |" + " |" * (ncol - 1))
        md += ["| " + " | ".join([*row.labels, *map(cell_text, row.cells)]) + " |" for row in group.rows]
    md += ["", table.footnote.replace("{second}", "italic"), *table.notes]
    return "\n".join(md) + "\n"


def latex(table: Table) -> str:
    """A booktabs table: a comparison's datasets as column groups, its group rows as italic rows."""
    if table.style == "grid":
        return (_grid_frame(table, titles=False).to_latex(caption=table.caption.replace("±", r"$\pm$"), escape=True)
                .replace("±", r"$\pm$").replace(SEARCH_MARK, r"$\ddagger$"))
    ncol = len(table.index) + len(table.columns)
    datasets = list(dict.fromkeys(d for d, _ in table.columns))
    tex = [r"\begin{table}[t]", r"\centering", rf"\caption{{{latex_escape(table.caption)}}}",
           rf"\label{{tab:{table.name}}}", r"\begin{tabular}{ll" + "c" * len(table.columns) + "}", r"\toprule",
           " & & " + " & ".join(rf"\multicolumn{{{sum(d == x for x, _ in table.columns)}}}{{c}}{{{latex_escape(d)}}}"
                                  for d in datasets) + r" \\",
           f"Method & {latex_escape(table.index[1])} & " + " & ".join(latex_escape(m) for _, m in table.columns)
           + r" \\"]
    for group in (g for g in table.groups if g.rows):
        tex += [r"\midrule", rf"\multicolumn{{{ncol}}}{{l}}{{\textit{{{group.title}}}}} \\"]
        tex += [" & ".join([*map(latex_escape, row.labels), *(cell_text(c, "tex") for c in row.cells)]) + r" \\"
                for row in group.rows]
    footnote = latex_escape(table.footnote.replace("{second}", "underlined"))
    for mark, command in LATEX_MARKS.items():
        footnote = footnote.replace(mark, command)
    tex += [r"\bottomrule", r"\end{tabular}", r"\par\footnotesize " + footnote,
            *[r"\par\footnotesize " + latex_escape(note) for note in table.notes], r"\end{table}"]
    return "\n".join(tex) + "\n"


def write(table: Table, folder: Path, formats: tuple[str, ...] = ("md", "tex", "csv")) -> list[Path]:
    """`folder`/<table.name>.<format> for each of `formats`; returns the files."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for ext in formats:
        path = folder / f"{table.name}.{ext}"
        if ext == "csv":
            write_csv_atomic(path, table.data)
        else:
            write_text_atomic(path, markdown(table) if ext == "md" else latex(table))
        paths.append(path)
    return paths


def _row_html(tag: str, cells: list[str]) -> str:
    return "<tr>" + "".join(f"<{tag}>{c}</{tag}>" for c in cells) + "</tr>"


def table_html(table: Table) -> list[str]:
    """The caption, the table (wide tables scroll instead of overflowing), the footnote and notes as paragraphs."""
    rows = [_row_html("th", [html.escape(t) for t in _header(table)])]
    for group in (g for g in table.groups if g.rows):
        if group.title is not None:
            rows.append(_row_html("td", [f"<i>{html.escape(group.title)}</i>"] + [""] * (len(_header(table)) - 1)))
        rows += [_row_html("td", [*(html.escape(label) for label in row.labels), *(cell_text(c, "html") for c in row.cells)])
                 for row in group.rows]
    lines = [table.caption, table.footnote.replace("{second}", "italic"), *table.notes]
    paragraphs = [f"<p>{html.escape(line)}</p>" for line in lines if line]
    table_part = f"<div class='wide'><table>{''.join(rows)}</table></div>"
    return [*paragraphs[:1], table_part, *paragraphs[1:]] if table.caption else [table_part, *paragraphs]


def _figure_html(path: Path) -> str:
    data = base64.b64encode(path.read_bytes()).decode()
    return f'<figure><img alt="{html.escape(path.stem)}" src="data:image/png;base64,{data}"><figcaption>' \
           f"{html.escape(path.stem)}</figcaption></figure>"


def write_html(out: Path, tables: list[Table], figures: list[Path]) -> Path:
    """`out`/report.html: every table and every PNG inlined; no external assets."""
    parts = [("<!DOCTYPE html><html><head><meta charset='utf-8'><title>peftbench report</title><style>"
              "body{font-family:sans-serif;margin:2em;max-width:1400px}table{border-collapse:collapse;font-size:12px}"
              "td,th{border:1px solid #ccc;padding:2px 6px;white-space:nowrap}div.wide{overflow-x:auto}"
              "p{font-size:13px}img{max-width:640px}</style></head><body>"), "<h1>peftbench report</h1>"]
    for table in tables:
        parts += [f"<h2>{html.escape(table.name)}</h2>", *table_html(table)]
    parts.append("<h2>Figures</h2>")
    parts += [_figure_html(p) for p in figures if p.suffix == ".png"]
    parts.append("</body></html>")
    path = Path(out) / "report.html"
    write_text_atomic(path, "\n".join(parts))
    return path
