"""Metrics on hand-computed examples and against PySODMetrics (definitions in peftbench.scoring.metrics and
docs/metrics.md)."""

import numpy as np
import pytest

from peftbench.errors import UserError
from peftbench.scoring.metrics import (
    BINARY_ROWS,
    BINARY_SPECS,
    METRICS,
    BinaryMeter,
    MulticlassMeter,
    e_measure_curve,
    provenance,
    spec,
    weighted_f_measure,
)

LABEL_4X4 = np.array([[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]], dtype=bool)
PROB_4X4 = np.array([[0.9, 0.8, 0.7, 0.1], [0.2, 0.6, 0.0, 0.0], [0, 0, 0, 0], [0, 0, 0, 0]])


def one_image(prob, gt, f_beta2: float = 1.0) -> dict[str, float]:
    """Per-image fractions of every per-image binary metric."""
    meter = BinaryMeter(f_beta2)
    meter.update(np.asarray(prob, dtype=np.float64), np.asarray(gt, dtype=bool))
    return {name: values[0] for name, values in meter.rows.items()}


def test_thresholded_metrics_on_a_hand_computed_image():
    m = one_image(PROB_4X4, LABEL_4X4)  # p > 0.5: TP = 3, FP = 1 (0.7), FN = 1 (0.2), TN = 11
    assert m["iou"] == pytest.approx(3 / 5)
    assert m["dice"] == pytest.approx(6 / 8)
    assert m["acc"] == pytest.approx(14 / 16)
    assert m["tjac"] == 0.0  # J = 0.6 < 0.65
    assert m["ber_image"] == pytest.approx(0.5 * (1 / 4 + 1 / 12))
    # min-max normalisation leaves this map as it is (min 0, max 0.9 -> divide by 0.9)
    assert m["mae"] == pytest.approx(np.abs(PROB_4X4 / 0.9 - LABEL_4X4).mean())


def test_tjac_keeps_a_jaccard_of_at_least_0_65():
    prob = LABEL_4X4.astype(float)
    prob[0, 2] = 1.0  # TP 4, FP 1: J = 0.8
    assert one_image(prob, LABEL_4X4)["tjac"] == pytest.approx(0.8)
    gt = np.zeros((4, 5), dtype=bool)
    gt.flat[:13] = True
    boundary = np.zeros((4, 5))
    boundary.flat[:20] = 1.0  # TP 13, FP 7: J = 0.65 exactly, kept (>=)
    assert one_image(boundary, gt)["tjac"] == pytest.approx(0.65)
    meter = BinaryMeter()
    meter.update(prob, LABEL_4X4)
    meter.update(PROB_4X4, LABEL_4X4)  # J = 0.6 -> 0
    r = meter.results()
    assert r["iou"] == pytest.approx(100 * (0.8 + 0.6) / 2) and r["tjac"] == pytest.approx(100 * 0.8 / 2)


def test_ber_threshold_is_125_over_255_and_iou_threshold_is_a_strict_half():
    m = one_image([[0.495, 0.0]], [[True, False]])  # 0.495 * 255 = 126.2 > 125 but 0.495 < 0.5
    assert m["ber_image"] == 0.0 and m["iou"] == 0.0
    assert one_image([[0.5, 0.0]], [[True, False]])["iou"] == 0.0


def test_empty_label_and_empty_prediction_conventions():
    m = one_image(np.zeros((2, 2)), np.zeros((2, 2)))
    assert m["iou"] == m["dice"] == m["tjac"] == 0.0  # torchmetrics zero_division=0, as the paper's harness
    assert m["acc"] == 1.0 and m["ber_image"] == 0.0 and m["mae"] == 0.0
    assert m["f_w_beta"] == 0.0  # PySODMetrics: empty GT -> 0
    assert m["s_alpha"] == 1.0  # empty GT: 1 - mean(pred)
    # empty GT: predicted-background pixels / (HW - 1) (a PySODMetrics quirk, can exceed 1): 4 / 3 at the 255
    # thresholds >= 255..1, 0 at the last one (>= 0 makes every pixel foreground)
    assert m["e_phi"] == pytest.approx(4 / 3 * 255 / 256)
    m = one_image([[0.9, 0.0], [0.0, 0.0]], np.zeros((2, 2)))
    assert m["ber_image"] == pytest.approx(1 - (0 + 3 / 4) / 2)  # a false positive brings the fg class in, recall 0
    m = one_image(np.zeros((2, 2)), [[True, False], [False, False]])  # empty prediction, one GT pixel
    assert m["iou"] == m["dice"] == 0.0 and m["ber_image"] == 0.5


