"""`peftbench report` on constructed records: ranks, ties, lower-is-better, missing seeds, significance, LaTeX
structure, the paper's reference rows, the self-contained HTML page, and the records as the report's only input
(their method_info, schema-1 records migrated, never the method registry)."""

import html
import json
import shutil
import subprocess
from html.parser import HTMLParser

import numpy as np
import pytest

from peftbench.cli import main
from peftbench.methods import registry
from peftbench.report import (
    LAYOUTS,
    Frame,
    build_report,
    comparison,
    layouts,
    long_frame,
    miniature_table,
    plan_tables,
    register_layout,
    write_tables,
)
from peftbench.scoring.stats import paired_bootstrap_p, paired_t_p
from peftbench.store.atomic import write_json_atomic
from peftbench.store.records import load_records, record_path

IMAGES = 20


def info(name, family, lineage="", group="PEFT", ablation="", baseline="", backbone="pretrained", control=False,
         merge_kind="exact"):
    """A method_info as a record stores it (MethodSpec.info()); no description, as a migrated schema-1 record's."""
    return {"name": name, "family": family, "description": "", "group": group, "lineage": lineage or family,
            "ablation": ablation, "baseline": baseline, "backbone": backbone, "control": control,
            "merge_kind": merge_kind}


# What the records of the methods these tests fabricate say of them, written out: the tests need no registry.
INFO = {i["name"]: i for i in [
    info("bitfit", "bitfit"), info("lora", "lora", "lora"), info("dora", "dora", "lora"),
    info("vera", "vera", "lora"), info("full_ft", "full_ft", group="Non-PEFT"), info("decoder_only", "decoder_only"),
    info("decoder_only_random", "decoder_only", baseline="decoder_only", backbone="random", control=True),
    info("nas_lora", "nas_lora", "lora", baseline="lora", merge_kind="approximate"),
    info("nas_pc_lora", "nas_lora", "lora", baseline="lora", merge_kind="approximate"),
    info("nas_pc_lora_r6", "nas_lora", "lora", "PEFT", "Table 7", "nas_pc_lora", merge_kind="approximate"),
    info("nas_pc_lora_no_conv", "nas_lora", "lora", "PEFT", "Table 6", "nas_pc_lora", merge_kind="approximate"),
]}


def write_record(out, method, dataset, seed, iou, ber, rng, schema=2, method_info=None, statistics=None):
    """A record as a run writes it (schema 2: with its method_info, INFO's by default; schema 1: without)."""
    method_info = method_info or INFO[method]
    per_image_iou = np.clip(iou / 100 + 0.05 * rng.standard_normal(IMAGES), 0, 1)
    per_image_iou += iou / 100 - per_image_iou.mean()  # exact mean, so the table value is `iou`
    record = {
        "method": method, "dataset": dataset, "seed": seed,
        "metrics": {"test": {"iou": iou, "ber": ber}},
        "per_image": {"test": {"iou": per_image_iou.tolist(), "ber": [ber / 100] * IMAGES}},
        "params": {"trainable": 1000, "ratio_percent": 0.1, "total": 10**6, "sam_total": 10**6},
        "timing": {"train_iter_per_s": 10.0 + seed, "train_min_per_epoch": 1.0, "infer_img_per_s": 20.0,
                   "peak_memory_mib": 100.0, "inference_model": "merged"},
        "config": {"dataset": {"kind": "binary"},
                   "method": {key: method_info[key] for key in ("name", "family", "backbone")}},
        "selection": {"metric": "iou"}, "device": {"name": "cpu"},
        "history": [{"epoch": 0, "val": {"iou": iou - 5}}, {"epoch": 1, "val": {"iou": iou}}],
        **({"method_info": method_info, "schema": 2} if schema == 2 else {}),
        **({"statistics": statistics} if statistics else {}),
    }
    write_json_atomic(record_path(out, dataset, method, seed), record)


