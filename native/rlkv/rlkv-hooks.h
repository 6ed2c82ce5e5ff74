// rlkv-edge: the few entry points that the patched llama.cpp sources call (see native/llama.cpp.patch).
// Internal C++ header; the public C API is in llama-rlkv.h.
#pragma once

#include "llama.h"
#include "ggml.h"

struct llama_model;
struct llama_model_loader;
struct llama_memory_params;
struct llama_cparams;
struct llama_memory_i;
struct llama_memory_context_i;
struct llm_graph_context;
class  llm_graph_input_attn_kv;

// reads and validates rlkv.* (through the loader's get_key, so kv_overrides apply) and sets model.rlkv;
// throws std::runtime_error naming the key on invalid metadata; leaves model.rlkv null without rlkv.* keys
void llama_rlkv_load_meta(llama_model & model, llama_model_loader & ml);

// the per-head memory for a model with rlkv metadata; nullptr when every head is full (upstream cache)
llama_memory_i * llama_rlkv_create_memory(const llama_model & model, const llama_memory_params & params, const llama_cparams & cparams);

// graph hooks: return nullptr when the memory / input is not rlkv (the caller then runs the upstream code)
llm_graph_input_attn_kv * llama_rlkv_build_attn_inp_kv(const llm_graph_context & g);

ggml_tensor * llama_rlkv_build_attn(
        const llm_graph_context & g,
        llm_graph_input_attn_kv * inp,
        ggml_tensor * wo,
        ggml_tensor * wo_b,
        ggml_tensor * wo_s,
        ggml_tensor * q_cur,
        ggml_tensor * k_cur,
        ggml_tensor * v_cur,
        ggml_tensor * kq_b,
        ggml_tensor * sinks,
        float         kq_scale,
        int           il);

// the upstream cache's attention of decoded tokens on the grouped decode path (rlkv-decode.h) when the environment
// has RLKV_DECODE_ATTN=force and the case is covered; nullptr otherwise (the caller then runs build_attn_mha)
ggml_tensor * llama_rlkv_build_attn_upstream(
        const llm_graph_context & g,
        ggml_tensor * q,
        ggml_tensor * k,
        ggml_tensor * v,
        ggml_tensor * kq_b,
        ggml_tensor * kq_mask,
        ggml_tensor * sinks,
        float         kq_scale);

// true when the memory refused the batch (llama_decode then returns -1, invalid input for that sequence) rather than
// lacking room for it (1, which callers such as llama-server retry after evicting other slots' caches)
bool llama_rlkv_batch_refused(const llama_memory_context_i * mctx);
