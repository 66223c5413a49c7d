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
// Sizes: T steps, B batch, I input features, H hidden units, P projection size (0: none).
// The recurrent state h has R = P (with a projection) or H units. All matrices are row-major.
//   W_ih [4H, I]   W_hh [4H, R]   bias [4H] (or nullptr)   W_hr [P, H] (Options::w_hr)
//   h0, h_n [B, R]   c0, c_n [B, H]   y [T, B, R]
// With a projection (PyTorch's proj_size), h_t = (o * tanh(c_t)) W_hr^T.
//
// Sequence layout. x [T, B, I] and y, dy, dx are time-major, or batch-major ([B, T, I]) when
// batch_first is set: the row of (time t, batch entry b) is  batch_first ? b * T + t : t * B + b.
// Rows of y and dy start Dims::y_stride() elements apart (R unless Dims::ldy says more).
//
// Variants (Options, all off by default), in the order the cell applies them:
//   lengths       sequence b runs steps s = 0 .. len_b - 1 (0 <= len_b <= T, any order); its
//                 time index is t = s, or t = len_b - 1 - s with reverse. y is 0 past the end;
//                 h_n, c_n are each sequence's state after its own last step.
//   recurrent_dropout  (training) h_{t-1} * m before W_hh, m [B, R] in {0, 1/(1-p)}, fixed in time
//   peephole [3, H]    z_i += p_i * c_{t-1}, z_f += p_f * c_{t-1}, z_o += p_o * c_t
//   clip          z_i, z_f, z_g, z_o clamped to [-clip, clip] before the activations
//   input_forget  f = 1 - i
//   zoneout_c, zoneout_h  c_t = z * c_{t-1} + (1 - z) * c_t, the same for h (y is the zoned h);
//                 z in {0, 1} per (step, entry, unit) in training, z = p in inference. The
//                 peephole p_o and tanh see the new cell value before zoneout.
//   ln            layer normalisation (Haste's LayerNormLSTM; eps 1e-5, biased variance):
//                 z = LN(x W_ih^T) gain_x + LN(h_{t-1} W_hh^T) gain_h + b, each LN over the 4H
//                 values of one token; r = o * tanh(LN(c_t) gain_c + bias_c), LN over H.
//   drop, y_drop  (training) the output's between-layer dropout, fused: y_drop = y * drop, and
//                 backward's dy (the gradient of y_drop) is multiplied by drop as it is read.
// Masks come from a counter-based hash of (seed, stream, step, user batch index, unit), so they
// need no memory, are the same for any thread count, and the NumPy reference draws the same
// ones (reference.uniform): stream + 0 zoneout on c, + 1 zoneout on h, + 2 recurrent dropout.
//
// Visiting order (Seq). Sequences are sorted by length, longest first (ties by index): entry k
// is user batch index perm[k], and step s has n[s] active entries, k < n[s]. The workspace and
// all per-token scratch are packed like PyTorch's PackedSequence: token (s, k) at position
// off[s] + k, so a step's rows are contiguous and padding costs nothing. row[pos] is the
// token's row in x's layout.
//
// The fast kernels (lstm.cpp):
//   forward:  each thread owns a slice of hidden units for the whole call, and packs W_ih^T and
//             W_hh^T for its units once per call into panels (per k: 4 SIMD vectors = gates
//             i, f, g, o of V units). Every Tc steps (about 192 rows) it computes x W_ih^T + b
//             for its units (for (unit slice, kMR rows) items shared out evenly, behind a
//             barrier, when the slices are uneven or fewer than the threads); every step it
//             runs the register-blocked microkernel
//             h_{t-1} W_hh^T on top of that, kMR batch rows at a time, and applies the cell
//             update to the tile while it is in L1: activations, c_t, h_t, the cache. With
//             fewer unit slices than threads (small H), a step splits by row blocks instead.
//   backward: W_hh comes from the cache in panels of 4V hidden units (K = 4H), packed there by
//             the forward's threads (and W_ih likewise, for dx) in place of a plain copy; each
//             reverse step runs dG_{t+1} W_hh for the thread's units (at small R, with fewer
//             panels than threads: its rows) and the cell backward on the tile. After the
//             loop, dx = dG W_ih (or dx += it: Grads::dx_add), dW_ih = dG^T x and
//             dW_hh = dG^T hprev are packed GEMMs on the same microkernel, and db sums dG's
//             rows.
//   projection: after the cell, a barrier, then h_t = r_t W_hr^T over panels of 4V units of P
//             (W_hr^T packed once); backward mirrors it (dr = dh_new W_hr, dW_hr = dh_new^T r).
//   layer norm: the statistics need whole rows, so each thread owns blocks of kMR entries
//             (batch rows) instead of units, for the whole call, and computes their full gate
//             rows (every panel, weights packed once and shared) and the normalisations itself:
//             no barrier in the time loop. When the blocks do not share out evenly (small B),
//             the products x W_ih^T and h_{t-1} W_hh^T (backward: dGh_{t+1} W_hh) go by panels
//             of every entry instead, between barriers (two a step), and the owners of the
//             entries run the rest. The sums over tokens (db, the LN gains, peepholes) run
//             after it, by columns, in token order.
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
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <new>
#include <vector>
#if __has_include(<sys/mman.h>)
#include <sys/mman.h>  // madvise
#endif

