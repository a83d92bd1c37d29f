"""Every table of `peftbench report` / `peftbench tables`, the figures and one self-contained HTML page, rebuilt
from the run records alone. What a method is (PEFT or not, LoRA family, the ablation table it belongs to, the
method it is compared with, a control) comes from each record's `method_info`, never from the method registry, so
a report of archived runs does not change when a method file does. Each column is defined here once.

- tables/metrics and tables/timing (`write_tables`): every test metric, and every run's throughput and memory per
  device and CPU setting, mean ± std per method.
- The paper's layouts where their datasets were run (Table 1: binary benchmarks; Table 2: Trans10K-v1 easy/hard;
  Table 3: Trans10K-v2 per category; Table 5: timing; one table per ablation: its variants and the methods they
  are compared with; which a dataset fills is read from its card, see layouts.py); any other multi-class dataset
  gets a table of its own, every card's extra_metrics another. Each is written as markdown, LaTeX (booktabs)
  and CSV.
  - A cell is mean ± std (ddof=1) over the seeds that finished; a cell with fewer seeds than the table's other
    cells (the seeds asked) is marked "(n=k)", never silently averaged over fewer.
  - Per column the best cell is bold and the second best underlined (LaTeX) / italic (markdown), lower-is-better
    metrics (BER, MAE, mBER) counted as such.
  - Significance of best vs second per column: a paired t-test over the seeds both finished (same seed = same data
    order and initialisation) and a paired bootstrap over test images (10,000 resamples of the per-image values
    averaged over common seeds; per-image metrics only). The best cell gets "§" (t-test) and/or "†" (bootstrap)
    when p < 0.05, one-sided.
  - A cell of a searching method (NAS-LoRA) whose architecture search did not engage in some seed is marked "‡"
    (k of n seeds), with a footnote: it is not a NAS result.
  - `--reference` adds the paper's published numbers (peftbench/reference/paper_results.csv, transcribed from its
    Tables 1-3, 5, 6-9 and D1) as "paper: <method>" rows beside ours, where a column matches: a main table shows
    the rows of Tables 1-3 and 5, an ablation table those of its own paper table.
- tables/miniature: the two questions of the miniature experiment (see miniature.py), first on the page.

The package: frame.py gathers the records once (Frame: their long frame, per-image values, method_infos);
layouts.py holds the registry, one `@register_layout` builder per table layout, each turning the Frame into Tables;
compare.py builds a comparison table of the paper's layouts; cells.py is a table as data (groups of rows of
Cells); writers.py renders that data as markdown, LaTeX, CSV and the HTML page; figures.py draws the figures;
build.py writes them all (build_report, write_tables).
"""

from .build import REFERENCE_FILE, build_report, write_tables
from .cells import Cell, Group, Row, Table
from .compare import column_stats, comparison
from .frame import PARAMS, TIMING, Frame, long_frame, method_infos, params_cells
from .layouts import LAYOUTS, Layout, register_layout
from .miniature import control_pair, lora_family, miniature_table
from .writers import latex, latex_escape, markdown, write_html


def plan_tables(frame: Frame) -> list[Table]:
    """Every table the registered layouts build from `frame`, in registration order."""
    return [table for layout in LAYOUTS.values() for table in layout.build(frame)]


__all__ = ["LAYOUTS", "PARAMS", "REFERENCE_FILE", "TIMING", "Cell", "Frame", "Group", "Layout", "Row", "Table",
           "build_report", "column_stats", "comparison", "control_pair", "latex", "latex_escape", "long_frame",
           "lora_family", "markdown", "method_infos", "miniature_table", "params_cells", "plan_tables",
           "register_layout", "write_html", "write_tables"]
