// rlkv-edge: per-head KV memory (see llama-kv-cache-rlkv.h)
#include "llama-kv-cache-rlkv.h"
#include "rlkv-hooks.h"

#include "llama-impl.h"
#include "llama-batch.h"
#include "llama-model.h"
#include "llama-cparams.h"
#include "llama-kv-cells.h"
#include "llama-io.h"

#include <algorithm>
#include <cassert>
#include <limits>
#include <stdexcept>

//
// llama_kv_cache_rlkv
//

llama_kv_cache_rlkv::llama_kv_cache_rlkv(
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
                 uint32_t   n_ubatch) :
    unified(unified), kv_size(kv_size), n_sink(meta.sink), n_window(meta.window), n_head_kv(meta.n_head_kv), n_seq_max(n_seq_max),
    n_full(meta.n_full), hparams_full(model.hparams), hparams_local(model.hparams) {

    const uint32_t L = meta.n_layer;
    const uint32_t H = meta.n_head_kv;

    bool any_full  = false;
    bool any_local = false;

    for (uint32_t il = 0; il < L; ++il) {
        const uint32_t f = (uint32_t) n_full[il];
        hparams_full .n_head_kv_arr[il] = f;
        hparams_local.n_head_kv_arr[il] = H - f;
        any_full  |= f > 0;
        any_local |= f < H;
    }

    const std::vector<int32_t> nf = n_full;

    const layer_filter_cb filter_full  = [nf](int32_t il) { return il >= 0 && (size_t) il < nf.size() && nf[il] > 0; };
    const layer_filter_cb filter_local = [nf, H](int32_t il) { return il >= 0 && (size_t) il < nf.size() && (uint32_t) nf[il] < H; };

    // the ring: S + W (per sequence unless unified... then for all of them) + one ubatch, padded like the iSWA cache
    const uint64_t ring = ((uint64_t) n_sink + n_window)*(unified ? n_seq_max : 1) + n_ubatch;
    uint32_t size_local = (uint32_t) std::min<uint64_t>(kv_size, ring);
    size_local = GGML_PAD(size_local, 256);
    // note: swa_full (on by default in llama_context_default_params) is ignored: the ring is the point of rlkv
    GGML_UNUSED(swa_full);
    // the ring never needs more cells than the full context
    size_local = std::min(size_local, kv_size);

    if (any_full) {
        LLAMA_LOG_INFO("%s: creating rlkv full KV cache, size = %u cells\n", __func__, kv_size);
        kv_full = std::make_unique<llama_kv_cache>(
                model, hparams_full, type_k, type_v,
                v_trans, offload, unified, kv_size, n_seq_max, 1,
                0, LLAMA_SWA_TYPE_NONE, nullptr, filter_full, nullptr, nullptr, "");
    }

    if (any_local) {
        LLAMA_LOG_INFO("%s: creating rlkv local KV cache, size = %u cells (sink %u + window %u)\n", __func__, size_local, n_sink, n_window);
        // a zero window is represented as "everything at distance >= 0 is masked" except the sinks
        kv_local = std::make_unique<llama_kv_cache>(
                model, hparams_local, type_k, type_v,
                v_trans, offload, unified, size_local, n_seq_max, 1,
                n_window, LLAMA_SWA_TYPE_RLKV, nullptr, filter_local, nullptr, nullptr, "rlkv_local_");
        kv_local->set_n_sink(n_sink);
    }

    GGML_ASSERT(kv_full || kv_local);

    if (v_trans) {
        // without flash attention the V cache is transposed, and a transposed cache gives every layer the row
        // size of its widest one (llama_kv_cache's [TAG_V_CACHE_VARIABLE]): most of the V savings are padding
        const size_t   ts     = ggml_type_size(type_v);
        const uint32_t n_embd = model.hparams.n_embd_head_v();
        uint32_t max_full = 0, max_local = 0;
        for (uint32_t il = 0; il < L; ++il) {
            max_full  = std::max(max_full,  (uint32_t) n_full[il]);
            max_local = std::max(max_local, H - (uint32_t) n_full[il]);
        }
        size_t lost = 0, total = 0;
        for (uint32_t il = 0; il < L; ++il) {
            const uint32_t f = (uint32_t) n_full[il];
            if (f > 0) {
                lost  += (size_t) (max_full - f)*n_embd*kv_size*ts;
                total += (size_t) max_full*n_embd*kv_size*ts;
            }
            if (f < H) {
                lost  += (size_t) (max_local - (H - f))*n_embd*size_local*ts;
                total += (size_t) max_local*n_embd*size_local*ts;
            }
        }
        if (lost > 0) {
            LLAMA_LOG_WARN("%s: rlkv: flash attention is off, so the V cache is padded to the widest layer: %.2f of its "
                           "%.2f MiB (%.0f%%) are padding; turn flash attention on (-fa on) to keep these savings\n",
                           __func__, lost/1048576.0, total/1048576.0, 100.0*lost/total);
        }
    }
}

