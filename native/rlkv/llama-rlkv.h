// Public C API of rlkv-edge's additions to llama.cpp.
//
// llama-cpp-python mirrors llama.h with ctypes, so llama.h's structs stay untouched; everything rlkv-edge
// adds is exported as new llama_rlkv_* functions declared here and bound in rlkv_edge/runtime.py.
//
// Functions:
//   llama_rlkv_version()       "rlkv-edge <version> llama.cpp <commit>": proves the loaded libllama is our build.
//   llama_rlkv_info()          the model's rlkv metadata: enabled flag, L, query heads, H, S, W, s, and F_l (full
//                              KV heads per layer, which are heads [0, F_l) of the layer). A model without rlkv.*
//                              metadata reports enabled = 0 and F_l = H for every layer.
//   llama_rlkv_kv_bytes()      bytes of the full and of the local (sink + window) KV cache of a context. A context
//                              without an rlkv cache (no metadata, or s = 0) counts everything as full, local = 0.
//   llama_rlkv_kv_cells()      cells of the full and of the local cache (0 for a cache that does not exist).
//   llama_rlkv_fill_seq()      benchmark hook: appends positions to a sequence without computing them, so speed at a
//                              depth of 32k can be measured without a 32k-token prefill (their K/V are whatever
//                              the cells held, zeros in a fresh context: speed, not quality).
//   llama_rlkv_n_full_heads()  the pure mask rule of docs/DESIGN.md §2 (same as rlkv_edge/masks.py): F_l per layer and,
//                              optionally, the [L*H] 0/1 mask of full heads, for any scores (not only sorted ones).
//   llama_rlkv_grouped_decode() whether a decoded token's attention over an F16 cache in host memory reads each K/V
//                              row once per GQA group (native/rlkv/rlkv-decode.h) rather than once per query head.
//   llama_rlkv_grouped_decode_runs() how many attention nodes the grouped decode path has computed in this process
//                              (a benchmark says from it which kernel a row ran on).
#pragma once

#include "llama.h"

#include <stdbool.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

struct llama_rlkv_model_info {
    int32_t enabled;      // 1: the model has rlkv.* metadata (after kv_overrides), 0: it has none
    int32_t n_layer;      // L
    int32_t n_head;       // query heads per layer
    int32_t n_head_kv;    // H, KV heads per layer
    int32_t sink_size;    // S (0 when not enabled)
    int32_t window_size;  // W (0 when not enabled)
    float   sparsity;     // s (0 when not enabled)
    int32_t n_full_total; // sum of F_l
};

// "rlkv-edge <version> llama.cpp <commit>": proves the loaded libllama is our patched build.
LLAMA_API const char * llama_rlkv_version(void);

// fills *out (if not NULL) and n_full_per_layer[0 .. min(L, n_layer_cap)) (if not NULL);
// returns L, or -1 if model is NULL
LLAMA_API int32_t llama_rlkv_info(
        const struct llama_model * model,
        struct llama_rlkv_model_info * out,
        int32_t * n_full_per_layer,
        int32_t   n_layer_cap);

// returns false if ctx is NULL or has no KV memory
LLAMA_API bool llama_rlkv_kv_bytes(
        const struct llama_context * ctx,
        uint64_t * full_bytes,
        uint64_t * local_bytes);

// returns false if ctx is NULL or has no KV memory
LLAMA_API bool llama_rlkv_kv_cells(
        const struct llama_context * ctx,
        uint32_t * full_cells,
        uint32_t * local_cells);

// appends n_tokens positions (seq_pos_max + 1 onwards) to seq_id as llama_decode would, in batches of n_batch and
// ubatches of n_ubatch, but marks the cells only: nothing is computed and the K/V values are left as they were.
// returns 0 on success, -1 on invalid input (ctx NULL, no memory, seq_id out of range, n_tokens < 0),
// 1 when the positions would pass the sequence's context (nothing marked) or the memory has no slot for a batch
// (as llama_decode's 1; batches before it stay marked), -2 when a ubatch cannot be applied
LLAMA_API int32_t llama_rlkv_fill_seq(
        struct llama_context * ctx,
        llama_seq_id           seq_id,
        int32_t                n_tokens);

// true on x86-64 with AVX2/FMA/F16C unless the environment has RLKV_DECODE_ATTN=0 (read when a graph is built);
// the upstream cache (no rlkv metadata, s = 0) uses the path only with RLKV_DECODE_ATTN=force
LLAMA_API bool llama_rlkv_grouped_decode(void);

// attention nodes (one per layer and cache of a decoded ubatch) computed on the grouped decode path so far
LLAMA_API uint64_t llama_rlkv_grouped_decode_runs(void);

// scores: [n_layer*n_head_kv] layer-major; n_full_per_layer: [n_layer] (may be NULL); full_mask: [n_layer*n_head_kv]
// (may be NULL), 1 = full head. returns k_full (number of full heads), or -1 on invalid input
// (sparsity outside [0, 1] or NaN, a NaN score, n_layer or n_head_kv < 1, scores NULL)
LLAMA_API int32_t llama_rlkv_n_full_heads(
        float         sparsity,
        const float * scores,
        int32_t       n_layer,
        int32_t       n_head_kv,
        int32_t     * n_full_per_layer,
        int8_t      * full_mask);

#ifdef __cplusplus
}
#endif
