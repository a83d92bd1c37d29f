"""Segmentation metrics with their provenance (the reference scorers named below; summary in docs/metrics.md).

Every metric is computed on numpy arrays at the ground truth's original resolution: the caller resizes each prediction
to its label's size before `update`. Binary metrics (`BinaryMeter`) follow the harness that produced the NAS-LoRA /
Conv-LoRA numbers where it defines them (IoU at p > 0.5 with 0 for an empty label and prediction, per-image BER) and
the official scorers otherwise (ISIC-2018 thresholded Jaccard, SBU ComputeBERonSet, PySODMetrics 1.6 for S-measure,
E-measure, weighted F and MAE). Multi-class metrics (`MulticlassMeter`) follow TransLab (Trans10K-v1) or Trans2Seg
(Trans10K-v2). `METRICS` / `spec` say exactly what each number means; `provenance` writes that into run records.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from scipy import ndimage

from ..errors import UserError
from .labels import IGNORE_LABEL

EPS = np.spacing(1)  # MATLAB eps, as PySODMetrics
TRANSLAB_EPS = 2.220446049250313e-16  # TransLab / Trans2Seg score.py denominators
TJAC_CUTOFF = 0.65  # ISIC 2018 thresholded Jaccard
PROTOCOLS = ("trans10k_v1", "trans10k_v2")
BER_THRESHOLD = "255 p > 125 and 255 label > 125"  # SBU ComputeBERonSet, also the Conv-LoRA harness
ARGMAX = f"argmax; label {IGNORE_LABEL} ignored"
SOD_INPUT = "soft map, min-max normalised per image unless constant (PySODMetrics prepare_data); GT = label > 0.5"


@dataclass(frozen=True)
class MetricSpec:
    name: str
    aggregation: str  # "per_image_mean", "dataset" (sums over the test set) or "per_class_image_mean"
    threshold: str
    higher_is_better: bool
    definition: str
    unit: str  # "%": the fraction x 100; "": the plain number


BINARY_SPECS = {s.name: s for s in [
    MetricSpec("iou", "per_image_mean", "p > 0.5", True,
               "Jaccard TP / (TP + FP + FN) per image, mean over images (Conv-LoRA harness, torchmetrics "
               "BinaryJaccardIndex); 0 when the label and the prediction are both empty (the ISIC scorer gives 1)", "%"),
    MetricSpec("dice", "per_image_mean", "p > 0.5", True,
               "Dice 2TP / (2TP + FP + FN) per image, mean over images; 0 when the label and the prediction are both "
               "empty", "%"),
    MetricSpec("acc", "per_image_mean", "p > 0.5", True, "pixel accuracy (TP + TN) / (H W) per image, mean over images",
               "%"),
    MetricSpec("tjac", "per_image_mean", "p > 0.5", True,
               "ISIC-2018 thresholded Jaccard: per image J if J >= 0.65 else 0 (J as in iou, 0 when the label and the "
               "prediction are both empty), mean over images", "%"),
    MetricSpec("ber", "dataset", BER_THRESHOLD, False,
               "balanced error rate of SBU ComputeBERonSet: TP, TN, Np, Nn summed over the whole test set, then "
               "1 - (TP/Np + TN/Nn) / 2 once = mean of ber_shadow and ber_nonshadow", "%"),
    MetricSpec("ber_shadow", "dataset", BER_THRESHOLD, False,
               "shadow error 1 - sum(TP) / sum(Np) over the test set (of ber); 0 if the set has no shadow pixel and "
               "none is predicted, 1 if some are predicted", "%"),
    MetricSpec("ber_nonshadow", "dataset", BER_THRESHOLD, False,
               "non-shadow error 1 - sum(TN) / sum(Nn) over the test set (of ber); 0 if the set has no non-shadow "
               "pixel and none is predicted, 1 if some are predicted", "%"),
    MetricSpec("ber_image", "per_image_mean", BER_THRESHOLD, False,
               "Conv-LoRA harness BER: per image 1 - mean recall over {background, foreground} (torchmetrics macro, "
               "samplewise: a class absent from label and prediction is dropped, one absent from the label but "
               "predicted has recall 0), mean over images", "%"),
    MetricSpec("s_alpha", "per_image_mean", SOD_INPUT, True,
               "S-measure (Fan et al. 2017), alpha = 0.5: max(0, 0.5 S_object + 0.5 S_region), region split at the "
               "rounded GT centroid + 1 (MATLAB); empty GT: 1 - mean(pred); all-foreground GT: mean(pred); PySODMetrics "
               "1.6; mean over images", "%"),
    MetricSpec("e_phi", "per_image_mean", SOD_INPUT + "; binarised at 256 thresholds pred >= k/255 after "
               "uint8(255 pred)", True,
               "mean E-measure (Fan et al. 2018): per image the enhanced-alignment score at each of the 256 thresholds "
               "(PySODMetrics histogram), mean over thresholds, mean over images (= mean of the dataset curve; not "
               "adaptive or max E); empty GT: predicted-background fraction, all-foreground GT: predicted-foreground "
               "fraction (both over H W - 1)", "%"),
    MetricSpec("f_w_beta", "per_image_mean", SOD_INPUT, True,
               "weighted F-measure (Margolin et al. 2014) with beta^2 = f_beta2 of the run (MATLAB / PySODMetrics "
               "default 1; the Conv-LoRA harness used 0.3): error spread to background from the nearest foreground "
               "pixel (Euclidean distance transform), 7x7 Gaussian sigma 5 with zero padding, importance "
               "2 - exp(ln(0.5) / 5 d); 0 when the GT is empty; mean over images", "%"),
    MetricSpec("mae", "per_image_mean", SOD_INPUT, False,
               "mean |pred - GT| per image on the normalised map, mean over images; a fraction in [0, 1] (papers print "
               "3 decimals)", ""),
]}

_TRANS10K_V1 = [
    MetricSpec("acc", "dataset", ARGMAX, True,
               "TransLab pixel accuracy: correctly labelled pixels / labelled pixels, background-labelled pixels "
               "excluded, summed over the test set", "%"),
    MetricSpec("miou", "dataset", ARGMAX, True,
               "TransLab mIoU: per class sum(intersection) / sum(union) over the test set, mean over classes 1..K-1 "
               "(background excluded; a class absent from labels and predictions counts 0)", "%"),
    MetricSpec("mae", "per_image_mean", ARGMAX, False,
               "TransLab MAE: per image mean |predicted class index - label index| over labelled pixels, mean over "
               "images (class ids are 0 background, 1 things, 2 stuff)", ""),
    MetricSpec("mber", "per_class_image_mean", ARGMAX, False,
               "TransLab mBER: for class c >= 1 and each image containing c, 1 - (TP/Np + TN/Nn) / 2 with Np = pixels "
               "labelled c, Nn = other labelled pixels, TP / TN = correctly labelled pixels among them (an empty side "
               "counts error 0 if nothing was predicted into it, else 1); mean over those images, then over classes "
               "occurring in the test set", "%"),
]
_TRANS10K_V2 = [
    MetricSpec("acc", "dataset", ARGMAX, True,
               "Trans2Seg pixel accuracy: correctly labelled pixels / labelled pixels (background included), summed "
               "over the test set", "%"),
    MetricSpec("miou", "dataset", ARGMAX, True,
               "Trans2Seg mIoU: per class sum(intersection) / sum(union) over the test set, mean over all K classes "
               "(background included; a class absent from labels and predictions counts 0)", "%"),
]
MULTICLASS_SPECS = {"trans10k_v1": {s.name: s for s in _TRANS10K_V1}, "trans10k_v2": {s.name: s for s in _TRANS10K_V2}}
# Every metric name. "acc" and "mae" exist for both kinds and "miou" for both protocols; the entry here is the binary
# (resp. trans10k_v1) one. Direction and unit agree across kinds; the exact definition comes from `spec`.
METRICS = {**MULTICLASS_SPECS["trans10k_v1"], **BINARY_SPECS}


def spec(name: str, kind: str, protocol: str = "trans10k_v2") -> MetricSpec:
    """The exact definition of metric `name` for a "binary" or "multiclass" task (multi-class under `protocol`)."""
    if kind == "binary":
        table = BINARY_SPECS
    else:
        table = MULTICLASS_SPECS[_checked_protocol(protocol)]
        if name.startswith("iou_"):
            return MetricSpec(name, "dataset", ARGMAX, True,
                              f"IoU of class '{name[4:]}': sum(intersection) / sum(union) over the test set", "%")
    if name not in table:
        raise UserError(f"unknown {kind} metric '{name}': choose from {', '.join(table)}")
    return table[name]


def provenance(names: list[str], kind: str, protocol: str, resolution: str, f_beta2: float) -> dict[str, dict]:
    """What every reported number means, for run records and table footnotes: the spec fields of each name plus
    `resolution` (e.g. "original GT resolution, prediction resized to it"), the multi-class protocol and beta^2."""
    out = {}
    for name in names:
        entry = {**asdict(spec(name, kind, protocol)), "resolution": resolution}
        if kind == "multiclass":
            entry["protocol"] = protocol
        if name == "f_w_beta":
            entry["f_beta2"] = f_beta2
        out[name] = entry
    return out


def _checked_protocol(protocol: str) -> str:
    if protocol not in PROTOCOLS:
        raise UserError(f"unknown multi-class metric protocol '{protocol}': use {' or '.join(PROTOCOLS)}")
    return protocol


def _display(name: str, fraction: float, kind: str = "binary", protocol: str = "trans10k_v2") -> float:
    return 100.0 * fraction if spec(name, kind, protocol).unit == "%" else fraction


# ---- binary: counts ----

def _class_error(correct: int, total: int, claimed_wrongly: int) -> float:
    """1 - recall of one class; a class with no pixels errs only if pixels were wrongly predicted into it."""
    return 1.0 - correct / total if total else float(claimed_wrongly > 0)


def _ber_errors(tp: int, fp: int, fn: int, tn: int) -> tuple[float, float]:
    """(shadow error, non-shadow error) as fractions. Their mean equals torchmetrics' macro 2-class BER: a class it
    drops (absent from label and prediction) gets error 0 here and then the other class's error is 0 as well."""
    return _class_error(tp, tp + fn, fp), _class_error(tn, tn + fp, fn)