namespace lstmx {

// ---- Memory --------------------------------------------------------------------------------
// Buffers that kernels stream (packed weights, the workspace, dG, large outputs) go on
// transparent 2 MiB pages where the system allows it: a few TLB entries instead of thousands,
// and one page fault instead of 512 (b4-h1024 inference and b64-h512 training: 7-15% faster).
// huge_pages advises the whole 2 MiB pages inside [p, p + bytes); it must come before the
// memory is first touched. Advice only: where it fails it does nothing.
constexpr std::size_t kHuge = std::size_t(2) << 20;
inline void huge_pages(void* p, std::size_t bytes) {
#ifdef MADV_HUGEPAGE
  const auto a = (reinterpret_cast<std::uintptr_t>(p) + kHuge - 1) & ~std::uintptr_t(kHuge - 1);
  const auto e = (reinterpret_cast<std::uintptr_t>(p) + bytes) & ~std::uintptr_t(kHuge - 1);
  if (e > a) madvise(reinterpret_cast<void*>(a), e - a, MADV_HUGEPAGE);
#else
  (void)p, (void)bytes;
#endif
}

// A 64-byte aligned block of at least `bytes` (free it with std::free); its capacity in `cap`.
// From kHuge bytes on, whole huge pages. Throws std::bad_alloc.
inline void* alloc_block(std::size_t bytes, std::size_t& cap) {
  const std::size_t align = bytes >= kHuge ? kHuge : 64;
  cap = (std::max<std::size_t>(bytes, 1) + align - 1) / align * align;
  void* p = std::aligned_alloc(align, cap);
  if (!p) throw std::bad_alloc();
  if (align == kHuge) huge_pages(p, cap);
  return p;
}

// Freed blocks (alloc_block's) kept for reuse: at most max_bytes in all and max_count blocks;
// when full, the larger blocks stay. Not thread-safe: the kernels keep one per thread (lstm.cpp,
// Pool), the binding one for its outputs behind a mutex (bindings.cpp, OutBlocks).
class KeptBlocks {
 public:
  KeptBlocks(std::size_t max_bytes, std::size_t max_count) : max_bytes_(max_bytes) {
    blocks_.reserve(max_count);  // keep never allocates
  }
  ~KeptBlocks() {
    for (const Block& b : blocks_) std::free(b.p);
  }
  KeptBlocks(const KeptBlocks&) = delete;
  KeptBlocks& operator=(const KeptBlocks&) = delete;
  // A block of at least `bytes`, its capacity in `cap`: the smallest kept one that is large
  // enough and at most twice the size (of equals, the last freed: the warmest), else a new one.
  void* take(std::size_t bytes, std::size_t& cap) {
    auto best = blocks_.end();
    for (auto it = blocks_.begin(); it != blocks_.end(); ++it)
      if (it->cap >= bytes && it->cap <= 2 * bytes + 4096 &&
          (best == blocks_.end() || it->cap <= best->cap))
        best = it;
    if (best == blocks_.end()) return alloc_block(bytes, cap);
    void* p = best->p;
    cap = best->cap, bytes_ -= cap;
    blocks_.erase(best);
    return p;
  }
  // Keeps the block p of capacity cap, or frees it. Never throws (called from destructors).
  void keep(void* p, std::size_t cap) noexcept {
    if (cap > max_bytes_ || blocks_.size() == blocks_.capacity()) return std::free(p);
    while (bytes_ + cap > max_bytes_) {  // make room: drop the largest kept block
      auto big = std::max_element(blocks_.begin(), blocks_.end(),
                                  [](const Block& a, const Block& b) { return a.cap < b.cap; });
      if (big->cap < cap) return std::free(p);  // keep the larger ones instead
      std::free(big->p), bytes_ -= big->cap;
      blocks_.erase(big);
    }
    blocks_.push_back({p, cap}), bytes_ += cap;
  }

