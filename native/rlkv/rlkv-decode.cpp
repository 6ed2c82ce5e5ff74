// rlkv-edge: grouped decode attention on the CPU (see rlkv-decode.h).
#include "rlkv-decode.h"

#include "ggml-backend.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <mutex>
#include <set>
#include <cstdlib>
#include <cstring>
#include <type_traits>
#include <vector>

// The kernel is written once against an 8-lane F32 vector (rlkv_f32x8) and a few operations on it, defined here
// per instruction set: AVX2/FMA/F16C on x86-64 (checked at run time: the library itself may be built for an older
// CPU), NEON on aarch64 (Advanced SIMD and F16 conversion are part of every ARMv8-A core).
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#define RLKV_DECODE_SIMD 1
#define RLKV_SIMD __attribute__((target("avx2,fma,f16c,popcnt")))
#elif defined(__aarch64__) && defined(__ARM_NEON) && (defined(__GNUC__) || defined(__clang__))
#include <arm_neon.h>
#define RLKV_DECODE_SIMD 1
#define RLKV_SIMD
#else
#define RLKV_DECODE_SIMD 0
#endif

// grouped decode nodes computed in this process (llama_rlkv_decode_attn_runs)
static std::atomic<uint64_t> rlkv_decode_runs{0};

#if RLKV_DECODE_SIMD
namespace {

constexpr int64_t RLKV_DECODE_BLOCK      = 32;  // cells scored before their V rows are summed
constexpr int64_t RLKV_DECODE_CHUNK_MIN  = 256; // fewest visible cells in a chunk (all but a token's last chunk)
constexpr int64_t RLKV_DECODE_CHUNKS_MAX = 32;  // most chunks per token
constexpr int64_t RLKV_DECODE_D_MAX      = 512;
constexpr int64_t RLKV_DECODE_TOKENS_MAX = 8;   // decode of a few sequences at once (parallel slots)

bool rlkv_is_host(const ggml_tensor * t) {
    while (t->view_src) {
        t = t->view_src;
    }
    return t->buffer != nullptr && ggml_backend_buffer_is_host(t->buffer);
}

//
// 8 F32 lanes
//

#if defined(__x86_64__)
using rlkv_f32x8 = __m256;

RLKV_SIMD inline rlkv_f32x8 rlkv_zero()                     { return _mm256_setzero_ps(); }
RLKV_SIMD inline rlkv_f32x8 rlkv_set1(float a)              { return _mm256_set1_ps(a); }
RLKV_SIMD inline rlkv_f32x8 rlkv_load(const float * p)      { return _mm256_loadu_ps(p); }
RLKV_SIMD inline void       rlkv_store(float * p, rlkv_f32x8 x) { _mm256_storeu_ps(p, x); }
RLKV_SIMD inline rlkv_f32x8 rlkv_mul(rlkv_f32x8 a, rlkv_f32x8 b) { return _mm256_mul_ps(a, b); }
// a*b + c
RLKV_SIMD inline rlkv_f32x8 rlkv_fma(rlkv_f32x8 a, rlkv_f32x8 b, rlkv_f32x8 c) { return _mm256_fmadd_ps(a, b, c); }

// 8 F16 values as F32
RLKV_SIMD inline rlkv_f32x8 rlkv_load_f16(const ggml_fp16_t * p) {
    return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *) p));
}

