"""A results folder from someone else is data: planted records never make peftbench write or read outside the
folder, import code, or fail a report or a grid's end; each bad record is one warning naming it and the field."""

import json
import shutil
import sys

import pytest
import torch
from PIL import Image

from peftbench import load_run
from peftbench.cli import main
from peftbench.errors import UserError
from peftbench.export import export_run
from peftbench.report import build_report
from peftbench.store.atomic import write_json_atomic
from peftbench.store.records import load_records, record_path
from peftbench.store.schema import record_problem

CARD = "synth_leaf"


@pytest.fixture(scope="module")
def grid(tmp_path_factory):
    """One finished LoRA run and one decoder-only run (1 epoch, tiny SAM), trained once for the module."""
    out, threads = tmp_path_factory.mktemp("grid") / "results", torch.get_num_threads()
    assert main(["run", "--methods", "lora,decoder_only", "--datasets", CARD, "--seeds", "0", "--epochs", "1",
                 "--out", str(out), "--in-process"]) == 0
    torch.set_num_threads(threads)  # --in-process set this process's torch threads (the CPU policy's)
    return out


@pytest.fixture
def results(grid, tmp_path):
    """A copy of the grid to plant records in."""
    out = tmp_path / "theirs" / "results"
    shutil.copytree(grid, out)
    return out


def lora_record(out):
    return json.loads(record_path(out, CARD, "lora", 0).read_text())


def plant(out, record, dataset=CARD, method="lora", seed=0):
    path = record_path(out, dataset, method, seed)
    write_json_atomic(path, record)
    return path


def outside(tmp_path):
    """Every file under tmp_path that is not under the results folder's parent (theirs/)."""
    return sorted(p for p in tmp_path.rglob("*") if p.is_file() and "theirs" not in p.relative_to(tmp_path).parts)


def test_every_record_a_run_writes_is_usable_and_loadable(grid):
    for method in ("lora", "decoder_only"):
        record = json.loads(record_path(grid, CARD, method, 0).read_text())
        assert record_problem(record) == "" and record_problem(record, loadable=True) == ""


@pytest.mark.parametrize("field, value, named", [
    ("dataset", "../../../escaped", "dataset: must be a single folder name (no '/', "),
    ("method", "a/b", "method: must be a single folder name"),
    ("seed", "0", "seed: expected a non-negative integer, got '0'"),
    ("metrics", {"test": {"iou": "high"}}, "metrics.test.iou: expected a number, got 'high'"),
    ("config", None, "config: expected an object, got NoneType"),
    ("method_info", {"ablation": "../../x"}, "method_info.name: missing"),
])
def test_a_bad_record_is_left_out_of_the_report_with_one_warning_naming_the_field(results, tmp_path, capsys, field,
                                                                                  value, named):
    bad = {**lora_record(results), field: value}
    path = plant(results, bad, method="planted")
    before = outside(tmp_path)
    assert main(["report", "--out", str(results)]) == 0
    err = capsys.readouterr().err
    warnings = [line for line in err.splitlines() if str(path) in line]
    assert len(warnings) == 1 and named in warnings[0], err
    assert "Traceback" not in err and outside(tmp_path) == before
    assert {r["method"] for r in load_records(results)} == {"lora", "decoder_only"}


def test_an_ablation_name_cannot_name_a_table_file_outside(results, tmp_path, capsys):
    record = lora_record(results)
    plant(results, {**record, "method_info": {**record["method_info"], "ablation": "../../../x"}}, method="planted")
    assert main(["report", "--out", str(results)]) == 0
    assert "method_info.ablation" in capsys.readouterr().err
    assert not list(tmp_path.rglob("ablation_*"))


@pytest.mark.parametrize("mistake", ["no config", "sha256 mistyped", "no timing", "string seed", "text metric"])
def test_the_end_of_a_grid_never_fails_because_of_someone_elses_record(results, capsys, mistake):
    record = lora_record(results)
    bad = {"no config": {k: v for k, v in record.items() if k != "config"},
           "sha256 mistyped": {**record, "adapter": {**record["adapter"], "sha256": 12}},
           "no timing": {k: v for k, v in record.items() if k != "timing"},
           "string seed": {**record, "seed": "1"},
           "text metric": {**record, "metrics": {"test": {"iou": [1]}}}}[mistake]
    plant(results, bad, dataset="their_dataset", method="their_method")
    assert main(["run", "--methods", "lora", "--datasets", CARD, "--seeds", "0", "--epochs", "1",
                 "--out", str(results), "--in-process"]) == 0  # skips the finished run, then the report
    out = capsys.readouterr().out
    assert "their_dataset/their_method/seed0.json" in out and "left out of the tables" in out
    assert (results / "tables" / "metrics.md").is_file()


def test_load_run_and_export_name_the_field_of_a_record_they_cannot_use(results, capsys):
    record = lora_record(results)
    path = plant(results, {**record, "config": {k: v for k, v in record["config"].items() if k != "sam"}})
    assert main(["report", "--out", str(results)]) == 0  # in the tables; named as left out of the figure
    assert "predictions_synth_leaf: lora seed 0 not loadable (config.sam: missing)" in capsys.readouterr().err
    with pytest.raises(UserError, match=r"seed0.json: not a usable run record \(config.sam: missing\)"):
        load_run(path)
    with pytest.raises(UserError, match="config.sam: missing"):
        export_run(path, "state", results.parent / "export")