def _confusion(pred: np.ndarray, gt: np.ndarray) -> tuple[int, int, int, int]:
    """TP, FP, FN, TN of two boolean (H, W) maps."""
    tp = int(np.count_nonzero(pred & gt))
    n_pred, n_gt = int(np.count_nonzero(pred)), int(np.count_nonzero(gt))
    return tp, n_pred - tp, n_gt - tp, pred.size - n_pred - n_gt + tp


# ---- binary: SOD / COD metrics (PySODMetrics 1.6 conventions, pred float64 in [0, 1], gt bool) ----

def _sod_normalise(prob: np.ndarray) -> np.ndarray:
    """MATLAB mapminmax as PySODMetrics: per-image min-max to [0, 1], constant maps left as they are."""
    low, high = prob.min(), prob.max()
    return (prob - low) / (high - low) if high != low else prob


def _object_score(x: np.ndarray) -> float:
    mean = x.mean()
    std = x.std(ddof=1) if x.size > 1 else 0.0
    return 2 * mean / (mean**2 + 1 + std + EPS)


def _ssim(pred: np.ndarray, gt: np.ndarray) -> float:
    """S-measure's region similarity of one quadrant (float maps); variances with N - 1 as MATLAB."""
    n = pred.size
    x, y = pred.mean(), gt.mean()
    dx, dy = pred - x, gt - y
    sigma_x, sigma_y, sigma_xy = [(a * b).sum() / (n - 1 + EPS) for a, b in ((dx, dx), (dy, dy), (dx, dy))]
    numerator = 4 * x * y * sigma_xy
    denominator = (x**2 + y**2) * (sigma_x + sigma_y)
    if numerator != 0:
        return numerator / (denominator + EPS)
    return 1.0 if denominator == 0 else 0.0


