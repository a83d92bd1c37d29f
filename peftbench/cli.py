"""Command line: `peftbench run|methods|datasets|params|tables`; `python run_all.py ...` is `peftbench run ...`."""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from dataclasses import MISSING, fields
from pathlib import Path
from typing import Literal, get_args, get_origin, get_type_hints

from rich.console import Console

from .errors import UserError
from .store.atomic import WRITE_ERRORS
from .training.config import GridOptions, SamName, positive_int

SAM_NAMES = list(get_args(SamName))


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2, no usage dump
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


# Commands whose --out is a folder (pretrain-tiny's is a file): checked before the command does anything.
FOLDER_OUT = ("run", "report", "tables", "export", "predict", "bench")


def _check_out(value: str) -> None:
    """--out names a folder, or one to create: an error where it, or a folder it would be made in, is a file."""
    path = Path(value)
    existing = next(p for p in (path, *path.parents) if p.exists())
    if not existing.is_dir():
        where = "" if existing == path else f" {existing}"
        raise UserError(f"--out {value}:{where} is a file, not a folder")


def _minutes(flag: str, value: str) -> int:
    """Minutes, or [H]H:MM:SS as Slurm writes time limits."""
    parts = value.split(":")
    if len(parts) in (1, 3) and all(p.strip().isdigit() for p in parts):
        minutes = int(parts[0]) if len(parts) == 1 else int(parts[0]) * 60 + int(parts[1]) + (int(parts[2]) > 0)
        if minutes > 0:
            return minutes
    raise UserError(f"{flag} {value!r}: expected minutes or HH:MM:SS, e.g. 240 or 04:00:00")


def _gpu_count(flag: str, value: str) -> int:
    """0 (train on CPUs) or a positive integer."""
    return 0 if value.strip() == "0" else positive_int(flag, value)


def _typed(flag: str, parse):
    """argparse's `type`: the flag's text converted once; a bad value is the converter's one-line UserError."""
    return lambda value: parse(flag, value)


def _literal_choices(hint) -> list | None:
    """The values of a Literal annotation (also inside `X | None`), else None."""
    literal = next((h for h in (hint, *get_args(hint)) if get_origin(h) is Literal), None)
    return list(get_args(literal)) if literal else None


def _add_grid_options(p: argparse.ArgumentParser) -> None:
    """One argument per GridOptions field, from the flag declared with it (config.flag)."""
    hints = get_type_hints(GridOptions)
    for f in fields(GridOptions):
        flag = f.metadata["flag"]
        default = f.default if f.default_factory is MISSING else f.default_factory()
        if flag.action:
            # A switch not given is None (off), whichever way it sets its field: grid_options keeps the field's default.
            p.add_argument(flag.name, dest=f.name, action=flag.action, default=None, help=flag.help)
        else:
            choices = _literal_choices(hints[f.name])
            p.add_argument(flag.name, dest=f.name, default=default, type=_typed(flag.name, flag.parse), choices=choices,
                           metavar=None if choices else flag.name.lstrip("-").replace("-", "_").upper(), help=flag.help)


EXECUTOR_DEFAULTS = {"ray_address": None, "ray_cpus_per_run": 1, "slurm_partition": None, "slurm_time": 24 * 60,
                     "slurm_gpus_per_task": 1, "slurm_cpus_per_task": 6}


