// rlkv-edge: attention of decoded tokens over an F16 K/V cache in host memory, on the CPU, reading each K/V row
// once for all the query heads that share it.
//
// ggml's CPU flash attention walks a KV head's cells once per query head, so with grouped-query attention each
// K/V row is loaded once per query head of its group (4 times for 32 query / 8 KV heads). Those loads are cheap
// while one KV head's cells stay in the last-level cache and go to memory once they do not (bench/gqa_decode.py).
// Here the query heads of a KV head share one pass over its rows, in three graph nodes:
//
//   index    [n_chunks + 2, n_tokens]: per token, its chunks: runs of the same number of visible cells, a number
//            that follows the token's visible cells alone (not n_kv, the threads or where the cells lie), so a
//            sequence's result is the same at any thread count and beside any other sequences
//   partials [DV + 2, n_q_heads, n_chunks, n_tokens]: per (token, chunk of cells), for each query head the online
//            softmax state of flash attention: max score M, sum S, unnormalised sum of V rows
//   result   [DV, n_q_heads, n_tokens]: the chunks merged (as ggml's split-KV decode merges its partials)
//
// Covered: up to 8 tokens (one decoded token, or one per sequence when parallel sequences decode together, one
// stream each or in a unified cache), F16 K and V rows of the same size (a multiple of 8), V not transposed (flash
// attention on), an F16 mask, no ALiBi, soft-capping or sinks; x86-64 with AVX2/FMA/F16C (checked at run time) or
// aarch64 (NEON). Anything else, or RLKV_DECODE_ATTN=0 in the environment, gets nullptr and the caller builds
// ggml_flash_attn_ext.
//
// RLKV_DECODE_ATTN (read when a graph is built): unset or "1": the rlkv cache's layers; "force": also the upstream
// cache (files without rlkv metadata, s = 0), so that stock and rlkv files can be timed on one kernel; "0": none.
#pragma once

#include "ggml.h"

#include <cstdint>

// whether this process may use the grouped decode path (CPU features, RLKV_DECODE_ATTN != 0)
bool llama_rlkv_decode_attn_enabled();

// whether the upstream KV cache's decode uses it too (RLKV_DECODE_ATTN=force and enabled)
bool llama_rlkv_decode_attn_forced();

// grouped decode nodes computed so far in this process (one per layer and cache of a decoded ubatch)
uint64_t llama_rlkv_decode_attn_runs();

// a pointer to kq_scale that stays valid for the process (for graphs whose input object has nowhere to keep it)
const float * llama_rlkv_decode_scale(float kq_scale);

// q: [D, n_q_heads, n_tokens] F32; k, v: [D, n_kv_heads, n_kv, n_stream] F16 views of one cache's layer; kq_mask:
// [n_kv, n_tokens/n_stream, 1, n_stream] F16; kq_scale must outlive the graph. Returns [D*n_q_heads, n_tokens] (as
// build_attn_mha does), or nullptr when the case is not covered.
ggml_tensor * llama_rlkv_build_decode_attn(
        ggml_context * ctx,
        ggml_tensor  * q,
        ggml_tensor  * k,
        ggml_tensor  * v,
        ggml_tensor  * kq_mask,
        const float  * kq_scale);