RLKV_SIMD inline float rlkv_hsum(rlkv_f32x8 x) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(x), _mm256_extractf128_ps(x, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

RLKV_SIMD inline float rlkv_f16_to_f32(ggml_fp16_t h) { return _cvtsh_ss(h); }

// bit i set when mask value i of 16 is not -inf (the cell is visible)
RLKV_SIMD inline uint32_t rlkv_visible16(const ggml_fp16_t * mp) {
    const __m256i x  = _mm256_loadu_si256((const __m256i *) mp);
    const __m256i eq = _mm256_cmpeq_epi16(x, _mm256_set1_epi16((short) 0xFC00)); // F16 -inf
    const __m128i pk = _mm_packs_epi16(_mm256_castsi256_si128(eq), _mm256_extracti128_si256(eq, 1));
    return ~(uint32_t) _mm_movemask_epi8(pk) & 0xFFFFu;
}
#else // aarch64: two NEON registers
struct rlkv_f32x8 {
    float32x4_t lo;
    float32x4_t hi;
};

inline rlkv_f32x8 rlkv_zero()                { return { vdupq_n_f32(0.0f), vdupq_n_f32(0.0f) }; }
inline rlkv_f32x8 rlkv_set1(float a)         { return { vdupq_n_f32(a), vdupq_n_f32(a) }; }
inline rlkv_f32x8 rlkv_load(const float * p) { return { vld1q_f32(p), vld1q_f32(p + 4) }; }
inline void       rlkv_store(float * p, rlkv_f32x8 x) { vst1q_f32(p, x.lo); vst1q_f32(p + 4, x.hi); }
inline rlkv_f32x8 rlkv_mul(rlkv_f32x8 a, rlkv_f32x8 b) { return { vmulq_f32(a.lo, b.lo), vmulq_f32(a.hi, b.hi) }; }
// a*b + c
inline rlkv_f32x8 rlkv_fma(rlkv_f32x8 a, rlkv_f32x8 b, rlkv_f32x8 c) {
    return { vfmaq_f32(c.lo, a.lo, b.lo), vfmaq_f32(c.hi, a.hi, b.hi) };
}

// 8 F16 values as F32
inline rlkv_f32x8 rlkv_load_f16(const ggml_fp16_t * p) {
    const float16x8_t h = vreinterpretq_f16_u16(vld1q_u16((const uint16_t *) p));
    return { vcvt_f32_f16(vget_low_f16(h)), vcvt_high_f32_f16(h) };
}

inline float rlkv_hsum(rlkv_f32x8 x) { return vaddvq_f32(vaddq_f32(x.lo, x.hi)); }

inline float rlkv_f16_to_f32(ggml_fp16_t h) {
    return vgetq_lane_f32(vcvt_f32_f16(vreinterpret_f16_u16(vdup_n_u16(h))), 0);
}

// bit i set when mask value i of 16 is not -inf (the cell is visible)
inline uint32_t rlkv_visible16(const ggml_fp16_t * mp) {
    static const uint16_t lane_bit[8] = { 1, 2, 4, 8, 16, 32, 64, 128 };
    const uint16x8_t bit  = vld1q_u16(lane_bit);
    const uint16x8_t ninf = vdupq_n_u16(0xFC00); // F16 -inf
    const uint32_t lo = vaddvq_u16(vandq_u16(vceqq_u16(vld1q_u16((const uint16_t *) mp), ninf), bit));
    const uint32_t hi = vaddvq_u16(vandq_u16(vceqq_u16(vld1q_u16((const uint16_t *) mp + 8), ninf), bit));
    return ~(lo | hi << 8) & 0xFFFFu;
}
#endif

// y = y*a; n % 8 == 0
RLKV_SIMD void rlkv_scale(float * y, float a, int64_t n) {
    const rlkv_f32x8 va = rlkv_set1(a);
    for (int64_t i = 0; i < n; i += 8) {
        rlkv_store(y + i, rlkv_mul(rlkv_load(y + i), va));
    }
}

// per-thread scratch, sized for the largest layer seen
struct rlkv_decode_scratch {
    std::vector<float> acc;    // [n_q, D]    unnormalised sum of V rows, per query head
    std::vector<float> m;      // [n_q]       running max score
    std::vector<float> s;      // [n_q]       running sum of weights
    std::vector<float> score;  // [gq, BLOCK] one KV head's scores of a block, then their softmax weights
    std::vector<int64_t> cell; // [2, BLOCK]  two blocks of cells that are not masked
    std::vector<float> mv;     // [2, BLOCK]  their mask values

    void reserve(int64_t n_q, int64_t gq, int64_t D) {
        acc.resize(n_q*D);
        m.resize(n_q);
        s.resize(n_q);
        score.resize(gq*RLKV_DECODE_BLOCK);
        cell.resize(2*RLKV_DECODE_BLOCK);
        mv.resize(2*RLKV_DECODE_BLOCK);
    }
};

// scores of n cells for the N query heads q[0, N) (rows q_nb1 bytes apart): each K row is loaded once and dotted
// with all N, the N sums kept in registers; score[n*B + j] = q_n . k_j * scale + mv_j
template <int N>
RLKV_SIMD void rlkv_scores(const char * q, size_t q_nb1, const char * k_h, size_t k_nb2, const int64_t * cell,
        const float * mv, int64_t n, int64_t D, float scale, float * score) {
    for (int64_t j = 0; j < n; ++j) {
        const auto * kr = (const ggml_fp16_t *) (k_h + cell[j]*k_nb2);
        rlkv_f32x8 acc[N];
        for (int g = 0; g < N; ++g) {
            acc[g] = rlkv_zero();
        }
        for (int64_t d = 0; d < D; d += 8) {
            const rlkv_f32x8 kv = rlkv_load_f16(kr + d);
            for (int g = 0; g < N; ++g) {
                acc[g] = rlkv_fma(kv, rlkv_load((const float *) (q + g*q_nb1) + d), acc[g]);
            }
        }
        for (int g = 0; g < N; ++g) {
            score[g*RLKV_DECODE_BLOCK + j] = rlkv_hsum(acc[g])*scale + mv[j];
        }
    }
}

// acc[g] += sum_j p[g*B + j] * v_j for the N query heads: 8 columns at a time, the N sums kept in registers while
// the block's V rows (in L1 after the first pass) go by
template <int N>
RLKV_SIMD void rlkv_values(const char * v_h, size_t v_nb2, const int64_t * cell, int64_t n, int64_t D,
        const float * p, float * acc) {
    for (int64_t d = 0; d < D; d += 8) {
        rlkv_f32x8 a[N];
        for (int g = 0; g < N; ++g) {
            a[g] = rlkv_load(acc + g*D + d);
        }
        for (int64_t j = 0; j < n; ++j) {
            const rlkv_f32x8 vv = rlkv_load_f16((const ggml_fp16_t *) (v_h + cell[j]*v_nb2) + d);
            for (int g = 0; g < N; ++g) {
                a[g] = rlkv_fma(vv, rlkv_set1(p[g*RLKV_DECODE_BLOCK + j]), a[g]);
            }
        }
        for (int g = 0; g < N; ++g) {
            rlkv_store(acc + g*D + d, a[g]);
        }
    }
}

// f(g0, N) for the query heads of a group in sub-groups [g0, g0 + N) of at most 8 (N a compile-time constant:
// the N sums stay in registers)
template <typename F>
void rlkv_for_subgroups(int64_t gq, F && f) {
    for (int64_t g0 = 0; g0 < gq; g0 += 8) {
        switch (std::min<int64_t>(gq - g0, 8)) {
            case 8:  f(g0, std::integral_constant<int, 8>{}); break;
            case 7:  f(g0, std::integral_constant<int, 7>{}); break;
            case 6:  f(g0, std::integral_constant<int, 6>{}); break;
            case 5:  f(g0, std::integral_constant<int, 5>{}); break;
            case 4:  f(g0, std::integral_constant<int, 4>{}); break;
            case 3:  f(g0, std::integral_constant<int, 3>{}); break;
            case 2:  f(g0, std::integral_constant<int, 2>{}); break;
            default: f(g0, std::integral_constant<int, 1>{}); break;
        }
    }
}

// the next (up to) BLOCK visible cells from *c on, stopping at c1, into cell/mv; asks for their K and V rows
// (every KV head of the view) to be used one block later. Blocks are made of visible cells, so where the masked
// cells lie does not change how the sums are grouped (as ggml's cell-by-cell loop does not).
RLKV_SIMD int64_t rlkv_next_block(const ggml_fp16_t * mp, int64_t & c, int64_t c1, int64_t * cell, float * mv,
        const char * k, size_t k_row, size_t k_nb2, const char * v, size_t v_row, size_t v_nb2) {
    constexpr size_t line = 64;
    int64_t n = 0;
    for (; c < c1 && n < RLKV_DECODE_BLOCK; ++c) {
        const float x = rlkv_f16_to_f32(mp[c]);
        if (x == -INFINITY) {
            continue; // masked: its K/V rows are never loaded
        }
        cell[n] = c;
        mv[n]   = x;
        ++n;
        for (size_t o = 0; o < k_row; o += line) {
            __builtin_prefetch(k + c*k_nb2 + o, 0, 3);
        }
        for (size_t o = 0; o < v_row; o += line) {
            __builtin_prefetch(v + c*v_nb2 + o, 0, 3);
        }
    }
    return n;
}

// the mask row of token t of T (token t belongs to stream t / (T/n_stream))
const ggml_fp16_t * rlkv_mask_row(const ggml_tensor * mask, int64_t t, int64_t n_tokens, int64_t n_stream) {
    const int64_t per_stream = n_tokens/n_stream;
    const int64_t stream     = t/per_stream;
    return (const ggml_fp16_t *) ((const char *) mask->data + (t % per_stream)*mask->nb[1] +
                                  (stream % mask->ne[3])*mask->nb[3]);
}

// token t over cells [c0, c1), every query head: writes [M, S, acc[D]] of each query head to out (out_stride
// apart). Token t of T belongs to stream t / (T/n_stream): its K/V view and its mask row are that stream's.
// Blocks of visible cells go by in order and each block serves every KV head before the next, so the cache's rows
// (all heads of a cell are adjacent) stream from memory once, in address order.
RLKV_SIMD void rlkv_decode_chunk(
        const ggml_tensor * q, const ggml_tensor * k, const ggml_tensor * v, const ggml_tensor * mask,
        float scale, int64_t t, int64_t c0, int64_t c1, float * out, int64_t out_stride, rlkv_decode_scratch & w) {
    const int64_t D   = k->ne[0];
    const int64_t H   = k->ne[1];
    const int64_t n_q = q->ne[1];
    const int64_t gq  = n_q/H;
    constexpr int64_t B = RLKV_DECODE_BLOCK;

    w.reserve(n_q, gq, D);
    float * acc   = w.acc.data();
    float * score = w.score.data();
    std::fill(w.acc.begin(), w.acc.end(), 0.0f);
    std::fill(w.m.begin(), w.m.end(), -INFINITY);
    std::fill(w.s.begin(), w.s.end(), 0.0f);

    const int64_t stream = t/(q->ne[2]/k->ne[3]);
    const ggml_fp16_t * mp = rlkv_mask_row(mask, t, q->ne[2], k->ne[3]);
    const char * qd = (const char *) q->data + t*q->nb[2];
    const char * kd = (const char *) k->data + stream*k->nb[3];
    const char * vd = (const char *) v->data + stream*v->nb[3];
    const size_t k_row = H*k->nb[1]; // the bytes of a cell's row that this view covers
    const size_t v_row = H*v->nb[1];

    // two blocks of visible cells: one being summed, the next one on its way from memory
    int64_t   next = c0;
    int64_t * cell[2] = { w.cell.data(), w.cell.data() + B };
    float   * mv[2]   = { w.mv.data(),   w.mv.data()   + B };
    int64_t   n_next  = rlkv_next_block(mp, next, c1, cell[1], mv[1], kd, k_row, k->nb[2], vd, v_row, v->nb[2]);
    for (int cur = 0; n_next > 0; ) {
        cur ^= 1;
        const int64_t n = n_next;
        n_next = rlkv_next_block(mp, next, c1, cell[cur ^ 1], mv[cur ^ 1], kd, k_row, k->nb[2], vd, v_row, v->nb[2]);
        const int64_t * cells = cell[cur];
        const float   * mvs   = mv[cur];
        for (int64_t h = 0; h < H; ++h) {
            const char * q_h = qd + h*gq*q->nb[1];
            const char * k_h = kd + h*k->nb[1];
            const char * v_h = vd + h*v->nb[1];

            // scores: each K row loaded once, dotted with every query head of the group
            rlkv_for_subgroups(gq, [&](int64_t g0, auto N) {
                rlkv_scores<decltype(N)::value>(q_h + g0*q->nb[1], q->nb[1], k_h, k->nb[2], cells, mvs, n, D, scale,
                                                score + g0*B);
            });

            // online softmax per query head: the running sums are rescaled once per block
            for (int64_t g = 0; g < gq; ++g) {
                const int64_t i = h*gq + g;
                float * sg = score + g*B;
                float bm = -INFINITY;
                for (int64_t j = 0; j < n; ++j) {
                    bm = std::max(bm, sg[j]);
                }
                const float m_new = std::max(w.m[i], bm);
                const float ms    = std::exp(w.m[i] - m_new); // 0 while nothing was seen before
                if (ms != 1.0f) {
                    rlkv_scale(acc + i*D, ms, D);
                    w.s[i] *= ms;
                }
                for (int64_t j = 0; j < n; ++j) {
                    sg[j] = std::exp(sg[j] - m_new);
                    w.s[i] += sg[j];
                }
                w.m[i] = m_new;
            }

            // values: each V row loaded once, added into every query head's sum
            rlkv_for_subgroups(gq, [&](int64_t g0, auto N) {
                rlkv_values<decltype(N)::value>(v_h, v->nb[2], cells, n, D, score + g0*B, acc + (h*gq + g0)*D);
            });
        }
    }

    for (int64_t i = 0; i < n_q; ++i) {
        float * o = out + i*out_stride;
        o[0] = w.m[i];
        o[1] = w.s[i];
        std::memcpy(o + 2, acc + i*D, D*sizeof(float));
    }
}

// visible cells per chunk for a token that sees n_vis cells: a function of n_vis alone (not of the threads, n_kv or
// where the cells lie), so a sequence's sums are grouped the same way whatever else the cache holds
int64_t rlkv_chunk_size(int64_t n_vis) {
    const int64_t per_chunk = (n_vis + RLKV_DECODE_CHUNKS_MAX - 1)/RLKV_DECODE_CHUNKS_MAX;
    return std::max(RLKV_DECODE_CHUNK_MIN, (per_chunk + RLKV_DECODE_BLOCK - 1)/RLKV_DECODE_BLOCK*RLKV_DECODE_BLOCK);
}

// graph node 1: dst [n_chunks + 2, n_tokens] I32: per token the number of chunks it uses, then where each chunk
// starts (cell index; unused chunks start at n_kv). Chunk c holds the visible cells [c*cs, (c + 1)*cs) in cell
// order, cs = rlkv_chunk_size(visible cells).
RLKV_SIMD void rlkv_decode_index(ggml_tensor * dst, int ith, int nth, void * /*userdata*/) {
    const ggml_tensor * q    = dst->src[0];
    const ggml_tensor * k    = dst->src[1];
    const ggml_tensor * mask = dst->src[2];

    const int64_t n_kv     = k->ne[2];
    const int64_t n_chunks = dst->ne[0] - 2;
    const int64_t n_tokens = dst->ne[1];

    for (int64_t t = ith; t < n_tokens; t += nth) {
        const ggml_fp16_t * mp = rlkv_mask_row(mask, t, q->ne[2], k->ne[3]);
        int32_t * idx = (int32_t *) ((char *) dst->data + t*dst->nb[1]);

        const int64_t n16 = n_kv/16*16;
        int64_t n_vis = 0;
        for (int64_t c = 0; c < n16; c += 16) {
            n_vis += __builtin_popcount(rlkv_visible16(mp + c));
        }
        for (int64_t c = n16; c < n_kv; ++c) {
            n_vis += rlkv_f16_to_f32(mp[c]) != -INFINITY;
        }

        const int64_t cs     = rlkv_chunk_size(n_vis);
        const int64_t n_used = std::max<int64_t>(1, (n_vis + cs - 1)/cs);
        GGML_ASSERT(n_used <= n_chunks);
        idx[0] = (int32_t) n_used;
        idx[1] = 0;
        for (int64_t c = 1; c <= n_chunks; ++c) {
            idx[1 + c] = (int32_t) n_kv;
        }

        // chunk c starts at the cell of visible cell c*cs (cs >= 256: at most one start in 16 cells)
        int64_t seen = 0;        // visible cells before cell c
        int64_t next = 1;        // the next chunk whose start is sought
        for (int64_t c = 0; c < n_kv && next < n_used; ) {
            uint32_t bits;
            int64_t  n;
            if (c + 16 <= n_kv) {
                bits = rlkv_visible16(mp + c);
                n    = 16;
            } else {
                bits = rlkv_f16_to_f32(mp[c]) != -INFINITY;
                n    = 1;
            }
            const int64_t cnt = __builtin_popcount(bits);
            const int64_t want = next*cs; // index of the visible cell that starts chunk `next`
            if (seen + cnt > want) {
                for (int64_t j = seen; j < want; ++j) {
                    bits &= bits - 1; // drop the lowest visible cell
                }
                idx[1 + next] = (int32_t) (c + __builtin_ctz(bits));
                ++next;
            }
            seen += cnt;
            c    += n;
        }
    }
}

// graph node 2: dst [D + 2, n_q_heads, n_chunks, n_tokens]; the chunks in use of every token are dealt round-robin
// to the threads (each chunk holds the same number of visible cells, but for a token's last)
void rlkv_decode_partials(ggml_tensor * dst, int ith, int nth, void * userdata) {
    const ggml_tensor * q    = dst->src[0];
    const ggml_tensor * k    = dst->src[1];
    const ggml_tensor * v    = dst->src[2];
    const ggml_tensor * mask = dst->src[3];
    const ggml_tensor * idx  = dst->src[4];

    const float   scale    = *(const float *) userdata;
    const int64_t n_tokens = dst->ne[3];

    thread_local rlkv_decode_scratch w;

    int64_t i = 0;
    for (int64_t t = 0; t < n_tokens; ++t) {
        const int32_t * it = (const int32_t *) ((const char *) idx->data + t*idx->nb[1]);
        for (int64_t c = 0; c < dst->ne[2]; ++c) {
            if (c >= it[0]) {
                break; // unused (the merge reads only the chunks in use)
            }
            if (i++ % nth != ith) {
                continue;
            }
            float * out = (float *) ((char *) dst->data + c*dst->nb[2] + t*dst->nb[3]);
            rlkv_decode_chunk(q, k, v, mask, scale, t, it[1 + c], it[2 + c], out, dst->nb[1]/sizeof(float), w);
        }
    }
}

// graph node 3: dst [D, n_q_heads, n_tokens] from the partials [D + 2, n_q_heads, n_chunks, n_tokens] of the chunks
// in use, in chunk order
RLKV_SIMD void rlkv_decode_merge(ggml_tensor * dst, int ith, int nth, void * /*userdata*/) {
    const ggml_tensor * p   = dst->src[0];
    const ggml_tensor * idx = dst->src[1];

    const int64_t D        = dst->ne[0];
    const int64_t n_q      = dst->ne[1];
    const int64_t n_tokens = p->ne[3];

    if (ith == 0) {
        rlkv_decode_runs.fetch_add(1, std::memory_order_relaxed);
    }

    for (int64_t i = ith; i < n_q*n_tokens; i += nth) {
        const int64_t g = i%n_q;
        const int64_t t = i/n_q;
        const int64_t n_chunks = *(const int32_t *) ((const char *) idx->data + t*idx->nb[1]);
        auto part = [&](int64_t c) {
            return (const float *) ((const char *) p->data + g*p->nb[1] + c*p->nb[2] + t*p->nb[3]);
        };
        float * o = (float *) ((char *) dst->data + g*dst->nb[1] + t*dst->nb[2]);
        std::fill(o, o + D, 0.0f);

        float m = -INFINITY;
        for (int64_t c = 0; c < n_chunks; ++c) {
            m = std::max(m, part(c)[0]);
        }
        if (m == -INFINITY) {
            continue; // every cell masked: zeros, as ggml's flash attention
        }
        float s = 0.0f;
        for (int64_t c = 0; c < n_chunks; ++c) {
            const float * pc = part(c);
            if (pc[0] == -INFINITY) {
                continue;
            }
            const float w = std::exp(pc[0] - m);
            s += w*pc[1];
            for (int64_t d = 0; d < D; ++d) {
                o[d] += w*pc[2 + d];
            }
        }
        const float inv = s == 0.0f ? 0.0f : 1.0f/s;
        for (int64_t d = 0; d < D; ++d) {
            o[d] *= inv;
        }
    }
}

} // namespace
#endif // RLKV_DECODE_SIMD