 private:
  struct Block {
    void* p;
    std::size_t cap;
  };
  std::vector<Block> blocks_;
  std::size_t bytes_ = 0, max_bytes_;
};

using Index = std::ptrdiff_t;
template <typename S>
using Mat = Eigen::Matrix<S, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

// A block of at least `bytes` from the kernels' pool (lstm.cpp, Pool): each thread keeps the
// blocks that calls give back, up to 256 MiB, for its next calls. A training step then reuses
// the last one's workspace instead of faulting in and clearing fresh pages (b64-h512: 64 page
// faults a step instead of ~920). Made and freed inside an ISA module only.
struct PoolBlock {
  void* p = nullptr;
  std::size_t cap = 0;
  explicit PoolBlock(std::size_t bytes);
  ~PoolBlock();
  PoolBlock(const PoolBlock&) = delete;
  PoolBlock& operator=(const PoolBlock&) = delete;
};

// A row-major [rows, cols] matrix in a PoolBlock, uninitialised (as Mat's constructor leaves
// it). Throws std::bad_alloc.
template <typename S>
class PoolMat : PoolBlock, public Eigen::Map<Mat<S>> {
 public:
  PoolMat(Index rows, Index cols)
      : PoolBlock(bytes(rows, cols)), Eigen::Map<Mat<S>>(static_cast<S*>(p), rows, cols) {}
  using Eigen::Map<Mat<S>>::operator=;

