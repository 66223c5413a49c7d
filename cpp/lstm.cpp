// lstm.cpp — the LSTM kernels: cell forward/backward (fast and naive, side by side) and the
// sequence forward/backward through time. Shapes and the cache are documented in lstmx.h.
#include "lstmx.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>

#ifdef _OPENMP
#include <omp.h>
#endif

namespace lstmx {

// ---- threads ----------------------------------------------------------------------------------
namespace {
int default_threads() {
#ifdef _OPENMP
  return std::max(1, omp_get_max_threads());
#else
  return 1;
#endif
}
std::atomic<int> g_threads{default_threads()};

// Threads for an elementwise pass over n scalars: below ~32k the fork/join costs more than it saves.
int elementwise_threads(Index n) { return n >= (Index(1) << 15) ? num_threads() : 1; }

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
}  // namespace

void set_num_threads(int n) {
  n = std::max(1, n);
  g_threads.store(n);
  Eigen::setNbThreads(n);
}
int num_threads() { return g_threads.load(); }
bool has_openmp() {
#ifdef _OPENMP
  return true;
#else
  return false;
#endif
}

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
void cell_forward_naive(Index B, Index H, S* g, Index ldg, const S* bias, const S* c_prev,
                        Index ldcp, S* c, Index ldc, S* h, Index ldh) {
  for (Index b = 0; b < B; ++b) {
    S* gb = g + b * ldg;  // [4H]: i, f, g, o
    for (Index j = 0; j < H; ++j) {
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

template <typename S>
void cell_forward_fast(Index B, Index H, S* g, Index ldg, const S* bias, const S* c_prev,
                       Index ldcp, S* c, Index ldc, S* h, Index ldh) {
  const int nt = elementwise_threads(B * 4 * H);
#pragma omp parallel for num_threads(nt) schedule(static) if (nt > 1)
  for (Index b = 0; b < B; ++b) {
    S* gb = g + b * ldg;
    Vec<S> zi(gb, H), zf(gb + H, H), zg(gb + 2 * H, H), zo(gb + 3 * H, H);
    if (bias) {
      zi += CVec<S>(bias, H), zf += CVec<S>(bias + H, H);
      zg += CVec<S>(bias + 2 * H, H), zo += CVec<S>(bias + 3 * H, H);
    }
    zi = (S(1) + (-zi).exp()).inverse();  // i
    zf = (S(1) + (-zf).exp()).inverse();  // f
    zg = zg.tanh();                       // g
    zo = (S(1) + (-zo).exp()).inverse();  // o
    Vec<S> ct(c + b * ldc, H);
    ct = zf * CVec<S>(c_prev + b * ldcp, H) + zi * zg;  // c_prev may alias c: elementwise
    Vec<S>(h + b * ldh, H) = zo * ct.tanh();
  }
}

// ---- Cell backward: naive reference and fast kernel ---------------------------------------------
template <typename S>
void cell_backward_naive(Index B, Index H, const S* gates, Index ldg, const S* c_prev, Index ldcp,
                         const S* c, Index ldc, const S* dh, Index lddh, const S* dy, Index lddy,
                         S* dc, S* dg, Index lddg) {
  for (Index b = 0; b < B; ++b) {
    const S* gb = gates + b * ldg;
    S* db = dg + b * lddg;
    for (Index j = 0; j < H; ++j) {
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
void cell_backward_fast(Index B, Index H, const S* gates, Index ldg, const S* c_prev, Index ldcp,
                        const S* c, Index ldc, const S* dh, Index lddh, const S* dy, Index lddy,
                        S* dc, S* dg, Index lddg) {
  const int nt = elementwise_threads(B * 4 * H);
#pragma omp parallel for num_threads(nt) schedule(static) if (nt > 1)
  for (Index b = 0; b < B; ++b) {
    const S* gb = gates + b * ldg;
    CVec<S> i(gb, H), f(gb + H, H), gg(gb + 2 * H, H), o(gb + 3 * H, H);
    S* db = dg + b * lddg;
    Vec<S> di(db, H), df(db + H, H), dgg(db + 2 * H, H), dout(db + 3 * H, H);
    Vec<S> dcb(dc + b * H, H);
    // The output slots hold temporaries until they are written: no allocation here.
    dout = CVec<S>(c + b * ldc, H).tanh();  // tanh(c_t)
    if (dy)
      df = CVec<S>(dh + b * lddh, H) + CVec<S>(dy + b * lddy, H);  // total dL/dh_t
    else
      df = CVec<S>(dh + b * lddh, H);
    dcb += df * o * (S(1) - dout.square());  // total dL/dc_t
    dout = df * dout * o * (S(1) - o);
    di = dcb * gg * i * (S(1) - i);
    df = dcb * CVec<S>(c_prev + b * ldcp, H) * f * (S(1) - f);
    dgg = dcb * i * (S(1) - gg.square());
    dcb *= f;  // dL/dc_{t-1}
  }
}
}  // namespace

template <typename S>
void cell_forward(Kernel k, Index B, Index H, S* g, Index ldg, const S* bias, const S* c_prev,
                  Index ldcp, S* c, Index ldc, S* h, Index ldh) {
  if (k == Kernel::Naive)
    cell_forward_naive(B, H, g, ldg, bias, c_prev, ldcp, c, ldc, h, ldh);
  else
    cell_forward_fast(B, H, g, ldg, bias, c_prev, ldcp, c, ldc, h, ldh);
}

template <typename S>
void cell_backward(Kernel k, Index B, Index H, const S* gates, Index ldg, const S* c_prev,
                   Index ldcp, const S* c, Index ldc, const S* dh, Index lddh, const S* dy,
                   Index lddy, S* dc, S* dg, Index lddg) {
  if (k == Kernel::Naive)
    cell_backward_naive(B, H, gates, ldg, c_prev, ldcp, c, ldc, dh, lddh, dy, lddy, dc, dg, lddg);
  else
    cell_backward_fast(B, H, gates, ldg, c_prev, ldcp, c, ldc, dh, lddh, dy, lddy, dc, dg, lddg);
}

// ---- Sequence forward -------------------------------------------------------------------------
template <typename S>
void lstm_forward(Kernel k, const Dims& d, const S* x, const S* w_ih, const S* w_hh,
                  const S* bias, const S* h0, const S* c0, S* y, S* h_n, S* c_n,
                  Cache<S>* cache) {
  const Index T = d.T, B = d.B, I = d.I, H = d.H, G = 4 * H, N = T * B, rs = d.rstride();
  Eigen::setNbThreads(num_threads());
  CMap<S> Wih(w_ih, G, I), Whh(w_hh, G, H);  // [4H, I], [4H, H]
  Map<S> hn(h_n, B, H), cn(c_n, B, H);        // [B, H]
  if (c0) cn = CMap<S>(c0, B, H); else cn.setZero();
  if (h0) hn = CMap<S>(h0, B, H); else hn.setZero();
  if (N == 0 || H == 0) return;  // T = 0 (or nothing to compute): the state passes through

  // Input projection for all T*B rows at once: one GEMM into the gate buffer.
  Mat<S> scratch;  // [T*B, 4H] inference only; training writes into the cache
  S* gates;
  if (cache) {
    cache->x = CMap<S>(x, N, I);
    cache->w_ih = Wih;
    cache->w_hh = Whh;
    cache->c0 = cn;
    gates = cache->gates.data();
  } else {
    scratch.resize(N, G);
    gates = scratch.data();
  }
  Map<S>(gates, N, G).noalias() = CMap<S>(x, N, I) * Wih.transpose();  // [T*B, 4H]

  for (Index t = 0; t < T; ++t) {
    StepMap<S> Gt(gates + d.row0(t) * G, B, G, Eigen::OuterStride<>(rs * G));  // [B, 4H]
    // Recurrent GEMM: h_{t-1} is y_{t-1} (or h0 for t = 0).
    if (t > 0)
      Gt.noalias() += CStepMap<S>(y + d.row0(t - 1) * H, B, H, Eigen::OuterStride<>(rs * H)) *
                      Whh.transpose();
    else if (h0)
      Gt.noalias() += CMap<S>(h0, B, H) * Whh.transpose();
    S* yt = y + d.row0(t) * H;  // [B, H], rows rs*H apart
    if (cache) {
      const S* cprev = t ? cache->c.data() + d.row0(t - 1) * H : cache->c0.data();
      cell_forward(k, B, H, Gt.data(), rs * G, bias, cprev, t ? rs * H : H,
                   cache->c.data() + d.row0(t) * H, rs * H, yt, rs * H);
    } else {
      cell_forward(k, B, H, Gt.data(), rs * G, bias, c_n, H, c_n, H, yt, rs * H);  // c in place
    }
  }
  if (cache) {
    // hprev rows of step t are h_{t-1}: h0 for t = 0, then y shifted by one step.
    StepMap<S>(cache->hprev.data() + d.row0(0) * H, B, H, Eigen::OuterStride<>(rs * H)) = hn;
    for (Index t = 1; t < T; ++t)
      StepMap<S>(cache->hprev.data() + d.row0(t) * H, B, H, Eigen::OuterStride<>(rs * H)) =
          CStepMap<S>(y + d.row0(t - 1) * H, B, H, Eigen::OuterStride<>(rs * H));
    cn = CStepMap<S>(cache->c.data() + d.row0(T - 1) * H, B, H, Eigen::OuterStride<>(rs * H));
  }
  hn = CStepMap<S>(y + d.row0(T - 1) * H, B, H, Eigen::OuterStride<>(rs * H));
}

// ---- Sequence backward through time -------------------------------------------------------------
template <typename S>
void lstm_backward(Kernel k, const Cache<S>& cache, const S* dy, const S* dh_n, const S* dc_n,
                   S* dx, S* dh0, S* dc0, S* dw_ih, S* dw_hh, S* db) {
  const Dims& d = cache.d;
  const Index T = d.T, B = d.B, I = d.I, H = d.H, G = 4 * H, N = T * B, rs = d.rstride();
  Eigen::setNbThreads(num_threads());
  Map<S> dh0m(dh0, B, H), dc(dc0, B, H);  // dc0 doubles as the running dL/dc buffer
  if (dc_n) dc = CMap<S>(dc_n, B, H); else dc.setZero();
  Map<S> dWih(dw_ih, G, I), dWhh(dw_hh, G, H);
  Eigen::Map<Eigen::Matrix<S, 1, Eigen::Dynamic>> dbv(db, G);
  if (N == 0 || H == 0) {
    if (dh_n) dh0m = CMap<S>(dh_n, B, H); else dh0m.setZero();
    Map<S>(dx, N, I).setZero();
    dWih.setZero(), dWhh.setZero(), dbv.setZero();
    return;
  }

  // Per-call scratch: gradients of the pre-activation gates, and dL/dh_t through the recurrence.
  Mat<S> dG(N, G);  // [T*B, 4H], layout of x
  Mat<S> dh(B, H);  // [B, H]
  if (dh_n) dh = CMap<S>(dh_n, B, H); else dh.setZero();
  for (Index t = T - 1; t >= 0; --t) {
    if (t < T - 1)
      dh.noalias() =
          CStepMap<S>(dG.data() + d.row0(t + 1) * G, B, G, Eigen::OuterStride<>(rs * G)) *
          cache.w_hh;  // [B, 4H] x [4H, H]
    const S* cprev = t ? cache.c.data() + d.row0(t - 1) * H : cache.c0.data();
    cell_backward(k, B, H, cache.gates.data() + d.row0(t) * G, rs * G, cprev, t ? rs * H : H,
                  cache.c.data() + d.row0(t) * H, rs * H, dh.data(), H,
                  dy ? dy + d.row0(t) * H : nullptr, rs * H, dc0, dG.data() + d.row0(t) * G,
                  rs * G);
  }
  dh0m.noalias() =
      CStepMap<S>(dG.data() + d.row0(0) * G, B, G, Eigen::OuterStride<>(rs * G)) * cache.w_hh;

  // Everything else is one big GEMM each, after the loop.
  Map<S>(dx, N, I).noalias() = dG * cache.w_ih;         // [T*B, 4H] x [4H, I]
  dWih.noalias() = dG.transpose() * cache.x;            // [4H, T*B] x [T*B, I]
  dWhh.noalias() = dG.transpose() * cache.hprev;        // [4H, T*B] x [T*B, H]
  dbv = dG.colwise().sum();                             // [4H]
}

// ---- explicit instantiations --------------------------------------------------------------------
#define LSTMX_INSTANTIATE(S)                                                                      \
  template struct Cache<S>;                                                                       \
  template void cell_forward<S>(Kernel, Index, Index, S*, Index, const S*, const S*, Index, S*,   \
                                Index, S*, Index);                                                \
  template void cell_backward<S>(Kernel, Index, Index, const S*, Index, const S*, Index,          \
                                 const S*, Index, const S*, Index, const S*, Index, S*, S*,       \
                                 Index);                                                          \
  template void lstm_forward<S>(Kernel, const Dims&, const S*, const S*, const S*, const S*,      \
                                const S*, const S*, S*, S*, S*, Cache<S>*);                       \
  template void lstm_backward<S>(Kernel, const Cache<S>&, const S*, const S*, const S*, S*, S*,   \
                                 S*, S*, S*, S*);
LSTMX_INSTANTIATE(float)
LSTMX_INSTANTIATE(double)

}  // namespace lstmx
