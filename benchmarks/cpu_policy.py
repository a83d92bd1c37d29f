"""The CPU execution policy (peftbench/grid/cpu.py) measured: grid wall time on a quiet machine and beside one competing
single-threaded CPU-bound process, with the policy (the default) and as peftbench ran before it (one run at a time
on every core, OpenMP's default wait policy), all in one go, each grid in a fresh results folder.

    python benchmarks/cpu_policy.py               # (a) small grid, quiet and busy, both policies; (b) the default run
    python benchmarks/cpu_policy.py --skip-default

(a) the small grid (decoder_only, lora x synth_leaf x seeds 0, 1, 4 epochs): busy / quiet per policy; target <= 1.5
    with the policy. (b) the default run (the miniature, 84 runs), quiet: before / policy; target >= 1.3.
Writes (by default) results/bench/cpu_policy_<cores>cores.json and .md.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from peftbench.grid.cpu import available_cores
from peftbench.store.atomic import write_json_atomic, write_text_atomic
from peftbench.store.environment import environment

ROOT = Path(__file__).resolve().parent.parent
SMALL = ["--methods", "decoder_only,lora", "--datasets", "synth_leaf", "--seeds", "0,1", "--epochs", "4"]
# name -> (run_all.py flags, environment changes). "before": an empty OMP_WAIT_POLICY keeps OpenMP's default (spin,
# then sleep; libgomp notes the empty value on stderr) where peftbench would otherwise set PASSIVE.
POLICIES = {"policy": ([], {}),
            "before": (["--cpu-workers", "1", "--threads-per-run", str(available_cores())], {"OMP_WAIT_POLICY": ""})}


def grid_seconds(args: list[str], env: dict, busy: bool) -> float:
    """Wall time of `run_all.py args` in a fresh folder, with or without a competing busy-loop process."""
    competitor = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if busy else None
    try:
        with tempfile.TemporaryDirectory() as out:
            start = time.perf_counter()
            subprocess.run([sys.executable, str(ROOT / "run_all.py"), "--device", "cpu", *args, "--out", out],
                           check=True, cwd=ROOT, capture_output=True, env={**os.environ, **env})
            return time.perf_counter() - start
    finally:
        if competitor:
            competitor.kill()
            competitor.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--skip-default", action="store_true", help="only (a), the small grid")
    parser.add_argument("--out", default="results/bench")
    args = parser.parse_args()
    seconds = {}
    for name, (flags, env) in POLICIES.items():  # (a): quiet and busy back to back, so drift hits both alike
        for busy in (False, True):
            seconds[f"small_{name}_{'busy' if busy else 'quiet'}"] = grid_seconds(SMALL + flags, env, busy)
    if not args.skip_default:
        for name, (flags, env) in POLICIES.items():
            seconds[f"default_{name}_quiet"] = grid_seconds(flags, env, busy=False)
    ratios = {f"small_busy_vs_quiet_{n}": seconds[f"small_{n}_busy"] / seconds[f"small_{n}_quiet"] for n in POLICIES}
    if not args.skip_default:
        ratios["default_before_vs_policy"] = seconds["default_before_quiet"] / seconds["default_policy_quiet"]
    cores = available_cores()
    result = {"cores": cores, "seconds": seconds, "ratios": ratios, "small_grid": SMALL, "policies": POLICIES,
              "environment": environment()}
    stem = Path(args.out) / f"cpu_policy_{cores}cores"
    write_json_atomic(stem.with_suffix(".json"), result)
    lines = [f"# CPU policy, {cores} cores\n", "| measurement | value |", "|:--|--:|",
             *[f"| {k} (s) | {v:.1f} |" for k, v in seconds.items()], *[f"| {k} | {v:.2f} |" for k, v in ratios.items()]]
    write_text_atomic(stem.with_suffix(".md"), "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
