// rlkv-edge: reading and validating rlkv.* metadata; the mask rule (twin of rlkv_edge/masks.py).
#include "rlkv-meta.h"
#include "rlkv-hooks.h"
#include "llama-rlkv.h"

#include "llama-impl.h"
#include "llama-model.h"
#include "llama-model-loader.h"
#include "gguf.h"

#include <algorithm>
#include <cfenv>
#include <cmath>
#include <cstring>
#include <numeric>
#include <stdexcept>
#include <string>

int64_t llama_rlkv_mask_rule(float sparsity, const float * scores, int32_t n_layer, int32_t n_head_kv,
                             int32_t * n_full_per_layer, int8_t * full_mask) {
    if (n_layer < 1 || n_head_kv < 1 || scores == nullptr) {
        return -1;
    }
    const double s = (double) sparsity;
    if (!(s >= 0.0 && s <= 1.0)) {
        return -1;
    }
    const int64_t n = (int64_t) n_layer * n_head_kv;
    for (int64_t i = 0; i < n; ++i) {
        if (std::isnan(scores[i])) {
            return -1;
        }
    }

    // same evaluation order as Python: ((1 - s) * L) * H, then round half to even
    const double x = ((1.0 - s) * (double) n_layer) * (double) n_head_kv;
    const int saved_round = std::fegetround();
    std::fesetround(FE_TONEAREST);
    int64_t k_full = (int64_t) std::nearbyint(x);
    std::fesetround(saved_round);
    k_full = std::max<int64_t>(0, std::min<int64_t>(n, k_full));

    std::vector<int64_t> order(n);
    std::iota(order.begin(), order.end(), 0);
    std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) {
        const double sa = scores[a];
        const double sb = scores[b];
        if (sa != sb) {
            return sa > sb;
        }
        return a < b;
    });

    std::vector<int8_t> mask(n, 0);
    for (int64_t i = 0; i < k_full; ++i) {
        mask[order[i]] = 1;
    }
    for (int32_t il = 0; il < n_layer; ++il) {
        int32_t f = 0;
        for (int32_t h = 0; h < n_head_kv; ++h) {
            f += mask[(int64_t) il*n_head_kv + h];
        }
        if (n_full_per_layer) {
            n_full_per_layer[il] = f;
        }
    }
    if (full_mask) {
        std::memcpy(full_mask, mask.data(), n);
    }
    return k_full;
}

[[noreturn]] static void rlkv_fail(const std::string & key, const std::string & what) {
    throw std::runtime_error("rlkv: invalid metadata: " + key + ": " + what);
}

static std::vector<float> rlkv_read_f32_arr(const gguf_context * ctx, const char * key, size_t n_expected) {
    const int64_t kid = gguf_find_key(ctx, key);
    if (kid < 0) {
        rlkv_fail(key, "missing");
    }
    if (gguf_get_kv_type(ctx, kid) != GGUF_TYPE_ARRAY) {
        rlkv_fail(key, std::string("expected an array of f32, got type ") + gguf_type_name(gguf_get_kv_type(ctx, kid)));
    }
    if (gguf_get_arr_type(ctx, kid) != GGUF_TYPE_FLOAT32) {
        rlkv_fail(key, std::string("expected an array of f32, got an array of ") + gguf_type_name(gguf_get_arr_type(ctx, kid)));
    }
    const size_t n = gguf_get_arr_n(ctx, kid);
    if (n != n_expected) {
        rlkv_fail(key, "expected " + std::to_string(n_expected) + " values (n_layer x n_head_kv), got " + std::to_string(n));
    }
    std::vector<float> res(n);
    if (n > 0) {
        std::memcpy(res.data(), gguf_get_arr_data(ctx, kid), n*sizeof(float));
    }
    return res;
}

static bool rlkv_read_u32_arr(const gguf_context * ctx, const char * key, size_t n_expected, std::vector<uint32_t> & res) {
    const int64_t kid = gguf_find_key(ctx, key);
    if (kid < 0) {
        return false;
    }
    if (gguf_get_kv_type(ctx, kid) != GGUF_TYPE_ARRAY) {
        rlkv_fail(key, std::string("expected an array of u32, got type ") + gguf_type_name(gguf_get_kv_type(ctx, kid)));
    }
    const gguf_type at = gguf_get_arr_type(ctx, kid);
    if (at != GGUF_TYPE_UINT32 && at != GGUF_TYPE_INT32) {
        rlkv_fail(key, std::string("expected an array of u32, got an array of ") + gguf_type_name(at));
    }
    const size_t n = gguf_get_arr_n(ctx, kid);
    if (n != n_expected) {
        rlkv_fail(key, "expected " + std::to_string(n_expected) + " values (n_layer x n_head_kv), got " + std::to_string(n));
    }
    res.resize(n);
    if (n > 0) {
        std::memcpy(res.data(), gguf_get_arr_data(ctx, kid), n*sizeof(uint32_t));
    }
    return true;
}

