"""SAM-Adapter (Chen et al., 2023) as its paper describes it: a prompt added to the input of every encoder block.

  F_hfc = PatchEmbed'(HFC(image))           high-frequency component of the input image, 16x16 conv to C' = C/32
  F_pe  = Linear(C, C')(patch_embed(image)) per-token projection of the patch embeddings (before pos_embed)
  P_i   = MLP_up(GELU(MLP_tune_i(F_hfc + F_pe)))   per-block MLP_tune_i (C' -> C'), shared MLP_up (C' -> C)
  x     = block_i(x + P_i)
HFC: fftshift(fft2(image)), the centred square holding 25 % of the spectrum zeroed, inverse FFT, |real part|.
The image is the network input as our harness normalises it (SAM's mean/std; the reference config uses
(x - 0.5) / 0.5). Init as the reference: Linear trunc-normal(std 0.02) and zero bias, Conv2d N(0, 2 / fan_out).

Deviation from the reference code (on purpose): tianrun-chen/SAM-Adapter-PyTorch reshapes the (B, H, W, C)
patch embeddings as if they were (B, C, H, W) before the per-token Linear, a fixed scramble of tokens and
channels (its models/mmseg/models/sam/image_encoder.py). We implement the per-token projection the paper
describes instead.
Parameters on vit_h: 186,960 (3.69 M with the decoder); the paper's Table 1 prints 3.98 M, which the
described module with C' = C/32 does not reach. Not mergeable: the prompt depends on the input image.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from segment_anything.modeling import ImageEncoderViT
from torch import nn

from .base import Method, MethodConfig
from .registry import register_family


def high_frequency(images: torch.Tensor, rate: float = 0.25) -> torch.Tensor:
    """(B, 3, S, S) -> (B, 3, S, S): |ifft2(fft2(images) with the centred low-frequency square zeroed)|."""
    h, w = images.shape[-2:]
    half = int(math.sqrt(h * w * rate) // 2)
    spectrum = torch.fft.fftshift(torch.fft.fft2(images.float(), norm="forward"), dim=(-2, -1))
    spectrum[..., h // 2 - half: h // 2 + half, w // 2 - half: w // 2 + half] = 0
    spectrum = torch.fft.ifftshift(spectrum, dim=(-2, -1))
    return torch.fft.ifft2(spectrum, norm="forward").real.abs().to(images.dtype)


class PromptGenerator(nn.Module):
    """Per-block prompts (B, H, W, C) from the image and its patch embeddings."""

    def __init__(self, dim: int, depth: int, patch_size: int, scale_factor: int, freq_rate: float) -> None:
        super().__init__()
        hidden = dim // scale_factor
        self.freq_rate = freq_rate
        self.embedding_tune = nn.Linear(dim, hidden)
        self.handcrafted_tune = nn.Conv2d(3, hidden, patch_size, stride=patch_size)
        self.mlp_tune = nn.ModuleList(nn.Linear(hidden, hidden) for _ in range(depth))
        self.mlp_up = nn.Linear(hidden, dim)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
        fan_out = patch_size * patch_size * hidden
        nn.init.normal_(self.handcrafted_tune.weight, 0.0, math.sqrt(2.0 / fan_out))
        nn.init.zeros_(self.handcrafted_tune.bias)

    def features(self, images: torch.Tensor, patch_embeddings: torch.Tensor) -> torch.Tensor:
        """images (B, 3, S, S), patch_embeddings (B, H, W, C) -> F_hfc + F_pe (B, H, W, C')."""
        hfc = self.handcrafted_tune(high_frequency(images, self.freq_rate)).permute(0, 2, 3, 1)
        return hfc + self.embedding_tune(patch_embeddings)

    def prompt(self, index: int, features: torch.Tensor) -> torch.Tensor:
        return self.mlp_up(F.gelu(self.mlp_tune[index](features)))


class SamAdapterEncoder(nn.Module):
    """SAM's frozen image encoder with SAM-Adapter prompts added before every block.

    images (B, 3, S, S) -> image embeddings (B, prompt_dim, S/p, S/p), as ImageEncoderViT.
    """

    def __init__(self, encoder: ImageEncoderViT, generator: PromptGenerator) -> None:
        super().__init__()
        self.encoder = encoder
        self.generator = generator
        self.img_size = encoder.img_size

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        enc = self.encoder
        x = enc.patch_embed(images)
        features = self.generator.features(images, x)
        if enc.pos_embed is not None:
            x = x + enc.pos_embed
        for i, block in enumerate(enc.blocks):
            x = block(x + self.generator.prompt(i, features))
        return enc.neck(x.permute(0, 3, 1, 2))


@dataclass(frozen=True)
class SamAdapterConfig(MethodConfig):
    scale_factor: int = 32  # the generator's width is C / scale_factor
    freq_rate: float = 0.25  # area share of the centred low-frequency square zeroed (high_frequency)


@register_family
class SamAdapter(Method):
    family = "sam_adapter"
    config_class = SamAdapterConfig
    merge_kind = "none"
    encoder_trainable = r"generator\..*"
    needs_sam = True

    def attach(self, model: nn.Module) -> nn.Module:
        encoder = model.image_encoder
        generator = PromptGenerator(
            dim=encoder.pos_embed.shape[-1], depth=len(encoder.blocks),
            patch_size=encoder.patch_embed.proj.kernel_size[0],
            scale_factor=self.config.scale_factor, freq_rate=self.config.freq_rate,
        ).to(encoder.pos_embed.device)
        model.image_encoder = SamAdapterEncoder(encoder, generator)
        return model
