"""`peftbench bench` on the tiny SAM: every figure present, references added, ratios from the same run."""

import json

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
    assert rows.loc["vpt", "infer_merged_ms"] != rows.loc["vpt", "infer_merged_ms"]  # NaN: VPT cannot merge
    assert rows.loc["lora", "infer_ms"] == rows.loc["lora", "infer_merged_ms"]  # exact merges deploy merged
    assert rows.loc["nas_pc_lora", "infer_ms"] == rows.loc["nas_pc_lora", "infer_unmerged_ms"]
    assert meta["settings"]["image_size"] == 64 and meta["device"]["type"] == "cpu"
    md, csv, js = write_bench(table, meta, tmp_path)
    assert "ratios only" in md.read_text() and json.loads(js.read_text())["rows"][0]["method"] == "lora"


@pytest.mark.parametrize("args, message", [(["--batch", "0"], "--batch"), (["--image-size", "60"], "multiple of")])
def test_bench_rejects_bad_flags_in_one_line(args, message, capsys):
    assert main(["bench", "--methods", "lora", *args]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_bench_one_method_at_a_time_gives_the_same_table_shape():
    opts = BenchOptions(sam="tiny", methods="dora", batch=1, warmup=1, iters=1, repeats=1, device="cpu",
                        one_at_a_time=True, attention="sdpa", checkpointing=True)
    table, meta = run_bench(opts)
    assert meta["settings"]["attention"] == "sdpa" and meta["settings"]["checkpointing"]
    assert list(table["method"]) == ["lora", "decoder_only", "dora"] and meta["settings"]["order"] == "one method at a time"
    assert table["train_cached_ms"].notna().tolist() == [False, True, False]
