"""Every registered method, parametrized over the registry, plus LoRA's exactness properties."""

import pytest
import torch
from torch import nn

import peftbench
from peftbench.data import build_splits, dataset_cards
from peftbench.errors import UserError
from peftbench.methods import method_specs
from peftbench.methods.lora import LoRALinear
from peftbench.train import task_loss

METHODS = list(method_specs())


@pytest.mark.parametrize("name", METHODS)
@pytest.mark.parametrize("dataset", ["synth_road", "synth_shapes"])
def test_every_method_trains_and_lowers_the_loss(name, dataset, tiny_segmenter):
    card = dataset_cards()[dataset]
    model = tiny_segmenter(card.num_classes)
    method = method_specs()[name].build()
    method.attach(model)
    groups = method.parameter_groups(model)
    params = [p for ps in groups.values() for p in ps]
    assert params and all(p.requires_grad for p in params)
    assert not any(p.requires_grad for p in model.prompt_encoder.parameters())
    assert not any(p.requires_grad for p in model.mask_decoder.iou_prediction_head.parameters())
    data = build_splits(card, model.img_size)["train"]
    x, y = map(torch.stack, zip(*[data[i] for i in range(4)]))
    config = {"w_seg": 1.0, "w_cls": 1.0}
    opt = torch.optim.AdamW(params, lr=1e-3)

    def loss_now():
        loss = task_loss(model(x), y, card, config)
        extra = method.extra_loss(model)
        return loss + extra if extra is not None else loss

    first = loss_now()
    for _ in range(5):
        opt.zero_grad()
        loss_now().backward()
        opt.step()
    assert loss_now().item() < first.item()


def _lora_model(tiny_segmenter):
    model = tiny_segmenter()
    method = method_specs()["lora"].build()
    method.attach(model)
    return model, method


def test_lora_wraps_every_qkv_with_the_paper_shapes(tiny_segmenter):
    model, _ = _lora_model(tiny_segmenter)
    wrapped = [m for m in model.modules() if isinstance(m, LoRALinear)]
    assert len(wrapped) == len(model.image_encoder.blocks)
    c = model.image_encoder.blocks[0].attn.qkv.base.in_features
    assert wrapped[0].lora_A.shape == (3, c) and wrapped[0].lora_B.shape == (3 * c, 3)
    assert wrapped[0].scaling == pytest.approx(32 / 3)


def test_lora_with_zero_b_leaves_outputs_unchanged(tiny_segmenter):
    x = torch.randn(2, 3, 64, 64)
    plain = tiny_segmenter()
    model, _ = _lora_model(tiny_segmenter)
    with torch.no_grad():
        torch.testing.assert_close(model(x)["mask_logits"], plain(x)["mask_logits"], rtol=0, atol=1e-6)
        for m in model.modules():  # a non-zero B must change them, or the test above proves nothing
            if isinstance(m, LoRALinear):
                m.lora_B.normal_()
        assert (model(x)["mask_logits"] - plain(x)["mask_logits"]).abs().max() > 1e-3


def test_lora_merge_matches_unmerged_and_leaves_plain_linear(tiny_segmenter):
    model, method = _lora_model(tiny_segmenter)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, LoRALinear):
                m.lora_B.normal_(std=0.05)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        before = model(x)["mask_logits"]
        method.merge(model)
        after = model(x)["mask_logits"]
    assert not any(isinstance(m, LoRALinear) for m in model.modules())
    assert all(type(b.attn.qkv) is nn.Linear for b in model.image_encoder.blocks)
    torch.testing.assert_close(after, before, rtol=0, atol=1e-5)


def test_adapt_applies_a_method_to_any_module_by_target_names():
    block = nn.Sequential()
    block.add_module("qkv", nn.Linear(8, 24))
    block.add_module("proj", nn.Linear(8, 8))
    block.requires_grad_(False)
    peftbench.adapt(block, "lora", targets=["qkv"], rank=2, alpha=4)
    assert isinstance(block.qkv, LoRALinear) and block.qkv.lora_A.shape == (2, 8)
    assert type(block.proj) is nn.Linear
    assert [n for n, p in block.named_parameters() if p.requires_grad] == ["qkv.lora_A", "qkv.lora_B"]


def test_adapt_rejects_targets_that_match_nothing():
    with pytest.raises(UserError, match="matched no Linear"):
        peftbench.adapt(nn.Sequential(nn.Linear(4, 4)), "lora", targets=["qkv"])
