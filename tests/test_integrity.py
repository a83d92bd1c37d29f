"""Results that stay true: no record replaced by another config's run, no table cell averaging two configs, no
silently misread mask, atomic outputs that fail cleanly, records the team can read and unreadable ones named."""

import errno
import json
import os
import stat

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from rich.console import Console

from peftbench.cli import main
from peftbench.data import build_splits, resolve_dataset
from peftbench.data.validate import screen_card
from peftbench.errors import UserError
from peftbench.store.atomic import write_json_atomic
from peftbench.store.records import load_records, record_path

QUICK = ["--device", "cpu", "--datasets", "synth_road", "--seeds", "0", "--methods", "decoder_only"]


def run(tmp_path, *extra):
    return main(["run", *QUICK, "--out", str(tmp_path), *extra])


def test_a_run_of_another_config_never_replaces_a_finished_record(tmp_path, capsys):
    assert run(tmp_path, "--epochs", "1") == 0
    path = record_path(tmp_path, "synth_road", "decoder_only", 0)
    before = path.read_bytes()
    capsys.readouterr()
    assert run(tmp_path, "--epochs", "2") == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "epochs: 1 -> 2" in err and "--replace" in err and "--out" in err
    assert path.read_bytes() == before
    # Speed settings are not another config: the record is the same result and is kept.
    assert run(tmp_path, "--epochs", "1", "--no-embedding-cache", "--attention", "sdpa") == 0
    assert path.read_bytes() == before and "0 trained, 1 skipped" in capsys.readouterr().out.replace("\n", " ")
    # --replace retrains and moves the old record aside, never deletes it.
    assert run(tmp_path, "--epochs", "2", "--replace") == 0
    assert json.loads(path.read_text())["config"]["epochs"] == 2
    moved = list((tmp_path / "replaced").glob("*/runs/synth_road/decoder_only/seed0.json"))
    assert len(moved) == 1 and moved[0].read_bytes() == before


def test_a_table_cell_never_averages_two_configs(tmp_path):
    base = {"dataset": "synth_leaf", "metrics": {"test": {"iou": 50.0}}, "timing": {"inference_model": "merged"},
            "params": {"trainable": 1, "ratio_percent": 0.1}, "device": {"name": "cpu"},
            "selection": {"metric": "iou"}, "history": []}
    for seed, epochs in [(0, 12), (1, 12), (2, 1)]:
        config = {"epochs": epochs, "seed": seed, "attention": "original", "dataset": {"kind": "binary"},
                  "method": {"name": "lora", "family": "lora"}}
        write_json_atomic(record_path(tmp_path, "synth_leaf", "lora", seed),
                          {**base, "method": "lora", "seed": seed, "config": config})
    labels = {(r["method"], r["seed"]) for r in load_records(tmp_path)}
    assert labels == {("lora [epochs=12]", 0), ("lora [epochs=12]", 1), ("lora [epochs=1]", 2)}


def test_a_user_folder_named_like_a_registered_card_is_its_own_dataset(tmp_path):
    folder = tmp_path / "synth_leaf"
    for split in ("train", "val", "test"):
        write_masks(folder / split, [np.full((8, 8), 255, np.uint8)] * 2)
    card = resolve_dataset(str(folder))
    assert card.name != "synth_leaf" and card.name.startswith("synth_leaf-")
    assert resolve_dataset(str(tmp_path / ".." / tmp_path.name / "synth_leaf")).name == card.name  # same path


def write_masks(split_dir, masks, suffix=".png"):
    """A paired-folder split: one random RGB image per mask (an array or a PIL image), masks saved with `suffix`."""
    rng = np.random.default_rng(0)
    (split_dir / "images").mkdir(parents=True, exist_ok=True)
    (split_dir / "masks").mkdir(parents=True, exist_ok=True)
    for i, mask in enumerate(masks):
        h, w = np.asarray(mask).shape[:2]
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(split_dir / "images" / f"{i}.png")
        image = mask if isinstance(mask, Image.Image) else Image.fromarray(np.asarray(mask))
        image.save(split_dir / "masks" / f"{i}{suffix}")


def blob(size=16) -> np.ndarray:
    mask = np.zeros((size, size), np.uint8)
    mask[4:12, 3:10] = 255
    return mask


def dataset(tmp_path, train, suffix=".png"):
    for split, masks in (("train", train), ("val", [blob()]), ("test", [blob()])):
        write_masks(tmp_path / split, masks, suffix if split == "train" else ".png")
    return tmp_path


