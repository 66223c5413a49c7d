// bench.cpp — lstmx_bench: times the lstmx core alone, with no Python, on the standard grid of
// python/lstmx/bench.py. It links dispatch.cpp, so it runs the same _kernels_<isa>.so modules
// as lstmx._core, loaded from its own directory.
//
// Modes: infer = forward without a cache; train = forward with a Cache, then backward.
// FLOPs: forward 2*T*B*4H*(I+H), train 3x that. Inputs, outputs and the Cache are allocated
// once per configuration (64-byte aligned, as lstmx._core does), outside the timed calls.
// Build with CMake -DLSTMX_BENCH=ON; `lstmx_bench --help` lists the options.
#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <random>
#include <stdexcept>
#include <string>
#include <tuple>
#include <type_traits>
#include <vector>

#include "dispatch.h"
#include "lstmx.h"

using lstmx::Dims;
using lstmx::Index;
using lstmx::Kernel;

namespace {

struct Config {
  std::string name;
  Index I, H, B, T;
};

// The standard grid (GRID in python/lstmx/bench.py).
const Config kGrid[] = {
    {"b1-h128", 128, 128, 1, 100},     {"b4-h256", 256, 256, 4, 150},
    {"b4-h1024", 1024, 1024, 4, 25},   {"b16-h512", 512, 512, 16, 25},
    {"b32-h256", 256, 256, 32, 100},   {"b64-h512", 512, 512, 64, 50},
    {"b64-h1024", 1024, 1024, 64, 25},
};

const char kHelp[] = R"(usage: lstmx_bench [options]

Times the lstmx core alone (no Python): for each configuration, inference (forward without a
cache) and training (forward with a cache, then backward); median of the timed calls after one
warm-up call. FLOPs: forward 2*T*B*4H*(I+H), training 3x that.

options:
  --threads N        threads for the kernels (default 2)
  --dtype f32|f64    float32 (default) or float64
  --configs a,b,...  configurations to run, or "all" (the default):
                     %s
  --repeats N        timed calls per measurement (default 10)
  --isa NAME         kernel module to use, e.g. avx2 (default: the best this CPU has; the
                     environment variable LSTMX_ISA also sets it)
  --help             show this help and exit
)";

struct Options {
  int threads = 2;
  bool f64 = false;
  std::vector<Config> configs{std::begin(kGrid), std::end(kGrid)};
  int repeats = 10;
  std::string isa;  // "" = the dispatcher's choice
};

int positive(const std::string& opt, const std::string& v) {
  char* end = nullptr;
  errno = 0;
  const long n = std::strtol(v.c_str(), &end, 10);
  if (v.empty() || *end || errno || n < 1 || n > 1000000)
    throw std::invalid_argument(opt + ": expected a positive integer, got '" + v + "'");
  return int(n);
}

std::vector<Config> parse_configs(const std::string& v) {
  if (v == "all") return {std::begin(kGrid), std::end(kGrid)};
  std::vector<Config> r;
  for (std::size_t a = 0; a <= v.size();) {
    std::size_t b = std::min(v.find(',', a), v.size());
    const std::string name = v.substr(a, b - a);
    auto it = std::find_if(std::begin(kGrid), std::end(kGrid),
                           [&](const Config& c) { return c.name == name; });
    if (it == std::end(kGrid))
      throw std::invalid_argument("--configs: unknown configuration '" + name + "'");
    r.push_back(*it);
    a = b + 1;
  }
  return r;
}

