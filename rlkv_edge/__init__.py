"""rlkv-edge: RL-guided per-head KV cache compression, run on a patched llama.cpp.

Importing this package points llama-cpp-python at the llama.cpp libraries built with rlkv-edge
(``rlkv_edge/lib``), so ``import llama_cpp`` afterwards loads our patched build.
"""

from __future__ import annotations

from rlkv_edge._native import LIB_DIR, NativeLibraryError, ensure_llama_cpp_lib_path

__version__ = "0.1.0"
__all__ = ["LIB_DIR", "NativeLibraryError", "__version__"]

ensure_llama_cpp_lib_path()
