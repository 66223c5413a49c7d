// lstm.cpp — the LSTM kernels, compiled once per ISA level. Two implementations side by side:
//   naive: the plain reference: Eigen GEMMs and scalar loops, one thread;
//   fast:  weights packed once per call into panels for a register-blocked SIMD microkernel,
//          the cell update fused into the microkernel's epilogue, and threads that each own a
//          slice of hidden units (all four gates of them), so a time step needs one barrier.
// Shapes, the gate order and the cache are documented in lstmx.h.
#include "lstmx.h"

// Eigen's packet types carry alignment attributes that GCC drops as template arguments.
#pragma GCC diagnostic ignored "-Wignored-attributes"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <exception>
#include <string>
#include <type_traits>

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
using Buf = Eigen::Matrix<S, Eigen::Dynamic, 1>;  // aligned to the widest vector

inline Index ceil_div(Index a, Index b) { return (a + b - 1) / b; }

// ---- threads ----------------------------------------------------------------------------------
// Flush denormals to zero on this thread while in scope, then restore the caller's mode.
struct FlushDenormals {
#if defined(__SSE__) || defined(__x86_64__)
  unsigned saved = _mm_getcsr();
  FlushDenormals() { _mm_setcsr(saved | 0x8040u); }  // FTZ | DAZ
  ~FlushDenormals() { _mm_setcsr(saved); }
#endif
};

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

// Thread j of nt takes items [a, b) of [0, items).
inline void share(Index items, int nt, int j, Index& a, Index& b) {
  a = items * j / nt;
  b = items * (j + 1) / nt;
}

// Runs f(tid, nt, err) on every thread of a team: at most `threads`, at most one per item and
// one per ~64k flops. Denormals are flushed; exceptions are carried out. Results never depend
// on the team size: work is cut so that every output sums its terms in a fixed order.
template <typename F>
void with_team(int threads, Index items, double flops, F&& f) {
  const Index by_flops = std::max<Index>(1, Index(flops / 65536.0));
  const int nt = int(std::max<Index>(1, std::min<Index>({Index(threads), items, by_flops})));
  Errors err;
#pragma omp parallel num_threads(nt) if (nt > 1)
  {
    FlushDenormals ftz;
    int tid = 0, n = 1;
#ifdef _OPENMP
    tid = omp_get_thread_num(), n = omp_get_num_threads();
#endif
    f(tid, n, err);
  }
  err.rethrow();
}

inline void barrier() {
#pragma omp barrier
}

// ---- SIMD: Eigen's packet of the widest vector this build has ---------------------------------
namespace ei = Eigen::internal;
template <typename S>
using Pk = typename ei::packet_traits<S>::type;
template <typename S>
constexpr Index kV = ei::unpacket_traits<Pk<S>>::size;  // lanes: 16 floats with AVX-512
// Rows of the microkernel's register tile (each row holds 4 vectors of accumulators).
constexpr int kMR = EIGEN_ARCH_DEFAULT_NUMBER_OF_REGISTERS >= 32 ? 6 : 3;
constexpr Index kMC = 192;  // rows per work item of the big GEMMs (A's block stays in L2)

// Loads/stores nv <= V lanes (the rest read as zero).
template <typename S>
EIGEN_ALWAYS_INLINE Pk<S> load(const S* p, Index nv) {
  if (nv == kV<S>) return ei::ploadu<Pk<S>>(p);
  alignas(64) S buf[kV<S>] = {};
  std::copy(p, p + nv, buf);
  return ei::pload<Pk<S>>(buf);
}
template <typename S>
EIGEN_ALWAYS_INLINE void store(S* p, const Pk<S>& v, Index nv) {
  if (nv == kV<S>) return ei::pstoreu(p, v);
  alignas(64) S buf[kV<S>];
  ei::pstore(buf, v);
  std::copy(buf, buf + nv, p);
}

// sigmoid(x) = 1 / (1 + e) for x >= 0, e / (1 + e) for x < 0, with e = exp(-|x|) <= 1: no
// overflow for any input, and the error stays near that of exp (bound tested in test_lstm.py).
template <typename P>
EIGEN_ALWAYS_INLINE P vsigmoid(const P& x) {
  const P one = ei::pset1<P>(1), e = ei::pexp(ei::pnegate(ei::pabs(x)));
  return ei::pdiv(ei::pselect(ei::pcmp_lt(x, ei::pzero(x)), e, one), ei::padd(one, e));
}

