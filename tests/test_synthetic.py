"""Synthetic domain analogues: deterministic, sensible label fractions, not solvable by a colour threshold,
distinct test-set variants, and cards that match their generators."""

import tomllib
from functools import cache

import numpy as np
import pytest
from scipy.ndimage import binary_erosion

from peftbench.data.synthetic import GENERATORS, VARIANTS, generate
from peftbench.errors import UserError
from peftbench.paths import DATASETS_DIR

SIZE, COUNT = 64, 16
# generator -> (min, max) of the mean foreground fraction over COUNT images
FOREGROUND = {"polyp": (0.05, 0.2), "lesion": (0.12, 0.35), "camo": (0.06, 0.2), "shadow": (0.08, 0.3),
              "trans": (0.12, 0.4), "leaf": (0.02, 0.1), "road": (0.05, 0.15)}


@cache
def samples(name: str, variant: str = "") -> tuple[np.ndarray, np.ndarray]:
    return generate(name, COUNT, SIZE, 0, variant)


def best_threshold_iou(images: np.ndarray, foreground: np.ndarray) -> float:
    """Highest foreground IoU of `value > t` or `value <= t` over all t, value = grayscale or any one channel,
    fitted on (N, S, S, 3) uint8 images against their (N, S, S) bool foreground."""
    best = 0.0
    for values in [images.mean(-1).astype(np.uint8), *np.moveaxis(images, -1, 0)]:
        fg = np.bincount(values[foreground], minlength=256)
        bg = np.bincount(values[~foreground], minlength=256)
        fg_below, bg_below = np.cumsum(fg), np.cumsum(bg)  # predicted foreground = value <= t
        for tp, fp in [(fg_below, bg_below), (fg.sum() - fg_below, bg.sum() - bg_below)]:
            best = max(best, float((tp / (fg.sum() + fp)).max()))
    return best


@pytest.mark.parametrize("name,variant", [(g, v) for g in GENERATORS for v in ("", *VARIANTS.get(g, ()))])
def test_generators_are_pure_functions_of_the_seed(name, variant):
    a, b, c = (generate(name, 2, SIZE, seed, variant) for seed in (7, 7, 8))
    assert a[0].shape == (2, SIZE, SIZE, 3) and a[0].dtype == np.uint8 and a[1].shape == (2, SIZE, SIZE)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    assert not np.array_equal(a[0], c[0]) and not np.array_equal(a[1], c[1])


@pytest.mark.parametrize("name", GENERATORS)
def test_every_image_has_foreground_in_a_sensible_fraction(name):
    images, labels = samples(name)
    fractions = (labels > 0).mean((1, 2))
    assert fractions.min() > 0.005, "an image without foreground"
    low, high = FOREGROUND[name]
    assert low < fractions.mean() < high
    assert images.std() > 20, "a flat image"


def test_label_values():
    assert set(np.unique(samples("trans")[1])) == {0, 1, 2}  # background, things, stuff
    for name in GENERATORS.keys() - {"trans"}:
        assert set(np.unique(samples(name)[1])) == {0, 1}


def test_threshold_baseline_is_exact_on_a_separable_control():
    labels = samples("camo")[1].astype(bool)
    images = np.repeat(np.where(labels, 200, 60).astype(np.uint8)[..., None], 3, -1)
    assert best_threshold_iou(images, labels) == 1.0


@pytest.mark.parametrize("name", ["camo", "shadow", "trans", "polyp", "lesion"])
def test_a_colour_threshold_does_not_solve_the_task(name):
    images, labels = samples(name)
    assert best_threshold_iou(images, labels > 0) < 0.6


def test_polyp_centres_differ():
    (kvasir, kvasir_labels), (cvc, cvc_labels) = samples("polyp", "kvasir"), samples("polyp", "cvc")
    assert kvasir_labels.mean() > 2 * cvc_labels.mean()  # larger polyps
    assert kvasir.mean() > cvc.mean() + 20  # brighter
    assert kvasir[..., 2].mean() / kvasir[..., 0].mean() > 1.2 * cvc[..., 2].mean() / cvc[..., 0].mean()  # hue


def _rim_contrast(images: np.ndarray, labels: np.ndarray) -> float:
    """Mean gray level on the one-pixel rim of the transparent things minus the mean inside them."""
    gray = images.mean(-1)
    things = labels == 1
    inner = np.stack([binary_erosion(t) for t in things])
    return float(gray[things & ~inner].mean() - gray[inner].mean())


def test_trans_hard_subset_has_fainter_rims_and_more_clutter():
    easy, hard = samples("trans", "easy"), samples("trans", "hard")
    assert _rim_contrast(*easy) > _rim_contrast(*hard) + 10
    def colourful(images):  # fraction of strongly coloured pixels: the opaque clutter (the room is pastel)
        return (images.astype(float).std(-1) > 40).mean()
    assert colourful(hard[0]) > 1.5 * colourful(easy[0])


def test_training_split_mixes_the_variants():
    mixed = samples("polyp")[1].mean()
    assert samples("polyp", "cvc")[1].mean() < mixed < samples("polyp", "kvasir")[1].mean()


def test_unknown_names_are_user_errors():
    with pytest.raises(UserError, match="kvasir"):
        generate("polyp", 1, SIZE, 0, "etis")
    with pytest.raises(UserError, match="none"):
        generate("camo", 1, SIZE, 0, "easy")
    with pytest.raises(UserError, match="polyp"):
        generate("polyps", 1, SIZE, 0)


def test_synthetic_cards_match_their_generators():
    cards = [tomllib.loads(path.read_text()) for path in sorted(DATASETS_DIR.glob("synth_*.toml"))]
    analogues = {card["generator"]: card for card in cards if "analogue_of" in card}
    assert set(analogues) == set(GENERATORS)
    for generator, card in analogues.items():
        assert tuple(card.get("test_sets", ())) == VARIANTS.get(generator, ())
        assert card["kind"] == ("multiclass" if generator == "trans" else "binary")
        real = DATASETS_DIR / f"{card['analogue_of']}.toml"
        if real.exists():  # the analogue reports exactly the real card's columns
            real_card = tomllib.loads(real.read_text())
            for key in ("metrics", "extra_metrics", "select_metric", "kind"):
                assert card[key] == real_card.get(key, []), (generator, key)
    seeds = [card["seed"] for card in cards]
    assert len(set(seeds)) == len(seeds)