def write_multiclass(out, dataset, card, metrics):
    """A one-seed LoRA record of a multi-class card (`card`: its config.dataset)."""
    record = {"method": "lora", "dataset": dataset, "seed": 0, "per_image": {}, "metrics": metrics,
              "params": {"trainable": 1, "ratio_percent": 0.1}, "timing": {"train_iter_per_s": 1.0},
              "config": {"dataset": card}, "selection": {"metric": "miou"},
              "device": {"name": "cpu"}, "history": [{"epoch": 0, "val": {"miou": 50.0}}]}
    write_json_atomic(record_path(out, dataset, "lora", 0), record)


@pytest.fixture
def results(tmp_path):
    rng = np.random.default_rng(0)
    for seed in range(3):
        write_record(tmp_path, "lora", "leaf", seed, 70.0 + seed, 5.0, rng)  # best IoU, worst BER
        write_record(tmp_path, "dora", "leaf", seed, 60.0 + seed, 3.0, rng)  # ties with vera on BER
        write_record(tmp_path, "vera", "leaf", seed, 50.0 + seed, 3.0, rng)
    write_record(tmp_path, "bitfit", "leaf", 0, 40.0, 9.0, rng)  # one seed of three
    return tmp_path


def test_table_marks_best_second_ties_lower_is_better_and_missing_seeds(results):
    build_report(results)
    md = (results / "tables" / "table1_binary.md").read_text()
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[3:-1]] for line in md.splitlines()
            if line.startswith("| ") and not line.startswith("| *") and not line.startswith("| method")}
    ber, iou = 0, 1  # columns in the order the records list them
    assert rows["lora"][iou].startswith("**71.00 ± 1.00**") and rows["dora"][iou].startswith("_61.00 ± 1.00_")
    assert rows["dora"][ber].startswith("**3.00") and rows["vera"][ber].startswith("**3.00")  # a tie: both best
    assert rows["lora"][ber].startswith("_5.00")  # lower is better: 5 is second after the tied 3s
    assert rows["bitfit"][iou] == "40.00 (n=1)" and "(n=" not in rows["lora"][iou]


def test_latex_is_structurally_sound(results):
    build_report(results)
    tex = (results / "tables" / "table1_binary.tex").read_text()
    assert tex.count("{") == tex.count("}") and tex.count(r"\begin{") == tex.count(r"\end{")
    body = tex.split(r"\midrule")[1].split(r"\bottomrule")[0]
    methods = [line.split(" & ")[0] for line in body.splitlines() if " & " in line]
    assert sorted(methods) == ["bitfit", "dora", "lora", "vera"]
    assert all(line.count(" & ") == 3 for line in body.splitlines() if " & " in line)  # method, params, 2 metrics


def test_significance_tests_on_constructed_cases():
    assert paired_t_p({0: 80, 1: 81, 2: 79}, {0: 70, 1: 72, 2: 69}, higher=True) < 0.01
    assert paired_t_p({0: 80, 1: 81, 2: 79}, {0: 80, 1: 81, 2: 79}, higher=True) == 1.0
    assert paired_t_p({0: 3.0, 1: 3.1}, {0: 5.0, 1: 5.3}, higher=False) < 0.1  # lower is better
    assert paired_t_p({0: 1.0}, {0: 0.0}, higher=True) is None  # one common seed: no test
    rng = np.random.default_rng(1)
    base = rng.random(50)
    better = {0: base + 0.1 + 0.01 * rng.standard_normal(50)}
    assert paired_bootstrap_p(better, {0: base}, higher=True) < 0.01
    assert paired_bootstrap_p({0: base}, {0: base + 0.01 * rng.standard_normal(50)}, higher=True) > 0.05
    assert paired_bootstrap_p({0: base}, {0: base[:10]}, higher=True) is None  # different test sets


def test_best_cell_gets_significance_marks_when_it_clearly_wins(results):
    build_report(results)
    md = (results / "tables" / "table1_binary.md").read_text()
    lora_iou = next(line for line in md.splitlines() if line.startswith("| lora")).split("|")[4]
    assert "§" in lora_iou and "†" in lora_iou  # 10 points over dora on every seed and image set


