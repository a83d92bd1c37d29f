"""The training losses against hand-computed values."""

import math

import pytest
import torch
import torch.nn.functional as F

from peftbench.training.losses import balanced_bce, bce_dice, structure_loss


def test_bce_dice_of_a_confident_correct_prediction_is_near_zero():
    target = torch.zeros(1, 4, 4)
    target[0, :2] = 1
    logits = (target * 2 - 1) * 20
    assert bce_dice(logits, target).item() < 1e-6
    assert bce_dice(-logits, target).item() > 20  # confidently wrong: BCE ~ 20 per pixel


def test_balanced_bce_halves_bce_on_a_balanced_batch_and_upweights_rare_positives():
    target = torch.tensor([[[1.0, 0.0], [1.0, 0.0]]])
    logits = torch.tensor([[[0.3, -0.2], [1.1, 0.4]]])
    assert balanced_bce(logits, target).item() == pytest.approx(0.5 * F.binary_cross_entropy_with_logits(
        logits, target).item())
    rare = torch.zeros(1, 1, 4)
    rare[0, 0, 0] = 1
    zeros = torch.zeros(1, 1, 4)
    # one positive among four: its error weighs 3x, then everything is scaled by 1/4
    expected = (3 * math.log(2) + 3 * math.log(2)) / 4 / 4
    assert balanced_bce(zeros, rare).item() == pytest.approx(expected)


def test_structure_loss_is_bce_plus_boundary_weighted_iou():
    target = torch.zeros(1, 40, 40)
    target[0, 10:30, 10:30] = 1
    logits = torch.zeros(1, 40, 40)  # p = 0.5 everywhere
    weight = 1 + 5 * (F.avg_pool2d(target[:, None], 31, stride=1, padding=15)[:, 0] - target).abs()
    inter = (weight * 0.5 * target).sum()
    union = (weight * (0.5 + target)).sum() - inter
    expected = math.log(2) + 1 - (inter + 1) / (union + 1)
    assert structure_loss(logits, target).item() == pytest.approx(expected.item(), rel=1e-6)
    assert structure_loss(target * 40 - 20, target).item() < 0.01