def _add_run_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--methods", default="miniature",
                   help="comma-separated registered methods, 'all' (the main methods), 'ablations' (the paper's "
                        "ablation variants) or 'miniature' (default: decoder-only on the random and the pretrained "
                        "tiny SAM, and the LoRA family)")
    p.add_argument("--datasets", default=None,
                   help="comma-separated registered datasets, folders or CSV manifests (default: the synthetic ones)")
    _add_grid_options(p)
    p.add_argument("--data-root", default=None,
                   help="folder holding the datasets (default: datasets/ in a checkout, ~/.cache/peftbench/datasets "
                        "when installed)")
    p.add_argument("--classes", default=None, type=_typed("--classes", positive_int),
                   help="a folder or CSV dataset is multi-class with K classes (masks hold class ids 0..K-1, 255 = "
                        "ignore); default: binary (masks 0/255 or 0/1)")
    p.add_argument("--binarize", action="store_true",
                   help="a binary folder or CSV dataset's masks may hold other values (JPEG, anti-aliasing): "
                        "thresholded at 128")
    p.add_argument("--skip-bad", action="store_true",
                   help="leave out unreadable images, size mismatches and masks with unexpected values (listed, "
                        "and counted in every record) instead of stopping")
    p.add_argument("--executor", default="local", choices=["local", "ray", "slurm"],
                   help="where runs execute, each in its own process: local (default), Ray tasks or a Slurm array job")
    p.add_argument("--gpus", default=None, help="local: one worker per listed GPU, e.g. 0,1,2,3")
    p.add_argument("--in-process", action="store_true",
                   help="local: train in this process (debugging; a crash ends the grid)")
    p.add_argument("--ray-address", default=EXECUTOR_DEFAULTS["ray_address"],
                   help="ray: 'auto' or ray://host:port joins a running cluster (default: a local instance)")
    p.add_argument("--ray-cpus-per-run", default=EXECUTOR_DEFAULTS["ray_cpus_per_run"],
                   type=_typed("--ray-cpus-per-run", positive_int),
                   help="ray: CPUs (torch threads) per run (default 1)")
    p.add_argument("--slurm-partition", default=EXECUTOR_DEFAULTS["slurm_partition"],
                   help="slurm: partition (default: the cluster's default)")
    p.add_argument("--slurm-time", default=EXECUTOR_DEFAULTS["slurm_time"], type=_typed("--slurm-time", _minutes),
                   help="slurm: time limit per run, minutes or HH:MM:SS (default 24:00:00); a run reaching it "
                        "is requeued and continues from its last checkpoint")
    p.add_argument("--slurm-gpus-per-task", default=EXECUTOR_DEFAULTS["slurm_gpus_per_task"],
                   type=_typed("--slurm-gpus-per-task", _gpu_count),
                   help="slurm: GPUs per run (default 1; 0 trains on CPUs)")
    p.add_argument("--slurm-cpus-per-task", default=EXECUTOR_DEFAULTS["slurm_cpus_per_task"],
                   type=_typed("--slurm-cpus-per-task", positive_int),
                   help="slurm: CPUs per run (default 6: 4 loader workers)")


def _cpu_policy(args: argparse.Namespace) -> tuple[int, int] | None:
    """(runs in parallel, torch threads per run) for a local grid training on the CPU (cpu.py); None otherwise."""
    from .grid.cpu import available_cores, cpu_policy
    from .training.device import resolve_device

    if args.executor != "local" or args.gpus or resolve_device(args.device).type != "cpu":
        return None
    workers, threads = cpu_policy(args.sam, available_cores(), args.cpu_workers, args.threads_per_run)
    return (1 if args.in_process else workers), threads


def _executor(args: argparse.Namespace, cpu: tuple[int, int] | None = None):
    from .grid.executors import LocalExecutor, RayExecutor, SlurmExecutor, gpu_slots

    local_only = [flag for flag, given in (("--gpus", args.gpus), ("--in-process", args.in_process),
                                           ("--cpu-workers", args.cpu_workers),
                                           ("--threads-per-run", args.threads_per_run)) if given]
    if args.executor != "local" and local_only:
        raise UserError(f"{local_only[0]} is for --executor local, not {args.executor}")
    for executor in ("ray", "slurm"):  # another executor's flags would be ignored silently
        given = [f"--{k.replace('_', '-')}" for k, v in vars(args).items()
                 if k.startswith(f"{executor}_") and v != EXECUTOR_DEFAULTS[k]]
        if given and args.executor != executor:
            raise UserError(f"{given[0]} is for --executor {executor}, not {args.executor}")
    if (args.gpus or args.cpu_workers) and args.in_process:
        raise UserError("--in-process trains one run at a time in this process; leave out --gpus / --cpu-workers "
                        "or --in-process")
    if args.gpus and (args.cpu_workers or args.threads_per_run):
        raise UserError("--cpu-workers / --threads-per-run are for CPU runs; --gpus runs one worker per GPU")
    if args.executor == "ray":
        return RayExecutor(args.ray_address, args.ray_cpus_per_run)
    if args.executor == "slurm":
        return SlurmExecutor(args.out / "slurm", args.slurm_partition, args.slurm_time, args.slurm_gpus_per_task,
                             args.slurm_cpus_per_task)
    if args.gpus:
        return LocalExecutor(gpu_slots(args.gpus), isolate=not args.in_process)
    return LocalExecutor([None] * (cpu[0] if cpu else 1), isolate=not args.in_process, threads=cpu[1] if cpu else None)


