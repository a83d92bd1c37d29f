"""Synthetic datasets, folder / CSV manifests and their errors."""

import json

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import write_pairs

from peftbench.data import build_splits, dataset_cards, resolve_dataset
from peftbench.data.cards import dataset_state
from peftbench.errors import UserError

SYNTHETIC = [name for name, card in dataset_cards().items() if card.source == "synthetic"]


@pytest.mark.parametrize("name", SYNTHETIC)
def test_every_synthetic_dataset_loads_with_its_test_sets(name):
    card = dataset_cards()[name]
    splits = build_splits(card, 64)
    tests = {"test" if t == "test" else f"test:{t}" for t in card.test_names}
    assert set(splits) == {"train", "val"} | tests
    for split in tests:
        x, y = splits[split][0]
        assert x.shape == (3, 64, 64) and y.shape == (64, 64)
        assert y.dtype == (torch.float32 if card.kind == "binary" else torch.int64)
        assert len(splits[split]) == card.splits["test"]
    label = splits["val"].original_label(0)
    assert label.shape == (card.size, card.size) and label.dtype == np.uint8


def test_several_synthetic_test_sets_differ():
    card = next(c for c in dataset_cards().values() if c.source == "synthetic" and len(c.test_names) > 1)
    splits = build_splits(card, 64)
    first, second = (splits[f"test:{t}"].samples[0] for t in card.test_names[:2])
    assert not np.array_equal(first, second)