// --opt VALUE or --opt=VALUE; std::invalid_argument on a bad one (main then exits with 2).
Options parse(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    std::string opt = argv[i], v;
    const auto eq = opt.rfind("--", 0) == 0 ? opt.find('=') : std::string::npos;
    if (eq != std::string::npos) {
      v = opt.substr(eq + 1);
      opt.resize(eq);
    }
    auto value = [&] {
      if (eq == std::string::npos) {
        if (i + 1 == argc) throw std::invalid_argument(opt + ": expected a value");
        v = argv[++i];
      }
      return v;
    };
    if (opt == "--help" || opt == "-h") {
      std::string names;
      for (const Config& c : kGrid) names += (names.empty() ? "" : ",") + c.name;
      std::printf(kHelp, names.c_str());
      std::exit(0);
    } else if (opt == "--threads") {
      o.threads = positive(opt, value());
    } else if (opt == "--repeats") {
      o.repeats = positive(opt, value());
    } else if (opt == "--dtype") {
      const std::string d = value();
      if (d != "f32" && d != "f64")
        throw std::invalid_argument("--dtype: expected f32 or f64, got '" + d + "'");
      o.f64 = d == "f64";
    } else if (opt == "--configs") {
      o.configs = parse_configs(value());
    } else if (opt == "--isa") {
      o.isa = value();
    } else {
      throw std::invalid_argument(opt + ": unknown option");
    }
  }
  return o;
}

// ---- timing ---------------------------------------------------------------------------------

template <typename S>
using Buffer = std::unique_ptr<S[], void (*)(void*)>;

// n elements, 64-byte aligned (as lstmx._core's outputs), filled by `fill` if given.
template <typename S, typename F = std::nullptr_t>
Buffer<S> buffer(Index n, F fill = nullptr) {
  const std::size_t bytes = (std::size_t(std::max<Index>(n, 1)) * sizeof(S) + 63) / 64 * 64;
  Buffer<S> b(static_cast<S*>(std::aligned_alloc(64, bytes)), std::free);
  if (!b) throw std::bad_alloc();
  if constexpr (!std::is_same_v<F, std::nullptr_t>) std::generate(b.get(), b.get() + n, fill);
  return b;
}

// Median seconds of `repeats` calls of f, after one warm-up call.
template <typename F>
double median_seconds(F&& f, int repeats) {
  f();
  std::vector<double> t;
  for (int r = 0; r < repeats; ++r) {
    const auto t0 = std::chrono::steady_clock::now();
    f();
    t.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  }
  std::sort(t.begin(), t.end());
  const std::size_t m = t.size() / 2;
  return t.size() % 2 ? t[m] : 0.5 * (t[m - 1] + t[m]);
}

struct Times {
  double infer, train;  // median seconds
};

// Inputs as in python/lstmx/bench.py: weights uniform in [-1/sqrt(H), 1/sqrt(H)] (PyTorch's
// init), x and dy standard normal; h0, c0, dh_n, dc_n zero (nullptr).
template <typename S>
Times time_config(const lstmx::KernelTable<S>& kt, const Config& c, int threads, int repeats) {
  const Dims d{c.T, c.B, c.I, c.H, false};
  const Index N = c.T * c.B, G = 4 * c.H;
  std::mt19937_64 rng(0);
  std::normal_distribution<S> normal;
  std::uniform_real_distribution<S> uniform(-1 / std::sqrt(S(c.H)), 1 / std::sqrt(S(c.H)));
  auto rn = [&] { return normal(rng); };
  auto ru = [&] { return uniform(rng); };
  const auto x = buffer<S>(N * c.I, rn), dy = buffer<S>(N * c.H, rn);  // [T, B, I], [T, B, H]
  const auto w_ih = buffer<S>(G * c.I, ru), w_hh = buffer<S>(G * c.H, ru), bias = buffer<S>(G, ru);
  const auto y = buffer<S>(N * c.H), h_n = buffer<S>(c.B * c.H), c_n = buffer<S>(c.B * c.H);
  const auto dx = buffer<S>(N * c.I), dh0 = buffer<S>(c.B * c.H), dc0 = buffer<S>(c.B * c.H);
  const auto dw_ih = buffer<S>(G * c.I), dw_hh = buffer<S>(G * c.H), db = buffer<S>(G);
  const lstmx::Options<S> opt;  // the plain LSTM
  const std::unique_ptr<lstmx::Cache<S>, void (*)(lstmx::Cache<S>*)> cache(kt.cache_new(d, opt),
                                                                          kt.cache_free);

  auto forward = [&](lstmx::Cache<S>* cc) {
    kt.forward(Kernel::Fast, threads, d, opt, x.get(), w_ih.get(), w_hh.get(), bias.get(),
               nullptr, nullptr, y.get(), h_n.get(), c_n.get(), cc, nullptr);
  };
  Times r;
  r.infer = median_seconds([&] { forward(nullptr); }, repeats);
  r.train = median_seconds(
      [&] {
        forward(cache.get());
        kt.backward(Kernel::Fast, threads, *cache, dy.get(), nullptr, nullptr,
                    {dx.get(), dh0.get(), dc0.get(), dw_ih.get(), dw_hh.get(), db.get(), nullptr,
                     nullptr});
      },
      repeats);
  return r;
}

