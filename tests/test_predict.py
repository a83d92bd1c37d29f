"""`peftbench predict` and the report's predicted-masks figure, on real tiny runs (LoRA, 1 epoch, binary and
multi-class) trained once for the module."""

import base64

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from matplotlib import colormaps
from PIL import Image

from peftbench.cli import main
from peftbench.data import DatasetCard, SegmentationDataset, build_splits
from peftbench.data.files import foreground
from peftbench.errors import UserError
from peftbench.predict import predict
from peftbench.report.figures import predictions_figure, shown_runs
from peftbench.scoring.metrics import BinaryMeter
from peftbench.store.records import record_and_problem, record_path
from peftbench.training.inference import mask_at
from peftbench.training.runs import load_run

DATASETS = {"binary": "synth_leaf", "multiclass": "synth_trans"}
SIZES = [(37, 53), (80, 64), (64, 64)]  # (H, W) of the written test images


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    """<out> with one finished LoRA run per dataset (seed 0, 1 epoch, CPU), report included."""
    out = tmp_path_factory.mktemp("results")
    assert main(["run", "--methods", "lora", "--datasets", ",".join(DATASETS.values()), "--seeds", "0",
                 "--epochs", "1", "--device", "cpu", "--out", str(out)]) == 0
    return out


def record_file(results, kind):
    return record_path(results, DATASETS[kind], "lora", 0)


def card_of(results, kind) -> DatasetCard:
    return DatasetCard(**record_and_problem(record_file(results, kind))[0]["config"]["dataset"])


def sized_images(card: DatasetCard) -> list[np.ndarray]:
    """Test images of the card at the SIZES: (H, W, 3) uint8, bicubic-resized from the generated ones."""
    test = build_splits(card, card.size)["test" if "test" in card.test_names else f"test:{card.test_names[0]}"]
    return [np.asarray(Image.fromarray(test.samples[0][i]).resize((w, h), Image.BICUBIC))
            for i, (h, w) in enumerate(SIZES)]


@pytest.fixture
def image_folder(results, tmp_path):
    """A folder of binary-task test images of different sizes: PNG, JPEG and PNG."""
    folder = tmp_path / "images"
    folder.mkdir()
    for i, image in enumerate(sized_images(card_of(results, "binary"))):
        Image.fromarray(image).save(folder / f"img{i}.{'jpg' if i == 1 else 'png'}")
    return folder


def direct_mask(model, path, card: DatasetCard) -> np.ndarray:
    """The trainer's path computed here: the loader's preprocessing of the image (SegmentationDataset), the
    model's probabilities, bilinear resize to the image's size, p > 0.5 (x 255) or argmax."""
    image = np.asarray(Image.open(path).convert("RGB"))
    dataset = SegmentationDataset((image[None], np.zeros((1, *image.shape[:2]), np.uint8)), card.kind,
                                  model.img_size, train=False)
    with torch.no_grad():
        probs = model.probabilities(dataset[0][0][None])
    probs = probs[:, None] if probs.dim() == 3 else probs
    resized = F.interpolate(probs, size=image.shape[:2], mode="bilinear", align_corners=False)[0]
    return (resized[0] > 0.5).numpy().astype(np.uint8) * 255 if card.kind == "binary" \
        else resized.argmax(0).numpy().astype(np.uint8)


def test_binary_masks_have_each_images_size_and_equal_the_trainers_prediction(results, image_folder, tmp_path):
    done = predict(record_file(results, "binary"), [image_folder], tmp_path / "masks", device="cpu", batch_size=2)
    assert [p.name for p in done["written"]] == ["img0.png", "img1.png", "img2.png"] and done["skipped"] == []
    model, values = load_run(record_file(results, "binary")), set()
    for path, (h, w) in zip(sorted(image_folder.iterdir()), SIZES):
        mask = Image.open(tmp_path / "masks" / f"{path.stem}.png")
        assert mask.mode == "L" and mask.size == (w, h)
        values |= set(np.unique(np.asarray(mask)).tolist())
        np.testing.assert_array_equal(np.asarray(mask), direct_mask(model, path, card_of(results, "binary")))
    assert values == {0, 255}  # 1 epoch already finds some lesions


def test_binary_threshold_is_strictly_above_one_half():
    assert (mask_at(torch.full((4, 4), 0.5), (3, 5)) == 0).all()
    assert (mask_at(torch.full((4, 4), 0.5 + 1e-6), (3, 5)) == 255).all()