// tanh as in Cephes (tanhf / tanh): an odd polynomial or rational function for |x| < 0.625,
// 1 - 2 / (exp(2|x|) + 1) with the sign restored elsewhere. Error bound tested in test_lstm.py.
template <typename P>
EIGEN_ALWAYS_INLINE P vtanh(const P& x) {
  using S = typename ei::unpacket_traits<P>::type;
  const P one = ei::pset1<P>(1), ax = ei::pabs(x), z = ei::pmul(x, x);
  P big = ei::psub(one, ei::pdiv(ei::pset1<P>(2), ei::padd(ei::pexp(ei::padd(ax, ax)), one)));
  big = ei::pselect(ei::pcmp_lt(x, ei::pzero(x)), ei::pnegate(big), big);
  P r;
  if constexpr (sizeof(S) == 4) {
    r = ei::pset1<P>(S(-5.70498872745e-3));
    r = ei::padd(ei::pmul(r, z), ei::pset1<P>(S(2.06390887954e-2)));
    r = ei::padd(ei::pmul(r, z), ei::pset1<P>(S(-5.37397155531e-2)));
    r = ei::padd(ei::pmul(r, z), ei::pset1<P>(S(1.33314422036e-1)));
    r = ei::padd(ei::pmul(r, z), ei::pset1<P>(S(-3.33332819422e-1)));
  } else {
    P p = ei::pset1<P>(S(-9.64399179425052238628e-1));
    p = ei::padd(ei::pmul(p, z), ei::pset1<P>(S(-9.92877231001918586564e1)));
    p = ei::padd(ei::pmul(p, z), ei::pset1<P>(S(-1.61468768441708447952e3)));
    P q = ei::padd(z, ei::pset1<P>(S(1.12811678491632931402e2)));
    q = ei::padd(ei::pmul(q, z), ei::pset1<P>(S(2.23548839060100448583e3)));
    q = ei::padd(ei::pmul(q, z), ei::pset1<P>(S(4.84406305325125486048e3)));
    r = ei::pdiv(p, q);
  }
  const P small = ei::padd(x, ei::pmul(ei::pmul(x, z), r));
  return ei::pselect(ei::pcmp_lt(ax, ei::pset1<P>(S(0.625))), small, big);
}

// ---- Packed GEMM: panels, the microkernel, and a GEMM built on them ---------------------------
// A panel holds 4 vectors (4V columns) of a K x N matrix B for every k, contiguously:
//   panel p, row k, slot s  at  out[(p * K + k) * 4V + s],  s < 4V.
// Which column of B a slot holds depends on the panel kind:
//   Plain: column p*4V + s                     (N columns; panels of 4V consecutive columns)
//   Gates: column (s/V)*H + p*V + s%V          (N = 4H; panel p = units [pV, pV+V), all 4 gates)
// Slots past the end are zero. B(k, n) = b[k * sbk + n * sbn].
enum class Panels { Plain, Gates };

template <typename S>
Index panel_count(Panels kind, Index N) {
  return kind == Panels::Plain ? ceil_div(N, 4 * kV<S>) : ceil_div(N / 4, kV<S>);
}

template <typename S>
void pack(Panels kind, Index p0, Index p1, Index K, Index N, const S* b, Index sbk, Index sbn,
          S* out) {
  using P = Pk<S>;
  constexpr Index V = kV<S>, W = 4 * V;
  const Index H = N / 4;
  for (Index p = p0; p < p1; ++p)
    for (Index q = 0; q < 4; ++q) {  // slots [qV, qV + V) hold columns n0 + v, v < nv
      const Index n0 = kind == Panels::Plain ? p * W + q * V : q * H + p * V;
      const Index nv = std::clamp<Index>(kind == Panels::Plain ? N - n0 : H - p * V, 0, V);
      S* o = out + p * K * W + q * V;
      if constexpr (V > 1) {
        if (sbk == 1) {  // each column is contiguous in k: transpose V x V blocks in registers
          for (Index k0 = 0; k0 < K; k0 += V) {
            const Index kv = std::min(V, K - k0);
            ei::PacketBlock<P, int(V)> blk;
            for (Index v = 0; v < V; ++v)
              blk.packet[v] = v < nv ? load(b + (n0 + v) * sbn + k0, kv) : ei::pzero(P());
            ei::ptranspose(blk);
            for (Index k = 0; k < kv; ++k) ei::pstore(o + (k0 + k) * W, blk.packet[k]);
          }
          continue;
        }
      }
      for (Index k = 0; k < K; ++k)  // rows contiguous (sbn == 1), or no SIMD
        for (Index v = 0; v < V; ++v) o[k * W + v] = v < nv ? b[k * sbk + (n0 + v) * sbn] : S(0);
    }
}

