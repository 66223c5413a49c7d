// bindings.cpp — the one file that includes pybind11: builds the private module lstmx._core.
// The public, checked API is python/lstmx; this layer re-checks dtype, contiguity and shape
// (so a direct call cannot crash the process), allocates the outputs, and releases the GIL
// around compute.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <initializer_list>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <tuple>
#include <vector>

#include "dispatch.h"
#include "lstmx.h"

namespace py = pybind11;
using lstmx::Dims;
using lstmx::Index;
using lstmx::Kernel;

namespace {

std::string shape_str(const std::vector<Index>& s) {
  std::string r = "(";
  for (size_t k = 0; k < s.size(); ++k) r += (k ? ", " : "") + std::to_string(s[k]);
  return r + (s.size() == 1 ? ",)" : ")");
}

// A C-contiguous, aligned array of exactly dtype S and the given shape, or None (nullptr).
// (No allocation unless it throws: a streaming step checks a dozen arrays per call.)
template <typename S>
const S* in_ptr(const py::object& o, const char* name, const Index* shape, std::size_t ndim) {
  if (o.is_none()) return nullptr;
  if (!py::isinstance<py::array_t<S>>(o))
    throw py::type_error(std::string(name) + ": expected a numpy array of " +
                         (sizeof(S) == 4 ? "float32" : "float64"));
  auto a = py::reinterpret_borrow<py::array>(o);
  if (!(a.flags() & py::array::c_style))
    throw py::value_error(std::string(name) + ": expected a C-contiguous array");
  if (!(a.flags() & py::detail::npy_api::NPY_ARRAY_ALIGNED_))
    throw py::value_error(std::string(name) + ": expected an aligned array");
  if (std::size_t(a.ndim()) != ndim || !std::equal(shape, shape + ndim, a.shape()))
    throw py::value_error(std::string(name) + ": expected shape " +
                          shape_str(std::vector<Index>(shape, shape + ndim)) + ", got " +
                          shape_str(std::vector<Index>(a.shape(), a.shape() + a.ndim())));
  return static_cast<const S*>(a.data());
}
template <typename S>
const S* in_ptr(const py::object& o, const char* name, std::initializer_list<Index> shape) {
  return in_ptr<S>(o, name, shape.begin(), shape.size());
}
template <typename S>
const S* in_ptr(const py::object& o, const char* name, const std::vector<Index>& shape) {
  return in_ptr<S>(o, name, shape.data(), shape.size());
}

// y or dy: an array of exactly dtype S and shape [n0, n1, R] whose rows, in the order of
// Dims::row, start ys >= R elements apart: C-contiguous (ys = R), or one pass's columns of a
// wider C-contiguous array (its half of a bidirectional layer's y). Returns ys.
template <typename S>
Index row_stride(const py::object& o, const char* name, Index n0, Index n1, Index R,
                 bool writeable) {
  const std::string n(name);
  if (!py::isinstance<py::array_t<S>>(o))
    throw py::type_error(n + ": expected a numpy array of " +
                         (sizeof(S) == 4 ? "float32" : "float64"));
  auto a = py::reinterpret_borrow<py::array>(o);
  if (a.ndim() != 3 || a.shape(0) != n0 || a.shape(1) != n1 || a.shape(2) != R)
    throw py::value_error(n + ": expected shape " + shape_str({n0, n1, R}) + ", got " +
                          shape_str(std::vector<Index>(a.shape(), a.shape() + a.ndim())));
  if (writeable && !a.writeable()) throw py::value_error(n + ": expected a writeable array");
  if (!(a.flags() & py::detail::npy_api::NPY_ARRAY_ALIGNED_))
    throw py::value_error(n + ": expected an aligned array");
  if (n0 * n1 * R == 0) return R;
  const Index e = Index(sizeof(S)), s0 = a.strides(0), s1 = a.strides(1), s2 = a.strides(2);
  const Index ys = n1 > 1 ? s1 / e : n0 > 1 ? s0 / e : R;
  if ((R > 1 && s2 != e) || ys < R || (n1 > 1 && s1 != ys * e) || (n0 > 1 && s0 != n1 * ys * e))
    throw py::value_error(n + ": expected rows of " + std::to_string(R) +
                          " contiguous elements, equally spaced in the order of y's rows");
  return ys;
}

[[noreturn]] void memory_error(const std::string& msg) {
  PyErr_SetString(PyExc_MemoryError, msg.c_str());
  throw py::error_already_set();
}

// Refuses sizes whose buffers' element counts overflow (zero-sized arrays can have absurd
// dimensions) before anything is computed from them. No buffer exceeds [max(T*B, 4H), 4(I+H)].
template <typename S>
void check_sizes(const Dims& d) {
  const Index lim = PTRDIFF_MAX / Index(8 * sizeof(S));
  Index rows = 0, n = 0;
  if (d.I > lim || d.H > lim || __builtin_mul_overflow(d.T, d.B, &rows) ||
      __builtin_mul_overflow(std::max(rows, 4 * d.H), 4 * (d.I + d.H), &n) || n > lim)
    memory_error("x, w_hh: T = " + std::to_string(d.T) + ", B = " + std::to_string(d.B) +
                 ", I = " + std::to_string(d.I) + ", H = " + std::to_string(d.H) +
                 " is too large for any machine's memory");
}

// Large outputs (a block of 2 MiB or more, on huge pages) come from blocks that earlier
// outputs left: once Python frees an array, its block is kept here, up to 256 MiB in all and 16
// blocks, for the next call's outputs. Repeated calls then write into pages
// already faulted in, instead of faulting in and clearing fresh ones, which malloc would give
// (b64-h1024 training: 45 MiB of outputs a call, clearing them ~3% of its time). Process-wide,
// behind a mutex: arrays are freed on any thread. Never destroyed (a capsule may be freed after
// static destructors have run); what it keeps stays reachable.
class OutBlocks {
 public:
  // A 64-byte aligned block of at least `bytes`, its capacity in `cap` (alloc_block's).
  static void* take(std::size_t bytes, std::size_t& cap) {
    if (bytes < lstmx::kHuge) return lstmx::alloc_block(bytes, cap);
    State& s = state();
    std::lock_guard<std::mutex> lock(s.mu);
    return s.kept.take(bytes, cap);
  }
  static void give(void* p, std::size_t cap) noexcept {
    if (cap < lstmx::kHuge) return std::free(p);
    State& s = state();
    std::lock_guard<std::mutex> lock(s.mu);
    s.kept.keep(p, cap);
  }

