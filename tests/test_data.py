"""Synthetic datasets, folder / CSV manifests and their errors."""

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import write_pairs

from peftbench.data import build_splits, dataset_cards, resolve_dataset
from peftbench.data.synthetic import GENERATORS, generate
from peftbench.errors import UserError


@pytest.mark.parametrize("name", list(dataset_cards()))
def test_every_registered_dataset_loads(name):
    card = dataset_cards()[name]
    splits = build_splits(card, 64)
    assert {"train", "val", "test"} <= set(splits)
    x, y = splits["test"][0]
    assert x.shape == (3, 64, 64) and y.shape == (64, 64)
    assert y.dtype == (torch.float32 if card.kind == "binary" else torch.int64)


@pytest.mark.parametrize("generator", list(GENERATORS))
def test_synthetic_data_is_a_pure_function_of_the_seed(generator):
    a, b, c = generate(generator, 3, 64, 7), generate(generator, 3, 64, 7), generate(generator, 3, 64, 8)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    assert not np.array_equal(a[0], c[0])
    assert 0 < a[1].mean() < 0.5 * a[1].max()  # some foreground, mostly background


def test_csv_manifest_with_split_column(tmp_path):
    pairs = write_pairs(tmp_path, 6)
    splits = ["train", "train", "val", "val", "test", "test"]
    pd.DataFrame({"image": [p[0] for p in pairs], "label": [p[1] for p in pairs], "split": splits}).to_csv(
        tmp_path / "data.csv", index=False)
    card = resolve_dataset(str(tmp_path / "data.csv"))
    assert card.kind == "binary" and card.name == "data"
    data = build_splits(card, 32)
    assert len(data["train"]) == 2 and set(data) == {"train", "val", "test"}
    x, y = data["val"][0]
    assert x.shape == (3, 32, 32) and set(y.unique().tolist()) <= {0.0, 1.0}


def test_conv_lora_layout_with_two_test_sets_and_multiclass_inference(tmp_path):
    pairs = write_pairs(tmp_path, 8, values=(0, 1, 2, 5))
    for name, rows in {"train": pairs[:4], "val": pairs[4:6], "test_Kvasir": pairs[6:7], "test_CVC": pairs[7:]}.items():
        pd.DataFrame({"image": [p[0] for p in rows], "label": [p[1] for p in rows]}).to_csv(tmp_path / f"{name}.csv")
    card = resolve_dataset(str(tmp_path))
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