// The microkernel: acc[m][q] += sum_k a[m][k * sak] * panel[k][q*V .. q*V + V), m < R, q < 4.
// Every output sums its k in a fixed order for a given R, whatever the caller's blocking.
template <typename S, int R>
EIGEN_ALWAYS_INLINE void microkernel(Index K, const S* const* a, Index sak, const S* bp,
                                     Pk<S> (&acc)[kMR][4]) {
  using P = Pk<S>;
  constexpr Index V = kV<S>;
  Index k = 0;
  if constexpr (R == 1) {  // one row: a second set of sums for odd k hides the FMA latency
    P odd[4] = {ei::pzero(P()), ei::pzero(P()), ei::pzero(P()), ei::pzero(P())};
    for (; k + 1 < K; k += 2, bp += 8 * V) {
      const P a0 = ei::pset1<P>(a[0][k * sak]), a1 = ei::pset1<P>(a[0][(k + 1) * sak]);
#pragma GCC unroll 4
      for (int q = 0; q < 4; ++q) {
        acc[0][q] = ei::pmadd(a0, ei::pload<P>(bp + q * V), acc[0][q]);
        odd[q] = ei::pmadd(a1, ei::pload<P>(bp + 4 * V + q * V), odd[q]);
      }
    }
#pragma GCC unroll 4
    for (int q = 0; q < 4; ++q) acc[0][q] = ei::padd(acc[0][q], odd[q]);
  }
  for (; k < K; ++k, bp += 4 * V) {
    const P b0 = ei::pload<P>(bp), b1 = ei::pload<P>(bp + V), b2 = ei::pload<P>(bp + 2 * V),
            b3 = ei::pload<P>(bp + 3 * V);
#pragma GCC unroll 8
    for (int m = 0; m < R; ++m) {
      const P am = ei::pset1<P>(a[m][k * sak]);
      acc[m][0] = ei::pmadd(am, b0, acc[m][0]);
      acc[m][1] = ei::pmadd(am, b1, acc[m][1]);
      acc[m][2] = ei::pmadd(am, b2, acc[m][2]);
      acc[m][3] = ei::pmadd(am, b3, acc[m][3]);
    }
  }
}

// Calls f(std::integral_constant<int, r>) for a run-time r in [1, kMR].
template <int R = kMR, typename F>
EIGEN_ALWAYS_INLINE void with_rows(int r, F&& f) {
  if constexpr (R > 1)
    if (r < R) return with_rows<R - 1>(r, f);
  f(std::integral_constant<int, R>{});
}

// k-block of a panel that fits in L1 (32 KiB)
template <typename S>
constexpr Index kKC = std::max<Index>(32, 32768 / (4 * kV<S> * Index(sizeof(S))));

// One time step's work on one panel: for each of the B rows b, the tile row (4 vectors q) is
// init(b, q) + A_row(b)[0, K) panel, then done(b, q0, q1, q2, q3). A_row(b) points at row b of A (unit stride in k). When B needs several
// row blocks, K is cut into L1-sized blocks so each block of the panel comes from L2 or L3 once
// and serves every row block; part [B, 4V] carries the partial sums in between.
template <typename S, typename ARow, typename Init, typename Done>
EIGEN_ALWAYS_INLINE void panel_rows(Index B, Index K, const S* bp, ARow&& a_row, Init&& init,
                                    Done&& done, S* part) {
  using P = Pk<S>;
  constexpr Index V = kV<S>, W = 4 * V;
  const Index KC = B > kMR ? kKC<S> : std::max<Index>(K, 1);
  for (Index k0 = 0; k0 == 0 || k0 < K; k0 += KC) {
    const Index kb = std::min(KC, K - k0);
    const bool first = k0 == 0;
    for (Index b0 = 0; b0 < B; b0 += kMR)
      with_rows(int(std::min<Index>(kMR, B - b0)), [&](auto RC) __attribute__((always_inline)) {
        constexpr int R = decltype(RC)::value;
        P acc[kMR][4];
        const S* ar[kMR];
#pragma GCC unroll 8
        for (int r = 0; r < R; ++r) {
          if (first)
#pragma GCC unroll 4
            for (int q = 0; q < 4; ++q) acc[r][q] = init(b0 + r, q);
          else
#pragma GCC unroll 4
            for (int q = 0; q < 4; ++q) acc[r][q] = ei::pload<P>(part + (b0 + r) * W + q * V);
          if (kb > 0) ar[r] = a_row(b0 + r) + k0;
        }
        if (kb > 0) microkernel<S, R>(kb, ar, 1, bp + k0 * W, acc);
#pragma GCC unroll 8
        for (int r = 0; r < R; ++r)
#pragma GCC unroll 4
          for (int q = 0; q < 4; ++q) ei::pstore(part + (b0 + r) * W + q * V, acc[r][q]);
      });
  }
  // The epilogue runs apart from the microkernel, on the tile in L1, so that neither has to
  // share the registers.
  for (Index b = 0; b < B; ++b) {
    const S* pb = part + b * W;
    done(b, ei::pload<P>(pb), ei::pload<P>(pb + V), ei::pload<P>(pb + 2 * V),
         ei::pload<P>(pb + 3 * V));
  }
}

