"""The contributor interface: typed method configs, plug-in methods and cards, the trainer's hooks, the two methods
added through it (SSF, LoRA+), and a regular (non-editable) install."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

import peftbench
from peftbench.data import build_splits, dataset_cards, resolve_dataset
from peftbench.errors import UserError
from peftbench.methods import Method, get_method, method_specs, resolve_methods
from peftbench.methods.lora import LoRALinear
from peftbench.methods.ssf import ScaleShiftLinear
from peftbench.training.config import StepConfig
from peftbench.training.train import optimization_for, train_step

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "docs" / "examples"
LORA = 'family = "lora"\ndescription = "x"\n'


def write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.write_text(text)
    return path


@pytest.mark.parametrize(("text", "message"), [
    (LORA + "[hparams]\nrnak = 6\n", r"unknown hyper-parameter 'rnak'; did you mean 'rank'\?"),
    (LORA + 'abaltion = "Table 9"\n', r"unknown key 'abaltion'; did you mean 'ablation'\?"),
    (LORA + "[hparams]\nrank = \"three\"\n", r"hyper-parameter 'rank': expected int, got 'three'"),
    (LORA + "[hparams]\nrank = 0\n", r"rank must be at least 1"),
    (LORA + "[train]\nlr = 1e-4\nepoch = 3\n", r"\[train\]: unknown key 'epoch'; did you mean 'epochs'\?"),
    (LORA + "[train.group_optim.weights]\nlrr = 1e-3\n", r"\[train.group_optim.weights\]: unknown key 'lrr'"),
    (LORA + "[paper]\nparams = 4.0\n", r"\[paper\]: unknown key 'params'"),
    ('family = "nas_lora"\n[hparams]\narch_start = "30/30"\n', r"arch_start 30/30 must be a fraction"),
    ('family = "nas_lora"\n[hparams]\noperations = ["sep_conv_3x3", "conv_9x9"]\n', r"choose among"),
    ('family = "nope"\n', r"family 'nope' is not one of"),
])
def test_a_bad_key_or_value_in_a_method_file_is_one_error_naming_file_and_key(tmp_path, text, message):
    path = write(tmp_path, "mine.toml", text)
    with pytest.raises(UserError, match=message) as err:
        method_specs(tmp_path)
    assert str(err.value).startswith(str(path)) and "\n" not in str(err.value)


def test_defaults_live_in_the_family_config_and_the_record_holds_them_all(tmp_path):
    write(tmp_path, "lora_min.toml", LORA)
    spec = method_specs(tmp_path)["lora_min"]
    assert (spec.config.rank, spec.config.alpha, spec.config.targets) == (3, 32, ("attn.qkv",))
    assert spec.as_dict()["hparams"] == {"rank": 3, "alpha": 32, "targets": ("attn.qkv",), "scope": "image_encoder"}
    # The registered method states the same values: the file and the defaults agree, so its config (and the hash of
    # every finished record) is what it was before the configs were typed.
    assert method_specs()["lora"].hparams == spec.hparams


PLUGIN = '''
from dataclasses import dataclass
from peftbench.methods import Method, MethodConfig

@dataclass(frozen=True)
class HalfConfig(MethodConfig):
    factor: float = 0.5

class Halved(Method):
    """A toy family that attaches nothing: it only has to be a Method with a config."""
    family = "halved"
    config_class = HalfConfig
    merge_kind = "exact"
    identity_at_init = True

    def attach(self, model):
        return model
'''


def test_a_plugin_family_is_found_beside_its_toml_and_its_hparams_are_checked(tmp_path):
    write(tmp_path, "halved_module.py", PLUGIN)
    path = write(tmp_path, "halved.toml", 'family = "halved_module:Halved"\n[hparams]\nfactor = 0.25\n')
    spec = get_method(str(path))
    assert spec.name == "halved" and spec.build().config.factor == 0.25 and spec.info()["family"] == "halved_module:Halved"
    assert [s.name for s in resolve_methods(f"lora,{path}")] == ["lora", "halved"]
    write(tmp_path, "typo.toml", 'family = "halved_module:Halved"\n[hparams]\nfactr = 1\n')
    with pytest.raises(UserError, match="unknown hyper-parameter 'factr'"):
        get_method(str(tmp_path / "typo.toml"))
    write(tmp_path, "missing.toml", 'family = "halved_module:Nope"\n')
    with pytest.raises(UserError, match="has no peftbench Method subclass 'Nope'"):
        get_method(str(tmp_path / "missing.toml"))
    write(tmp_path, "lora.toml", LORA)  # a user file may not take a registered name: records are filed by name
    with pytest.raises(UserError, match="a registered method is named 'lora'"):
        get_method(str(tmp_path / "lora.toml"))


def test_a_user_card_file_is_read_and_checked_like_a_registered_one(tmp_path):
    card = resolve_dataset(str(EXAMPLES / "my_card.toml"))
    assert card.name == "my_leaf" and card.source == "synthetic" and card.name not in dataset_cards()
    registered = (ROOT / "datasets" / "synth_leaf.toml").read_text()
    write(tmp_path, "synth_leaf.toml", registered)
    with pytest.raises(UserError, match="a registered card is named 'synth_leaf'"):
        resolve_dataset(str(tmp_path / "synth_leaf.toml"))
    write(tmp_path, "bad.toml", registered.replace("epochs", "epoch"))
    with pytest.raises(UserError, match="bad.toml"):
        resolve_dataset(str(tmp_path / "bad.toml"))


def test_the_documented_plugin_method_and_card_train_end_to_end(tmp_path):
    """docs/contributing.md's example, as a user runs it: from another folder, each run in its own process (the
    plug-in module is found there too)."""
    out = tmp_path / "out"
    done = subprocess.run([sys.executable, "-m", "peftbench", "run", "--methods", str(EXAMPLES / "scaled_lora.toml"),
                           "--datasets", str(EXAMPLES / "my_card.toml"), "--seeds", "0", "--epochs", "1",
                           "--out", str(out)], cwd=tmp_path, capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    assert (out / "runs" / "my_leaf" / "scaled_lora" / "seed0.json").is_file()


def test_adapt_says_when_a_method_needs_a_sam_model_and_checks_overrides():
    block = nn.Sequential()
    block.add_module("qkv", nn.Linear(8, 24))
    for name in ("vpt", "mona", "sam_adapter", "full_ft"):
        with pytest.raises(UserError, match=f"{name} changes SAM's image encoder itself"):
            peftbench.adapt(block, name)
    with pytest.raises(UserError, match="unknown hyper-parameter 'rnak'"):
        peftbench.adapt(block, "lora", targets=["qkv"], rnak=2)
    bitfit = peftbench.adapt(nn.Sequential(nn.Linear(4, 4)).requires_grad_(False), "bitfit")
    assert bitfit.config.scope == ""  # a bare module has no SAM scope: its own biases train


def _tiny_run(tiny_segmenter, spec, card_name="synth_leaf"):
    card = dataset_cards()[card_name]
    model = tiny_segmenter(card.num_classes)
    method = spec.build()
    method.attach(model)
    config = StepConfig(lr=1e-3, group_optim=spec.train.get("group_optim", {}), epochs=2, precision="fp32",
                        optimizer_kernel="fused")
    groups = method.parameter_groups(model)
    optimization, schedule = optimization_for(method, groups, config, steps_per_epoch=2, device=torch.device("cpu"))
    data = build_splits(card, model.img_size, keys=True)["train"]
    batches = [[tuple(t.unsqueeze(0) if torch.is_tensor(t) else torch.tensor([t]) for t in data[i])]
               for i in range(2)]
    return model, method, card, config, optimization, schedule, batches


def test_lora_plus_steps_b_at_lr_ratio_times_the_cards_rate(tiny_segmenter):
    spec = method_specs()["lora_plus"]
    model, method, card, config, optimization, schedule, batches = _tiny_run(tiny_segmenter, spec)
    b = {id(m.lora_B) for m in model.modules() if isinstance(m, LoRALinear)}
    groups = method.parameter_groups(model)
    assert {id(p) for p in groups["lora_B"]} == b and not b & {id(p) for p in groups["weights"]}
    assert schedule["lr"] == {"weights": 1e-3, "lora_B": 16e-3}
    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    for i, batch in enumerate(batches):
        train_step(model, method, optimization, batch, [list(groups)], card, config, torch.device("cpu"), i, 4)
    moved = {n for n, p in model.named_parameters() if p.requires_grad and not torch.equal(p, before[n])}
    assert any(n.endswith("lora_B") for n in moved) and any(n.endswith("lora_A") for n in moved)


class Recorder(Method):
    """A method whose only job is to record what the trainer's hook hands it."""

    family = "recorder"
    identity_at_init = True

    def __init__(self, config=None):
        super().__init__(config)
        self.calls = []

    def attach(self, model):
        return model

    def after_backward(self, model, step, total_steps):
        grads = [p.grad for p in model.parameters() if p.requires_grad]
        self.calls.append((step, total_steps, all(g is not None for g in grads), float(sum(g.norm() ** 2 for g in grads))))