def retry_command(argv: list[str], failed: list[dict], dataset_args: dict[str, str]) -> str:
    """`python run_all.py ...` with the original flags, restricted to the failed runs' datasets, methods and seeds
    (recorded runs in that product are skipped). `dataset_args`: card name -> the --datasets entry that named it."""
    kept, i = [], 0
    while i < len(argv):
        flag = argv[i].split("=")[0]
        if flag in ("--datasets", "--methods", "--seeds"):
            i += 1 if "=" in argv[i] else 2
            continue
        kept.append(argv[i])
        i += 1
    narrowed = {"--datasets": [dataset_args[r["dataset"]] for r in failed], "--methods": [r["method"] for r in failed],
                "--seeds": [str(r["seed"]) for r in failed]}
    for flag, values in narrowed.items():
        kept += [flag, ",".join(dict.fromkeys(values))]
    return shlex.join(["python", "run_all.py", *kept])


def grid_options(args: argparse.Namespace, cpu: tuple[int, int] | None = None) -> GridOptions:
    """The run command's GridOptions, one field per flag (each converted by argparse); `cpu`: the CPU policy's
    (runs in parallel, torch threads per run), which replace the flags' (None: not a local CPU grid)."""
    given = {f.name: value for f in fields(GridOptions) if (value := getattr(args, f.name)) is not None}
    return GridOptions(**{**given, "cpu_workers": cpu[0] if cpu else None, "threads_per_run": cpu[1] if cpu else None})


def _cmd_run(args: argparse.Namespace, console: Console) -> int:
    from .backbone.sam import load_sam
    from .data import dataset_cards, resolve_dataset
    from .data.validate import screen_card
    from .grid.runner import run_grid
    from .methods import resolve_methods

    methods = resolve_methods(args.methods)
    data_root = Path(args.data_root) if args.data_root else None
    if args.datasets is None:
        cards = [c for c in dataset_cards().values() if c.source == "synthetic"]
        names = [c.name for c in cards]
    else:
        names = [n.strip() for n in args.datasets.split(",") if n.strip()]
        if not names:
            raise UserError("--datasets is empty; give registered names, folders or CSV files")
        cards = [resolve_dataset(n, data_root, args.classes, args.binarize) for n in names]
    for card in cards:  # bad files stop the grid here, before anything trains, unless --skip-bad
        screen_card(card, args.skip_bad, console)
    dataset_args = {card.name: arg for card, arg in zip(cards, names)}
    cpu = _cpu_policy(args)
    opts = grid_options(args, cpu)
    if opts.micro_batch_size and opts.batch_size % opts.micro_batch_size:
        raise UserError(f"--micro-batch-size {opts.micro_batch_size} must divide --batch-size {opts.batch_size}")
    executor = _executor(args, cpu)
    load_sam(opts.sam, opts.checkpoint)  # fail fast on a missing or mismatched checkpoint
    start = time.time()
    console.print(f"peftbench: {len(methods)} methods x {len(cards)} datasets x {len(opts.seeds)} seeds "
                  f"on SAM {opts.sam} -> {opts.out} ({executor.name} executor)")
    summary = run_grid(methods, cards, opts, console, executor)
    interrupted = f", {summary['interrupted']} interrupted" if summary["interrupted"] else ""
    console.print(f"done in {time.time() - start:.0f} s: {summary['trained']} trained, {summary['skipped']} skipped "
                  f"(already recorded), {summary['claimed']} left to another process, {summary['failed']} failed"
                  f"{interrupted}")
    console.print(f"records: {opts.out / 'runs'}")
    if summary["failed_runs"]:
        console.print(f"failed runs (status and log under {opts.out / 'failed'}):", markup=False)
        for run in summary["failed_runs"]:
            console.print(f"  {run['dataset']} / {run['method']} / seed {run['seed']}: {run['error']} "
                          f"(log: {run['log']})", markup=False, highlight=False)
    if summary["interrupted_runs"]:
        console.print("interrupted runs (a rerun continues each from its last checkpoint):", markup=False)
        for run in summary["interrupted_runs"]:
            console.print(f"  {run['dataset']} / {run['method']} / seed {run['seed']}", markup=False, highlight=False)
    unfinished = summary["failed_runs"] + summary["interrupted_runs"]
    if unfinished:
        argv = args.argv if args.argv is not None else sys.argv[1:]
        console.print("retry only these: " + retry_command(argv[1:] if argv[:1] == ["run"] else argv, unfinished,
                                                           dataset_args),
                      markup=False, highlight=False, soft_wrap=True)
    for path in summary["tables"]:
        if path.suffix in (".md", ".html"):
            console.print(f"{'report' if path.suffix == '.html' else 'table'}: {path}")
    return 1 if unfinished else 0


