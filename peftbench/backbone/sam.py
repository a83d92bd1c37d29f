"""Build SAM exactly as `segment_anything` does (vit_b/l/h) or in tiny CPU sizes, and load official checkpoints.

The official builders in `segment_anything.build_sam` hard-code the 1024 px input and the 256-d decoder, so the
architectures are described here by a `SamSpec` and assembled from the same `segment_anything.modeling` parts.
For vit_b/l/h every hyper-parameter equals the official one, so official `sam_vit_*.pth` files load strictly.
The tiny SAM's weights ship with the package (`weights/tiny_sam.pt`, made by `peftbench pretrain-tiny`, checked
against the sha256 in `weights/tiny_sam.json`); `tiny_random` is the same architecture untrained.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace
from functools import lru_cache, partial
from pathlib import Path

import torch
from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

from ..errors import UserError
from ..store.hashing import file_sha256


@dataclass(frozen=True)
class SamSpec:
    """Hyper-parameters that define one SAM architecture."""

    embed_dim: int
    depth: int
    num_heads: int
    global_attn_indexes: tuple[int, ...]
    img_size: int = 1024
    patch_size: int = 16
    window_size: int = 14
    prompt_dim: int = 256
    decoder_mlp_dim: int = 2048
    decoder_heads: int = 8
    mask_in_chans: int = 16
    iou_head_hidden_dim: int = 256


SAM_SPECS: dict[str, SamSpec] = {
    "vit_b": SamSpec(768, 12, 12, (2, 5, 8, 11)),
    "vit_l": SamSpec(1024, 24, 16, (5, 11, 17, 23)),
    "vit_h": SamSpec(1280, 32, 16, (7, 15, 23, 31)),
    # CPU sizes: 64 px input, 8x8 tokens, 4x4 windows padded like SAM's 14x14 windows on a 64x64 map.
    "tiny": SamSpec(
        embed_dim=48, depth=4, num_heads=2, global_attn_indexes=(1, 3), img_size=64, patch_size=8,
        window_size=3, prompt_dim=32, decoder_mlp_dim=64, decoder_heads=2, mask_in_chans=4, iou_head_hidden_dim=32,
    ),
}
SAM_SPECS["tiny_random"] = SAM_SPECS["tiny"]  # same architecture, left at its fixed random initialisation

OFFICIAL_CHECKPOINTS = {
    "vit_b": "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_b_01ec64.pth",
    "vit_l": "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_l_0b3195.pth",
    "vit_h": "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_h_4b8939.pth",
}

PIXEL_MEAN, PIXEL_STD = (123.675, 116.28, 103.53), (58.395, 57.12, 57.375)  # Sam's non-persistent buffers

# The tiny SAM has no official weights. `tiny` is pretrained by `peftbench pretrain-tiny` from a fixed random
# initialisation (`tiny_random`), so every method and seed adapts the same frozen backbone (the run seed only
# affects adapters, decoder changes and data order).
TINY_INIT_SEED = 1234
TINY_WEIGHTS = Path(__file__).parent.parent / "weights" / "tiny_sam.pt"  # its record: the same path with suffix .json


def build_sam(name: str, img_size: int | None = None) -> Sam:
    """Build the SAM architecture `name` (one of SAM_SPECS) with PyTorch's default initialisation.

    `img_size` changes the input resolution (position embeddings and relative-position tables follow), for speed
    measurements at CPU-sized inputs; official checkpoints only fit the default.
    """
    if name not in SAM_SPECS:
        raise UserError(f"--sam {name!r} is unknown; choose one of {', '.join(SAM_SPECS)}")
    s = SAM_SPECS[name]
    if img_size is not None:
        if img_size % s.patch_size:
            raise UserError(f"--image-size {img_size}: must be a multiple of the patch size {s.patch_size}")
        s = replace(s, img_size=img_size)
    grid = s.img_size // s.patch_size
    return Sam(
        image_encoder=ImageEncoderViT(
            img_size=s.img_size, patch_size=s.patch_size, embed_dim=s.embed_dim, depth=s.depth,
            num_heads=s.num_heads, mlp_ratio=4, out_chans=s.prompt_dim, qkv_bias=True,
            norm_layer=partial(torch.nn.LayerNorm, eps=1e-6), use_rel_pos=True,
            window_size=s.window_size, global_attn_indexes=s.global_attn_indexes,
        ),
        prompt_encoder=PromptEncoder(
            embed_dim=s.prompt_dim, image_embedding_size=(grid, grid),
            input_image_size=(s.img_size, s.img_size), mask_in_chans=s.mask_in_chans,
        ),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=3,
            transformer=TwoWayTransformer(
                depth=2, embedding_dim=s.prompt_dim, mlp_dim=s.decoder_mlp_dim, num_heads=s.decoder_heads
            ),
            transformer_dim=s.prompt_dim, iou_head_depth=3, iou_head_hidden_dim=s.iou_head_hidden_dim,
        ),
    )


def official_param_count(name: str) -> int:
    """Number of parameters of the unmodified SAM `name` (the denominator of the paper's Ratio(%) column)."""
    with torch.device("meta"):
        return sum(p.numel() for p in build_sam(name).parameters())


def guess_architecture(state_dict: dict) -> str | None:
    """Name of the SamSpec whose encoder width and depth match a state dict, or None."""
    weight = state_dict.get("image_encoder.patch_embed.proj.weight")
    if weight is None:
        return None
    depth = len({k.split(".")[2] for k in state_dict if k.startswith("image_encoder.blocks.")})
    for name, spec in SAM_SPECS.items():
        if weight.shape[0] == spec.embed_dim and depth == spec.depth and weight.shape[-1] == spec.patch_size:
            return name
    return None


@lru_cache(maxsize=1)
def read_checkpoint(path: str) -> dict:
    """The state dict in `path`, read once per process (every run of a grid starts from the same weights)."""
    if not Path(path).is_file():
        raise UserError(f"--checkpoint {path}: file not found; download the official file (see README) or fix the path")
    try:
        state_dict = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - torch raises many types for a corrupt or foreign file
        raise UserError(f"--checkpoint {path}: not a readable PyTorch state dict ({type(err).__name__})") from None
    if isinstance(state_dict, dict) and isinstance(state_dict.get("model"), dict):
        state_dict = state_dict["model"]
    if not isinstance(state_dict, dict):
        raise UserError(f"--checkpoint {path}: holds a {type(state_dict).__name__}, not a state dict")
    return state_dict


@lru_cache(maxsize=1)
def tiny_weights_sha256() -> str:
    """The sha256 the shipped tiny SAM weights must have, from their record next to them."""
    record = TINY_WEIGHTS.with_suffix(".json")
    try:
        return json.loads(record.read_text())["sha256"]
    except (OSError, ValueError, KeyError):
        raise UserError(f"{record}: missing or unreadable; reinstall peftbench or rerun `peftbench pretrain-tiny "
                        f"--out {TINY_WEIGHTS}` (--sam tiny_random needs no weights)") from None


@lru_cache(maxsize=1)
def read_tiny_weights() -> dict:
    """The shipped pretrained tiny SAM state dict, after checking its sha256 against its record."""
    expected = tiny_weights_sha256()
    if not TINY_WEIGHTS.is_file() or file_sha256(TINY_WEIGHTS) != expected:
        raise UserError(f"{TINY_WEIGHTS}: missing or corrupt (sha256 differs from its .json); reinstall peftbench "
                        f"or rerun `peftbench pretrain-tiny --out {TINY_WEIGHTS}` (--sam tiny_random needs no weights)")
    return torch.load(TINY_WEIGHTS, map_location="cpu", weights_only=True)


def random_sam(name: str) -> Sam:
    """SAM `name` at a fixed random initialisation (seed TINY_INIT_SEED, whatever the global seed): `tiny_random`,
    and the backbone of methods with `backbone = "random"` ("SAM (scratch)" and the decoder-only control)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(TINY_INIT_SEED)
        return build_sam(name)


def load_sam(name: str, checkpoint: str | Path | None = None) -> Sam:
    """Build SAM `name` and load `checkpoint` (an official `sam_vit_*.pth` state dict) strictly.

    Without a checkpoint, `tiny` gets the shipped pretrained weights (`peftbench pretrain-tiny`) and `tiny_random`
    the fixed random initialisation they were trained from; the official sizes refuse to run without weights,
    because a randomly initialised ViT-B/L/H is never what a user means.
    """
    if checkpoint is None and name == "tiny_random":
        return random_sam(name)
    if checkpoint is None and name != "tiny":
        raise UserError(
            f"--sam {name} needs --checkpoint FILE (official weights: {OFFICIAL_CHECKPOINTS.get(name, 'n/a')})"
        )
    state_dict = read_tiny_weights() if checkpoint is None else read_checkpoint(str(checkpoint))
    path = Path(checkpoint or TINY_WEIGHTS)
    with torch.device("meta"):  # skip the random initialisation (tens of seconds for vit_h) the weights replace
        model = build_sam(name)
    expected = model.state_dict()
    mismatched = [k for k, v in state_dict.items() if k in expected and expected[k].shape != v.shape]
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    if mismatched or missing or unexpected:
        guess = guess_architecture(state_dict)
        hint = f"it looks like a {guess} checkpoint: pass --sam {guess}" if guess else "pass the matching --sam"
        raise UserError(
            f"--checkpoint {path} does not fit --sam {name} ({len(mismatched)} shape mismatches, "
            f"{len(missing)} missing, {len(unexpected)} unexpected keys); {hint}"
        )
    model.to_empty(device="cpu")
    model.load_state_dict(state_dict)  # copies, so the cached state dict stays pristine for the next run
    model.register_buffer("pixel_mean", torch.tensor(PIXEL_MEAN).view(-1, 1, 1), False)
    model.register_buffer("pixel_std", torch.tensor(PIXEL_STD).view(-1, 1, 1), False)
    return model


def spec_dict(name: str) -> dict:
    """The architecture `name`; for `tiny` also the shipped weights' sha256, so records change with the weights."""
    weights = {"weights_sha256": tiny_weights_sha256()} if name == "tiny" else {}
    return {"name": name, **asdict(SAM_SPECS[name]), **weights}