// C[M, N] = A[M, K] B[K, N], B packed Plain (pack above), C(m, n) = c[m * ldc + n]: this
// thread's share. A(m, k) = a[m * sam + k], or with a_rows false A(m, k) = a[k * sam + m]: then
// each block of A is first copied, k-major, into ap [kKC x kMC] (per-thread scratch), because
// walking down its columns would thrash the L1. Panels are cut into one group per thread (fewer if there
// are fewer panels) and rows into chunks of kMC; an item is (group, chunk). Within an item, K
// goes in L1-sized blocks, and each block of A (kMC x KC, in L2) serves every panel of the
// group. C carries the sums between k-blocks; every output sums its k in order, whatever the
// split.
template <typename S>
void gemm_part(int tid, int nt, Index M, Index N, Index K, const S* a, Index sam,
               const S* bpk, S* c, Index ldc, bool a_rows = true, S* ap = nullptr) {
  using P = Pk<S>;
  constexpr Index V = kV<S>, W = 4 * V;
  // With a copied A, one group (every panel) unless there are too few chunks to share out:
  // each group copies its own A blocks, so more groups would copy A more than once.
  const Index np = panel_count<S>(Panels::Plain, N), nc = ceil_div(M, kMC);
  const Index ng = !a_rows && nc >= 4 * nt ? 1 : std::min<Index>(np, nt);
  Index i0, i1;
  share(ng * nc, nt, tid, i0, i1);
  for (Index it = i0; it < i1; ++it) {
    const Index g = it / nc, m0 = it % nc * kMC, m1 = std::min(M, m0 + kMC);
    for (Index k0 = 0; k0 == 0 || k0 < K; k0 += kKC<S>) {  // once at least: C = 0 if K = 0
      const Index kb = std::min(kKC<S>, K - k0);
      if (!a_rows)  // ap[k][m - m0] = A(m, k0 + k)
        for (Index k = 0; k < kb; ++k)
          std::copy(a + (k0 + k) * sam + m0, a + (k0 + k) * sam + m1, ap + k * kMC);
      for (Index p = np * g / ng; p < np * (g + 1) / ng; ++p) {
        const Index n0 = p * W;
        Index nv[4];  // valid lanes of each of the tile's 4 vectors
        for (int q = 0; q < 4; ++q) nv[q] = std::clamp<Index>(N - n0 - q * V, 0, V);
        for (Index m = m0; m < m1; m += kMR)
          with_rows(int(std::min<Index>(kMR, m1 - m)), [&](auto RC) {
            constexpr int R = decltype(RC)::value;
            P acc[kMR][4];
            const S* ar[kMR];
#pragma GCC unroll 8
            for (int r = 0; r < R; ++r) {
              ar[r] = a_rows ? a + (m + r) * sam + k0 : ap + (m - m0 + r);
#pragma GCC unroll 4
              for (int q = 0; q < 4; ++q)
                acc[r][q] = k0 && nv[q] ? load(c + (m + r) * ldc + n0 + q * V, nv[q]) : ei::pzero(P());
            }
            microkernel<S, R>(kb, ar, a_rows ? 1 : kMC, bpk + (p * K + k0) * W, acc);
#pragma GCC unroll 8
            for (int r = 0; r < R; ++r)
#pragma GCC unroll 4
              for (int q = 0; q < 4; ++q)
                if (nv[q]) store(c + (m + r) * ldc + n0 + q * V, acc[r][q], nv[q]);
          });
      }
    }
  }
}

template <typename S>
inline S sigmoid(S x) { return S(1) / (S(1) + std::exp(-x)); }  // exp overflow gives 0: stable
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