def test_all_foreground_label():
    prob = np.array([[0.2, 0.6], [1.0, 0.2]])  # normalised: 0, 0.5, 1, 0
    m = one_image(prob, np.ones((2, 2)))
    assert m["s_alpha"] == pytest.approx(0.375)  # all-foreground GT: mean(pred)
    assert m["mae"] == pytest.approx(0.625)
    # E: predicted-foreground pixels / (HW - 1) at thresholds uint8(255 pred) = (0, 127, 255, 0) >= 255, 254, ..., 0:
    # 1 pixel at the 128 thresholds 255..128, 2 pixels at the 127 thresholds 127..1, 4 pixels at >= 0
    assert m["e_phi"] == pytest.approx((1 * 128 + 2 * 127 + 4) / 3 / 256)
    # BER: shadow recall 2/4; no non-shadow pixel but 2 predicted non-shadow: that class enters with recall 0
    assert m["iou"] == pytest.approx(2 / 4) and m["ber_image"] == pytest.approx(0.75)


def test_constant_prediction_is_not_normalised():
    gt = np.zeros((4, 4), dtype=bool)
    gt[:, :2] = True
    m = one_image(np.full((4, 4), 0.3), gt)
    assert m["mae"] == pytest.approx(0.5)  # 0.7 on the foreground half, 0.3 on the background half
    # S: object term 0.5 * O(0.3) + 0.5 * O(0.7) with O(x) = 2x / (x^2 + 1) (std 0); region split at the rounded
    # centroid (1.5 -> 2, 0.5 -> 0: half to even) + 1 = (3, 1): the quadrants with a constant GT score 1 (weights 3/16,
    # 1/16), the two with a mixed GT score 0
    object_score = 0.5 * (0.6 / 1.09) + 0.5 * (1.4 / 1.49)
    assert m["s_alpha"] == pytest.approx(0.5 * object_score + 0.5 * 4 / 16)
    # E: at every threshold the map is all foreground or all background; both give 4 parts of 1/4 * 8 pixels
    assert m["e_phi"] == pytest.approx(4 / 15)
    assert m["iou"] == 0.0 and m["acc"] == 0.5


def enhanced_alignment_by_pixels(binary: np.ndarray, gt: np.ndarray) -> float:
    """Fan et al. 2018 directly: mean-centred maps, alignment matrix, enhanced matrix summed over (HW - 1)."""
    b, g = binary - binary.mean(), gt - gt.mean()
    align = 2 * b * g / (b * b + g * g + np.spacing(1))
    return float(((align + 1) ** 2 / 4).sum() / (gt.size - 1 + np.spacing(1)))


def test_e_measure_curve_matches_the_pixelwise_definition():
    gt = np.array([[1, 1, 0], [0, 1, 0]], dtype=bool)
    pred = np.array([[1.0, 0.3, 0.0], [0.6, 0.3, 0.1]])
    curve = e_measure_curve(pred, gt)
    levels = (pred * 255).astype(np.uint8)
    for index in (0, 100, 178, 200, 229, 240, 255):
        expected = enhanced_alignment_by_pixels((levels >= 255 - index).astype(float), gt.astype(float))
        assert curve[index] == pytest.approx(expected, abs=1e-12)