// About 3 significant digits, as in the Python benchmark's table.
std::string fmt_ms(double ms) {
  char s[32];
  std::snprintf(s, sizeof s, "%.*f", ms >= 100 ? 0 : ms >= 10 ? 1 : ms >= 1 ? 2 : 3, ms);
  return s;
}

template <typename S>
void run(const Options& o, const lstmx::KernelTable<S>& kt) {
  const int threads = lstmx::num_threads();
  std::printf("| config    |    I |    H |  B |   T | mode  |     ms | GFLOP/s |\n"
              "|-----------|------|------|----|-----|-------|--------|---------|\n");
  for (const Config& c : o.configs) {
    const Times t = time_config(kt, c, threads, o.repeats);
    const double fwd = 2.0 * c.T * c.B * 4 * c.H * (c.I + c.H);
    for (const auto& [mode, secs, flops] : {std::tuple{"infer", t.infer, fwd},
                                            std::tuple{"train", t.train, 3 * fwd}})
      std::printf("| %-9s | %4td | %4td | %2td | %3td | %s | %6s | %7.0f |\n", c.name.c_str(),
                  c.I, c.H, c.B, c.T, mode, fmt_ms(1e3 * secs).c_str(), flops / secs / 1e9);
    std::fflush(stdout);
  }
}

}  // namespace

int main(int argc, char** argv) {
  try {
    Options o;
    try {
      o = parse(argc, argv);
      if (!o.isa.empty()) lstmx::set_isa(o.isa);
    } catch (const std::invalid_argument& e) {  // a bad argument (set_isa's "isa: ..." too)
      std::fprintf(stderr, "lstmx_bench: error: %s\n(lstmx_bench --help lists the options)\n",
                   e.what());
      return 2;
    }
    lstmx::set_num_threads(o.threads);
    const lstmx::Backend& b = lstmx::backend();
    std::string have;
    for (const std::string& s : lstmx::isas_available()) have += (have.empty() ? "" : ", ") + s;
    if (const std::string note = lstmx::isa_note(); !note.empty())
      std::fprintf(stderr, "lstmx_bench: note: %s\n", note.c_str());
    std::printf("lstmx_bench: ISA module _kernels_%s.so (available: %s; Eigen SIMD: %s)\n", b.isa,
                have.c_str(), b.simd);
    std::printf("%d thread%s%s, %s, median of %d timed calls after 1 warm-up\n\n", o.threads,
                o.threads == 1 ? "" : "s", lstmx::has_openmp() ? "" : " (built without OpenMP: 1)",
                o.f64 ? "float64" : "float32", o.repeats);
    if (o.f64)
      run(o, b.f64);
    else
      run(o, b.f32);
  } catch (const std::exception& e) {  // e.g. no kernel module could be loaded
    std::fprintf(stderr, "lstmx_bench: error: %s\n", e.what());
    return 1;
  }
  return 0;
}
