// lstmx.h — the public C++ interface of the lstmx core. No Python in here.
//
// The cell (gate order i, f, g, o, as in PyTorch):
//   gates_t = x_t W_ih^T + h_{t-1} W_hh^T + b          b = b_ih + b_hh     [B, 4H]
//   i = sigmoid(gates[:, 0H:1H])   input gate
//   f = sigmoid(gates[:, 1H:2H])   forget gate
//   g = tanh   (gates[:, 2H:3H])   candidate memory (the seeds' C~)
//   o = sigmoid(gates[:, 3H:4H])   output gate
//   c_t = f * c_{t-1} + i * g
//   h_t = o * tanh(c_t)
//
// Sizes: T steps, B batch, I input features, H hidden units. All matrices are row-major.
//   W_ih [4H, I]   W_hh [4H, H]   bias [4H] (or nullptr)
//
// Sequence layout. x [T, B, I] and y [T, B, H] are time-major, or batch-major ([B, T, I],
// [B, T, H]) when batch_first is set. Row (t, b) of any per-token buffer is
//   row(t, b) = batch_first ? b * T + t : t * B + b
// so one step's B rows start at row0(t) = batch_first ? t : t * B and lie `rstride(T,B)` rows
// apart. Every per-token buffer (gates, caches, gradients) uses the same layout as x, so the
// weight gradients are single GEMMs whatever the layout.
//
// Threads: the sequence kernels take a thread count. Each thread owns a slice of hidden units
// (all four gates of them), so a step needs one barrier; big GEMMs are split the same way.
// Kernels never touch Python. Denormals are flushed to zero inside the kernels (and the caller's
// floating-point mode is restored on exit).
//
// ISA: lstm.cpp is compiled once per x86-64 level (sse2, avx2, avx512) into its own module
// _kernels_<isa>.so, which exports only lstmx_backend(); lstmx._core picks one at run time.
#pragma once

#include <Eigen/Core>
#include <cstddef>

namespace lstmx {

using Index = std::ptrdiff_t;
template <typename S>
using Mat = Eigen::Matrix<S, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

struct Dims {
  Index T = 0, B = 0, I = 0, H = 0;
  bool batch_first = false;
  Index row0(Index t) const { return batch_first ? t : t * B; }  // first row of step t
  Index rstride() const { return batch_first ? T : 1; }          // rows between batch entries
};

// Which implementation of the fused elementwise cell update to run. Naive is the plain scalar
// loop that sits beside the fast kernel as its reference.
enum class Kernel { Fast = 0, Naive = 1 };

// The training workspace: everything backward reads from the forward pass, sized once, up
// front, by the constructor. All per-token buffers use the layout of x (see above).
template <typename S>
struct Cache {
  Dims d;
  Mat<S> x;      // [T*B, I]   copy of the input
  Mat<S> w_ih;   // [4H, I]    copy of the weights used
  Mat<S> w_hh;   // [4H, H]
  Mat<S> gates;  // [T*B, 4H]  activated gates i, f, g, o of every step
  Mat<S> hprev;  // [T*B, H]   h_{t-1} of every step (h_0 for t = 0)
  Mat<S> c;      // [T*B, H]   c_t of every step
  Mat<S> c0;     // [B, H]     c_0
  explicit Cache(const Dims& dims);
  std::size_t nbytes() const;
};

// ---- The cell: one step's fused elementwise update, forward and backward -------------------
// These run over B rows and a slice of n units: every pointer points at the slice's first unit,
// gate q of unit j is at offset q*H + j of a gate row, and `ld*` are row strides in elements.

// g:      [B, 4H] in: pre-activations without bias; out: activated i, f, g, o
// bias:   [4H] or nullptr
// c_prev: [B, H]  (may alias c: the update is elementwise)
// c:      [B, H]  out: c_t
// h:      [B, H]  out: h_t
// work:   aligned scratch of 5 * ceil16(n) elements (the fast kernel's)
template <typename S>
void cell_forward(Kernel k, Index B, Index n, Index H, S* g, Index ldg, const S* bias,
                  const S* c_prev, Index ldcp, S* c, Index ldc, S* h, Index ldh, S* work);

// gates:  [B, 4H] activated i, f, g, o (from the cache)
// c_prev: [B, H]  c_{t-1};  c: [B, H]  c_t
// dh:     [B, H]  dL/dh_t through the recurrence (dh_n at the last step)
// dy:     [B, H]  dL/dh_t through the output y_t, or nullptr
// dc:     [B, H]  row stride H; in: dL/dc_t from step t+1 (dc_n at the last step);
//                 out: dL/dc_{t-1}
// dg:     [B, 4H] out: dL/d(pre-activation gates)
// work:   aligned scratch of ceil16(n) elements
template <typename S>
void cell_backward(Kernel k, Index B, Index n, Index H, const S* gates, Index ldg,
                   const S* c_prev, Index ldcp, const S* c, Index ldc, const S* dh, Index lddh,
                   const S* dy, Index lddy, S* dc, S* dg, Index lddg, S* work);

// ---- The sequence: forward and backward through time ---------------------------------------

// x [T,B,I] or [B,T,I]; h0, c0 [B, H] or nullptr (zeros); bias [4H] or nullptr.
// Writes y (layout of x), h_n, c_n [B, H]. With cache == nullptr (inference) only the state is
// kept, plus one [T*B, 4H] scratch for the input projection; otherwise cache (constructed with
// the same dims) is filled for backward.
template <typename S>
void lstm_forward(Kernel k, int threads, const Dims& d, const S* x, const S* w_ih, const S* w_hh,
                  const S* bias, const S* h0, const S* c0, S* y, S* h_n, S* c_n,
                  Cache<S>* cache);

// dy (layout of x) or nullptr; dh_n, dc_n [B, H] or nullptr (zeros).
// Writes dx (layout of x), dh0, dc0 [B, H], dw_ih [4H, I], dw_hh [4H, H], db [4H] (the
// gradient of b_ih and of b_hh alike). The weight gradients are GEMMs after the reverse loop.
template <typename S>
void lstm_backward(Kernel k, int threads, const Cache<S>& cache, const S* dy, const S* dh_n, const S* dc_n,
                   S* dx, S* dh0, S* dc0, S* dw_ih, S* dw_hh, S* db);

// ---- The table each ISA module exports to lstmx._core ------------------------------------------
// Caches are created and freed inside the module that uses them (Eigen's alignment differs
// between ISA builds).
template <typename S>
struct KernelTable {
  Cache<S>* (*cache_new)(const Dims&);
  void (*cache_free)(Cache<S>*);
  std::size_t (*cache_nbytes)(const Cache<S>*);
  void (*forward)(Kernel, int, const Dims&, const S*, const S*, const S*, const S*, const S*,
                  const S*, S*, S*, S*, Cache<S>*);
  void (*backward)(Kernel, int, const Cache<S>&, const S*, const S*, const S*, S*, S*, S*, S*, S*,
                   S*);
};

constexpr int kBackendAbi = 1;
struct Backend {
  int abi;           // kBackendAbi
  const char* isa;   // "sse2", "avx2", "avx512" or "generic"
  const char* simd;  // Eigen::SimdInstructionSetsInUse() of this build
  KernelTable<float> f32;
  KernelTable<double> f64;
};

}  // namespace lstmx

// Exported (the only exported symbol) by each _kernels_<isa> module.
extern "C" const lstmx::Backend* lstmx_backend();