 private:
  struct State {
    std::mutex mu;
    lstmx::KeptBlocks kept{std::size_t(256) << 20, 16};
  };
  static State& state() {
    static State* s = new State;
    return *s;
  }
};

// Outputs are 64-byte aligned: Eigen's vectorised loops peel by address, so a fixed alignment
// makes every result depend on the shape alone, never on where the allocator put it.
// out_block: a 64-byte aligned block of `bytes` at `data`, freed with the capsule returned,
// which the arrays made on it keep as their base.
py::capsule out_block(std::size_t bytes, void*& data) {
  using Block = std::pair<void*, std::size_t>;  // the capsule's: the block, its capacity
  auto blk = std::make_unique<Block>();
  blk->first = OutBlocks::take(bytes, blk->second);
  data = blk->first;
  py::capsule owner;
  try {
    owner = py::capsule(blk.get(), [](void* q) {
      const std::unique_ptr<Block> b(static_cast<Block*>(q));
      OutBlocks::give(b->first, b->second);
    });
  } catch (...) {
    OutBlocks::give(blk->first, blk->second);
    throw;
  }
  blk.release();  // the capsule owns it now
  return owner;
}

template <typename S>
py::array_t<S> out(const std::vector<Index>& shape) {
  std::size_t n = 1;
  for (Index s : shape) n *= std::size_t(s);
  void* data;
  const py::capsule owner = out_block(n * sizeof(S), data);
  return py::array_t<S>(std::vector<py::ssize_t>(shape.begin(), shape.end()),
                        static_cast<S*>(data), owner);
}

constexpr int kMaxThreads = 1024;

Kernel kernel_of(bool naive) { return naive ? Kernel::Naive : Kernel::Fast; }

template <typename S>
const lstmx::KernelTable<S>& table(const lstmx::Backend& b);
template <>
const lstmx::KernelTable<float>& table(const lstmx::Backend& b) { return b.f32; }
template <>
const lstmx::KernelTable<double>& table(const lstmx::Backend& b) { return b.f64; }

// The training workspace, created and freed by the kernel module that fills it.
template <typename S>
struct Cache {
  Dims d;
  bool peephole, ln;
  const lstmx::KernelTable<S>* k;
  lstmx::Cache<S>* p;
  py::object drop;  // the forward's Options::drop, which backward reads (or None)
  Cache(const Dims& dims, const lstmx::Options<S>& o, const lstmx::KernelTable<S>& kt)
      : d(dims), peephole(o.peephole), ln(o.ln), k(&kt), p(kt.cache_new(dims, o)) {}
  ~Cache() { k->cache_free(p); }
  Cache(const Cache&) = delete;
  Cache& operator=(const Cache&) = delete;
  std::size_t nbytes() const { return k->cache_nbytes(p); }
};

// Weights packed for the forward kernels (lstmx.h, Packed), made and freed by one ISA module.
template <typename S>
struct Packed {
  Index I, H, P;
  const lstmx::KernelTable<S>* k;
  std::string isa;
  lstmx::Packed<S>* p;
  int quant;  // lstmx::Quant
  Packed(const Dims& d, const lstmx::KernelTable<S>& kt, const char* isa_name, const S* w_ih,
         const S* w_hh, const S* w_hr, int q)
      : I(d.I), H(d.H), P(d.P), k(&kt), isa(isa_name),
        p(kt.packed_new(lstmx::num_threads(), d, w_ih, w_hh, w_hr, q)), quant(q) {}
  ~Packed() { k->packed_free(p); }
  Packed(const Packed&) = delete;
  Packed& operator=(const Packed&) = delete;
};

// The kernels' view of obj, a Packed of weights for d's I, H and P made by the kernels kt (or
// None: nullptr).
template <typename S>
const lstmx::Packed<S>* packed_ptr(const py::handle& obj, const Dims& d,
                                   const lstmx::KernelTable<S>& kt) {
  if (obj.is_none()) return nullptr;
  if (!py::isinstance<Packed<S>>(obj))
    throw py::type_error(std::string("packed: expected weights packed in ") +
                         (sizeof(S) == 4 ? "float32" : "float64"));
  const auto& w = obj.cast<const Packed<S>&>();
  if (w.I != d.I || w.H != d.H || w.P != d.P)
    throw py::value_error("packed: made for I, H, P = " + std::to_string(w.I) + ", " +
                          std::to_string(w.H) + ", " + std::to_string(w.P) + ", got " +
                          std::to_string(d.I) + ", " + std::to_string(d.H) + ", " +
                          std::to_string(d.P));
  if (w.k != &kt)
    throw py::value_error("packed: made by the " + w.isa + " kernels, but " +
                          lstmx::backend().isa + " is active now: pack (freeze) again");
  return w.p;
}

// The variants of one call (lstmx.h, Options), as passed by lstmx.functional.
struct Variant {
  py::object lengths = py::none(), peephole = py::none(), w_hr = py::none();
  py::object layer_norm = py::none();  // (gain_x [4H], gain_h [4H], gain_c [H], bias_c [H])
  bool reverse = false, input_forget = false;
  double clip = 0, zoneout_h = 0, zoneout_c = 0, recurrent_dropout = 0;
  std::uint64_t seed = 0, stream = 0;
  py::object packed = py::none();  // a Packed_f32/f64 of these weights, or None
  bool dots = false;               // Options::dots
  py::object drop = py::none(), y_drop = py::none();  // Options::drop, y_drop (laid out as y)
};

// ln: receives the layer-norm arrays, concatenated (Options::ln points at it).
template <typename S>
lstmx::Options<S> options(const Variant& v, const Dims& d, std::vector<S>& ln) {
  lstmx::Options<S> o;
  if (!v.layer_norm.is_none()) {
    if (!py::isinstance<py::tuple>(v.layer_norm) || py::len(v.layer_norm) != 4)
      throw py::type_error("layer_norm: expected a tuple (gain_x, gain_h, gain_c, bias_c)");
    const auto t = py::reinterpret_borrow<py::tuple>(v.layer_norm);
    const char* names[4] = {"layer_norm[0] (gain_x)", "layer_norm[1] (gain_h)",
                            "layer_norm[2] (gain_c)", "layer_norm[3] (bias_c)"};
    ln.clear();
    for (int i = 0; i < 4; ++i) {
      const Index n = i < 2 ? 4 * d.H : d.H;
      const S* a = in_ptr<S>(t[i], names[i], {n});
      ln.insert(ln.end(), a, a + n);
    }
    o.ln = ln.data();
  }
  if (!v.lengths.is_none()) {
    if (!py::isinstance<py::array_t<std::int64_t>>(v.lengths))
      throw py::type_error("lengths: expected a numpy array of int64");
    o.lengths = in_ptr<std::int64_t>(v.lengths, "lengths", {d.B});
  }
  o.peephole = in_ptr<S>(v.peephole, "peephole", {3, d.H});
  o.w_hr = in_ptr<S>(v.w_hr, "w_hr", {d.P, d.H});
  for (auto [name, p, hi] : {std::tuple{"zoneout_h", v.zoneout_h, 1.0},
                             std::tuple{"zoneout_c", v.zoneout_c, 1.0},
                             std::tuple{"recurrent_dropout", v.recurrent_dropout, 0.0}})
    if (!(p >= 0 && (p < 1 || p <= hi)))
      throw py::value_error(std::string(name) + ": expected a probability in [0, 1" +
                            (hi ? "]" : ")") + ", got " + std::to_string(p));
  if (!(v.clip >= 0)) throw py::value_error("clip: expected a positive number or 0 (none)");
  o.reverse = v.reverse, o.clip = S(v.clip), o.input_forget = v.input_forget;
  o.zoneout_h = v.zoneout_h, o.zoneout_c = v.zoneout_c, o.recurrent_dropout = v.recurrent_dropout;
  o.seed = v.seed, o.stream = v.stream, o.dots = v.dots;
  return o;
}

template <typename S>
py::tuple forward(const py::array& x, const py::array& w_ih, const py::array& w_hh,
                  const py::object& bias, const py::object& h0, const py::object& c0,
                  bool batch_first, bool training, bool naive, const Variant& v,
                  const py::object& y_out) {
  if (x.ndim() != 3) throw py::value_error("x: expected a 3-D array");
  if (w_hh.ndim() != 2 || w_hh.shape(0) % 4)
    throw py::value_error("w_hh: expected a 2-D array [4H, R]");
  Dims d;
  d.batch_first = batch_first;
  d.T = x.shape(batch_first ? 1 : 0), d.B = x.shape(batch_first ? 0 : 1), d.I = x.shape(2);
  d.H = w_hh.shape(0) / 4;
  if (!v.w_hr.is_none()) {
    d.P = w_hh.shape(1);
    if (d.P == 0 || d.P >= d.H) throw py::value_error("w_hr: expected 0 < P < H");
  } else if (w_hh.shape(1) != d.H) {
    throw py::value_error("w_hh: expected shape [4H, H] without w_hr");
  }
  check_sizes<S>(d);
  const Index R = d.R();
  const S* px = in_ptr<S>(x, "x", {x.shape(0), x.shape(1), d.I});
  const S* pwih = in_ptr<S>(w_ih, "w_ih", {4 * d.H, d.I});
  const S* pwhh = in_ptr<S>(w_hh, "w_hh", {4 * d.H, R});
  const S* pb = in_ptr<S>(bias, "bias", {4 * d.H});
  const S* ph0 = in_ptr<S>(h0, "h0", {d.B, R});
  const S* pc0 = in_ptr<S>(c0, "c0", {d.B, d.H});
  std::vector<S> ln;
  lstmx::Options<S> opt = options<S>(v, d, ln);
  // The inputs' bytes [a, b), which no output given by the caller may share: the kernels read
  // them while they write y (and y_drop).
  using Span = std::pair<const char*, const char*>;
  const auto span = [](const void* p, Index bytes) {
    const auto* a = static_cast<const char*>(p);
    return Span{a, a ? a + bytes : a};
  };
  const Index e = sizeof(S);
  const auto rows = [&](const py::object& o, Index ys) {  // a y-shaped array, rows ys apart
    return span(py::reinterpret_borrow<py::array>(o).data(),
                d.T * d.B ? ((d.T * d.B - 1) * ys + R) * e : 0);
  };
  std::vector<Span> inputs = {
      span(px, d.T * d.B * d.I * e), span(pwih, 4 * d.H * d.I * e), span(pwhh, 4 * d.H * R * e),
      span(pb, 4 * d.H * e), span(ph0, d.B * R * e), span(pc0, d.B * d.H * e),
      span(opt.peephole, 3 * d.H * e), span(opt.w_hr, d.P * d.H * e),
      span(opt.lengths, d.B * Index(sizeof(std::int64_t)))};
  const auto check_apart = [&](const Span& o, const char* what) {
    for (const auto& [a, b] : inputs)
      if (a && o.first < b && a < o.second) throw py::value_error(what);
  };
  py::array y;  // into y_out when given: rows d.ldy apart
  if (y_out.is_none()) {
    y = out<S>({x.shape(0), x.shape(1), R});
  } else {
    const Index ys = row_stride<S>(y_out, "y_out", x.shape(0), x.shape(1), R, true);
    d.ldy = ys == R ? 0 : ys;
    y = py::reinterpret_borrow<py::array>(y_out);
    check_apart(rows(y, ys), "y_out: shares memory with an input");
  }
  if (!v.drop.is_none() || !v.y_drop.is_none()) {  // dropout after the pass: both, laid out as y
    if (!training) throw py::value_error("drop: training only");
    const Index ys = d.ldy ? d.ldy : R;
    for (auto [o, name, w] : {std::tuple{&v.drop, "drop", false}, {&v.y_drop, "y_drop", true}})
      if (row_stride<S>(*o, name, x.shape(0), x.shape(1), R, w) != ys)
        throw py::value_error(std::string(name) + ": expected rows " + std::to_string(ys) +
                              " elements apart, as y's");
    inputs.push_back(rows(v.drop, ys));  // read as y is written
    check_apart(rows(y, ys), "drop: shares memory with y");
    inputs.push_back(rows(y, ys));
    check_apart(rows(v.y_drop, ys), "y_drop: shares memory with y or an input");
    opt.drop = static_cast<const S*>(py::reinterpret_borrow<py::array>(v.drop).data());
    opt.y_drop = static_cast<S*>(py::reinterpret_borrow<py::array>(v.y_drop).mutable_data());
  }
  auto hn = out<S>({d.B, R}), cn = out<S>({d.B, d.H});
  S *py_ = static_cast<S*>(y.mutable_data()), *phn = hn.mutable_data(), *pcn = cn.mutable_data();
  const auto& kt = table<S>(lstmx::backend());
  const lstmx::Packed<S>* pk = packed_ptr<S>(v.packed, d, kt);
  std::shared_ptr<Cache<S>> cache;
  {
    py::gil_scoped_release nogil;
    if (training) cache = std::make_shared<Cache<S>>(d, opt, kt);
    kt.forward(kernel_of(naive), lstmx::num_threads(), d, opt, px, pwih, pwhh, pb, ph0, pc0, py_,
               phn, pcn, cache ? cache->p : nullptr, pk);
  }
  if (cache) cache->drop = v.drop;  // backward reads it
  return py::make_tuple(y, hn, cn, cache ? py::cast(cache) : py::none());
}

template <typename S>
py::tuple backward(const Cache<S>& cache, const py::object& dy, const py::object& dh_n,
                   const py::object& dc_n, bool naive, const py::object& dx_add) {
  const Dims& d = cache.d;
  const Index R = d.R();
  const std::vector<Index> yshape =
      d.batch_first ? std::vector<Index>{d.B, d.T, R} : std::vector<Index>{d.T, d.B, R};
  const S* pdy = nullptr;  // rows as the forward's y
  if (!d.ldy) {
    pdy = in_ptr<S>(dy, "dy", yshape);
  } else if (!dy.is_none()) {
    if (row_stride<S>(dy, "dy", yshape[0], yshape[1], R, false) != d.ldy)
      throw py::value_error("dy: expected rows " + std::to_string(d.ldy) +
                            " elements apart, as the forward's y_out had");
    pdy = static_cast<const S*>(py::reinterpret_borrow<py::array>(dy).data());
  }
  const S* pdhn = in_ptr<S>(dh_n, "dh_n", {d.B, R});
  const S* pdcn = in_ptr<S>(dc_n, "dc_n", {d.B, d.H});
  py::array_t<S> dx;  // new, or dx_add (dx += this pass's)
  if (dx_add.is_none()) {
    dx = out<S>({yshape[0], yshape[1], d.I});
  } else {
    if (!py::isinstance<py::array_t<S>>(dx_add))
      throw py::type_error(std::string("dx_add: expected a numpy array of ") +
                           (sizeof(S) == 4 ? "float32" : "float64"));
    dx = py::reinterpret_borrow<py::array_t<S>>(dx_add);
    if (dx.ndim() != 3 || dx.shape(0) != yshape[0] || dx.shape(1) != yshape[1] ||
        dx.shape(2) != d.I || !(dx.flags() & py::array::c_style) || !dx.writeable() ||
        !(dx.flags() & py::detail::npy_api::NPY_ARRAY_ALIGNED_))
      throw py::value_error("dx_add: expected a writeable, aligned, C-contiguous array of "
                            "shape " + shape_str({yshape[0], yshape[1], d.I}) + " (x's)");
    const auto* a = reinterpret_cast<const char*>(dx.data());
    const auto* b = reinterpret_cast<const char*>(pdy);
    const Index ys = d.ldy ? d.ldy : R, n = d.T * d.B;
    if (b && n && a < b + ((n - 1) * ys + R) * Index(sizeof(S)) && b < a + dx.nbytes())
      throw py::value_error("dx_add: shares memory with dy");
  }
  auto dh0 = out<S>({d.B, R}), dc0 = out<S>({d.B, d.H});
  auto dwih = out<S>({4 * d.H, d.I}), dwhh = out<S>({4 * d.H, R});
  auto db = out<S>({4 * d.H});
  // present with peepholes, a projection, layer norm
  py::object dpeep = py::none(), dwhr = py::none(), dln = py::none();
  lstmx::Grads<S> g{dx.mutable_data(), dh0.mutable_data(), dc0.mutable_data(),
                    dwih.mutable_data(), dwhh.mutable_data(), db.mutable_data(), nullptr,
                    nullptr};
  g.dx_add = !dx_add.is_none();
  if (cache.peephole) {
    auto a = out<S>({3, d.H});
    g.dpeep = a.mutable_data();
    dpeep = a;
  }
  if (d.P) {
    auto a = out<S>({d.P, d.H});
    g.dw_hr = a.mutable_data();
    dwhr = a;
  }
  py::array_t<S> dlnv;  // [10H]: dgain_x, dgain_h, dgain_c, dbias_c
  if (cache.ln) {
    dlnv = out<S>({10 * d.H});
    g.dln = dlnv.mutable_data();
  }
  {
    py::gil_scoped_release nogil;
    // The cache's own module runs backward, whatever ISA is active now.
    cache.k->backward(kernel_of(naive), lstmx::num_threads(), *cache.p, pdy, pdhn, pdcn, g);
  }
  if (cache.ln) {
    const py::ssize_t G = 4 * d.H, H = d.H;
    auto part = [&](py::ssize_t a, py::ssize_t n) { return dlnv[py::slice(a, a + n, 1)]; };
    dln = py::make_tuple(part(0, G), part(G, G), part(2 * G, H), part(2 * G + H, H));
  }
  return py::make_tuple(dx, dh0, dc0, dwih, dwhh, db, dpeep, dwhr, dln);
}

// The arguments of a streaming step through L layers (lstmx.h, lstm_step) but its input and
// state, checked once: LSTM.step keeps one while its parameter arrays stay the same objects,
// FrozenLSTM.step for good. layers is a sequence of L tuples (w_ih, w_hh, b_ih, b_hh, w_hr,
// peephole[, packed]), None where absent; packed (from pack()) is read instead of w_ih, w_hh
// and w_hr.
template <typename S>
struct StepPlan {
  py::list layers;  // the tuples: they keep the arrays alive
  Dims d;           // I, H, P (B comes with each call)
  Index L;
  std::vector<lstmx::StepLayer<S>> ls;
  lstmx::Options<S> opt;
  const lstmx::KernelTable<S>* packed_by = nullptr;  // the kernels that packed, if any layer is
  py::object state_type;  // (h, c) -> the state that call() returns (lstmx.StreamState)
  bool state_tuple;       // state_type is a tuple subclass without a __dict__ (a NamedTuple)
  py::tuple names, params;  // the owner's attribute names, and the arrays the plan came from
  py::dtype dtype = py::dtype::of<S>();  // numpy's own, which most arrays of S share

