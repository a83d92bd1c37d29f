"""How long `peftbench --help` and `import peftbench.errors` take: the working tree against a git revision.

    python benchmarks/import_time.py                 # against the commit before the package import became lazy
    python benchmarks/import_time.py --revision HEAD~3 --runs 20

The revision is checked out in a temporary `git worktree` (removed afterwards); each command runs in a fresh
interpreter with PYTHONPATH set to the tree being measured, so the same virtual environment serves both. Runs of
the two trees alternate (drift of the machine hits both alike) after one untimed run each (that writes the
bytecode caches); the median wall time of `--runs` runs is reported, with the ratio revision / working tree.
`peftbench --help` is the installed console script (`peftbench.cli:main`), run through this interpreter.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COMMANDS = {
    "peftbench --help": ["-c", ("import sys; from peftbench.cli import main; sys.argv = ['peftbench', '--help']; "
                                "sys.exit(main())")],
    "import peftbench.errors": ["-c", "import peftbench.errors"],
}


def git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()


def default_revision() -> str:
    """The parent of the commit that made peftbench/__init__.py lazy (its module-level __getattr__)."""
    commits = git("log", "--format=%H", "-S", "def __getattr__", "--", "peftbench/__init__.py").split()
    if not commits:
        sys.exit("no commit introduced peftbench/__init__.py's __getattr__; give --revision")
    return f"{commits[-1]}^"


def run_once(tree: Path, args: list[str]) -> float:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    start = time.perf_counter()
    subprocess.run([sys.executable, *args], cwd=tree, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                   check=True)
    return time.perf_counter() - start


def loaded_from(tree: Path) -> Path:
    out = subprocess.run([sys.executable, "-c", "import peftbench; print(peftbench.__file__)"], cwd=tree,
                         env={**os.environ, "PYTHONPATH": str(tree)}, capture_output=True, text=True, check=True)
    return Path(out.stdout.strip()).resolve().parent.parent


def measure(trees: dict[str, Path], runs: int) -> dict[str, dict[str, float]]:
    """{command: {tree label: median seconds}}, the trees' runs alternating."""
    times: dict[str, dict[str, list[float]]] = {c: {t: [] for t in trees} for c in COMMANDS}
    for command, args in COMMANDS.items():
        for tree in trees.values():
            run_once(tree, args)  # untimed: bytecode caches
        for i in range(runs):
            order = list(trees.items()) if i % 2 == 0 else list(reversed(trees.items()))
            for label, tree in order:
                times[command][label].append(run_once(tree, args))
    return {c: {t: statistics.median(v) for t, v in per.items()} for c, per in times.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--revision", default=None,
                        help="git revision to compare with (default: the commit before the lazy package import)")
    parser.add_argument("--runs", type=int, default=10, help="timed runs per command and tree (default 10)")
    parser.add_argument("--json", type=Path, default=None, help="also write the medians to this file")
    args = parser.parse_args()
    revision = args.revision or default_revision()
    commit = git("rev-parse", "--short", revision)
    with tempfile.TemporaryDirectory(prefix="peftbench-import-time-") as tmp:
        worktree = Path(tmp) / "tree"
        git("worktree", "add", "--detach", str(worktree), revision)
        try:
            trees = {f"revision {commit}": worktree, "working tree": ROOT}
            for label, tree in trees.items():
                if loaded_from(tree) != tree.resolve():
                    sys.exit(f"{label}: peftbench is imported from {loaded_from(tree)}, not {tree}")
            medians = measure(trees, args.runs)
        finally:
            git("worktree", "remove", "--force", str(worktree))
    old, new = trees
    print(f"median wall time of {args.runs} runs (s); {os.cpu_count()} CPUs; python {sys.version.split()[0]}")
    print(f"| command | {old} | {new} | ratio |")
    print("|---|---|---|---|")
    for command, per in medians.items():
        print(f"| `{command}` | {per[old]:.3f} | {per[new]:.3f} | {per[old] / per[new]:.1f}x |")
    if args.json:
        args.json.write_text(json.dumps({"revision": commit, "runs": args.runs, "cpus": os.cpu_count(),
                                         "median_s": medians}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