def test_reference_rows_and_html_page(results):
    assert main(["report", "--out", str(results), "--reference"]) == 0
    md = (results / "tables" / "table1_binary.md").read_text()
    assert "| paper: lora |  | – | 73.7 |" in md  # the paper's Table 1 leaf IoU beside ours
    page = (results / "report.html").read_text()

    class Collect(HTMLParser):
        tags, sources = [], []

        def handle_starttag(self, tag, attrs):
            self.tags.append(tag)
            self.sources += [v for k, v in attrs if k in ("src", "href")]

    parser = Collect()
    parser.feed(page)
    assert parser.tags.count("table") >= 2 and parser.tags.count("img") >= 3
    assert all(s.startswith("data:image/png;base64,") for s in parser.sources)  # no external assets


def test_report_without_records_is_a_one_line_error(tmp_path, capsys):
    assert main(["report", "--out", str(tmp_path)]) == 2
    assert "no run records" in capsys.readouterr().err


def test_paper_layouts_for_trans10k_and_ablation_tables(tmp_path):
    rng = np.random.default_rng(0)
    for seed in range(2):
        for method, base in (("nas_pc_lora", 60.0), ("nas_pc_lora_r6", 62.0)):
            write_record(tmp_path, method, "leaf", seed, base + seed, 4.0, rng)
    v2 = {"kind": "multiclass", "metrics": ["acc", "miou"], "classes": layouts.TABLE3_CLASSES,
          "multiclass_protocol": "trans10k_v2"}
    write_multiclass(tmp_path, "trans10k_v2", v2, {"test": {"acc": 95.0, "iou_shelf": 97.0, "iou_bg": 40.0,
                                                            "miou": 60.0}})
    # the layouts follow the cards, not the names: a v1-protocol card is Table 2, other classes a table of their own
    v1 = {"kind": "multiclass", "metrics": ["acc", "miou"], "classes": ["background", "things", "stuff"],
          "multiclass_protocol": "trans10k_v1", "test_sets": ["easy", "hard"]}
    write_multiclass(tmp_path, "glass", v1, {t: {"acc": 90.0, "miou": 70.0} for t in ("easy", "hard")})
    write_multiclass(tmp_path, "cells", {**v2, "classes": ["a", "b"]}, {"test": {"acc": 80.0, "miou": 50.0}})
    build_report(tmp_path)
    tables = tmp_path / "tables"
    table3 = (tables / "table3_trans10k_v2.md").read_text()
    header = next(line for line in table3.splitlines() if line.startswith("| method"))
    assert header.endswith("| trans10k_v2 acc | trans10k_v2 miou | trans10k_v2 iou_bg | trans10k_v2 iou_shelf |")
    table2 = (tables / "table2_trans10k_v1.md").read_text()
    assert "| glass/easy acc | glass/easy miou | glass/hard acc | glass/hard miou |" in table2
    assert "| cells acc | cells miou |" in (tables / "table_multiclass.md").read_text()
    ablation = (tmp_path / "tables" / "ablation_table7.md").read_text()
    assert "| nas_pc_lora |" in ablation and "| nas_pc_lora_r6 |" in ablation
    assert "nas_pc_lora_r6" not in (tmp_path / "tables" / "table1_binary.md").read_text()


def test_miniature_table_answers_both_questions_from_the_records(tmp_path):
    rng = np.random.default_rng(0)
    for seed in range(3):
        write_record(tmp_path, "decoder_only_random", "leaf", seed, 30.0 + seed, 9.0, rng)
        write_record(tmp_path, "decoder_only", "leaf", seed, 50.0 + seed, 9.0, rng)
        write_record(tmp_path, "lora", "leaf", seed, 60.0 + seed, 9.0, rng)
        write_record(tmp_path, "dora", "leaf", seed, 40.0 + seed, 9.0, rng)  # worse than decoder-only
    records = load_records(tmp_path)
    row = miniature_table(records, long_frame(records)).iloc[0]
    assert row["dataset"] == "leaf" and row["metric"] == "iou"
    assert row["decoder_only"] == "51.00 ± 1.00" and row["pretrained > random"].startswith("yes (+20.00")
    assert row["LoRA-family > decoder-only"] == "1/2"
    lora_only = [r for r in records if r["method"] == "lora"]
    assert miniature_table(lora_only, long_frame(lora_only)) is None  # nothing to compare