def _cmd_methods(args: argparse.Namespace, console: Console) -> int:
    from .methods import method_specs

    specs = method_specs().values()
    width = max(len(s.name) for s in specs)
    for spec in specs:
        print(f"{spec.name:<{width}}  {spec.family:<12} merge: {spec.merge_kind:<12} {spec.description}")
    return 0


def _cmd_datasets(args: argparse.Namespace, console: Console) -> int:
    from .data import dataset_cards
    from .data.cards import dataset_state

    data_root = Path(args.data_root) if args.data_root else None
    for card in dataset_cards().values():
        print(f"{card.name:<14} {card.kind:<10} {dataset_state(card, data_root):<44} {', '.join(card.metrics):<20} "
              f"{card.description}")
    return 0


def _cmd_prepare(args: argparse.Namespace, console: Console) -> int:
    from .data import dataset_cards
    from .data.prepare import prepare

    cards = dataset_cards()
    if args.name not in cards or cards[args.name].source != "prepared":
        real = [n for n, c in cards.items() if c.source == "prepared"]
        raise UserError(f"prepare {args.name!r}: not a registered real dataset; one of {', '.join(real)}")
    tile = positive_int("--tile", args.tile) if args.tile is not None else None
    data_root = Path(args.data_root) if args.data_root else None
    prepare(cards[args.name], args.inputs, source=args.source, data_root=data_root, skip_bad=args.skip_bad,
            force=args.force, binarize=args.binarize, tile=tile, console=console)
    return 0


def _cmd_params(args: argparse.Namespace, console: Console) -> int:
    from .params import params_table

    table, notes = params_table(args.sam, args.methods, args.num_classes)
    print(table.to_markdown(index=False))
    if notes:
        print("\nWhere ours differ from the paper's count by more than 1 %:")
        print("\n".join(f"- {note}" for note in notes))
    return 0


def _cmd_export(args: argparse.Namespace, console: Console) -> int:
    from .export import export_run

    for path in export_run(args.record, args.format, Path(args.out), args.checkpoint, args.trust_plugin):
        console.print(str(path), markup=False, highlight=False)
    return 0


def _cmd_predict(args: argparse.Namespace, console: Console) -> int:
    from .predict import predict

    done = predict(args.record, args.images, Path(args.out), device=args.device,
                   batch_size=positive_int("--batch-size", args.batch_size), overlay=args.overlay,
                   skip_bad=args.skip_bad, console=console, trust_plugins=args.trust_plugin)
    console.print(f"{len(done['written'])} files written to {args.out}" +
                  (f"; {len(done['skipped'])} unreadable images skipped" if done["skipped"] else ""), markup=False)
    return 0


def _cmd_tables(args: argparse.Namespace, console: Console) -> int:
    from .report import build_report

    written = build_report(
        Path(args.out), reference=args.reference, warn=lambda text: print(f"peftbench: warning: {text}", file=sys.stderr),
        trust_plugins=args.trust_plugin, dataset_roots=args.data_root)
    if not written:
        raise UserError(f"--out {args.out}: no run records under {Path(args.out) / 'runs'}; run `peftbench run` first")
    for path in written:
        console.print(str(path))
    return 0


def _choices(flag: str, value: str, allowed: list[str]) -> tuple[str, ...]:
    """A comma-separated flag value, each item one of `allowed`, in order, without repeats."""
    items = tuple(dict.fromkeys(v.strip() for v in value.split(",") if v.strip()))
    wrong = [v for v in items if v not in allowed]
    if wrong or not items:
        raise UserError(f"{flag} {value!r}: give one or more of {', '.join(allowed)}, comma-separated")
    return items


