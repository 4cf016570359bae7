// attnlab's fused CPU kernels for the non-exponential attention kernels (backend "cpp").
//
// Flash-style: a task takes a few tiles of queries and, for each block of keys, computes each
// tile's scores into a buffer that stays in cache (a BLAS gemm), applies f, the mask and the
// causal triangle and sums the rows in one pass, and accumulates f(s) @ v with a second gemm.
// Nothing of size L x S is ever allocated. Non-exponential kernels need no running maximum, so, unlike
// softmax, no block is ever rescaled.
//
// Layout (the canonical one of attnlab.backends._common, made contiguous by the caller):
//   q (N, H, G, L, D), k (N, H, S, D), v (N, H, S, Dv); the key head h serves the G query heads
//   (n, h, 0..G-1). mask: an empty tensor, or bool expanded to (N, H, G, L, S) (stride 0 on
//   broadcast dims). Causal: query i sees key j iff j <= i.
//
// With a_j = f(s_j) * visible_j, Z = sum_j a_j + eps (Z = 1 where that is 0) and o = sum_j a_j v_j / Z:
//   forward:  o, Z
//   backward: dv_j += a_j dO / Z,  ds_j = f'(s_j) visible_j (dO/Z . v_j - dO . o / Z),
//             dq = scale * sum_j ds_j k_j,  dk_j += ds_j (scale * q)
// The backward runs one task per key head (n, h): the task owns dk and dv of that head, so no
// two threads ever write the same gradient element and the result is deterministic.
//
// Dropout (dropout_p > 0) multiplies a_j by m_j = keep_j / (1 - p) after Z is summed:
//   o = sum_j a_j m_j v_j / Z,  dv_j += a_j m_j dO / Z,  ds_j = f'(s_j) visible_j (m_j dO/Z . v_j - dO . o / Z).
// keep_j of query row r (flat over (N, H, G, L)) is a pure function of (seed, r, j): the hash below,
// the same as attnlab.backends._common's, so it does not depend on tiles or threads.
//
// The gemms are BLAS sgemm_/dgemm_, which torch's CPU library exports (MKL on x86-64); inside
// at::parallel_for they run on the calling thread.

#include <ATen/Parallel.h>
#include <torch/extension.h>

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <vector>

extern "C" {
void sgemm_(const char*, const char*, const int*, const int*, const int*, const float*, const float*,
            const int*, const float*, const int*, const float*, float*, const int*);
void dgemm_(const char*, const char*, const int*, const int*, const int*, const double*, const double*,
            const int*, const double*, const int*, const double*, double*, const int*);
}

namespace {

enum KernelId : int64_t { kExpressive = 0, kSquared = 1, kRelu = 2, kRelu2 = 3 };

// --- attention dropout: mirrors mix32 / dropout_row_state / dropout_key_state / dropout_bits of
// attnlab/backends/_common.py bit for bit (uint32_t arithmetic wraps mod 2^32, as the Python
// side's masked 16-bit-split products do).
constexpr uint32_t kRowSalt = 0x9E3779B9u, kKeySalt = 0x85EBCA6Bu;

inline uint32_t mix32(uint32_t x) {  // lowbias32
  x ^= x >> 16;
  x *= 0x7FEB352Du;
  x ^= x >> 15;
  x *= 0x846CA68Bu;
  x ^= x >> 16;
  return x;
}
inline uint32_t absorb(uint32_t h, uint32_t word) { return mix32(word ^ h); }
inline uint32_t seed_state(uint32_t salt, uint64_t seed) {
  return absorb(absorb(salt, static_cast<uint32_t>(seed)), static_cast<uint32_t>(seed >> 32));
}
inline uint32_t dropout_row_state(uint64_t seed, uint64_t row) {
  return absorb(absorb(seed_state(kRowSalt, seed), static_cast<uint32_t>(row)), static_cast<uint32_t>(row >> 32));
}
std::vector<uint32_t> dropout_key_states(uint64_t seed, int64_t S) {
  std::vector<uint32_t> keys(S);
  const uint32_t h = seed_state(kKeySalt, seed);
  for (int64_t j = 0; j < S; ++j) keys[j] = absorb(h, static_cast<uint32_t>(j));
  return keys;
}

// Row-major C (m x n) = alpha op(A) (m x k) op(B) (k x n) + beta C, through column-major BLAS:
// a row-major matrix is its transpose in column-major, so C^T = op(B)^T op(A)^T.
template <typename T>
void gemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, T alpha, const T* a, int64_t lda,
          const T* b, int64_t ldb, T beta, T* c, int64_t ldc) {
  const char ta = trans_a ? 'T' : 'N', tb = trans_b ? 'T' : 'N';
  const int M = static_cast<int>(m), N = static_cast<int>(n), K = static_cast<int>(k);
  const int LA = static_cast<int>(lda), LB = static_cast<int>(ldb), LC = static_cast<int>(ldc);
  if constexpr (std::is_same_v<T, float>) {
    sgemm_(&tb, &ta, &N, &M, &K, &alpha, b, &LB, a, &LA, &beta, c, &LC);
  } else {
    dgemm_(&tb, &ta, &N, &M, &K, &alpha, b, &LB, a, &LA, &beta, c, &LC);
  }
}