  StepPlan(const py::sequence& layer_seq, double clip, bool input_forget, double zoneout_h,
           double zoneout_c, py::object state, py::tuple owner_names, py::tuple owner_params)
      : layers(layer_seq), state_type(std::move(state)), names(std::move(owner_names)),
        params(std::move(owner_params)) {
    auto* t = reinterpret_cast<PyTypeObject*>(state_type.ptr());
    state_tuple = PyType_Check(state_type.ptr()) && PyType_IsSubtype(t, &PyTuple_Type) &&
                  t->tp_dictoffset == 0 && t->tp_init == PyTuple_Type.tp_init;
    L = Index(py::len(layers));
    if (L < 1) throw py::value_error("layers: expected at least one layer");
    if (names.size() != params.size())
      throw py::value_error("names, params: expected tuples of the same length");
    const py::tuple t0 = layers[0].cast<py::tuple>();
    if (t0.size() < 2 || !py::isinstance<py::array>(t0[0]) || !py::isinstance<py::array>(t0[1]))
      throw py::value_error("layers: expected tuples (w_ih, w_hh, ...) of arrays");
    const auto w_ih = t0[0].cast<py::array>(), w_hh = t0[1].cast<py::array>();
    if (w_ih.ndim() != 2 || w_hh.ndim() != 2 || w_hh.shape(0) % 4)
      throw py::value_error("layers[0]: expected w_ih [4H, I] and w_hh [4H, R]");
    d.T = 1, d.I = w_ih.shape(1), d.H = w_hh.shape(0) / 4;
    const Index R = w_hh.shape(1);
    if (R != d.H) d.P = R;
    if (d.P && (d.P <= 0 || d.P >= d.H)) throw py::value_error("w_hh: expected 0 < P < H units");
    check_sizes<S>(d);
    ls.resize(L);
    const auto& kt = table<S>(lstmx::backend());
    for (Index k = 0; k < L; ++k) {
      const py::tuple t = layers[k].cast<py::tuple>();
      if (t.size() != 6 && t.size() != 7)
        throw py::value_error("layers: expected 6- or 7-tuples");
      Dims dk = d;
      dk.I = k ? R : d.I;
      auto& l = ls[k];
      l.w_ih = in_ptr<S>(t[0], "w_ih", {4 * d.H, dk.I});
      l.w_hh = in_ptr<S>(t[1], "w_hh", {4 * d.H, R});
      l.b_ih = in_ptr<S>(t[2], "b_ih", {4 * d.H});
      l.b_hh = in_ptr<S>(t[3], "b_hh", {4 * d.H});
      if (!l.b_ih != !l.b_hh) throw py::value_error("b_ih, b_hh: expected both or neither");
      l.w_hr = in_ptr<S>(t[4], "w_hr", {d.P, d.H});
      if (!d.P != !l.w_hr)
        throw py::value_error("w_hr: expected one exactly when w_hh has P < H columns");
      l.peephole = in_ptr<S>(t[5], "peephole", {3, d.H});
      if (t.size() == 7 && (l.packed = packed_ptr<S>(t[6], dk, kt))) packed_by = &kt;
    }
    Variant v;
    v.clip = clip, v.input_forget = input_forget, v.zoneout_h = zoneout_h;
    v.zoneout_c = zoneout_c;
    std::vector<S> ln;  // no layer norm
    opt = options<S>(v, d, ln);
  }

