"""rlkv_edge.convert: GGUF rewriting — head re-ordering by score and rlkv.* metadata (docs/DESIGN.md §3).

Imports only the core (rlkv_edge.metadata, heads, masks, errors); `rlkv-edge convert` and `inspect` are
wired in by rlkv_edge/cli/convert.py.
"""

from .converter import ConvertReport, Reencoded, convert_gguf, default_output

__all__ = ["ConvertReport", "Reencoded", "convert_gguf", "default_output"]