size_t llama_kv_cache_rlkv::bytes_full() const {
    size_t res = 0;
    if (kv_full) {
        for (const auto & [_, sz] : kv_full->memory_breakdown()) {
            res += sz;
        }
    }
    return res;
}

size_t llama_kv_cache_rlkv::bytes_local() const {
    size_t res = 0;
    if (kv_local) {
        for (const auto & [_, sz] : kv_local->memory_breakdown()) {
            res += sz;
        }
    }
    return res;
}

void llama_kv_cache_rlkv::clear(bool data) {
    if (kv_full)  { kv_full ->clear(data); }
    if (kv_local) { kv_local->clear(data); }
}

// positions (sorted, unique) of seq_id in a cache
static std::vector<llama_pos> rlkv_seq_positions(const llama_kv_cache & kv, llama_seq_id seq_id) {
    std::vector<llama_pos> res;
    const llama_kv_cells & cells = kv.get_cells(seq_id);
    for (uint32_t i = 0; i < cells.size(); ++i) {
        if (!cells.is_empty(i) && cells.seq_has(i, seq_id)) {
            res.push_back(cells.pos_get(i));
        }
    }
    std::sort(res.begin(), res.end());
    res.erase(std::unique(res.begin(), res.end()), res.end());
    return res;
}

// true when key position k (< q) is seen by the local heads of a query at q: a sink or in the window
static bool rlkv_local_sees(int64_t k, int64_t q, int64_t S, int64_t W) {
    return k < S || k >= q - W + 1;
}

bool llama_kv_cache_rlkv::local_cp_ok(llama_seq_id seq_id_src, llama_pos p0, llama_pos p1) const {
    // the copy keeps [p0, p1) of the source and drops the rest
    const auto kept = [p0, p1](llama_pos p) { return p >= p0 && p < p1 ? (int64_t) p : (int64_t) -1; };
    return !kv_local || local_after_ok(seq_id_src, 0, 0, kept);
}

std::vector<llama_pos> llama_kv_cache_rlkv::logical_positions(llama_seq_id seq_id, const std::vector<llama_pos> & R) const {
    // the full cache holds all of them; without one, assume 0 .. the newest resident position
    if (kv_full) {
        return rlkv_seq_positions(*kv_full, seq_id);
    }
    std::vector<llama_pos> Lg(R.empty() ? 0 : R.back() + 1);
    for (size_t p = 0; p < Lg.size(); ++p) {
        Lg[p] = (llama_pos) p;
    }
    return Lg;
}

bool llama_kv_cache_rlkv::local_after_ok(
        llama_seq_id seq_id, llama_pos r0, llama_pos r1, const std::function<int64_t(llama_pos)> & move) const {
    const std::vector<llama_pos> R = rlkv_seq_positions(*kv_local, seq_id);
    if (R.empty()) {
        return true;
    }

    // (new position, old position) of every position the sequence keeps; a negative new position drops it (as
    // llama_kv_cells::pos_add does)
    std::vector<std::pair<int64_t, llama_pos>> kept;
    for (llama_pos p : logical_positions(seq_id, R)) {
        const int64_t p_new = move(p);
        if ((p < r0 || p >= r1) && p_new >= 0) {
            kept.emplace_back(p_new, p);
        }
    }
    if (kept.empty()) {
        return true; // the sequence is emptied
    }

    // the next query comes after the newest kept position; it needs the keys now at its sinks and its window
    int64_t q = 0;
    for (const auto & [p_new, p] : kept) {
        q = std::max(q, p_new + 1);
    }
    const int64_t S = n_sink;
    const int64_t W = n_window;
    for (const auto & [p_new, p] : kept) {
        if (rlkv_local_sees(p_new, q, S, W) && !std::binary_search(R.begin(), R.end(), p)) {
            return false;
        }
    }
    return true;
}