namespace {
// Sets h_n, c_n to the initial state and, when training, copies what backward reads into the
// cache. Returns false when there is nothing to compute (the state then passes through).
template <typename S>
bool begin_forward(const Dims& d, const S* x, const S* w_ih, const S* w_hh, const S* h0,
                   const S* c0, S* h_n, S* c_n, Cache<S>* cache) {
  const Index B = d.B, H = d.H;
  Map<S> hn(h_n, B, H), cn(c_n, B, H);  // [B, H]
  if (c0) cn = CMap<S>(c0, B, H); else cn.setZero();
  if (h0) hn = CMap<S>(h0, B, H); else hn.setZero();
  if (d.T * B == 0 || H == 0) return false;
  if (cache) {
    cache->x = CMap<S>(x, d.T * B, d.I);
    cache->w_ih = CMap<S>(w_ih, 4 * H, d.I);
    cache->w_hh = CMap<S>(w_hh, 4 * H, H);
    cache->c0 = cn;
    StepMap<S>(cache->hprev.data() + d.row0(0) * H, B, H, Eigen::OuterStride<>(d.rstride() * H)) = hn;
  }
  return true;
}

// h_n = h_T (the last y row), c_n = c_T (from the cache when training; inference updates c_n
// in place).
template <typename S>
void end_forward(const Dims& d, const S* y, S* h_n, S* c_n, const Cache<S>* cache) {
  const Index B = d.B, H = d.H, ld = d.rstride() * H, r = d.row0(d.T - 1) * H;
  Map<S>(h_n, B, H) = CStepMap<S>(y + r, B, H, Eigen::OuterStride<>(ld));
  if (cache) Map<S>(c_n, B, H) = CStepMap<S>(cache->c.data() + r, B, H, Eigen::OuterStride<>(ld));
}

// The weight gradients and dx, all big GEMMs over the whole sequence (dG in the layout of x):
//   dx = dG W_ih   dW_ih = dG^T x   dW_hh = dG^T hprev   db = column sums of dG.
// The naive version: Eigen, one thread.
template <typename S>
void weight_grads_naive(const Cache<S>& cache, const Mat<S>& dG, S* dx, S* dw_ih, S* dw_hh,
                        S* db) {
  const Index N = cache.d.T * cache.d.B, I = cache.d.I, H = cache.d.H, G = 4 * H;
  Map<S>(dx, N, I).noalias() = dG * cache.w_ih;
  Map<S>(dw_ih, G, I).noalias() = dG.transpose() * cache.x;
  Map<S>(dw_hh, G, H).noalias() = dG.transpose() * cache.hprev;
  Map<S>(db, 1, G) = dG.colwise().sum();
}

// The fast version: each right-hand matrix is packed (all threads share the work), then one
// packed GEMM (gemm_part) computes the product. One scratch buffer serves all three in turn.
template <typename S>
void weight_grads_fast(int threads, const Cache<S>& cache, const Mat<S>& dG, S* dx, S* dw_ih,
                       S* dw_hh, S* db) {
  constexpr Index W = 4 * kV<S>;
  const Index N = cache.d.T * cache.d.B, I = cache.d.I, H = cache.d.H, G = 4 * H;
  const Index npi = panel_count<S>(Panels::Plain, I), nph = panel_count<S>(Panels::Plain, H);
  Buf<S> pk(std::max({npi * G, npi * N, nph * N}) * W);  // packed right-hand side
  const S* dg = dG.data();                                // [T*B, 4H]
  with_team(threads, npi + nph, 2.0 * N * G * (2 * I + H), [&](int tid, int nt, Errors& err) {
    Buf<S> ap;  // this thread's copy of a block of dG^T
    err.run([&] { ap.resize(kKC<S> * kMC); });
    // C[M, n] = A B, A = dG (a_rows) or dG^T, B(k, n) = b[k * ldb + n] (K x n) packed first.
    auto product = [&](Index M, Index n, Index K, bool a_rows, const S* b, Index ldb, S* c) {
      Index p0, p1;
      share(panel_count<S>(Panels::Plain, n), nt, tid, p0, p1);
      err.run([&] { pack<S>(Panels::Plain, p0, p1, K, n, b, ldb, 1, pk.data()); });
      barrier();
      err.run([&] { gemm_part<S>(tid, nt, M, n, K, dg, G, pk.data(), c, n, a_rows, ap.data()); });
      barrier();  // before pk is packed again
    };
    product(N, I, G, true, cache.w_ih.data(), I, dx);        // dx [T*B, I] = dG W_ih
    product(G, I, N, false, cache.x.data(), I, dw_ih);       // dW_ih [4H, I] = dG^T x
    product(G, H, N, false, cache.hprev.data(), H, dw_hh);   // dW_hh [4H, H] = dG^T hprev
    Index c0, c1;  // db: this thread's columns
    share(G, nt, tid, c0, c1);
    err.run([&] {  // rows in order, whatever the split: the sums do not depend on it
      std::fill(db + c0, db + c1, S(0));
      for (Index r = 0; r < N; ++r)
        for (Index c = c0; c < c1; ++c) db[c] += dg[r * G + c];
    });
  });
}

// ---- Naive reference: Eigen GEMMs, scalar cell loops, one thread ------------------------------
template <typename S>
void forward_naive(const Dims& d, const S* x, const S* w_ih, const S* w_hh, const S* bias,
                   const S* h0, S* y, S* c_n, Cache<S>* cache) {
  const Index T = d.T, B = d.B, H = d.H, G = 4 * H, rs = d.rstride();
  FlushDenormals ftz;
  Mat<S> scratch;
  if (!cache) scratch.resize(T * B, G);
  S* gates = cache ? cache->gates.data() : scratch.data();  // [T*B, 4H]
  Map<S>(gates, T * B, G).noalias() =
      CMap<S>(x, T * B, d.I) * CMap<S>(w_ih, G, d.I).transpose();
  for (Index t = 0; t < T; ++t) {
    const S* hp = t ? y + d.row0(t - 1) * H : h0;  // h_{t-1} [B, H]
    const Index ldh = t ? rs * H : H;
    S* gt = gates + d.row0(t) * G;
    if (hp)
      StepMap<S>(gt, B, G, Eigen::OuterStride<>(rs * G)).noalias() +=
          CStepMap<S>(hp, B, H, Eigen::OuterStride<>(ldh)) * CMap<S>(w_hh, G, H).transpose();
    const S* cp = !cache ? c_n : t ? cache->c.data() + d.row0(t - 1) * H : cache->c0.data();
    const Index ldcp = cache && t ? rs * H : H;
    S* ct = cache ? cache->c.data() + d.row0(t) * H : c_n;
    const Index ldc = cache ? rs * H : H;
    for (Index b = 0; b < B; ++b) {
      S* gb = gt + b * rs * G;  // gates i, f, g, o at +0, +H, +2H, +3H
      for (Index j = 0; j < H; ++j) {
        S zi = gb[j], zf = gb[H + j], zg = gb[2 * H + j], zo = gb[3 * H + j];
        if (bias) zi += bias[j], zf += bias[H + j], zg += bias[2 * H + j], zo += bias[3 * H + j];
        const S i = sigmoid(zi), f = sigmoid(zf), gg = std::tanh(zg), o = sigmoid(zo);
        const S c = f * cp[b * ldcp + j] + i * gg;
        gb[j] = i, gb[H + j] = f, gb[2 * H + j] = gg, gb[3 * H + j] = o;
        ct[b * ldc + j] = c;
        y[(d.row0(t) + b * rs) * H + j] = o * std::tanh(c);
      }
    }
    if (cache && t + 1 < T)  // h_t is step t+1's h_{t-1}
      StepMap<S>(cache->hprev.data() + d.row0(t + 1) * H, B, H, Eigen::OuterStride<>(rs * H)) =
          CStepMap<S>(y + d.row0(t) * H, B, H, Eigen::OuterStride<>(rs * H));
  }
}

template <typename S>
void backward_naive(const Cache<S>& cache, const S* dy, S* dh0, S* dc, Mat<S>& dG) {
  const Dims& d = cache.d;
  const Index T = d.T, B = d.B, H = d.H, G = 4 * H, rs = d.rstride();
  FlushDenormals ftz;
  Map<S> dh(dh0, B, H);  // dL/dh_t through the recurrence; holds dh_n on entry, dh_0 on exit
  for (Index t = T - 1; t >= 0; --t) {
    if (t < T - 1)
      dh.noalias() = CStepMap<S>(dG.data() + d.row0(t + 1) * G, B, G, Eigen::OuterStride<>(rs * G)) *
                     cache.w_hh;
    const S* cp = t ? cache.c.data() + d.row0(t - 1) * H : cache.c0.data();
    const Index ldcp = t ? rs * H : H;
    for (Index b = 0; b < B; ++b) {
      const Index row = d.row0(t) + b * rs;
      const S* gb = cache.gates.data() + row * G;
      S* db = dG.data() + row * G;
      for (Index j = 0; j < H; ++j) {
        const S i = gb[j], f = gb[H + j], gg = gb[2 * H + j], o = gb[3 * H + j];
        const S tc = std::tanh(cache.c.data()[row * H + j]);
        const S dht = dh(b, j) + (dy ? dy[row * H + j] : S(0));
        const S dct = dc[b * H + j] + dht * o * (S(1) - tc * tc);
        db[j] = dct * gg * i * (S(1) - i);
        db[H + j] = dct * cp[b * ldcp + j] * f * (S(1) - f);
        db[2 * H + j] = dct * i * (S(1) - gg * gg);
        db[3 * H + j] = dht * tc * o * (S(1) - o);
        dc[b * H + j] = dct * f;
      }
    }
  }
  dh.noalias() = CStepMap<S>(dG.data() + d.row0(0) * G, B, G, Eigen::OuterStride<>(rs * G)) *
                 cache.w_hh;
}

// ---- Fast: packed weights, fused microkernel epilogues, one barrier a step -----------------------
template <typename S>
void forward_fast(int threads, const Dims& d, const S* x, const S* w_ih, const S* w_hh,
                  const S* bias, const S* h0, S* y, S* c_n, Cache<S>* cache) {
  using P = Pk<S>;
  constexpr Index V = kV<S>, W = 4 * V;
  const Index T = d.T, B = d.B, I = d.I, H = d.H, G = 4 * H, N = T * B, rs = d.rstride();
  const Index np = panel_count<S>(Panels::Gates, G);  // panels: V units, 4 gates each
  // The input projection is computed Tc steps at a time (about kMC rows), just before those
  // steps, by the thread that owns the units: it stays in L2, and inference needs no [T*B, 4H]
  // buffer. Training writes it into the cache's gates, where the step puts the activations.
  const Index Tc = std::min(T, std::max<Index>(1, kMC / B));
  // Buffers, sized once: packed weights, and the projection of Tc steps (inference only).
  Buf<S> wi(np * I * W), wh(np * H * W), scratch(cache ? 0 : Tc * B * G);
  auto grow = [&](Index t, Index b) {  // row of gates holding step t, batch entry b
    return cache ? d.row0(t) + b * rs : (t % Tc) * B + b;
  };
  S* gates = cache ? cache->gates.data() : scratch.data();  // [rows, 4H]
  const double flops = 2.0 * N * G * (I + H);
  const Index dt = d.rnext();  // rows from step t to step t+1
  with_team(threads, np, flops, [&](int tid, int nt, Errors& err) {
    Buf<S> part;  // partial sums between k-blocks, and tiles, per thread
    err.run([&] { part.resize(Tc * B * W); });
    Index p0, p1;
    share(np, nt, tid, p0, p1);  // this thread's units: [p0 V, p1 V), for good
    err.run([&] {
      pack<S>(Panels::Gates, p0, p1, I, G, w_ih, 1, I, wi.data());  // W_ih^T
      pack<S>(Panels::Gates, p0, p1, H, G, w_hh, 1, H, wh.data());  // W_hh^T
    });
    for (Index t = 0; t < T; ++t) {
      if (t % Tc == 0)  // x W_ih^T + b for steps [t, t + Tc), this thread's units
        err.run([&] {
          const Index nr = (std::min(T, t + Tc) - t) * B;  // rows i: step t + i / B, entry i % B
          for (Index p = p0; p < p1; ++p) {
            const Index j0 = p * V, nv = std::min(V, H - j0);
            panel_rows<S>(
                nr, I, wi.data() + p * I * W,
                [&](Index i) __attribute__((always_inline)) {
                  return x + (d.row0(t + i / B) + i % B * rs) * I;
                },
                [&](Index, int q) __attribute__((always_inline)) {
                  return bias ? load(bias + q * H + j0, nv) : ei::pzero(P());
                },
                [&](Index i, P zi, P zf, P zg, P zo) __attribute__((always_inline)) {
                  S* g = gates + grow(t + i / B, i % B) * G + j0;
                  store(g, zi, nv), store(g + H, zf, nv), store(g + 2 * H, zg, nv);
                  store(g + 3 * H, zo, nv);
                },
                part.data());
          }
        });
      const S* hp = t ? y + d.row0(t - 1) * H : h0;  // h_{t-1} [B, H], rows ldh apart
      const Index ldh = t ? rs * H : H;
      const S* cp = !cache ? c_n : t ? cache->c.data() + d.row0(t - 1) * H : cache->c0.data();
      const Index ldcp = cache && t ? rs * H : H;
      S* ct = cache ? cache->c.data() + d.row0(t) * H : c_n;  // c_t (in place in c_n)
      const Index ldc = cache ? rs * H : H;
      err.run([&] {
        for (Index p = p0; p < p1; ++p) {
          const Index j0 = p * V, nv = std::min(V, H - j0);  // units [j0, j0 + nv)
          panel_rows<S>(
              B, hp ? H : 0, wh.data() + p * H * W, [&](Index b) __attribute__((always_inline)) { return hp + b * ldh; },
              [&](Index b, int q) __attribute__((always_inline)) {  // the input projection
                return load(gates + grow(t, b) * G + q * H + j0, nv);
              },
              [&](Index b, P zi, P zf, P zg, P zo) __attribute__((always_inline)) {  // the cell
                const Index row = d.row0(t) + b * rs;  // of y, c and the cache
                const P i = vsigmoid(zi), f = vsigmoid(zf), g = vtanh(zg), o = vsigmoid(zo);
                const P c = ei::padd(ei::pmul(f, load(cp + b * ldcp + j0, nv)), ei::pmul(i, g));
                const P h = ei::pmul(o, vtanh(c));
                store(ct + b * ldc + j0, c, nv);
                store(y + row * H + j0, h, nv);
                if (cache) {  // activated gates, and h_t as step t+1's h_{t-1}
                  S* gs = gates + row * G + j0;
                  store(gs, i, nv), store(gs + H, f, nv), store(gs + 2 * H, g, nv);
                  store(gs + 3 * H, o, nv);
                  if (t + 1 < T) store(cache->hprev.data() + (row + dt) * H + j0, h, nv);
                }
              },
              part.data());
        }
      });
      barrier();  // h_t complete before step t+1 reads it
    }
  });
}

template <typename S>
void backward_fast(int threads, const Cache<S>& cache, const S* dy, S* dh0, S* dc, Mat<S>& dG) {
  using P = Pk<S>;
  constexpr Index V = kV<S>, W = 4 * V;
  const Dims& d = cache.d;
  const Index T = d.T, B = d.B, H = d.H, G = 4 * H, rs = d.rstride();
  const Index np = panel_count<S>(Panels::Plain, H);  // W_hh panels: 4V units, K = 4H
  Buf<S> wh(np * G * W);
  const Index dt = d.rnext();  // rows from step t to step t+1
  with_team(threads, np, 2.0 * T * B * G * H, [&](int tid, int nt, Errors& err) {
    Buf<S> part;  // partial sums between k-blocks, per thread
    err.run([&] { part.resize(B * W); });
    Index p0, p1;
    share(np, nt, tid, p0, p1);  // this thread's units: [p0 4V, p1 4V), for good
    err.run([&] { pack<S>(Panels::Plain, p0, p1, G, H, cache.w_hh.data(), H, 1, wh.data()); });
    // dh_t (recurrent part) = dG_{t+1} W_hh for the thread's units, B rows at a time; the tile
    // stays in registers for the cell backward. dh0 holds dh_n on entry.
    for (Index t = T - 1; t >= -1; --t) {
      err.run([&] {
        for (Index p = p0; p < p1; ++p) {
          const Index u0 = p * W;  // units [u0, u0 + 4V)
          Index nv[4];
          for (int q = 0; q < 4; ++q) nv[q] = std::clamp<Index>(H - u0 - q * V, 0, V);
          panel_rows<S>(
              B, t < T - 1 ? G : 0, wh.data() + p * G * W,
              [&](Index b) __attribute__((always_inline)) { return dG.data() + (d.row0(t + 1) + b * rs) * G; },
              [&](Index b, int q) __attribute__((always_inline)) {  // dh_n (held in dh0), or 0
                return t == T - 1 && nv[q] ? load(dh0 + b * H + u0 + q * V, nv[q]) : ei::pzero(P());
              },
              [&](Index b, P a0, P a1, P a2, P a3) __attribute__((always_inline)) {
                const P a[4] = {a0, a1, a2, a3};
                if (t < 0) {  // dh_0 = dG_0 W_hh
                  for (int q = 0; q < 4; ++q)
                    if (nv[q]) store(dh0 + b * H + u0 + q * V, a[q], nv[q]);
                  return;
                }
                const Index row = d.row0(t) + b * rs;  // the cell backward for row b
                const S* gb = cache.gates.data() + row * G;
                const S* cpb = t ? cache.c.data() + (row - dt) * H : cache.c0.data() + b * H;
                S* dgb = dG.data() + row * G;
                const P one = ei::pset1<P>(1);
                for (int q = 0; q < 4; ++q) {
                  const Index j = u0 + q * V, n = nv[q];
                  if (!n) continue;
                  const P dht = dy ? ei::padd(a[q], load(dy + row * H + j, n)) : a[q];
                  const P i = load(gb + j, n), f = load(gb + H + j, n),
                          g = load(gb + 2 * H + j, n), o = load(gb + 3 * H + j, n);
                  const P tc = vtanh(load(cache.c.data() + row * H + j, n));
                  const P dct = ei::padd(load(dc + b * H + j, n),
                                         ei::pmul(ei::pmul(dht, o), ei::psub(one, ei::pmul(tc, tc))));
                  store(dgb + j, ei::pmul(ei::pmul(dct, g), ei::pmul(i, ei::psub(one, i))), n);
                  store(dgb + H + j,
                        ei::pmul(ei::pmul(dct, load(cpb + j, n)), ei::pmul(f, ei::psub(one, f))), n);
                  store(dgb + 2 * H + j, ei::pmul(ei::pmul(dct, i), ei::psub(one, ei::pmul(g, g))), n);
                  store(dgb + 3 * H + j, ei::pmul(ei::pmul(dht, tc), ei::pmul(o, ei::psub(one, o))), n);
                  store(dc + b * H + j, ei::pmul(dct, f), n);
                }
              },
              part.data());
        }
      });
      barrier();  // dG_t complete before step t-1 reads it
    }
  });
}
}  // namespace

