"""The documentation against the code: the tables of docs/ list exactly what the registries hold, every relative link
resolves, the README stays a first read, and no file points at material outside the repository."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

import peftbench
from peftbench.params import count_method
from peftbench.scoring.metrics import METRICS

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
README_LIMIT = 10_240  # bytes: the README is a first read; the reference lives in docs/
# Pointers to notes that are not part of the repository (written split, so that this file does not hold them).
OUTSIDE = ["../" + "shared", "shared" + "/reference", "methods.md" + " section", "conv-lora" + "-harness.md",
           "metrics.md" + " section"]
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")


def read(path: Path) -> str:
    return path.read_text(encoding="utf-8")


def without_code(text: str) -> str:
    """The text less its fenced code blocks and inline code spans (links there are examples, not links)."""
    text = re.sub(r"^```.*?^```", "", text, flags=re.DOTALL | re.MULTILINE)
    return re.sub(r"`[^`\n]*`", "", text)


def tables(text: str) -> list[list[dict[str, str]]]:
    """Every markdown table of `text` as a list of rows, each {header: cell}; escaped pipes stay in cells."""
    found, lines = [], text.splitlines()
    i = 0
    while i < len(lines):
        if lines[i].startswith("|") and i + 1 < len(lines) and re.fullmatch(r"\|[\s:|-]+\|?", lines[i + 1].strip()):
            header = cells(lines[i])
            rows, i = [], i + 2
            while i < len(lines) and lines[i].startswith("|"):
                rows.append(dict(zip(header, cells(lines[i]))))
                i += 1
            found.append(rows)
        else:
            i += 1
    return found


def cells(line: str) -> list[str]:
    return [c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", line.strip().strip("|"))]


def names(cell: str) -> list[str]:
    """The `code` names in a table cell."""
    return re.findall(r"`([^`]+)`", cell)


def rows_of(page: str, first_header: set[str]) -> list[dict[str, str]]:
    """The rows of every table on docs/`page` whose first column is headed by one of `first_header`."""
    return [row for table in tables(read(DOCS / page)) for row in table if next(iter(row)) in first_header]


def method_rows() -> dict[str, dict[str, str]]:
    rows = rows_of("methods.md", {"method", "variant"})
    out = {}
    for row in rows:
        (name,) = names(next(iter(row.values())))
        assert name not in out, f"docs/methods.md lists {name} twice"
        out[name] = row
    return out


def test_methods_page_lists_every_registered_method_and_no_other():
    documented, registered = set(method_rows()), set(peftbench.method_specs())
    assert not registered - documented, f"registered but missing from docs/methods.md's tables: {registered - documented}"
    assert not documented - registered, f"in docs/methods.md's tables but not registered: {documented - registered}"


def test_methods_page_counts_and_merge_kinds_match_the_registry():
    specs = peftbench.method_specs()
    for name, row in method_rows().items():
        if name not in specs:
            continue  # reported by the test above
        spec = specs[name]
        assert row["merge"].split()[0] == spec.merge_kind, f"{name}: docs say merge {row['merge']!r}"
        trainable = count_method("vit_h", name)
        assert float(row["Params (M)"]) == pytest.approx(trainable / 1e6, abs=5e-4), \
            f"{name}: docs say {row['Params (M)']} M, `peftbench params --sam vit_h` counts {trainable / 1e6:.3f} M"
        paper = spec.paper.get("params_m")
        assert row["paper"] == ("–" if paper is None else str(paper)), f"{name}: paper column {row['paper']!r}"


def card_rows() -> dict[str, dict[str, str]]:
    return {names(row["card"])[0]: row for row in rows_of("datasets.md", {"card"})}


def test_datasets_page_lists_every_card_as_it_is():
    cards, rows = peftbench.dataset_cards(), card_rows()
    assert set(rows) == set(cards), f"docs/datasets.md's card table differs: {set(rows) ^ set(cards)}"

    def listed(cell: str) -> list[str]:
        return [] if cell == "–" else [c.strip() for c in cell.split(",")]

    for name, card in cards.items():
        row = rows[name]
        assert listed(row["test sets"]) == card.test_names, name
        assert listed(row["metrics"]) == card.metrics, name
        assert listed(row["extra metrics"]) == card.extra_metrics, name
        assert row["select"] == card.select_metric, name
        epochs, lr = listed(row["epochs, lr"])
        assert (int(epochs), float(lr)) == (card.epochs, card.lr), name


def test_metrics_page_defines_every_metric_and_no_other():
    documented = {n for row in rows_of("metrics.md", {"name"}) for n in names(row["name"])}
    assert not set(METRICS) - documented, f"missing from docs/metrics.md: {set(METRICS) - documented}"
    unknown = {n for n in documented - set(METRICS) if not n.startswith("iou_<")}
    assert not unknown, f"docs/metrics.md defines metrics peftbench does not have: {unknown}"


def test_readme_is_a_first_read():
    size = len((ROOT / "README.md").read_bytes())
    assert size <= README_LIMIT, f"README.md is {size} bytes; move reference material to docs/ (limit {README_LIMIT})"


def slug(heading: str) -> str:
    """GitHub's anchor for a heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower().replace("`", ""))
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    text = re.sub(r"^```.*?^```", "", read(path), flags=re.DOTALL | re.MULTILINE)
    return {slug(m) for m in re.findall(r"^#+\s+(.*)$", text, flags=re.MULTILINE)}