def test_a_nas_cell_whose_search_did_not_engage_is_marked_everywhere(results):
    rng = np.random.default_rng(1)
    for seed in range(3):
        write_record(results, "nas_pc_lora", "leaf", seed, 65.0 + seed, 4.0, rng)
        path = record_path(results, "leaf", "nas_pc_lora", seed)
        record = json.loads(path.read_text())
        engaged = seed != 1  # one seed took its steps but stayed uniform
        record["statistics"] = {"architecture_steps": 128, "max_abs_deviation": 0.03 if engaged else 0.0002,
                                "search_engaged": engaged}
        write_json_atomic(path, record)
    assert main(["report", "--out", str(results), "--reference"]) == 0
    tables = results / "tables"
    md = (tables / "table1_binary.md").read_text()
    nas = next(line for line in md.splitlines() if line.startswith("| nas_pc_lora"))
    lora = next(line for line in md.splitlines() if line.startswith("| lora"))
    assert nas.count("‡ 1/3") == 2 and "‡" not in lora and "did not engage" in md
    assert r"$^{\ddagger\,1/3}$" in (tables / "table1_binary.tex").read_text()
    write_tables(results)
    metrics = (tables / "metrics.md").read_text()
    assert "‡ 1/3" in metrics and "did not engage" in metrics and r"$\ddagger$" in (tables / "metrics.tex").read_text()
    assert "‡ 1/3" in (results / "report.html").read_text()
    assert "paper: nas_pc_lora_no_conv" not in md  # ablation tables' paper rows stay in the ablation tables


def test_timing_table_reports_weight_and_architecture_passes_apart(results):
    path = record_path(results, "leaf", "lora", 0)
    record = json.loads(path.read_text())
    record["method"], record["method_info"] = "nas_pc_lora", INFO["nas_pc_lora"]
    record["timing"].update(arch_iter_per_s=7.0, train_min_per_epoch_search=2.5)
    write_json_atomic(record_path(results, "leaf", "nas_pc_lora", 0), record)
    build_report(results)
    md = (results / "tables" / "table5_timing.md").read_text()
    assert "train_min_per_epoch_search" in md and "arch_iter_per_s" in md
    nas = next(line for line in md.splitlines() if line.startswith("| nas_pc_lora"))
    assert "2.5" in nas and "7" in nas


def miniature_results(out):
    rng = np.random.default_rng(0)
    for method, iou in [("decoder_only_random", 30.0), ("decoder_only", 50.0), ("lora", 60.0), ("nas_pc_lora", 59.0)]:
        for seed in range(3):
            write_record(out, method, "leaf", seed, iou + seed, 9.0, rng)
    write_record(out, "vera", "leaf", 0, 55.0, 9.0, rng)  # a single seed
    return out


def test_the_html_report_reads_as_a_page(tmp_path, capsys):
    assert main(["report", "--out", str(miniature_results(tmp_path)), "--reference"]) == 0
    page = (tmp_path / "report.html").read_text()
    body = page.split("<body>")[1]
    assert body.index("<h2>miniature</h2>") < body.index("<h2>table1_binary</h2>")  # the default run's answer first
    caption = "Binary semantic segmentation (the paper's Table 1 layout), test %."
    assert body.count(html.escape(caption)) == 1 and "p>" not in body.replace("<p>", "").replace("</p>", "")
    assert "**" not in body and "<b>61.00 ± 1.00" in body and "<i>PEFT methods</i>" in body
    assert "<div class='wide'><table>" in body
    metrics = (tmp_path / "tables" / "metrics.md").read_text()
    vera = next(line for line in metrics.splitlines() if line.startswith("| vera"))
    assert "55.00 (n=1)" in vera and "±" not in vera  # one seed: no spread printed
    assert "none of these results has a counterpart" not in capsys.readouterr().err  # leaf is in Table 1


