"""Metrics on hand-computed examples (definitions in peftbench.metrics and ../shared/reference/metrics.md)."""

import pytest
import torch

from peftbench.metrics import BinaryMeter, MulticlassMeter, binary_per_image


def test_binary_metrics_on_a_hand_computed_image():
    label = torch.tensor([[[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]]], dtype=torch.float)
    prob = torch.tensor([[[0.9, 0.8, 0.7, 0.1], [0.2, 0.6, 0.0, 0.0], [0, 0, 0, 0], [0, 0, 0, 0]]])
    # threshold 0.5: TP = 3, FP = 1 (0.7), FN = 1 (0.2), TN = 11
    m = binary_per_image(prob, label)
    assert m["iou"].item() == pytest.approx(3 / 5)
    assert m["dice"].item() == pytest.approx(6 / 8)
    assert m["acc"].item() == pytest.approx(14 / 16)
    # BER = 0.5 * (FN / P + FP / N) = 0.5 * (1/4 + 1/12)
    assert m["ber"].item() == pytest.approx(0.5 * (1 / 4 + 1 / 12))


def test_ber_threshold_is_125_over_255_and_iou_threshold_is_a_strict_half():
    label = torch.tensor([[[1.0, 0.0]]])
    prob = torch.tensor([[[0.495, 0.0]]])  # 0.495 * 255 = 126.2 > 125 but 0.495 < 0.5
    m = binary_per_image(prob, label)
    assert m["ber"].item() == 0.0 and m["iou"].item() == 0.0
    assert binary_per_image(torch.tensor([[[0.5, 0.0]]]), label)["iou"].item() == 0.0


def test_empty_label_conventions():
    label = torch.zeros(1, 2, 2)
    m = binary_per_image(torch.zeros(1, 2, 2), label)
    assert m["iou"].item() == 0.0 and m["dice"].item() == 0.0  # torchmetrics zero_division=0, as the paper's harness
    assert m["ber"].item() == 0.0  # only background present, all correct
    m = binary_per_image(torch.tensor([[[0.9, 0.0], [0.0, 0.0]]]), label)
    assert m["ber"].item() == pytest.approx(1 - (0 + 3 / 4) / 2)  # a false positive brings the fg class in, recall 0


def test_binary_meter_averages_per_image_not_per_pixel():
    meter = BinaryMeter()
    big = torch.ones(1, 10, 10)
    small = torch.zeros(1, 10, 10)
    small[0, 0, 0] = 1
    meter.update(torch.ones(1, 10, 10), big)  # IoU 1
    meter.update(torch.zeros(1, 10, 10), small)  # IoU 0
    assert meter.results()["iou"] == pytest.approx(50.0)  # dataset-level would be 100/101


def test_multiclass_meter_accumulates_over_the_dataset_and_ignores_255():
    meter = MulticlassMeter(3)
    label = torch.tensor([[[0, 1, 1, 255]]])
    probs = torch.zeros(1, 3, 1, 4)
    probs[0, 0, 0, 0] = probs[0, 1, 0, 1] = probs[0, 2, 0, 2] = probs[0, 2, 0, 3] = 1  # pred 0, 1, 2, 2
    meter.update(probs, label)
    r = meter.results()
    assert r["pixel_acc"] == pytest.approx(100 * 2 / 3)
    # IoU: class0 1/1, class1 1/2, class2 0/1 (pixel 3 is ignored)
    assert r["miou"] == pytest.approx(100 * (1 + 0.5 + 0) / 3)
    assert r["iou_class2"] == 0.0