@pytest.mark.parametrize("page", ["README.md", *sorted(str(p.relative_to(ROOT)) for p in DOCS.glob("*.md"))])
def test_relative_links_resolve(page):
    path = ROOT / page
    broken = []
    for target in LINK.findall(without_code(read(path))):
        if re.match(r"[a-z]+:", target) or target.startswith("#") and not target[1:]:
            continue  # an address outside the repository
        file, _, anchor = target.partition("#")
        resolved = (path.parent / file).resolve() if file else path
        if not resolved.exists() or (anchor and resolved.suffix == ".md" and anchor not in anchors(resolved)):
            broken.append(target)
    assert not broken, f"{page}: links that resolve to nothing: {broken}"


def repository_files() -> list[Path]:
    try:
        out = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                             capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout")
    suffixes = {".py", ".md", ".toml", ".sh", ".txt"}
    return [ROOT / f for f in out.splitlines() if Path(f).suffix in suffixes and (ROOT / f).is_file()]


def test_no_file_points_outside_the_repository():
    found = [f"{path.relative_to(ROOT)}:{number}: {line.strip()}"
             for path in repository_files()
             for number, line in enumerate(read(path).splitlines(), 1)
             if any(s in line for s in OUTSIDE)]
    assert not found, "cite the paper, the official code or a docs/ page instead:\n" + "\n".join(found)


def test_the_worked_example_method_builds(monkeypatch):
    from peftbench.methods import read_method

    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.delenv("PYTHONPATH", raising=False)  # restored afterwards; the plug-in loader extends it
    try:
        spec = read_method(DOCS / "examples" / "scaled_lora.toml")
        method = spec.build()
    finally:
        sys.modules.pop("scaled_lora", None)
    assert type(method).__name__ == "ScaledLoRA" and spec.merge_kind == "exact"
    assert spec.config.gate_init == 1.0


def run_parser():
    """`peftbench run`'s argparse parser, from the command line's own build_parser."""
    from peftbench.cli import build_parser

    (sub,) = [a for a in build_parser()._actions if a.dest == "command"]
    return sub.choices["run"]


def flag_rows() -> dict[str, dict[str, str]]:
    """docs/reference.md's flags table: flag -> row, each flag on its own row."""
    out = {}
    for row in rows_of("reference.md", {"flag"}):
        (flag,) = names(row["flag"])
        assert flag not in out, f"docs/reference.md lists {flag} twice"
        out[flag] = row
    return out


def test_reference_lists_every_flag_of_run_and_no_other():
    parser = run_parser()
    flags = {s for a in parser._actions if a.dest != "help" for s in a.option_strings if s.startswith("--")}
    documented = set(flag_rows())
    assert not flags - documented, f"flags of `peftbench run` missing from docs/reference.md: {flags - documented}"
    assert not documented - flags, f"docs/reference.md documents flags `run` does not have: {documented - flags}"


def test_reference_defaults_are_the_parsers():
    """A default cell is "off" for a switch, "–" for an unset flag, else the value that, given to the flag, parses
    to the parser's default (so a typed default such as `--slurm-time 24:00:00` compares as the user types it)."""
    parser = run_parser()
    actions = {s: a for a in parser._actions for s in a.option_strings}
    defaults = vars(parser.parse_args([]))
    wrong = []
    for flag, row in flag_rows().items():
        action = actions.get(flag)
        if action is None:
            continue  # reported by the test above
        cell, default = row["default"], defaults[action.dest]
        if action.nargs == 0:  # a switch
            ok = cell == "off" and not default
        elif default is None:
            ok = cell == "–"
        else:
            given = names(cell)
            ok = len(given) == 1 and vars(parser.parse_args([flag, given[0]]))[action.dest] == default
        if not ok:
            wrong.append(f"{flag}: docs say {cell!r}, argparse's default is {default!r}")
    assert not wrong, "docs/reference.md's defaults differ from `peftbench run`'s:\n" + "\n".join(wrong)


def test_precision_auto_is_documented_as_resolved(monkeypatch):
    """--precision auto: fp32 on the CPU, on CUDA bf16 from compute capability 8.0, fp16 with loss scaling before
    (peftbench/training/device.py), as docs/reference.md and docs/running.md say."""
    import torch

    from peftbench.training.device import resolve_precision

    cuda = torch.device("cuda", 0)
    assert resolve_precision("auto", torch.device("cpu")) == "fp32"
    for capability, expected in [((8, 0), "bf16"), ((9, 0), "bf16"), ((7, 0), "fp16"), ((7, 5), "fp16")]:
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None, c=capability: c)
        assert resolve_precision("auto", cuda) == expected, capability
    claims = ["fp32 on the CPU", "bf16", "compute capability 8.0", "fp16", "loss scaling"]
    for text in [flag_rows()["--precision"]["meaning"], read(DOCS / "running.md")]:
        auto = text[text.index("fp32 on the CPU"):][:300] if "fp32 on the CPU" in text else ""
        positions = [auto.find(c) for c in claims]
        assert -1 not in positions and positions == sorted(positions), \
            f"docs say of --precision auto: {auto[:300]!r}; expected, in order: {claims}"
    for page in DOCS.glob("*.md"):
        assert "fp16 with loss scaling on CUDA" not in read(page), f"{page.name}: --precision auto is bf16 on A100/H100"


def record_layouts() -> list[dict]:
    """The record layouts the readers check (peftbench/store/schema.py)."""
    from peftbench.store import schema

    return [schema.RECORD, schema.REPORTED, schema.LOADABLE]


def test_reference_lists_every_record_field_the_readers_need():
    documented = {n for row in rows_of("reference.md", {"field"}) for n in names(row["field"])}
    required = {key.rstrip("?") for layout in record_layouts() for key in layout}
    assert not required - documented, f"record fields missing from docs/reference.md: {required - documented}"
