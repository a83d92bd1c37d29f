"""The command line: records, resume, determinism, tables and one-line errors."""

import json
import shutil
import subprocess
import sys

import pytest
import torch

from peftbench.cli import main
from peftbench.data import dataset_cards
from peftbench.methods.registry import MINIATURE
from peftbench.store.records import config_hash, record_path

QUICK = ["--device", "cpu", "--datasets", "synth_road", "--seeds", "0", "--epochs", "1", "--methods", "lora"]


def run(args, tmp_path):
    return main(["run", *args, "--out", str(tmp_path)])


def test_run_writes_a_complete_record_and_tables(tmp_path):
    assert run(QUICK, tmp_path) == 0
    record = json.loads(record_path(tmp_path, "synth_road", "lora", 0).read_text())
    card = dataset_cards()["synth_road"]
    assert set(record["metrics"]["test"]) == set(card.metrics + card.extra_metrics)
    assert set(record["metric_definitions"]) == set(card.metrics + card.extra_metrics)
    assert "original resolution" in record["metric_definitions"]["iou"]["resolution"]
    assert record["params"]["trainable"] > 0 and 0 < record["params"]["ratio_percent"] < 100
    assert {"train_iter_per_s", "train_min_per_epoch", "infer_img_per_s", "peak_memory_mib"} <= set(record["timing"])
    assert record["config"]["lr"] == 3e-3 and record["config"]["epochs"] == 1
    assert record["config_hash"] == config_hash(record["config"])
    assert record["environment"]["packages"]["torch"] and "commit" in record["environment"]["git"]
    assert record["selection"]["split"] == "val" and record["device"]["type"] == "cpu"
    for ext in ("md", "tex", "csv"):
        assert (tmp_path / "tables" / f"metrics.{ext}").is_file() and (tmp_path / "tables" / f"timing.{ext}").is_file()
    assert r"\toprule" in (tmp_path / "tables" / "metrics.tex").read_text()
    assert "lora" in (tmp_path / "tables" / "metrics.md").read_text()


def test_exact_merges_are_tested_merged_unless_asked_otherwise(tmp_path):
    assert run(QUICK, tmp_path / "auto") == 0
    assert run([*QUICK, "--inference", "unmerged"], tmp_path / "unmerged") == 0
    merged, unmerged = (json.loads(record_path(tmp_path / d, "synth_road", "lora", 0).read_text())
                        for d in ("auto", "unmerged"))
    assert merged["merge"]["evaluated_model"] == merged["timing"]["inference_model"] == "merged"
    assert merged["merge"]["max_abs_diff_probabilities"] < 1e-4
    assert unmerged["timing"]["inference_model"] == "unmerged" and "max_abs_diff_mask_logits" not in unmerged["merge"]
    for metric, value in unmerged["metrics"]["test"].items():
        assert merged["metrics"]["test"][metric] == pytest.approx(value, abs=0.01)
    assert "| merged" in (tmp_path / "auto" / "tables" / "timing.md").read_text()


def test_rerun_skips_finished_runs_and_replaces_changed_configs_only_when_asked(tmp_path, capsys):
    assert run(QUICK, tmp_path) == 0
    path = record_path(tmp_path, "synth_road", "lora", 0)
    stamp = path.stat().st_mtime_ns
    assert run(QUICK, tmp_path) == 0
    assert "0 trained, 1 skipped" in capsys.readouterr().out and path.stat().st_mtime_ns == stamp
    assert run([*QUICK[:-3], "2", "--methods", "lora"], tmp_path) == 2  # --epochs 2: another config
    assert "epochs: 1 -> 2" in capsys.readouterr().err and path.stat().st_mtime_ns == stamp
    assert run([*QUICK[:-3], "2", "--methods", "lora", "--replace"], tmp_path) == 0
    assert json.loads(path.read_text())["config"]["epochs"] == 2


def test_same_seed_on_the_cpu_gives_the_same_metrics(tmp_path):
    assert run(QUICK, tmp_path / "a") == 0 and run(QUICK, tmp_path / "b") == 0
    a, b = (json.loads(record_path(tmp_path / d, "synth_road", "lora", 0).read_text()) for d in "ab")
    untimed = lambda history: [{k: v for k, v in h.items() if k != "train_s"} for h in history]
    assert a["metrics"] == b["metrics"] and untimed(a["history"]) == untimed(b["history"])


@pytest.mark.parametrize("args, message", [
    (["--methods", "nope"], "unknown method 'nope'"),
    (["--datasets", "nope"], "neither a registered dataset"),
    (["--sam", "vit_b", "--checkpoint", "missing.pth"], "file not found"),
    (["--sam", "vit_b"], "needs --checkpoint"),
    (["--seeds", "a,b"], "--seeds"),
    (["--epochs", "0"], "--epochs"),
    (["--checkpoint-interval", "-1"], "--checkpoint-interval"),
    (["--batch-size", "4", "--micro-batch-size", "3"], "must divide"),
    (["--sam", "vit_x"], "invalid choice"),
])
def test_bad_input_is_one_line_and_exit_code_2(args, message, tmp_path):
    proc = subprocess.run([sys.executable, "run_all.py", *args, "--out", str(tmp_path)], capture_output=True, text=True,
                          check=False)
    assert proc.returncode == 2
    assert message in proc.stderr and len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_asking_for_cuda_without_one_is_exit_code_2(tmp_path, capsys):
    assert main(["run", *QUICK[2:], "--device", "cuda", "--out", str(tmp_path)]) == 2
    assert "no CUDA device" in capsys.readouterr().err


