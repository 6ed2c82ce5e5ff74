// rlkv-edge: per-head KV memory. Two llama_kv_cache instances, in the manner of llama_kv_cache_iswa:
//   full : heads [0, F_l) of every layer, n_ctx cells
//   local: heads [F_l, H) of every layer, a ring of S + W + n_ubatch cells (padded to 256) with
//          LLAMA_SWA_TYPE_RLKV masking (key k visible to query p iff k <= p and (k < S or p - W < k))
// Either cache is absent when no layer has heads of its kind.
#pragma once

#include "llama-kv-cache.h"
#include "llama-hparams.h"
#include "rlkv-meta.h"

#include <functional>
#include <memory>
#include <vector>

class llama_kv_cache_rlkv : public llama_memory_i {
public:
    llama_kv_cache_rlkv(
            const llama_model & model,
        const llama_rlkv_meta & meta,
                    ggml_type   type_k,
                    ggml_type   type_v,
                         bool   v_trans,
                         bool   offload,
                         bool   swa_full,
                         bool   unified,
                     uint32_t   kv_size,
                     uint32_t   n_seq_max,
                     uint32_t   n_ubatch);

    ~llama_kv_cache_rlkv() = default;

    llama_memory_context_ptr init_batch(llama_batch_allocr & balloc, uint32_t n_ubatch, bool embd_all) override;
    llama_memory_context_ptr init_full() override;
    llama_memory_context_ptr init_update(llama_context * lctx, bool optimize) override;

    bool get_can_shift() const override;

    void clear(bool data) override;

    bool seq_rm  (llama_seq_id seq_id,                              llama_pos p0, llama_pos p1) override;
    void seq_cp  (llama_seq_id seq_id_src, llama_seq_id seq_id_dst, llama_pos p0, llama_pos p1) override;
    void seq_keep(llama_seq_id seq_id)                                                          override;
    void seq_add (llama_seq_id seq_id,                              llama_pos p0, llama_pos p1, llama_pos shift) override;
    void seq_div (llama_seq_id seq_id,                              llama_pos p0, llama_pos p1, int d) override;

    llama_pos seq_pos_min(llama_seq_id seq_id) const override;
    llama_pos seq_pos_max(llama_seq_id seq_id) const override;

    std::map<ggml_backend_buffer_type_t, size_t> memory_breakdown() const override;

    void state_write(llama_io_write_i & io, llama_seq_id seq_id = -1, llama_state_seq_flags flags = 0) const override;
    void state_read (llama_io_read_i  & io, llama_seq_id seq_id = -1, llama_state_seq_flags flags = 0) override;

    // rlkv specific
    llama_kv_cache * get_full () const { return kv_full.get(); }  // may be null
    llama_kv_cache * get_local() const { return kv_local.get(); } // may be null

    const std::vector<int32_t> & get_n_full() const { return n_full; }
    uint32_t get_n_head_kv() const { return n_head_kv; }

    // bytes held by each cache's buffers
    size_t bytes_full () const;
    size_t bytes_local() const;

private:
    // the positions seq_id logically holds (the full cache's; without one, 0 .. the newest of R, the ring's)
    std::vector<llama_pos> logical_positions(llama_seq_id seq_id, const std::vector<llama_pos> & R) const;

    // true when, after removing [r0, r1) of seq_id and moving every other position p to move(p) (negative:
    // dropped), the next query's local heads find every key they need (sinks and window) resident in the ring
    bool local_after_ok(
            llama_seq_id seq_id, llama_pos r0, llama_pos r1, const std::function<int64_t(llama_pos)> & move) const;

    // false when seq_id has no position in [p0, p1) (its positions' range does not meet it)
    bool seq_touches(llama_seq_id seq_id, llama_pos p0, llama_pos p1) const;

    // true when removing [p0, p1) of seq_id leaves every key the next query of the local heads needs resident
    // (as it is, and after the context shift that usually follows)
    bool local_rm_ok(llama_seq_id seq_id, llama_pos p0, llama_pos p1) const;

    // true when moving the positions in [p0, p1) of seq_id (every sequence for -1) by `move` (seq_add, seq_div)
    // leaves every key the next query of the local heads needs resident
    bool local_move_ok(
            llama_seq_id seq_id, llama_pos p0, llama_pos p1, const std::function<int64_t(llama_pos)> & move) const;

    // true when a copy of [p0, p1) of seq_id_src would hold every key its next query's local heads need
    bool local_cp_ok(llama_seq_id seq_id_src, llama_pos p0, llama_pos p1) const;

    // true when seq_id holds every key a token at position q needs (all of [0, q) for the full heads, the sinks
    // and the window for the local ones): what init_batch checks before continuing a sequence
    bool continue_ok(llama_seq_id seq_id, llama_pos q) const;

    // a saved state starts with the layout it was saved with (S, W, F_l per layer); reading one saved with
    // another layout throws before anything is restored (llama_state_*_set_data then return 0)
    void state_write_layout(llama_io_write_i & io) const;
    void state_read_layout (llama_io_read_i  & io) const;

    const bool unified;
    const uint32_t kv_size;  // cells of the full cache (the context)
    const uint32_t n_sink;
    const uint32_t n_window;
    const uint32_t n_head_kv;
    const uint32_t n_seq_max;
    std::vector<int32_t> n_full;

    // the caches keep references to these: they must outlive them (declared first)
    llama_hparams hparams_full;
    llama_hparams hparams_local;

    std::unique_ptr<llama_kv_cache> kv_full;
    std::unique_ptr<llama_kv_cache> kv_local;
};

class llama_kv_cache_rlkv_context : public llama_memory_context_i {
public:
    using slot_info_vec_t = llama_kv_cache::slot_info_vec_t;

    llama_kv_cache_rlkv_context(llama_memory_status status);

    // full-cache context
    llama_kv_cache_rlkv_context(llama_kv_cache_rlkv * kv);

    // update context
    llama_kv_cache_rlkv_context(llama_kv_cache_rlkv * kv, llama_context * lctx, bool optimize);

    // batch context
    llama_kv_cache_rlkv_context(
            llama_kv_cache_rlkv * kv,
            slot_info_vec_t sinfos_full,
            slot_info_vec_t sinfos_local,
            std::vector<llama_ubatch> ubatches);

    virtual ~llama_kv_cache_rlkv_context();

    bool next()  override;
    bool apply() override;

    llama_memory_status  get_status() const override;
    const llama_ubatch & get_ubatch() const override;

    const llama_kv_cache_context * get_full () const; // may be null
    const llama_kv_cache_context * get_local() const; // may be null

    const llama_kv_cache_rlkv * get_kv() const { return kv; }

private:
    const llama_kv_cache_rlkv * kv = nullptr;

    size_t i_next = 0;

    std::vector<llama_ubatch> ubatches;

    llama_memory_context_ptr ctx_full;
    llama_memory_context_ptr ctx_local;

    llama_memory_status status;
};
