"""Every registered method, parametrized over the registry, plus each family's defining properties."""

import re

import pytest
import torch
from segment_anything.modeling.image_encoder import Block
from torch import nn

import peftbench
from peftbench.data import build_splits, dataset_cards
from peftbench.errors import UserError
from peftbench.methods import method_specs
from peftbench.methods.base import trainable_state
from peftbench.methods.conv_lora import MoEConv
from peftbench.methods.dora import DoRALinear
from peftbench.methods.lora import LoRALinear
from peftbench.methods.mona import Mona
from peftbench.methods.sam_adapter import high_frequency
from peftbench.methods.vera import VeRALinear
from peftbench.methods.vpt import PromptedBlock
from peftbench.params import count_method
from peftbench.training.config import StepConfig
from peftbench.training.train import task_loss

METHODS = list(method_specs())
C_H = 1280  # vit_h width
DECODER_H = 3_505_536  # trainable mask-decoder parameters on vit_h (paper: 3.51 M)



def attached(tiny_segmenter, name, num_classes=1, seed=0):
    model = tiny_segmenter(num_classes)
    torch.manual_seed(seed)
    method = method_specs()[name].build()
    method.attach(model)
    return model, method


def perturb_trainables(model, seed=1):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.05 * torch.randn(p.shape, generator=gen))


@pytest.mark.parametrize("name", METHODS)
@pytest.mark.parametrize("dataset", ["synth_road", "synth_trans"])
def test_every_method_trains_and_lowers_the_loss(name, dataset, tiny_segmenter):
    card = dataset_cards()[dataset]
    model, method = attached(tiny_segmenter, name, card.num_classes)
    groups = method.parameter_groups(model)
    params = [p for ps in groups.values() for p in ps]
    assert params and all(p.requires_grad for p in params)
    data = build_splits(card, model.img_size)["train"]
    x, y = map(torch.stack, zip(*[data[i] for i in range(4)]))
    out = model(x)
    assert out["mask_logits"].shape == (4, 1 if card.num_classes == 1 else card.num_classes, 64, 64)
    config = StepConfig(lr=1e-3, group_optim={}, epochs=1, precision="fp32")  # its loss weights
    opt = torch.optim.AdamW(params, lr=1e-3)

    def loss_now():
        loss = task_loss(model(x), y, card, config)
        extra = method.extra_loss(model)
        return loss + extra if extra is not None else loss

    torch.manual_seed(0)
    first = loss_now()
    for _ in range(5):
        opt.zero_grad()
        loss_now().backward()
        opt.step()
    torch.manual_seed(0)
    assert loss_now().item() < first.item()


@pytest.mark.parametrize("name", METHODS)
def test_only_the_intended_parameters_receive_gradients(name, tiny_segmenter):
    model, method = attached(tiny_segmenter, name)
    loss = model(torch.randn(2, 3, 64, 64))["mask_logits"].sum()
    extra = method.extra_loss(model)
    (loss if extra is None else loss + extra).backward()
    with_grad = {n for n, p in model.named_parameters() if p.grad is not None}
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert with_grad <= trainable
    pattern = type(method).encoder_trainable  # declared by the family
    encoder = {n.removeprefix("image_encoder.") for n in trainable if n.startswith("image_encoder.")}
    expected = {n for n, _ in model.image_encoder.named_parameters() if pattern and re.fullmatch(pattern, n)}
    assert encoder == expected and (pattern is None or expected)
    outside = {n for n in trainable if not n.startswith("image_encoder.")}
    decoder = {f"mask_decoder.{n}" for n, _ in model.mask_decoder.named_parameters()
               if not n.startswith("iou_prediction_head.")}
    assert outside == decoder


@pytest.mark.parametrize("name", METHODS)
def test_adapters_defined_as_identity_at_init_leave_outputs_unchanged(name, tiny_segmenter):
    x = torch.randn(2, 3, 64, 64)
    model, method = attached(tiny_segmenter, name)
    plain = tiny_segmenter()
    model.eval(), plain.eval()
    with torch.no_grad():
        gap = (model(x)["mask_logits"] - plain(x)["mask_logits"]).abs().max().item()
    if type(method).identity_at_init:  # declared by the family
        assert gap < 1e-5
    else:
        assert gap > 1e-6  # prompts / adapters are random at init, as their references


