"""NAS-LoRA / NAS-PC-LoRA: the cell, partial connection, merge, and the stage-wise schedule in the trainer."""

import dataclasses

import pytest
import torch
from torch import nn

import peftbench
from peftbench.data import dataset_cards
from peftbench.grid.runner import GridOptions, resolve_config
from peftbench.methods import method_specs
from peftbench.methods.lora import LoRALinear
from peftbench.methods.nas_lora import OPERATIONS, NASCell
from peftbench.training import train


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
    method = dataclasses.replace(spec, config=dataclasses.replace(spec.config, arch_start="1/2", weight_steps=2,
                                                                  arch_steps=1)).build()
    assert method.schedule(4, 4)["arch_start_epoch"] == 2
    assert method.step_plan(1, 0) == [["weights"]]
    assert [method.step_plan(2, s) for s in range(4)] == [[["arch"], ["weights"]], [["weights"]],
                                                          [["arch"], ["weights"]], [["weights"]]]
    assert method.milestones() == {"architecture updates start": 2}
    assert [method.selectable(e) for e in range(4)] == [False, False, True, True]
    both = method_specs()["nas_pc_lora_arch0_simultaneous"].build()
    both.schedule(12, 16)
    assert both.step_plan(0, 0) == [["weights", "arch"]] and both.selectable(0)


def _start(name: str, epochs: int, steps: int = 16) -> dict:
    return method_specs()[name].build().schedule(epochs, steps)


def test_schedule_rule_is_a_fraction_of_training_and_scales_the_search_to_the_papers_budget():
    # The paper: ISIC 2017, 30 epochs of 500 steps, architecture updates from epoch 10: exactly its settings.
    isic = _start("nas_pc_lora", 30, 500)
    assert isic["arch_start_epoch"] == 10 and isic["arch_steps_planned"] == 10_000 and isic["lr_scale"] == {"arch": 1.0}
    assert _start("nas_lora", 10)["arch_start_epoch"] == 3  # SBU's 10 epochs (was: start 10, no search at all)
    assert _start("nas_pc_lora", 6)["arch_start_epoch"] == 2  # --epochs 6
    mini = _start("nas_pc_lora", 12)  # a synthetic card: 64 images, batch 4
    assert mini["arch_start_epoch"] == 4 and mini["arch_steps_planned"] == 128
    assert mini["lr_scale"]["arch"] == pytest.approx(10_000 / 128)
    # Table 9's variants in the same rule: 0 (simultaneous), 0, 10 and 20 of 30 epochs.
    assert [_start(n, 30)["arch_start_epoch"] for n in ("nas_pc_lora_arch0_simultaneous", "nas_pc_lora_arch0",
                                                        "nas_pc_lora", "nas_pc_lora_arch20")] == [0, 0, 10, 20]
    assert _start("nas_pc_lora_arch20", 12)["arch_start_epoch"] == 8  # was 20 of 12: no search
    assert _start("nas_pc_lora_arch0_simultaneous", 12)["arch_steps_planned"] == 12 * 16


@pytest.mark.parametrize("name", [n for n, s in method_specs().items() if s.family == "nas_lora"])
def test_every_search_engages_on_every_registered_card_at_its_epochs(name):
    spec = method_specs()[name]
    for card in dataset_cards().values():
        config = resolve_config(spec, card, 0, GridOptions(device="cpu"))
        schedule = spec.build().schedule(config["epochs"], 1)
        assert 0 < schedule["search_epochs"] <= config["epochs"], (name, card.name)


def test_a_search_that_would_take_no_step_is_a_one_line_error(capsys):
    from peftbench.cli import main
    from peftbench.errors import UserError

    card = dataset_cards()["synth_leaf"]
    with pytest.raises(UserError, match="nas_pc_lora_arch20 on synth_leaf with 1 epochs: the architecture search "
                                        "would take no step"):
        resolve_config(method_specs()["nas_pc_lora_arch20"], card, 0, GridOptions(device="cpu", epochs=1))
    assert main(["run", "--methods", "lora,nas_pc_lora_arch20", "--datasets", "synth_leaf", "--epochs", "1",
                 "--device", "cpu", "--out", "unused"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "nas_pc_lora_arch20" in err and "synth_leaf" in err and "1 epochs" in err


def test_a_six_epoch_run_searches_and_the_record_says_so():
    """--epochs 6: the search runs epochs 2-5, moves the operation distribution off uniform, and the tested weights
    are a searched model; weight and architecture passes are timed apart (the paper's Table 5)."""
    spec, card = method_specs()["nas_pc_lora"], dataset_cards()["synth_leaf"]
    record = train.train_run(resolve_config(spec, card, 0, GridOptions(device="cpu", epochs=6)), card, spec)
    schedule, stats = record["schedule"], record["statistics"]
    assert schedule["arch_start_epoch"] == 2 and schedule["arch_steps_planned"] == 4 * 16
    assert schedule["lr"]["arch"] == pytest.approx(6e-4 * 10_000 / 64)
    assert stats["architecture_steps"] == 64 and [h["arch_steps"] for h in record["history"]] == [0, 0, 16, 16, 16, 16]
    assert stats["max_abs_deviation"] >= 0.01 and stats["search_engaged"]
    assert stats["entropy"] < stats["entropy_uniform"]
    assert record["selection"]["best_epoch"] >= 2 and record["selection"]["first_selectable_epoch"] == 2
    timing = record["timing"]
    assert {"train_iter_per_s", "arch_iter_per_s", "train_min_per_epoch", "train_min_per_epoch_search"} <= set(timing)
    assert timing["train_min_per_epoch_search"] > timing["train_min_per_epoch"]


def test_alpha_gets_gradients_only_in_architecture_steps_and_weights_only_in_weight_steps(monkeypatch):
    spec = method_specs()["nas_pc_lora"]
    spec = dataclasses.replace(spec, config=dataclasses.replace(spec.config, arch_start="1/2", weight_steps=2))
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
