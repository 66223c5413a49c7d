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
// The fast kernels (lstm.cpp):
//   forward:  each thread owns a slice of hidden units for the whole call, and packs W_ih^T and
//             W_hh^T for its units once per call into panels (per k: 4 SIMD vectors = gates
//             i, f, g, o of V units). Every Tc steps (about 192 rows) it computes x W_ih^T + b
//             for its units; every step it runs the register-blocked microkernel
//             h_{t-1} W_hh^T on top of that, kMR batch rows at a time, and applies the cell
//             update to the tile while it is in L1: activations, c_t, h_t, the cache.
//   backward: W_hh is packed into panels of 4V hidden units (K = 4H); each reverse step runs
//             dG_{t+1} W_hh for the thread's units and the cell backward on the tile. After the
//             loop, dx = dG W_ih, dW_ih = dG^T x and dW_hh = dG^T hprev are packed GEMMs on the
//             same microkernel, and db sums dG's rows.
//
// Threads: the sequence kernels take a thread count. Each thread owns a slice of hidden units
// for the whole call, so a step needs one barrier. Every output sums its terms in a fixed order
// whatever the split, so results are bitwise identical for any thread count. Kernels never touch
// Python. Denormals are flushed to zero inside the kernels (and the caller's floating-point mode
// is restored on exit).
//
// Activations (fast kernels): sigmoid(x) = 1 / (1 + e) or e / (1 + e) with e = exp(-|x|) from
// Eigen's vectorised exp; tanh as in Cephes (a polynomial for |x| < 0.625, else
// 1 - 2 / (exp(2|x|) + 1)). Stable for any input; float32 error <= 2.5 ulp (sigmoid) and
// <= 1.5 ulp (tanh), tested. The naive kernels use std::exp and std::tanh.
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
  Index rnext() const { return batch_first ? 1 : B; }            // rows from step t to t+1
};

// Which implementation to run. Naive is the plain reference (Eigen GEMMs, scalar cell loops,
// one thread) that sits beside the fast kernels.
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
  // Test hook: the fast kernels' vectorised sigmoid and tanh of x [n] into sig, th [n].
  void (*activations)(Index n, const S* x, S* sig, S* th);
};

constexpr int kBackendAbi = 2;
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
