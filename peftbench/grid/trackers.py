"""Experiment trackers: every run of a grid logged to TensorBoard or MLflow as it trains (`--tracker`).

A run's log holds its config and parameter counts, every optimizer step's loss and learning rates, every epoch's
validation, the final test metrics and timings; the grid's tables, figures and report are logged once at the end.
The destination is resolved and checked in the driver before any training (`tracker_spec`), so that a missing
package or an unreachable server is one error, not one failed run per grid cell; each run then opens its own log
in its own process (`RunLog`).

Both packages are optional (extras `[tensorboard]`, `[mlflow]`) and imported only here, only when used.
"""

from __future__ import annotations

import importlib
import os
import re
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from ..errors import UserError

# kind -> the modules it needs. MLflow's default store here is SQLite, which mlflow-skinny serves only with
# sqlalchemy and alembic installed (https://github.com/mlflow/mlflow/blob/master/README_SKINNY.md).
REQUIRES = {"tensorboard": ["torch.utils.tensorboard"], "mlflow": ["mlflow", "sqlalchemy", "alembic"]}
FLUSH_S = 15  # at most this many seconds between a value and its appearance in the tracker
CHECK_TIMEOUT_S = 5  # how long the check waits for an MLflow server, without retries
PARAM_CHARS = 500  # an MLflow param value's length that every server accepts (newer ones take more)
ARTIFACT_FOLDERS = {".md": "tables", ".tex": "tables", ".csv": "tables", ".png": "figures", ".pdf": "figures"}


@dataclass(frozen=True)
class TrackerSpec:
    """Which tracker and where; picklable (each run trains in its own process and opens its own tracker)."""

    kind: str  # "tensorboard" or "mlflow"
    uri: str  # tensorboard: an absolute log folder; mlflow: a tracking URI (local: sqlite:///<absolute path>)
    experiment: str = "peftbench"  # mlflow experiment name / tensorboard sub-folder


def tracker_spec(kind: str | None, uri: str | None, out: Path) -> TrackerSpec | None:
    """`--tracker`/`--tracker-uri` resolved and checked before any training: None without --tracker; a UserError
    when the package is missing, the kind is unknown or the destination cannot be written or reached.
    Defaults: TensorBoard logs in <out>/tensorboard, MLflow in the SQLite store <out>/mlflow.db."""
    if kind is None:
        if uri is not None:
            raise UserError("--tracker-uri needs --tracker tensorboard or --tracker mlflow")
        return None
    if kind not in REQUIRES:
        raise UserError(f"--tracker {kind}: unknown tracker; use one of {', '.join(REQUIRES)}")
    for module in REQUIRES[kind]:
        _require(module, kind)
    out = Path(out).resolve()
    if kind == "tensorboard":
        return TrackerSpec(kind, _writable_folder(Path(uri).expanduser() if uri else out / "tensorboard", uri))
    spec = TrackerSpec(kind, _mlflow_uri(uri, out))
    _check_mlflow(spec)
    return spec


def _require(module: str, kind: str) -> None:
    """Import `module` or say which extra brings it."""
    try:
        importlib.import_module(module)
    except ImportError as error:
        raise UserError(f"--tracker {kind} needs the Python package {module.split('.')[-1]} ({error}); "
                        f'install it with: pip install -e ".[{kind}]"') from error


def _writable_folder(folder: Path, uri: str | None) -> str:
    """`folder`, created, as an absolute path; a UserError naming the flag that chose it when it cannot be written."""
    folder = folder.resolve()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryFile(dir=folder).close()
    except OSError as error:
        flag = "--tracker-uri" if uri else "--out"
        raise UserError(f"{flag}: cannot write TensorBoard logs in {folder} ({error.strerror or error}); "
                        "give a writable folder with --tracker-uri") from error
    return str(folder)


def _mlflow_uri(uri: str | None, out: Path) -> str:
    """The tracking URI: the given one, a relative SQLite path made absolute (runs may start in another folder), or
    by default a SQLite file under `out`. Not MLflow's file store (./mlruns): it is in maintenance mode and refuses
    to open without the opt-out MLFLOW_ALLOW_FILE_STORE (https://mlflow.org/docs/latest/api_reference/python_api/
    mlflow.environment_variables.html)."""
    if uri is None:
        return f"sqlite:///{out / 'mlflow.db'}"
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not Path(uri[len(prefix):]).is_absolute():
        return prefix + str(Path(uri[len(prefix):]).resolve())
    return uri


