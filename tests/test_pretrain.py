import functools
import hashlib
import json

import numpy as np
import pytest
import torch

from peftbench import pretrain as pretrain_module
from peftbench.backbone import sam as sam_module
from peftbench.backbone.sam import TINY_WEIGHTS, load_sam, spec_dict
from peftbench.backbone.segmenter import SamSegmenter
from peftbench.cli import main
from peftbench.data.corpus import generate_corpus
from peftbench.errors import UserError
from peftbench.pretrain import VAL_SEED_OFFSET, PretrainConfig, corpus_tensors, foreground_iou, pretrain

SMALL = {"train_images": 48, "val_images": 8, "batch_size": 8, "warmup_steps": 1, "evaluations": 1}


def test_corpus_is_deterministic_with_several_disjoint_objects():
    images, foregrounds, instances = generate_corpus(12, 64, seed=5)
    again = generate_corpus(12, 64, seed=5)
    assert np.array_equal(images, again[0]) and np.array_equal(foregrounds, again[1])
    assert not np.array_equal(images, generate_corpus(12, 64, seed=6)[0])
    assert images.shape == (12, 64, 64, 3) and images.dtype == np.uint8
    assert max(len(m) for m in instances) >= 3
    for fg, masks in zip(foregrounds, instances):
        assert np.array_equal(fg, masks.any(0))  # foreground = union of the visible instances
        assert masks.sum(0).max() == 1 and masks.reshape(len(masks), -1).any(1).all()  # disjoint, none empty
        assert 0 < fg.mean() < 1


def test_pretrain_few_steps_saves_weights_that_reload_as_the_trained_segmenter(tmp_path):
    state, summary = pretrain(PretrainConfig(steps=3, **SMALL))
    path = tmp_path / "w.pt"
    meta = json.loads(pretrain_module.save_pretrained(state, summary, path).read_text())
    assert meta["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert meta["config"]["steps"] == 3 and meta["config"]["threads"] == 1
    # The released layout (4 mask tokens) loads strictly, and its slot 0 reproduces the trained prompt-free model.
    segmenter = SamSegmenter(load_sam("tiny", path), 1)
    val = corpus_tensors(SMALL["val_images"], 64, VAL_SEED_OFFSET)
    # (a pixel may flip at p = 0.5 between thread counts; a wrong token slot would be off by far more)
    assert foreground_iou(segmenter, *val) == pytest.approx(summary["val_iou"], abs=0.5)
    random = load_sam("tiny_random").state_dict()
    assert any(not torch.equal(v, random[k]) for k, v in state.items() if k.startswith("image_encoder"))
    again, _ = pretrain(PretrainConfig(steps=3, **SMALL))  # deterministic from the seed (one thread)
    assert all(torch.equal(v, again[k]) for k, v in state.items())


def test_pretrain_tiny_cli(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(pretrain_module, "PretrainConfig", functools.partial(PretrainConfig, **SMALL))
    out = tmp_path / "sub" / "tiny.pt"
    assert main(["pretrain-tiny", "--steps", "2", "--seed", "1", "--out", str(out)]) == 0
    meta = json.loads(out.with_suffix(".json").read_text())
    assert meta["config"]["seed"] == 1 and meta["config"]["steps"] == 2 and "validation IoU" in capsys.readouterr().out
    load_sam("tiny", out)
    assert main(["pretrain-tiny", "--steps", "0", "--out", str(out)]) == 2


def test_shipped_weights_load_match_their_record_and_differ_from_random():
    meta = json.loads(TINY_WEIGHTS.with_suffix(".json").read_text())
    assert hashlib.sha256(TINY_WEIGHTS.read_bytes()).hexdigest() == meta["sha256"]
    assert spec_dict("tiny")["weights_sha256"] == meta["sha256"] and "weights_sha256" not in spec_dict("tiny_random")
    shipped, random = load_sam("tiny").state_dict(), load_sam("tiny_random").state_dict()
    assert shipped.keys() == random.keys()
    assert not torch.equal(shipped["image_encoder.patch_embed.proj.weight"],
                           random["image_encoder.patch_embed.proj.weight"])
    assert meta["val_iou"] > meta["val_iou_random_init"] + 30


def test_shipped_weights_segment_unseen_corpus_images_better_than_random():
    images, masks = corpus_tensors(32, 64, seed=424242)  # neither the training nor the validation seed
    pretrained = foreground_iou(SamSegmenter(load_sam("tiny"), 1), images, masks)
    random = foreground_iou(SamSegmenter(load_sam("tiny_random"), 1), images, masks)
    assert pretrained > random + 30 and pretrained > 50


def test_missing_or_corrupt_shipped_weights_are_a_user_error(tmp_path, monkeypatch):
    weights = tmp_path / "tiny_sam.pt"
    weights.write_bytes(TINY_WEIGHTS.read_bytes()[:-1])
    weights.with_suffix(".json").write_text(TINY_WEIGHTS.with_suffix(".json").read_text())
    monkeypatch.setattr(sam_module, "TINY_WEIGHTS", weights)
    sam_module.read_tiny_weights.cache_clear()
    sam_module.tiny_weights_sha256.cache_clear()
    try:
        with pytest.raises(UserError, match="corrupt"):
            load_sam("tiny")
        weights.with_suffix(".json").unlink()
        sam_module.tiny_weights_sha256.cache_clear()
        with pytest.raises(UserError, match="missing"):
            load_sam("tiny")
    finally:
        sam_module.read_tiny_weights.cache_clear()
        sam_module.tiny_weights_sha256.cache_clear()
