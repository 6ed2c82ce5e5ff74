// rlkv-edge: attention over the per-head KV memory.
// Q/K/V are split by head range with zero-copy views (full heads [0, F_l), local heads [F_l, H); the query heads of
// a KV head's GQA group follow it), each range is stored in and attends over its own cache with its own mask, and the
// two outputs are concatenated along the head dimension before wo. Layers with one kind of head use one call.
#include "rlkv-hooks.h"
#include "llama-kv-cache-rlkv.h"
#include "rlkv-decode.h"

#include "llama-impl.h"
#include "llama-graph.h"
#include "llama-cparams.h"
#include "llama-batch.h"

#include <stdexcept>
#include <vector>

class llm_graph_input_attn_kv_rlkv : public llm_graph_input_attn_kv {
public:
    llm_graph_input_attn_kv_rlkv(
            const llama_hparams & hparams,
            const llama_cparams & cparams,
            const llama_kv_cache_rlkv_context * mctx_rlkv) :
        llm_graph_input_attn_kv(hparams, cparams, mctx_rlkv->get_full()),
        kq_scale(hparams.n_layer(), 0.0f),
        mctx_rlkv(mctx_rlkv) {
    }

    void set_input(const llama_ubatch * ubatch) override;

    bool can_reuse(const llm_graph_params & params) override;

    // the parent's self_k_idxs / self_v_idxs / self_kq_mask belong to the full cache
    ggml_tensor * self_k_idxs_loc  = nullptr;
    ggml_tensor * self_v_idxs_loc  = nullptr;
    ggml_tensor * self_kq_mask_loc = nullptr;

    // the Hadamard rotations (the same for both caches) come from this one
    bool rot_from_local = false;

    // per layer: the grouped decode path (rlkv-decode.h) reads its scale from here while the graph runs
    std::vector<float> kq_scale;

    const llama_kv_cache_rlkv_context * mctx_rlkv;
};

static ggml_tensor * rlkv_build_kq_mask(
        ggml_context * ctx,
        const llama_kv_cache_context * mctx,
        const llama_ubatch & ubatch,
        const llama_cparams & cparams,
        const char * name) {
    const auto n_kv     = mctx->get_n_kv();
    const auto n_tokens = ubatch.n_tokens;
    const auto n_stream = cparams.kv_unified ? 1 : ubatch.n_seqs_unq;

    const auto type = cparams.flash_attn ? GGML_TYPE_F16 : GGML_TYPE_F32;

    ggml_tensor * res = ggml_new_tensor_4d(ctx, type, n_kv, n_tokens/n_stream, 1, n_stream);
    ggml_set_input(res);
    ggml_set_name(res, name);

    return res;
}

static bool rlkv_can_reuse_kq_mask(
        ggml_tensor * kq_mask,
        const llama_kv_cache_context * mctx,
        const llama_ubatch & ubatch,
        const llama_cparams & cparams) {
    const auto n_kv     = mctx->get_n_kv();
    const auto n_tokens = ubatch.n_tokens;
    const auto n_stream = cparams.kv_unified ? 1 : ubatch.n_seqs_unq;

    bool res = true;

    res &= (kq_mask->ne[0] == n_kv);
    res &= (kq_mask->ne[1] == n_tokens/n_stream);
    res &= (kq_mask->ne[2] == 1);
    res &= (kq_mask->ne[3] == n_stream);

    return res;
}

void llm_graph_input_attn_kv_rlkv::set_input(const llama_ubatch * ubatch) {
    const auto * full  = mctx_rlkv->get_full();
    const auto * local = mctx_rlkv->get_local();

    if (full) {
        if (self_k_idxs && self_k_idxs->buffer) {
            full->set_input_k_idxs(self_k_idxs, ubatch);
        }
        if (self_v_idxs && self_v_idxs->buffer) {
            full->set_input_v_idxs(self_v_idxs, ubatch);
        }
        if (self_kq_mask && self_kq_mask->buffer) {
            full->set_input_kq_mask(self_kq_mask, ubatch, cparams.causal_attn);
        }
    }

    if (local) {
        if (self_k_idxs_loc && self_k_idxs_loc->buffer) {
            local->set_input_k_idxs(self_k_idxs_loc, ubatch);
        }
        if (self_v_idxs_loc && self_v_idxs_loc->buffer) {
            local->set_input_v_idxs(self_v_idxs_loc, ubatch);
        }
        if (self_kq_mask_loc && self_kq_mask_loc->buffer) {
            local->set_input_kq_mask(self_kq_mask_loc, ubatch, cparams.causal_attn);
        }
    }

    const auto * rot = rot_from_local ? local : full;
    if (rot) {
        if (self_k_rot && self_k_rot->buffer) {
            rot->set_input_k_rot(self_k_rot);
        }
        if (self_v_rot && self_v_rot->buffer) {
            rot->set_input_v_rot(self_v_rot);
        }
    }
}