// f(s) of one kernel. EA: x / (1 + x) with x = s^2 capped at the largest finite value, so that a
// huge |s| gives 1 instead of inf / inf.
template <typename T, int64_t K>
inline T weight(T s) {
  if constexpr (K == kExpressive) {
    const T x = std::min(s * s, std::numeric_limits<T>::max());
    return x / (T(1) + x);
  } else if constexpr (K == kSquared) {
    return s * s;
  } else if constexpr (K == kRelu) {
    return s > T(0) ? s : T(0);
  } else {
    const T r = s > T(0) ? s : T(0);
    return r * r;
  }
}

// f(s) into s and f'(s) * g into g. EA: with u = 1 / (1 + s^2), f = s^2 u and f' = 2 s u^2.
template <typename T, int64_t K>
inline void weight_and_vjp(T& s, T& g) {
  if constexpr (K == kExpressive) {
    const T x = std::min(s * s, std::numeric_limits<T>::max());
    const T u = T(1) / (T(1) + x);
    g *= T(2) * s * u * u;
    s = x * u;
  } else if constexpr (K == kSquared) {
    g *= T(2) * s;
    s = s * s;
  } else if constexpr (K == kRelu) {
    g = s > T(0) ? g : T(0);
    s = s > T(0) ? s : T(0);
  } else {
    const T r = s > T(0) ? s : T(0);
    g *= T(2) * r;
    s = r * r;
  }
}

// Which keys of one query row are visible: keys [0, limit) by the causal triangle (limit = n
// when there is none), and mask[j * stride] when a mask is given.
struct RowVisibility {
  int64_t limit;
  const bool* mask;  // nullptr: no mask
  int64_t stride;
  bool masked(int64_t j) const { return mask != nullptr && !mask[j * stride]; }
};

// Everything about one call that a task needs.
template <typename T>
struct Args {
  const T* q;
  const T* k;
  const T* v;
  const bool* mask;
  int64_t N, H, G, L, S, D, Dv;
  int64_t mask_strides[5];
  bool causal;
  T scale, eps;
  int64_t bq, bk;
  // Dropout: off when keys == nullptr. keep iff mix32(row state ^ keys[j]) >= threshold.
  const uint32_t* keys;
  uint64_t seed;
  uint32_t threshold;
  T keep_scale;  // 1 / (1 - p)
  uint32_t row_state(int64_t row) const { return dropout_row_state(seed, static_cast<uint64_t>(row)); }

  // The visibility of row i (absolute query index) of head (n, h, g) within keys [j0, j0 + width).
  RowVisibility row(int64_t n, int64_t h, int64_t g, int64_t i, int64_t j0, int64_t width) const {
    const int64_t limit = causal ? std::clamp<int64_t>(i + 1 - j0, 0, width) : width;
    if (mask == nullptr) return {limit, nullptr, 0};
    const int64_t* st = mask_strides;
    return {limit, mask + n * st[0] + h * st[1] + g * st[2] + i * st[3] + j0 * st[4], st[4]};
  }
  // Keys a block of queries [i0, i0 + m) can see at all.
  int64_t key_end(int64_t i0, int64_t m) const { return causal ? std::min(S, i0 + m) : S; }
};