def _check_mlflow(spec: TrackerSpec) -> None:
    """Open the store and get or create the experiment, within seconds: an HTTP server that does not answer is
    asked once with a short timeout (MLflow's environment variables MLFLOW_HTTP_REQUEST_TIMEOUT and
    MLFLOW_HTTP_REQUEST_MAX_RETRIES, https://mlflow.org/docs/latest/api_reference/python_api/
    mlflow.environment_variables.html)."""
    from mlflow import MlflowClient

    try:
        with _environment(MLFLOW_HTTP_REQUEST_TIMEOUT=str(CHECK_TIMEOUT_S), MLFLOW_HTTP_REQUEST_MAX_RETRIES="0"):
            _experiment_id(MlflowClient(spec.uri), spec)
    except Exception as error:  # any failure (connection, database, permission, URI scheme) makes it unusable
        reason = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise UserError(f"--tracker-uri {spec.uri}: MLflow cannot use it ({reason}); start the server or give "
                        "another URI (default: a SQLite file under --out)") from error


@contextmanager
def _environment(**values: str):
    """Environment variables set for the duration of a block, then restored."""
    before = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in before.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _experiment_id(client, spec: TrackerSpec) -> str:
    """The experiment's id, created if new. A local SQLite store keeps its artifacts beside the database (MLflow's
    client default, ./mlruns, would follow the working folder of whichever process created the experiment)."""
    experiment = client.get_experiment_by_name(spec.experiment)
    if experiment is not None:
        return experiment.experiment_id
    location = None  # a server's own default
    if spec.uri.startswith("sqlite:///"):
        location = (Path(spec.uri.removeprefix("sqlite:///")).parent / "mlartifacts").as_uri()
    return client.create_experiment(spec.experiment, artifact_location=location)


def flatten(config: dict, prefix: str = "") -> dict[str, object]:
    """A nested config as one level of "a.b" keys; leaves (an empty dict too) keep their values."""
    flat: dict[str, object] = {}
    for key, value in config.items():
        if isinstance(value, dict) and value:
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


class RunLog:
    """One run's log in the tracker; created in the run's process. Errors of the tracker propagate (the run is then
    recorded as failed, with its log)."""

    def __init__(self, spec: TrackerSpec, run_name: str, tags: dict[str, str]) -> None:
        """`run_name` e.g. "synth_leaf/lora/seed0"; `tags`: dataset, method, seed, config_hash."""
        self._sink = _SINKS[spec.kind](spec, run_name, tags)

    def config(self, config: dict, params: dict) -> None:
        """The run's full config and its parameter counts (trainable, total, ratio_percent, ...)."""
        counts = {f"params/{k}": float(v) for k, v in params.items() if isinstance(v, (int, float))}
        self._sink.config(config, flatten(config), counts)

    def step(self, step: int, values: dict[str, float]) -> None:
        """One optimizer step's values, e.g. {"train/loss": ..., "lr/<group>": ...}."""
        self._sink.scalars(step, values)

    def epoch(self, epoch: int, values: dict[str, float]) -> None:
        """One epoch's values, e.g. {"val/<metric>": ..., "train/epoch_loss": ...}; the log is flushed."""
        self._sink.scalars(epoch, values)
        self._sink.flush()

    def finish(self, metrics: dict[str, float], timing: dict[str, float], status: str = "FINISHED") -> None:
        """The final test metrics and timings (keys as given, e.g. "test/<set>/<metric>", "timing/<key>"); then the
        run is closed with `status` ("FINISHED", or "FAILED" on error)."""
        self._sink.finish({**metrics, **timing}, status)


