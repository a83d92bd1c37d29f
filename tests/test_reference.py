"""The paper's published numbers (peftbench/reference/paper_results.csv) re-read, row by row, from a copy of the
paper's table text (tests/fixtures/paper_tables.txt): every transcribed table, every cell, nothing extra."""

import re
from pathlib import Path

import pandas as pd
import pytest

from peftbench.report import REFERENCE_FILE

TEXT = Path(__file__).parent / "fixtures" / "paper_tables.txt"

TABLE1 = [("polyp/kvasir", "s_alpha"), ("polyp/kvasir", "e_phi"), ("polyp/cvc", "s_alpha"), ("polyp/cvc", "e_phi"),
          ("isic2017", "iou"), ("isic2017", "dice"), ("cod/camo", "s_alpha"), ("cod/camo", "e_phi"),
          ("cod/camo", "f_w_beta"), ("sbu", "ber"), ("leaf", "iou"), ("leaf", "dice"), ("road", "iou"),
          ("road", "dice")]
TRANS10K_V1 = [(f"trans10k_v1/{t}", m) for t in ("easy", "hard") for m in ("acc", "miou", "mae", "mber")]
CLASSES = ["bg", "shelf", "jar", "freezer", "window", "door", "eyeglass", "cup", "wall", "bowl", "bottle", "box"]
TRANS10K_V2 = [("trans10k_v2", f"iou_{c}") for c in CLASSES] + [("trans10k_v2", "acc"), ("trans10k_v2", "miou")]
TIMING = [("isic2017", "train_iter_per_s"), ("isic2017", "train_min_per_epoch"), ("isic2017", "infer_img_per_s")]
ISIC_ABLATION = [("isic2017", m) for m in ("iou", "tjac", "dice", "acc")]
LEAF_ABLATION = [("leaf", m) for m in ("iou", "dice", "acc")]
PARAMS = [("", "params_m")]
PEFT = [("Decoder-only", "decoder_only"), ("SAM-Adapter", "sam_adapter"), ("Mona", "mona"), ("BitFit", "bitfit"),
        ("VPT", "vpt"), ("LoRA", "lora"), ("Conv-LoRA", "conv_lora"), ("DoRA", "dora"), ("VeRA", "vera"),
        ("NAS-LoRA", "nas_lora"), ("NAS-PC-LoRA", "nas_pc_lora")]
SHORT = [r for r in PEFT if r[1] not in ("sam_adapter", "mona", "bitfit")]  # the multi-class tables' PEFT rows

# Per table: its rows in the printed order, (label as printed, method, the columns its numbers fill in order).
TABLES = {
    "Table 1": [(label, method, PARAMS + TABLE1) for label, method in
                [("Domain Specific", "domain_specific"), ("SAM (scratch)", "sam_scratch"), *PEFT]],
    "Table 2": [(label, method, PARAMS + TRANS10K_V1) for label, method in
                [("Translab (xie2020segmenting)", "translab"), *SHORT]],
    "Table 3": [(label, method, PARAMS + TRANS10K_V2) for label, method in
                [("Translab (xie2021segmenting)", "translab"), ("Trans2Seg (xie2021segmenting)", "trans2seg"), *SHORT]],
    "Table 5": [*[(label, method, TIMING) for label, method in
                  [("BitFit", "bitfit"), ("Adapter", "sam_adapter"), ("VPT", "vpt"), ("LoRA", "lora"),
                   ("Conv-LoRA", "conv_lora"), ("DoRA", "dora"), ("VeRA", "vera"), ("Ours (update )", "nas_pc_lora")]],
                # the second "Ours" row: architecture-update epochs, no iter/s printed ("-")
                ("Ours (update )", "nas_pc_lora", [("isic2017", "train_iter_per_s"),
                                                   ("isic2017", "train_min_per_epoch_search")])],
    "Table 6": [(label, method, ISIC_ABLATION) for label, method in
                [("NAS-PC-LoRA", "nas_pc_lora"), ("w/o convolution", "nas_pc_lora_no_conv"),
                 ("w/o pooling", "nas_pc_lora_no_pool"), ("w/o skip/no connection", "nas_pc_lora_no_skip_zero")]],
    "Table 7": [(label, method, [("trans10k_v2", "acc"), ("trans10k_v2", "miou")]) for label, method in
                [("4.009/0.62%", "nas_pc_lora"), ("4.50/0.70%", "nas_pc_lora_r6"), ("5.49/0.86%", "nas_pc_lora_r12"),
                 ("7.46/1.16%", "nas_pc_lora_r24")]],
    "Table 8": [(label, method, PARAMS + LEAF_ABLATION) for label, method in
                [("Layers {1,2,3,…,16}", "nas_pc_lora_first_half"), ("Layers {16,17,18,…,32}", "nas_pc_lora_last_half"),
                 ("Layers {1,2,3,…,32}", "nas_pc_lora")]],
    "Table 9": [(label, method, ISIC_ABLATION) for label, method in
                [("0 (update simultaneously)", "nas_pc_lora_arch0_simultaneous"),
                 ("0 (update stage-wisely)", "nas_pc_lora_arch0"), ("10 (ours)", "nas_pc_lora"),
                 ("20", "nas_pc_lora_arch20")]],
    "Table D1": [(label, method, PARAMS + LEAF_ABLATION) for label, method in
                 [("3/3 (NAS-LoRA)", "nas_lora"), ("2/3 (NAS-PC-LoRA)", "nas_pc_lora"), ("1/3", "nas_pc_lora_pc1")]],
}


