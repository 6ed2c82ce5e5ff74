// rlkv-edge: exported C functions (see llama-rlkv.h)
#include "llama-rlkv.h"
#include "rlkv-meta.h"
#include "llama-kv-cache-rlkv.h"

#include "llama-model.h"
#include "llama-context.h"
#include "llama-kv-cache.h"

int32_t llama_rlkv_info(
        const struct llama_model * model,
        struct llama_rlkv_model_info * out,
        int32_t * n_full_per_layer,
        int32_t   n_layer_cap) {
    if (!model) {
        return -1;
    }

    const auto & hp = model->hparams;
    const llama_rlkv_meta * m = model->rlkv.get();

    const int32_t L = m ? (int32_t) m->n_layer : (int32_t) hp.n_layer();
    const int32_t H = m ? (int32_t) m->n_head_kv : (L > 0 ? (int32_t) hp.n_head_kv(0) : 0);

    if (out) {
        out->enabled      = m ? 1 : 0;
        out->n_layer      = L;
        out->n_head       = m ? (int32_t) m->n_head : (L > 0 ? (int32_t) hp.n_head(0) : 0);
        out->n_head_kv    = H;
        out->sink_size    = m ? (int32_t) m->sink : 0;
        out->window_size  = m ? (int32_t) m->window : 0;
        out->sparsity     = m ? m->sparsity : 0.0f;
        out->n_full_total = m ? (int32_t) m->k_full : L*H;
    }

    if (n_full_per_layer) {
        for (int32_t il = 0; il < L && il < n_layer_cap; ++il) {
            n_full_per_layer[il] = m ? m->n_full[il] : (int32_t) hp.n_head_kv(il);
        }
    }

    return L;
}

static size_t rlkv_mem_bytes(const llama_memory_i * mem) {
    size_t res = 0;
    for (const auto & [_, sz] : mem->memory_breakdown()) {
        res += sz;
    }
    return res;
}

bool llama_rlkv_kv_bytes(const struct llama_context * ctx, uint64_t * full_bytes, uint64_t * local_bytes) {
    if (!ctx) {
        return false;
    }
    const llama_memory_i * mem = ctx->get_memory();
    if (!mem) {
        return false;
    }
    uint64_t f = 0;
    uint64_t l = 0;
    if (const auto * r = dynamic_cast<const llama_kv_cache_rlkv *>(mem)) {
        f = r->bytes_full();
        l = r->bytes_local();
    } else {
        f = rlkv_mem_bytes(mem);
    }
    if (full_bytes)  { *full_bytes  = f; }
    if (local_bytes) { *local_bytes = l; }
    return true;
}

bool llama_rlkv_kv_cells(const struct llama_context * ctx, uint32_t * full_cells, uint32_t * local_cells) {
    if (!ctx) {
        return false;
    }
    const llama_memory_i * mem = ctx->get_memory();
    if (!mem) {
        return false;
    }
    uint32_t f = 0;
    uint32_t l = 0;
    if (const auto * r = dynamic_cast<const llama_kv_cache_rlkv *>(mem)) {
        f = r->get_full()  ? r->get_full()->get_size()  : 0;
        l = r->get_local() ? r->get_local()->get_size() : 0;
    } else if (const auto * kv = dynamic_cast<const llama_kv_cache *>(mem)) {
        f = kv->get_size();
    }
    if (full_cells)  { *full_cells  = f; }
    if (local_cells) { *local_cells = l; }
    return true;
}

int32_t llama_rlkv_n_full_heads(
        float         sparsity,
        const float * scores,
        int32_t       n_layer,
        int32_t       n_head_kv,
        int32_t     * n_full_per_layer,
        int8_t      * full_mask) {
    return (int32_t) llama_rlkv_mask_rule(sparsity, scores, n_layer, n_head_kv, n_full_per_layer, full_mask);
}
