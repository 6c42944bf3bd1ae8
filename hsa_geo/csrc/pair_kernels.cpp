// Fused kernels of the pair list's family attention (docs/math.md, 6.5).
//
// One pass per member row instead of a dozen tensor operations: the scores
// of a member's pairs, their logsumexp and the weighted sum of its siblings'
// values are computed while the row is in cache, and the backward reads the
// pairs by member for the gradients of ``a`` and by sibling (the transposed
// order) for those of ``b``, so every output row is written by one loop (no
// atomics, the same sums in the same order on every call).
//
// Threads: the rows are split among the caller's OpenMP threads where the
// build has OpenMP (setup.py: with GCC, whose libgomp is the one PyTorch's
// wheels load, so the kernels run on PyTorch's own thread team; a thread
// started per pass was slower, as PyTorch's workers keep spinning on the
// cores after their regions). Each output row is still written by one
// loop, so the result does not depend on the number of threads.
//
// The module takes raw addresses of contiguous CPU tensors (float32 or
// float64; indices int64) and sizes; hsa_geo/functional/fused_pair_kernels.py
// makes every argument so before a call. It needs no PyTorch headers, so
// it builds with the compiler alone.
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <algorithm>
#include <limits>
#include <vector>

namespace {

typedef int64_t idx;

// Lists below this many products P' H D run on one thread: a parallel
// region costs a few microseconds.
const idx kParallelProducts = idx(1) << 15;

template <typename T>
inline T dot(const T *x, const T *y, idx n) {
  T acc = 0;
#pragma omp simd reduction(+ : acc)
  for (idx d = 0; d < n; ++d) acc += x[d] * y[d];
  return acc;
}

template <typename T>
inline void axpy(T a, const T *x, T *__restrict y, idx n) {
#pragma omp simd
  for (idx d = 0; d < n; ++d) y[d] += a * x[d];
}

// exp in straight-line code that the compiler vectorises (the library's
// exp is a call per element). float: Cephes' expf (2^n times a polynomial
// of the remainder, about 1 ulp), results below float's smallest normal
// number flushed to 0; double: the library's exp.
inline double vexp(double x) { return std::exp(x); }

inline float vexp(float x) {
  const float big = 88.72283f, small = -87.33654f;
  float y = x > big ? big : x;
  y = y < small ? small : y;
  const float t = y * 1.44269504088896341f + 0.5f;
#ifdef __SSE4_1__
  const float fn = std::floor(t);  // one rounding instruction
#else
  float fn = static_cast<float>(static_cast<int>(t));
  fn = fn > t ? fn - 1.0f : fn;  // floor
#endif
  const int n = static_cast<int>(fn);
  y = y - fn * 0.693359375f + fn * 2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * y + 1.3981999507e-3f;
  p = p * y + 8.3334519073e-3f;
  p = p * y + 4.1665795894e-2f;
  p = p * y + 1.6666665459e-1f;
  p = p * y + 5.0000001201e-1f;
  p = p * y * y + y + 1.0f;
  const int32_t bits = (n + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, 4);
  p *= scale;
  p = x > big ? INFINITY : p;
  p = x < small ? 0.0f : p;
  return x != x ? x : p;
}
struct Pairs {
  idx K, P, H;
  int threads;        // the rows are split among this many threads
  const idx *rowptr;  // [K + 1] pairs of member a (sorted by src)
  const idx *src;     // [P]
  const idx *dst;     // [P]
  const idx *trowptr; // [K + 1] pairs of member b in the transposed order
  const idx *tperm;   // [P] the pairs sorted by dst, then src
};

// The threads of a pass over the list: the caller's, or one for a short
// list. Rows are handed out kRowChunk at a time (their lengths differ).
inline int team(const Pairs &g, idx D) {
  return g.P * g.H * D < kParallelProducts ? 1 : std::max(g.threads, 1);
}
const int kRowChunk = 16;

// The longest row of the list, for the per-row buffers.
inline idx longest_row(const Pairs &g) {
  idx n = 0;
  for (idx a = 0; a < g.K; ++a)
    n = std::max(n, g.rowptr[a + 1] - g.rowptr[a]);
  return n;
}

// e[j] = exp(x[j] - shift[j % H]) over a row's [n, H] block, as one
// contiguous loop (vectorised): the shift is repeated into rep first.
template <typename T>
void row_exp(const T *x, const T *shift, idx n, idx H, T *rep, T *e) {
  for (idx p = 0; p < n; ++p)
    for (idx h = 0; h < H; ++h) rep[p * H + h] = shift[h];
#pragma omp simd
  for (idx j = 0; j < n * H; ++j) e[j] = vexp(x[j] - rep[j]);
}

// The shift of a row's exponentials: its largest score per head (any finite
// shift is exact; the largest keeps exp finite), NaN if a score is NaN.
template <typename T>
void row_max(const T *s, idx n, idx H, T *top) {
  for (idx h = 0; h < H; ++h) {
    T m = -INFINITY;
    bool nan = false;
    for (idx p = 0; p < n; ++p) {
      const T x = s[p * H + h];
      m = x > m ? x : m;
      nan |= x != x;
    }
    top[h] = nan ? NAN : (m == -INFINITY ? std::numeric_limits<T>::lowest()
                                          : m);
  }
}

// s[p, h] = scale <q_a, k_b> + log_size[b] (+ bias[p, h]);
// lse[a, h] = logsumexp of s over a's pairs, fill where none is > -inf;
// prob[p, h] = exp(s - lse), the softmax its backward reads.
template <typename T, int W>
void scores_lse(const Pairs &g, idx D, const T *q, const T *k,
                const T *log_size, const T *bias, T scale, T fill, T *s,
                T *lse, T *prob) {
  const idx H = g.H;
  if (W) D = W;  // a width known at compile time: unrolled, vectorised
  const idx longest = longest_row(g);
#pragma omp parallel num_threads(team(g, D))
  {
  std::vector<T> top(H), total(H), rep(longest * H);
#pragma omp for schedule(dynamic, kRowChunk)
  for (idx a = 0; a < g.K; ++a) {
    const idx lo = g.rowptr[a], n = g.rowptr[a + 1] - lo;
    T *sa = s + lo * H, *pa = prob + lo * H;
    for (idx p = 0; p < n; ++p) {
      const idx b = g.dst[lo + p];
      for (idx h = 0; h < H; ++h)
        sa[p * H + h] =
            scale * dot(q + (a * H + h) * D, k + (b * H + h) * D, D) +
            log_size[b] + (bias ? bias[(lo + p) * H + h] : T(0));
    }
    row_max(sa, n, H, top.data());
    row_exp(sa, top.data(), n, H, rep.data(), pa);
    for (idx h = 0; h < H; ++h) total[h] = 0;
    for (idx p = 0; p < n; ++p)
      for (idx h = 0; h < H; ++h) total[h] += pa[p * H + h];
    for (idx h = 0; h < H; ++h) {
      lse[a * H + h] = total[h] == 0 ? fill : top[h] + std::log(total[h]);
      total[h] = total[h] == 0 ? T(0) : T(1) / total[h];
    }
    for (idx p = 0; p < n; ++p)
      for (idx h = 0; h < H; ++h) pa[p * H + h] *= total[h];
  }
  }
}

// The backward of scores_lse: gs[p, h] = grad_s + grad_lse[a] prob (the
// gradient of the scores, and of the bias), then
// grad_q[a] = scale sum_p gs k_b, grad_k[b] = scale sum_p gs q_a and
// grad_log_size[b] = sum_{p, h} gs. Null inputs are zero, null outputs
// skipped.
template <typename T, int W>
void scores_lse_backward(const Pairs &g, idx D, const T *q, const T *k,
                         const T *prob, const T *grad_s, const T *grad_lse,
                         T scale, T *gs, T *grad_q, T *grad_k,
                         T *grad_log_size) {
  const idx H = g.H;
  if (W) D = W;  // a width known at compile time: unrolled, vectorised
#pragma omp parallel num_threads(team(g, D))
  {
#pragma omp for schedule(dynamic, kRowChunk)
  for (idx a = 0; a < g.K; ++a) {
    for (idx p = g.rowptr[a]; p < g.rowptr[a + 1]; ++p)
      for (idx h = 0; h < H; ++h) {
        T x = grad_s ? grad_s[p * H + h] : T(0);
        if (grad_lse) x += grad_lse[a * H + h] * prob[p * H + h];
        gs[p * H + h] = x;
      }
    if (!grad_q) continue;
    T *out = grad_q + a * H * D;
    for (idx d = 0; d < H * D; ++d) out[d] = 0;
    for (idx p = g.rowptr[a]; p < g.rowptr[a + 1]; ++p)
      for (idx h = 0; h < H; ++h)
        axpy(scale * gs[p * H + h], k + (g.dst[p] * H + h) * D,
             out + h * D, D);
  }
  // (the loop's barrier: every gs is written before it is read below)
  if (grad_k || grad_log_size) {
#pragma omp for schedule(dynamic, kRowChunk)
  for (idx b = 0; b < g.K; ++b) {
    T *out = grad_k ? grad_k + b * H * D : nullptr;
    if (out)
      for (idx d = 0; d < H * D; ++d) out[d] = 0;
    T total = 0;
    for (idx j = g.trowptr[b]; j < g.trowptr[b + 1]; ++j) {
      const idx p = g.tperm[j], a = g.src[p];
      for (idx h = 0; h < H; ++h) {
        total += gs[p * H + h];
        if (out)
          axpy(scale * gs[p * H + h], q + (a * H + h) * D, out + h * D,
               D);
      }
    }
    if (grad_log_size) grad_log_size[b] = total;
  }
  }
  }
}

// u[a, h] = sum_p w[p, h] v[b, h] with w = exp(s - shift[a]) (* keep),
// the weights kept for the backward.
template <typename T, int W>
void contexts(const Pairs &g, idx D, const T *s, const T *shift,
              const T *keep, const T *v, T *u, T *weight) {
  const idx H = g.H;
  if (W) D = W;  // a width known at compile time: unrolled, vectorised
  const idx longest = longest_row(g);
#pragma omp parallel num_threads(team(g, D))
  {
  std::vector<T> rep(longest * H);
#pragma omp for schedule(dynamic, kRowChunk)
  for (idx a = 0; a < g.K; ++a) {
    const idx lo = g.rowptr[a], n = g.rowptr[a + 1] - lo;
    T *w = weight + lo * H, *out = u + a * H * D;
    row_exp(s + lo * H, shift + a * H, n, H, rep.data(), w);
    if (keep)
      for (idx j = 0; j < n * H; ++j) w[j] *= keep[lo * H + j];
    for (idx d = 0; d < H * D; ++d) out[d] = 0;
    for (idx p = 0; p < n; ++p) {
      const T *vb = v + g.dst[lo + p] * H * D;
      for (idx h = 0; h < H; ++h)
        axpy(w[p * H + h], vb + h * D, out + h * D, D);
    }
  }
  }
}

// The backward of contexts: gs[p, h] = w <grad_u[a], v_b> (the gradient of
// the scores), grad_shift[a] = -sum_p gs, grad_v[b] = sum_p w grad_u[a].
template <typename T, int W>
void contexts_backward(const Pairs &g, idx D, const T *weight, const T *v,
                       const T *grad_u, T *gs, T *grad_shift, T *grad_v) {
  const idx H = g.H;
  if (W) D = W;  // a width known at compile time: unrolled, vectorised
#pragma omp parallel num_threads(team(g, D))
  {
#pragma omp for schedule(dynamic, kRowChunk)
  for (idx a = 0; a < g.K; ++a)
    for (idx h = 0; h < H; ++h) {
      const T *ga = grad_u + (a * H + h) * D;
      T total = 0;
      for (idx p = g.rowptr[a]; p < g.rowptr[a + 1]; ++p) {
        const T x =
            weight[p * H + h] * dot(ga, v + (g.dst[p] * H + h) * D, D);
        gs[p * H + h] = x;
        total += x;
      }
      if (grad_shift) grad_shift[a * H + h] = -total;
    }
  if (grad_v) {
#pragma omp for schedule(dynamic, kRowChunk)
  for (idx b = 0; b < g.K; ++b) {
    T *out = grad_v + b * H * D;
    for (idx d = 0; d < H * D; ++d) out[d] = 0;
    for (idx j = g.trowptr[b]; j < g.trowptr[b + 1]; ++j) {
      const idx p = g.tperm[j], a = g.src[p];
      for (idx h = 0; h < H; ++h)
        axpy(weight[p * H + h], grad_u + (a * H + h) * D, out + h * D, D);
    }
  }
  }
  }
}

// ---- Python bindings: addresses as integers (0 for an absent tensor) ----

template <typename T>
inline T *at(Py_ssize_t address) {
  return reinterpret_cast<T *>(static_cast<uintptr_t>(address));
}

bool parse_pairs(PyObject *tuple, Pairs *g) {
  Py_ssize_t K, P, H, rowptr, src, dst, trowptr, tperm;
  int threads;
  if (!PyArg_ParseTuple(tuple, "nnninnnnn", &K, &P, &H, &threads, &rowptr,
                        &src, &dst, &trowptr, &tperm))
    return false;
  *g = Pairs{K, P, H, threads, at<const idx>(rowptr), at<const idx>(src),
             at<const idx>(dst), at<const idx>(trowptr),
             at<const idx>(tperm)};
  return true;
}

// The arguments of every kernel: (pairs, float64?, D, scale, fill,
// addresses...), the addresses in the order of the kernel's pointers.
struct Call {
  Pairs g;
  int wide;
  idx D;
  double scale, fill;
  Py_ssize_t a[10];
};

bool parse(PyObject *args, int count, Call *c) {
  PyObject *pairs, *list;
  if (!PyArg_ParseTuple(args, "OpnddO!", &pairs, &c->wide, &c->D, &c->scale,
                        &c->fill, &PyTuple_Type, &list) ||
      !parse_pairs(pairs, &c->g))
    return false;
  if (PyTuple_GET_SIZE(list) != count) {
    PyErr_SetString(PyExc_ValueError, "wrong number of addresses");
    return false;
  }
  for (int i = 0; i < count; ++i) {
    c->a[i] = PyLong_AsSsize_t(PyTuple_GET_ITEM(list, i));
    if (PyErr_Occurred()) return false;
  }
  return true;
}

template <typename T, int W>
void run_width(const char *kernel, const Call &c) {
  const Pairs &g = c.g;
  const T scale = T(c.scale), fill = T(c.fill);
  auto p = [&](int i) { return at<T>(c.a[i]); };
  switch (kernel[0]) {
    case 's':
      scores_lse<T, W>(g, c.D, p(0), p(1), p(2), p(3), scale, fill, p(4),
                       p(5), p(6));
      break;
    case 'S':
      scores_lse_backward<T, W>(g, c.D, p(0), p(1), p(2), p(3), p(4), scale,
                                p(5), p(6), p(7), p(8));
      break;
    case 'c':
      contexts<T, W>(g, c.D, p(0), p(1), p(2), p(3), p(4), p(5));
      break;
    default:
      contexts_backward<T, W>(g, c.D, p(0), p(1), p(2), p(3), p(4), p(5));
  }
}

template <typename T>
void run(const char *kernel, const Call &c) {
  switch (c.D) {
    case 16: run_width<T, 16>(kernel, c); break;
    case 32: run_width<T, 32>(kernel, c); break;
    case 64: run_width<T, 64>(kernel, c); break;
    default: run_width<T, 0>(kernel, c);
  }
}

template <char K, int N>
PyObject *entry(PyObject *, PyObject *args) {
  Call c;
  if (!parse(args, N, &c)) return nullptr;
  const char kernel[2] = {K, 0};
  Py_BEGIN_ALLOW_THREADS
  if (c.wide)
    run<double>(kernel, c);
  else
    run<float>(kernel, c);
  Py_END_ALLOW_THREADS
  Py_RETURN_NONE;
}

// Addresses: scores_lse (q, k, log_size, bias, s, lse, prob);
// scores_lse_backward (q, k, prob, grad_s, grad_lse, gs, grad_q, grad_k,
// grad_log_size); contexts (s, shift, keep, v, u, weight);
// contexts_backward (weight, v, grad_u, gs, grad_shift, grad_v).
PyMethodDef methods[] = {
    {"scores_lse", entry<'s', 7>, METH_VARARGS, nullptr},
    {"scores_lse_backward", entry<'S', 9>, METH_VARARGS, nullptr},
    {"contexts", entry<'c', 6>, METH_VARARGS, nullptr},
    {"contexts_backward", entry<'C', 6>, METH_VARARGS, nullptr},
    {nullptr, nullptr, 0, nullptr}};

// One source, several builds (setup.py): the baseline and one for CPUs
// with AVX2 and FMA, each its own module.
#ifndef HSA_MODULE
#define HSA_MODULE _pair_kernels
#endif
#define HSA_STR2(x) #x
#define HSA_STR(x) HSA_STR2(x)
#define HSA_CAT2(a, b) a##b
#define HSA_CAT(a, b) HSA_CAT2(a, b)

PyModuleDef module = {PyModuleDef_HEAD_INIT, HSA_STR(HSA_MODULE),
                      "Fused CPU kernels of the pair list's family attention.",
                      -1, methods};

}  // namespace

PyMODINIT_FUNC HSA_CAT(PyInit_, HSA_MODULE)(void) {
  PyObject *m = PyModule_Create(&module);
  // openmp: whether this build splits the rows among threads (setup.py).
#ifdef _OPENMP
  const long openmp = 1;
#else
  const long openmp = 0;
#endif
  if (m && PyModule_AddIntConstant(m, "openmp", openmp) < 0) {
    Py_DECREF(m);
    return nullptr;
  }
  return m;
}