def test_weighted_f_is_one_for_a_perfect_map_and_uses_beta2():
    gt = np.zeros((6, 7), dtype=bool)
    gt[1:4, 2:6] = True
    assert weighted_f_measure(gt.astype(float), gt) == pytest.approx(1.0)
    pred = gt.astype(float)
    pred[2, 3] = 0.0  # one missed pixel: weighted recall and precision below 1 and unequal
    f1, f03 = weighted_f_measure(pred, gt, 1.0), weighted_f_measure(pred, gt, 0.3)
    assert f1 < 1 and f03 != pytest.approx(f1)
    assert one_image(pred, gt, f_beta2=0.3)["f_w_beta"] == pytest.approx(f03)


def test_ber_is_accumulated_over_the_set_not_averaged_per_image():
    meter = BinaryMeter()
    meter.update(np.array([[1.0, 0, 0, 0]]), np.array([[1, 0, 0, 0]], dtype=bool))  # BER 0
    meter.update(np.zeros((1, 4)), np.array([[1, 1, 1, 0]], dtype=bool))  # shadow error 1, non-shadow 0: BER 0.5
    r = meter.results()
    assert r["ber_image"] == pytest.approx(100 * (0 + 0.5) / 2)
    # summed: TP 1 of Np 4, TN 4 of Nn 4
    assert r["ber_shadow"] == pytest.approx(75.0) and r["ber_nonshadow"] == 0.0
    assert r["ber"] == pytest.approx(37.5)
    assert "ber" not in meter.rows and set(meter.rows) == set(BINARY_ROWS)


def test_results_cover_every_binary_metric_in_display_units():
    meter = BinaryMeter()
    meter.update(PROB_4X4, LABEL_4X4)
    r = meter.results()
    assert set(r) == set(BINARY_SPECS) and set(BINARY_SPECS) <= set(METRICS)
    assert r["iou"] == pytest.approx(60.0) and r["mae"] == pytest.approx(meter.rows["mae"][0])  # mae stays a fraction


def test_binary_meter_averages_per_image_not_per_pixel():
    meter = BinaryMeter()
    small = np.zeros((10, 10), dtype=bool)
    small[0, 0] = True
    meter.update(np.ones((10, 10)), np.ones((10, 10), dtype=bool))  # IoU 1
    meter.update(np.zeros((10, 10)), small)  # IoU 0
    assert meter.results()["iou"] == pytest.approx(50.0)  # dataset-level would be 100/101


def test_mismatched_shapes_are_refused():
    with pytest.raises(ValueError, match="resize"):
        BinaryMeter().update(np.zeros((4, 4)), np.zeros((8, 8), dtype=bool))


# Reference values from pysodmetrics 1.6.2 (numpy 2.3.4), installed in a throwaway venv and run on `sod_cases()`
# with uint8 maps and normalize=True: Smeasure().sm, Emeasure().em["curve"].mean(), WeightedFmeasure(beta=1) and
# (beta=0.3) .wfm, MAE().mae. Not a peftbench dependency.
PYSOD_REFERENCE = {  # case: (s_alpha, e_phi, f_w_beta (beta^2 = 1), f_w_beta (beta^2 = 0.3), mae)
    "noise": (0.30777686280652056, 0.399149188493675, 0.435943470292481, 0.37479326184652983, 0.5037683823529412),
    "box": (0.788282693880092, 0.6525650461620942, 0.5418786307674063, 0.4511945120649793, 0.22441482843137256),
    "blob": (0.936205146556541, 0.9001913149454823, 0.8640245200427916, 0.894071235948817, 0.04451177001312337),
    "empty_gt": (0.5135814950980392, 0.511975298084441, 0.0, 0.0, 0.4864185049019608),
    "full_gt": (0.4864185049019608, 0.48880656274433154, 0.7827193954705498, 0.886429169357796, 0.5135814950980392),
    "constant_pred": (0.3730373837976956, 0.25019546520719305, 0.38970895410980944, 0.4043654986786093, 0.5),
}