@pytest.mark.parametrize("name", ["synth_leaf", "synth_trans"])
def test_batched_loader_equals_items_collated_and_keys_name_the_flip(name):
    card = resolve_dataset(name)
    data = build_splits(card, 64, keys=True)["train"]
    batched, again = (data.loader(4, shuffle=True, generator=torch.Generator().manual_seed(3)) for _ in range(2))
    order = torch.randperm(len(data), generator=torch.Generator().manual_seed(3)).view(-1, 4)
    flips = 0
    for epoch in range(2):
        torch.manual_seed(epoch)  # the global RNG plays no part (see test_pairing)
        got = list(batched)
        torch.manual_seed(100 + epoch)
        assert all(torch.equal(a[2], b[2]) for a, b in zip(got, again, strict=True))  # same order, same flips
        assert len(got) == len(batched) == len(data) // 4
        if epoch == 0:  # the first epoch's order is RandomSampler's permutation (then the flips advance the generator)
            assert all(torch.equal(keys // 2, indices) for (_, _, keys), indices in zip(got, order, strict=True))
        for x, y, keys in got:
            for xi, yi, key in zip(x, y, keys.tolist()):
                reference = data[key // 2]  # the item, unflipped
                flipped = key % 2 == 1
                flips += flipped
                assert torch.equal(xi, reference[0].flip(-1) if flipped else reference[0])
                assert torch.equal(yi, reference[1].flip(-1) if flipped else reference[1]) and yi.dtype == reference[1].dtype
    assert 0.3 * 2 * len(data) < flips < 0.7 * 2 * len(data)


def test_csv_manifest_with_split_column(tmp_path):
    pairs = write_pairs(tmp_path, 6)
    splits = ["train", "train", "val", "val", "test", "test"]
    pd.DataFrame({"image": [p[0] for p in pairs], "label": [p[1] for p in pairs], "split": splits}).to_csv(
        tmp_path / "data.csv", index=False)
    card = resolve_dataset(str(tmp_path / "data.csv"))
    assert card.kind == "binary" and card.name.startswith("data-") and len(card.name) == len("data-") + 8
    data = build_splits(card, 32)
    assert len(data["train"]) == 2 and set(data) == {"train", "val", "test"}
    x, y = data["val"][0]
    assert x.shape == (3, 32, 32) and set(y.unique().tolist()) <= {0.0, 1.0}


def test_conv_lora_layout_with_two_test_sets_and_a_declared_multiclass_task(tmp_path):
    pairs = write_pairs(tmp_path, 8, values=(0, 1, 2, 5))
    for name, rows in {"train": pairs[:4], "val": pairs[4:6], "test_Kvasir": pairs[6:7], "test_CVC": pairs[7:]}.items():
        pd.DataFrame({"image": [p[0] for p in rows], "label": [p[1] for p in rows]}).to_csv(tmp_path / f"{name}.csv")
    assert resolve_dataset(str(tmp_path)).kind == "binary"  # declared, never guessed from the values
    card = resolve_dataset(str(tmp_path), classes=6)
    assert card.kind == "multiclass" and card.num_classes == 6 and card.select_metric == "miou"
    assert set(build_splits(card, 16)) == {"train", "val", "test:Kvasir", "test:CVC"}


def test_paired_folder_layout(tmp_path):
    for split in ("train", "val", "test"):
        write_pairs(tmp_path / split, 2)
        (tmp_path / split / "img").rename(tmp_path / split / "images")
        (tmp_path / split / "gt").rename(tmp_path / split / "masks")
    assert len(build_splits(resolve_dataset(str(tmp_path)), 16)["test"]) == 2


def test_empty_folder_and_missing_split_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="no manifest.csv"):
        resolve_dataset(str(tmp_path))
    pairs = write_pairs(tmp_path, 2)
    pd.DataFrame({"image": [pairs[0][0]], "label": [pairs[0][1]], "split": ["train"]}).to_csv(tmp_path / "m.csv")
    with pytest.raises(UserError, match="empty or missing splits"):
        resolve_dataset(str(tmp_path / "m.csv"))
    with pytest.raises(UserError, match="neither a registered dataset"):
        resolve_dataset("no_such_dataset")


def test_a_real_dataset_that_is_not_prepared_fails_fast_with_the_command(tmp_path):
    real = [c for c in dataset_cards().values() if c.source == "prepared"]
    assert real, "the paper's datasets have cards"
    with pytest.raises(UserError, match=rf"peftbench prepare {real[0].name} --data-root {tmp_path}"):
        resolve_dataset(real[0].name, tmp_path)


def test_dataset_state_reports_missing_and_prepared(tmp_path):
    card = next(c for c in dataset_cards().values() if c.source == "prepared")
    assert dataset_state(card, tmp_path) == f"missing: peftbench prepare {card.name}"
    (tmp_path / card.name).mkdir()
    counts = {"train": 5, "val": 2, **{("test" if t == "test" else f"test:{t}"): 3 for t in card.test_names}}
    (tmp_path / card.name / "prepared.json").write_text(json.dumps({"counts": counts}))
    assert dataset_state(card, tmp_path) == "prepared 5/2/" + "+".join("3" for _ in card.test_names)
    assert resolve_dataset(card.name, tmp_path).path == str(tmp_path / card.name)


@pytest.mark.parametrize("field, value, message", [("loss", "l2", "loss must be one of"),
                                                   ("select_metric", "nope", "select_metric 'nope'"),
                                                   ("kind", "regression", "kind must be"),
                                                   ("source", "synthtic", "source must be one of synthetic"),
                                                   ("metrics", "sm", "unknown binary metric 'sm'"),
                                                   ("generator", "blobs", "generator 'blobs' is not one of")])
def test_card_errors_name_the_file_and_field(tmp_path, field, value, message):
    fields = {"kind": '"binary"', "source": '"synthetic"', "generator": '"leaf"', "metrics": '["iou"]',
              field: f'["{value}"]' if field == "metrics" else f'"{value}"'}
    if field == "metrics":
        fields["select_metric"] = f'"{value}"'
    text = "".join(f"{k} = {v}\n" for k, v in fields.items())
    (tmp_path / "bad.toml").write_text(text)
    with pytest.raises(UserError, match=rf"bad.toml: {message}"):
        dataset_cards(tmp_path)


def test_bad_pairs_stop_the_grid_before_training_or_are_left_out_and_recorded(tmp_path, capsys):
    from PIL import Image
    from rich.console import Console

    from peftbench.cli import main
    from peftbench.data.validate import screen_card

    pairs = write_pairs(tmp_path, 6)
    Image.new("L", (7, 7)).save(tmp_path / pairs[1][1])  # label size differs from its 20x20 image
    pd.DataFrame({"image": [p[0] for p in pairs], "label": [p[1] for p in pairs],
                  "split": ["train", "train", "train", "val", "test", "test"]}).to_csv(tmp_path / "m.csv")
    assert main(["run", "--datasets", str(tmp_path / "m.csv"), "--methods", "decoder_only", "--sam", "tiny_random",
                 "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr()
    assert "1.jpg / 1.png: label size (7, 7) != image size (20, 20)" in err.out
    assert "1 bad image/label pairs" in err.err and not (tmp_path / "out" / "runs").exists()
    card = resolve_dataset(str(tmp_path / "m.csv"))
    screen_card(card, skip_bad=True, console=Console(quiet=True))
    assert [e["image"] for e in card.excluded] == ["img/1.jpg"]
    train = build_splits(card, 16)["train"].samples
    assert list(train["image"]) == [str(tmp_path / "img" / f"{i}.jpg") for i in (0, 2)]


def test_recording_a_checksum_or_rewording_a_card_keeps_finished_runs():
    from dataclasses import replace

    from peftbench.grid.runner import GridOptions, resolve_config
    from peftbench.methods import get_method
    from peftbench.store.records import config_hash

    card = next(c for c in dataset_cards().values() if c.source == "prepared")
    edited = replace(card, description="reworded", paper={}, sources=[{**card.sources[0], "sha256": "ab" * 32}])
    opts, method = GridOptions(device="cpu"), get_method("lora")
    assert config_hash(resolve_config(method, card, 0, opts)) == config_hash(resolve_config(method, edited, 0, opts))
    assert config_hash(resolve_config(method, card, 0, opts)) != config_hash(
        resolve_config(method, replace(card, epochs=card.epochs + 1), 0, opts))


def test_a_random_backbone_config_carries_no_weights():
    from peftbench.grid.runner import GridOptions, resolve_config
    from peftbench.methods import get_method

    card, opts = dataset_cards()["synth_leaf"], GridOptions(device="cpu")
    pretrained = resolve_config(get_method("decoder_only"), card, 0, opts)
    random = resolve_config(get_method("decoder_only_random"), card, 0, opts)
    assert "weights_sha256" in pretrained["sam_spec"] and "weights_sha256" not in random["sam_spec"]
    assert random["sam"] == "tiny" and random["checkpoint"] is None