void llama_rlkv_load_meta(llama_model & model, llama_model_loader & ml) {
    model.rlkv.reset();

    const gguf_context * ctx = ml.metadata;
    if (ctx == nullptr) {
        return;
    }

    bool has_rlkv = false;
    for (int64_t i = 0; i < gguf_get_n_kv(ctx); ++i) {
        if (std::strncmp(gguf_get_key(ctx, i), "rlkv.", 5) == 0) {
            has_rlkv = true;
            break;
        }
    }
    if (!has_rlkv) {
        return; // upstream path
    }

    const auto & hp = model.hparams;

    switch (model.arch) {
        case LLM_ARCH_LLAMA:
        case LLM_ARCH_QWEN2:
        case LLM_ARCH_QWEN3:
        case LLM_ARCH_MISTRAL3:
            break;
        default:
            throw std::runtime_error(std::string("rlkv: architecture '") + llm_arch_name(model.arch) +
                "' is not supported with rlkv.* metadata (supported: llama, qwen2, qwen3, mistral3)");
    }

    uint32_t version = 0;
    if (!ml.get_key(std::string("rlkv.version"), version, false)) {
        rlkv_fail("rlkv.version", "missing");
    }
    if (version != 1) {
        rlkv_fail("rlkv.version", "unsupported version " + std::to_string(version) + " (expected 1)");
    }

    if (hp.swa_type != LLAMA_SWA_TYPE_NONE) {
        throw std::runtime_error("rlkv: the model already uses sliding-window attention; rlkv.* metadata is not supported on it");
    }

    auto meta = std::make_shared<llama_rlkv_meta>();

    const uint32_t L = hp.n_layer();
    if (L < 1 || L > LLAMA_MAX_LAYERS) {
        throw std::runtime_error("rlkv: unsupported n_layer " + std::to_string(L));
    }
    const uint32_t H  = hp.n_head_kv(0);
    const uint32_t NH = hp.n_head(0);
    for (uint32_t il = 0; il < L; ++il) {
        if (hp.n_head_kv(il) != H || hp.n_head(il) != NH) {
            throw std::runtime_error("rlkv: models with per-layer head counts are not supported");
        }
    }
    if (H < 1 || NH % H != 0) {
        throw std::runtime_error("rlkv: n_head must be a multiple of n_head_kv >= 1");
    }
    meta->n_layer   = L;
    meta->n_head    = NH;
    meta->n_head_kv = H;

    const size_t n = (size_t) L*H;

    meta->scores = rlkv_read_f32_arr(ctx, "rlkv.head_scores", n);
    for (uint32_t il = 0; il < L; ++il) {
        for (uint32_t h = 0; h < H; ++h) {
            const float v = meta->scores[(size_t) il*H + h];
            if (!std::isfinite(v)) {
                rlkv_fail("rlkv.head_scores", "layer " + std::to_string(il) + " head " + std::to_string(h) + " is not finite");
            }
            if (h > 0 && v > meta->scores[(size_t) il*H + h - 1]) {
                rlkv_fail("rlkv.head_scores", "layer " + std::to_string(il) + " is not non-increasing at head " + std::to_string(h) +
                        " (heads must be re-ordered by score; use rlkv-edge convert)");
            }
        }
    }

    if (rlkv_read_u32_arr(ctx, "rlkv.head_perm", n, meta->perm)) {
        for (uint32_t il = 0; il < L; ++il) {
            std::vector<char> seen(H, 0);
            for (uint32_t h = 0; h < H; ++h) {
                const uint32_t p = meta->perm[(size_t) il*H + h];
                if (p >= H || seen[p]) {
                    rlkv_fail("rlkv.head_perm", "layer " + std::to_string(il) + " is not a permutation of 0.." + std::to_string(H - 1));
                }
                seen[p] = 1;
            }
        }
    }

    float s = 0.0f;
    if (!ml.get_key(std::string("rlkv.sparsity"), s, false)) {
        rlkv_fail("rlkv.sparsity", "missing");
    }
    if (!(s >= 0.0f && s <= 1.0f)) {
        rlkv_fail("rlkv.sparsity", "must be in [0, 1], got " + std::to_string(s));
    }
    meta->sparsity = s;

    uint32_t S = 0;
    uint32_t W = 0;
    if (!ml.get_key(std::string("rlkv.sink_size"), S, false)) {
        rlkv_fail("rlkv.sink_size", "missing");
    }
    if (!ml.get_key(std::string("rlkv.window_size"), W, false)) {
        rlkv_fail("rlkv.window_size", "missing");
    }
    const uint32_t max_sw = 1u << 30;
    if (S > max_sw) {
        rlkv_fail("rlkv.sink_size", "too large: " + std::to_string(S));
    }
    if (W > max_sw) {
        rlkv_fail("rlkv.window_size", "too large: " + std::to_string(W));
    }
    if (W < 1) {
        // a local head always sees its own token: W >= 1 (the converter refuses W = 0 too)
        rlkv_fail("rlkv.window_size", "must be >= 1, got " + std::to_string(W));
    }
    meta->sink   = S;
    meta->window = W;

    meta->n_full.resize(L);
    meta->k_full = llama_rlkv_mask_rule(s, meta->scores.data(), (int32_t) L, (int32_t) H, meta->n_full.data(), nullptr);
    if (meta->k_full < 0) {
        rlkv_fail("rlkv.sparsity", "mask rule failed");
    }

    {
        std::string fl;
        for (uint32_t il = 0; il < L; ++il) {
            fl += (il ? "," : "") + std::to_string(meta->n_full[il]);
        }
        LLAMA_LOG_INFO("%s: rlkv: L = %u, H = %u, S = %u, W = %u, s = %.4f, full heads = %lld/%zu, F_l = [%s]\n",
                __func__, L, H, S, W, (double) s, (long long) meta->k_full, n, fl.c_str());
    }

    model.rlkv = std::move(meta);
}