  // x [B, I], h [L, B, R], c [L, B, H] (checked) -> (y [B, R], h_new, c_new).
  py::tuple run(const py::array& x, const py::array& h, const py::array& c) const {
    if (x.ndim() != 2) throw py::value_error("x: expected a 2-D array [B, I]");
    if (h.ndim() != 3 || c.ndim() != 3)
      throw py::value_error("h, c: expected 3-D arrays [L, B, *]");
    if (h.shape(0) != L)
      throw py::value_error("layers: expected one tuple per layer of h, got " +
                            std::to_string(L) + " for " + std::to_string(h.shape(0)));
    const Index B = x.shape(0), R = d.R();
    const Outs o = run_on(B, in_ptr<S>(x, "x", {B, d.I}), in_ptr<S>(h, "h", {L, B, R}),
                          in_ptr<S>(c, "c", {L, B, d.H}));
    return py::make_tuple(o.y, o.h, o.c);
  }

  // The fast path of LSTM.step: (y, state_type(h_new, c_new)) if x is exactly a C-contiguous,
  // aligned numpy array [B, I] of S, state a tuple of such h [L, B, R] and c [L, B, H], and
  // owner (a dict, or None) still holds params under names; else None (the caller checks and
  // converts them, or makes a new plan).
  py::object call(const py::handle& x, const py::handle& state, const py::handle& owner) const {
    if (names.size() && !PyDict_Check(owner.ptr())) return py::none();
    for (std::size_t i = 0; i < names.size(); ++i) {
      PyObject* v = PyDict_GetItem(owner.ptr(), names[i].ptr());  // borrowed, or NULL
      if ((v ? v : Py_None) != params[i].ptr()) return py::none();
    }
    if (!PyTuple_Check(state.ptr()) || PyTuple_GET_SIZE(state.ptr()) != 2) return py::none();
    const S* px = exact(x, {-1, d.I});
    if (!px) return py::none();
    const Index B = py::detail::array_proxy(x.ptr())->dimensions[0];
    const S* ph = exact(PyTuple_GET_ITEM(state.ptr(), 0), {L, B, d.R()});
    const S* pc = exact(PyTuple_GET_ITEM(state.ptr(), 1), {L, B, d.H});
    if (!ph || !pc) return py::none();
    Outs o = run_on(B, px, ph, pc);
    py::object st;
    if (state_tuple) {  // what a NamedTuple's __new__ does (tuple.__new__), without the call
      auto* t = reinterpret_cast<PyTypeObject*>(state_type.ptr());
      st = py::reinterpret_steal<py::object>(t->tp_alloc(t, 2));
      if (!st) throw py::error_already_set();
      PyTuple_SET_ITEM(st.ptr(), 0, o.h.release().ptr());
      PyTuple_SET_ITEM(st.ptr(), 1, o.c.release().ptr());
    } else {
      st = state_type.is_none() ? py::make_tuple(o.h, o.c) : state_type(o.h, o.c);
    }
    return py::make_tuple(o.y, st);
  }