bool llama_rlkv_decode_attn_enabled() {
#if RLKV_DECODE_SIMD
    const char * env = std::getenv("RLKV_DECODE_ATTN");
    if (env && std::strcmp(env, "0") == 0) {
        return false;
    }
#if defined(__x86_64__)
    // every CPU with AVX2 has F16C and POPCNT (GCC <= 10 has no __builtin_cpu_supports("f16c"))
    static const bool cpu_ok = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    return cpu_ok;
#else
    return true; // aarch64: NEON and F16 conversion are in every core
#endif
#else
    return false;
#endif
}

bool llama_rlkv_decode_attn_forced() {
    const char * env = std::getenv("RLKV_DECODE_ATTN");
    return env && std::strcmp(env, "force") == 0 && llama_rlkv_decode_attn_enabled();
}

uint64_t llama_rlkv_decode_attn_runs() {
    return rlkv_decode_runs.load(std::memory_order_relaxed);
}

const float * llama_rlkv_decode_scale(float kq_scale) {
    // a model has one or a few scales; std::set's nodes never move, so the pointers stay valid for the process
    static std::mutex       mutex;
    static std::set<float>  scales;
    std::lock_guard<std::mutex> lock(mutex);
    return &*scales.insert(kq_scale).first;
}

ggml_tensor * llama_rlkv_build_decode_attn(
        ggml_context * ctx,
        ggml_tensor  * q,
        ggml_tensor  * k,
        ggml_tensor  * v,
        ggml_tensor  * kq_mask,
        const float  * kq_scale) {
#if RLKV_DECODE_SIMD
    if (!llama_rlkv_decode_attn_enabled() || kq_mask == nullptr) {
        return nullptr;
    }
    const int64_t D = k->ne[0];
    const bool covered =
        q->type == GGML_TYPE_F32 && k->type == GGML_TYPE_F16 && v->type == GGML_TYPE_F16 &&
        kq_mask->type == GGML_TYPE_F16 &&
        q->ne[0] == D && v->ne[0] == D && D % 8 == 0 && D <= RLKV_DECODE_D_MAX &&
        q->ne[2] >= 1 && q->ne[2] <= RLKV_DECODE_TOKENS_MAX && q->ne[3] == 1 &&          // a few tokens
        q->ne[2] % k->ne[3] == 0 && v->ne[3] == k->ne[3] &&                               // of 1+ streams
        kq_mask->ne[1] == q->ne[2]/k->ne[3] && kq_mask->ne[2] == 1 &&
        (kq_mask->ne[3] == k->ne[3] || kq_mask->ne[3] == 1) &&
        v->ne[1] == k->ne[1] && v->ne[2] == k->ne[2] && q->ne[1] % k->ne[1] == 0 &&
        q->nb[0] == sizeof(float) && k->nb[0] == sizeof(ggml_fp16_t) && v->nb[0] == sizeof(ggml_fp16_t) &&
        v->nb[1] <= v->nb[2] &&                                                         // V not transposed
        kq_mask->ne[0] >= k->ne[2] &&
        rlkv_is_host(k) && rlkv_is_host(v);
    if (!covered) {
        return nullptr;
    }

    const int64_t n_q      = q->ne[1];
    const int64_t n_tokens = q->ne[2];
    // room for the most chunks a token can use: each token's chunks follow its own visible cells (rlkv_decode_index),
    // not n_kv or the thread count, so its result does not change with either
    const int64_t n_kv     = k->ne[2];
    const int64_t n_chunks = std::clamp<int64_t>((n_kv + RLKV_DECODE_CHUNK_MIN - 1)/RLKV_DECODE_CHUNK_MIN, 1,
            RLKV_DECODE_CHUNKS_MAX);

    ggml_tensor * idx_args[] = { q, k, kq_mask };
    ggml_tensor * idx = ggml_custom_4d(ctx, GGML_TYPE_I32, n_chunks + 2, n_tokens, 1, 1, idx_args, 3,
            rlkv_decode_index, GGML_N_TASKS_MAX, nullptr);
    ggml_set_name(idx, "rlkv_decode_index");

    ggml_tensor * args[] = { q, k, v, kq_mask, idx };
    ggml_tensor * part = ggml_custom_4d(ctx, GGML_TYPE_F32, D + 2, n_q, n_chunks, n_tokens, args, 5,
            rlkv_decode_partials, GGML_N_TASKS_MAX, (void *) kq_scale);
    ggml_set_name(part, "rlkv_decode_partials");

    ggml_tensor * merge_args[] = { part, idx };
    ggml_tensor * out = ggml_custom_4d(ctx, GGML_TYPE_F32, D, n_q, n_tokens, 1, merge_args, 2,
            rlkv_decode_merge, GGML_N_TASKS_MAX, nullptr);
    ggml_set_name(out, "rlkv_decode_attn");

    return ggml_reshape_2d(ctx, out, D*n_q, n_tokens);
#else
    (void) ctx; (void) q; (void) k; (void) v; (void) kq_mask; (void) kq_scale;
    return nullptr;
#endif
}
