"""The heads file: heads.json with schema validation, DuoAttention TSV import, TSV export."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from rlkv_edge.heads import HeadScores, HeadsFileError, export_tsv, load_heads, save_heads


def _heads_obj(scores: list[list[float]], **extra: object) -> dict[str, object]:
    """A minimal valid heads.json object."""
    obj: dict[str, object] = {
        "format": "rlkv-heads",
        "version": 1,
        "model": {
            "architecture": "llama",
            "n_layer": len(scores),
            "n_head": 4,
            "n_head_kv": len(scores[0]),
            "name": "tiny",
            "fingerprint": "abc",
        },
        "scores": scores,
        "sink_size": 16,
        "window_size": 32,
        "method": "rlkv",
        "training": {"steps": 3},
    }
    obj.update(extra)
    return obj


def _write(path: Path, obj: object) -> Path:
    """Dump obj as JSON (NaN allowed, as Python writes it)."""
    path.write_text(json.dumps(obj))
    return path


def test_save_load_round_trip(tmp_path: Path) -> None:
    """save_heads then load_heads gives the same float32 scores and fields."""
    h = HeadScores(
        scores=np.array([[0.25, 1.0], [0.0, 0.7]]),
        sink_size=8,
        window_size=16,
        method="x",
        model={"architecture": "qwen2", "name": "m"},
        training={"lr": 0.01},
    )
    save_heads(h, tmp_path / "heads.json")
    back = load_heads(tmp_path / "heads.json")
    assert back.scores.dtype == np.float32 and back.scores.shape == (2, 2)
    np.testing.assert_array_equal(back.scores, h.scores)
    assert (back.sink_size, back.window_size, back.method) == (8, 16, "x")
    assert back.model["architecture"] == "qwen2" and back.model["n_layer"] == 2 and back.model["n_head_kv"] == 2
    assert back.training == {"lr": 0.01}
    assert [p.name for p in tmp_path.iterdir()] == ["heads.json"]  # no temp file left


def test_load_json_fields(tmp_path: Path) -> None:
    """All documented fields are read."""
    h = load_heads(_write(tmp_path / "h.json", _heads_obj([[0.5, 0.25], [1.0, 0.0], [0.1, 0.2]])))
    assert h.scores.shape == (3, 2) and h.n_layer == 3 and h.n_head_kv == 2
    assert (h.sink_size, h.window_size, h.method) == (16, 32, "rlkv")
    assert h.model["fingerprint"] == "abc"


def test_scores_above_one_are_clipped(tmp_path: Path) -> None:
    """Values > 1 are clipped to 1 on read."""
    h = load_heads(_write(tmp_path / "h.json", _heads_obj([[1.5, 0.5]])))
    np.testing.assert_array_equal(h.scores, np.array([[1.0, 0.5]], dtype=np.float32))


@pytest.mark.parametrize(
    ("scores", "needle"),
    [([[float("nan"), 0.5]], "nan"), ([[float("inf"), 0.5]], "inf"), ([[-float("inf"), 0.5]], "inf")],
)
def test_bad_scores_rejected(tmp_path: Path, scores: list[list[float]], needle: str) -> None:
    """NaN and infinite scores raise a one-line HeadsFileError (values outside [0, 1] are clipped instead)."""
    with pytest.raises(HeadsFileError) as exc:
        load_heads(_write(tmp_path / "h.json", _heads_obj(scores)))
    assert needle in str(exc.value).lower() and "\n" not in str(exc.value)


@pytest.mark.parametrize(
    ("mutate", "needle"),
    [
        (lambda o: o.update(format="other"), "format"),
        (lambda o: o.update(version=2), "version"),
        (lambda o: o.update(scores=[[0.1, 0.2], [0.3]]), "different lengths"),
        (lambda o: o.update(scores=[]), "scores"),
        (lambda o: o.update(scores=[["a", 0.1]]), "scores"),
        (lambda o: o.update(sink_size=-1), "sink_size"),
        (lambda o: o["model"].update(n_layer=5), "5 x 2"),
        (lambda o: o.pop("scores"), "scores"),
    ],
)
def test_schema_errors(tmp_path: Path, mutate: object, needle: str) -> None:
    """Malformed heads files give a one-line error naming the problem."""
    obj = _heads_obj([[0.1, 0.2], [0.3, 0.4]])
    mutate(obj)  # type: ignore[operator]
    with pytest.raises(HeadsFileError) as exc:
        load_heads(_write(tmp_path / "h.json", obj))
    assert needle in str(exc.value) and "\n" not in str(exc.value)


def test_not_json_and_missing(tmp_path: Path) -> None:
    """Garbage and missing files give HeadsFileError."""
    bad = tmp_path / "h.json"
    bad.write_text("{not json")
    with pytest.raises(HeadsFileError, match="not valid JSON"):
        load_heads(bad)
    with pytest.raises(HeadsFileError, match="no such"):
        load_heads(tmp_path / "missing.json")
    binary = tmp_path / "b.json"
    binary.write_bytes(b"\xff\xfe\x00\x01")
    with pytest.raises(HeadsFileError):
        load_heads(binary)


def test_tsv_import_with_config(tmp_path: Path) -> None:
    """A DuoAttention pattern file and its config.json (sink_size / recent_size)."""
    d = tmp_path / "duo"
    d.mkdir()
    (d / "full_attention_heads.tsv").write_text("1.0\t0.2\n0.0\t0.7\n")
    (d / "config.json").write_text(json.dumps({"sink_size": 128, "recent_size": 256, "sparsity": 0.5}))
    h = load_heads(d / "full_attention_heads.tsv")
    np.testing.assert_array_equal(h.scores, np.array([[1.0, 0.2], [0.0, 0.7]], dtype=np.float32))
    assert (h.sink_size, h.window_size) == (128, 256)
    assert load_heads(d).scores.shape == (2, 2)  # a directory holding the TSV works too


def test_tsv_without_config_uses_defaults(tmp_path: Path) -> None:
    """Without config.json, S and W are the defaults 64 / 256."""
    p = tmp_path / "p.tsv"
    p.write_text("0.5 0.5 0.1\n")
    h = load_heads(p)
    assert h.scores.shape == (1, 3) and (h.sink_size, h.window_size) == (64, 256)


@pytest.mark.parametrize(
    ("text", "needle"),
    [("0.1\t0.2\n0.3\n", "different"), ("0.1\tx\n", "not a row"), ("", "empty"), ("nan\t0.1\n", "finite")],
)
def test_tsv_errors(tmp_path: Path, text: str, needle: str) -> None:
    """Ragged, non-numeric, empty and NaN TSVs are rejected."""
    p = tmp_path / "p.tsv"
    p.write_text(text)
    with pytest.raises(HeadsFileError, match=needle):
        load_heads(p)


def test_export_tsv_round_trip(tmp_path: Path) -> None:
    """export_tsv writes values that read back as the same float32 scores."""
    rng = np.random.default_rng(0)
    h = HeadScores(scores=rng.random((5, 3)))
    export_tsv(h, tmp_path / "x.tsv")
    back = load_heads(tmp_path / "x.tsv")
    np.testing.assert_array_equal(back.scores, h.scores)
    assert len((tmp_path / "x.tsv").read_text().splitlines()) == 5


def test_constructor_validates() -> None:
    """HeadScores itself rejects bad arrays."""
    with pytest.raises(HeadsFileError):
        HeadScores(scores=np.array([0.1, 0.2]))
    with pytest.raises(HeadsFileError):
        HeadScores(scores=np.array([[0.1, np.nan]]))
    assert HeadScores(scores=np.array([[-0.011, 1.008]])).scores.tolist() == [[0.0, 1.0]]  # clipped


def _strings(value: object) -> list[str]:
    """Every string inside nested dicts and lists."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for v in value.values() for s in _strings(v)]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    return []


