// lstm.cpp — the LSTM kernels: cell forward/backward (fast and naive, side by side) and the
// sequence forward/backward through time. Shapes and the cache are documented in lstmx.h.
#include "lstmx.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <exception>
#include <string>

#if defined(__SSE__) || defined(__x86_64__)
#include <xmmintrin.h>
#endif

#ifdef _OPENMP
#include <omp.h>
#endif

namespace lstmx {

namespace {
template <typename S>
using Map = Eigen::Map<Mat<S>>;
template <typename S>
using CMap = Eigen::Map<const Mat<S>>;
// One step's B rows inside a per-token buffer: rows `stride` apart.
template <typename S>
using StepMap = Eigen::Map<Mat<S>, 0, Eigen::OuterStride<>>;
template <typename S>
using CStepMap = Eigen::Map<const Mat<S>, 0, Eigen::OuterStride<>>;
template <typename S>
using Vec = Eigen::Map<Eigen::Array<S, Eigen::Dynamic, 1>>;
template <typename S>
using CVec = Eigen::Map<const Eigen::Array<S, Eigen::Dynamic, 1>>;

template <typename S>
inline S sigmoid(S x) { return S(1) / (S(1) + std::exp(-x)); }  // exp overflow gives 0: stable

// ---- threads ----------------------------------------------------------------------------------
// Flush denormals to zero on this thread while in scope, then restore the caller's mode.
struct FlushDenormals {
#if defined(__SSE__) || defined(__x86_64__)
  unsigned saved = _mm_getcsr();
  FlushDenormals() { _mm_setcsr(saved | 0x8040u); }  // FTZ | DAZ
  ~FlushDenormals() { _mm_setcsr(saved); }
#endif
};

// Work is cut into fixed-size items, whatever the thread count, and the items are shared out:
// every GEMM then has the same shape (and Eigen's rounding) with 1, 2 or 16 threads, so results
// are bitwise identical across thread counts.
constexpr Index kUnits = 64;  // hidden units per item of a time step (all four gates of them)
constexpr Index kCols = 128;  // output columns (or rows) per item of the big GEMMs

// Threads worth using for `items` items of work totalling `flops`: at least ~64k flops each.
int team(int threads, Index items, double flops) {
  const Index by_flops = std::max<Index>(1, Index(flops / 65536.0));
  return int(std::max<Index>(1, std::min<Index>({Index(threads), items, by_flops})));
}

// Thread j of nt takes items [a, b) of [0, items).
void share(Index items, int nt, int j, Index& a, Index& b) {
  a = items * j / nt;
  b = items * (j + 1) / nt;
}

inline Index ceil_div(Index a, Index b) { return (a + b - 1) / b; }

// Carries the first exception out of an OpenMP region. Threads keep reaching every barrier
// after a failure (so none waits forever) but skip their work.
struct Errors {
  std::exception_ptr first;
  std::atomic<bool> failed{false};
  template <typename F>
  void run(F&& f) {
    if (failed.load(std::memory_order_relaxed)) return;
    try {
      f();
    } catch (...) {
#pragma omp critical(lstmx_errors)
      if (!first) first = std::current_exception();
      failed = true;
    }
  }
  void rethrow() const {
    if (first) std::rethrow_exception(first);
  }
};

// Runs f(i0, i1, err) once on each thread of a team sized for `items` items of work totalling
// `flops`; [i0, i1) are that thread's items. Denormals are flushed, exceptions carried out.
template <typename F>
void with_team(int threads, Index items, double flops, F&& f) {
  const int nt = team(threads, items, flops);
  Errors err;
#pragma omp parallel num_threads(nt) if (nt > 1)
  {
    FlushDenormals ftz;
    Index i0 = 0, i1 = items;
#ifdef _OPENMP
    share(items, omp_get_num_threads(), omp_get_thread_num(), i0, i1);
#endif
    f(i0, i1, err);
  }
  err.rethrow();
}

// Run f(a, b) on every item [a, b) of [0, n) cut every `item` columns, items shared by threads.
template <typename F>
void parallel_for(int threads, Index n, Index item, double flops, F&& f) {
  with_team(threads, ceil_div(n, item), flops, [&](Index i0, Index i1, Errors& err) {
    for (Index i = i0; i < i1; ++i) err.run([&] { f(i * item, std::min(n, (i + 1) * item)); });
  });
}

// The time loop: body(t, u0, n, work) for every step t (backwards if `reverse`) and every item
// of kUnits hidden units [u0, u0 + n). Each thread keeps the same items all along and its own
// scratch `work` (sized once); one barrier a step.
template <typename S, typename F>
void time_loop(int threads, Index T, Index H, double step_flops, Index work_size, bool reverse,
               F&& body) {
  with_team(threads, ceil_div(H, kUnits), step_flops, [&](Index i0, Index i1, Errors& err) {
    Eigen::Matrix<S, Eigen::Dynamic, 1> work;
    err.run([&] { work.resize(work_size); });
    for (Index s = 0; s < T; ++s) {
      const Index t = reverse ? T - 1 - s : s;
      for (Index it = i0; it < i1; ++it)
        err.run([&] {
          const Index u0 = it * kUnits;
          body(t, u0, std::min(H, u0 + kUnits) - u0, work.data());
        });
#pragma omp barrier
    }
  });
}
}  // namespace

// ---- Cache ------------------------------------------------------------------------------------
template <typename S>
Cache<S>::Cache(const Dims& dims)
    : d(dims),
      x(dims.T * dims.B, dims.I),
      w_ih(4 * dims.H, dims.I),
      w_hh(4 * dims.H, dims.H),
      gates(dims.T * dims.B, 4 * dims.H),
      hprev(dims.T * dims.B, dims.H),
      c(dims.T * dims.B, dims.H),
      c0(dims.B, dims.H) {}

template <typename S>
std::size_t Cache<S>::nbytes() const {
  return sizeof(S) * std::size_t(x.size() + w_ih.size() + w_hh.size() + gates.size() +
                                 hprev.size() + c.size() + c0.size());
}

// ---- Cell forward: naive reference and fast kernel ----------------------------------------------
namespace {
template <typename S>
void cell_forward_naive(Index B, Index n, Index H, S* g, Index ldg, const S* bias,
                        const S* c_prev, Index ldcp, S* c, Index ldc, S* h, Index ldh) {
  for (Index b = 0; b < B; ++b) {
    S* gb = g + b * ldg;  // gates i, f, g, o at +0, +H, +2H, +3H
    for (Index j = 0; j < n; ++j) {
      S zi = gb[j], zf = gb[H + j], zg = gb[2 * H + j], zo = gb[3 * H + j];
      if (bias) zi += bias[j], zf += bias[H + j], zg += bias[2 * H + j], zo += bias[3 * H + j];
      const S i = sigmoid(zi), f = sigmoid(zf), gg = std::tanh(zg), o = sigmoid(zo);
      const S ct = f * c_prev[b * ldcp + j] + i * gg;
      gb[j] = i, gb[H + j] = f, gb[2 * H + j] = gg, gb[3 * H + j] = o;
      c[b * ldc + j] = ct;
      h[b * ldh + j] = o * std::tanh(ct);
    }
  }
}

// Scratch the fast kernels need: aligned, allocated once per call, never in the time loop.
// Every exp/tanh is evaluated into it, so the vector/scalar split of each element depends on
// its index alone, not on the address of the caller's buffers or on the thread slicing.
template <typename S>
using AVec = Eigen::Map<Eigen::Array<S, Eigen::Dynamic, 1>, Eigen::AlignedMax>;

template <typename S>
void cell_forward_fast(Index B, Index n, Index H, S* g, Index ldg, const S* bias,
                       const S* c_prev, Index ldcp, S* c, Index ldc, S* h, Index ldh, S* work) {
  const Index np = (n + 15) / 16 * 16;
  AVec<S> zi(work, n), zf(work + np, n), zg(work + 2 * np, n), zo(work + 3 * np, n),
      th(work + 4 * np, n);
  for (Index b = 0; b < B; ++b) {
    S* gb = g + b * ldg;
    Vec<S> gi(gb, n), gf(gb + H, n), gg(gb + 2 * H, n), go(gb + 3 * H, n);
    if (bias) {
      zi = gi + CVec<S>(bias, n), zf = gf + CVec<S>(bias + H, n);
      zg = gg + CVec<S>(bias + 2 * H, n), zo = go + CVec<S>(bias + 3 * H, n);
    } else {
      zi = gi, zf = gf, zg = gg, zo = go;
    }
    zi = (S(1) + (-zi).exp()).inverse();  // i
    zf = (S(1) + (-zf).exp()).inverse();  // f
    zg = zg.tanh();                       // g
    zo = (S(1) + (-zo).exp()).inverse();  // o
    gi = zi, gf = zf, gg = zg, go = zo;   // activated gates, for backward
    Vec<S> ct(c + b * ldc, n);
    ct = zf * CVec<S>(c_prev + b * ldcp, n) + zi * zg;  // c_prev may alias c: elementwise
    th = ct.tanh();
    Vec<S>(h + b * ldh, n) = zo * th;
  }
}

// ---- Cell backward: naive reference and fast kernel ---------------------------------------------
template <typename S>
void cell_backward_naive(Index B, Index n, Index H, const S* gates, Index ldg, const S* c_prev,
                         Index ldcp, const S* c, Index ldc, const S* dh, Index lddh, const S* dy,
                         Index lddy, S* dc, S* dg, Index lddg) {
  for (Index b = 0; b < B; ++b) {
    const S* gb = gates + b * ldg;
    S* db = dg + b * lddg;
    for (Index j = 0; j < n; ++j) {
      const S i = gb[j], f = gb[H + j], gg = gb[2 * H + j], o = gb[3 * H + j];
      const S tc = std::tanh(c[b * ldc + j]);
      const S dht = dh[b * lddh + j] + (dy ? dy[b * lddy + j] : S(0));
      const S dct = dc[b * H + j] + dht * o * (S(1) - tc * tc);
      db[j] = dct * gg * i * (S(1) - i);
      db[H + j] = dct * c_prev[b * ldcp + j] * f * (S(1) - f);
      db[2 * H + j] = dct * i * (S(1) - gg * gg);
      db[3 * H + j] = dht * tc * o * (S(1) - o);
      dc[b * H + j] = dct * f;
    }
  }
}

template <typename S>
void cell_backward_fast(Index B, Index n, Index H, const S* gates, Index ldg, const S* c_prev,
                        Index ldcp, const S* c, Index ldc, const S* dh, Index lddh, const S* dy,
                        Index lddy, S* dc, S* dg, Index lddg, S* work) {
  AVec<S> tc(work, n);
  for (Index b = 0; b < B; ++b) {
    const S* gb = gates + b * ldg;
    CVec<S> i(gb, n), f(gb + H, n), gg(gb + 2 * H, n), o(gb + 3 * H, n);
    S* db = dg + b * lddg;
    Vec<S> di(db, n), df(db + H, n), dgg(db + 2 * H, n), dout(db + 3 * H, n);
    Vec<S> dcb(dc + b * H, n);
    tc = CVec<S>(c + b * ldc, n).tanh();  // tanh(c_t)
    // df holds the total dL/dh_t until it is written.
    if (dy)
      df = CVec<S>(dh + b * lddh, n) + CVec<S>(dy + b * lddy, n);
    else
      df = CVec<S>(dh + b * lddh, n);
    dcb += df * o * (S(1) - tc.square());  // total dL/dc_t
    dout = df * tc * o * (S(1) - o);
    di = dcb * gg * i * (S(1) - i);
    df = dcb * CVec<S>(c_prev + b * ldcp, n) * f * (S(1) - f);
    dgg = dcb * i * (S(1) - gg.square());
    dcb *= f;  // dL/dc_{t-1}
  }
}
}  // namespace

template <typename S>
void cell_forward(Kernel k, Index B, Index n, Index H, S* g, Index ldg, const S* bias,
                  const S* c_prev, Index ldcp, S* c, Index ldc, S* h, Index ldh, S* work) {
  if (k == Kernel::Naive)
    cell_forward_naive(B, n, H, g, ldg, bias, c_prev, ldcp, c, ldc, h, ldh);
  else
    cell_forward_fast(B, n, H, g, ldg, bias, c_prev, ldcp, c, ldc, h, ldh, work);
}

template <typename S>
void cell_backward(Kernel k, Index B, Index n, Index H, const S* gates, Index ldg,
                   const S* c_prev, Index ldcp, const S* c, Index ldc, const S* dh, Index lddh,
                   const S* dy, Index lddy, S* dc, S* dg, Index lddg, S* work) {
  if (k == Kernel::Naive)
    cell_backward_naive(B, n, H, gates, ldg, c_prev, ldcp, c, ldc, dh, lddh, dy, lddy, dc, dg,
                        lddg);
  else
    cell_backward_fast(B, n, H, gates, ldg, c_prev, ldcp, c, ldc, dh, lddh, dy, lddy, dc, dg,
                       lddg, work);
}

// ---- Sequence forward -------------------------------------------------------------------------
template <typename S>
void lstm_forward(Kernel k, int threads, const Dims& d, const S* x, const S* w_ih,
                  const S* w_hh, const S* bias, const S* h0, const S* c0, S* y, S* h_n, S* c_n,
                  Cache<S>* cache) {
  const Index T = d.T, B = d.B, I = d.I, H = d.H, G = 4 * H, N = T * B, rs = d.rstride();
  CMap<S> X(x, N, I), Wih(w_ih, G, I), Whh(w_hh, G, H);  // [T*B, I], [4H, I], [4H, H]
  Map<S> hn(h_n, B, H), cn(c_n, B, H);                    // [B, H]
  if (c0) cn = CMap<S>(c0, B, H); else cn.setZero();
  if (h0) hn = CMap<S>(h0, B, H); else hn.setZero();
  if (N == 0 || H == 0) return;  // T = 0 (or nothing to compute): the state passes through

  Mat<S> scratch;  // [T*B, 4H] inference only; training writes into the cache
  S* gates;
  if (cache) {
    cache->x = X;
    cache->w_ih = Wih;
    cache->w_hh = Whh;
    cache->c0 = cn;
    StepMap<S>(cache->hprev.data() + d.row0(0) * H, B, H, Eigen::OuterStride<>(rs * H)) = hn;
    gates = cache->gates.data();
  } else {
    scratch.resize(N, G);
    gates = scratch.data();
  }
  // Input projection for all T*B rows at once: one GEMM, cut into column items.
  parallel_for(threads, G, kCols, 2.0 * N * G * I, [&](Index a, Index b) {
    Map<S>(gates, N, G).middleCols(a, b - a).noalias() = X * Wih.middleRows(a, b - a).transpose();
  });

  // The recurrence. An item is kUnits hidden units with all four of their gates: its slice of
  // the recurrent GEMM feeds straight into its slice of the gate update, so a step needs one
  // barrier (y_t complete before step t+1 reads it). Each thread keeps the same items all along.
  time_loop<S>(threads, T, H, 2.0 * B * G * H, 5 * kUnits, false,
           [&](Index t, Index u0, Index n, S* work) {
    S* gt = gates + d.row0(t) * G;  // [B, 4H], rows rs*G apart
    S* yt = y + d.row0(t) * H;      // [B, H],  rows rs*H apart
    const S* hp = t ? y + d.row0(t - 1) * H : h0;  // h_{t-1} [B, H]
    const Index ldh = t ? rs * H : H;
    if (hp)
      for (Index q = 0; q < 4; ++q)  // gate q of units [u0, u0+n): [B, H] x [H, n]
        StepMap<S>(gt + q * H + u0, B, n, Eigen::OuterStride<>(rs * G)).noalias() +=
            CStepMap<S>(hp, B, H, Eigen::OuterStride<>(ldh)) *
            Whh.middleRows(q * H + u0, n).transpose();
    if (cache) {
      const S* cprev = t ? cache->c.data() + d.row0(t - 1) * H : cache->c0.data();
      cell_forward(k, B, n, H, gt + u0, rs * G, bias ? bias + u0 : nullptr, cprev + u0,
                   t ? rs * H : H, cache->c.data() + d.row0(t) * H + u0, rs * H, yt + u0,
                   rs * H, work);
      if (t + 1 < T)  // h_t is step t+1's h_{t-1}
        StepMap<S>(cache->hprev.data() + d.row0(t + 1) * H + u0, B, n,
                   Eigen::OuterStride<>(rs * H)) =
            CStepMap<S>(yt + u0, B, n, Eigen::OuterStride<>(rs * H));
    } else {  // inference: c is updated in place in c_n
      cell_forward(k, B, n, H, gt + u0, rs * G, bias ? bias + u0 : nullptr, c_n + u0, H,
                   c_n + u0, H, yt + u0, rs * H, work);
    }
  });
  if (cache)
    cn = CStepMap<S>(cache->c.data() + d.row0(T - 1) * H, B, H, Eigen::OuterStride<>(rs * H));
  hn = CStepMap<S>(y + d.row0(T - 1) * H, B, H, Eigen::OuterStride<>(rs * H));
}

// ---- Sequence backward through time -------------------------------------------------------------
template <typename S>
void lstm_backward(Kernel k, int threads, const Cache<S>& cache, const S* dy, const S* dh_n,
                   const S* dc_n, S* dx, S* dh0, S* dc0, S* dw_ih, S* dw_hh, S* db) {
  const Dims& d = cache.d;
  const Index T = d.T, B = d.B, I = d.I, H = d.H, G = 4 * H, N = T * B, rs = d.rstride();
  Map<S> dh0m(dh0, B, H), dc(dc0, B, H);  // dc0 doubles as the running dL/dc buffer
  if (dc_n) dc = CMap<S>(dc_n, B, H); else dc.setZero();
  Map<S> dX(dx, N, I), dWih(dw_ih, G, I), dWhh(dw_hh, G, H);
  Eigen::Map<Eigen::Matrix<S, 1, Eigen::Dynamic>> dbv(db, G);
  if (N == 0 || H == 0) {
    if (dh_n) dh0m = CMap<S>(dh_n, B, H); else dh0m.setZero();
    dX.setZero(), dWih.setZero(), dWhh.setZero(), dbv.setZero();
    return;
  }

  // Per-call scratch: gradients of the pre-activation gates, and dL/dh_t through the recurrence.
  Mat<S> dG(N, G);  // [T*B, 4H], layout of x
  Mat<S> dh(B, H);  // [B, H]
  if (dh_n) dh = CMap<S>(dh_n, B, H); else dh.setZero();

  // The reverse loop, cut into the same items as the forward one: an item's slice of
  // dh = dG_{t+1} W_hh feeds its slice of the cell backward; one barrier a step.
  time_loop<S>(threads, T, H, 2.0 * B * G * H, kUnits, true,
           [&](Index t, Index u0, Index n, S* work) {
    if (t < T - 1)  // [B, 4H] x [4H, n]
      dh.middleCols(u0, n).noalias() =
          CStepMap<S>(dG.data() + d.row0(t + 1) * G, B, G, Eigen::OuterStride<>(rs * G)) *
          cache.w_hh.middleCols(u0, n);
    const S* cprev = t ? cache.c.data() + d.row0(t - 1) * H : cache.c0.data();
    cell_backward(k, B, n, H, cache.gates.data() + d.row0(t) * G + u0, rs * G, cprev + u0,
                  t ? rs * H : H, cache.c.data() + d.row0(t) * H + u0, rs * H,
                  dh.data() + u0, H, dy ? dy + d.row0(t) * H + u0 : nullptr, rs * H,
                  dc0 + u0, dG.data() + d.row0(t) * G + u0, rs * G, work);
  });

  // Everything else is one big GEMM each, after the loop, split over output columns or rows.
  const CStepMap<S> dG0(dG.data() + d.row0(0) * G, B, G, Eigen::OuterStride<>(rs * G));
  parallel_for(threads, H, kCols, 2.0 * B * G * H, [&](Index a, Index b) {
    dh0m.middleCols(a, b - a).noalias() = dG0 * cache.w_hh.middleCols(a, b - a);  // [B, H]
  });
  parallel_for(threads, I, kCols, 2.0 * N * G * I, [&](Index a, Index b) {
    dX.middleCols(a, b - a).noalias() = dG * cache.w_ih.middleCols(a, b - a);  // [T*B, I]
  });
  parallel_for(threads, G, kCols, 2.0 * N * G * (I + H), [&](Index a, Index b) {
    auto dGa = dG.middleCols(a, b - a);                                  // [T*B, rows of 4H]
    dWih.middleRows(a, b - a).noalias() = dGa.transpose() * cache.x;     // [4H, I]
    dWhh.middleRows(a, b - a).noalias() = dGa.transpose() * cache.hprev; // [4H, H]
    dbv.segment(a, b - a) = dGa.colwise().sum();                         // [4H]
  });
}

// ---- The exported table -------------------------------------------------------------------------
namespace {
template <typename S>
KernelTable<S> table() {
  return {[](const Dims& d) { return new Cache<S>(d); }, [](Cache<S>* c) { delete c; },
          [](const Cache<S>* c) { return c->nbytes(); }, &lstm_forward<S>, &lstm_backward<S>};
}
#ifndef LSTMX_ISA_NAME
#define LSTMX_ISA_NAME "generic"
#endif
}  // namespace

}  // namespace lstmx

extern "C" __attribute__((visibility("default"))) const lstmx::Backend* lstmx_backend() {
  static const std::string simd = Eigen::SimdInstructionSetsInUse();
  static const lstmx::Backend b{lstmx::kBackendAbi, LSTMX_ISA_NAME, simd.c_str(),
                                lstmx::table<float>(), lstmx::table<double>()};
  return &b;
}