def _region_score(pred: np.ndarray, gt: np.ndarray) -> float:
    h, w = gt.shape
    rows, cols = np.nonzero(gt)
    cy, cx = int(np.round(rows.mean())) + 1, int(np.round(cols.mean())) + 1  # np.round: half to even, as PySOD
    gt = gt.astype(np.float64)
    score = 0.0
    for ys, xs in ((slice(0, cy), slice(0, cx)), (slice(0, cy), slice(cx, w)),
                   (slice(cy, h), slice(0, cx)), (slice(cy, h), slice(cx, w))):
        quadrant = pred[ys, xs]
        if quadrant.size:  # a centroid on the last row / column leaves an empty quadrant: weight 0 (PySOD gives NaN)
            score += _ssim(quadrant, gt[ys, xs]) * quadrant.size / gt.size
    return score


def s_measure(pred: np.ndarray, gt: np.ndarray, alpha: float = 0.5) -> float:
    """S-measure of a normalised (H, W) map against a boolean (H, W) label."""
    y = gt.mean()
    if y == 0:
        return float(1 - pred.mean())
    if y == 1:
        return float(pred.mean())
    object_score = y * _object_score(pred[gt]) + (1 - y) * _object_score(1 - pred[~gt])
    return float(max(0.0, alpha * object_score + (1 - alpha) * _region_score(pred, gt)))


