"""GGUF rewriting for rlkv-edge: head re-ordering by score, rlkv.* metadata, inspection (DESIGN.md §3)."""

from .converter import ConvertReport, Reencoded, convert_gguf, default_output
from .inspect import kv_memory, read_rlkv_info
from .model import SUPPORTED_ARCHITECTURES, ConvertError

__all__ = [
    "SUPPORTED_ARCHITECTURES",
    "ConvertError",
    "ConvertReport",
    "Reencoded",
    "convert_gguf",
    "default_output",
    "kv_memory",
    "read_rlkv_info",
]