// f applied in place to one row of scores, zero where not visible; returns the row's sum.
template <typename T, int64_t K>
T weights_row(T* row, int64_t width, const RowVisibility& vis) {
  T sum = T(0);
  if (vis.mask == nullptr) {
#pragma omp simd reduction(+ : sum)
    for (int64_t j = 0; j < vis.limit; ++j) {
      const T a = weight<T, K>(row[j]);
      row[j] = a;
      sum += a;
    }
  } else {
    for (int64_t j = 0; j < vis.limit; ++j) {
      const T a = vis.masked(j) ? T(0) : weight<T, K>(row[j]);
      row[j] = a;
      sum += a;
    }
  }
  std::fill(row + vis.limit, row + width, T(0));
  return sum;
}

// Dropout on one row of weights (keys [j0, j0 + limit) of the row with hash state rs).
template <typename T>
void dropout_row(T* row, int64_t limit, const Args<T>& p, uint32_t rs, int64_t j0) {
  const uint32_t* keys = p.keys + j0;
  for (int64_t j = 0; j < limit; ++j) row[j] *= mix32(rs ^ keys[j]) >= p.threshold ? p.keep_scale : T(0);
}

// One task per (n, h, g, span of bq * tiles queries). Its loop runs over the key blocks outside
// and over the span's query tiles inside, so each block of k and v is read into the cache once
// per span rather than once per tile: at long L one head's k and v outgrow L2.
template <typename T, int64_t K>
void forward_impl(const Args<T>& p, int64_t tiles, T* out, T* z) {
  const int64_t span = p.bq * tiles;
  const int64_t spans = (p.L + span - 1) / span;
  at::parallel_for(0, p.N * p.H * p.G * spans, 1, [&](int64_t begin, int64_t end) {
    std::vector<T> qs(span * p.D), s(p.bq * p.bk), acc(span * p.Dv), rowsum(span);
    for (int64_t t = begin; t < end; ++t) {
      const int64_t head = t / spans, q0 = (t % spans) * span, mq = std::min(span, p.L - q0);
      const int64_t g = head % p.G, h = (head / p.G) % p.H, n = head / (p.G * p.H);
      const T* qh = p.q + (head * p.L + q0) * p.D;
      const T* kh = p.k + (n * p.H + h) * p.S * p.D;
      const T* vh = p.v + (n * p.H + h) * p.S * p.Dv;
      for (int64_t x = 0; x < mq * p.D; ++x) qs[x] = qh[x] * p.scale;
      std::fill(acc.begin(), acc.end(), T(0));
      std::fill(rowsum.begin(), rowsum.end(), T(0));
      const int64_t k_end = p.key_end(q0, mq);
      for (int64_t j0 = 0; j0 < k_end; j0 += p.bk) {
        const int64_t w = std::min(p.bk, k_end - j0);
        for (int64_t i0 = 0; i0 < mq; i0 += p.bq) {
          const int64_t m = std::min(p.bq, mq - i0);
          if (p.key_end(q0 + i0, m) <= j0) continue;  // causal: every key of the block is in this tile's future
          gemm<T>(false, true, m, w, p.D, T(1), qs.data() + i0 * p.D, p.D, kh + j0 * p.D, p.D, T(0), s.data(), w);
          for (int64_t i = 0; i < m; ++i) {
            const RowVisibility vis = p.row(n, h, g, q0 + i0 + i, j0, w);
            rowsum[i0 + i] += weights_row<T, K>(s.data() + i * w, w, vis);
            if (p.keys != nullptr) dropout_row(s.data() + i * w, vis.limit, p, p.row_state(head * p.L + q0 + i0 + i), j0);
          }
          gemm<T>(false, false, m, p.Dv, w, T(1), s.data(), w, vh + j0 * p.Dv, p.Dv, T(1), acc.data() + i0 * p.Dv,
                  p.Dv);
        }
      }
      T* oh = out + (head * p.L + q0) * p.Dv;
      for (int64_t i = 0; i < mq; ++i) {
        T zi = rowsum[i] + p.eps;
        zi = zi > T(0) ? zi : T(1);  // a row without weight: zero output, finite gradients
        z[head * p.L + q0 + i] = zi;
        const T inv = T(1) / zi;
        for (int64_t c = 0; c < p.Dv; ++c) oh[i * p.Dv + c] = acc[i * p.Dv + c] * inv;
      }
    }
  });
}