def test_reference_without_a_paper_counterpart_says_so(tmp_path, capsys):
    write_record(tmp_path, "lora", "synth_leaf", 0, 60.0, 9.0, np.random.default_rng(0))
    assert main(["report", "--out", str(tmp_path), "--reference"]) == 0
    assert "none of these results has a counterpart in the paper's tables" in capsys.readouterr().err


def refuse_the_registry(monkeypatch):
    """Make every read of the method registry (its TOML files) fail: a report must need none."""
    def refuse(*args, **kwargs):
        raise AssertionError("the report read the method registry")

    monkeypatch.setattr(registry, "read_method", refuse)
    monkeypatch.setattr(registry, "method_specs", refuse)


def archive(out, schema=2):
    """Records of the miniature's methods, NAS-LoRA (whose search did not move), an ablation variant of
    NAS-PC-LoRA and full fine-tuning."""
    rng = np.random.default_rng(0)
    methods = [("decoder_only_random", 30.0), ("decoder_only", 50.0), ("lora", 60.0), ("nas_lora", 58.0),
               ("nas_pc_lora", 59.0), ("nas_pc_lora_r6", 61.0), ("full_ft", 62.0)]
    for method, iou in methods:
        for seed in range(3):
            search = {"max_abs_deviation": 0.02 + seed / 100, "search_engaged": True} if method == "nas_pc_lora" else None
            write_record(out, method, "leaf", seed, iou + seed, 9.0, rng, schema=schema, statistics=search)
    return out


def rendered(out) -> dict:
    """Every table file and the HTML page of `out`, by name."""
    return {p.name: p.read_bytes() for p in [*(out / "tables").iterdir(), out / "report.html"]}


def test_a_report_of_archived_records_does_not_change_with_the_registry(tmp_path, monkeypatch):
    out = archive(tmp_path)
    write_tables(out), build_report(out)
    before = rendered(out)
    refuse_the_registry(monkeypatch)
    write_tables(out), build_report(out)
    assert rendered(out) == before
    ablation = (out / "tables" / "ablation_table7.md").read_text()
    # the variant with the one method its record names as its baseline; NAS-LoRA is not it
    assert "| nas_pc_lora_r6 |" in ablation and "| nas_pc_lora |" in ablation and "| nas_lora |" not in ablation


def test_schema1_records_get_their_method_info_migrated_and_render_as_schema2_ones(tmp_path):
    old, new = archive(tmp_path / "schema1", schema=1), archive(tmp_path / "schema2")
    records = load_records(old)
    assert all("schema" not in r for r in records)
    assert all(r["method_info"] == INFO[r["method"]] for r in records)
    build_report(old), build_report(new)
    for name in ("ablation_table7.md", "ablation_table7.tex", "miniature.md", "miniature.csv", "table1_binary.md"):
        assert (old / "tables" / name).read_text() == (new / "tables" / name).read_text(), name
    miniature = (old / "tables" / "miniature.md").read_text()
    header = [c.strip() for c in miniature.splitlines()[0].strip("|").split("|")]
    assert header == ["dataset", "metric", "decoder_only_random", "decoder_only", "lora", "nas_lora", "nas_pc_lora",
                      "pretrained > random", "LoRA-family > decoder-only", "nas_lora > lora", "nas_pc_lora > lora",
                      "nas_pc_lora search: max abs(p - 1/K)"]  # no search recorded for nas_lora: no column
    assert "| 0.020, 0.030, 0.040 (3/3 engaged)" in miniature


def test_a_method_split_by_config_keeps_its_method_info(tmp_path):
    rng = np.random.default_rng(0)
    for method in ("nas_pc_lora", "nas_pc_lora_r6"):
        for seed in range(2):
            write_record(tmp_path, method, "leaf", seed, 60.0, 9.0, rng, schema=1)
    for seed, epochs in ((0, 12), (1, 1)):  # one seed retrained with another config: a row of its own
        path = record_path(tmp_path, "leaf", "nas_pc_lora_r6", seed)
        record = json.loads(path.read_text())
        record["config"]["epochs"] = epochs
        write_json_atomic(path, record)
    records = load_records(tmp_path)
    tables = {t.name: [row.labels[0] for row in t.rows] for t in plan_tables(Frame(records)) if t.style != "grid"}
    assert tables["ablation_table7"] == ["nas_pc_lora", "nas_pc_lora_r6 [epochs=12]", "nas_pc_lora_r6 [epochs=1]"]
    assert tables["table1_binary"] == ["nas_pc_lora"]


