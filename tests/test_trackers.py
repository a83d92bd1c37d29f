"""Experiment trackers (peftbench/grid/trackers.py), driven directly with made-up values (no training): what MLflow's
search and TensorBoard's event reader find afterwards, and the one-line errors of `tracker_spec` before any run."""

import pickle
import socket
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from peftbench.errors import UserError
from peftbench.grid.trackers import PARAM_CHARS, RunLog, TrackerSpec, flatten, log_grid_artifacts, tracker_spec

CONFIG = {"method": {"name": "lora", "rank": 4, "targets": ["qkv", "proj"]}, "lr": 0.001, "group_optim": {},
          "note": "x" * 900, "dataset": {"name": "synth_leaf", "odd key*": 1}}
PARAMS = {"trainable": 1200, "total": 50000, "sam_total": 93700000, "ratio_percent": 0.0013}
LOSSES = [0.9, 0.7, 0.5, 0.45]


def log_run(spec: TrackerSpec, method: str, seed: int, status: str = "FINISHED") -> None:
    """One run's whole log: config, two epochs of two steps, test metrics and timings."""
    log = RunLog(spec, f"synth_leaf/{method}/seed{seed}",
                 {"dataset": "synth_leaf", "method": method, "seed": str(seed), "config_hash": "abc"})
    log.config({**CONFIG, "seed": seed}, PARAMS)
    for step, loss in enumerate(LOSSES):
        log.step(step, {"train/loss": loss + seed, "lr/adapter": 1e-3 * (step + 1)})
        if step % 2:
            log.epoch(step // 2, {"val/dice": 0.5 + step / 10, "train/epoch_loss": loss})
    log.finish({"test/test/dice": 0.8 + seed / 100}, {"timing/train_s": 12.5}, status)


def grid_files(folder) -> list:
    """A grid's outputs as report.build_report writes them; the tables listed twice, as the runner passes them."""
    (folder / "tables").mkdir(parents=True)
    (folder / "figures").mkdir()
    metrics = folder / "tables" / "metrics.md"
    metrics.write_text("| method | dice |\n|---|---|\n| lora | 0.80 |\n")
    (folder / "tables" / "metrics.csv").write_text("method,dice\nlora,0.80\n")
    Image.fromarray(np.full((8, 12, 3), 200, np.uint8)).save(folder / "figures" / "pareto.png")
    (folder / "report.html").write_text("<html></html>")
    files = [metrics, folder / "tables" / "metrics.csv", folder / "figures" / "pareto.png", folder / "report.html"]
    return files + files[:2]


def test_flatten_joins_nested_keys_and_keeps_leaves():
    assert flatten({"a": {"b": 1, "c": {"d": [1, 2]}}, "e": {}, "f": None}) == {"a.b": 1, "a.c.d": [1, 2], "e": {},
                                                                               "f": None}


# ---------------------------------------------------------------- MLflow


@pytest.fixture(scope="module")
def mlflow_results(tmp_path_factory):
    """Two runs (one failed) and the grid's artifacts in a fresh results folder's default MLflow store."""
    pytest.importorskip("mlflow")
    out = tmp_path_factory.mktemp("results")
    spec = tracker_spec("mlflow", None, out)
    log_run(spec, "lora", 0)
    log_run(spec, "dora", 1, status="FAILED")
    log_grid_artifacts(spec, grid_files(out))
    return out, spec


@pytest.fixture
def runs(mlflow_results, monkeypatch):
    """mlflow.search_runs over the results folder's store, as a user would call it (tracking URI from the
    environment, restored afterwards)."""
    import mlflow

    spec = mlflow_results[1]
    monkeypatch.setenv("MLFLOW_TRACKING_URI", spec.uri)
    return mlflow.search_runs(experiment_names=["peftbench"])


def test_mlflow_defaults_to_a_local_sqlite_store_under_the_results_folder(mlflow_results):
    out, spec = mlflow_results
    assert spec == TrackerSpec("mlflow", f"sqlite:///{out.resolve() / 'mlflow.db'}", "peftbench")
    assert (out / "mlflow.db").is_file()
    assert pickle.loads(pickle.dumps(spec)) == spec  # sent to each run's process


def test_mlflow_search_runs_finds_every_run_with_its_tags_params_and_final_metrics(runs, mlflow_results):
    out, _ = mlflow_results
    trained = runs[runs["tags.mlflow.runName"] != "grid"].set_index("tags.method")
    assert sorted(trained.index) == ["dora", "lora"]
    assert trained.loc["lora", "status"] == "FINISHED" and trained.loc["dora", "status"] == "FAILED"
    assert trained.loc["lora", "tags.mlflow.runName"] == "synth_leaf/lora/seed0"
    assert list(trained["tags.dataset"]) == ["synth_leaf"] * 2 and trained.loc["dora", "tags.seed"] == "1"
    assert trained.loc["lora", "tags.config_hash"] == "abc"
    lora = trained.loc["lora"]
    assert lora["params.method.name"] == "lora" and lora["params.method.rank"] == "4"
    assert lora["params.method.targets"] == "['qkv', 'proj']" and lora["params.group_optim"] == "{}"
    assert lora["params.dataset.odd key_"] == "1"  # a character MLflow refuses in names, replaced
    assert len(lora["params.note"]) == PARAM_CHARS and lora["params.note"].endswith("...")
    assert lora["metrics.test/test/dice"] == pytest.approx(0.80)
    assert trained.loc["dora", "metrics.test/test/dice"] == pytest.approx(0.81)
    assert lora["metrics.timing/train_s"] == 12.5 and lora["metrics.params/trainable"] == 1200
    assert lora["metrics.params/ratio_percent"] == pytest.approx(0.0013)
    assert all(uri.startswith((out / "mlartifacts").resolve().as_uri()) for uri in runs["artifact_uri"])


def test_mlflow_keeps_every_step_and_epoch_and_the_whole_config(runs, mlflow_results, tmp_path):
    from mlflow import MlflowClient
    from mlflow.artifacts import download_artifacts

    client = MlflowClient(mlflow_results[1].uri)
    run_id = runs.set_index("tags.mlflow.runName").loc["synth_leaf/dora/seed1", "run_id"]
    history = client.get_metric_history(run_id, "train/loss")
    assert [(m.step, m.value) for m in history] == [(s, pytest.approx(v + 1)) for s, v in enumerate(LOSSES)]
    assert [m.value for m in client.get_metric_history(run_id, "lr/adapter")] == pytest.approx([1e-3, 2e-3, 3e-3, 4e-3])
    assert [(m.step, m.value) for m in client.get_metric_history(run_id, "val/dice")] == \
        [(0, pytest.approx(0.6)), (1, pytest.approx(0.8))]
    config = download_artifacts(run_id=run_id, artifact_path="config.json", dst_path=str(tmp_path),
                                tracking_uri=mlflow_results[1].uri)
    assert '"note": "' + "x" * 900 in Path(config).read_text()  # untruncated


def test_mlflow_grid_run_holds_the_tables_figures_and_report(runs, mlflow_results, tmp_path):
    from mlflow import MlflowClient
    from mlflow.artifacts import download_artifacts

    out, spec = mlflow_results
    (run_id,) = runs.loc[runs["tags.mlflow.runName"] == "grid", "run_id"]
    client = MlflowClient(spec.uri)
    assert sorted(a.path for a in client.list_artifacts(run_id)) == ["figures", "report.html", "tables"]
    assert sorted(a.path for a in client.list_artifacts(run_id, "tables")) == ["tables/metrics.csv",
                                                                                "tables/metrics.md"]
    local = download_artifacts(run_id=run_id, artifact_path="tables/metrics.md", dst_path=str(tmp_path),
                               tracking_uri=spec.uri)
    assert Path(local).read_text() == (out / "tables" / "metrics.md").read_text()
    assert [a.path for a in client.list_artifacts(run_id, "figures")] == ["figures/pareto.png"]


def test_mlflow_values_reach_the_store_by_each_epochs_end(tmp_path):
    """Logged as the run trains: a step's loss is in the store after its epoch, before the run finishes."""
    pytest.importorskip("mlflow")
    from mlflow import MlflowClient

    spec = tracker_spec("mlflow", None, tmp_path)
    log = RunLog(spec, "synth_leaf/lora/seed0", {"dataset": "synth_leaf", "method": "lora", "seed": "0"})
    log.step(0, {"train/loss": 0.9})
    log.epoch(0, {"val/dice": 0.5})
    client = MlflowClient(spec.uri)
    (run,) = client.search_runs([client.get_experiment_by_name("peftbench").experiment_id])
    assert run.info.status == "RUNNING" and run.data.metrics == {"train/loss": 0.9, "val/dice": 0.5}
    log.finish({}, {}, "FAILED")
    assert client.get_run(run.info.run_id).info.status == "FAILED"


# ---------------------------------------------------------------- TensorBoard


def test_tensorboard_event_files_hold_the_runs_scalars_config_and_grid(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    spec = tracker_spec("tensorboard", None, tmp_path)
    assert spec == TrackerSpec("tensorboard", str((tmp_path / "tensorboard").resolve()), "peftbench")
    log_run(spec, "lora", 0)
    log_grid_artifacts(spec, grid_files(tmp_path / "results"))

    run = EventAccumulator(str(tmp_path / "tensorboard" / "peftbench" / "synth_leaf" / "lora" / "seed0"))
    run.Reload()
    assert [(e.step, e.value) for e in run.Scalars("train/loss")] == [(s, pytest.approx(v)) for s, v in
                                                                       enumerate(LOSSES)]
    assert [e.value for e in run.Scalars("lr/adapter")] == pytest.approx([1e-3, 2e-3, 3e-3, 4e-3])
    assert [(e.step, e.value) for e in run.Scalars("val/dice")] == [(0, pytest.approx(0.6)), (1, pytest.approx(0.8))]
    assert run.Scalars("test/test/dice")[0].value == pytest.approx(0.8)
    assert run.Scalars("timing/train_s")[0].value == 12.5
    config = run.Tensors("config/text_summary")[0].tensor_proto.string_val[0].decode()
    assert "| method.rank | 4 |" in config and "| params/trainable | 1200.0 |" in config and "| seed | 0 |" in config
    assert "_hparams_/session_start_info" in run.summary_metadata  # the HParams dashboard's record of the run

    grid = EventAccumulator(str(tmp_path / "tensorboard" / "peftbench" / "grid"))
    grid.Reload()
    table = grid.Tensors("tables/metrics/text_summary")
    assert len(table) == 1 and "| lora | 0.80 |" in table[0].tensor_proto.string_val[0].decode()
    (image,) = grid.Images("figures/pareto")
    assert (image.width, image.height) == (12, 8)


# ---------------------------------------------------------------- errors before any run


def one_line_error(kind, uri, out) -> str:
    with pytest.raises(UserError) as caught:
        tracker_spec(kind, uri, out)
    message = str(caught.value)
    assert "\n" not in message
    return message


def test_no_tracker_is_none_and_a_uri_alone_is_an_error(tmp_path):
    assert tracker_spec(None, None, tmp_path) is None
    assert "--tracker" in one_line_error(None, "http://127.0.0.1:5000", tmp_path)


def test_unknown_tracker_is_named_with_the_known_ones(tmp_path):
    message = one_line_error("wandb", None, tmp_path)
    assert "--tracker wandb" in message and "tensorboard" in message and "mlflow" in message


@pytest.mark.parametrize("kind, module", [("mlflow", "mlflow"), ("mlflow", "sqlalchemy"),
                                          ("tensorboard", "torch.utils.tensorboard")])
def test_missing_package_names_the_flag_and_the_extra(tmp_path, monkeypatch, kind, module):
    monkeypatch.setitem(sys.modules, module, None)  # makes `import module` raise ImportError
    message = one_line_error(kind, None, tmp_path)
    assert f"--tracker {kind}" in message and f'pip install -e ".[{kind}]"' in message
    assert not list(tmp_path.iterdir())  # nothing written


def test_mlflow_server_that_does_not_answer_fails_within_seconds(tmp_path):
    pytest.importorskip("mlflow")
    with socket.socket() as probe:  # a port nothing listens on once the probe is closed
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    start = time.monotonic()
    message = one_line_error("mlflow", f"http://127.0.0.1:{port}", tmp_path)
    assert time.monotonic() - start < 20
    assert f"--tracker-uri http://127.0.0.1:{port}" in message


def test_mlflow_relative_sqlite_uri_is_made_absolute(tmp_path, monkeypatch):
    pytest.importorskip("mlflow")
    monkeypatch.chdir(tmp_path)
    spec = tracker_spec("mlflow", "sqlite:///store/runs.db", tmp_path / "results")
    assert spec.uri == f"sqlite:///{tmp_path.resolve() / 'store' / 'runs.db'}"


def test_unwritable_tensorboard_folder_is_an_error(tmp_path):
    pytest.importorskip("tensorboard")
    (tmp_path / "file").write_text("")
    message = one_line_error("tensorboard", str(tmp_path / "file" / "tb"), tmp_path)
    assert message.startswith("--tracker-uri") and str(tmp_path / "file" / "tb") in message


@pytest.mark.parametrize("kind", ["mlflow", "tensorboard"])
def test_a_grid_logs_each_run_as_it_trains(tmp_path, kind):
    """End to end: `peftbench run --tracker` with two real runs, each in its own process, read back with the
    tracker's own reader: per-step loss and learning rate, per-epoch validation, final test metrics."""
    import subprocess

    out = tmp_path / "results"
    done = subprocess.run([sys.executable, "-m", "peftbench", "run", "--methods", "lora,decoder_only", "--datasets",
                           "synth_leaf", "--seeds", "0", "--epochs", "2", "--tracker", kind, "--out", str(out)],
                          capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    if kind == "mlflow":
        import mlflow

        mlflow.set_tracking_uri(f"sqlite:///{out / 'mlflow.db'}")
        found = mlflow.search_runs(experiment_names=["peftbench"])
        runs = found[found["tags.mlflow.runName"] != "grid"]
        assert sorted(runs["tags.method"]) == ["decoder_only", "lora"] and (runs["status"] == "FINISHED").all()
        client = mlflow.MlflowClient()
        lora = runs[runs["tags.method"] == "lora"].iloc[0]
        steps = client.get_metric_history(lora["run_id"], "train/loss")
        assert len(steps) == 2 * 16 and len(client.get_metric_history(lora["run_id"], "val/iou")) == 2
        assert "metrics.test/test/iou" in runs and lora["params.method.name"] == "lora"
        assert len(found) == 3  # and the grid's artifacts run
    else:
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

        events = EventAccumulator(str(out / "tensorboard" / "peftbench" / "synth_leaf" / "lora" / "seed0")).Reload()
        assert len(events.Scalars("train/loss")) == 2 * 16 and len(events.Scalars("val/iou")) == 2
        assert any(tag.startswith("lr/") for tag in events.Tags()["scalars"])


def test_a_tracker_that_cannot_be_reached_stops_the_grid_before_training(tmp_path):
    import subprocess

    port = socket.socket()
    port.bind(("127.0.0.1", 0))
    address = port.getsockname()[1]
    port.close()
    out = tmp_path / "results"
    done = subprocess.run([sys.executable, "-m", "peftbench", "run", "--methods", "lora", "--datasets", "synth_leaf",
                           "--seeds", "0", "--epochs", "1", "--tracker", "mlflow", "--tracker-uri",
                           f"http://127.0.0.1:{address}", "--out", str(out)],
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1 and "--tracker" in done.stderr
    assert not (out / "runs").exists()