template <typename T, int64_t K>
void backward_impl(const Args<T>& p, const T* d_out, const T* out, const T* z, T* dq, T* dk, T* dv) {
  at::parallel_for(0, p.N * p.H, 1, [&](int64_t begin, int64_t end) {
    std::vector<T> qs(p.bq * p.D), dz(p.bq * p.Dv), delta(p.bq), s(p.bq * p.bk), ds(p.bq * p.bk);
    for (int64_t kv = begin; kv < end; ++kv) {
      const int64_t n = kv / p.H, h = kv % p.H;
      const T* kh = p.k + kv * p.S * p.D;
      const T* vh = p.v + kv * p.S * p.Dv;
      T* dkh = dk + kv * p.S * p.D;
      T* dvh = dv + kv * p.S * p.Dv;
      std::fill(dkh, dkh + p.S * p.D, T(0));
      std::fill(dvh, dvh + p.S * p.Dv, T(0));
      for (int64_t g = 0; g < p.G; ++g) {
        const int64_t head = kv * p.G + g;
        for (int64_t i0 = 0; i0 < p.L; i0 += p.bq) {
          const int64_t m = std::min(p.bq, p.L - i0), row0 = head * p.L + i0;
          T* dqh = dq + row0 * p.D;
          for (int64_t x = 0; x < m * p.D; ++x) qs[x] = p.q[row0 * p.D + x] * p.scale;
          // dO / Z and (dO . o) / Z per query: p = a / Z never needs forming.
          for (int64_t i = 0; i < m; ++i) {
            const T inv = T(1) / z[row0 + i];
            T dot = T(0);
            for (int64_t c = 0; c < p.Dv; ++c) {
              const T go = d_out[(row0 + i) * p.Dv + c];
              dz[i * p.Dv + c] = go * inv;
              dot += go * out[(row0 + i) * p.Dv + c];
            }
            delta[i] = dot * inv;
          }
          std::fill(dqh, dqh + m * p.D, T(0));
          const int64_t k_end = p.key_end(i0, m);
          for (int64_t j0 = 0; j0 < k_end; j0 += p.bk) {
            const int64_t w = std::min(p.bk, k_end - j0);
            gemm<T>(false, true, m, w, p.D, T(1), qs.data(), p.D, kh + j0 * p.D, p.D, T(0), s.data(), w);
            gemm<T>(false, true, m, w, p.Dv, T(1), dz.data(), p.Dv, vh + j0 * p.Dv, p.Dv, T(0), ds.data(), w);
            for (int64_t i = 0; i < m; ++i) {
              T* srow = s.data() + i * w;
              T* grow = ds.data() + i * w;
              const RowVisibility vis = p.row(n, h, g, i0 + i, j0, w);
              const T di = delta[i];
              if (p.keys == nullptr) {
#pragma omp simd
                for (int64_t j = 0; j < vis.limit; ++j) {
                  grow[j] -= di;
                  weight_and_vjp<T, K>(srow[j], grow[j]);
                }
              } else {  // the forward's m_j: into dO . v_j before f', and into a_j for dv
                const uint32_t rs = p.row_state(row0 + i);
                const uint32_t* keys = p.keys + j0;
                for (int64_t j = 0; j < vis.limit; ++j) {
                  const T mj = mix32(rs ^ keys[j]) >= p.threshold ? p.keep_scale : T(0);
                  grow[j] = grow[j] * mj - di;
                  weight_and_vjp<T, K>(srow[j], grow[j]);
                  srow[j] *= mj;
                }
              }
              if (vis.mask != nullptr) {
                for (int64_t j = 0; j < vis.limit; ++j) {
                  if (vis.masked(j)) srow[j] = grow[j] = T(0);
                }
              }
              std::fill(srow + vis.limit, srow + w, T(0));
              std::fill(grow + vis.limit, grow + w, T(0));
            }
            gemm<T>(true, false, w, p.Dv, m, T(1), s.data(), w, dz.data(), p.Dv, T(1), dvh + j0 * p.Dv, p.Dv);
            gemm<T>(true, false, w, p.D, m, T(1), ds.data(), w, qs.data(), p.D, T(1), dkh + j0 * p.D, p.D);
            gemm<T>(false, false, m, p.D, w, p.scale, ds.data(), w, kh + j0 * p.D, p.D, T(1), dqh, p.D);
          }
        }
      }
    }
  });
}

