"""Paired comparisons: for one (dataset, seed) every method trains on the same images, in the same order, with the
same flips, whatever its initialisation or its own random operations draw from the global RNG."""

import dataclasses

import pytest

from peftbench.data import dataset_cards
from peftbench.grid.runner import GridOptions, resolve_config
from peftbench.methods import method_specs
from peftbench.training import train

CARD = dataclasses.replace(dataset_cards()["synth_leaf"], splits={"train": 12, "val": 4, "test": 4})


def training_inputs(monkeypatch, method: str, workers: int = 0) -> list[list[int]]:
    """The keys (2 * index + flipped) of every micro-batch a weight step of `method` trained on, over 2 epochs."""
    seen, active = [], [[]]
    make_cache = train.embedding_cache
    set_trainable = train.Optimization.set_trainable

    def spying_cache(model, enabled=True):
        cache_for, release = make_cache(model, enabled)

        def spying(split):
            context = cache_for(split)

            def enter(keys):
                if split == "train" and "weights" in active[0]:  # an architecture pass repeats its batch
                    seen.append(keys.tolist())
                return context(keys)
            return enter
        return spying, release

    def spying_set_trainable(self, groups):
        active[0] = groups
        set_trainable(self, groups)

    monkeypatch.setattr(train, "embedding_cache", spying_cache)
    monkeypatch.setattr(train.Optimization, "set_trainable", spying_set_trainable)
    spec = method_specs()[method]
    config = dataclasses.replace(resolve_config(spec, CARD, 0, GridOptions(device="cpu", epochs=2)), num_workers=workers)
    train.train_run(config, CARD, spec)
    return seen


@pytest.fixture(scope="module")
def reference():
    with pytest.MonkeyPatch.context() as mp:
        return training_inputs(mp, "decoder_only")


@pytest.mark.parametrize("method", [m for m in method_specs() if m != "decoder_only"])
def test_every_method_sees_the_same_images_order_and_flips(monkeypatch, reference, method):
    assert training_inputs(monkeypatch, method) == reference
    flips = [k % 2 for batch in reference for k in batch]
    assert 0 < sum(flips) < len(flips)


def test_loader_workers_draw_no_augmentation_of_their_own(monkeypatch, reference):
    """As on CUDA (4 workers per run): the flips are drawn in the main process, so workers change nothing."""
    assert training_inputs(monkeypatch, "conv_lora", workers=2) == reference