def _enhanced_alignment(pred_centered: float | np.ndarray, gt_centered: float) -> float | np.ndarray:
    align = 2 * pred_centered * gt_centered / (pred_centered**2 + gt_centered**2 + EPS)
    return (align + 1) ** 2 / 4


def e_measure_curve(pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """(256,) E-measure of a normalised (H, W) map binarised at uint8(255 pred) >= 255, 254, ..., 0 (PySODMetrics'
    cumulative histogram; the closed form from the four confusion counts replaces the per-pixel alignment matrix)."""
    size = gt.size
    levels = (pred * 255).astype(np.uint8).astype(np.int64)
    hist = np.bincount((levels + 256 * gt).ravel(), minlength=512).reshape(2, 256)  # rows: background, foreground
    fp, tp = np.cumsum(hist[:, ::-1], axis=1)
    pred_fg = tp + fp
    n_fg = int(np.count_nonzero(gt))
    if n_fg == 0:
        total = size - pred_fg
    elif n_fg == size:
        total = pred_fg
    else:
        fn = n_fg - tp
        tn = size - pred_fg - fn
        pred_mean, gt_mean = pred_fg / size, n_fg / size
        total = (tp * _enhanced_alignment(1 - pred_mean, 1 - gt_mean) + fp * _enhanced_alignment(1 - pred_mean, -gt_mean)
                 + fn * _enhanced_alignment(-pred_mean, 1 - gt_mean) + tn * _enhanced_alignment(-pred_mean, -gt_mean))
    return total / (size - 1 + EPS)


def _gaussian_7x7_sigma5() -> np.ndarray:
    """1-D factor of MATLAB fspecial('gaussian', 7, 5) (the 2-D kernel is its outer product; nothing is cut off)."""
    x = np.arange(-3, 4, dtype=np.float64)
    g = np.exp(-(x * x) / (2 * 5.0**2))
    return g / g.sum()


GAUSS_1D = _gaussian_7x7_sigma5()


def weighted_f_measure(pred: np.ndarray, gt: np.ndarray, beta2: float = 1.0) -> float:
    """Weighted F-measure of a normalised (H, W) map against a boolean (H, W) label; `beta2` is beta squared."""
    if not gt.any():
        return 0.0
    distance, (iy, ix) = ndimage.distance_transform_edt(~gt, return_indices=True)
    error = np.abs(pred - gt)
    nearest_fg_error = error[iy, ix]  # foreground pixels index themselves
    smoothed = ndimage.correlate1d(nearest_fg_error, GAUSS_1D, axis=0, mode="constant")
    smoothed = ndimage.correlate1d(smoothed, GAUSS_1D, axis=1, mode="constant")  # imfilter, zero padding
    min_error = np.where(gt & (smoothed < error), smoothed, error)
    weighted = min_error * (2 - np.exp(np.log(0.5) / 5 * distance))  # importance is 1 inside the GT (distance 0)
    fg_error = weighted[gt]
    tp_w = fg_error.size - fg_error.sum()
    fp_w = weighted[~gt].sum()
    recall = 1 - fg_error.mean()
    precision = tp_w / (tp_w + fp_w + EPS)
    return float((1 + beta2) * recall * precision / (recall + beta2 * precision + EPS))


BINARY_ROWS = ("iou", "dice", "acc", "tjac", "ber_image", "s_alpha", "e_phi", "f_w_beta", "mae")
SOD_METRICS = ("s_alpha", "e_phi", "f_w_beta", "mae")  # soft-map metrics: the costly ones at full resolution


class BinaryMeter:
    """Binary metrics over a test set, one image per `update`. `rows[name]` holds the per-image fractions, in test
    order, of every per-image metric (`BINARY_ROWS`); the accumulated BER keeps only its summed counts.
    `sod`: which of SOD_METRICS to compute (default all; a distance transform per image is not free on a
    6000-px ISIC original, so callers ask only for what they report)."""

    def __init__(self, f_beta2: float = 1.0, sod: tuple[str, ...] = SOD_METRICS) -> None:
        self.f_beta2 = f_beta2
        self.sod = [name for name in SOD_METRICS if name in sod]
        self.rows: dict[str, list[float]] = {name: [] for name in BINARY_ROWS
                                             if name not in SOD_METRICS or name in self.sod}
        self.ber_counts = np.zeros(4, dtype=np.int64)  # TP, FP, FN, TN at 125/255, summed over images

    def update(self, prob: np.ndarray, gt: np.ndarray) -> None:
        """prob: (H, W) foreground probability in [0, 1] at the label's resolution; gt: (H, W) bool (or 0/1)."""
        prob = np.asarray(prob, dtype=np.float64)
        gt = np.asarray(gt)
        if prob.shape != gt.shape or prob.ndim != 2:
            raise ValueError(f"prediction {prob.shape} and label {gt.shape} must be the same (H, W): resize the "
                             "prediction to the label first")
        gt = gt if gt.dtype == bool else gt > 0.5
        tp, fp, fn, tn = _confusion(prob > 0.5, gt)
        iou = tp / (tp + fp + fn) if tp + fp + fn else 0.0
        ber_counts = _confusion(prob * 255 > 125, gt)  # label * 255 > 125 is gt itself
        self.ber_counts += ber_counts
        values = {
            "iou": iou,
            "dice": 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0,
            "acc": (tp + tn) / gt.size,
            "tjac": iou if iou >= TJAC_CUTOFF else 0.0,
            "ber_image": float(np.mean(_ber_errors(*ber_counts))),
        }
        if self.sod:
            pred = _sod_normalise(prob)
            soft = {"s_alpha": lambda: s_measure(pred, gt), "e_phi": lambda: e_measure_curve(pred, gt).mean(),
                    "f_w_beta": lambda: weighted_f_measure(pred, gt, self.f_beta2),
                    "mae": lambda: np.abs(pred - gt).mean()}
            values.update({name: soft[name]() for name in self.sod})
        for name, value in values.items():
            self.rows[name].append(float(value))

    def results(self) -> dict[str, float]:
        """Every binary metric in display units (see `METRICS[name].unit`)."""
        if not self.rows["iou"]:
            raise ValueError("BinaryMeter.results() before any update")
        fractions = {name: float(np.mean(values)) for name, values in self.rows.items()}
        fractions["ber_shadow"], fractions["ber_nonshadow"] = _ber_errors(*self.ber_counts.tolist())
        fractions["ber"] = (fractions["ber_shadow"] + fractions["ber_nonshadow"]) / 2
        return {name: _display(name, value) for name, value in fractions.items()}


class MulticlassMeter:
    """Multi-class metrics over a test set under the TransLab ("trans10k_v1") or Trans2Seg ("trans10k_v2") protocol.
    Accumulates a (K, K) confusion matrix (rows: label, columns: prediction) of labelled pixels; `rows` holds
    per-image fractions in test order: "acc" (the protocol's pixel set; NaN for an image with none of those pixels)
    and, for trans10k_v1, "mae"."""

    def __init__(self, num_classes: int, protocol: str = "trans10k_v2", class_names: list[str] | None = None) -> None:
        self.k = num_classes
        self.protocol = _checked_protocol(protocol)
        self.class_names = list(class_names) if class_names is not None else [f"class{i}" for i in range(num_classes)]
        if len(self.class_names) != num_classes:
            raise UserError(f"{len(self.class_names)} class names given for {num_classes} classes: give one per class")
        self.first = 1 if protocol == "trans10k_v1" else 0  # TransLab leaves background out of acc and mIoU
        self.confusion = np.zeros((num_classes, num_classes), dtype=np.int64)
        self.rows: dict[str, list[float]] = {"acc_image": []} | ({"mae": []} if self.first else {})
        self.ber_sum = np.zeros(num_classes)  # trans10k_v1: per class, BER summed over images containing it
        self.ber_images = np.zeros(num_classes, dtype=np.int64)

    def update(self, pred: np.ndarray, gt: np.ndarray) -> None:
        """pred: (H, W) int class ids at the label's resolution; gt: (H, W) int class ids, 255 = ignore."""
        pred, gt = np.asarray(pred), np.asarray(gt)
        if pred.shape != gt.shape or pred.ndim != 2:
            raise ValueError(f"prediction {pred.shape} and label {gt.shape} must be the same (H, W)")
        labelled = gt != IGNORE_LABEL
        g, p = gt[labelled].astype(np.int64), pred[labelled].astype(np.int64)
        if g.size and (min(g.min(), p.min()) < 0 or max(g.max(), p.max()) >= self.k):
            raise ValueError(f"class ids must lie in [0, {self.k}) (label {IGNORE_LABEL} = ignore)")
        confusion = np.bincount(g * self.k + p, minlength=self.k * self.k).reshape(self.k, self.k)
        self.confusion += confusion
        counted = confusion[self.first:].sum()
        correct = np.diag(confusion)
        self.rows["acc_image"].append(correct[self.first:].sum() / counted if counted else float("nan"))
        if self.first:
            index = np.arange(self.k)
            distance = np.abs(index[:, None] - index[None, :])
            self.rows["mae"].append((confusion * distance).sum() / g.size if g.size else float("nan"))
            self._add_class_bers(confusion)

    def _add_class_bers(self, confusion: np.ndarray) -> None:
        """TransLab batch_ber for one image: for each foreground class present, balanced error of 'is it c'."""
        total, all_correct = confusion.sum(), np.trace(confusion)
        for c in range(1, self.k):
            positives = confusion[c].sum()
            if positives == 0:
                continue
            tp = confusion[c, c]
            negative_error = _class_error(all_correct - tp, total - positives, positives - tp)
            self.ber_sum[c] += (1 - tp / positives + negative_error) / 2
            self.ber_images[c] += 1

    def results(self) -> dict[str, float]:
        """acc, miou and iou_<class name> for every class; trans10k_v1 adds mae and mber. Display units."""
        if not self.rows["acc_image"]:
            raise ValueError("MulticlassMeter.results() before any update")
        c = self.confusion
        inter = np.diag(c).astype(np.float64)
        iou = inter / (c.sum(0) + c.sum(1) - inter + TRANSLAB_EPS)
        fractions = {"acc": inter[self.first:].sum() / (c[self.first:].sum() + TRANSLAB_EPS),
                     "miou": iou[self.first:].mean()}
        fractions.update({f"iou_{name}": v for name, v in zip(self.class_names, iou)})
        if self.first:
            fractions["mae"] = np.nanmean(self.rows["mae"])
            present = self.ber_images[1:] > 0
            fractions["mber"] = (self.ber_sum[1:][present] / self.ber_images[1:][present]).mean() if present.any() \
                else float("nan")
        return {name: _display(name, float(v), "multiclass", self.protocol) for name, v in fractions.items()}