def test_binary_masks_reproduce_the_recorded_test_iou(results, tmp_path):
    """The masks of the whole test set, scored as the trainer scores, give the record's test IoU."""
    card = card_of(results, "binary")
    test = build_splits(card, card.size)["test"]
    folder = tmp_path / "test"
    folder.mkdir()
    for i in range(len(test)):
        Image.fromarray(test.samples[0][i]).save(folder / f"{i:03d}.png")
    predict(record_file(results, "binary"), [folder], tmp_path / "masks", device="cpu")
    meter = BinaryMeter(card.f_beta2, sod=())
    for i in range(len(test)):
        label = test.original_label(i)
        meter.update(np.asarray(Image.open(tmp_path / "masks" / f"{i:03d}.png")) / 255, foreground(label))
    recorded = record_and_problem(record_file(results, "binary"))[0]["metrics"]["test"]["iou"]
    assert meter.results()["iou"] == pytest.approx(recorded, abs=1e-9)


def test_a_corrupt_image_is_a_one_line_error_before_the_model_loads(results, image_folder, tmp_path, monkeypatch):
    (image_folder / "x.png").write_bytes(np.random.default_rng(0).bytes(300))
    monkeypatch.setattr("peftbench.predict.load_run", lambda *a, **k: pytest.fail("the model was loaded"))
    with pytest.raises(UserError) as err:
        predict(record_file(results, "binary"), [image_folder], tmp_path / "masks", device="cpu")
    assert "x.png" in str(err.value) and "\n" not in str(err.value) and "--skip-bad" in str(err.value)
    assert not (tmp_path / "masks").exists()


def test_a_16_bit_image_gives_the_mask_of_its_8_bit_version(results, image_folder, tmp_path, monkeypatch):
    """With foreground = the normalised red channel > 0 (pixel > 124) the masks follow the image, so a misread
    (clipped, near-white) 16-bit image would give another mask."""
    model = load_run(record_file(results, "binary"))
    model.probabilities = lambda x: x[:, 0].sigmoid()
    monkeypatch.setattr("peftbench.predict.load_run", lambda *a, **k: model)
    folder = tmp_path / "wide"
    folder.mkdir()
    for path in sorted(image_folder.iterdir()):  # gray 8-bit PNGs and the same images as 16-bit PNGs (v * 257)
        gray = np.asarray(Image.open(path).convert("L"))
        Image.fromarray(gray).save(folder / f"{path.stem}_8.png")
        Image.fromarray(gray.astype(np.uint16) * 257).save(folder / f"{path.stem}_16.png")
    predict(record_file(results, "binary"), [folder], tmp_path / "masks", device="cpu")
    for path in sorted(image_folder.iterdir()):
        eight, sixteen = (np.asarray(Image.open(tmp_path / "masks" / f"{path.stem}_{b}.png")) for b in (8, 16))
        assert 0 < eight.mean() < 255
        np.testing.assert_array_equal(sixteen, eight)


def test_an_image_the_reading_rule_refuses_is_a_one_line_error_before_the_model_loads(results, tmp_path,
                                                                                      monkeypatch):
    Image.fromarray(np.arange(64, dtype=np.uint16).reshape(8, 8) * 64).save(tmp_path / "dark.png")  # 12-bit data
    monkeypatch.setattr("peftbench.predict.load_run", lambda *a, **k: pytest.fail("the model was loaded"))
    with pytest.raises(UserError, match=r"dark\.png: 16-bit image whose values are all below 4096") as err:
        predict(record_file(results, "binary"), [tmp_path / "dark.png"], tmp_path / "masks", device="cpu")
    assert "\n" not in str(err.value)


def test_skip_bad_lists_the_corrupt_image_and_writes_the_others(results, image_folder, tmp_path):
    (image_folder / "x.png").write_bytes(np.random.default_rng(0).bytes(300))
    done = predict(record_file(results, "binary"), [image_folder], tmp_path / "masks", device="cpu", skip_bad=True)
    assert [p.name for p, _ in done["skipped"]] == ["x.png"] and "unreadable" in done["skipped"][0][1]
    assert sorted(p.name for p in (tmp_path / "masks").iterdir()) == ["img0.png", "img1.png", "img2.png"]


def test_two_images_with_one_stem_are_an_error_naming_both(results, image_folder, tmp_path):
    other = tmp_path / "other"
    other.mkdir()
    Image.open(image_folder / "img0.png").save(other / "img0.jpg")
    with pytest.raises(UserError, match=r"img0\.png and .*img0\.jpg"):
        predict(record_file(results, "binary"), [image_folder, other / "img0.jpg"], tmp_path / "masks", device="cpu")
    assert not (tmp_path / "masks").exists()