// ---- The sequence: forward and backward through time, either implementation -------------------
template <typename S>
void lstm_forward(Kernel k, int threads, const Dims& d, const S* x, const S* w_ih,
                  const S* w_hh, const S* bias, const S* h0, const S* c0, S* y, S* h_n, S* c_n,
                  Cache<S>* cache) {
  if (!begin_forward(d, x, w_ih, w_hh, h0, c0, h_n, c_n, cache)) return;
  if (k == Kernel::Naive)
    forward_naive(d, x, w_ih, w_hh, bias, h0, y, c_n, cache);
  else
    forward_fast(threads, d, x, w_ih, w_hh, bias, h0, y, c_n, cache);
  end_forward(d, y, h_n, c_n, cache);
}

template <typename S>
void lstm_backward(Kernel k, int threads, const Cache<S>& cache, const S* dy, const S* dh_n,
                   const S* dc_n, S* dx, S* dh0, S* dc0, S* dw_ih, S* dw_hh, S* db) {
  const Dims& d = cache.d;
  const Index T = d.T, B = d.B, I = d.I, H = d.H, G = 4 * H, N = T * B;
  Map<S> dh(dh0, B, H), dc(dc0, B, H);  // dh0, dc0 double as the running dL/dh, dL/dc
  if (dh_n) dh = CMap<S>(dh_n, B, H); else dh.setZero();
  if (dc_n) dc = CMap<S>(dc_n, B, H); else dc.setZero();
  if (N == 0 || H == 0) {
    Map<S>(dx, N, I).setZero(), Map<S>(dw_ih, G, I).setZero(), Map<S>(dw_hh, G, H).setZero();
    Map<S>(db, 1, G).setZero();
    return;
  }
  Mat<S> dG(N, G);  // [T*B, 4H] per-call scratch: gradients of the pre-activation gates
  if (k == Kernel::Naive)
    backward_naive(cache, dy, dh0, dc0, dG);
  else
    backward_fast(threads, cache, dy, dh0, dc0, dG);
  if (k == Kernel::Naive)
    weight_grads_naive(cache, dG, dx, dw_ih, dw_hh, db);
  else
    weight_grads_fast(threads, cache, dG, dx, dw_ih, dw_hh, db);
}

// ---- The exported table -------------------------------------------------------------------------
namespace {
// Test hook: the fast kernels' sigmoid and tanh, elementwise over n values.
template <typename S>
void activations(Index n, const S* x, S* sig, S* th) {
  FlushDenormals ftz;
  for (Index i = 0; i < n; i += kV<S>) {
    const Index nv = std::min(kV<S>, n - i);
    const Pk<S> v = load(x + i, nv);
    store(sig + i, vsigmoid(v), nv);
    store(th + i, vtanh(v), nv);
  }
}

template <typename S>
KernelTable<S> table() {
  return {[](const Dims& d) { return new Cache<S>(d); }, [](Cache<S>* c) { delete c; },
          [](const Cache<S>* c) { return c->nbytes(); }, &lstm_forward<S>, &lstm_backward<S>,
          &activations<S>};
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
