"""`peftbench report` / `peftbench tables`: every registered layout, the figures and the HTML page, from the run
records alone."""

from __future__ import annotations

from collections.abc import Callable, Collection
from pathlib import Path

import pandas as pd

from ..errors import UserError
from ..store.records import load_records
from ..training.runs import Trust
from . import layouts
from .figures import write_figures
from .frame import Frame
from .writers import write, write_html

REFERENCE_FILE = Path(__file__).parent.parent / "reference" / "paper_results.csv"
GENERIC = ("metrics", "timing")  # the layouts `peftbench tables` writes


def write_tables(out: Path) -> list[Path]:
    """tables/metrics and tables/timing from the records under `out`/runs, into `out`/tables. Returns the files.
    (build_report writes them too, with every other table.)"""
    records = load_records(out)
    if not records:
        return []
    frame = Frame(records)
    return [path for name in GENERIC for table in layouts.LAYOUTS[name].build(frame)
            for path in write(table, Path(out) / "tables", layouts.LAYOUTS[name].formats)]


def _check_inside(out: Path, path: Path) -> None:
    """A one-line UserError when `path` (under the results folder `out`) is a link that leads out of it."""
    if not path.resolve().is_relative_to(out.resolve()):
        raise UserError(f"{path}: links to {path.resolve()}, outside the results folder {out}; peftbench writes "
                        "nothing there (remove the link)")


def build_report(out: Path, reference: bool = False, warn: Callable[[str], None] = print,
                 trust_plugins: Trust = (), dataset_roots: Collection[str | Path] = ()) -> list[Path]:
    """Rebuild every table (tables/metrics and tables/timing included), figure and the HTML page from the records
    under `out`/runs, reading them once. Returns the files. `warn`: how to say which record files are left out
    (not usable records, see records.load_records), which runs the figures cannot show, and that `reference` found
    no published number to put beside these results. `trust_plugins`: the plug-in modules the predictions figure
    may import to load a run's model (runs.check_plugin); `dataset_roots`: folders besides the data root whose
    images it may show (figures.images_allowed)."""
    records = load_records(out, warn)
    if not records:
        return []
    frame = Frame(records, pd.read_csv(REFERENCE_FILE, dtype=str) if reference else None)
    for place in ("tables", "figures", "report.html"):  # a link planted in the folder must not lead writes out
        _check_inside(Path(out), Path(out) / place)
    folder = Path(out) / "tables"
    folder.mkdir(parents=True, exist_ok=True)
    written, lead, page, reference_rows = [], [], [], 0
    for layout in layouts.LAYOUTS.values():
        for table in layout.build(frame):
            written += write(table, folder, layout.formats)
            reference_rows += table.reference_rows()
            if layout.page:
                (lead if layout.lead else page).append(table)
    if reference and not reference_rows:
        warn("--reference: none of these results has a counterpart in the paper's tables (its datasets and "
             "methods), so no published number is shown")
    figures = write_figures(records, out, warn, trust_plugins, dataset_roots)
    return written + figures + [write_html(out, lead + page, figures)]