def test_a_kept_state_is_only_read_from_the_runs_own_file_inside_the_folder(results, tmp_path, capsys):
    secret = tmp_path / "secret.txt"
    secret.write_text("not yours")
    record = lora_record(results)
    from peftbench.store.hashing import file_sha256

    forged = {**record, "adapter": {**record["adapter"], "file": "../../secret.txt", "sha256": file_sha256(secret)}}
    path = plant(results, forged)
    assert main(["export", str(path), "--format", "state", "--out", str(tmp_path / "export")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "adapter.file" in err and "is not this run's state file" in err
    assert not (tmp_path / "export" / "trained_state.safetensors").exists()
    # a link in the folder to a file elsewhere, with the recorded sha256 of that file
    plant(results, {**record, "adapter": {**record["adapter"], "sha256": file_sha256(secret)}})
    state = results / record["adapter"]["file"]
    state.unlink()
    state.symlink_to(secret)
    assert main(["export", str(path), "--format", "state", "--out", str(tmp_path / "export")]) == 2
    assert "a link out of the results folder" in capsys.readouterr().err
    assert not (tmp_path / "export" / "trained_state.safetensors").exists()


def test_a_records_name_never_puts_an_export_outside_its_folder(results, tmp_path):
    record = lora_record(results)
    path = plant(results, {**record, "dataset": "../../../../x"})
    with pytest.raises(UserError, match="dataset"):
        export_run(path, "state", tmp_path / "export")
    assert not (tmp_path / "export").exists()


@pytest.fixture
def planted_module(tmp_path, monkeypatch):
    """An importable module `evilmod` (as a `evilmod.py` in the folder peftbench runs from would be) that leaves a
    mark when imported."""
    folder, mark = tmp_path / "cwd", tmp_path / "imported"
    folder.mkdir()
    (folder / "evilmod.py").write_text(f"open({str(mark)!r}, 'w').write('ran')\nclass X:\n    pass\n")
    monkeypatch.syspath_prepend(str(folder))
    monkeypatch.delitem(sys.modules, "evilmod", raising=False)
    yield mark
    sys.modules.pop("evilmod", None)


def test_a_records_plugin_family_is_never_imported_unless_trusted(results, planted_module, capsys):
    record = lora_record(results)
    path = plant(results, {**record, "config": {**record["config"], "method": {**record["config"]["method"],
                                                                             "family": "evilmod:X"}}})
    assert main(["report", "--out", str(results)]) == 0  # the tables need no code; the figure leaves the run out
    image = results.parent / "image.png"
    Image.new("RGB", (16, 16)).save(image)
    assert "evilmod" in capsys.readouterr().err
    for command in (["export", str(path), "--format", "state", "--out", str(results.parent / "export")],
                    ["predict", str(path), "--images", str(image), "--out", str(results.parent / "masks")]):
        assert main(command) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "module 'evilmod'" in err and "--trust-plugin evilmod" in err
    with pytest.raises(UserError, match="trust_plugins"):
        load_run(path)
    assert not planted_module.exists()
    with pytest.raises(UserError, match="no peftbench Method subclass 'X'"):  # trusted: imported, then checked
        load_run(path, trust_plugins=["evilmod"])
    assert planted_module.exists()


def test_a_damaged_kept_state_is_named_not_silently_left_out_of_the_figure(results, capsys):
    state = results / lora_record(results)["adapter"]["file"]
    state.write_bytes(state.read_bytes()[:-1] + b"x")
    assert main(["report", "--out", str(results)]) == 0
    err = capsys.readouterr().err
    assert "predictions_synth_leaf: lora left out" in err and "differs from the sha256" in err


def test_the_figure_reads_no_images_a_record_points_elsewhere_to(results, tmp_path, capsys):
    images = tmp_path / "private"
    images.mkdir()
    for method in ("lora", "decoder_only"):
        record = json.loads(record_path(results, CARD, method, 0).read_text())
        dataset = {**record["config"]["dataset"], "source": "files", "path": str(images)}
        plant(results, {**record, "config": {**record["config"], "dataset": dataset}}, method=method)
    (results / "figures" / "predictions_synth_leaf.png").unlink()
    build_report(results, warn=lambda text: print(text, file=sys.stderr))
    assert f"images of {CARD} are at {images}, outside the data root" in capsys.readouterr().err
    assert not (results / "figures" / "predictions_synth_leaf.png").exists()


def test_latex_escapes_every_special_character_of_a_name(results):
    record = lora_record(results)
    name = "a&b%c$d#e_f{g}h~i^j"
    plant(results, {**record, "method": name, "method_info": {**record["method_info"], "name": name},
                    "config": {**record["config"], "method": {**record["config"]["method"], "name": name}},
                    "metric_definitions": {"iou": {"definition": r"\input{/etc/passwd}", "threshold": "0.5",
                                                   "resolution": "original"}}}, method=name)
    build_report(results)
    tex = (results / "tables" / "table1_binary.tex").read_text()
    assert r"a\&b\%c\$d\#e\_f\{g\}h\textasciitilde{}i\textasciicircum{}j" in tex
    assert r"\input" not in tex and r"\textbackslash{}input\{/etc/passwd\}" in tex


def test_metrics_table_marks_cells_over_fewer_seeds(results):
    record = lora_record(results)
    plant(results, {**record, "seed": 1, "adapter": None}, seed=1)  # lora has seeds 0, 1; decoder-only only 0
    build_report(results)
    md = (results / "tables" / "metrics.md").read_text()
    rows = {line.split("|")[1].strip(): line for line in md.splitlines() if line.startswith("| ")}
    assert "(n=1)" in rows["decoder_only"] and "(n=" not in rows["lora"]


def test_a_link_in_the_folder_never_leads_the_reports_writes_out(results, tmp_path, capsys):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    shutil.rmtree(results / "figures")
    (results / "figures").symlink_to(elsewhere)
    assert main(["report", "--out", str(results)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "outside the results folder" in err and not list(elsewhere.iterdir())
