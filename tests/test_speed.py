"""Speed-ups change no result beyond float precision: SDPA attention, block checkpointing, embedding cache."""

import json

import pytest
import torch

from peftbench.cli import main
from peftbench.methods import method_specs
from peftbench.store.records import record_path
from peftbench.training.config import StepConfig
from peftbench.training.speed import checkpoint_blocks, use_sdpa


def attached(tiny_segmenter, name):
    model = tiny_segmenter()
    method_specs()[name].build().attach(model)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.05 * torch.randn_like(p))
    return model


@pytest.mark.parametrize("name", ["decoder_only", "lora", "mona", "nas_pc_lora"])
def test_sdpa_attention_equals_sams_attention(name, tiny_segmenter):
    model = attached(tiny_segmenter, name).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected = model(x)["mask_logits"]
        assert use_sdpa(model) == len(model.image_encoder.blocks)
        torch.testing.assert_close(model(x)["mask_logits"], expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", ["lora", "vpt", "sam_adapter"])
def test_block_checkpointing_gives_the_same_gradients(name, tiny_segmenter):
    x = torch.randn(2, 3, 64, 64)
    grads = []
    for checkpointed in (False, True):
        torch.manual_seed(0)
        model = attached(tiny_segmenter, name)
        if checkpointed:
            checkpoint_blocks(model)
        model(x)["mask_logits"].square().mean().backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys() and any(n.startswith("image_encoder") for n in grads[0])
    for n in grads[0]:
        torch.testing.assert_close(grads[1][n], grads[0][n], rtol=1e-5, atol=1e-6)


def test_cached_embeddings_give_the_same_decoder_only_run(tmp_path):
    args = ["run", "--device", "cpu", "--datasets", "synth_road", "--seeds", "0", "--epochs", "3",
            "--methods", "decoder_only"]
    assert main([*args, "--out", str(tmp_path / "cached")]) == 0
    assert main([*args, "--no-embedding-cache", "--out", str(tmp_path / "plain")]) == 0
    cached, plain = (json.loads(record_path(tmp_path / d, "synth_road", "decoder_only", 0).read_text())
                     for d in ("cached", "plain"))
    assert cached["config"]["cache_embeddings"] and not plain["config"]["cache_embeddings"]
    # Embeddings computed once, in other batch compositions, may differ in the last float bits only.
    for test, values in plain["metrics"].items():
        assert cached["metrics"][test] == pytest.approx(values, abs=1e-4)
    for got, want in zip(cached["history"], plain["history"], strict=True):
        assert got["val"] == pytest.approx(want["val"], abs=1e-4)


def test_bf16_autocast_changes_outputs_only_within_its_precision(tiny_segmenter):
    from peftbench.training.device import autocast

    model = attached(tiny_segmenter, "lora").eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        full = model.probabilities(x)
        with autocast(torch.device("cpu"), "bf16"):
            half = model.probabilities(x).float()
    assert (half - full).abs().max() < 0.05 and (half - full).abs().mean() < 0.005


def test_precision_flag_is_recorded_and_fp16_needs_cuda(tmp_path, capsys):
    args = ["run", "--device", "cpu", "--datasets", "synth_road", "--seeds", "0", "--epochs", "1", "--methods", "lora"]
    assert main([*args, "--precision", "bf16", "--out", str(tmp_path)]) == 0
    assert json.loads(record_path(tmp_path, "synth_road", "lora", 0).read_text())["config"]["precision"] == "bf16"
    assert main([*args, "--precision", "fp16", "--out", str(tmp_path / "x")]) == 2
    assert "fp16 autocast needs CUDA" in capsys.readouterr().err


def test_optimizer_kernels_take_the_same_steps():
    from peftbench.training.device import OPTIMIZER_KERNELS
    from peftbench.training.train import Optimization

    def trained(kernel: str, steps: int = 20) -> list[torch.Tensor]:
        torch.manual_seed(0)
        groups = {"weights": [torch.nn.Parameter(torch.randn(8, 8)), torch.nn.Parameter(torch.randn(8))],
                  "arch": [torch.nn.Parameter(torch.randn(3))]}
        config = StepConfig(lr=1e-2, epochs=1, precision="fp32", optimizer_kernel=kernel,
                            group_optim={"arch": {"optimizer": "adam", "weight_decay": 1e-3}})
        optimization = Optimization(groups, config, total_steps=20, device=torch.device("cpu"))
        params = [p for ps in groups.values() for p in ps]
        for step in range(steps):
            loss = sum((p * torch.linspace(-1, 1, p.numel()).view(p.shape)).sin().sum() for p in params)
            optimization.backward(loss)
            optimization.step(["weights", "arch"] if step % 2 else ["weights"])
        return [p.detach().clone() for p in params]

    reference = trained("loop")
    assert all((a - b).abs().max() > 0.01 for a, b in zip(reference, trained("loop", steps=0)))  # it did train
    assert set(OPTIMIZER_KERNELS) == {"fused", "foreach", "loop"}
    for got, want in zip(trained("foreach"), reference):
        assert torch.equal(got, want)  # the same operations, batched
    for got, want in zip(trained("fused"), reference):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-6)


def test_optimizer_kernel_is_recorded(tmp_path):
    args = ["run", "--device", "cpu", "--datasets", "synth_road", "--seeds", "0", "--epochs", "2", "--methods", "lora"]
    assert main([*args, "--optimizer-kernel", "loop", "--out", str(tmp_path / "loop")]) == 0
    assert main([*args, "--out", str(tmp_path / "fused")]) == 0
    loop, fused = (json.loads(record_path(tmp_path / d, "synth_road", "lora", 0).read_text()) for d in ("loop", "fused"))
    assert (loop["config"]["optimizer_kernel"], fused["config"]["optimizer_kernel"]) == ("loop", "fused")
    for name, value in loop["metrics"]["test"].items():
        assert fused["metrics"]["test"][name] == pytest.approx(value, abs=1e-3), name


def test_auto_precision_is_bf16_where_native_fp16_on_older_gpus_fp32_on_the_cpu(monkeypatch):
    from peftbench.training.device import resolve_precision

    cuda = torch.device("cuda", 0)
    for capability, expected in (((7, 0), "fp16"), ((8, 0), "bf16"), ((9, 0), "bf16")):
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None, c=capability: c)
        assert resolve_precision("auto", cuda) == expected
    assert resolve_precision("auto", torch.device("cpu")) == "fp32"
    assert resolve_precision("bf16", cuda) == "bf16"
