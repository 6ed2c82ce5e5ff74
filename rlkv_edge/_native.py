"""Where our llama.cpp libraries live, and making llama-cpp-python load them instead of its own."""

from __future__ import annotations

import ctypes
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rlkv_edge.errors import NativeLibraryError

LLAMA_COMMIT = "0c1e57098"
_LIB_NAMES = ("libllama.so", "libllama.dylib", "llama.dll")


def _lib_dir() -> Path:
    """$RLKV_LIB_DIR, else rlkv_edge/lib in whichever of the package's directories holds the built libraries.

    A wheel install has one directory; an editable install (`pip install -e .`) has the source tree and
    the CMake install tree in site-packages, where the libraries are. RLKV_LIB_DIR selects another build of
    ours, e.g. the Vulkan one of `make install-vulkan` (build/vulkan/install/rlkv_edge/lib).
    """
    if os.environ.get("RLKV_LIB_DIR"):
        return Path(os.environ["RLKV_LIB_DIR"]).resolve()
    package = sys.modules.get("rlkv_edge")
    roots = [Path(p) for p in getattr(package, "__path__", [])] or [Path(__file__).parent]
    for root in roots:
        if any((root / "lib" / name).exists() for name in _LIB_NAMES):
            return (root / "lib").resolve()
    return (roots[-1] / "lib").resolve()


LIB_DIR = _lib_dir()
BIN_DIR = LIB_DIR.parent / "bin"  # llama.cpp's programs of a build with RLKV_BUILD_TOOLS


def tool_path(name: str) -> Path | None:
    """Path of one of llama.cpp's programs (llama-server, ...) built with ours, or None if not built."""
    for candidate in (BIN_DIR / name, BIN_DIR / f"{name}.exe"):
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    return None


def library_file(lib_dir: Path = LIB_DIR) -> Path:
    """Path of libllama in lib_dir (the name differs per platform)."""
    for name in _LIB_NAMES:
        if (lib_dir / name).exists():
            return lib_dir / name
    raise NativeLibraryError(f"rlkv-edge's llama.cpp library is not in {lib_dir}; reinstall rlkv-edge (make install)")


def ensure_llama_cpp_lib_path() -> None:
    """Point LLAMA_CPP_LIB_PATH at our libraries before llama_cpp loads; refuse a foreign one."""
    loaded = sys.modules.get("llama_cpp.llama_cpp")
    if loaded is not None:
        lib_path = Path(getattr(loaded, "_base_path", "")).resolve()
        if lib_path != LIB_DIR:
            raise NativeLibraryError(
                f"llama_cpp was imported before rlkv_edge and loaded its library from {lib_path}; "
                "import rlkv_edge first so that llama_cpp loads rlkv-edge's patched build"
            )
        return
    os.environ["LLAMA_CPP_LIB_PATH"] = str(LIB_DIR)
    _load_backends()


CPU_VARIANT_ENV = "RLKV_CPU_VARIANT"
_backends: dict[str, Any] = {}  # what _load_backends did: {"cpu_variant": name} or {"error": NativeLibraryError}


def cpu_variants(lib_dir: Path = LIB_DIR) -> list[str]:
    """The CPU variants of a portable build (libggml-cpu-<name>.so beside libllama); empty for a native build."""
    prefix, suffix = "libggml-cpu-", ".so"
    return sorted(p.name[len(prefix) : -len(suffix)] for p in lib_dir.glob(f"{prefix}*{suffix}"))


def _load_backends() -> None:
    """In a portable build (ggml's backends are modules, GGML_BACKEND_DL), load them from LIB_DIR.

    llama.cpp's programs call ggml_backend_load_all() themselves; llama-cpp-python does not. ggml scores
    every libggml-cpu-<variant>.so for this CPU and keeps the best; $RLKV_CPU_VARIANT loads that variant
    alone instead (the CPU must support it), e.g. to test the build on a lesser CPU's code.
    A failure is kept and raised by llama_lib(), since this runs while `rlkv_edge` is imported.
    """
    variants = cpu_variants()
    if _backends or not variants:
        return
    ggml = ctypes.CDLL(str(LIB_DIR / "libggml.so"))  # libllama, loaded later, binds to this copy (same soname)
    forced = os.environ.get(CPU_VARIANT_ENV)
    if not forced:
        ggml.ggml_backend_load_all_from_path.argtypes = [ctypes.c_char_p]
        ggml.ggml_backend_load_all_from_path(str(LIB_DIR).encode())
        _backends["cpu_variant"] = f"best of {len(variants)}"
        return
    if forced not in variants:
        _backends["error"] = NativeLibraryError(
            f"{CPU_VARIANT_ENV}={forced}: no such CPU variant in {LIB_DIR} (there are: {', '.join(variants)})"
        )
        return
    ggml.ggml_backend_load.restype, ggml.ggml_backend_load.argtypes = ctypes.c_void_p, [ctypes.c_char_p]
    if not ggml.ggml_backend_load(str(LIB_DIR / f"libggml-cpu-{forced}.so").encode()):
        _backends["error"] = NativeLibraryError(f"{CPU_VARIANT_ENV}={forced}: this CPU cannot run that variant")
        return
    _backends["cpu_variant"] = forced


