"""Importing this package registers every adapter family."""

from . import (  # noqa: F401  (each module registers its family)
    bitfit,
    conv_lora,
    decoder_only,
    dora,
    full_ft,
    lora,
    lora_plus,
    mona,
    nas_lora,
    sam_adapter,
    ssf,
    vera,
    vpt,
)
from .base import Method, MethodConfig, TargetedConfig
from .registry import (
    FAMILIES,
    MethodSpec,
    adapt,
    get_method,
    method_specs,
    read_method,
    register_family,
    resolve_methods,
)

__all__ = ["FAMILIES", "Method", "MethodConfig", "MethodSpec", "TargetedConfig", "adapt", "get_method", "method_specs",
           "read_method", "register_family", "resolve_methods"]
