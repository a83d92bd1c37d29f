"""Segmentation metrics with their provenance (../shared/reference/metrics.md).

Binary metrics follow the Conv-LoRA harness that produced the paper's numbers: computed per image at the model's
input resolution, then averaged over images. IoU, Dice and accuracy binarise the probability with `p > 0.5`;
BER binarises prediction and label with `255 * v > 125`. An image whose label and prediction are both empty scores
0 for IoU and Dice (torchmetrics zero_division=0). BER per image is 1 - mean recall over the classes
{background, foreground} that occur in the label or prediction (torchmetrics macro, samplewise).
Multi-class metrics accumulate a confusion matrix over the whole test set (Trans2Seg / Trans10K-v2): pixel accuracy
over all labelled pixels, mIoU = mean IoU over all K classes, background included; label 255 is ignored.
All values are percentages.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch

from .data.files import IGNORE_LABEL


@dataclass(frozen=True)
class MetricSpec:
    name: str
    aggregation: str  # "per_image_mean" or "dataset"
    threshold: str
    higher_is_better: bool
    definition: str


METRICS = {
    "iou": MetricSpec("iou", "per_image_mean", "p > 0.5", True, "TP / (TP + FP + FN); 0 when both masks are empty"),
    "dice": MetricSpec("dice", "per_image_mean", "p > 0.5", True, "2TP / (2TP + FP + FN); 0 when both masks are empty"),
    "acc": MetricSpec("acc", "per_image_mean", "p > 0.5", True, "(TP + TN) / pixels"),
    "ber": MetricSpec("ber", "per_image_mean", "255 p > 125", False,
                      "1 - mean recall over {bg, fg} classes present (torchmetrics macro)"),
    "miou": MetricSpec("miou", "dataset", "argmax", True, "mean over all K classes of sum(I) / sum(U), bg included"),
    "pixel_acc": MetricSpec("pixel_acc", "dataset", "argmax", True, "correct labelled pixels / labelled pixels"),
}
MULTICLASS_ALIASES = {"acc": "pixel_acc"}  # a multi-class card's "acc" is pixel accuracy


def spec(name: str, kind: str) -> MetricSpec:
    return METRICS[MULTICLASS_ALIASES.get(name, name) if kind == "multiclass" else name]


def _counts(pred: torch.Tensor, gt: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Per-image TP, FP, FN, TN of boolean (B, H, W) maps, each (B,)."""
    tp = (pred & gt).flatten(1).sum(1).double()
    fp = (pred & ~gt).flatten(1).sum(1).double()
    fn = (~pred & gt).flatten(1).sum(1).double()
    tn = (~pred & ~gt).flatten(1).sum(1).double()
    return tp, fp, fn, tn


def _ratio(num: torch.Tensor, den: torch.Tensor) -> torch.Tensor:
    return torch.where(den > 0, num / den.clamp_min(1), torch.zeros_like(num))


def binary_per_image(prob: torch.Tensor, label: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-image binary metrics (fractions), each (B,), from probabilities and 0/1 labels of shape (B, H, W)."""
    gt = label > 0.5
    tp, fp, fn, tn = _counts(prob > 0.5, gt)
    out = {
        "iou": _ratio(tp, tp + fp + fn),
        "dice": _ratio(2 * tp, 2 * tp + fp + fn),
        "acc": (tp + tn) / (tp + fp + fn + tn),
    }
    tp, fp, fn, tn = _counts(prob * 255 > 125, label * 255 > 125)
    recall_fg, recall_bg = _ratio(tp, tp + fn), _ratio(tn, tn + fp)
    present_fg, present_bg = (tp + fp + fn) > 0, (tn + fn + fp) > 0
    mean_recall = (recall_fg * present_fg + recall_bg * present_bg) / (present_fg.double() + present_bg.double())
    out["ber"] = 1 - mean_recall
    return out


class BinaryMeter:
    """Collects per-image binary metrics over a test set."""

    def __init__(self) -> None:
        self.rows: dict[str, list[float]] = {k: [] for k in ("iou", "dice", "acc", "ber")}

    def update(self, prob: torch.Tensor, label: torch.Tensor) -> None:
        for k, v in binary_per_image(prob.float(), label.float()).items():
            self.rows[k].extend(v.tolist())

    def results(self) -> dict[str, float]:
        return {k: 100.0 * float(np.mean(v)) for k, v in self.rows.items()}


class MulticlassMeter:
    """Accumulates a (K, K) confusion matrix (rows: label, columns: prediction) over a test set."""

    def __init__(self, num_classes: int) -> None:
        self.k = num_classes
        self.confusion = torch.zeros(num_classes, num_classes, dtype=torch.float64)
        self.rows: dict[str, list[float]] = {"pixel_acc": []}

    def update(self, probs: torch.Tensor, label: torch.Tensor) -> None:
        """probs (B, K, H, W), label (B, H, W) class ids (255 ignored)."""
        pred = probs.argmax(1)
        keep = label != IGNORE_LABEL
        index = label[keep] * self.k + pred[keep]
        self.confusion += torch.bincount(index.cpu(), minlength=self.k * self.k).view(self.k, self.k).double()
        correct = ((pred == label) & keep).flatten(1).sum(1).double()
        self.rows["pixel_acc"].extend((correct / keep.flatten(1).sum(1).clamp_min(1)).tolist())

    def results(self) -> dict[str, float]:
        c = self.confusion
        inter = c.diag()
        union = c.sum(0) + c.sum(1) - inter
        iou = inter / (union + 2.22e-16)
        out = {"pixel_acc": 100.0 * float(inter.sum() / c.sum().clamp_min(1)), "miou": 100.0 * float(iou.mean())}
        out.update({f"iou_class{i}": 100.0 * float(v) for i, v in enumerate(iou)})
        return out


def provenance(names: list[str], kind: str, resolution: int) -> dict[str, dict]:
    """What every reported number means: aggregation, threshold, resolution, unit."""
    return {n: {**asdict(spec(n, kind)), "resolution": f"{resolution}x{resolution}", "unit": "%"} for n in names}
