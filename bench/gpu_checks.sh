#!/usr/bin/env bash
# The NVIDIA GPU checks of docs/RESULTS.md ("GPU"), as one command on a machine with a CUDA GPU, nvcc and a
# Python that has torch, triton and the train extra (docs/DESIGN.md §5):
#
#   bash bench/gpu_checks.sh OUT_DIR [SECONDS]
#
# 1. builds the patched llama.cpp with -DGGML_CUDA=ON into build/cuda (in the background, beside 2-4);
# 2. Triton: the kernel's tests on the GPU, then bench/train_attention.py (fused vs SDPA flash vs reference,
#    fwd+bwd, bf16, 2k-16k tokens, with the fused-vs-reference error of the output and every gradient);
# 3. the training tests (GRPO, distillation, ablation) with the model on the GPU;
# 4. a 3-step GRPO run of `rlkv-edge train` on a random-weight model of SmolLM2-135M's shape;
# 5. on the CUDA build: the native tests with every layer and with one layer offloaded
#    (RLKV_TEST_N_GPU_LAYERS), the offload agreement tests (tests/native/test_native_offload.py) and doctor.
# Every step has a time limit inside SECONDS (default 560) and writes its log to OUT_DIR.
# RLKV_LLAMA_CPP_DIR: a llama.cpp 0c1e57098 tree when the machine cannot download the sdist.
set -uo pipefail
out=${1:?usage: bench/gpu_checks.sh OUT_DIR [SECONDS]}
deadline=$(($(date +%s) + ${2:-560}))
mkdir -p "$out"
build=build/cuda
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 OMP_NUM_THREADS=2
left() { echo $((deadline - $(date +%s))); }
step() {  # step NAME SECONDS COMMAND...: run with a limit (never past the deadline), log to OUT/NAME.log
    local name=$1 limit=$2
    shift 2
    ((limit > $(left) - 5)) && limit=$(($(left) - 5))
    if ((limit <= 0)); then
        echo "== $name: no time left" | tee -a "$out/summary.txt"
        return
    fi
    local t0=$SECONDS
    timeout "$limit" "$@" >"$out/$name.log" 2>&1
    echo "== $name: exit $? after $((SECONDS - t0)) s (limit $limit s)" | tee -a "$out/summary.txt"
}

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$out/summary.txt"
python3 -c "import torch, triton, transformers; print('torch', torch.__version__, 'triton', triton.__version__, \
'transformers', transformers.__version__)" | tee -a "$out/summary.txt"

(
    t0=$SECONDS
    cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DGGML_CUDA=ON -DRLKV_BUILD_TOOLS=OFF \
        -DCMAKE_CUDA_ARCHITECTURES="${CUDA_ARCH:-native}" ${RLKV_LLAMA_CPP_DIR:+-DRLKV_LLAMA_CPP_DIR=$RLKV_LLAMA_CPP_DIR} &&
        nice cmake --build "$build" -j "${BUILD_JOBS:-14}" &&
        cmake --install "$build" --component rlkv_edge --prefix "$build/install"
    echo "build exit $? after $((SECONDS - t0)) s"
) >"$out/cuda_build.log" 2>&1 &
build_pid=$!

step triton_tests 120 python3 -m pytest -q -p no:cacheprovider -m "" tests/train/test_train_triton.py
step train_attention 180 python3 bench/train_attention.py --lengths 2048 4096 8192 16384 \
    --json "$out/train_attention.json"
# (test_train_runtime_agree needs the native library: it runs after the build, below)
step train_tests 150 python3 -m pytest -q -p no:cacheprovider -m "not slow" tests/train \
    --deselect tests/train/test_train_runtime_agree.py
step grpo_smoke 90 python3 - <<'EOF'
import json, subprocess, sys, tempfile
from pathlib import Path

sys.path.insert(0, "tests")
from tiny_models import tiny_model, tiny_tokenizer  # noqa: E402

d = Path(tempfile.mkdtemp())
# SmolLM2-135M's shape (30 layers, 9 query / 3 KV heads of 64, hidden 576), random weights, character tokenizer
tiny_model("llama", hidden_size=576, n_layer=30, n_head=9, n_head_kv=3, max_positions=2048).save_pretrained(d / "m")
tiny_tokenizer().save_pretrained(d / "m")
(d / "p.jsonl").write_text("".join(json.dumps({"question": f"{i}+{i}=?", "answer": str(2 * i)}) + "\n" for i in range(16)))
cmd = [sys.executable, "-c", "from rlkv_edge.cli import main; main()", "train", str(d / "m"), "--dataset", str(d / "p.jsonl"),
       "--steps", "3", "--group-size", "4", "--prompts-per-step", "4", "--micro-batch-size", "8",
       "--max-completion-tokens", "256", "--sink", "16", "--window", "64", "--no-chat", "--no-self-distill",
       "--out", str(d / "heads.json"), "--output-dir", str(d / "ckpt")]
subprocess.run(cmd, check=True)
print(json.loads((d / "heads.json").read_text())["training"])
EOF

wait "$build_pid"
tail -1 "$out/cuda_build.log" | tee -a "$out/summary.txt"
if [ -f "$build/install/rlkv_edge/lib/libggml-cuda.so" ]; then
    export RLKV_LIB_DIR=$PWD/$build/install/rlkv_edge/lib
    step doctor 30 python3 -c "from rlkv_edge.cli import main; main()" doctor
    step train_runtime_agree 60 python3 -m pytest -q -p no:cacheprovider tests/train/test_train_runtime_agree.py
    RLKV_OFFLOAD_REPORT=$out/offload.json step offload_tests 120 python3 -m pytest -q -p no:cacheprovider \
        tests/native/test_native_offload.py
    RLKV_TEST_N_GPU_LAYERS=99 step native_tests_ngl99 150 python3 -m pytest -q -p no:cacheprovider tests/native
    RLKV_TEST_N_GPU_LAYERS=1 step native_tests_ngl1 150 python3 -m pytest -q -p no:cacheprovider tests/native
fi
cat "$out/summary.txt"