 private:
  struct Outs {
    py::array_t<S> y, h, c;  // [B, R], [L, B, R], [L, B, H]
  };
  // The step's outputs, one block for the three.
  Outs run_on(Index B, const S* px, const S* ph, const S* pc) const {
    Dims db = d;
    db.B = B;
    check_sizes<S>(db);
    const auto& kt = table<S>(lstmx::backend());
    if (packed_by && packed_by != &kt)
      throw py::value_error(std::string("packed: made by other kernels than the ") +
                            lstmx::backend().isa + " ones active now: pack (freeze) again");
    const Index R = d.R();
    constexpr Index A = 64 / sizeof(S);  // each array 64-byte aligned
    const Index ny = (B * R + A - 1) / A * A, nh = (L * B * R + A - 1) / A * A;
    void* data;
    const py::capsule owner = out_block((ny + nh + L * B * d.H) * sizeof(S), data);
    S* const p = static_cast<S*>(data);
    Outs o{py::array_t<S>({B, R}, p, owner), py::array_t<S>({L, B, R}, p + ny, owner),
           py::array_t<S>({L, B, d.H}, p + ny + nh, owner)};
    S *pho = p + ny, *pco = p + ny + nh;
    {
      py::gil_scoped_release nogil;
      kt.step(lstmx::num_threads(), db, L, ls.data(), opt, px, ph, pc, pho, pco);
      std::copy_n(pho + (L - 1) * B * R, B * R, p);
    }
    return o;
  }

