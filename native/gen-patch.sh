#!/bin/sh
# Regenerates native/llama.cpp.patch from a pristine and a patched llama.cpp tree (developer tool).
#   native/gen-patch.sh <pristine-llama.cpp> <patched-llama.cpp> > native/llama.cpp.patch
set -e
A="$1"; B="$2"
for f in src/llama-hparams.h src/llama-kv-cache.h src/llama-kv-cache.cpp src/llama-model.h src/llama-model.cpp \
         src/llama-model-loader.cpp src/llama-graph.cpp src/llama-context.cpp src/llama-kv-cache-msa.cpp; do
    diff -u --label "a/$f" --label "b/$f" "$A/$f" "$B/$f" || true
done
