"""`peftbench bench` on the tiny SAM: every figure present, references added, ratios from the same run."""

import json

import pandas as pd
import pytest

from peftbench.bench import BenchOptions, run_bench, write_bench
from peftbench.cli import main


def test_bench_times_training_search_and_both_inference_models(tmp_path):
    opts = BenchOptions(sam="tiny", methods="nas_pc_lora,vpt", batch=2, warmup=1, iters=1, repeats=2, device="cpu")
    table, meta = run_bench(opts)
    rows = table.set_index("method")
    assert list(rows.index) == ["lora", "decoder_only", "nas_pc_lora", "vpt"]  # references measured in the same run
    assert rows.loc["lora", "train_vs_lora"] == 1.0 and rows.loc["decoder_only", "infer_vs_base"] == 1.0
    assert (rows["train_ms"] > 0).all() and (rows["infer_unmerged_ms"] > 0).all()
    assert rows.loc["nas_pc_lora", "search_ms"] > 0 and rows["search_ms"].isna().sum() == 3
    assert rows.loc["nas_pc_lora", "arch_ms"] > 0 and rows["arch_ms"].isna().sum() == 3  # timed apart (Table 5)
    assert rows.loc["vpt", "infer_merged_ms"] != rows.loc["vpt", "infer_merged_ms"]  # NaN: VPT cannot merge
    assert rows.loc["lora", "infer_ms"] == rows.loc["lora", "infer_merged_ms"]  # exact merges deploy merged
    assert rows.loc["nas_pc_lora", "infer_ms"] == rows.loc["nas_pc_lora", "infer_unmerged_ms"]
    assert meta["settings"]["image_size"] == 64 and meta["device"]["type"] == "cpu"
    md, _, js = write_bench(table, meta, tmp_path)
    assert "ratios only" in md.read_text() and json.loads(js.read_text())["rows"][0]["method"] == "lora"


@pytest.mark.parametrize("args, message", [(["--batch", "0"], "--batch"), (["--image-size", "60"], "multiple of")])
def test_bench_rejects_bad_flags_in_one_line(args, message, capsys):
    assert main(["bench", "--methods", "lora", *args]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_bench_one_method_at_a_time_gives_the_same_table_shape():
    opts = BenchOptions(sam="tiny", methods="dora", batch=1, warmup=1, iters=1, repeats=1, device="cpu",
                        one_at_a_time=True, attentions=("sdpa",), checkpointing=(True,))
    table, meta = run_bench(opts)
    assert meta["settings"]["timed_settings"] == [{"precision": "fp32", "attention": "sdpa", "checkpointing": True}]
    assert list(table["method"]) == ["lora", "decoder_only", "dora"] and meta["settings"]["order"] == "one method at a time"
    assert table["train_cached_ms"].notna().tolist() == [False, True, False]
    assert "train_vs_first_setting" not in table  # one setting: nothing to compare it with


def test_bench_times_several_settings_in_one_run_with_ratios_per_setting(tmp_path, capsys):
    assert main(["bench", "--sam", "tiny", "--methods", "lora", "--batch", "1", "--warmup", "1", "--iters", "1",
                 "--repeats", "1", "--device", "cpu", "--precision", "fp32,bf16", "--attention", "original,sdpa",
                 "--checkpointing", "off,on", "--out", str(tmp_path)]) == 0
    md = tmp_path / "bench_tiny_64px_b1_fp32+bf16_original+sdpa_plain+ckpt_cpu.md"
    assert "fp32, original attention, checkpointing off; fp32, original attention, checkpointing on" in md.read_text()
    table = pd.read_csv(md.with_suffix(".csv"))
    assert len(table) == 2 * 8 and set(table["method"]) == {"lora", "decoder_only"}
    first = table[(table["precision"] == "fp32") & (table["attention"] == "original") & ~table["checkpointing"]]
    assert (first["train_vs_first_setting"] == 1).all() and (first["infer_vs_first_setting"] == 1).all()
    assert (table.loc[table["method"] == "lora", "train_vs_lora"] == 1).all()  # LoRA of the same setting
    assert (table.loc[table["method"] == "decoder_only", "infer_vs_base"] == 1).all()
    assert main(["bench", "--precision", "fp32,fp8"]) == 2
    assert "--precision 'fp32,fp8': give one or more of auto, fp32, fp16, bf16" in capsys.readouterr().err


def test_bench_writes_outside_the_committed_results_by_default():
    from peftbench.cli import build_parser

    assert build_parser().parse_args(["bench"]).out == "results/bench" == str(BenchOptions().out)