def _cmd_bench(args: argparse.Namespace, console: Console) -> int:
    from .bench import BenchOptions, run_bench, write_bench

    opts = BenchOptions(
        sam=args.sam, methods=args.methods, batch=positive_int("--batch", args.batch),
        image_size=positive_int("--image-size", args.image_size) if args.image_size else None,
        precisions=_choices("--precision", args.precision, ["auto", "fp32", "fp16", "bf16"]),
        attentions=_choices("--attention", args.attention, ["original", "sdpa"]),
        checkpointing=tuple(c == "on" for c in _choices("--checkpointing", args.checkpointing, ["off", "on"])),
        device=args.device, warmup=positive_int("--warmup", args.warmup),
        iters=positive_int("--iters", args.iters), repeats=positive_int("--repeats", args.repeats), out=Path(args.out),
        one_at_a_time=args.one_at_a_time, optimizer_kernel=args.optimizer_kernel,
    )
    table, meta = run_bench(opts, on_method=lambda name: console.print(f"bench: {name}", style="dim"))
    for path in write_bench(table, meta, opts.out):
        console.print(str(path))
    print(table.to_markdown(index=False, floatfmt=".3g"))
    return 0


def _cmd_pretrain_tiny(args: argparse.Namespace, console: Console) -> int:
    from .pretrain import PretrainConfig, pretrain, save_pretrained
    from .training.device import resolve_device

    steps = {"steps": positive_int("--steps", args.steps)} if args.steps is not None else {}
    config = PretrainConfig(seed=args.seed, device=resolve_device(args.device).type, **steps)
    state, summary = pretrain(config, console)
    meta = save_pretrained(state, summary, Path(args.out))
    console.print(f"validation IoU {summary['val_iou']:.1f} (random init {summary['val_iou_random_init']:.1f}) "
                  f"after {summary['wall_s'] / 60:.1f} min -> {args.out}, {meta}")
    return 0