bool llama_kv_cache_rlkv::seq_touches(llama_seq_id seq_id, llama_pos p0, llama_pos p1) const {
    const llama_kv_cache & logical = kv_full ? *kv_full : *kv_local;
    const llama_pos pmax = logical.seq_pos_max(seq_id);
    return pmax >= 0 && pmax >= p0 && logical.seq_pos_min(seq_id) < p1;
}

bool llama_kv_cache_rlkv::local_rm_ok(llama_seq_id seq_id, llama_pos p0, llama_pos p1) const {
    // nothing of the sequence lies in [p0, p1): nothing is removed. llama-cpp-python calls
    // seq_rm(seq, n_past, -1) before every decode, so this keeps the check O(1) per generated token
    if (!kv_local || !seq_touches(seq_id, p0, p1)) {
        return true;
    }

    // (a) the next query, positions as they are
    const auto same = [](llama_pos p) { return (int64_t) p; };
    if (!local_after_ok(seq_id, p0, p1, same)) {
        return false;
    }

    // (b) the same after the usual follow-up seq_add that closes the hole (context shift): the tail moves down by d
    if (p1 < std::numeric_limits<llama_pos>::max() && seq_touches(seq_id, p1, std::numeric_limits<llama_pos>::max())) {
        const int64_t d = (int64_t) p1 - p0;
        const auto closed = [p1, d](llama_pos p) { return p >= p1 ? (int64_t) p - d : (int64_t) p; };
        if (!local_after_ok(seq_id, p0, p1, closed)) {
            return false;
        }
    }

    return true;
}

bool llama_kv_cache_rlkv::local_move_ok(
        llama_seq_id seq_id, llama_pos p0, llama_pos p1, const std::function<int64_t(llama_pos)> & move) const {
    if (!kv_local) {
        return true;
    }
    const auto moved = [&](llama_pos p) { return p >= p0 && p < p1 ? move(p) : (int64_t) p; };
    if (seq_id >= 0) {
        return !seq_touches(seq_id, p0, p1) || local_after_ok(seq_id, 0, 0, moved);
    }
    for (uint32_t s = 0; s < n_seq_max && s < LLAMA_MAX_SEQ; ++s) {
        if (seq_touches((llama_seq_id) s, p0, p1) && !local_after_ok((llama_seq_id) s, 0, 0, moved)) {
            return false;
        }
    }
    return true;
}

bool llama_kv_cache_rlkv::seq_rm(llama_seq_id seq_id, llama_pos p0, llama_pos p1) {
    if (p0 < 0) {
        p0 = 0;
    }
    if (p1 < 0) {
        p1 = std::numeric_limits<llama_pos>::max();
    }

    if (kv_local) {
        if (seq_id >= 0) {
            if ((uint32_t) seq_id >= n_seq_max && kv_local->get_n_stream() > 1) {
                return false;
            }
            if (!local_rm_ok(seq_id, p0, p1)) {
                LLAMA_LOG_DEBUG("%s: rlkv: refusing seq_rm(%d, %d, %d): the local heads would miss keys\n", __func__, seq_id, p0, p1);
                return false;
            }
        } else {
            for (uint32_t s = 0; s < n_seq_max && s < LLAMA_MAX_SEQ; ++s) {
                if (!local_rm_ok((llama_seq_id) s, p0, p1)) {
                    LLAMA_LOG_DEBUG("%s: rlkv: refusing seq_rm(-1, %d, %d): seq %u would miss keys\n", __func__, p0, p1, s);
                    return false;
                }
            }
        }
    }

    bool res = true;
    if (kv_full)  { res = kv_full ->seq_rm(seq_id, p0, p1) && res; }
    if (kv_local) { res = kv_local->seq_rm(seq_id, p0, p1) && res; }
    return res;
}

