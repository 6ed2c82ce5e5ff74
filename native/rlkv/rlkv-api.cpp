// rlkv-edge: exported C functions (see llama-rlkv.h)
#include "llama-rlkv.h"
#include "rlkv-meta.h"
#include "llama-kv-cache-rlkv.h"
#include "rlkv-decode.h"

#include "llama-model.h"
#include "llama-context.h"
#include "llama-kv-cache.h"
#include "llama-batch.h"
#include "llama-memory.h"

#include <algorithm>

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

int32_t llama_rlkv_fill_seq(struct llama_context * ctx, llama_seq_id seq_id, int32_t n_tokens) {
    if (!ctx || n_tokens < 0 || seq_id < 0 || seq_id >= (llama_seq_id) llama_n_seq_max(ctx)) {
        return -1;
    }
    llama_memory_i * mem = ctx->get_memory();
    if (!mem) {
        return -1;
    }
    const llama_model & model = ctx->get_model();
    const uint32_t n_batch  = ctx->n_batch();
    const uint32_t n_ubatch = ctx->n_ubatch();

    llama_batch_allocr balloc(model.hparams.n_pos_per_embd());

    llama_pos pos = mem->seq_pos_max(seq_id) + 1;
    if ((int64_t) pos + n_tokens > (int64_t) ctx->n_ctx_seq()) {
        return 1; // more positions than the sequence's context: refused before anything is marked
    }
    for (int32_t done = 0; done < n_tokens; ) {
        const int32_t n = std::min<int32_t>(n_tokens - done, (int32_t) n_batch);

        // the batch llama_decode would get: token 0 at each position, no outputs
        llama_batch_ext batch(ctx);
        for (int32_t i = 0; i < n; ++i) {
            const llama_pos p[GGML_MROPE_SECTIONS] = { pos + i, pos + i, pos + i, pos + i };
            const int32_t idx = batch.add_token(seq_id);
            if (idx < 0 || !batch.set_token_id(idx, 0) || !batch.set_token_pos(idx, p)) {
                return -1;
            }
        }
        if (!balloc.init(batch, model.vocab, false)) {
            return -1;
        }

        // what llama_context::decode does with the memory, minus the graph
        llama_memory_context_ptr mctx = mem->init_batch(balloc, n_ubatch, false);
        if (!mctx || mctx->get_status() != LLAMA_MEMORY_STATUS_SUCCESS) {
            return 1;
        }
        do {
            if (!mctx->apply()) {
                return -2;
            }
        } while (mctx->next());

        done += n;
        pos  += n;
    }
    return 0;
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

bool llama_rlkv_grouped_decode(void) {
    return llama_rlkv_decode_attn_enabled();
}

uint64_t llama_rlkv_grouped_decode_runs(void) {
    return llama_rlkv_decode_attn_runs();
}