template <typename T>
Args<T> make_args(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                  const torch::Tensor& mask, bool causal, double scale, double eps, int64_t bq, int64_t bk) {
  TORCH_CHECK(q.dim() == 5 && k.dim() == 4 && v.dim() == 4, "attnlab cpp: q must be 5-D, k and v 4-D");
  TORCH_CHECK(q.is_contiguous() && k.is_contiguous() && v.is_contiguous(), "attnlab cpp: q, k, v must be contiguous");
  TORCH_CHECK(bq > 0 && bk > 0, "attnlab cpp: block sizes must be positive");
  Args<T> p{};
  p.q = q.data_ptr<T>();
  p.k = k.data_ptr<T>();
  p.v = v.data_ptr<T>();
  p.N = q.size(0), p.H = q.size(1), p.G = q.size(2), p.L = q.size(3), p.D = q.size(4);
  p.S = k.size(2), p.Dv = v.size(3);
  p.mask = nullptr;
  if (mask.numel() > 0) {
    TORCH_CHECK(mask.scalar_type() == torch::kBool && mask.dim() == 5, "attnlab cpp: mask must be 5-D bool");
    p.mask = mask.data_ptr<bool>();
    for (int d = 0; d < 5; ++d) p.mask_strides[d] = mask.stride(d);
  }
  p.causal = causal;
  p.scale = static_cast<T>(scale);
  p.eps = static_cast<T>(eps);
  p.bq = bq;
  p.bk = bk;
  p.keys = nullptr;
  return p;
}

uint64_t join_seed(int64_t seed_lo, int64_t seed_hi) {
  return (static_cast<uint64_t>(seed_hi) << 32) | (static_cast<uint64_t>(seed_lo) & 0xFFFFFFFFull);
}

// Dropout parameters of one call: the key states (owned by the caller) wired into p.
template <typename T>
void set_dropout(Args<T>& p, const std::vector<uint32_t>& keys, double dropout_p, int64_t threshold,
                 int64_t seed_lo, int64_t seed_hi) {
  if (dropout_p <= 0) return;
  TORCH_CHECK(dropout_p < 1 && threshold >= 0 && threshold <= 0xFFFFFFFFll, "attnlab cpp: bad dropout arguments");
  p.keys = keys.data();
  p.seed = join_seed(seed_lo, seed_hi);
  p.threshold = static_cast<uint32_t>(threshold);
  p.keep_scale = static_cast<T>(1.0 / (1.0 - dropout_p));
}


// Calls fn.template operator()<T, K>() for the tensor's dtype and the kernel id.
template <typename Fn>
void dispatch(const torch::Tensor& q, int64_t kernel, Fn&& fn) {
  TORCH_CHECK(q.scalar_type() == torch::kFloat || q.scalar_type() == torch::kDouble,
              "attnlab cpp: float32 or float64 expected");
  TORCH_CHECK(kernel >= kExpressive && kernel <= kRelu2, "attnlab cpp: unknown kernel id");
  AT_DISPATCH_FLOATING_TYPES(q.scalar_type(), "attnlab_cpp", [&] {
    switch (kernel) {
      case kExpressive: fn.template operator()<scalar_t, kExpressive>(); break;
      case kSquared: fn.template operator()<scalar_t, kSquared>(); break;
      case kRelu: fn.template operator()<scalar_t, kRelu>(); break;
      default: fn.template operator()<scalar_t, kRelu2>(); break;
    }
  });
}

}  // namespace

