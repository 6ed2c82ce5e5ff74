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
#include <cstring>
#include <limits>
#include <set>
#include <stdexcept>

static uint64_t rlkv_head_order_hash(const llama_rlkv_meta & meta);

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
    sparsity(meta.sparsity), head_order(rlkv_head_order_hash(meta)), n_full(meta.n_full), cp_refused(std::min<uint32_t>(n_seq_max, LLAMA_MAX_SEQ), false),
    hparams_full(model.hparams), hparams_local(model.hparams) {

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
    std::fill(cp_refused.begin(), cp_refused.end(), false);
    if (kv_full)  { kv_full ->clear(data); }
    if (kv_local) { kv_local->clear(data); }
}

// the (position, cell) pairs of seq_id in a cache, ordered by position (the cells keep them up to date)
static const std::set<std::pair<llama_pos, uint32_t>> & rlkv_seq_pos(const llama_kv_cache & kv, llama_seq_id seq_id) {
    return kv.get_cells(seq_id).seq_pos_get(seq_id);
}

static bool rlkv_holds(const std::set<std::pair<llama_pos, uint32_t>> & sp, llama_pos p) {
    const auto it = sp.lower_bound({p, 0});
    return it != sp.end() && it->first == p;
}

// true when key position k (< q) is seen by the local heads of a query at q: a sink or in the window
static bool rlkv_local_sees(int64_t k, int64_t q, int64_t S, int64_t W) {
    return k < S || k >= q - W + 1;
}

bool llama_kv_cache_rlkv::seq_id_ok(llama_seq_id seq_id) const {
    return seq_id >= 0 && (uint32_t) seq_id < std::min<uint32_t>(n_seq_max, LLAMA_MAX_SEQ);
}

template <typename F>
void llama_kv_cache_rlkv::for_each_key(llama_seq_id seq_id, llama_pos lo, llama_pos hi, F && f) const {
    if (!kv_local || lo >= hi) {
        return;
    }
    const auto & ring = rlkv_seq_pos(*kv_local, seq_id);
    if (kv_full) {
        // the full cache holds every key the sequence has; the ring holds some of them
        const auto & all = rlkv_seq_pos(*kv_full, seq_id);
        for (auto it = all.lower_bound({lo, 0}); it != all.end() && it->first < hi; ++it) {
            f(it->first, rlkv_holds(ring, it->first));
        }
        return;
    }
    // no full cache: the ring's keys, and below h = (newest + 1) - W + 1 (outside the newest query's window) every
    // non-sink position it does not hold, which it may have evicted: counted as keys it lacks
    for (auto it = ring.lower_bound({lo, 0}); it != ring.end() && it->first < hi; ++it) {
        f(it->first, true);
    }
    if (ring.empty()) {
        return;
    }
    const llama_pos h = ring.rbegin()->first + 2 - (llama_pos) n_window;
    for (llama_pos p = std::max<llama_pos>(lo, (llama_pos) n_sink); p < std::min(hi, h); ++p) {
        if (!rlkv_holds(ring, p)) {
            f(p, false);
        }
    }
}

template <typename Move>
bool llama_kv_cache_rlkv::local_misses(llama_seq_id seq_id, int64_t q, Move && move, llama_pos lo, llama_pos hi) const {
    bool res = false;
    for_each_key(seq_id, lo, hi, [&](llama_pos p, bool in_ring) {
        const int64_t m = move(p);
        res = res || (m >= 0 && !in_ring && rlkv_local_sees(m, q, n_sink, n_window));
    });
    return res;
}

template <typename Move>
int64_t llama_kv_cache_rlkv::next_pos(llama_seq_id seq_id, Move && move) const {
    int64_t q = -1;
    if (kv_local) {
        for_each_key(seq_id, 0, std::numeric_limits<llama_pos>::max(), [&](llama_pos p, bool) {
            const int64_t m = move(p);
            q = m >= 0 ? std::max(q, m + 1) : q;
        });
    }
    return q;
}

template <typename Move>
bool llama_kv_cache_rlkv::decodable_after(llama_seq_id seq_id, Move && move) const {
    const int64_t q = next_pos(seq_id, move);
    return q < 0 || !local_misses(seq_id, q, move, 0, std::numeric_limits<llama_pos>::max());
}

bool llama_kv_cache_rlkv::decodable(llama_seq_id seq_id, llama_pos q) const {
    // the same predicate with nothing moved; only the sinks and the window can be seen, so only they are looked at
    const auto same = [](llama_pos p) { return (int64_t) p; };
    return !local_misses(seq_id, q, same, 0, std::min<llama_pos>((llama_pos) n_sink, q)) &&
           !local_misses(seq_id, q, same, std::max<llama_pos>((llama_pos) n_sink, q - (llama_pos) n_window + 1), q);
}

