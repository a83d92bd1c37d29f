"""Importing this package registers every adapter family."""

from . import decoder_only, lora  # noqa: F401  (registration on import)
from .base import Method
from .registry import FAMILIES, MethodSpec, adapt, get_method, method_specs, register_family, resolve_methods

__all__ = ["FAMILIES", "Method", "MethodSpec", "adapt", "get_method", "method_specs", "register_family", "resolve_methods"]