  // The data of o if it is exactly a numpy.ndarray of S, C-contiguous and aligned, of this
  // shape (-1: any size); else nullptr. Raises nothing.
  const S* exact(const py::handle& o, std::initializer_list<Index> shape) const {
    const auto& api = py::detail::npy_api::get();
    if (Py_TYPE(o.ptr()) != reinterpret_cast<PyTypeObject*>(api.PyArray_Type_)) return nullptr;
    const auto* a = py::detail::array_proxy(o.ptr());
    if (a->descr != dtype.ptr() && !py::isinstance<py::array_t<S>>(o)) return nullptr;
    const int need = py::array::c_style | py::detail::npy_api::NPY_ARRAY_ALIGNED_;
    if ((a->flags & need) != need || std::size_t(a->nd) != shape.size()) return nullptr;
    for (std::size_t i = 0; i < shape.size(); ++i)
      if (shape.begin()[i] >= 0 && a->dimensions[i] != shape.begin()[i]) return nullptr;
    return reinterpret_cast<const S*>(a->data);
  }
};

// W_ih [4H, I], W_hh [4H, R], W_hr [P, H] or None, packed by the active kernels (half: with
// float16 panels of W_ih and W_hh too; int8: with int8 ones instead, for step_plan only).
template <typename S>
std::shared_ptr<Packed<S>> pack(const py::array& w_ih, const py::array& w_hh,
                                const py::object& w_hr, bool half, bool int8) {
  if (half && int8) throw py::value_error("half, int8: at most one of them");
  if ((half || int8) && !std::is_same_v<S, float>)
    throw py::type_error(std::string(half ? "half: float16" : "int8: int8") +
                         " panels need float32 weights, got float64");
  if (w_ih.ndim() != 2 || w_hh.ndim() != 2 || w_hh.shape(0) % 4 || w_ih.shape(0) != w_hh.shape(0))
    throw py::value_error("w_ih, w_hh: expected 2-D arrays [4H, I] and [4H, R]");
  Dims d;
  d.H = w_hh.shape(0) / 4, d.I = w_ih.shape(1);
  if (!w_hr.is_none()) {
    d.P = w_hh.shape(1);
    if (d.P == 0 || d.P >= d.H) throw py::value_error("w_hr: expected 0 < P < H");
  } else if (w_hh.shape(1) != d.H) {
    throw py::value_error("w_hh: expected shape [4H, H] without w_hr");
  }
  check_sizes<S>(d);
  const S* pwih = in_ptr<S>(w_ih, "w_ih", {4 * d.H, d.I});
  const S* pwhh = in_ptr<S>(w_hh, "w_hh", {4 * d.H, d.R()});
  const S* pwhr = in_ptr<S>(w_hr, "w_hr", {d.P, d.H});
  const auto& b = lstmx::backend();
  py::gil_scoped_release nogil;
  return std::make_shared<Packed<S>>(d, table<S>(b), b.isa, pwih, pwhh, pwhr,
                                     half ? lstmx::kHalf : int8 ? lstmx::kInt8 : lstmx::kNone);
}

template <typename S>
void bind_step(py::module_& m, const char* name) {
  py::class_<StepPlan<S>>(m, name, "A streaming step's checked layers and options.")
      .def("run", &StepPlan<S>::run, py::arg("x"), py::arg("h"), py::arg("c"),
           "x [B, I], h [L, B, R], c [L, B, H] -> (y [B, R], h_new, c_new).")
      .def("__call__", &StepPlan<S>::call, py::arg("x"), py::arg("state"), py::arg("owner"),
           "(y, state_type(h_new, c_new)), or None where an argument needs checking.");
}

template <typename S>
void bind_dtype(py::module_& m, const char* cache_name, const char* packed_name) {
  py::class_<Packed<S>, std::shared_ptr<Packed<S>>>(
      m, packed_name, "Weights packed for the forward kernels (lstmx.h, Packed).")
      .def_property_readonly("I", [](const Packed<S>& w) { return w.I; })
      .def_property_readonly("H", [](const Packed<S>& w) { return w.H; })
      .def_property_readonly("P", [](const Packed<S>& w) { return w.P; })
      .def_property_readonly("isa", [](const Packed<S>& w) { return w.isa; })
      .def_property_readonly("half", [](const Packed<S>& w) { return w.quant == lstmx::kHalf; })
      .def_property_readonly("int8", [](const Packed<S>& w) { return w.quant == lstmx::kInt8; })
      .def_property_readonly("nbytes", [](const Packed<S>& w) { return w.k->packed_nbytes(w.p); });
  py::class_<Cache<S>, std::shared_ptr<Cache<S>>>(m, cache_name,
                                                  "Forward workspace kept for backward.")
      .def_property_readonly("T", [](const Cache<S>& c) { return c.d.T; })
      .def_property_readonly("B", [](const Cache<S>& c) { return c.d.B; })
      .def_property_readonly("I", [](const Cache<S>& c) { return c.d.I; })
      .def_property_readonly("H", [](const Cache<S>& c) { return c.d.H; })
      .def_property_readonly("P", [](const Cache<S>& c) { return c.d.P; })
      .def_property_readonly("R", [](const Cache<S>& c) { return c.d.R(); })
      .def_property_readonly("batch_first", [](const Cache<S>& c) { return c.d.batch_first; })
      .def_property_readonly("y_stride", [](const Cache<S>& c) { return c.d.y_stride(); })
      .def_property_readonly("nbytes", &Cache<S>::nbytes);
  m.def("backward", &backward<S>, py::arg("cache"), py::arg("dy"), py::arg("dh_n"),
        py::arg("dc_n"), py::arg("naive") = false, py::kw_only(),
        py::arg("dx_add") = py::none());
  // Test hook: the active kernels' vectorised sigmoid and tanh, elementwise.
  m.def("_activations", [](const py::array_t<S, py::array::c_style | py::array::forcecast>& x) {
    const Index n = x.size();
    auto sig = out<S>({n}), th = out<S>({n});
    table<S>(lstmx::backend()).activations(n, x.data(), sig.mutable_data(), th.mutable_data());
    return py::make_tuple(sig, th);
  }, py::arg("x"));
}

py::tuple forward_any(const py::array& x, const py::array& w_ih, const py::array& w_hh,
                      const py::object& bias, const py::object& h0, const py::object& c0,
                      bool batch_first, bool training, bool naive, const py::object& lengths,
                      bool reverse, const py::object& w_hr, const py::object& peephole,
                      double clip, bool input_forget, double zoneout_h, double zoneout_c,
                      double recurrent_dropout, std::uint64_t seed, std::uint64_t stream,
                      const py::object& layer_norm, const py::object& packed, bool dots,
                      const py::object& y_out, const py::object& drop,
                      const py::object& y_drop) {
  const Variant v{lengths,   peephole,  w_hr,      layer_norm,        reverse, input_forget,
                  clip,      zoneout_h, zoneout_c, recurrent_dropout, seed,    stream, packed,
                  dots,      drop,      y_drop};
  if (py::isinstance<py::array_t<float>>(x))
    return forward<float>(x, w_ih, w_hh, bias, h0, c0, batch_first, training, naive, v, y_out);
  if (py::isinstance<py::array_t<double>>(x))
    return forward<double>(x, w_ih, w_hh, bias, h0, c0, batch_first, training, naive, v, y_out);
  throw py::type_error("x: expected a numpy array of float32 or float64");
}

}  // namespace