def test_after_backward_sees_clipped_gradients_before_every_update(tiny_segmenter):
    spec = method_specs()["decoder_only"]
    model, _, card, config, optimization, _, batches = _tiny_run(tiny_segmenter, spec)
    recorder = Recorder()
    optimization.grad_clip = 1e-3
    for i, batch in enumerate(batches):
        train_step(model, recorder, optimization, batch, [["weights"]], card, config, torch.device("cpu"), i, 4)
    assert [c[:3] for c in recorder.calls] == [(0, 4, True), (1, 4, True)]
    assert all(c[3] ** 0.5 <= 1e-3 * (1 + 1e-4) for c in recorder.calls)  # clipped before the hook sees them


def test_ssf_is_a_scale_and_shift_of_each_block_linear_and_merges_exactly(tiny_segmenter):
    model = tiny_segmenter()
    method = method_specs()["ssf"].build()
    method.attach(model)
    wrapped = {n for n, m in model.named_modules() if isinstance(m, ScaleShiftLinear)}
    blocks = len(model.image_encoder.blocks)
    assert len(wrapped) == 4 * blocks
    layer = model.image_encoder.blocks[0].attn.proj
    x = torch.randn(5, layer.base.in_features)
    with torch.no_grad():
        expected = layer.ssf_scale * (x @ layer.base.weight.T + layer.base.bias) + layer.ssf_shift
        torch.testing.assert_close(layer(x), expected)
        assert (layer.ssf_scale - 1).abs().max() > 0  # the official N(1, 0.02) init, not exactly the identity
        plain = layer.merged()
        assert type(plain) is nn.Linear
        torch.testing.assert_close(plain(x), expected, rtol=1e-5, atol=1e-6)


