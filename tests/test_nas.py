"""NAS-LoRA / NAS-PC-LoRA: the cell, partial connection, merge, and the stage-wise schedule in the trainer."""

import dataclasses

import pytest
import torch
from torch import nn

import peftbench
from peftbench import train
from peftbench.data import dataset_cards
from peftbench.methods import method_specs
from peftbench.methods.lora import LoRALinear
from peftbench.methods.nas_lora import OPERATIONS, NASCell
from peftbench.runner import GridOptions, resolve_config


def nas_layer(**hparams) -> tuple[nn.Module, object]:
    torch.manual_seed(0)
    module = nn.Sequential()
    module.add_module("qkv", nn.Linear(8, 24))
    module.requires_grad_(False)
    method = peftbench.adapt(module, "nas_lora", targets=["qkv"], rank=3, alpha=6, **hparams)
    with torch.no_grad():
        module.qkv.lora_B.normal_()
        for m in module.modules():
            if isinstance(m, NASCell):
                m.alpha.normal_()
    return module, method


def test_cell_has_the_eight_operations_and_small_alpha():
    cell = NASCell(rank=3, searched=3, operations=OPERATIONS)
    assert len(cell.ops) == 8 and cell.alpha.shape == (8,) and cell.alpha.abs().max() < 0.01
    z = torch.randn(2, 5, 5, 3)
    assert cell(z).shape == z.shape
    torch.testing.assert_close(cell.weights().sum(), torch.tensor(1.0))


def test_all_zero_channel_mask_is_exactly_lora():
    module, _ = nas_layer(channel_ratio=0.0)
    layer = module.qkv
    plain = LoRALinear(nn.Linear(8, 24), 3, 6)
    plain.load_state_dict({k: v for k, v in layer.state_dict().items() if not k.startswith("bottleneck.")})
    x = torch.randn(2, 4, 4, 8)
    torch.testing.assert_close(layer(x), plain(x), rtol=0, atol=0)


def test_partial_connection_passes_the_other_channels_through():
    cell = NASCell(rank=3, searched=2, operations=OPERATIONS)
    z = torch.randn(2, 4, 4, 3)
    assert torch.equal(cell(z)[..., 2], z[..., 2])
    assert not torch.allclose(cell(z)[..., :2], z[..., :2])


def test_merge_is_exact_without_spatial_operations_and_measured_otherwise():
    x = torch.randn(2, 6, 6, 8)
    module, method = nas_layer(operations=["skip_connect", "none"], channel_ratio=2 / 3)
    before = module(x)
    method.merge(module)
    assert type(module.qkv) is nn.Linear
    torch.testing.assert_close(module(x), before, rtol=0, atol=1e-5)

    module, method = nas_layer()
    module.eval()
    before = module(x)
    method.merge(module)
    assert type(module.qkv) is nn.Linear and (module(x) - before).abs().max() > 1e-3  # convs and pools are dropped


def test_step_plan_follows_start_epoch_and_n1_n2():
    spec = method_specs()["nas_pc_lora"]
    method = dataclasses.replace(spec, hparams={**spec.hparams, "arch_start_epoch": 2, "weight_steps": 2,
                                                "arch_steps": 1}).build()
    assert method.step_plan(1, 0) == [["weights"]]
    assert [method.step_plan(2, s) for s in range(4)] == [[["arch"], ["weights"]], [["weights"]],
                                                          [["arch"], ["weights"]], [["weights"]]]
    both = method_specs()["nas_pc_lora_arch0_simultaneous"].build()
    assert both.step_plan(0, 0) == [["weights", "arch"]]
    assert method_specs()["nas_pc_lora"].build().milestones() == {"architecture updates start": 10}


def test_alpha_gets_gradients_only_in_architecture_steps_and_weights_only_in_weight_steps(monkeypatch):
    spec = method_specs()["nas_pc_lora"]
    spec = dataclasses.replace(spec, hparams={**spec.hparams, "arch_start_epoch": 1, "weight_steps": 2})
    card = dataset_cards()["synth_road"]
    config = resolve_config(spec, card, 0, GridOptions(device="cpu", epochs=2))
    events = []
    build = train.build_model

    def build_with_hooks(*args):
        model, method = build(*args)
        for m in model.modules():
            if isinstance(m, NASCell):
                m.alpha.register_hook(lambda g: events.append("arch"))
            if isinstance(m, LoRALinear):
                m.lora_A.register_hook(lambda g: events.append("weights"))
        model.mask_decoder.mask_tokens.weight.register_hook(lambda g: events.append("weights"))
        return model, method

    monkeypatch.setattr(train, "build_model", build_with_hooks)
    steps = []

    def on_step(epoch, step, steps_per_epoch, loss, groups):
        steps.append((epoch, step, tuple(groups), frozenset(events)))
        events.clear()

    result = train.train_run(config, card, spec, on_step)
    assert [g for e, s, g, _ in steps if e == 0] == [("weights",)] * 16
    expected = [g for s in range(16) for g in ([("arch",)] if s % 2 == 0 else []) + [("weights",)]]
    assert [g for e, s, g, _ in steps if e == 1] == expected
    for epoch, step, groups, fired in steps:
        assert fired == set(groups), (epoch, step, groups, fired)
    stats = result["statistics"]
    assert stats["operations"] == list(OPERATIONS) and sum(stats["distribution"]) == pytest.approx(1.0)
    assert result["milestones"] == {"architecture updates start": 1}
    assert result["merge"]["kind"] == "approximate" and result["merge"]["evaluated_model"] == "unmerged"
    assert result["merge"]["max_abs_diff_probabilities"] > 0 and "metric_delta" in result["merge"]