def screen(path, **declared):
    card = resolve_dataset(str(path), **declared)
    screen_card(card, skip_bad=False, console=Console(width=300))  # problems printed to stdout
    return card


def test_jpeg_masks_are_an_error_naming_the_file_values_and_fix_or_thresholded_with_binarize(tmp_path, capsys):
    path = dataset(tmp_path, [blob(), blob()], suffix=".jpg")
    with pytest.raises(UserError, match="bad image/label pairs"):
        screen(path)
    problem = capsys.readouterr().out
    assert "0.jpg" in problem and "values besides 0/255" in problem and "--binarize" in problem
    card = screen(path, binarize=True)
    label = build_splits(card, 16)["train"][0][1]
    assert card.kind == "binary" and card.as_dict()["binarize"]  # recorded in every run's config
    assert set(label.unique().tolist()) == {0.0, 1.0} and label.sum() == pytest.approx(56, abs=8)


def test_masks_mixing_0_1_and_0_255_are_one_binary_task(tmp_path):
    card = screen(dataset(tmp_path, [blob() // 255, blob()]))
    train = build_splits(card, 16)["train"]
    assert card.kind == "binary" and [train[i][1].sum().item() for i in range(2)] == [56.0, 56.0]


def test_rgba_masks_in_the_alpha_channel_are_refused_by_name(tmp_path, capsys):
    rgba = np.zeros((16, 16, 4), np.uint8)
    rgba[..., :3] = 255
    rgba[..., 3] = blob()  # the mask drawn in alpha, white everywhere
    with pytest.raises(UserError):
        screen(dataset(tmp_path, [rgba, rgba]))
    out = capsys.readouterr().out
    assert "0.png" in out and "alpha channel" in out


def test_palette_masks_are_read_by_their_indices(tmp_path):
    palette = Image.fromarray(blob() // 255 * 2, "P")  # class 2 where the blob is
    palette.putpalette([0, 0, 0, 10, 10, 10, 200, 30, 30] + [0] * 759)
    card = screen(dataset(tmp_path, [palette, palette]), classes=3)
    label = build_splits(card, 16)["train"][0][1]
    assert sorted(label.unique().tolist()) == [0, 2]


def test_all_empty_training_masks_are_an_error(tmp_path):
    empty = np.zeros((16, 16), np.uint8)
    with pytest.raises(UserError, match="none of the 2 training masks has a foreground pixel"):
        screen(dataset(tmp_path, [empty, empty]))


def test_an_unreadable_train_mask_is_listed_and_left_out_with_skip_bad(tmp_path):
    path = dataset(tmp_path, [blob(), blob(), blob()])
    (path / "train" / "masks" / "1.png").write_bytes(b"not a png")
    card = resolve_dataset(str(path))  # no guessing from the masks: nothing is decoded here
    screen_card(card, skip_bad=True, console=Console(quiet=True))
    assert [e["label"] for e in card.excluded] == [os.path.join("train", "masks", "1.png")]


def test_a_full_disk_is_a_one_line_error_that_leaves_every_file_whole(tmp_path, capsys, monkeypatch):
    assert run(tmp_path, "--epochs", "1") == 0
    curves = tmp_path / "figures" / "convergence.csv"
    good = curves.read_bytes()
    capsys.readouterr()

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(pd.DataFrame, "to_csv", full)
    assert main(["report", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "No space left on device" in err and str(tmp_path) in err
    assert curves.read_bytes() == good or not curves.exists()
    assert not [p for p in tmp_path.rglob("*.tmp")]


def test_records_honour_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        write_json_atomic(tmp_path / "r.json", {"a": 1})
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "r.json").stat().st_mode) == 0o644


def test_an_unusable_record_is_named_by_report_and_stops_run(tmp_path, capsys):
    assert run(tmp_path, "--epochs", "1") == 0
    path = record_path(tmp_path, "synth_road", "decoder_only", 0)
    path.write_text('{"method": "decoder_only", "datas')  # a damaged file
    capsys.readouterr()
    assert main(["report", "--out", str(tmp_path)]) in (0, 2)
    assert f"{path}: not valid JSON" in capsys.readouterr().err
    assert run(tmp_path, "--epochs", "1") == 2
    err = capsys.readouterr().err
    assert str(path) in err and "not valid JSON" in err and path.read_text().endswith("datas")
