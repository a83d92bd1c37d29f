"""SAM architectures, parameter counts (paper Table 1) and checkpoint loading."""

import pytest
import torch
from segment_anything import sam_model_registry

from peftbench.backbone.sam import build_sam, load_sam, official_param_count
from peftbench.backbone.segmenter import SamSegmenter
from peftbench.errors import UserError
from peftbench.params import count_method, params_table


@pytest.mark.parametrize("name", ["vit_b", "vit_l", "vit_h"])
def test_official_architectures_match_segment_anything(name):
    with torch.device("meta"):
        ours, theirs = build_sam(name), sam_model_registry[name]()
    assert {k: v.shape for k, v in ours.state_dict().items()} == {k: v.shape for k, v in theirs.state_dict().items()}


def test_vit_h_parameter_counts_match_the_paper():
    assert official_param_count("vit_h") == 641_090_608  # Table 1 "SAM (scratch) 641.09"
    assert count_method("vit_h", "decoder_only") == 3_505_536  # 3.51 M
    assert count_method("vit_h", "lora") == 3_505_536 + 32 * (3 * 1280 + 3 * 1280 * 3)  # 4.00 M
    table = params_table("vit_h", "decoder_only,lora")[0].set_index("method")
    assert table.loc["decoder_only", "Ratio(%)"] == 0.55 and table.loc["lora", "Ratio(%)"] == 0.62
    assert table.loc["lora", "Params(M)"] == pytest.approx(4.00, abs=0.005)


def test_segmenter_shapes_and_mask_tokens_from_the_single_mask_token(tiny_segmenter):
    sam = load_sam("tiny")
    token0 = sam.mask_decoder.mask_tokens.weight[0].clone()
    model = SamSegmenter(sam, num_classes=3)
    assert torch.equal(model.mask_decoder.mask_tokens.weight, token0.expand(3, -1))
    assert len(model.mask_decoder.output_hypernetworks_mlps) == 1
    out = model(torch.randn(2, 3, 64, 64))
    assert out["mask_logits"].shape == (2, 3, 64, 64) and out["class_logits"].shape == (2, 3, 4)
    probs = model.probabilities(torch.randn(2, 3, 64, 64))
    torch.testing.assert_close(probs.sum(1), torch.ones(2, 64, 64))


def test_tiny_random_backbone_is_the_same_whatever_the_global_seed():
    torch.manual_seed(1)
    a = load_sam("tiny_random").state_dict()
    torch.manual_seed(2)
    b = load_sam("tiny_random").state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_official_checkpoint_file_loads_strictly(tmp_path):
    torch.manual_seed(0)
    reference = build_sam("vit_b")
    path = tmp_path / "sam_vit_b_01ec64.pth"
    torch.save(reference.state_dict(), path)
    loaded = load_sam("vit_b", path)
    assert not any(t.is_meta for t in [*loaded.parameters(), *loaded.buffers()])
    assert torch.equal(loaded.pixel_std, reference.pixel_std)
    for key, value in reference.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key


def test_checkpoint_of_the_wrong_architecture_names_the_right_one(tmp_path):
    path = tmp_path / "tiny.pth"
    torch.save(load_sam("tiny").state_dict(), path)
    with pytest.raises(UserError, match="looks like a tiny checkpoint: pass --sam tiny"):
        load_sam("vit_b", path)


def test_missing_or_corrupt_checkpoint(tmp_path):
    with pytest.raises(UserError, match="file not found"):
        load_sam("vit_b", tmp_path / "absent.pth")
    bad = tmp_path / "bad.pth"
    bad.write_text("not a checkpoint")
    with pytest.raises(UserError, match="not a readable PyTorch state dict"):
        load_sam("vit_b", bad)
    with pytest.raises(UserError, match="needs --checkpoint"):
        load_sam("vit_h")