bool llm_graph_input_attn_kv_rlkv::can_reuse(const llm_graph_params & params) {
    const auto * m = dynamic_cast<const llama_kv_cache_rlkv_context *>(params.mctx);
    if (!m) {
        return false;
    }

    mctx_rlkv  = m;
    this->mctx = m->get_full();

    const auto * full  = m->get_full();
    const auto * local = m->get_local();

    bool res = true;

    res &= (full  != nullptr) == (self_k_idxs     != nullptr);
    res &= (local != nullptr) == (self_k_idxs_loc != nullptr);
    if (!res) {
        return false;
    }

    if (full) {
        res &= self_k_idxs->ne[0] == params.ubatch.n_tokens;
        res &= rlkv_can_reuse_kq_mask(self_kq_mask, full, params.ubatch, params.cparams);
    }
    if (local) {
        res &= self_k_idxs_loc->ne[0] == params.ubatch.n_tokens;
        res &= rlkv_can_reuse_kq_mask(self_kq_mask_loc, local, params.ubatch, params.cparams);
    }

    return res;
}

llm_graph_input_attn_kv * llama_rlkv_build_attn_inp_kv(const llm_graph_context & g) {
    const auto * m = dynamic_cast<const llama_kv_cache_rlkv_context *>(g.mctx);
    if (!m) {
        return nullptr;
    }

    auto inp = std::make_unique<llm_graph_input_attn_kv_rlkv>(g.hparams, g.cparams, m);

    const auto * full  = m->get_full();
    const auto * local = m->get_local();

    if (full) {
        inp->self_k_idxs      = full->build_input_k_idxs(g.ctx0, g.ubatch);
        inp->self_v_idxs      = full->build_input_v_idxs(g.ctx0, g.ubatch);
        inp->self_kq_mask     = rlkv_build_kq_mask(g.ctx0, full, g.ubatch, g.cparams, "attn_inp_kq_mask");
        inp->self_kq_mask_cnv = inp->self_kq_mask;
    }

    if (local) {
        inp->self_k_idxs_loc  = local->build_input_k_idxs(g.ctx0, g.ubatch);
        inp->self_v_idxs_loc  = local->build_input_v_idxs(g.ctx0, g.ubatch);
        inp->self_kq_mask_loc = rlkv_build_kq_mask(g.ctx0, local, g.ubatch, g.cparams, "attn_inp_kq_mask_rlkv_local");
    }

    inp->rot_from_local = full == nullptr;
    const auto * rot = full ? full : local;
    inp->self_k_rot = rot->build_input_k_rot(g.ctx0);
    inp->self_v_rot = rot->build_input_v_rot(g.ctx0);

    return (llm_graph_input_attn_kv *) g.res->add_input(std::move(inp));
}