class _MlflowRun:
    """A run in an MLflow experiment, through the client API (no global active run). Values are buffered and sent
    in batches (split by the client to MLflow's limits) at every epoch's end and at least every FLUSH_S seconds:
    one request per step (tens of ms with the SQLite store) would cost a small model's step time."""

    def __init__(self, spec: TrackerSpec, run_name: str, tags: dict[str, str]) -> None:
        from mlflow import MlflowClient

        self.client = MlflowClient(spec.uri)
        experiment = _experiment_id(self.client, spec)
        self.run_id = self.client.create_run(experiment, run_name=run_name, tags=tags).info.run_id
        self.pending: list = []
        self.flushed = time.monotonic()

    def config(self, config: dict, flat: dict[str, object], counts: dict[str, float]) -> None:
        """Flat config values as params (truncated to MLflow's limit), the whole config as config.json."""
        from mlflow.entities import Param

        self.client.log_batch(self.run_id, params=[Param(_mlflow_key(k), _truncate(str(v))) for k, v in flat.items()])
        self.client.log_dict(self.run_id, config, "config.json")
        self.scalars(0, counts)

    def scalars(self, step: int, values: dict[str, float]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.pending += [Metric(_mlflow_key(k), float(v), now, step) for k, v in values.items()]
        if time.monotonic() - self.flushed >= FLUSH_S:
            self.flush()

    def flush(self) -> None:
        if self.pending:
            self.client.log_batch(self.run_id, metrics=self.pending)
        self.pending, self.flushed = [], time.monotonic()

    def finish(self, values: dict[str, float], status: str) -> None:
        self.scalars(0, values)
        self.flush()
        self.client.set_terminated(self.run_id, status)


def _mlflow_key(key: str) -> str:
    """`key` with the characters MLflow refuses in names (all but letters, digits, _ - . / : and space) as "_"."""
    return re.sub(r"[^\w\-./: ]", "_", key)


def _truncate(text: str) -> str:
    return text if len(text) <= PARAM_CHARS else text[:PARAM_CHARS - 3] + "..."


class _TensorBoardRun:
    """A run's folder <uri>/<experiment>/<run_name> of TensorBoard event files: the config as a text table,
    values as scalars, and at the end the config with the final values for the HParams dashboard."""

    def __init__(self, spec: TrackerSpec, run_name: str, tags: dict[str, str]) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(Path(spec.uri) / spec.experiment / run_name), flush_secs=FLUSH_S)
        self.hparams: dict[str, object] = dict(tags)

    def config(self, config: dict, flat: dict[str, object], counts: dict[str, float]) -> None:
        self.hparams.update({k: v if isinstance(v, (bool, int, float, str)) else str(v) for k, v in flat.items()})
        self.hparams.update(counts)
        self.writer.add_text("config", _markdown_table(self.hparams))

    def scalars(self, step: int, values: dict[str, float]) -> None:
        for tag, value in values.items():
            self.writer.add_scalar(tag, value, step)

    def flush(self) -> None:
        self.writer.flush()

    def finish(self, values: dict[str, float], status: str) -> None:
        """add_hparams with run_name "." writes into this run's own folder (by default it opens a new sub-folder);
        it logs `values` as scalars too."""
        self.writer.add_hparams({**self.hparams, "status": status}, values, run_name=".")
        self.writer.close()


def _markdown_table(rows: dict[str, object]) -> str:
    """A two-column markdown table, which TensorBoard's text dashboard renders."""
    def cell(value: object) -> str:
        return str(value).replace("|", "\\|").replace("\n", " ")

    return "\n".join(["| key | value |", "|---|---|", *(f"| {cell(k)} | {cell(v)} |" for k, v in rows.items())])


_SINKS = {"mlflow": _MlflowRun, "tensorboard": _TensorBoardRun}


def log_grid_artifacts(spec: TrackerSpec, paths: list[Path], name: str = "grid") -> None:
    """The grid's tables, figures and report: MLflow: files of one run `name` in the experiment (tables under
    tables/, figures under figures/); TensorBoard: markdown tables as text and PNG figures as images, under
    <uri>/<experiment>/<name>. Duplicate paths are logged once."""
    files = list(dict.fromkeys(Path(p) for p in paths))
    if spec.kind == "mlflow":
        _mlflow_artifacts(spec, files, name)
    else:
        _tensorboard_artifacts(spec, files, name)


def _mlflow_artifacts(spec: TrackerSpec, files: list[Path], name: str) -> None:
    from mlflow import MlflowClient

    client = MlflowClient(spec.uri)
    run_id = client.create_run(_experiment_id(client, spec), run_name=name).info.run_id
    for file in files:
        client.log_artifact(run_id, str(file), ARTIFACT_FOLDERS.get(file.suffix))
    client.set_terminated(run_id)


def _tensorboard_artifacts(spec: TrackerSpec, files: list[Path], name: str) -> None:
    import numpy as np
    from PIL import Image
    from torch.utils.tensorboard import SummaryWriter

    with SummaryWriter(str(Path(spec.uri) / spec.experiment / name)) as writer:
        for file in files:
            if file.suffix == ".md":
                writer.add_text(f"tables/{file.stem}", file.read_text(encoding="utf-8"))
            elif file.suffix == ".png":
                image = np.asarray(Image.open(file).convert("RGB"))
                writer.add_image(f"figures/{file.stem}", image, dataformats="HWC")