def test_empty_dataset_folder_is_exit_code_2(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["run", "--datasets", str(tmp_path / "empty"), "--out", str(tmp_path)]) == 2
    assert "no manifest.csv" in capsys.readouterr().err


def test_listing_commands(capsys):
    assert main(["methods"]) == 0 and main(["datasets"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert any(line.startswith("lora ") for line in out) and any(line.startswith("synth_leaf ") for line in out)


@pytest.mark.slow
def test_the_default_demo_runs_end_to_end(tmp_path):
    """The README's first command: the miniature's methods x every synthetic dataset x 3 seeds."""
    assert main(["run", "--device", "cpu", "--out", str(tmp_path)]) == 0
    records = list((tmp_path / "runs").glob("*/*/seed*.json"))
    synthetic = [c for c in dataset_cards().values() if c.source == "synthetic"]
    assert len(records) == len(MINIATURE) * len(synthetic) * 3
    assert (tmp_path / "tables" / "metrics.md").is_file()
    table = (tmp_path / "tables" / "miniature.md").read_text()
    assert all(f"| {c.name}" in table for c in synthetic)
    if shutil.which("chromium"):  # the default run's report, as a reader sees it (tests/test_report.py)
        from test_report import assert_renders_in_browser

        assert_renders_in_browser(tmp_path / "report.html", "Binary semantic segmentation (the paper's Table 1 layout)")


def test_gradient_accumulation_matches_the_full_batch(tmp_path):
    """Micro-batches of 2 accumulated to 4 give the numbers of batch 4 (no batch statistics anywhere in SAM)."""
    assert run(QUICK, tmp_path / "full") == 0
    assert run([*QUICK, "--micro-batch-size", "2"], tmp_path / "micro") == 0
    full, micro = (json.loads(record_path(tmp_path / d, "synth_road", "lora", 0).read_text()) for d in ("full", "micro"))
    assert micro["config"]["micro_batch_size"] == 2
    assert micro["history"][0]["val"]["iou"] == pytest.approx(full["history"][0]["val"]["iou"], abs=0.05)


def test_nas_run_records_its_operation_distribution_and_draws_the_figures(tmp_path):
    args = ["--device", "cpu", "--datasets", "synth_road", "--seeds", "0,1", "--epochs", "2", "--methods", "nas_pc_lora"]
    assert run(args, tmp_path) == 0
    record = json.loads(record_path(tmp_path, "synth_road", "nas_pc_lora", 0).read_text())
    assert len(record["statistics"]["per_cell"]) == 4 and record["milestones"]["architecture updates start"] == 1
    assert record["merge"]["kind"] == "approximate" and "metric_delta" in record["merge"]
    assert record["schedule"]["arch_start_epoch"] == 1 and record["statistics"]["architecture_steps"] == 16
    assert record["selection"]["best_epoch"] == 1  # the searched epoch, the only one selectable
    figures = tmp_path / "figures"
    for stem in ("convergence_synth_road", "operations_synth_road"):
        assert (figures / f"{stem}.png").stat().st_size > 0 and (figures / f"{stem}.pdf").is_file()
    curves = (figures / "convergence.csv").read_text().splitlines()
    assert curves[0] == "dataset,method,seed,epoch,metric,value" and len(curves) == 1 + 2 * 2


def test_seeds_are_non_negative_integers_and_a_repeated_one_runs_once(tmp_path, capsys):
    from peftbench.training.config import seed_list

    assert seed_list("--seeds", "2,0,2,1,0") == [2, 0, 1]
    for value, message in (("-1", "each seed must be a non-negative integer, not -1"),
                           ("0,4294967296", "seed 4294967296 is too large")):
        assert run([*QUICK[:4], "--seeds", value, *QUICK[6:]], tmp_path) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and f"--seeds {value!r}" in err and message in err
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("command", [["run"], ["report"], ["export", "r.json", "--format", "state"],
                                     ["predict", "r.json", "--images", "x.png"], ["bench"]])
def test_an_out_that_is_a_file_is_one_line_before_anything_runs(command, tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("mine\n")
    for out, message in ((tmp_path / "notes.txt", "is a file, not a folder"),
                         (tmp_path / "notes.txt" / "sub", f"{tmp_path / 'notes.txt'} is a file, not a folder")):
        assert main([*command, "--out", str(out)]) == 2
        err = capsys.readouterr().err.strip()
        assert err == f"peftbench: error: --out {out}: {message}"
    assert (tmp_path / "notes.txt").read_text() == "mine\n"