void llama_kv_cache_rlkv::seq_cp(llama_seq_id seq_id_src, llama_seq_id seq_id_dst, llama_pos p0, llama_pos p1) {
    // a part of a sequence whose ring no longer holds the window before its end would give the copy holes.
    // seq_cp returns nothing, so the copy is refused by not making it: the destination stays as it was and a
    // decode that continues it at p1 is rejected by the batch checks (the caller then re-evaluates)
    if (!local_cp_ok(seq_id_src, std::max<llama_pos>(p0, 0), p1 < 0 ? std::numeric_limits<llama_pos>::max() : p1)) {
        LLAMA_LOG_WARN("%s: rlkv: not copying [%d, %d) of seq %d to seq %d: the local heads no longer hold the keys "
                       "the copy would need\n", __func__, p0, p1, seq_id_src, seq_id_dst);
        return;
    }
    if (kv_full)  { kv_full ->seq_cp(seq_id_src, seq_id_dst, p0, p1); }
    if (kv_local) { kv_local->seq_cp(seq_id_src, seq_id_dst, p0, p1); }
}

void llama_kv_cache_rlkv::seq_keep(llama_seq_id seq_id) {
    if (kv_full)  { kv_full ->seq_keep(seq_id); }
    if (kv_local) { kv_local->seq_keep(seq_id); }
}

void llama_kv_cache_rlkv::seq_add(llama_seq_id seq_id, llama_pos p0, llama_pos p1, llama_pos shift) {
    if (p0 < 0) { p0 = 0; }
    if (p1 < 0) { p1 = std::numeric_limits<llama_pos>::max(); }
    // moving positions can bring evicted ones into the sinks or the window of the next query: then the shift
    // is not made (it returns nothing), the sequence stays as it was, and a decode that relies on it fails the
    // batch's position checks instead of attending to holes
    if (shift != 0 && !local_move_ok(seq_id, p0, p1, [shift](llama_pos p) { return (int64_t) p + shift; })) {
        LLAMA_LOG_WARN("%s: rlkv: not shifting [%d, %d) of seq %d by %d: the local heads would miss keys\n",
                __func__, p0, p1, seq_id, shift);
        return;
    }
    if (kv_full)  { kv_full ->seq_add(seq_id, p0, p1, shift); }
    if (kv_local) { kv_local->seq_add(seq_id, p0, p1, shift); }
}

void llama_kv_cache_rlkv::seq_div(llama_seq_id seq_id, llama_pos p0, llama_pos p1, int d) {
    if (p0 < 0) { p0 = 0; }
    if (p1 < 0) { p1 = std::numeric_limits<llama_pos>::max(); }
    if (d != 1 && !local_move_ok(seq_id, p0, p1, [d](llama_pos p) { return (int64_t) p / d; })) {
        LLAMA_LOG_WARN("%s: rlkv: not dividing [%d, %d) of seq %d by %d: the local heads would miss keys\n",
                __func__, p0, p1, seq_id, d);
        return;
    }
    if (kv_full)  { kv_full ->seq_div(seq_id, p0, p1, d); }
    if (kv_local) { kv_local->seq_div(seq_id, p0, p1, d); }
}

llama_pos llama_kv_cache_rlkv::seq_pos_min(llama_seq_id seq_id) const {
    // iSWA's meaning, which llama-server reads to decide whether it can roll a sequence back to q or must
    // re-process it (it re-processes when seq_pos_min >= q, this model's n_swa being 0): while the ring still
    // holds every position from the sinks on, the sequence's first position; once it has evicted some, the
    // last position q a roll-back cannot reach. With [w, max] the resident run that ends at the newest
    // position, a query at q sees [q - W + 1, q): it can continue from q iff q >= w + W - 1.
    const llama_kv_cache & logical = kv_full ? *kv_full : *kv_local;
    const llama_pos pmin = logical.seq_pos_min(seq_id);
    if (pmin < 0 || !kv_local) {
        return pmin;
    }
    const std::vector<llama_pos> R = rlkv_seq_positions(*kv_local, seq_id);
    llama_pos w = logical.seq_pos_max(seq_id) + 1;
    for (auto it = R.rbegin(); it != R.rend() && *it == w - 1; ++it) {
        w = *it;
    }
    if (w <= (llama_pos) n_sink) {
        return pmin; // nothing evicted
    }
    return std::max<llama_pos>(pmin, w + (llama_pos) n_window - 2);
}

llama_pos llama_kv_cache_rlkv::seq_pos_max(llama_seq_id seq_id) const {
    llama_pos res = -1;
    if (kv_full)  { res = std::max(res, kv_full ->seq_pos_max(seq_id)); }
    if (kv_local) { res = std::max(res, kv_local->seq_pos_max(seq_id)); }
    return res;
}