def test_a_plug_in_method_is_grouped_as_its_records_say(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    plug_in = info("my_adapter", "my_adapters:MyAdapter", group="Non-PEFT", merge_kind="none")
    for seed in range(2):
        write_record(tmp_path, "lora", "leaf", seed, 60.0 + seed, 5.0, rng)
        write_record(tmp_path, "my_adapter", "leaf", seed, 65.0 + seed, 4.0, rng, method_info=plug_in)
    refuse_the_registry(monkeypatch)
    build_report(tmp_path)
    rows = [line.split("|")[1].strip() for line in (tmp_path / "tables" / "table1_binary.md").read_text().splitlines()
            if line.startswith("| ") and not line.startswith("| method")]
    assert rows == ["*Non-PEFT methods*", "my_adapter", "*PEFT methods*", "lora"]


def assert_renders_in_browser(page, caption: str) -> None:
    """Chromium renders `page`: a screenshot at laptop width shows no content past the right edge (wide tables
    scroll inside their box), and the rendered text has neither doubled captions nor literal markdown marks."""
    from PIL import Image

    url, shot = page.as_uri(), page.with_name("screenshot.png")
    browser = ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars"]
    subprocess.run([*browser, "--window-size=1024,1400", f"--screenshot={shot}", url], check=True,
                   capture_output=True, timeout=120)
    pixels = np.asarray(Image.open(shot).convert("L"))
    assert pixels.shape == (1400, 1024) and (pixels < 128).sum() > 10_000  # something was drawn
    assert (pixels[:, -12:] > 240).all()  # nothing reaches the right edge
    dom = subprocess.run([*browser, "--dump-dom", url], check=True, capture_output=True, text=True, timeout=120).stdout
    assert dom.count(html.escape(caption, quote=False)) == 1 and "**" not in dom


NEEDS_CHROMIUM = pytest.mark.skipif(not shutil.which("chromium"), reason="needs Chromium (Debian package chromium)")


@NEEDS_CHROMIUM
def test_report_in_a_headless_browser(tmp_path):
    assert main(["report", "--out", str(miniature_results(tmp_path))]) == 0
    assert_renders_in_browser(tmp_path / "report.html", "Binary semantic segmentation (the paper's Table 1 layout)")


def test_a_registered_layout_is_written_in_every_format_and_shown_on_the_page(results, monkeypatch):
    """Adding a table is one builder: here LoRA against DoRA on the leaf IoU."""
    monkeypatch.setattr(layouts, "LAYOUTS", dict(LAYOUTS))  # the registration ends with the test

    @register_layout
    def leaf_iou(frame):
        return [comparison(frame, "leaf_iou", "Leaf IoU & friends.", [("leaf", "iou")], ["lora", "dora"])]

    build_report(results)
    tables = results / "tables"
    md = (tables / "leaf_iou.md").read_text()
    assert "| method | Params(M)/Ratio(%) | leaf iou |" in md and "| lora | 0.001/0.10% | **71.00 ± 1.00** §† |" in md
    assert "| dora | 0.001/0.10% | _61.00 ± 1.00_ |" in md and "| vera |" not in md
    tex = (tables / "leaf_iou.tex").read_text()
    assert r"\caption{Leaf IoU \& friends.}" in tex and r"\textbf{71.00 $\pm$ 1.00}$^{\S\dagger}$" in tex
    csv = (tables / "leaf_iou.csv").read_text().splitlines()
    assert csv[0].startswith("method,dataset,metric,mean,std,n,n_asked,best,second") and len(csv) == 3
    page = (results / "report.html").read_text()
    assert "<td>lora</td><td>0.001/0.10%</td><td><b>71.00 ± 1.00</b> §†</td>" in page
    assert page.index("<h2>table1_binary</h2>") < page.index("<h2>leaf_iou</h2>")  # registration order
