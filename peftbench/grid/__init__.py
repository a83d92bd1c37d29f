"""Many runs: the grid's plan and skips, the executors (local, Ray, Slurm), trackers and the CPU policy."""