std::map<ggml_backend_buffer_type_t, size_t> llama_kv_cache_rlkv::memory_breakdown() const {
    std::map<ggml_backend_buffer_type_t, size_t> mb;
    if (kv_full) {
        mb = kv_full->memory_breakdown();
    }
    if (kv_local) {
        for (const auto & [buft, sz] : kv_local->memory_breakdown()) {
            mb[buft] += sz;
        }
    }
    return mb;
}

bool llama_kv_cache_rlkv::continue_ok(llama_seq_id seq_id, llama_pos q) const {
    // the sequence must hold every position before q (the full cache holds them all; without one, the ring's
    // newest is q - 1): an empty or cut-short sequence (e.g. a refused copy) cannot be continued at q
    const llama_kv_cache & logical = kv_full ? *kv_full : *kv_local;
    if (logical.seq_pos_max(seq_id) != q - 1) {
        return false;
    }
    if (!kv_local) {
        return true;
    }
    // the local heads see the sinks [0, S) and the window [q - W + 1, q) (rlkv_local_sees): all must be in the ring
    const std::vector<llama_pos> R = rlkv_seq_positions(*kv_local, seq_id);
    const auto resident = [&](llama_pos p) { return std::binary_search(R.begin(), R.end(), p); };
    for (llama_pos p = 0; p < std::min<llama_pos>((llama_pos) n_sink, q); ++p) {
        if (!resident(p)) {
            return false;
        }
    }
    for (llama_pos p = std::max<llama_pos>(0, q - (llama_pos) n_window + 1); p < q; ++p) {
        if (!resident(p)) {
            return false;
        }
    }
    return true;
}

llama_memory_context_ptr llama_kv_cache_rlkv::init_batch(llama_batch_allocr & balloc, uint32_t n_ubatch, bool embd_all) {
    GGML_UNUSED(embd_all);

    // a batch continuing a sequence whose caches miss keys its first token needs is refused (decode then fails),
    // whatever operation left the gap: the caller re-evaluates instead of getting tokens computed with holes
    for (llama_seq_id s = 0; s < (llama_seq_id) std::min<uint32_t>(n_seq_max, LLAMA_MAX_SEQ); ++s) {
        const llama_pos q = balloc.seq_pos_min(s);
        if (q > 0 && !continue_ok(s, q)) {
            LLAMA_LOG_WARN("%s: rlkv: refusing a batch that continues seq %d at position %d: the KV cache lacks keys "
                           "its local heads (sinks and window) or its full heads need; re-evaluate the sequence\n",
                           __func__, s, q);
            return std::make_unique<llama_kv_cache_rlkv_context>(LLAMA_MEMORY_STATUS_FAILED_PREPARE);
        }
    }

    for (int attempt = 0; attempt < 2; ++attempt) {
        if (attempt == 0 && !unified) {
            continue; // the simple split needs a unified cache
        }

        balloc.split_reset();

        std::vector<llama_ubatch> ubatches;
        while (true) {
            auto ubatch = attempt == 0 ? balloc.split_simple(n_ubatch) : balloc.split_equal(n_ubatch, !unified, 0);
            if (ubatch.n_tokens == 0) {
                break;
            }
            ubatches.push_back(std::move(ubatch)); // NOLINT
        }

        if (balloc.get_n_used() < balloc.get_n_tokens()) {
            continue;
        }

        llama_kv_cache::slot_info_vec_t sinfos_full;
        llama_kv_cache::slot_info_vec_t sinfos_local;

        if (kv_full) {
            sinfos_full = kv_full->prepare(ubatches);
            if (sinfos_full.empty()) {
                continue;
            }
        }
        if (kv_local) {
            sinfos_local = kv_local->prepare(ubatches);
            if (sinfos_local.empty()) {
                continue;
            }
        }

        return std::make_unique<llama_kv_cache_rlkv_context>(this, std::move(sinfos_full), std::move(sinfos_local), std::move(ubatches));
    }

    return std::make_unique<llama_kv_cache_rlkv_context>(LLAMA_MEMORY_STATUS_FAILED_PREPARE);
}

llama_memory_context_ptr llama_kv_cache_rlkv::init_full() {
    return std::make_unique<llama_kv_cache_rlkv_context>(this);
}

