"""Published head patterns import (issue 16): RLKV's adapter_weights.tsv shapes with gates a hair
outside [0, 1] convert, clipped and ordered by the mask rule; only NaN/inf/wrong shapes are refused.
A heads file made for another model is refused without --force; rlkv.source names the file read."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from gguf_fixtures import write_tiny_gguf
from typer.testing import CliRunner

from rlkv_edge.cli import app
from rlkv_edge.convert import convert_gguf
from rlkv_edge.errors import ConvertError, HeadsFileError
from rlkv_edge.heads import HeadScores, load_heads, save_heads
from rlkv_edge.masks import full_head_mask
from rlkv_edge.metadata import read_rlkv_info


def _published_gates(n_layer: int, n_head_kv: int, seed: int) -> np.ndarray:
    """Gates shaped like RLKV's released files: most near 0 or 1, a few in [-0.011, 0) and (1, 1.008]."""
    rng = np.random.default_rng(seed)
    g = rng.choice([0.0, 1.0], size=(n_layer, n_head_kv)) + rng.uniform(-0.011, 0.008, size=(n_layer, n_head_kv))
    g[0, 0], g[-1, -1] = -0.011, 1.008
    return np.where(rng.random(g.shape) < 0.2, rng.uniform(0, 1, g.shape), g)


def _write_tsv(path: Path, gates: np.ndarray) -> Path:
    path.write_text("\n".join("\t".join(f"{v:.6f}" for v in row) for row in gates) + "\n")
    return path


@pytest.mark.parametrize(("n_layer", "n_head_kv"), [(32, 8), (28, 4), (36, 8)])
def test_published_shapes_convert_clipped_and_ordered(tmp_path: Path, n_layer: int, n_head_kv: int) -> None:
    """Convert through the CLI; stored scores are the clipped gates, each layer sorted, full heads by the rule."""
    model = write_tiny_gguf(tmp_path / "m.gguf", n_layer=n_layer, n_head=n_head_kv, n_head_kv=n_head_kv, head_dim=4)
    gates = _published_gates(n_layer, n_head_kv, seed=n_layer)
    assert gates.min() < 0 and gates.max() > 1
    tsv = _write_tsv(tmp_path / "adapter_weights.tsv", gates)
    out = tmp_path / "m.rlkv.gguf"
    r = CliRunner().invoke(app, ["convert", str(model.path), "--mask", str(tsv), "-o", str(out), "-s", "0.5"])
    assert r.exit_code == 0, r.output
    info = read_rlkv_info(out)
    clipped = np.clip(np.asarray([[float(f"{v:.6f}") for v in row] for row in gates]), 0, 1).astype(np.float32)
    np.testing.assert_array_equal(np.asarray(info["scores"], dtype=np.float32), clipped)
    stored = np.asarray(info["head_scores"], dtype=np.float32)
    assert (np.diff(stored, axis=1) <= 0).all()
    f_l = full_head_mask(stored, 0.5).sum(axis=1)
    assert f_l.tolist() == full_head_mask(clipped, 0.5).sum(axis=1).tolist()
    assert all(full_head_mask(stored, 0.5)[il, :f].all() for il, f in enumerate(f_l))  # full heads first


@pytest.mark.parametrize("bad", ["nan", "inf", "-inf"])
def test_nan_and_inf_are_refused(tmp_path: Path, bad: str) -> None:
    """NaN/inf stay refused, naming the head."""
    tsv = tmp_path / "adapter_weights.tsv"
    tsv.write_text(f"0.5\t{bad}\n1.0\t0.2\n")
    with pytest.raises(HeadsFileError, match="layer 0 head 1"):
        load_heads(tsv)