std::vector<torch::Tensor> forward(torch::Tensor q, torch::Tensor k, torch::Tensor v, torch::Tensor mask,
                                   int64_t kernel, bool causal, double scale, double eps, int64_t bq, int64_t bk,
                                   int64_t tiles, double dropout_p, int64_t threshold, int64_t seed_lo,
                                   int64_t seed_hi) {
  TORCH_CHECK(tiles > 0, "attnlab cpp: tiles per task must be positive");
  auto out = torch::empty({q.size(0), q.size(1), q.size(2), q.size(3), v.size(3)}, q.options());
  auto z = torch::empty({q.size(0), q.size(1), q.size(2), q.size(3)}, q.options());
  const auto keys = dropout_p > 0 ? dropout_key_states(join_seed(seed_lo, seed_hi), k.size(2))
                                  : std::vector<uint32_t>();
  dispatch(q, kernel, [&]<typename T, int64_t K>() {
    auto p = make_args<T>(q, k, v, mask, causal, scale, eps, bq, bk);
    set_dropout<T>(p, keys, dropout_p, threshold, seed_lo, seed_hi);
    forward_impl<T, K>(p, tiles, out.data_ptr<T>(), z.data_ptr<T>());
  });
  return {out, z};
}

std::vector<torch::Tensor> backward(torch::Tensor d_out, torch::Tensor q, torch::Tensor k, torch::Tensor v,
                                    torch::Tensor mask, torch::Tensor out, torch::Tensor z, int64_t kernel,
                                    bool causal, double scale, double eps, int64_t bq, int64_t bk, double dropout_p,
                                    int64_t threshold, int64_t seed_lo, int64_t seed_hi) {
  TORCH_CHECK(d_out.is_contiguous() && out.is_contiguous() && z.is_contiguous(),
              "attnlab cpp: d_out, out, z must be contiguous");
  auto dq = torch::empty_like(q), dk = torch::empty_like(k), dv = torch::empty_like(v);
  const auto keys = dropout_p > 0 ? dropout_key_states(join_seed(seed_lo, seed_hi), k.size(2))
                                  : std::vector<uint32_t>();
  dispatch(q, kernel, [&]<typename T, int64_t K>() {
    auto p = make_args<T>(q, k, v, mask, causal, scale, eps, bq, bk);
    set_dropout<T>(p, keys, dropout_p, threshold, seed_lo, seed_hi);
    backward_impl<T, K>(p, d_out.data_ptr<T>(), out.data_ptr<T>(), z.data_ptr<T>(), dq.data_ptr<T>(),
                        dk.data_ptr<T>(), dv.data_ptr<T>());
  });
  return {dq, dk, dv};
}

// The dropout hash words for rows (int64, any shape) and keys 0..S-1: (*rows.shape, S) int64, the
// same numbers as attnlab.backends._common.dropout_bits (for the test that they agree).
torch::Tensor dropout_bits(int64_t seed_lo, int64_t seed_hi, torch::Tensor rows, int64_t S) {
  TORCH_CHECK(rows.scalar_type() == torch::kLong, "attnlab cpp: rows must be int64");
  const uint64_t seed = join_seed(seed_lo, seed_hi);
  const auto keys = dropout_key_states(seed, S);
  auto r = rows.contiguous();
  auto sizes = r.sizes().vec();
  sizes.push_back(S);
  auto bits = torch::empty(sizes, r.options());
  const int64_t* rp = r.data_ptr<int64_t>();
  int64_t* bp = bits.data_ptr<int64_t>();
  for (int64_t i = 0; i < r.numel(); ++i) {
    const uint32_t rs = dropout_row_state(seed, static_cast<uint64_t>(rp[i]));
    for (int64_t j = 0; j < S; ++j) bp[i * S + j] = mix32(rs ^ keys[j]);
  }
  return bits;
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("forward", &forward, "fused attention forward: (out, Z)");
  m.def("backward", &backward, "fused attention backward: (dq, dk, dv)");
  m.def("dropout_bits", &dropout_bits, "the dropout hash words of (seed, rows, keys 0..S-1)");
}
