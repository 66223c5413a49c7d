// dispatch.cpp — run-time ISA selection: each x86-64 level's kernels live in their own module
// (_kernels_sse2.so, _kernels_avx2.so, _kernels_avx512.so, beside _core or lstmx_bench); the
// best one this CPU supports is loaded, unless the environment variable LSTMX_ISA asks for a
// lower one.
#include "dispatch.h"

#include <dlfcn.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <mutex>
#include <stdexcept>

#ifdef _OPENMP
#include <omp.h>
#endif

namespace lstmx {
namespace {

struct Isa {
  const char* name;
  bool (*supported)();
};

// Best first. Each level's CPUID test also covers the OS saving the wider registers.
#if defined(__x86_64__) || defined(_M_X64)
const Isa kIsas[] = {
    {"avx512", [] {
       return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq") &&
              __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl") &&
              __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
              __builtin_cpu_supports("f16c");
     }},
    {"avx2", [] {
       return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
              __builtin_cpu_supports("f16c");
     }},
    {"sse2", [] { return true; }},
};
#else
const Isa kIsas[] = {{"generic", [] { return true; }}};
#endif

// The directory of the binary this file is linked into: the _core module, or, compiled with
// LSTMX_EXECUTABLE, an executable such as lstmx_bench (for which dladdr would give argv[0]).
std::string module_dir() {
  std::string p;
#ifdef LSTMX_EXECUTABLE
  char buf[4096];
  const ssize_t n = readlink("/proc/self/exe", buf, sizeof buf);
  if (n > 0 && n < ssize_t(sizeof buf)) p.assign(buf, std::size_t(n));
#else
  Dl_info info{};
  if (dladdr(reinterpret_cast<void*>(&module_dir), &info) && info.dli_fname) p = info.dli_fname;
#endif
  const auto slash = p.find_last_of('/');
  return slash == std::string::npos ? "." : p.substr(0, slash);
}

struct Registry {
  std::vector<std::pair<std::string, const Backend*>> loaded;  // best first
  std::string note;
  std::atomic<const Backend*> active{nullptr};

  Registry() {
    const std::string dir = module_dir();
    std::string errors;
    for (const Isa& isa : kIsas) {
      if (!isa.supported()) continue;
      const std::string path = dir + "/_kernels_" + isa.name + ".so";
      void* h = dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);
      auto get = h ? reinterpret_cast<const Backend* (*)()>(dlsym(h, "lstmx_backend")) : nullptr;
      const Backend* b = get ? get() : nullptr;
      if (b && b->abi == kBackendAbi)
        loaded.emplace_back(isa.name, b);
      else
        errors += std::string(" ") + isa.name + (h ? " (bad module)" : " (" + std::string(dlerror()) + ")");
    }
    if (loaded.empty())
      throw std::runtime_error("lstmx: no kernel module could be loaded from " + dir + ":" + errors);
    active = loaded.front().second;
    if (const char* want = std::getenv("LSTMX_ISA"); want && *want) {
      auto it = std::find_if(loaded.begin(), loaded.end(),
                             [&](const auto& e) { return e.first == want; });
      if (it != loaded.end())
        active = it->second;
      else
        note = std::string("LSTMX_ISA=") + want + " is not available here; using " +
               loaded.front().first;
    }
  }
};

Registry& registry() {
  static Registry r;  // thread-safe initialisation
  return r;
}

int default_threads() {
#ifdef _OPENMP
  return std::max(1, omp_get_max_threads());
#else
  return 1;
#endif
}
std::atomic<int> g_threads{default_threads()};

}  // namespace

const Backend& backend() { return *registry().active.load(); }

std::vector<std::string> isas_available() {
  std::vector<std::string> r;
  for (const auto& e : registry().loaded) r.push_back(e.first);
  return r;
}

std::string isa_note() { return registry().note; }

void set_isa(const std::string& name) {
  for (const auto& e : registry().loaded)
    if (e.first == name) {
      registry().active = e.second;
      return;
    }
  std::string have;
  for (const auto& e : registry().loaded) have += (have.empty() ? "" : ", ") + e.first;
  throw std::invalid_argument("isa: '" + name + "' is not available here (available: " + have +
                              ")");
}

void set_num_threads(int n) { g_threads.store(std::max(1, n)); }
int num_threads() { return g_threads.load(); }
bool has_openmp() {
#ifdef _OPENMP
  return true;
#else
  return false;
#endif
}

}  // namespace lstmx
