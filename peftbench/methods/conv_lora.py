"""Conv-LoRA (Zhong et al., ICLR 2024) as its authors' code (autogluon `ConvLoRALinear`, `MoEGate`) defines it.

LoRA on the fused qkv (rank 3, alpha 32) with a mixture of convolution experts on the rank-r bottleneck, laid out
as its spatial map (an attention window in windowed blocks, the whole map in global blocks):
  z' = z + expert_e(z)      expert i (i = 1..8): bicubic x i upsampling, 3x3 conv (r -> r), GELU, bicubic back
Routing: noisy top-1 gating on the average-pooled bottleneck (Shazeer et al. 2017) per map: logits = z̄ W_g, plus
N(0, 1) * (softplus(z̄ W_n) + 0.01) in training. As in the reference, the gate value is not multiplied into the
expert output, so the routing weights learn only from the load-balancing loss
  0.01 * (CV^2(importance) + CV^2(load)), summed over all blocks and added to the task loss (`extra_loss`).
Init as the reference: expert conv weights PyTorch default, conv biases 0, W_g = W_n = 0, LoRA A kaiming / B 0.
Parameters on vit_h: 32 x 16,080 = 514,560 (4.02 M with the decoder, as the paper's Table 1).
Not mergeable: the experts mix neighbouring tokens and depend on the input through the routing.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .base import Method, replace_targets
from .lora import LoRAConfig, LoRALinear, from_map, to_map
from .registry import register_family


def cv_squared(x: torch.Tensor) -> torch.Tensor:
    """Squared coefficient of variation (unbiased variance / mean^2); 0 for a single element."""
    if x.numel() == 1:
        return x.new_zeros(())
    x = x.float()
    return x.var() / (x.mean() ** 2 + 1e-10)


class ConvExpert(nn.Module):
    """(N, r, h, w) -> (N, r, h, w): upsample by `ratio`, 3x3 conv, GELU, resize back."""

    def __init__(self, channels: int, ratio: int) -> None:
        super().__init__()
        self.ratio = ratio
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)
        nn.init.zeros_(self.conv.bias)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        size = z.shape[-2:]
        if self.ratio > 1:
            z = F.interpolate(z, scale_factor=self.ratio, mode="bicubic")
        z = F.gelu(self.conv(z))
        return F.interpolate(z, size=size, mode="bicubic") if self.ratio > 1 else z


class MoEConv(nn.Module):
    """The Conv-LoRA bottleneck: z (N, h, w, r) -> z + expert(z), one expert per map (noisy top-1 routing).

    After a training forward, `balance_loss` holds this layer's load-balancing loss.
    """

    def __init__(self, rank: int, num_experts: int = 8, loss_coef: float = 1e-2, noise_eps: float = 1e-2) -> None:
        super().__init__()
        self.experts = nn.ModuleList(ConvExpert(rank, i + 1) for i in range(num_experts))
        self.w_gate = nn.Parameter(torch.zeros(rank, num_experts))
        self.w_noise = nn.Parameter(torch.zeros(rank, num_experts))
        self.loss_coef, self.noise_eps = loss_coef, noise_eps
        self.balance_loss: torch.Tensor | None = None

    def _route(self, pooled: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """pooled (N, r) -> (chosen expert per map (N,), load-balancing loss)."""
        clean = pooled @ self.w_gate  # (N, M)
        num_experts = clean.shape[1]
        if not self.training:
            return clean.argmax(dim=1), clean.new_zeros(())
        noise_std = F.softplus(pooled @ self.w_noise) + self.noise_eps
        noisy = clean + torch.randn_like(clean) * noise_std
        top_values, top_index = noisy.topk(min(2, num_experts), dim=1)
        chosen = top_index[:, 0]
        importance = F.one_hot(chosen, num_experts).to(clean.dtype).sum(0)  # gate value of a top-1 pick is 1
        if num_experts > 1:
            # Probability that each expert stays in the top 1 under fresh noise (Shazeer et al.'s smooth load).
            normal = torch.distributions.Normal(0.0, 1.0)
            is_in = noisy > top_values[:, 1:2]
            prob_in = normal.cdf((clean - top_values[:, 1:2]) / noise_std)
            prob_out = normal.cdf((clean - top_values[:, 0:1]) / noise_std)
            load = torch.where(is_in, prob_in, prob_out).sum(0)
        else:
            load = importance
        return chosen, self.loss_coef * (cv_squared(importance) + cv_squared(load))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        maps = to_map(z)  # (N, r, h, w)
        chosen, self.balance_loss = self._route(maps.mean(dim=(2, 3)))
        out = maps.clone()
        for e in chosen.unique().tolist():
            picked = chosen == e
            out[picked] = maps[picked] + self.experts[e](maps[picked]).to(maps.dtype)
        return from_map(out, z)


@dataclass(frozen=True)
class ConvLoRAConfig(LoRAConfig):
    """LoRA's, plus the number of convolution experts (expert i upsamples by i) and the load-balancing weight."""

    num_experts: int = 8
    loss_coef: float = 0.01

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.num_experts < 1:
            raise ValueError(f"num_experts must be at least 1, not {self.num_experts}")


@register_family
class ConvLoRA(Method):
    family = "conv_lora"
    config_class = ConvLoRAConfig
    merge_kind = "none"
    lineage = "lora"
    encoder_trainable = r".*\.(lora_[AB]|bottleneck\..*)"
    identity_at_init = True

    def attach(self, model: nn.Module) -> nn.Module:
        c = self.config
        replace_targets(model, list(c.targets), c.scope,
                        lambda m: LoRALinear(m, c.rank, c.alpha, MoEConv(c.rank, c.num_experts, c.loss_coef)))
        return model

    def extra_loss(self, model: nn.Module) -> torch.Tensor | None:
        losses = [m.balance_loss for m in model.modules() if isinstance(m, MoEConv) and m.balance_loss is not None]
        return torch.stack(losses).sum() if losses and model.training else None