 private:
  static std::size_t bytes(Index rows, Index cols) {
    const auto r = std::size_t(rows), c = std::size_t(cols);
    if (rows < 0 || cols < 0 || (c && r > (std::size_t(-1) / 2) / sizeof(S) / c))
      throw std::bad_alloc();
    return r * c * sizeof(S);
  }
};

struct Dims {
  Index T = 0, B = 0, I = 0, H = 0;
  bool batch_first = false;
  Index P = 0;
  Index R() const { return P ? P : H; }  // units of h
  Index row(Index t, Index b) const { return batch_first ? b * T + t : t * B + b; }
  // Row r of y (forward) and of dy (backward) starts at r * y_stride(): ldy = 0 packs the rows
  // (R apart); a wider stride lets each pass of a bidirectional layer write y into, and read
  // dy from, its half of the layer's [T, B, 2R] arrays, with no copy.
  Index ldy = 0;
  Index y_stride() const { return ldy ? ldy : R(); }
};

template <typename S>
struct Options {
  const std::int64_t* lengths = nullptr;  // [B], or nullptr: every sequence has T steps
  bool reverse = false;
  const S* w_hr = nullptr;                // [P, H], when Dims::P > 0
  const S* peephole = nullptr;            // [3, H]: p_i, p_f, p_o
  S clip = 0;                             // 0: no clip
  bool input_forget = false;
  double zoneout_h = 0, zoneout_c = 0;    // probabilities in [0, 1]
  double recurrent_dropout = 0;           // in [0, 1); training only
  std::uint64_t seed = 0, stream = 0;
  const S* ln = nullptr;  // [10H] layer norm: gain_x [4H], gain_h [4H], gain_c [H], bias_c [H]
  // Layer-norm inference of one step (T = 1) without packed weights: the products as dot
  // products of the weights as they are, not packed panels (LSTM.step; other rounding).
  bool dots = false;
  // Dropout on this pass's output (between layers, training; lstmx.LSTM), fused: drop is the
  // mask, laid out as y (rows Dims::y_stride() apart). The forward also writes y * drop into
  // y_drop (the next layer's input, laid out as y); the backward takes dy as the gradient of
  // y_drop and multiplies it by drop as it reads it. The caller keeps drop alive until then.
  const S* drop = nullptr;
  S* y_drop = nullptr;
  bool plain() const {
    return !peephole && clip == 0 && !input_forget && zoneout_h == 0 && zoneout_c == 0 &&
           recurrent_dropout == 0 && !ln && !drop;
  }
};

// The masks' counter-based hash: a uniform number in [0, 1) with 24 bits (exact in float32)
// from (seed, stream, idx). reference.uniform computes the same numbers in NumPy.
inline double uniform(std::uint64_t seed, std::uint64_t stream, std::uint64_t idx) {
  std::uint64_t z = seed + (stream + 1) * 0x9E3779B97F4A7C15ull + idx * 0xD1B54A32D192ED03ull;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  z ^= z >> 31;
  return double(z >> 40) * 0x1p-24;
}

// The order in which the kernels visit tokens (see "Visiting order" above). Throws
// std::invalid_argument if a length is outside [0, T].
struct Seq {
  Index T = 0, B = 0, N = 0;  // N: tokens, the sum of the lengths
  std::vector<Index> perm;    // [B]     user batch index of entry k
  std::vector<Index> len;     // [B]     length of entry k (non-increasing)
  std::vector<Index> n;       // [T + 1] entries active at step s (n[T] = 0)
  std::vector<Index> off;     // [T + 1] position of token (s, 0); off[T] = N
  std::vector<Index> row;     // [N]     row in x's layout of the token at each position
  Seq(const Dims& d, const std::int64_t* lengths, bool reverse);
  std::size_t nbytes() const;
};

// Which implementation to run. Naive is the plain reference (Eigen GEMMs, scalar cell loops,
// one thread) that sits beside the fast kernels.
enum class Kernel { Fast = 0, Naive = 1 };

// The training workspace: everything backward reads from the forward pass, sized once, up
// front, by the constructor (in blocks of the pool). Per-token buffers are packed (position
// off[s] + k, N rows).
template <typename S>
struct Cache {
  Dims d;
  Options<S> opt;  // lengths: nullptr (seq has them); peephole: points at peep
  Seq seq;
  PoolMat<S> x;      // [N, I]   copy of the input, rows in visiting order
  // Copies of the weights used, as the backward kernels read them: Plain panels (lstm.cpp,
  // pack) of 4V columns over K = 4H rows, written by the forward's threads.
  PoolMat<S> w_ih;   // [ceil(I / 4V) 4H, 4V]  W_ih, column panels of 4V inputs
  PoolMat<S> w_hh;   // [ceil(R / 4V) 4H, 4V]  W_hh, column panels of 4V units of h
  PoolMat<S> w_hr;   // [P, H]   (or empty)
  PoolMat<S> peep;   // [3, H]   copy of the peepholes (or empty)
  PoolMat<S> gates;  // [N, 4H]  activated gates i, f, g, o of every token (f = 1 - i if coupled)
  PoolMat<S> hprev;  // [N, R]   h_{t-1} * m (recurrent dropout) of every token
  PoolMat<S> r;      // [N, H]   o * tanh(c_t) of every token, when projected (or empty)
  PoolMat<S> c;      // [N, H]   c_t of every token (after zoneout)
  PoolMat<S> c0;     // [B, H]   c_0, by entry k
  // layer norm only (else empty):
  PoolMat<S> ln;     // [1, 10H] copy of gain_x, gain_h, gain_c, bias_c
  PoolMat<S> nx;     // [N, 4H]  LN(x W_ih^T) before the gain: (zx - mean) * rstd
  PoolMat<S> nh;     // [N, 4H]  LN(h_{t-1} W_hh^T), likewise
  PoolMat<S> nc;     // [N, H]   LN(c_t) before gain_c and bias_c (c_t before zoneout)
  PoolMat<S> rstd;   // [N, 3]   1 / sqrt(var + eps) of zx, zh and c_t
  Cache(const Dims& dims, const Options<S>& o);
  std::size_t nbytes() const;
};

// Weights packed once for the fast forward kernels (the panels of W_ih^T, W_hh^T and W_hr^T
// that they otherwise pack at the start of every call): for inference on fixed weights, as an
// inference server runs (ONNX Runtime packs at session creation). Opaque; made and freed by the
// ISA module whose kernels read it (the panel width is the module's SIMD width). The layout
// does not depend on the thread count. Made with kHalf (float only), it also holds the panels
// of W_ih^T and W_hh^T as IEEE float16, which lstm_step reads instead (half the bytes; every
// weight must be a float16 value, so the results are those of the float32 panels, bitwise).
// Made with kInt8 (float only), it holds W_ih^T and W_hh^T only as int8, each row of W_ih and
// W_hh with its own scale, for lstm_step only (a quarter of the bytes; the forward kernels
// refuse it): a step quantizes each row of x and h likewise, sums the products of the integers
// exactly (vpdpbusd where the CPU has AVX512-VNNI) and scales the sums (dynamic quantization,
// as torch.ao's quantized dynamic LSTM; lstm.cpp, q_scale, has the rounding).
enum Quant : int { kNone = 0, kHalf = 1, kInt8 = 2 };
template <typename S>
struct Packed;

// ---- The sequence: forward and backward through time ---------------------------------------

// x [T,B,I] or [B,T,I]; h0 [B, R], c0 [B, H] or nullptr (zeros); bias [4H] or nullptr.
// Writes y (layout of x), h_n [B, R], c_n [B, H]. A scratch holds the input projection of about
// 192 tokens at a time. With cache == nullptr (inference) only the state is kept; otherwise cache
// (constructed with the same dims and options) is filled for backward, and masks are random.
// The naive kernel implements lengths and reverse but no other option (std::invalid_argument).
// packed (or nullptr: pack per call) must hold w_ih, w_hh and opt.w_hr, packed for d's sizes;
// the fast kernels then read the weights from it only.
template <typename S>
void lstm_forward(Kernel k, int threads, const Dims& d, const Options<S>& opt, const S* x,
                  const S* w_ih, const S* w_hh, const S* bias, const S* h0, const S* c0, S* y,
                  S* h_n, S* c_n, Cache<S>* cache, const Packed<S>* packed = nullptr);

// What backward writes. db is the gradient of b_ih and of b_hh alike; dpeep and dw_hr are
// written when the forward pass had peepholes, a projection or layer norm.
template <typename S>
struct Grads {
  S* dx;     // layout of x
  S* dh0;    // [B, R]
  S* dc0;    // [B, H]
  S* dw_ih;  // [4H, I]
  S* dw_hh;  // [4H, R]
  S* db;     // [4H]
  S* dpeep;  // [3, H] or nullptr
  S* dw_hr;  // [P, H] or nullptr
  S* dln = nullptr;  // [10H] (gain_x, gain_h, gain_c, bias_c) or nullptr
  bool dx_add = false;  // dx += this pass's (a bidirectional layer's second pass), not dx =
};

// dy (layout of x) or nullptr; dh_n [B, R], dc_n [B, H] or nullptr (zeros). The reverse loop
// reads every cache buffer; the weight gradients are GEMMs after it.
template <typename S>
void lstm_backward(Kernel k, int threads, const Cache<S>& cache, const S* dy, const S* dh_n,
                   const S* dc_n, const Grads<S>& g);

// ---- One step, for streaming inference ------------------------------------------------------

// One layer of lstm_step: its parameters as lstm_forward takes them (bias split in two).
template <typename S>
struct StepLayer {
  const S* w_ih;      // [4H, I_k]  I_0 = I, I_k = R above
  const S* w_hh;      // [4H, R]
  const S* b_ih;      // [4H] or nullptr (then b_hh is unused)
  const S* b_hh;      // [4H]
  const S* w_hr;      // [P, H] when d.P > 0
  const S* peephole;  // [3, H] or nullptr
  const Packed<S>* packed = nullptr;  // w_ih, w_hh, w_hr packed for this layer's sizes (then
                                      // read from it only), or nullptr: read as they are
};

// One time step of inference through L stacked layers, for streaming at small batch sizes:
// x [B, I]; h [L, B, R], c [L, B, H] the state; writes the new state h_out [L, B, R], c_out
// [L, B, H] (not overlapping the inputs; y is h_out[L - 1]). Reads W_ih and W_hh as they are,
// without packing (no per-call copy of the weights): each thread owns a slice of hidden units
// and computes its gates as dot products, a unit's 4 gate rows against up to 4 batch entries at
// a time; one barrier per layer (two with a projection). A
// layer with packed weights (LSTM.freeze) runs the forward kernels' panels instead: one
// sequential stream of weights per thread, no reductions across lanes; float16 panels where
// the Packed has them (the same sums in the same order: bitwise the float32 panels' results),
// int8 ones where it has those (then x and h are quantized too: see Packed).
// Options: clip, input_forget, zoneout_h/c (their expectation); the peepholes
// come per layer. Layer norm, lengths, reverse and dropout throw std::invalid_argument. The
// results equal lstm_forward's over T = 1 up to rounding (sums run in another order).
template <typename S>
void lstm_step(int threads, const Dims& d, Index L, const StepLayer<S>* layers,
               const Options<S>& opt, const S* x, const S* h, const S* c, S* h_out, S* c_out);

// ---- The table each ISA module exports to lstmx._core ------------------------------------------
// Caches are created and freed inside the module that uses them (Eigen's alignment differs
// between ISA builds).
template <typename S>
struct KernelTable {
  Cache<S>* (*cache_new)(const Dims&, const Options<S>&);
  void (*cache_free)(Cache<S>*);
  std::size_t (*cache_nbytes)(const Cache<S>*);
  void (*forward)(Kernel, int, const Dims&, const Options<S>&, const S*, const S*, const S*,
                  const S*, const S*, const S*, S*, S*, S*, Cache<S>*, const Packed<S>*);
  // W_ih [4H, I], W_hh [4H, R], W_hr [P, H] (d.P > 0) packed for d's I, H and P, by threads;
  // quant (Quant) kHalf: W_ih^T and W_hh^T in float16 too (std::invalid_argument unless S is
  // float and every weight of W_ih and W_hh is a float16 value); kInt8: those two in int8
  // instead (std::invalid_argument unless S is float and they are finite).
  Packed<S>* (*packed_new)(int threads, const Dims& d, const S* w_ih, const S* w_hh,
                           const S* w_hr, int quant);
  void (*packed_free)(Packed<S>*);
  std::size_t (*packed_nbytes)(const Packed<S>*);
  void (*backward)(Kernel, int, const Cache<S>&, const S*, const S*, const S*, const Grads<S>&);
  void (*step)(int, const Dims&, Index, const StepLayer<S>*, const Options<S>&, const S*,
               const S*, const S*, S*, S*);
  // Test hook: the fast kernels' vectorised sigmoid and tanh of x [n] into sig, th [n].
  void (*activations)(Index n, const S* x, S* sig, S* th);
};

constexpr int kBackendAbi = 9;
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