def cpu_variant() -> str | None:
    """Which CPU variant a portable build loaded ('haswell', 'best of 8'); None for a native build."""
    return _backends.get("cpu_variant")


def llama_lib() -> ctypes.CDLL:
    """The libllama that llama_cpp loaded (ours), with the llama_rlkv_* functions."""
    if "error" in _backends:
        raise _backends["error"]
    import llama_cpp.llama_cpp as bindings

    lib: ctypes.CDLL = bindings._lib
    return lib


def rlkv_version() -> str:
    """llama_rlkv_version() of the loaded library: proves it is rlkv-edge's build."""
    lib = llama_lib()
    try:
        fn = lib.llama_rlkv_version
    except AttributeError as e:
        raise NativeLibraryError(f"{lib._name} is not rlkv-edge's build (no llama_rlkv_version)") from e
    fn.restype = ctypes.c_char_p
    fn.argtypes = []
    return str(fn().decode())


def build_info() -> dict[str, Any]:
    """Facts recorded by the CMake build (llama.cpp commit, libraries)."""
    path = LIB_DIR / "build-info.json"
    if not path.exists():
        return {}
    info: dict[str, Any] = json.loads(path.read_text())
    return info


def _ggml() -> ctypes.CDLL:
    """The loaded build's libggml with the backend-registry functions declared (ggml-backend.h)."""
    llama_lib()  # make sure libggml is loaded (as a dependency of libllama)
    ggml = ctypes.CDLL(str(library_file().with_name(library_file().name.replace("llama", "ggml"))))
    for name, restype, argtypes in (
        ("ggml_backend_reg_count", ctypes.c_size_t, []),
        ("ggml_backend_reg_get", ctypes.c_void_p, [ctypes.c_size_t]),
        ("ggml_backend_reg_name", ctypes.c_char_p, [ctypes.c_void_p]),
        ("ggml_backend_dev_count", ctypes.c_size_t, []),
        ("ggml_backend_dev_get", ctypes.c_void_p, [ctypes.c_size_t]),
        ("ggml_backend_dev_name", ctypes.c_char_p, [ctypes.c_void_p]),
        ("ggml_backend_dev_description", ctypes.c_char_p, [ctypes.c_void_p]),
        ("ggml_backend_dev_type", ctypes.c_int, [ctypes.c_void_p]),
        (
            "ggml_backend_dev_memory",
            None,
            [ctypes.c_void_p, ctypes.POINTER(ctypes.c_size_t), ctypes.POINTER(ctypes.c_size_t)],
        ),
    ):
        fn = getattr(ggml, name)
        fn.restype, fn.argtypes = restype, argtypes
    return ggml


def backend_names() -> list[str]:
    """Names of the ggml backends compiled into the loaded build (CPU, CUDA, Metal, ...)."""
    ggml = _ggml()
    return [
        ggml.ggml_backend_reg_name(ggml.ggml_backend_reg_get(i)).decode() for i in range(ggml.ggml_backend_reg_count())
    ]


_DEVICE_TYPES = ("CPU", "GPU", "iGPU", "accelerator", "meta")  # enum ggml_backend_dev_type


@dataclass(frozen=True)
class Device:
    """One device ggml sees: its name (CUDA0, Vulkan0, CPU), description, type and memory in bytes."""

    name: str
    description: str
    type: str
    free: int
    total: int


def devices() -> list[Device]:
    """The devices the loaded build sees (what `-ngl` can offload to, plus the CPU)."""
    ggml = _ggml()
    out = []
    for i in range(ggml.ggml_backend_dev_count()):
        dev = ggml.ggml_backend_dev_get(i)
        free, total = ctypes.c_size_t(0), ctypes.c_size_t(0)
        ggml.ggml_backend_dev_memory(dev, ctypes.byref(free), ctypes.byref(total))
        kind = ggml.ggml_backend_dev_type(dev)
        out.append(
            Device(
                name=ggml.ggml_backend_dev_name(dev).decode(),
                description=ggml.ggml_backend_dev_description(dev).decode(),
                type=_DEVICE_TYPES[kind] if 0 <= kind < len(_DEVICE_TYPES) else str(kind),
                free=int(free.value),
                total=int(total.value),
            )
        )
    return out


def gpu_devices() -> list[Device]:
    """The devices layers can be offloaded to (GPUs, integrated GPUs; not the CPU)."""
    return [d for d in devices() if d.type in ("GPU", "iGPU")]


def system_info() -> str:
    """llama.cpp's own summary of CPU features and backends (llama_print_system_info)."""
    import llama_cpp.llama_cpp as bindings

    return str(bindings.llama_print_system_info().decode()).strip()