def sod_cases() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Fixed (pred uint8 (H, W), gt uint8 0/255 (H, W)) pairs; the same code produced PYSOD_REFERENCE."""
    rng = np.random.default_rng(0)
    noise_pred = rng.integers(0, 256, (32, 40), dtype=np.uint8)
    noise_gt = np.where(rng.random((32, 40)) > 0.7, 255, 0).astype(np.uint8)
    rng = np.random.default_rng(1)
    box_gt = np.zeros((32, 40), np.uint8)
    box_gt[8:21, 10:31] = 255
    box_pred = np.clip(0.6 * box_gt + rng.normal(60, 40, (32, 40)), 0, 255).astype(np.uint8)
    yy, xx = np.mgrid[:48, :48]
    dist = np.hypot(yy - 20.3, xx - 26.7)
    blob_gt = np.where(dist <= 11, 255, 0).astype(np.uint8)
    blob_pred = (255 / (1 + np.exp(dist - 10))).astype(np.uint8)  # a soft disc, slightly too small
    half_gt = np.zeros((32, 40), np.uint8)
    half_gt[:, :20] = 255
    return {"noise": (noise_pred, noise_gt), "box": (box_pred, box_gt), "blob": (blob_pred, blob_gt),
            "empty_gt": (noise_pred, np.zeros((32, 40), np.uint8)),
            "full_gt": (noise_pred, np.full((32, 40), 255, np.uint8)),
            "constant_pred": (np.full((32, 40), 77, np.uint8), half_gt)}


@pytest.mark.parametrize("case", list(PYSOD_REFERENCE))
def test_sod_metrics_match_pysodmetrics(case):
    pred, gt = sod_cases()[case]
    s_alpha, e_phi, f1, f03, mae = PYSOD_REFERENCE[case]
    m = one_image(pred / 255, gt > 128)
    assert m["s_alpha"] == pytest.approx(s_alpha, abs=1e-9)
    assert m["e_phi"] == pytest.approx(e_phi, abs=1e-9)  # same uint8 histogram as PySODMetrics, so no tolerance needed
    assert m["f_w_beta"] == pytest.approx(f1, abs=1e-9)
    assert m["mae"] == pytest.approx(mae, abs=1e-9)
    assert one_image(pred / 255, gt > 128, f_beta2=0.3)["f_w_beta"] == pytest.approx(f03, abs=1e-9)


def test_s_measure_survives_a_centroid_on_the_last_row():
    gt = np.zeros((8, 8), dtype=bool)
    gt[7, 2:6] = gt[6, 3] = True  # centroid row rounds to 7 -> split after row 8: two empty quadrants
    m = one_image(np.arange(64).reshape(8, 8) / 63, gt)
    assert 0 <= m["s_alpha"] <= 1  # PySODMetrics 1.6.2 returns NaN here


# ---- multi-class ----

def test_trans10k_v2_accumulates_over_the_dataset_and_ignores_255():
    meter = MulticlassMeter(3)
    meter.update(np.array([[0, 1, 2, 2]]), np.array([[0, 1, 1, 255]]))
    r = meter.results()
    assert r["acc"] == pytest.approx(100 * 2 / 3)
    # IoU: class0 1/1, class1 1/2, class2 0/1 (pixel 3 is ignored)
    assert r["miou"] == pytest.approx(100 * (1 + 0.5 + 0) / 3)
    assert r["iou_class2"] == 0.0 and r["iou_class0"] == pytest.approx(100.0)
    assert set(r) == {"acc", "miou", "iou_class0", "iou_class1", "iou_class2"}
    assert meter.rows == {"acc_image": [pytest.approx(2 / 3)]}


def test_trans10k_v1_and_v2_differ_on_one_image():
    gt, pred = np.array([[0, 0, 1, 2]]), np.array([[0, 0, 1, 1]])
    names = ["background", "things", "stuff"]
    v1, v2 = MulticlassMeter(3, "trans10k_v1", names), MulticlassMeter(3, "trans10k_v2", names)
    v1.update(pred, gt)
    v2.update(pred, gt)
    r1, r2 = v1.results(), v2.results()
    assert r2["acc"] == pytest.approx(75.0) and r1["acc"] == pytest.approx(50.0)  # v1: background pixels left out
    # IoU: background 2/2, things 1/2, stuff 0/1; v1 averages things and stuff only
    assert r2["miou"] == pytest.approx(100 * 1.5 / 3) and r1["miou"] == pytest.approx(100 * 0.5 / 2)
    assert r1["iou_background"] == r2["iou_background"] == pytest.approx(100.0)
    assert r1["mae"] == pytest.approx(1 / 4)  # stuff predicted as things: |1 - 2| on one pixel of four
    # BER things: TP 1/1, TN 2/3 (correct among the other three) -> 1/6; stuff: TP 0/1, TN 3/3 -> 1/2
    assert r1["mber"] == pytest.approx(100 * (1 / 6 + 1 / 2) / 2)
    assert "mae" not in r2 and "mber" not in r2


def test_trans10k_v1_mber_averages_each_class_over_the_images_containing_it():
    meter = MulticlassMeter(3, "trans10k_v1")
    meter.update(np.array([[0, 0, 1, 1]]), np.array([[0, 0, 1, 2]]))  # things 1/6, stuff 1/2
    meter.update(np.array([[0, 1, 1, 1]]), np.array([[0, 0, 1, 1]]))  # things: TP 2/2, TN 1/2 -> 1/4; no stuff
    r = meter.results()
    assert r["mber"] == pytest.approx(100 * ((1 / 6 + 1 / 4) / 2 + 1 / 2) / 2)
    assert meter.rows["mae"] == [pytest.approx(0.25), pytest.approx(0.25)]
    assert meter.rows["acc_image"] == [pytest.approx(0.5), pytest.approx(1.0)]


def test_multiclass_input_errors():
    with pytest.raises(UserError, match="protocol"):
        MulticlassMeter(3, "trans10k_v3")
    with pytest.raises(UserError, match="class names"):
        MulticlassMeter(3, class_names=["a", "b"])
    with pytest.raises(ValueError, match="class ids"):
        MulticlassMeter(3).update(np.array([[3]]), np.array([[0]]))


# ---- specs and provenance ----

def test_every_metric_has_a_spec_and_shared_names_agree_in_direction_and_unit():
    for name, s in METRICS.items():
        assert s.name == name and s.unit in ("%", "") and s.definition
    for protocol in ("trans10k_v1", "trans10k_v2"):
        for name in ("acc", "miou", "mae", "mber") if protocol == "trans10k_v1" else ("acc", "miou"):
            s = spec(name, "multiclass", protocol)
            assert (s.higher_is_better, s.unit) == (METRICS[name].higher_is_better, METRICS[name].unit)
    assert spec("miou", "multiclass", "trans10k_v1").definition != spec("miou", "multiclass").definition
    assert spec("iou_shelf", "multiclass").unit == "%"
    with pytest.raises(UserError, match="unknown binary metric 'jaccard'"):
        spec("jaccard", "binary")


def test_provenance_records_resolution_protocol_and_beta2():
    p = provenance(["iou", "f_w_beta"], "binary", "", "original GT resolution", 0.3)
    assert p["iou"]["resolution"] == "original GT resolution" and p["iou"]["threshold"] == "p > 0.5"
    assert p["f_w_beta"]["f_beta2"] == 0.3 and "f_beta2" not in p["iou"]
    p = provenance(["acc", "iou_things"], "multiclass", "trans10k_v1", "512x512", 1.0)
    assert p["acc"]["protocol"] == "trans10k_v1" and "background" in p["acc"]["definition"]
    assert p["iou_things"]["aggregation"] == "dataset"


def test_binary_meter_computes_only_the_soft_map_metrics_asked_for():
    rng = np.random.default_rng(1)
    prob, gt = rng.random((24, 32)), rng.random((24, 32)) > 0.6
    full, some = BinaryMeter(), BinaryMeter(sod=("s_alpha",))
    full.update(prob, gt)
    some.update(prob, gt)
    assert set(some.rows) == set(BINARY_ROWS) - {"e_phi", "f_w_beta", "mae"}
    assert some.results()["s_alpha"] == full.results()["s_alpha"] and "f_w_beta" not in some.results()