def _add_trust_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--trust-plugin", action="append", default=[], metavar="MODULE",
                   help="import this plug-in method module when a record names it (repeatable; a results folder "
                        "never makes peftbench import code on its own: docs/security.md)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="peftbench", description="Benchmark PEFT methods for SAM")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    _add_run_args(sub.add_parser("run", help="train and test methods x datasets x seeds, then write the tables"))
    sub.add_parser("methods", help="list registered methods")
    p = sub.add_parser("datasets", help="list registered datasets and whether each is ready on this machine")
    p.add_argument("--data-root", default=None,
                   help="folder holding prepared datasets (default: datasets/ in a checkout, "
                        "~/.cache/peftbench/datasets when installed)")
    p = sub.add_parser("prepare", help="download (or take --from), verify, extract, convert, validate a real dataset")
    p.add_argument("name", help="a registered real dataset (peftbench datasets)")
    p.add_argument("--from", dest="inputs", nargs="+", action="extend", metavar="URL_OR_ARCHIVE_OR_FOLDER",
                   help="archives, folders or URLs to use instead of the card's downloads (any order, repeatable)")
    p.add_argument("--source", choices=["convlora", "official"], default=None,
                   help="the Conv-LoRA authors' archive (default where there is one) or the official releases")
    p.add_argument("--data-root", default=None,
                   help="folder to prepare into (default: datasets/ in a checkout, ~/.cache/peftbench/datasets "
                        "when installed)")
    p.add_argument("--skip-bad", action="store_true", help="exclude bad image/label pairs (counted in prepared.json)")
    p.add_argument("--force", action="store_true", help="prepare again although prepared.json exists")
    p.add_argument("--binarize", action="store_true",
                   help="threshold binary masks at 128 instead of rejecting anti-aliased ones")
    p.add_argument("--tile", default=None,
                   help="road: cut N x N non-overlapping crops of the 1500 px tiles (default: whole tiles)")
    p = sub.add_parser("params", help="trainable parameters per method (the paper's Params(M)/Ratio(%%) column)")
    p.add_argument("--sam", default="vit_h", choices=SAM_NAMES)
    p.add_argument("--methods", default="all")
    p.add_argument("--num-classes", type=int, default=1)
    p = sub.add_parser("bench", help="training-step / inference speed and peak memory per method on random inputs")
    p.add_argument("--sam", default="tiny", choices=SAM_NAMES)
    p.add_argument("--methods", default="all")
    p.add_argument("--batch", default="4", help="images per step (default 4)")
    p.add_argument("--image-size", default=None, help="input size in px (default: the architecture's own)")
    p.add_argument("--precision", default="auto",
                   help="auto, fp32, fp16 or bf16; several, comma-separated, are each timed in this run (the first "
                        "is the reference of the *_vs_first_setting columns)")
    p.add_argument("--attention", default="original", help="original, sdpa or original,sdpa (both, in this run)")
    p.add_argument("--checkpointing", default="off", help="off, on or off,on (both, in this run)")
    p.add_argument("--optimizer-kernel", default="fused", choices=["fused", "foreach", "loop"])
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--warmup", default="2", help="untimed iterations first (default 2)")
    p.add_argument("--iters", default="5", help="iterations per repeat (default 5)")
    p.add_argument("--repeats", default="3", help="repeats; the median is reported (default 3)")
    p.add_argument("--one-at-a-time", action="store_true",
                   help="build and time one model (method and setting) after the other (default: all resident, "
                        "repeats interleaved)")
    p.add_argument("--out", default="results/bench",
                   help="output folder (default results/bench; benchmarks/results/ holds the committed figures)")
    p = sub.add_parser("pretrain-tiny", help="pretrain the tiny SAM on the generic synthetic corpus")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", default=None, help="optimizer steps (default: the shipped weights' count)")
    p.add_argument("--out", default="tiny_sam.pt", help="weights file; its record goes beside it as .json")
    p.add_argument("--device", default="cpu", choices=["auto", "cpu", "cuda"],
                   help="default cpu: the shipped weights were trained, and reproduce, there")
    p = sub.add_parser("export", help="a trained run in peft's, segment-anything's or peftbench's own format")
    p.add_argument("record", help="the run's record, <out>/runs/<dataset>/<method>/seed<k>.json")
    p.add_argument("--format", required=True, choices=["state", "peft", "sam"])
    p.add_argument("--out", required=True, help="folder to write into")
    p.add_argument("--checkpoint", default=None, help="the run's SAM checkpoint, if it is no longer where it was")
    _add_trust_arg(p)
    p = sub.add_parser("predict", help="masks of a trained run on new images, one PNG per image at its own size")
    p.add_argument("record", help="the run's record, <out>/runs/<dataset>/<method>/seed<k>.json")
    p.add_argument("--images", required=True, nargs="+", help="image files and/or folders of images")
    p.add_argument("--out", required=True, help="folder to write the masks into")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--batch-size", default="8", help="images per forward pass (default 8)")
    p.add_argument("--overlay", action="store_true", help="also <name>_overlay.png: the image with the mask in colour")
    p.add_argument("--skip-bad", action="store_true", help="skip (and list) unreadable images instead of stopping")
    _add_trust_arg(p)
    for name in ("report", "tables"):
        p = sub.add_parser(name, help="rebuild every table, figure and results/report.html from the run records")
        p.add_argument("--out", default="results")
        p.add_argument("--reference", action="store_true",
                       help="add the paper's published numbers beside ours where a column matches")
        _add_trust_arg(p)
        p.add_argument("--data-root", action="append", default=[], metavar="FOLDER",
                       help="a folder besides the data root whose datasets' images the predictions figure may show "
                            "(repeatable)")
    return parser


COMMANDS = {"run": _cmd_run, "prepare": _cmd_prepare, "methods": _cmd_methods, "datasets": _cmd_datasets,
            "params": _cmd_params, "tables": _cmd_tables, "report": _cmd_tables, "bench": _cmd_bench,
            "pretrain-tiny": _cmd_pretrain_tiny, "export": _cmd_export, "predict": _cmd_predict}


def main(argv: list[str] | None = None) -> int:
    console = Console(stderr=False)
    try:
        args = build_parser().parse_args(argv)  # a flag's converter raises UserError (config.py)
        args.argv = argv  # for the retry command of failed runs
        if args.command in FOLDER_OUT:
            _check_out(args.out)
        return COMMANDS[args.command](args, console)
    except UserError as err:
        print(f"peftbench: error: {err}", file=sys.stderr)
        return 2
    except OSError as err:
        if err.errno not in WRITE_ERRORS:
            raise
        # A full disk, a quota, a read-only or forbidden folder: every output is written atomically, so what was
        # already written stays whole and a rerun continues from it.
        print(f"peftbench: error: cannot write {err.filename or 'the results'}: {err.strerror}; finished runs are "
              "kept, free space or fix permissions and rerun", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("peftbench: interrupted; finished runs are kept and will be skipped next time", file=sys.stderr)
        return 130
