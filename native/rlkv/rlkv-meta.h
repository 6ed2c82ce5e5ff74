// rlkv-edge: the rlkv.* metadata of a model and the mask rule (docs/DESIGN.md §2).
#pragma once

#include <cstdint>
#include <vector>

struct llama_rlkv_meta {
    uint32_t n_layer   = 0;
    uint32_t n_head    = 0; // query heads per layer
    uint32_t n_head_kv = 0; // KV heads per layer (H)
    uint32_t sink      = 0; // S
    uint32_t window    = 0; // W
    float    sparsity  = 0.0f;

    std::vector<float>    scores; // [n_layer*n_head_kv], layer-major
    std::vector<uint32_t> perm;   // [n_layer*n_head_kv] or empty when the file has none
    std::vector<int32_t>  n_full; // F_l per layer
    int64_t               k_full = 0;

    bool all_full()  const { return k_full == (int64_t) n_layer * n_head_kv; }
    bool all_local() const { return k_full == 0; }
};

// the mask rule: k_full = round_half_even((1 - s)·L·H) (s as f32, arithmetic in double); heads ordered by
// (score desc, layer asc, head asc); the first k_full are full. fills n_full_per_layer[L] and, if not null,
// full_mask[L*H] (1 = full). returns k_full, or -1 on invalid input (s outside [0, 1] or NaN, a NaN score, L or H < 1)
int64_t llama_rlkv_mask_rule(float sparsity, const float * scores, int32_t n_layer, int32_t n_head_kv,
                             int32_t * n_full_per_layer, int8_t * full_mask);