def test_shipped_heads_record_no_machine_paths() -> None:
    """rlkv_edge/data/default_heads.json names the model by file name + fingerprint; no absolute path anywhere."""
    import importlib.resources
    import json
    import os

    p = Path(str(importlib.resources.files("rlkv_edge") / "data" / "default_heads.json"))
    obj = json.loads(p.read_text())
    assert obj["model"]["name"] == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert obj["model"]["fingerprint"].startswith("sha256-16m:")
    for s in _strings({"model": obj["model"], "training": obj["training"]}):
        assert not os.path.isabs(s), s
        for word in s.split():
            assert not os.path.isabs(word) and "/tmp/" not in word and "/work/" not in word, s


def test_shipped_fingerprint_is_the_bundled_gguf() -> None:
    """The fingerprint is the bundled GGUF's (sha256 of its first 16 MiB and size): convert's check passes."""
    from gguf_fixtures import smollm2_path

    from rlkv_edge.metadata import gguf_fingerprint
    from rlkv_edge.models import default_heads_path

    path = default_heads_path()
    assert path is not None
    assert load_heads(path).model["fingerprint"] == gguf_fingerprint(smollm2_path())


def test_save_heads_cuts_absolute_paths_to_file_names(tmp_path: Path) -> None:
    """What train writes: absolute paths (a checkout, a temporary folder) become file names; relative paths stay."""
    training = {
        "model": "/home/dev/models/m.gguf",
        "out": "/tmp/run1/heads.json",
        "output_dir": "runs/a",
        "text": "data/long.txt",
        "command": "rlkv-edge train /home/dev/models/m.gguf --out=/tmp/run1/heads.json --text data/long.txt",
        "lr": 0.01,
        "config": {"path": "/srv/x/config.json"},
    }
    h = HeadScores(np.array([[0.5, 0.1]]), model={"name": "/home/dev/models/m.gguf"}, training=training)
    save_heads(h, tmp_path / "h.json")
    back = load_heads(tmp_path / "h.json")
    assert back.model["name"] == "m.gguf"
    assert back.training == {
        "model": "m.gguf",
        "out": "heads.json",
        "output_dir": "runs/a",
        "text": "data/long.txt",
        "command": "rlkv-edge train m.gguf --out=heads.json --text data/long.txt",
        "lr": 0.01,
        "config": {"path": "config.json"},
    }


def test_train_names_a_gguf_by_file_name_and_fingerprint(tmp_path: Path) -> None:
    """train's model block: a GGUF MODEL is its file name and the GGUF fingerprint, a hub name stays as given."""
    pytest.importorskip("transformers")
    from gguf_fixtures import smollm2_path

    from rlkv_edge.metadata import gguf_fingerprint
    from rlkv_edge.train.config import TrainConfig
    from rlkv_edge.train.trainer import model_fingerprint, model_name

    cfg = TrainConfig(model=str(smollm2_path()))
    assert model_name(cfg) == smollm2_path().name
    assert model_fingerprint(cfg, None) == gguf_fingerprint(smollm2_path())  # type: ignore[arg-type]
    assert model_name(TrainConfig(model="Qwen/Qwen2.5-1.5B-Instruct")) == "Qwen/Qwen2.5-1.5B-Instruct"