bool llama_kv_cache_rlkv::seq_rm(llama_seq_id seq_id, llama_pos p0, llama_pos p1) {
    if (p0 < 0) {
        p0 = 0;
    }
    if (p1 < 0) {
        p1 = std::numeric_limits<llama_pos>::max();
    }
    if (seq_id != -1 && !seq_id_ok(seq_id)) {
        LLAMA_LOG_WARN("%s: rlkv: refusing seq_rm(%d, %d, %d): no such sequence\n", __func__, seq_id, p0, p1);
        return false;
    }

    const auto removed = [p0, p1](llama_pos p) { return p >= p0 && p < p1 ? (int64_t) -1 : (int64_t) p; };
    for (llama_seq_id s = 0; s < (llama_seq_id) std::min<uint32_t>(n_seq_max, LLAMA_MAX_SEQ); ++s) {
        if ((seq_id == -1 || s == seq_id) && !decodable_after(s, removed)) {
            LLAMA_LOG_DEBUG("%s: rlkv: refusing seq_rm(%d, %d, %d): seq %d's local heads would miss keys\n",
                    __func__, seq_id, p0, p1, s);
            return false;
        }
    }

    for (llama_seq_id s = 0; s < (llama_seq_id) cp_refused.size(); ++s) {
        cp_refused[s] = cp_refused[s] && seq_id != -1 && s != seq_id;
    }

    bool res = true;
    if (kv_full)  { res = kv_full ->seq_rm(seq_id, p0, p1) && res; }
    if (kv_local) { res = kv_local->seq_rm(seq_id, p0, p1) && res; }
    return res;
}

void llama_kv_cache_rlkv::seq_cp(llama_seq_id seq_id_src, llama_seq_id seq_id_dst, llama_pos p0, llama_pos p1) {
    if (p0 < 0) {
        p0 = 0;
    }
    if (p1 < 0) {
        p1 = std::numeric_limits<llama_pos>::max();
    }
    if (!seq_id_ok(seq_id_src) || !seq_id_ok(seq_id_dst)) {
        LLAMA_LOG_WARN("%s: rlkv: not copying seq %d to seq %d: no such sequence\n", __func__, seq_id_src, seq_id_dst);
        return;
    }
    if (seq_id_src == seq_id_dst) {
        return;
    }
    // the destination gets the source's keys in [p0, p1) beside its own: its next query (after the newest of
    // both) must find the keys its local heads see in the ring. seq_cp returns nothing, so a copy that would leave
    // holes is not made: the destination stays as it was, and a decode that continues it is refused
    const auto kept = [p0, p1](llama_pos p) { return p >= p0 && p < p1 ? (int64_t) p : (int64_t) -1; };
    const auto same = [](llama_pos p) { return (int64_t) p; };
    const int64_t q = std::max(next_pos(seq_id_src, kept), next_pos(seq_id_dst, same));
    const llama_pos all = std::numeric_limits<llama_pos>::max();
    if (q >= 0 && (local_misses(seq_id_src, q, kept, 0, all) || local_misses(seq_id_dst, q, same, 0, all))) {
        LLAMA_LOG_WARN("%s: rlkv: not copying [%d, %d) of seq %d to seq %d: the local heads no longer hold the keys "
                       "the copy would need\n", __func__, p0, p1, seq_id_src, seq_id_dst);
        cp_refused[seq_id_dst] = true; // its next decode is refused unless it starts over (or seq_rm clears it)
        return;
    }
    cp_refused[seq_id_dst] = false;
    if (kv_full)  { kv_full ->seq_cp(seq_id_src, seq_id_dst, p0, p1); }
    if (kv_local) { kv_local->seq_cp(seq_id_src, seq_id_dst, p0, p1); }
}

void llama_kv_cache_rlkv::seq_keep(llama_seq_id seq_id) {
    if (!seq_id_ok(seq_id)) {
        LLAMA_LOG_WARN("%s: rlkv: not keeping seq %d: no such sequence\n", __func__, seq_id);
        return;
    }
    for (llama_seq_id s = 0; s < (llama_seq_id) cp_refused.size(); ++s) {
        cp_refused[s] = cp_refused[s] && s == seq_id;
    }
    if (kv_full)  { kv_full ->seq_keep(seq_id); }
    if (kv_local) { kv_local->seq_keep(seq_id); }
}