PYBIND11_MODULE(_core, m) {
  m.doc() = "lstmx private compiled core. Use the public `lstmx` package instead.";
  bind_dtype<float>(m, "Cache_f32", "Packed_f32");
  bind_dtype<double>(m, "Cache_f64", "Packed_f64");
  m.def("pack", [](const py::array& w_ih, const py::array& w_hh, const py::object& w_hr,
                   bool half, bool int8) -> py::object {
    if (py::isinstance<py::array_t<float>>(w_hh))
      return py::cast(pack<float>(w_ih, w_hh, w_hr, half, int8));
    if (py::isinstance<py::array_t<double>>(w_hh))
      return py::cast(pack<double>(w_ih, w_hh, w_hr, half, int8));
    throw py::type_error("w_hh: expected a numpy array of float32 or float64");
  }, py::arg("w_ih"), py::arg("w_hh"), py::arg("w_hr") = py::none(), py::arg("half") = false,
        py::arg("int8") = false,
        "The weights packed by the active kernels, for forward(..., packed=); half: also in "
        "float16 for step_plan (float32 weights that float16 holds exactly); int8: W_ih and "
        "W_hh in int8 instead, for step_plan only (lstmx.h, Packed).");
  m.def("forward", &forward_any, py::arg("x"), py::arg("w_ih"), py::arg("w_hh"),
        py::arg("bias"), py::arg("h0"), py::arg("c0"), py::arg("batch_first"),
        py::arg("training"), py::arg("naive") = false, py::kw_only(),
        py::arg("lengths") = py::none(), py::arg("reverse") = false,
        py::arg("w_hr") = py::none(), py::arg("peephole") = py::none(), py::arg("clip") = 0.0,
        py::arg("input_forget") = false,
        py::arg("zoneout_h") = 0.0, py::arg("zoneout_c") = 0.0,
        py::arg("recurrent_dropout") = 0.0, py::arg("seed") = 0, py::arg("stream") = 0,
        py::arg("layer_norm") = py::none(), py::arg("packed") = py::none(),
        py::arg("dots") = false, py::arg("y_out") = py::none(), py::arg("drop") = py::none(),
        py::arg("y_drop") = py::none());
  bind_step<float>(m, "StepPlan_f32");
  bind_step<double>(m, "StepPlan_f64");
  m.def("step_plan", [](const py::sequence& layers, double clip, bool input_forget,
                        double zoneout_h, double zoneout_c, const py::object& state_type,
                        const py::tuple& names, const py::tuple& params) -> py::object {
    py::object w = py::none();  // w_ih of the first layer
    if (py::len(layers) && py::isinstance<py::tuple>(layers[0]) && py::len(layers[0]))
      w = layers[0].cast<py::tuple>()[0];
    if (py::isinstance<py::array_t<float>>(w))
      return py::cast(StepPlan<float>(layers, clip, input_forget, zoneout_h, zoneout_c,
                                      state_type, names, params));
    if (py::isinstance<py::array_t<double>>(w))
      return py::cast(StepPlan<double>(layers, clip, input_forget, zoneout_h, zoneout_c,
                                       state_type, names, params));
    throw py::type_error("layers[0][0] (w_ih): expected a numpy array of float32 or float64");
  }, py::arg("layers"), py::arg("clip") = 0.0, py::arg("input_forget") = false,
        py::arg("zoneout_h") = 0.0, py::arg("zoneout_c") = 0.0,
        py::arg("state_type") = py::none(), py::arg("names") = py::tuple(),
        py::arg("params") = py::tuple(),
        "A streaming step's checked layers and options (lstmx.h, lstm_step).");
  m.def("uniform", [](std::uint64_t seed, std::uint64_t stream, Index count) {
    if (count < 0 || count > (Index(1) << 40)) throw py::value_error("count: expected 0..2**40");
    auto u = out<double>({count});
    double* p = u.mutable_data();
    {
      py::gil_scoped_release nogil;
      for (Index i = 0; i < count; ++i) p[i] = lstmx::uniform(seed, stream, std::uint64_t(i));
    }
    return u;
  }, py::arg("seed"), py::arg("stream"), py::arg("count"),
        "The masks' hash (lstmx.h): uniform(seed, stream, idx) for idx < count, as float64.");
  m.attr("max_threads") = kMaxThreads;
  m.def("set_num_threads", [](long long n) {
    if (n < 1 || n > kMaxThreads)  // more would only risk failing to create threads
      throw py::value_error("n: expected a positive int, at most " + std::to_string(kMaxThreads) +
                            ", got " + std::to_string(n));
    lstmx::set_num_threads(int(n));
  }, py::arg("n"));
  m.def("get_num_threads", &lstmx::num_threads);
  m.def("set_isa", &lstmx::set_isa, py::arg("name"),
        "Switch the kernels to another ISA level (see isas_available()).");
  m.def("build_info", []() {
    py::dict d;
    const auto& b = lstmx::backend();
    d["isa"] = std::string(b.isa);
    py::list isas;
    for (const auto& name : lstmx::isas_available()) isas.append(name);
    d["isas_available"] = isas;
    if (!lstmx::isa_note().empty()) d["isa_note"] = lstmx::isa_note();
    d["openmp"] = lstmx::has_openmp();
    d["eigen"] = std::to_string(EIGEN_WORLD_VERSION) + "." + std::to_string(EIGEN_MAJOR_VERSION) +
                 "." + std::to_string(EIGEN_MINOR_VERSION);
    d["simd"] = std::string(b.simd);
#if defined(__clang__)
    d["compiler"] = std::string("clang ") + __clang_version__;
#elif defined(__GNUC__)
    d["compiler"] = std::string("gcc ") + __VERSION__;
#else
    d["compiler"] = std::string("unknown");
#endif
    return d;
  });
}