llama_memory_context_ptr llama_kv_cache_rlkv::init_update(llama_context * lctx, bool optimize) {
    return std::make_unique<llama_kv_cache_rlkv_context>(this, lctx, optimize);
}

bool llama_kv_cache_rlkv::get_can_shift() const {
    // as llama_kv_cache_iswa: shifting is offered only when the ring never evicts (it spans the context).
    // Callers that ask first (llama-server's context shift and --cache-reuse) then re-process instead; they
    // treat a refused seq_rm as fatal, and a shift with an evicting ring is exact only in special cases
    // (seq_add / seq_div still check each call)
    bool res = true;
    if (kv_full)  { res = res && kv_full ->get_can_shift(); }
    if (kv_local) { res = res && kv_local->get_can_shift() && kv_local->get_size() >= kv_size; }
    return res;
}

// "rlkv" in a little-endian uint32: the first field of a state saved by this cache
static constexpr uint32_t RLKV_STATE_MAGIC = 0x766b6c72;

static std::string rlkv_layout_str(uint32_t sink, uint32_t window, const std::vector<int32_t> & n_full) {
    std::string res = format("S = %u, W = %u, F_l = [", sink, window);
    for (size_t il = 0; il < n_full.size(); ++il) {
        res += format(il == 0 ? "%d" : ", %d", n_full[il]);
    }
    return res + "]";
}

void llama_kv_cache_rlkv::state_write_layout(llama_io_write_i & io) const {
    const uint32_t magic   = RLKV_STATE_MAGIC;
    const uint32_t n_layer = (uint32_t) n_full.size();
    io.write(&magic,    sizeof(magic));
    io.write(&n_sink,   sizeof(n_sink));
    io.write(&n_window, sizeof(n_window));
    io.write(&n_layer,  sizeof(n_layer));
    io.write(n_full.data(), n_layer*sizeof(int32_t));
}

void llama_kv_cache_rlkv::state_read_layout(llama_io_read_i & io) const {
    uint32_t magic = 0;
    io.read(&magic, sizeof(magic));
    if (magic != RLKV_STATE_MAGIC) {
        throw std::runtime_error("rlkv: this state was not saved by a per-head (rlkv) KV cache");
    }
    uint32_t sink = 0, window = 0, n_layer = 0;
    io.read(&sink,    sizeof(sink));
    io.read(&window,  sizeof(window));
    io.read(&n_layer, sizeof(n_layer));
    if (n_layer != n_full.size()) {
        throw std::runtime_error(format("rlkv: this state was saved for %u layers, the model has %zu", n_layer, n_full.size()));
    }
    std::vector<int32_t> saved(n_layer);
    io.read(saved.data(), n_layer*sizeof(int32_t));
    if (sink != n_sink || window != n_window || saved != n_full) {
        // another window leaves holes in every ring; other F_l put heads into the other cache
        throw std::runtime_error("rlkv: this state was saved with " + rlkv_layout_str(sink, window, saved) +
                                 "; this context has " + rlkv_layout_str(n_sink, n_window, n_full) + ": not restoring it");
    }
}

void llama_kv_cache_rlkv::state_write(llama_io_write_i & io, llama_seq_id seq_id, llama_state_seq_flags flags) const {
    state_write_layout(io);
    if (kv_full && (flags & LLAMA_STATE_SEQ_FLAGS_PARTIAL_ONLY) == 0) {
        kv_full->state_write(io, seq_id, flags);
    }
    if (kv_local) {
        kv_local->state_write(io, seq_id, flags);
    }
}

void llama_kv_cache_rlkv::state_read(llama_io_read_i & io, llama_seq_id seq_id, llama_state_seq_flags flags) {
    state_read_layout(io);
    if (kv_full && (flags & LLAMA_STATE_SEQ_FLAGS_PARTIAL_ONLY) == 0) {
        kv_full->state_read(io, seq_id, flags);
    }
    if (kv_local) {
        kv_local->state_read(io, seq_id, flags);
    }
}

//
// llama_kv_cache_rlkv_context
//

static llama_memory_status rlkv_combine(const llama_memory_context_ptr & a, const llama_memory_context_ptr & b) {
    if (a && b) {
        return llama_memory_status_combine(a->get_status(), b->get_status());
    }
    if (a) {
        return a->get_status();
    }
    return b->get_status();
}