void llama_kv_cache_rlkv::seq_add(llama_seq_id seq_id, llama_pos p0, llama_pos p1, llama_pos shift) {
    if (p0 < 0) { p0 = 0; }
    if (p1 < 0) { p1 = std::numeric_limits<llama_pos>::max(); }
    if (!seq_id_ok(seq_id)) {
        // upstream's cache asserts on -1 here
        LLAMA_LOG_WARN("%s: rlkv: not shifting seq %d: no such sequence (seq_add takes one sequence)\n", __func__, seq_id);
        return;
    }
    if (shift == 0) {
        return;
    }
    // moved positions (negative ones dropped, as upstream does) must leave every key the next query's local heads
    // see resident; otherwise the shift is not made (it returns nothing): the sequence stays as it was
    const auto moved = [p0, p1, shift](llama_pos p) {
        const int64_t m = p >= p0 && p < p1 ? (int64_t) p + shift : (int64_t) p;
        return m >= 0 ? m : (int64_t) -1;
    };
    if (!decodable_after(seq_id, moved)) {
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
    if (!seq_id_ok(seq_id) || d <= 0) {
        LLAMA_LOG_WARN("%s: rlkv: not dividing the positions of seq %d by %d: %s\n", __func__, seq_id, d,
                d <= 0 ? "the divisor must be positive" : "no such sequence (seq_div takes one sequence)");
        return;
    }
    if (d == 1) {
        return;
    }
    const auto moved = [p0, p1, d](llama_pos p) { return p >= p0 && p < p1 ? (int64_t) (p / d) : (int64_t) p; };
    if (!decodable_after(seq_id, moved)) {
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
    const auto & ring = rlkv_seq_pos(*kv_local, seq_id);
    llama_pos w = logical.seq_pos_max(seq_id) + 1;
    for (auto it = ring.rbegin(); it != ring.rend() && it->first >= w - 1; ++it) {
        w = std::min(w, it->first);
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

llama_memory_context_ptr llama_kv_cache_rlkv::init_batch(llama_batch_allocr & balloc, uint32_t n_ubatch, bool embd_all) {
    GGML_UNUSED(embd_all);

    // safety net: a batch continuing a sequence whose ring lacks keys its first token's local heads see is refused
    // (decode then fails), whatever left the gap; the memory operations refuse at the call by the same predicate
    for (llama_seq_id s = 0; s < (llama_seq_id) std::min<uint32_t>(n_seq_max, LLAMA_MAX_SEQ); ++s) {
        const llama_pos q = balloc.seq_pos_min(s);
        if (q == 0) {
            cp_refused[s] = false; // starts over
        }
        if (q > 0 && cp_refused[s]) {
            LLAMA_LOG_WARN("%s: rlkv: refusing a batch that continues seq %d at position %d: a copy into it was "
                           "refused (seq_cp); re-evaluate the sequence\n", __func__, s, q);
            return llama_kv_cache_rlkv_context::refused();
        }
        if (q > 0 && !decodable(s, q)) {
            LLAMA_LOG_WARN("%s: rlkv: refusing a batch that continues seq %d at position %d: the ring lacks keys its "
                           "local heads see (sinks and window); re-evaluate the sequence\n", __func__, s, q);
            return llama_kv_cache_rlkv_context::refused();
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

// the first field of a state saved by this cache, as a little-endian uint32: "rlk2" (S, W, s, H, F_l and the head
// order); "rlkv" was the earlier format (S, W, F_l only)
static constexpr uint32_t RLKV_STATE_MAGIC    = 0x326b6c72;
static constexpr uint32_t RLKV_STATE_MAGIC_V1 = 0x766b6c72;

// FNV-1a over each layer's head order (identity where the file has none): two conversions that put other heads
// in the same slots differ here
static uint64_t rlkv_head_order_hash(const llama_rlkv_meta & meta) {
    uint64_t h = 0xcbf29ce484222325ull;
    for (uint32_t i = 0; i < meta.n_layer*meta.n_head_kv; ++i) {
        const uint32_t p = meta.perm.empty() ? i % meta.n_head_kv : meta.perm[i];
        for (int b = 0; b < 4; ++b) {
            h = (h ^ ((p >> (8*b)) & 0xff))*0x100000001b3ull;
        }
    }
    return h;
}

struct rlkv_state_layout {
    uint32_t sink   = 0;
    uint32_t window = 0;
    float    sparsity = 0.0f;
    uint32_t n_head_kv = 0;
    uint64_t order  = 0;
    std::vector<int32_t> n_full;

    bool operator==(const rlkv_state_layout & o) const {
        // s compared bit for bit: it is the file's (or the override's) f32
        return sink == o.sink && window == o.window && std::memcmp(&sparsity, &o.sparsity, sizeof(float)) == 0 &&
               n_head_kv == o.n_head_kv && order == o.order && n_full == o.n_full;
    }

    std::string str() const {
        std::string res = format("S = %u, W = %u, F_l = [", sink, window);
        for (size_t il = 0; il < n_full.size(); ++il) {
            res += format(il == 0 ? "%d" : ", %d", n_full[il]);
        }
        return res + format("], s = %g, H = %u, head order %016llx", (double) sparsity, n_head_kv,
                            (unsigned long long) order);
    }
};

rlkv_state_layout llama_kv_cache_rlkv::layout() const {
    rlkv_state_layout res;
    res.sink      = n_sink;
    res.window    = n_window;
    res.sparsity  = sparsity;
    res.n_head_kv = n_head_kv;
    res.order     = head_order;
    res.n_full    = n_full;
    return res;
}

void llama_kv_cache_rlkv::state_write_layout(llama_io_write_i & io) const {
    const rlkv_state_layout l = layout();
    const uint32_t magic   = RLKV_STATE_MAGIC;
    const uint32_t n_layer = (uint32_t) l.n_full.size();
    io.write(&magic,       sizeof(magic));
    io.write(&l.sink,      sizeof(l.sink));
    io.write(&l.window,    sizeof(l.window));
    io.write(&l.sparsity,  sizeof(l.sparsity));
    io.write(&l.n_head_kv, sizeof(l.n_head_kv));
    io.write(&l.order,     sizeof(l.order));
    io.write(&n_layer,     sizeof(n_layer));
    io.write(l.n_full.data(), n_layer*sizeof(int32_t));
}

void llama_kv_cache_rlkv::state_read_layout(llama_io_read_i & io) const {
    uint32_t magic = 0;
    io.read(&magic, sizeof(magic));
    if (magic == RLKV_STATE_MAGIC_V1) {
        throw std::runtime_error("rlkv: this state was saved by an earlier rlkv-edge, whose states do not record s "
                                 "and the head order: not restoring it");
    }
    if (magic != RLKV_STATE_MAGIC) {
        throw std::runtime_error("rlkv: this state was not saved by a per-head (rlkv) KV cache");
    }
    rlkv_state_layout saved;
    uint32_t n_layer = 0;
    io.read(&saved.sink,      sizeof(saved.sink));
    io.read(&saved.window,    sizeof(saved.window));
    io.read(&saved.sparsity,  sizeof(saved.sparsity));
    io.read(&saved.n_head_kv, sizeof(saved.n_head_kv));
    io.read(&saved.order,     sizeof(saved.order));
    io.read(&n_layer,         sizeof(n_layer));
    if (n_layer != n_full.size()) {
        throw std::runtime_error(format("rlkv: this state was saved for %u layers, the model has %zu", n_layer, n_full.size()));
    }
    saved.n_full.resize(n_layer);
    io.read(saved.n_full.data(), n_layer*sizeof(int32_t));
    const rlkv_state_layout ours = layout();
    if (!(saved == ours)) {
        // another window leaves holes in every ring; other F_l put heads into the other cache; another head order or
        // s is another conversion, whose rows would land on other heads
        throw std::runtime_error("rlkv: this state was saved with " + saved.str() + "; this context has " +
                                 ours.str() + ": not restoring it");
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
    const bool full_part = kv_full && (flags & LLAMA_STATE_SEQ_FLAGS_PARTIAL_ONLY) == 0;
    try {
        if (full_part) {
            kv_full->state_read(io, seq_id, flags);
        }
        if (kv_local) {
            kv_local->state_read(io, seq_id, flags);
        }
    } catch (...) {
        // never half-restored: a cache that failed has cleared what it restored; clear the other one's too, as
        // upstream's cache does on failure (the sequence, or everything for a whole-context state)
        if (seq_id == -1) {
            clear(true);
        } else {
            if (full_part) { kv_full ->seq_rm(seq_id, -1, -1); }
            if (kv_local)  { kv_local->seq_rm(seq_id, -1, -1); }
        }
        throw;
    }
    if (seq_id == -1) {
        std::fill(cp_refused.begin(), cp_refused.end(), false);
    } else if (seq_id_ok(seq_id)) {
        cp_refused[seq_id] = false;
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

llama_memory_context_ptr llama_kv_cache_rlkv_context::refused() {
    auto res = std::make_unique<llama_kv_cache_rlkv_context>(LLAMA_MEMORY_STATUS_FAILED_PREPARE);
    res->is_refused = true;
    return res;
}

bool llama_rlkv_batch_refused(const llama_memory_context_i * mctx) {
    const auto * m = dynamic_cast<const llama_kv_cache_rlkv_context *>(mctx);
    return m != nullptr && m->get_refused();
}

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