@pytest.mark.parametrize("name", METHODS)
def test_saved_adapter_state_reproduces_outputs(name, tiny_segmenter):
    x = torch.randn(2, 3, 64, 64)
    model, _ = attached(tiny_segmenter, name, seed=0)
    perturb_trainables(model)
    other, _ = attached(tiny_segmenter, name, seed=7)
    model.eval(), other.eval()
    with torch.no_grad():
        expected = model(x)["mask_logits"]
        assert (other(x)["mask_logits"] - expected).abs().max() > 1e-4
        other.load_state_dict(trainable_state(model), strict=False)
        torch.testing.assert_close(other(x)["mask_logits"], expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize("name", METHODS)
def test_samples_of_a_batch_never_mix(name, tiny_segmenter):
    model, _ = attached(tiny_segmenter, name)
    perturb_trainables(model)
    model.eval()
    x = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        together = model(x)["mask_logits"]
        alone = torch.cat([model(x[i: i + 1])["mask_logits"] for i in range(3)])
    torch.testing.assert_close(together, alone, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", METHODS)
def test_merge_is_exact_where_the_registry_says_so(name, tiny_segmenter):
    model, method = attached(tiny_segmenter, name, num_classes=3)
    perturb_trainables(model)
    model.eval()
    x = torch.randn(2, 3, 64, 64)
    if method.merge_kind == "none":
        with pytest.raises(NotImplementedError):
            method.merge(model)
        return
    with torch.no_grad():
        before = model(x)
        method.merge(model)
        after = model(x)
    if method.merge_kind == "exact":  # up to float32 rounding, which grows with the pretrained SAM's larger logits
        for key in before:
            torch.testing.assert_close(after[key], before[key], rtol=1e-5, atol=1e-5)
    # What is left is the plain SAM segmenter: same modules, same parameter names and shapes.
    plain = tiny_segmenter(3)
    assert {k: v.shape for k, v in model.state_dict().items()} == {k: v.shape for k, v in plain.state_dict().items()}
    assert [type(m) for m in model.modules()] == [type(m) for m in plain.modules()]


EXPECTED_VIT_H = {  # trainable parameters on vit_h, derived by hand from each reference definition
    "decoder_only": DECODER_H,
    "lora": DECODER_H + 32 * 4 * C_H * 3,
    "conv_lora": DECODER_H + 32 * 16_080,  # the Conv-LoRA authors' ConvLoRALinear + MoEGate (autogluon)
    "dora": DECODER_H + 32 * (4 * C_H * 3 + 3 * C_H),
    "vera": DECODER_H + 32 * (3 * C_H + 256),
    "bitfit": DECODER_H + 32 * 14_080 + C_H + 2 * 256,
    "vpt": DECODER_H + 32 * 12 * C_H,
    "sam_adapter": DECODER_H + 186_960,  # SAM-Adapter's prompt generator, C' = C/32 (official code)
    "mona": DECODER_H + 64 * 179_968,
    "full_ft": DECODER_H + 637_026_048,
    "lora_plus": DECODER_H + 32 * 4 * C_H * 3,  # LoRA's model; only B's learning rate differs
    "ssf": DECODER_H + 32 * 2 * (3 * C_H + C_H + 4 * C_H + C_H),  # scale + shift after qkv, proj, lin1, lin2
}


NAS_OP_PARAMS = {  # per searched channel count k, from the PC-DARTS operation definitions
    "sep_conv_3x3": lambda k: 2 * (9 * k + k * k), "sep_conv_5x5": lambda k: 2 * (25 * k + k * k),
    "dil_conv_3x3": lambda k: 9 * k + k * k, "dil_conv_5x5": lambda k: 25 * k + k * k,
}


def expected_vit_h(spec) -> int:
    if spec.family not in EXPECTED_VIT_H and spec.family != "nas_lora":
        pytest.skip(f"no hand-derived vit_h count for family {spec.family} yet (its docs/methods.md row is checked "
                    "against `peftbench params` by tests/test_docs.py)")
    if spec.family != "nas_lora":
        return EXPECTED_VIT_H[spec.family]
    h = spec.hparams
    r, k = h["rank"], round(h["channel_ratio"] * h["rank"])
    cell = sum(NAS_OP_PARAMS.get(op, lambda k: 0)(k) for op in h["operations"]) + len(h["operations"])
    blocks = 32 if h["blocks"] == "all" else 16
    return DECODER_H + blocks * (4 * C_H * r + cell)


def test_nas_lora_counts_are_the_papers_within_one_percent():
    assert count_method("vit_h", "nas_lora") == DECODER_H + 32 * (4 * C_H * 3 + 360 + 8)  # 4.0088 M (paper 4.016)
    assert count_method("vit_h", "nas_pc_lora") == DECODER_H + 32 * (4 * C_H * 3 + 228 + 8)  # 4.0046 M (4.009)
    assert count_method("vit_h", "nas_lora") / 1e6 == pytest.approx(4.016, rel=0.01)
    assert count_method("vit_h", "nas_pc_lora") / 1e6 == pytest.approx(4.009, rel=0.01)


@pytest.mark.parametrize("name", METHODS)
def test_vit_h_parameter_counts(name):
    spec = method_specs()[name]
    ours = count_method("vit_h", name)
    assert ours == expected_vit_h(spec)
    paper = spec.paper.get("params_m")
    if paper is not None and abs(ours / 1e6 - paper) > 0.01 * paper:
        assert spec.paper.get("params_note"), f"{name} differs from the paper's {paper} M without a note"


def test_lora_wraps_every_qkv_with_the_paper_shapes(tiny_segmenter):
    model, _ = attached(tiny_segmenter, "lora")
    wrapped = [m for m in model.modules() if isinstance(m, LoRALinear)]
    assert len(wrapped) == len(model.image_encoder.blocks)
    c = model.image_encoder.blocks[0].attn.qkv.base.in_features
    assert wrapped[0].lora_A.shape == (3, c) and wrapped[0].lora_B.shape == (3 * c, 3)
    assert wrapped[0].scaling == pytest.approx(32 / 3)


def test_dora_matches_its_definition_with_a_detached_norm():
    torch.manual_seed(0)
    layer = DoRALinear(nn.Linear(6, 9), rank=2, alpha=4)
    with torch.no_grad():
        layer.lora.lora_B.normal_()
        layer.magnitude.mul_(1.5)
    w, b = layer.lora.base.weight, layer.lora.base.bias
    torch.testing.assert_close(layer.magnitude / 1.5, w.norm(dim=1))
    x = torch.randn(4, 6)
    full = w + layer.lora.delta_weight()
    expected = x @ ((layer.magnitude / full.norm(dim=1)).unsqueeze(1) * full).T + b
    torch.testing.assert_close(layer(x), expected)
    # The norm is a constant: the gradient wrt m is the normalised direction applied to x.
    layer(x).sum().backward()
    direction = full / full.norm(dim=1, keepdim=True)
    torch.testing.assert_close(layer.magnitude.grad, (x @ direction.T).sum(0).detach())


def test_vera_shares_one_seeded_projection_as_peft():
    model = nn.Sequential(nn.Linear(8, 24), nn.Linear(8, 6)).requires_grad_(False)
    method = peftbench.adapt(model, "vera", targets=["0", "1"], rank=4)
    layers = [m for m in model.modules() if isinstance(m, VeRALinear)]
    assert layers[0].projection is layers[1].projection
    gen = torch.Generator().manual_seed(0)
    a = torch.empty(4, 8).uniform_(-(6 / 8) ** 0.5, (6 / 8) ** 0.5, generator=gen)
    b = torch.empty(24, 4).uniform_(-(6 / 4) ** 0.5, (6 / 4) ** 0.5, generator=gen)
    assert torch.equal(layers[0].projection.A, a) and torch.equal(layers[0].projection.B, b)
    assert [n for n, p in model.named_parameters() if p.requires_grad] == [
        "0.lambda_d", "0.lambda_b", "1.lambda_d", "1.lambda_b"]
    assert torch.all(layers[0].lambda_d == 0.1) and torch.all(layers[0].lambda_b == 0)
    assert method.merge_kind == "exact"


def test_conv_lora_experts_routing_and_balance_loss():
    moe = MoEConv(rank=3, num_experts=8)
    assert [e.ratio for e in moe.experts] == list(range(1, 9))
    per_block = 3 * C_H + 3 * C_H * 3 + 2 * 3 * 8 + 8 * (9 * 9 + 3)
    assert per_block == 16_080
    z = torch.randn(5, 4, 4, 3, requires_grad=True)
    moe.train()
    out = moe(z)
    assert out.shape == z.shape and moe.balance_loss.item() >= 0
    # The task loss reaches the experts but not the router (gate values are not multiplied in, as the reference);
    # the router learns from the balance loss only.
    out.sum().backward(retain_graph=True)
    assert moe.w_gate.grad is None and any(e.conv.weight.grad is not None for e in moe.experts)
    moe.balance_loss.backward()
    assert moe.w_noise.grad is not None and moe.w_noise.grad.abs().sum() > 0
    moe.eval()
    with torch.no_grad():
        moe.w_gate[:, 4] = 1.0  # every map with a positive mean channel sum goes to expert 5 (x5 upsampling)
        z = torch.ones(2, 4, 4, 3)
        torch.testing.assert_close(moe(z), z + moe.experts[4](z.permute(0, 3, 1, 2)).permute(0, 2, 3, 1))


def test_vpt_with_no_prompts_is_the_plain_block(tiny_segmenter):
    model = tiny_segmenter()
    x = torch.randn(2, 8, 8, model.image_encoder.blocks[0].norm1.normalized_shape[0])
    for block in model.image_encoder.blocks:  # windowed and global blocks
        prompted = PromptedBlock(block, num_tokens=0, patch_size=8)
        with torch.no_grad():
            torch.testing.assert_close(prompted(x), block(x), rtol=1e-5, atol=1e-5)


def test_vpt_prompt_count_and_init_bound():
    prompted = PromptedBlock(Block(dim=64, num_heads=2), num_tokens=12, patch_size=16)
    assert prompted.prompts.shape == (12, 64)
    assert prompted.prompts.abs().max() <= (6 / (3 * 16 * 16 + 64)) ** 0.5


def test_sam_adapter_high_frequency_component():
    flat = torch.full((1, 3, 16, 16), 0.7)
    assert high_frequency(flat).abs().max() < 1e-6  # a constant image has no high frequencies
    checker = (torch.arange(16)[:, None] + torch.arange(16)[None]) % 2 * 2.0 - 1.0
    image = checker.expand(1, 3, 16, 16)
    torch.testing.assert_close(high_frequency(image), image.abs())  # the highest frequency passes untouched


def test_mona_parameter_count_and_near_identity():
    assert sum(p.numel() for p in Mona(C_H).parameters()) == 179_968
    mona = Mona(16).eval()
    x = torch.randn(2, 5, 5, 16)
    assert (mona(x) - x).abs().max() < 0.5


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


def test_variants_inherit_their_base_and_a_missing_base_is_a_clear_error(tmp_path):
    (tmp_path / "ablations").mkdir()
    (tmp_path / "lora.toml").write_text('family = "lora"\n[hparams]\nrank = 3\nalpha = 32\n[paper]\nparams_m = 4.0\n')
    (tmp_path / "ablations" / "lora_r8.toml").write_text('base = "lora"\nablation = "T"\n[hparams]\nrank = 8\n')
    specs = method_specs(tmp_path)
    assert specs["lora_r8"].config.rank == 8 and specs["lora_r8"].config.alpha == 32
    assert specs["lora_r8"].family == "lora" and specs["lora_r8"].baseline == "lora"
    assert specs["lora_r8"].ablation == "T" and specs["lora_r8"].paper == {}
    (tmp_path / "ablations" / "bad.toml").write_text('base = "nope"\n')
    with pytest.raises(UserError, match="base method 'nope'"):
        method_specs(tmp_path)


def test_keywords_all_ablations_and_miniature():
    from peftbench.methods.registry import MINIATURE, resolve_methods

    main = {m.name for m in resolve_methods("all")}
    assert "decoder_only_random" not in main and {"sam_scratch", "nas_pc_lora"} <= main  # a control, a paper row
    assert not main & {m.name for m in resolve_methods("ablations")}
    assert [m.name for m in resolve_methods("miniature")] == MINIATURE
    assert method_specs()["decoder_only_random"].backbone == method_specs()["sam_scratch"].backbone == "random"


@pytest.mark.parametrize("name, text, message", [
    ("bad_lr", '[train]\nlr = "abc"\n', "[train] lr must be a positive number, not 'abc'"),
    ("zero_lr", "[train]\nlr = 0\n", "[train] lr must be a positive number, not 0"),
    ("float_epochs", "[train]\nepochs = 2.5\n", "[train] epochs must be a positive integer, not 2.5"),
    ("bool_epochs", "[train]\nepochs = true\n", "[train] epochs must be a positive integer, not True"),
    ("group_lr", '[train.group_optim.arch]\nlr = "fast"\n',
     "[train.group_optim.arch] lr must be a positive number, not 'fast'"),
    ("not_a_table", "train = 3\n", "[train] must be a table, not 3"),
    (".hidden", "", "the method name (the file's name) must be a single folder name"),
])
def test_bad_train_values_and_method_names_are_one_line_errors_before_any_run(name, text, message, tmp_path, capsys):
    from peftbench.cli import main

    path = tmp_path / f"{name}.toml"
    path.write_text('family = "lora"\n' + text + '[hparams]\nrank = 3\nalpha = 32\n')
    assert main(["run", "--methods", str(path), "--datasets", "synth_road", "--seeds", "0", "--device", "cpu",
                 "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(path) in err and message in err, err
    assert not (tmp_path / "out").exists()