def test_an_output_replacing_an_input_is_an_error(results, image_folder):
    with pytest.raises(UserError, match="img0.png: is an input image"):
        predict(record_file(results, "binary"), [image_folder], image_folder, device="cpu")


def test_multiclass_masks_are_class_indices_with_an_overlay(results, tmp_path):
    card = card_of(results, "multiclass")
    folder = tmp_path / "images"
    folder.mkdir()
    for i, image in enumerate(sized_images(card)):
        Image.fromarray(image).save(folder / f"img{i}.png")
    predict(record_file(results, "multiclass"), [folder], tmp_path / "masks", device="cpu", overlay=True)
    model = load_run(record_file(results, "multiclass"))
    for path, (h, w) in zip(sorted(folder.iterdir()), SIZES):
        mask = Image.open(tmp_path / "masks" / f"{path.stem}.png")
        assert mask.mode == "L" and mask.size == (w, h) and np.asarray(mask).max() < card.num_classes
        np.testing.assert_array_equal(np.asarray(mask), direct_mask(model, path, card))
        overlay = np.asarray(Image.open(tmp_path / "masks" / f"{path.stem}_overlay.png"))
        image, classes = np.asarray(Image.open(path)), np.asarray(mask)
        assert overlay.shape == (h, w, 3)
        np.testing.assert_array_equal(overlay[classes == 0], image[classes == 0])  # background left as it is
        assert (overlay[classes > 0] != image[classes > 0]).any(axis=-1).all()  # every class pixel tinted


def test_multiclass_masks_and_overlays_follow_the_argmax(results, tmp_path, monkeypatch):
    """A 1-epoch synth_trans model predicts background everywhere: with class scores made from the input's colour
    channels (K = 3) the classes vary over each image, so the argmax, the resize and the overlay are all exercised."""
    model = load_run(record_file(results, "multiclass"))
    model.probabilities = lambda x: x.softmax(1)  # (B, 3, S, S): the dominant normalised channel wins
    monkeypatch.setattr("peftbench.predict.load_run", lambda *a, **k: model)
    folder = tmp_path / "images"
    folder.mkdir()
    for i, image in enumerate(sized_images(card_of(results, "multiclass"))):
        Image.fromarray(image).save(folder / f"img{i}.png")
    predict(record_file(results, "multiclass"), [folder], tmp_path / "masks", device="cpu", overlay=True)
    for path in sorted(folder.iterdir()):
        classes = np.asarray(Image.open(tmp_path / "masks" / f"{path.stem}.png"))
        assert len(np.unique(classes)) >= 2
        np.testing.assert_array_equal(classes, direct_mask(model, path, card_of(results, "multiclass")))
        overlay, image = np.asarray(Image.open(tmp_path / "masks" / f"{path.stem}_overlay.png")), np.asarray(
            Image.open(path))
        np.testing.assert_array_equal(overlay[classes == 0], image[classes == 0])
        assert (overlay[classes > 0] != image[classes > 0]).any(axis=-1).mean() > 0.99  # tinted with its colour
        for c in set(np.unique(classes).tolist()) - {0}:  # image / 2 + tab20's c-th dark colour / 2, rounded
            colour = np.round(np.asarray(colormaps["tab20"].colors[2 * c]) * 255)
            assert np.abs(2 * overlay[classes == c].astype(int) - image[classes == c] - colour).max() <= 1


def test_the_report_embeds_a_predicted_masks_figure_per_dataset(results):
    for dataset in DATASETS.values():
        (results / "figures" / f"predictions_{dataset}.png").unlink()
    assert main(["report", "--out", str(results)]) == 0
    html = (results / "report.html").read_text()
    for dataset in DATASETS.values():
        figure = results / "figures" / f"predictions_{dataset}.png"
        assert base64.b64encode(figure.read_bytes()).decode() in html


def test_runs_without_a_kept_state_or_test_images_here_are_left_out(results, tmp_path):
    record = record_and_problem(record_file(results, "binary"))[0]
    kept = {**record, "seed": 1, "adapter": {**record["adapter"], "file": "adapters/synth_leaf/lora/seed1.safetensors"}}
    assert shown_runs([{**record, "adapter": None}, kept]) == {"synth_leaf": {"lora": kept}}
    elsewhere = {**record, "config": {**record["config"], "dataset": {
        **record["config"]["dataset"], "source": "prepared", "path": str(tmp_path / "not_prepared")}}}
    assert predictions_figure({"lora": elsewhere}, results, "synth_leaf", tmp_path / "figure") == []
    assert not list(tmp_path.glob("figure*"))