def _value(token: str) -> str | None:
    """A printed cell as the CSV stores it: best-marks (*) dropped, Params(M)/Ratio(%) -> Params(M), Table 6's
    appended drop (76.91.3↓ = 76.9, 1.3 lower) removed; '-' (not reported) -> None."""
    token = token.rstrip("*")
    if token == "-":
        return None
    if "/" in token:
        return token.split("/")[0]  # "*" where the paper prints no count
    if token.endswith("↓"):
        return re.match(r"\d+\.\d", token).group()
    return token


def parse(table: str, text: str) -> list[tuple[str, str, str, str]]:
    """(method, dataset, metric, value) for every cell of `table`, read from its printed text."""
    cells, position = [], 0
    anchors = []
    for label, method, columns in TABLES[table]:
        match = re.compile(r"(?<![\w.\-/])" + re.escape(label) + r"(?![\w.])").search(text, position)
        assert match, f"{table}: row {label!r} not found after position {position}"
        anchors.append((match.start(), match.end(), method, columns))
        position = match.end()
    for i, (_, end, method, columns) in enumerate(anchors):
        stop = anchors[i + 1][0] if i + 1 < len(anchors) else len(text)
        tokens = [t for t in text[end:stop].split() if re.match(r"^[\d*\-]", t)]  # drop "PEFT methods." etc.
        if table == "Table 7":  # rows are labelled by their Params(M)/Ratio(%) cell
            tokens = tokens[:len(columns)]
        assert len(tokens) == len(columns), (table, method, tokens)
        cells += [(method, d, m, v) for (d, m), t in zip(columns, tokens) if (v := _value(t)) is not None]
    return cells


def paper_tables() -> dict[str, str]:
    lines = [ln for ln in TEXT.read_text().splitlines() if ln and not ln.startswith("#")]
    return dict(ln.split(": ", 1) for ln in lines)


@pytest.mark.parametrize("table", list(TABLES))
def test_every_transcribed_row_matches_the_papers_text(table):
    csv = pd.read_csv(REFERENCE_FILE, dtype=str, keep_default_na=False)
    ours = csv[csv["table"] == table]
    stored = sorted(zip(ours["method"], ours["dataset"], ours["metric"], ours["value"]))
    printed = sorted(parse(table, paper_tables()[table]))
    assert stored == printed


def test_table3_rows_are_twelve_category_ious_then_acc_and_miou():
    """The transcription error this guards against: Trans10K-v2 rows read two columns off."""
    csv = pd.read_csv(REFERENCE_FILE, dtype=str, keep_default_na=False)
    value = {(r.method, r.metric): r.value for r in csv[csv["table"] == "Table 3"].itertuples()}
    assert (value["nas_pc_lora", "acc"], value["nas_pc_lora", "miou"]) == ("95.31", "67.94")
    assert (value["nas_pc_lora", "iou_bg"], value["nas_pc_lora", "iou_box"]) == ("97.80", "52.08")
    assert (value["trans2seg", "acc"], value["trans2seg", "miou"]) == ("94.14", "72.15")
    assert (value["lora", "acc"], value["lora", "miou"]) == ("94.80", "66.01")


def test_every_reference_method_is_registered_or_a_named_baseline():
    from peftbench.methods import method_specs

    csv = pd.read_csv(REFERENCE_FILE, dtype=str, keep_default_na=False)
    baselines = {"domain_specific", "translab", "trans2seg"}
    assert set(csv["method"]) - baselines <= set(method_specs())
    assert set(csv["table"]) == set(TABLES)