def test_a_regular_install_run_from_an_empty_folder_lists_every_method_and_trains(tmp_path):
    """A wheel (not an editable install) carries the registries: from a folder with no checkout in sight."""
    wheels, site, empty = tmp_path / "wheels", tmp_path / "site", tmp_path / "empty"
    empty.mkdir()
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(wheels), str(ROOT)], check=True,
                   capture_output=True, cwd=ROOT)
    subprocess.run([*pip, "install", "--no-deps", "--target", str(site), *map(str, wheels.glob("*.whl"))],
                   check=True, capture_output=True)
    env = {k: v for k, v in os.environ.items() if k not in ("PEFTBENCH_ROOT", "PEFTBENCH_DATA")}
    env["PYTHONPATH"], env["HOME"] = str(site), str(tmp_path)

    def peftbench_cli(*args: str) -> str:
        done = subprocess.run([sys.executable, "-m", "peftbench", *args], cwd=empty, env=env, capture_output=True,
                              text=True, timeout=600, check=False)
        assert done.returncode == 0, done.stdout + done.stderr
        return done.stdout

    where = subprocess.run([sys.executable, "-c", "import peftbench.paths as p; print(p.ROOT)"], cwd=empty, env=env,
                           capture_output=True, text=True, check=True).stdout.strip()
    assert Path(where) == site / "peftbench" / "registry"
    listed = peftbench_cli("methods")
    assert all(name in listed for name in method_specs())
    peftbench_cli("run", "--methods", "lora", "--datasets", "synth_leaf", "--seeds", "0", "--epochs", "1",
                  "--out", str(empty / "results"))
    assert (empty / "results" / "runs" / "synth_leaf" / "lora" / "seed0.json").is_file()


def test_ssf_and_lora_plus_appear_in_methods_and_params(capsys):
    from peftbench.cli import main

    assert main(["methods"]) == 0
    listed = capsys.readouterr().out
    assert main(["params", "--sam", "vit_h", "--methods", "lora,lora_plus,ssf"]) == 0
    counted = capsys.readouterr().out
    for name in ("ssf", "lora_plus"):
        assert name in listed and name in counted
    assert "4.243" in counted and "3.997" in counted  # SSF's 737,280 + the decoder; LoRA+ has LoRA's model
