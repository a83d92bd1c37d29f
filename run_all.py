"""Run the benchmark grid: `python run_all.py [--methods ...] [--datasets ...]` is `peftbench run ...`."""

import sys

from peftbench.cli import main

if __name__ == "__main__":
    sys.exit(main(["run", *sys.argv[1:]]))
