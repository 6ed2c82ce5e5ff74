// rlkv-edge: per-head KV memory. Two llama_kv_cache instances, in the manner of llama_kv_cache_iswa:
//   full : heads [0, F_l) of every layer, n_ctx cells
//   local: heads [F_l, H) of every layer, a ring of S + W + n_ubatch cells (padded to 256) with
//          LLAMA_SWA_TYPE_RLKV masking (key k visible to query p iff k <= p and (k < S or p - W < k))
// Either cache is absent when no layer has heads of its kind.
#pragma once

#include "llama-kv-cache.h"
#include "llama-hparams.h"
#include "rlkv-meta.h"

#include <memory>
#include <vector>

struct rlkv_state_layout;

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
    // One predicate decides every refusal, at decode and at each memory operation: a query at q of a sequence is
    // served when the ring holds every key of the sequence that its local heads see (k < S or k >= q - W + 1).
    // The sequence's keys are the full cache's (the full heads attend to whatever is stored, as upstream's do);
    // without a full cache, the ring's plus every non-sink position before the newest query's window that the ring
    // does not hold (it may have evicted them). A memory operation is made only when the sequences it changes stay
    // served at their next query (one after their newest key); otherwise it is refused and changes nothing.

    // whether seq_id is a sequence of this cache
    bool seq_id_ok(llama_seq_id seq_id) const;

    // f(position, held by the ring) for every key of seq_id with a position in [lo, hi)
    template <typename F>
    void for_each_key(llama_seq_id seq_id, llama_pos lo, llama_pos hi, F && f) const;

    // true when a query at q misses a key in [lo, hi) that its local heads see, each key p taken at move(p)
    // (negative: dropped)
    template <typename Move>
    bool local_misses(llama_seq_id seq_id, int64_t q, Move && move, llama_pos lo, llama_pos hi) const;

    // one after the newest key of seq_id once moved; -1 when nothing is left
    template <typename Move>
    int64_t next_pos(llama_seq_id seq_id, Move && move) const;

    // the predicate after moving every key p of seq_id to move(p) (seq_rm, seq_add, seq_div)
    template <typename Move>
    bool decodable_after(llama_seq_id seq_id, Move && move) const;

    // the predicate for a batch that continues seq_id at q (init_batch)
    bool decodable(llama_seq_id seq_id, llama_pos q) const;

    // a saved state starts with the layout it was saved with (S, W, s, H, the head order's hash, F_l per layer);
    // reading one saved with another layout throws before anything is restored (llama_state_*_set_data then
    // return 0); a restore that fails later clears what it restored, in both caches
    rlkv_state_layout layout() const;
    void state_write_layout(llama_io_write_i & io) const;
    void state_read_layout (llama_io_read_i  & io) const;

    const bool unified;
    const uint32_t kv_size;  // cells of the full cache (the context)
    const uint32_t n_sink;
    const uint32_t n_window;
    const uint32_t n_head_kv;
    const uint32_t n_seq_max;
    const float    sparsity;
    const uint64_t head_order; // hash of each layer's head order
    std::vector<int32_t> n_full;

    // per sequence: a copy into it was refused (seq_cp returns nothing), so its next decode at q > 0 is refused
    // until it starts over at 0, a seq_rm touches it or a copy into it is made
    std::vector<bool> cp_refused;

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

    // a batch the cache refuses (it continues a sequence whose ring lacks keys): FAILED_PREPARE, but not for want
    // of room, so llama_decode returns -1 (invalid input) instead of 1 (see llama_rlkv_batch_refused)
    static llama_memory_context_ptr refused();
    bool get_refused() const { return is_refused; }

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

    bool is_refused = false;
};