ggml_tensor * llama_rlkv_build_attn(
        const llm_graph_context & g,
        llm_graph_input_attn_kv * inp_base,
        ggml_tensor * wo,
        ggml_tensor * wo_b,
        ggml_tensor * wo_s,
        ggml_tensor * q_cur,
        ggml_tensor * k_cur,
        ggml_tensor * v_cur,
        ggml_tensor * kq_b,
        ggml_tensor * sinks,
        float         kq_scale,
        int           il) {
    auto * inp = dynamic_cast<llm_graph_input_attn_kv_rlkv *>(inp_base);
    if (!inp) {
        return nullptr;
    }

    GGML_ASSERT(kq_b  == nullptr && "rlkv: KQ bias is not supported");
    GGML_ASSERT(sinks == nullptr && "rlkv: attention sinks tensors are not supported");
    GGML_ASSERT(!g.cparams.training && "rlkv: training graphs are not supported");

    ggml_context * ctx0 = g.ctx0;
    ggml_cgraph  * gf   = g.gf;

    if (inp->self_k_rot) {
        q_cur = llama_mul_mat_hadamard(ctx0, q_cur, inp->self_k_rot);
        k_cur = llama_mul_mat_hadamard(ctx0, k_cur, inp->self_k_rot);
    }
    if (inp->self_v_rot) {
        v_cur = llama_mul_mat_hadamard(ctx0, v_cur, inp->self_v_rot);
    }

    ggml_build_forward_expand(gf, q_cur);
    ggml_build_forward_expand(gf, v_cur);
    ggml_build_forward_expand(gf, k_cur);

    const auto * mrl = inp->mctx_rlkv->get_kv();
    GGML_ASSERT(mrl != nullptr);

    const int64_t H  = mrl->get_n_head_kv();
    const int64_t F  = mrl->get_n_full()[il];
    const int64_t nq = q_cur->ne[1];

    GGML_ASSERT(k_cur->ne[1] == H && v_cur->ne[1] == H && "rlkv: unexpected K/V layout");
    GGML_ASSERT(nq % H == 0);

    const int64_t gq = nq / H; // query heads per KV head

    const auto * full  = inp->mctx_rlkv->get_full();
    const auto * local = inp->mctx_rlkv->get_local();

    // decoded tokens on the CPU (up to 8, rlkv-decode.h): each K/V row read once per GQA group, not per query head
    inp->kq_scale[il] = kq_scale;
    const bool grouped_decode = g.cparams.flash_attn && !g.hparams.attn_soft_cap && g.hparams.f_max_alibi_bias == 0.0f;

    auto attend = [&](const llama_kv_cache_context * c, ggml_tensor * k_idxs, ggml_tensor * v_idxs, ggml_tensor * mask,
                      ggml_tensor * q, ggml_tensor * k, ggml_tensor * v) {
        GGML_ASSERT(c != nullptr);
        ggml_build_forward_expand(gf, c->cpy_k(ctx0, k, k_idxs, il));
        ggml_build_forward_expand(gf, c->cpy_v(ctx0, v, v_idxs, il));

        ggml_tensor * kk = c->get_k(ctx0, il);
        ggml_tensor * vv = c->get_v(ctx0, il);

        if (grouped_decode) {
            if (ggml_tensor * cur = llama_rlkv_build_decode_attn(ctx0, q, kk, vv, mask, &inp->kq_scale[il])) {
                return cur;
            }
        }

        return g.build_attn_mha(q, kk, vv, nullptr, mask, nullptr, nullptr, 0, kq_scale, il);
    };

    constexpr size_t RLKV_MAX_OFFSET_ALIGNMENT = 256; // the largest minStorageBufferOffsetAlignment Vulkan allows

    auto view_heads = [&](ggml_tensor * t, int64_t h0, int64_t nh) {
        return ggml_view_3d(ctx0, t, t->ne[0], nh, t->ne[2], t->nb[1], t->nb[2], h0*t->nb[1]);
    };

    ggml_tensor * cur;

    if (F == H) {
        cur = attend(full, inp->self_k_idxs, inp->self_v_idxs, inp->self_kq_mask, q_cur, k_cur, v_cur);
    } else if (F == 0) {
        cur = attend(local, inp->self_k_idxs_loc, inp->self_v_idxs_loc, inp->self_kq_mask_loc, q_cur, k_cur, v_cur);
    } else {
        ggml_tensor * q_f = view_heads(q_cur, 0,      F*gq);
        ggml_tensor * q_l = view_heads(q_cur, F*gq,   (H - F)*gq);
        if (q_l->view_offs % RLKV_MAX_OFFSET_ALIGNMENT != 0) {
            // GPU backends bind Q at its byte offset: Vulkan asserts that the offset is a multiple of the device's
            // minStorageBufferOffsetAlignment (up to 256). Odd head sizes get a contiguous copy instead.
            q_l = ggml_cont(ctx0, q_l);
        }
        ggml_tensor * k_f = view_heads(k_cur, 0,      F);
        ggml_tensor * k_l = view_heads(k_cur, F,      H - F);
        ggml_tensor * v_f = view_heads(v_cur, 0,      F);
        ggml_tensor * v_l = view_heads(v_cur, F,      H - F);

        ggml_tensor * cur_f = attend(full,  inp->self_k_idxs,     inp->self_v_idxs,     inp->self_kq_mask,     q_f, k_f, v_f);
        ggml_tensor * cur_l = attend(local, inp->self_k_idxs_loc, inp->self_v_idxs_loc, inp->self_kq_mask_loc, q_l, k_l, v_l);

        cur = ggml_concat(ctx0, cur_f, cur_l, 0);
    }
    g.cb(cur, "kqv_out", il);

    if (inp->self_v_rot) {
        cur = llama_mul_mat_hadamard(ctx0, cur, inp->self_v_rot);
    }

    if (wo) {
        cur = g.build_lora_mm(wo, cur, wo_s);
    }

    if (wo_b) {
        cur = ggml_add(ctx0, cur, wo_b);
    }

    return cur;
}

ggml_tensor * llama_rlkv_build_attn_upstream(
        const llm_graph_context & g,
        ggml_tensor * q,
        ggml_tensor * k,
        ggml_tensor * v,
        ggml_tensor * kq_b,
        ggml_tensor * kq_mask,
        ggml_tensor * sinks,
        float         kq_scale) {
    if (!llama_rlkv_decode_attn_forced() || kq_b != nullptr || sinks != nullptr || g.cparams.training ||
        !g.cparams.flash_attn || g.hparams.attn_soft_cap || g.hparams.f_max_alibi_bias != 0.0f) {
        return nullptr;
    }
    return llama_rlkv_build_decode_attn(g.ctx0, q, k, v, kq_mask, llama_rlkv_decode_scale(kq_scale));
}