def test_wrong_shape_is_refused(tmp_path: Path) -> None:
    """A pattern with another L x H than the model is refused in one line."""
    model = write_tiny_gguf(tmp_path / "m.gguf")  # 2 x 2
    tsv = _write_tsv(tmp_path / "p.tsv", np.full((3, 2), 0.5))
    r = CliRunner().invoke(app, ["convert", str(model.path), "--mask", str(tsv), "-o", str(tmp_path / "o.gguf")])
    assert r.exit_code == 2 and "3 x 2" in r.stderr and len(r.stderr.strip().splitlines()) == 1


def _heads_for(model: dict[str, object]) -> HeadScores:
    return HeadScores(np.array([[0.9, 0.1], [0.4, 0.6]]), model=model)


def test_heads_for_another_model_needs_force(tmp_path: Path) -> None:
    """Another architecture / query-head count is refused, saying what differs; --force converts with a warning."""
    model = write_tiny_gguf(tmp_path / "m.gguf")  # llama, 4 query heads
    heads = _heads_for({"architecture": "qwen2", "n_head": 14, "name": "Qwen2.5-1.5B"})
    with pytest.raises(ConvertError, match=r"Qwen2\.5-1\.5B \(architecture qwen2 vs llama, query heads 14 vs 4"):
        convert_gguf(model.path, heads, tmp_path / "o.gguf", progress=False)
    assert not (tmp_path / "o.gguf").exists()
    report = convert_gguf(model.path, heads, tmp_path / "o.gguf", progress=False, force=True)
    assert any("Qwen2.5-1.5B" in w for w in report.warnings) and "warning:" in report.summary()


def test_heads_for_the_same_model_convert_quietly(tmp_path: Path) -> None:
    """An HF model_type 'mistral' is a GGUF 'llama'; a matching block gives no warning."""
    model = write_tiny_gguf(tmp_path / "m.gguf")
    for arch in ("llama", "mistral"):
        report = convert_gguf(
            model.path, _heads_for({"architecture": arch, "n_head": 4}), tmp_path / f"{arch}.gguf", progress=False
        )
        assert report.warnings == []


def test_other_gguf_fingerprint_warns(tmp_path: Path) -> None:
    """A heads file trained on another GGUF file (another quantization, or another model) warns."""
    model = write_tiny_gguf(tmp_path / "m.gguf")
    heads = _heads_for({"architecture": "llama", "fingerprint": "sha256-16m:" + "0" * 64, "name": "x.gguf"})
    report = convert_gguf(model.path, heads, tmp_path / "o.gguf", progress=False)
    assert len(report.warnings) == 1 and "another GGUF file" in report.warnings[0]


def test_duoattention_folder_records_the_file_read(tmp_path: Path) -> None:
    """`--mask folder/` records the pattern file it read in rlkv.source, not the folder's name."""
    model = write_tiny_gguf(tmp_path / "m.gguf")
    folder = tmp_path / "duo-pattern"
    folder.mkdir()
    _write_tsv(folder / "full_attention_heads.tsv", np.array([[0.9, 0.1], [0.4, 0.6]]))
    (folder / "config.json").write_text(json.dumps({"sink_size": 8, "recent_size": 32}))
    out = tmp_path / "o.gguf"
    r = CliRunner().invoke(app, ["convert", str(model.path), "--mask", str(folder), "-o", str(out), "-q"])
    assert r.exit_code == 0, r.output
    source = json.loads(read_rlkv_info(out)["source"])
    assert source["heads"] == "full_attention_heads.tsv"


def test_save_and_load_keep_clipped_scores(tmp_path: Path) -> None:
    """Scores read from a file with values outside [0, 1] are clipped on read, so they save inside it."""
    path = tmp_path / "h.json"
    path.write_text(json.dumps({"format": "rlkv-heads", "version": 1, "scores": [[-0.005, 1.0078], [0.3, 0.2]]}))
    heads = load_heads(path)
    assert heads.scores.tolist() == [[0.0, 1.0], [np.float32(0.3), np.float32(0.2)]]
    save_heads(heads, tmp_path / "again.json")
    assert load_heads(tmp_path / "again.json").scores.tolist() == heads.scores.tolist()
