"""The scripts under benchmarks/ run end to end on tiny settings and write what they claim."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def script(name: str, *args: str) -> str:
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / name), *args], cwd=ROOT, capture_output=True,
                          text=True, check=False)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_loader_overhead_on_files_with_the_embedding_cache(tmp_path):
    out = script("loader_overhead.py", "--dataset", "synth_road", "--method", "decoder_only", "--epochs", "1",
                 "--as-files", "96", "--device", "cpu", "--out", str(tmp_path))
    result = json.loads((tmp_path / "loader_synth_road_decoder_only_files96_cpu.json").read_text())
    assert result["image_files"] and result["embedding_cache"] and result["paired_steps"] == result["train_images"] // 4
    assert 0 < result["fetch_ms_per_step"] < result["loader_ms_per_step"] and 0.5 < result["ratio"] < 2
    assert "ratio" in out


def test_embedding_cache_benchmark_compares_equal_runs(tmp_path):
    script("embedding_cache.py", "--dataset", "synth_road", "--epochs", "3", "--from-epoch", "2", "--device", "cpu",
           "--out", str(tmp_path))
    result = json.loads((tmp_path / "embedding_cache_synth_road_tiny_cpu.json").read_text())
    # The speed-up itself is the benchmark's finding, not a test's: on a busy machine it can fall below 1.
    assert result["max_test_metric_difference"] <= 1e-3 and result["speedup"] > 0
    assert len(result["runs"]["cached"]["epoch_train_s"]) == len(result["runs"]["uncached"]["epoch_train_s"]) == 3
    assert 0 < result["encoder_forward_share"] < 1


def test_table5_puts_the_paper_beside_a_bench_file(tmp_path):
    bench = tmp_path / "bench.json"
    shutil.copy(ROOT / "benchmarks" / "results" / "bench_tiny_64px_b4_fp32_cpu.json", bench)
    script("table5.py", str(bench))
    text = (tmp_path / "bench_vs_table5.md").read_text()
    assert "only the ratio columns are comparable" in text
    lora = next(line for line in text.splitlines() if line.startswith("| lora "))
    cells = [c.strip() for c in lora.strip("|").split("|")]
    assert cells[2] == "1.64" and cells[3] == cells[4] == "1"  # the paper's LoRA figure; ratios to itself
    nas = [c.strip() for c in next(line for line in text.splitlines() if line.startswith("| nas_pc_lora ")).split("|")]
    assert nas[-2] == "1.19"  # search vs weight phase: the paper's 25.2 / 21.1 min/epoch


def test_gpu_script_names_its_groups():
    done = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu.sh"), "nope"], capture_output=True, text=True,
                          check=False)
    assert done.returncode == 2 and "vit_h_kernels or table5" in done.stderr



def test_memory_estimate_on_fake_tensors_equals_the_real_count():
    import importlib.util

    from peftbench.bench import BenchOptions, Setting
    from peftbench.methods import get_method

    loaded = importlib.util.spec_from_file_location("memory_estimate", ROOT / "benchmarks" / "memory_estimate.py")
    module = importlib.util.module_from_spec(loaded)
    loaded.loader.exec_module(module)
    opts = BenchOptions(sam="tiny", batch=4)
    for name in ("lora", "nas_pc_lora"):
        fake, real = (module.estimate(get_method(name), opts, Setting("fp32"), fake=f) for f in (True, False))
        assert fake["resident"] == real["resident"] > 0
        assert abs(fake["peak"] - real["peak"]) <= 1024 and fake["peak"] > 2 * fake["resident"]
        assert module.estimate(get_method(name), opts, Setting("fp32", checkpointing=True))["peak"] < fake["peak"]