llama_kv_cache_rlkv_context::llama_kv_cache_rlkv_context(llama_memory_status status) : status(status) {}

llama_kv_cache_rlkv_context::llama_kv_cache_rlkv_context(llama_kv_cache_rlkv * kv) : kv(kv) {
    if (kv->get_full())  { ctx_full  = kv->get_full ()->init_full(); }
    if (kv->get_local()) { ctx_local = kv->get_local()->init_full(); }
    status = rlkv_combine(ctx_full, ctx_local);
}

llama_kv_cache_rlkv_context::llama_kv_cache_rlkv_context(llama_kv_cache_rlkv * kv, llama_context * lctx, bool optimize) : kv(kv) {
    if (kv->get_full())  { ctx_full  = kv->get_full ()->init_update(lctx, optimize); }
    if (kv->get_local()) { ctx_local = kv->get_local()->init_update(lctx, optimize); }
    status = rlkv_combine(ctx_full, ctx_local);
}

llama_kv_cache_rlkv_context::llama_kv_cache_rlkv_context(
        llama_kv_cache_rlkv * kv,
        slot_info_vec_t sinfos_full,
        slot_info_vec_t sinfos_local,
        std::vector<llama_ubatch> ubatches) : kv(kv), ubatches(std::move(ubatches)) {
    if (kv->get_full()) {
        ctx_full.reset(new llama_kv_cache_context(kv->get_full(), std::move(sinfos_full), this->ubatches));
    }
    if (kv->get_local()) {
        ctx_local.reset(new llama_kv_cache_context(kv->get_local(), std::move(sinfos_local), this->ubatches));
    }
    status = rlkv_combine(ctx_full, ctx_local);
}

llama_kv_cache_rlkv_context::~llama_kv_cache_rlkv_context() = default;

bool llama_kv_cache_rlkv_context::next() {
    assert(status == LLAMA_MEMORY_STATUS_SUCCESS);

    if (ctx_full)  { ctx_full ->next(); }
    if (ctx_local) { ctx_local->next(); }

    if (++i_next >= ubatches.size()) {
        return false;
    }
    return true;
}

bool llama_kv_cache_rlkv_context::apply() {
    assert(!llama_memory_status_is_fail(status));

    bool res = true;
    if (ctx_full)  { res = ctx_full ->apply() && res; }
    if (ctx_local) { res = ctx_local->apply() && res; }
    return res;
}

llama_memory_status llama_kv_cache_rlkv_context::get_status() const {
    return status;
}

const llama_ubatch & llama_kv_cache_rlkv_context::get_ubatch() const {
    assert(status == LLAMA_MEMORY_STATUS_SUCCESS);
    return ubatches[i_next];
}

const llama_kv_cache_context * llama_kv_cache_rlkv_context::get_full() const {
    return static_cast<const llama_kv_cache_context *>(ctx_full.get());
}

const llama_kv_cache_context * llama_kv_cache_rlkv_context::get_local() const {
    return static_cast<const llama_kv_cache_context *>(ctx_local.get());
}

//
// hook: memory creation
//

llama_memory_i * llama_rlkv_create_memory(const llama_model & model, const llama_memory_params & params, const llama_cparams & cparams) {
    if (!model.rlkv) {
        return nullptr;
    }
    const llama_rlkv_meta & meta = *model.rlkv;
    if (meta.all_full()) {
        LLAMA_LOG_INFO("%s: rlkv: every head is full (s = %.4f): using the upstream KV cache\n", __func__, (double) meta.sparsity);
        return nullptr;
    }
    if (cparams.training) {
        throw std::runtime_error("rlkv: training contexts are not supported with rlkv metadata");
    }
    if (model.split_mode() == LLAMA_SPLIT_MODE_TENSOR) {
        // tensor parallelism splits every layer's K/V heads evenly over the devices; the full cache holds only
        // F_l of them per layer and the local one the rest
        throw std::runtime_error("rlkv: split mode 'tensor' (-sm tensor) is not supported with rlkv metadata; "
                                 "use -sm layer or -sm none");
    }

    return new llama_kv_cache_rlkv(
            model, meta,
            params.type_k, params.type_v,
            !cparams.flash_attn,
            cparams.offload_kqv,
            params.swa_full,
            cparams.kv_unified,
            cparams.n_ctx_seq,
            cparams.n_seq_max,
            cparams.n_ubatch);
}
