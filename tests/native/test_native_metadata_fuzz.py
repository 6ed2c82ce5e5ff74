"""Corrupted rlkv.* metadata: every load fails cleanly or succeeds correctly, never crashes (run in subprocesses;
docs/DESIGN.md §3 and §4)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
from tiny_runtime import (
    sorted_scores,
    write_gguf,
)

_FUZZ_CHILD = textwrap.dedent(
    """
    import sys, os
    try:
        import rlkv_edge  # noqa
    except Exception:
        pass
    import llama_cpp
    ok = 0
    bad = 0
    for p in sys.argv[1:]:
        m = llama_cpp.llama_model_load_from_file(p.encode(), llama_cpp.llama_model_default_params())
        if not m:
            bad += 1
            print("FAIL", p, flush=True)
            continue
        cp = llama_cpp.llama_context_default_params()
        cp.n_ctx = 64
        cp.n_batch = 8
        cp.n_ubatch = 8
        ctx = llama_cpp.llama_init_from_model(m, cp)
        if ctx:
            b = llama_cpp.llama_batch_get_one((llama_cpp.llama_token * 4)(5, 6, 7, 8), 4)
            rc = llama_cpp.llama_decode(ctx, b)
            assert rc == 0, rc
            llama_cpp.llama_free(ctx)
        llama_cpp.llama_model_free(m)
        ok += 1
        print("OK", p, flush=True)
    print("DONE", ok, bad, flush=True)
    """
)


def _corruptions(rng, L, H):
    """(description, rlkv dict or None, extra writer callback) for one random corruption."""
    base = dict(scores=np.array([[0.9, 0.2], [0.5, 0.1]], np.float32), sparsity=0.5, sink=4, window=8)
    kind = int(rng.integers(0, 14))
    r = dict(base)
    extra = None
    valid = False
    if kind == 0:  # wrong scores length
        n = int(rng.choice([0, 1, 3, 5, 7, 100]))
        r["scores"] = rng.random(n).astype(np.float32).reshape(1, -1) if n else np.zeros((1, 0), np.float32)
        r["perm"] = None  # identity of the (wrong) scores shape
    elif kind == 1:  # non-finite scores
        sc = base["scores"].copy()
        sc[rng.integers(0, L), rng.integers(0, H)] = rng.choice([np.nan, np.inf, -np.inf])
        r["scores"] = sc
    elif kind == 2:  # increasing inside a layer
        sc = base["scores"].copy()
        sc[int(rng.integers(0, L))] = [0.1, 0.9]
        r["scores"] = sc
    elif kind == 3:  # bad perm values
        perm = np.tile(np.arange(H), L)
        perm[int(rng.integers(0, L * H))] = int(rng.choice([2, 5, 1000, 2**31]))
        r["perm"] = perm
    elif kind == 4:  # perm not a permutation (duplicate)
        r["perm"] = np.zeros(L * H, np.int64)
    elif kind == 5:  # sparsity out of range
        r["sparsity"] = float(rng.choice([-0.1, 1.0001, 2.0, np.nan, np.inf, -np.inf, 1e30]))
    elif kind == 6:  # S + W = 0
        r["sink"], r["window"] = 0, 0
    elif kind == 7:  # huge S or W
        r["sink"] = int(rng.choice([2**31, 2**32 - 1, 4, 0]))
        r["window"] = int(rng.choice([2**31, 2**32 - 1, 1]))
        valid = r["sink"] <= 2**30 and r["window"] <= 2**30
    elif kind == 8:  # bad version
        r["version"] = int(rng.choice([0, 2, 7, 2**32 - 1]))
    elif kind == 9:  # wrong perm length
        r["perm"] = np.arange(int(rng.choice([0, 1, 3, 5, 9]))) % H
        if len(r["perm"]) == 0:
            r["perm"] = np.zeros(1, np.int64)
    elif kind == 10:  # valid random metadata
        r["scores"] = sorted_scores(rng, L, H)
        r["sparsity"] = float(rng.random())
        r["sink"], r["window"] = int(rng.integers(0, 20)), int(rng.integers(1, 20))
        valid = True
    else:  # wrong key types: write the keys by hand
        r = None
        which = kind - 11

        def extra(wr, which=which):
            if which == 0:
                wr.add_string("rlkv.version", "1")
                wr.add_array("rlkv.head_scores", [0.5] * (L * H))
            elif which == 1:
                wr.add_uint32("rlkv.version", 1)
                wr.add_array("rlkv.head_scores", [1] * (L * H))  # ints, not f32
                wr.add_float32("rlkv.sparsity", 0.5)
                wr.add_uint32("rlkv.sink_size", 4)
                wr.add_uint32("rlkv.window_size", 4)
            else:
                wr.add_uint32("rlkv.version", 1)
                wr.add_float32("rlkv.head_scores", 0.5)  # scalar, not array
                wr.add_string("rlkv.sparsity", "half")
                wr.add_int32("rlkv.sink_size", -3)

    return kind, r, extra, valid


def test_corrupted_metadata_fuzz(tmp_path, weights):
    rng = np.random.default_rng(1234)
    paths, valid = [], {}
    n = 320
    for i in range(n):
        kind, r, extra, is_valid = _corruptions(rng, weights.n_layer, weights.n_head_kv)
        p = tmp_path / f"fuzz_{i:03d}_k{kind}.gguf"
        try:
            write_gguf(p, weights, rlkv=r, extra=extra)
        except Exception:
            continue  # gguf-py refused to write it (e.g. an unrepresentable value)
        paths.append(str(p))
        valid[str(p)] = is_valid
    assert len(paths) >= 300
    # a few processes, each loading many files: an abort shows up as a missing DONE line and rc != 0
    results = {}
    chunk = 80
    for i in range(0, len(paths), chunk):
        batch = paths[i : i + chunk]
        proc = subprocess.run(
            [sys.executable, "-c", _FUZZ_CHILD, *batch],
            capture_output=True,
            text=True,
            timeout=600,
            env=dict(os.environ),
        )
        assert proc.returncode == 0 and "DONE" in proc.stdout, (
            proc.returncode,
            proc.stdout[-2000:],
            proc.stderr[-4000:],
        )
        for line in proc.stdout.splitlines():
            parts = line.split()
            if len(parts) == 2 and parts[0] in ("OK", "FAIL"):
                results[parts[1]] = parts[0]
    assert len(results) == len(paths)
    # every file gets its own verdict: valid metadata loads and decodes, every corruption is refused
    wrong = [(p, results[p]) for p, is_valid in valid.items() if results[p] != ("OK" if is_valid else "FAIL")]
    assert not wrong, wrong[:10]
    assert 0 < sum(valid.values()) < len(valid) - 200  # both verdicts are exercised, most files corrupted
