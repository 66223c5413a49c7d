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
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <fstream>
#include <limits>
#include <memory>
#include <new>
#include <optional>
#include <stdexcept>
#include <string>
#include <type_traits>
#if defined(__linux__)
#include <linux/futex.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <sys/syscall.h>
#include <unistd.h>
#endif

#if defined(__SSE__) || defined(__x86_64__)
#include <immintrin.h>  // _mm_setcsr; non-temporal stores
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

// Blocks that outlive a call. Large per-call buffers (the packed weights, a chunk's projection,
// the training workspace, dG) would otherwise come from fresh pages every call, and faulting in
// tens of MiB costs as much as the step loop at small B; small ones would cost malloc's locks
// and heap trims in every call of a streaming step. A thread keeps the blocks freed on it, up to
// kPoolBytes, for its next calls (as oneDNN's global scratchpad does); the rest go back to
// malloc. take and give go through the thread's pool while it exists, and straight to malloc
// after its destructor (a workspace freed during a thread's exit).
class Pool {
 public:
  static constexpr std::size_t kPoolBytes = std::size_t(256) << 20;
  // A 64-byte aligned block of at least `bytes` (2 MiB pages from kHuge); its capacity in `cap`.
  static void* take(std::size_t bytes, std::size_t& cap) {
    return gone() ? alloc_block(bytes, cap) : mine().take(bytes, cap);
  }
  static void give(void* p, std::size_t cap) noexcept {  // (from destructors: never throws)
    if (gone()) std::free(p); else mine().keep(p, cap);
  }

 private:
  struct Kept : KeptBlocks {
    Kept() : KeptBlocks(kPoolBytes, 64) {}  // more live blocks than this a thread never keeps
    ~Kept() { gone() = true; }
  };
  static KeptBlocks& mine() {
    static thread_local Kept pool;
    return pool;
  }
  static bool& gone() {  // this thread's pool is destroyed
    static thread_local bool g = false;
    return g;
  }
};

// A buffer of n scalars (64-byte aligned, uninitialised) from this thread's Pool.
template <typename S>
class Buf {
 public:
  explicit Buf(Index n = 0) { resize(n); }
  Buf(const Buf&) = delete;
  Buf& operator=(const Buf&) = delete;
  ~Buf() { release(); }
  void resize(Index n) {  // the contents are lost
    release();
    if (n <= 0) return;
    if (std::size_t(n) > std::size_t(-1) / 2 / sizeof(S)) throw std::bad_alloc();
    p_ = static_cast<S*>(Pool::take(std::size_t(n) * sizeof(S), cap_));
  }
  S* data() const { return p_; }

 private:
  void release() {
    if (p_) Pool::give(p_, cap_);
    p_ = nullptr;
  }
  S* p_ = nullptr;
  std::size_t cap_ = 0;
};

}  // namespace

PoolBlock::PoolBlock(std::size_t bytes) { p = Pool::take(bytes, cap); }
PoolBlock::~PoolBlock() { Pool::give(p, cap); }

namespace {

inline Index ceil_div(Index a, Index b) { return (a + b - 1) / b; }

// The i-th item of [lo, hi), counted from hi when down. The time loops visit a thread's panels
// down every other step (forward) or call (lstm_step): the panels read last, still in L1 and
// L2, are read first again, where a scan in one direction of more than L2 would find none.
inline Index visit(bool down, Index lo, Index hi, Index i) { return down ? hi - 1 - (i - lo) : i; }

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

inline void relax() {  // a spin-wait's pause
#if defined(__SSE2__)
  _mm_pause();
#endif
}
#if defined(__linux__)
template <typename T>  // wait on or wake the threads waiting on a 32-bit word
inline void futex(std::atomic<T>* w, int op, T v) {
  static_assert(sizeof(T) == 4 && sizeof(std::atomic<T>) == 4, "futex words are 32 bits");
  syscall(SYS_futex, reinterpret_cast<T*>(w), op, v, nullptr, nullptr, 0);
}
// Waits while `word` holds v: up to `spins` pauses, then asleep on it (a futex), counted in
// `sleepers`. True if it slept. The thread that changes `word` then calls wake().
template <typename T>
bool wait_while(std::atomic<T>& word, T v, int spins, std::atomic<int>& sleepers) {
  for (int i = 0; i < spins; ++i) {
    if (word.load(std::memory_order_acquire) != v) return false;
    relax();
  }
  sleepers.fetch_add(1, std::memory_order_seq_cst);
  while (word.load(std::memory_order_seq_cst) == v)  // (returns at once if it changed)
    futex(&word, FUTEX_WAIT_PRIVATE, v);
  sleepers.fetch_sub(1, std::memory_order_relaxed);
  return true;
}
// After a change of `word`: wakes its sleepers, a syscall only if there are any.
template <typename T>
void wake(std::atomic<T>& word, std::atomic<int>& sleepers) {
  if (sleepers.load(std::memory_order_seq_cst) > 0) futex(&word, FUTEX_WAKE_PRIVATE, T(INT32_MAX));
}
#endif

// The barrier between the steps of a team (Linux): a count of arrivals and a phase that the
// last one flips. The others spin on the phase with pause, then sleep on it (a futex), and the
// last one wakes them only if one sleeps. libgomp's barrier makes a futex_wake syscall at
// every barrier, sleeper or not (0.3-0.4 us on the AMD VM; a b1-h128 step takes 2.9 us and has
// one). A team with more threads than the processors it may run on, or without futexes, waits
// in libgomp's barrier instead.
struct TeamBarrier {
  static constexpr int kSpin = 1 << 16;  // pauses before sleeping (libgomp spins 300000)
  static constexpr int kCpus = 1024;     // CPUs it keeps track of
  alignas(64) std::atomic<int> arrived{0};
  alignas(64) std::atomic<int> phase{0};  // the futex word: 0 or 1
  std::atomic<int> sleepers{0};
  std::atomic<int> started{0};  // threads that have begun (and are on their CPU)
  alignas(64) std::atomic<std::uint64_t> cpus[kCpus / 64] = {};  // the CPUs the team is on
};
// The team this thread works in (with_team): its barrier, size, and whether the barrier is
// lstmx's own (else libgomp's); the phase this thread's last barrier ended in, and the CPU it
// holds in bar->cpus (-1: none).
struct TeamRef {
  TeamBarrier* bar = nullptr;
  int size = 1;
  bool own = false;
  int phase = 0;
  int cpu = -1;
};
thread_local TeamRef tl_team;

#if defined(__linux__)
// Takes a CPU in the team's set: false if another thread of the team holds it.
inline bool claim_cpu(TeamBarrier& t, int cpu) {
  if (cpu < 0 || cpu >= TeamBarrier::kCpus) return true;
  const std::uint64_t m = std::uint64_t(1) << (cpu % 64);
  return !(t.cpus[cpu / 64].fetch_or(m, std::memory_order_acq_rel) & m);
}
inline void release_cpu(TeamBarrier& t, int cpu) {
  if (cpu >= 0 && cpu < TeamBarrier::kCpus)
    t.cpus[cpu / 64].fetch_and(~(std::uint64_t(1) << (cpu % 64)), std::memory_order_acq_rel);
}

// Keeps the team's threads on distinct CPUs: called as a thread starts its share and after it
// wakes from sleep. If another thread of the team holds this thread's CPU, it moves to a CPU
// the team does not hold, if it may run on one, and leaves its allowed CPUs as they were (a
// thread pinned to one CPU stays). Linux can wake a worker on its waker's CPU after the
// process has been idle; why this matters, and what it saved: docs/design.md, "One CPU per
// thread".
inline void keep_apart(TeamRef& r) {
  TeamBarrier& t = *r.bar;
  const int now = sched_getcpu();
  if (now == r.cpu) return;
  release_cpu(t, r.cpu);
  r.cpu = -1;
  if (claim_cpu(t, now)) {
    r.cpu = now;
    return;
  }
  cpu_set_t allowed;
  if (sched_getaffinity(0, sizeof allowed, &allowed) != 0) return;
  for (int k = 0; k < TeamBarrier::kCpus && k < CPU_SETSIZE; ++k)
    if (CPU_ISSET(k, &allowed) && claim_cpu(t, k)) {
      cpu_set_t one;
      CPU_ZERO(&one);
      CPU_SET(k, &one);
      if (sched_setaffinity(0, sizeof one, &one) == 0) {  // moves it there now
        sched_setaffinity(0, sizeof allowed, &allowed);
        r.cpu = k;
      } else {
        release_cpu(t, k);
      }
      return;
    }
}
#endif

// Every thread of the team waits here until all have come; what each wrote before is then
// visible to all.
inline void barrier() {
  TeamRef& r = tl_team;
  if (r.size <= 1) return;
  if (!r.own) {
#pragma omp barrier
    return;
  }
#if defined(__linux__)
  TeamBarrier* t = r.bar;
  const int ph = (r.phase ^= 1);
  if (t->arrived.fetch_add(1, std::memory_order_acq_rel) == r.size - 1) {  // the last to come
    t->arrived.store(0, std::memory_order_relaxed);
    t->phase.store(ph, std::memory_order_seq_cst);
    wake(t->phase, t->sleepers);
    return;
  }
  if (wait_while(t->phase, ph ^ 1, TeamBarrier::kSpin, t->sleepers)) keep_apart(r);
#endif
}

#if defined(__linux__) && defined(_OPENMP)
// lstmx's own workers (Linux, with OpenMP): up to kMax threads that outlive the calls, so that a
// team of nt runs on the caller and workers 1..nt-1 without libgomp's fork and join (a futex
// syscall at each, worker spinning or not: about 1 us of a 10 us streaming step; design.md,
// Threads). Each worker spins on its slot's seq (300000 pauses, as libgomp's workers wait for
// the next parallel region), then sleeps on it (a futex); the caller waits for `pending` as
// TeamBarrier's threads wait. One caller at a time (`busy`): another caller, a team larger
// than kMax + 1, or a failed pthread_create gets libgomp's team instead. A forked child
// starts with no workers (pthread_atfork); the workers are never joined.
struct Crew {
  static constexpr int kMax = 255;
  static constexpr int kSpin = 300000;  // a worker's pauses before it sleeps
  struct alignas(64) Slot {
    std::atomic<unsigned> seq{0};  // the futex word: one more for each job given
    std::atomic<int> sleeps{0};    // the worker asleep on seq (0 or 1)
    void (*call)(void*, int) = nullptr;  // the job: call(ctx, worker)
    void* ctx = nullptr;
  };
  std::atomic<bool> busy{false};
  int size = 0;  // workers started: slot[1..size] (only a caller holding busy changes it)
  alignas(64) std::atomic<int> pending{0};  // workers still at the job: the futex word
  std::atomic<int> waiting{0};              // the caller asleep on pending (0 or 1)
  Slot slot[kMax + 1];
};
Crew crew;

void* crew_worker(void* arg) {
  const int w = int(reinterpret_cast<std::intptr_t>(arg));
  Crew::Slot& s = crew.slot[w];
  unsigned seen = 0;
  for (;;) {
    wait_while(s.seq, seen, Crew::kSpin, s.sleeps);
    seen = s.seq.load(std::memory_order_acquire);
    s.call(s.ctx, w);
    if (crew.pending.fetch_sub(1, std::memory_order_seq_cst) == 1) wake(crew.pending, crew.waiting);
  }
  return nullptr;
}

// Starts workers up to n (the caller holds busy): false if a thread could not be created.
bool crew_grow(int n) {
  if (crew.size >= n) return true;
  static bool forks = false;
  if (!forks) {
    pthread_atfork(nullptr, nullptr, [] {  // the child has none of the parent's workers
      crew.size = 0;
      crew.busy.store(false);
      crew.pending.store(0);
      crew.waiting.store(0);
      for (auto& s : crew.slot) s.seq.store(0), s.sleeps.store(0);
    });
    forks = true;
  }
  sigset_t all, old;
  sigfillset(&all);
  pthread_sigmask(SIG_SETMASK, &all, &old);  // signals go to the caller's threads, not these
  bool ok = true;
  for (; ok && crew.size < n; ++crew.size) {
    pthread_t t;
    ok = pthread_create(&t, nullptr, crew_worker,
                        reinterpret_cast<void*>(std::intptr_t(crew.size + 1))) == 0;
    if (ok) pthread_detach(t);
    else --crew.size;
  }
  pthread_sigmask(SIG_SETMASK, &old, nullptr);
  return ok;
}

// Runs body(t) for t in [0, nt): 0 on this thread, the others on workers; false (nothing run)
// if the crew is busy or cannot grow to nt - 1.
template <typename B>
bool crew_run(int nt, B& body) {
  if (nt - 1 > Crew::kMax || crew.busy.exchange(true, std::memory_order_acquire)) return false;
  if (!crew_grow(nt - 1)) {
    crew.busy.store(false, std::memory_order_release);
    return false;
  }
  crew.pending.store(nt - 1, std::memory_order_relaxed);
  for (int w = 1; w < nt; ++w) {
    Crew::Slot& s = crew.slot[w];
    s.call = [](void* ctx, int t) { (*static_cast<B*>(ctx))(t); };
    s.ctx = &body;
    s.seq.fetch_add(1, std::memory_order_seq_cst);
    wake(s.seq, s.sleeps);
  }
  std::exception_ptr e;  // (f carries its errors out itself: this is a safety net)
  try {
    body(0);
  } catch (...) {
    e = std::current_exception();
  }
  for (int p; (p = crew.pending.load(std::memory_order_acquire)) != 0;)  // (the last wakes it)
    wait_while(crew.pending, p, TeamBarrier::kSpin, crew.waiting);
  crew.busy.store(false, std::memory_order_release);
  if (e) std::rethrow_exception(e);
  return true;
}
#endif

// Runs f(tid, nt, err) on every thread of a team: at most `threads`, at most one per item and
// one per ~64k flops. Denormals are flushed; exceptions are carried out; barrier() waits for
// the team. Results never depend on the team size: work is cut so that every output sums its
// terms in a fixed order. The team is lstmx's crew where it can be, else libgomp's; a team
// inside a team's work runs alone.
template <typename F>
void with_team(int threads, Index items, double flops, F&& f) {
  const Index by_flops = std::max<Index>(1, Index(flops / 65536.0));
  const TeamRef outer = tl_team;
  const int nt =
      outer.size > 1 ? 1 : int(std::max<Index>(1, std::min({Index(threads), items, by_flops})));
  Errors err;
  if (nt == 1) {  // no team: libgomp's barrier makes a futex syscall even in a team of one
    FlushDenormals ftz;
    tl_team = TeamRef();
    f(0, 1, err);
    tl_team = outer;
    return err.rethrow();
  }
  TeamBarrier bar;
  // One thread's share: tid of n, in a team whose barrier is lstmx's own (else libgomp's).
  auto member = [&](int tid, int n, bool own) {
    FlushDenormals ftz;
    tl_team = TeamRef{&bar, n, own, 0, -1};
#if defined(__linux__)
    if (own) {  // every thread on a CPU of its own before any begins
      keep_apart(tl_team);
      bar.started.fetch_add(1, std::memory_order_acq_rel);
      for (int i = 1; bar.started.load(std::memory_order_acquire) < n; ++i) {
        relax();
        if (i % 256 == 0) sched_yield();  // to a thread of the team woken on this CPU
      }
    }
#endif
    f(tid, n, err);
    tl_team = outer;
  };
#if defined(__linux__) && defined(_OPENMP)
  static const int procs = omp_get_num_procs();  // (those this process may run on)
  auto share_of = [&](int tid) { member(tid, nt, true); };
  if (nt <= procs && crew_run(nt, share_of)) return err.rethrow();
#endif
#pragma omp parallel num_threads(nt)
  {
    int tid = 0, n = 1;
    bool own = false;
#ifdef _OPENMP
    tid = omp_get_thread_num(), n = omp_get_num_threads();
#if defined(__linux__)
    own = n <= procs;
#endif
#endif
    member(tid, n, own);
  }
  err.rethrow();
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
static_assert(kMC % kMR == 0, "gemm_part cuts chunks of whole row blocks");

// Stores a whole packet at p (aligned to its size); with `stream`, past the caches
// (non-temporal: the writer issues _mm_sfence() before other threads read what it stored).
template <typename P>
EIGEN_ALWAYS_INLINE void store_packet(typename ei::unpacket_traits<P>::type* p, const P& v,
                                      bool stream) {
  if (!stream) return ei::pstore(p, v);
#if defined(__AVX512F__)
  if constexpr (std::is_same_v<P, __m512>) return _mm512_stream_ps(p, v);
  if constexpr (std::is_same_v<P, __m512d>) return _mm512_stream_pd(p, v);
#endif
#if defined(__AVX__)
  if constexpr (std::is_same_v<P, __m256>) return _mm256_stream_ps(p, v);
  if constexpr (std::is_same_v<P, __m256d>) return _mm256_stream_pd(p, v);
#endif
#if defined(__SSE2__)
  if constexpr (std::is_same_v<P, __m128>) return _mm_stream_ps(p, v);
  if constexpr (std::is_same_v<P, __m128d>) return _mm_stream_pd(p, v);
#endif
  ei::pstore(p, v);
}

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
// Slots past the end are zero. B(k, n) = b[k * sbk + n * sbn]. pack() fills panels [p0, p1)
// for k in [0, K), one after another from out (which holds panel p0); with kp > K (the panels'
// full height) it fills rows [0, K) of panels kp rows high, so that rows [k0, k1) are packed by
// passing b + k0 sbk, out + k0 4V, K = k1 - k0.
enum class Panels { Plain, Gates };

template <typename S>
Index panel_count(Panels kind, Index N) {
  return kind == Panels::Plain ? ceil_div(N, 4 * kV<S>) : ceil_div(N / 4, kV<S>);
}

template <typename S>
void pack(Panels kind, Index p0, Index p1, Index K, Index N, const S* b, Index sbk, Index sbn,
          S* out, bool stream = false, Index kp = 0) {
  using P = Pk<S>;
  constexpr Index V = kV<S>, W = 4 * V;
  const Index H = N / 4;
  kp = std::max(kp, K);
  for (Index p = p0; p < p1; ++p)
    for (Index q = 0; q < 4; ++q) {  // slots [qV, qV + V) hold columns n0 + v, v < nv
      const Index n0 = kind == Panels::Plain ? p * W + q * V : q * H + p * V;
      const Index nv = std::clamp<Index>(kind == Panels::Plain ? N - n0 : H - p * V, 0, V);
      S* o = out + (p - p0) * kp * W + q * V;
      if constexpr (V > 1) {
        if (sbk == 1) {  // each column is contiguous in k: transpose V x V blocks in registers
          for (Index k0 = 0; k0 < K; k0 += V) {
            const Index kv = std::min(V, K - k0);
            ei::PacketBlock<P, int(V)> blk;
            for (Index v = 0; v < V; ++v)
              blk.packet[v] = v < nv ? load(b + (n0 + v) * sbn + k0, kv) : ei::pzero(P());
            ei::ptranspose(blk);
            for (Index k = 0; k < kv; ++k) store_packet(o + (k0 + k) * W, blk.packet[k], stream);
          }
          continue;
        }
      }
      if (sbn == 1 && nv > 0) {  // each row is contiguous in n: V columns at once
        for (Index k = 0; k < K; ++k) store_packet(o + k * W, load(b + k * sbk + n0, nv), stream);
        continue;
      }
      for (Index k = 0; k < K; ++k)  // past the last column, or strided both ways
        for (Index v = 0; v < V; ++v) o[k * W + v] = v < nv ? b[k * sbk + (n0 + v) * sbn] : S(0);
    }
#if defined(__SSE2__)
  if (stream) _mm_sfence();
#endif
}

// Whether to pack `bytes` of weights past the caches: when they and the originals together
// overflow the last-level cache, the panels would only evict each other before the steps read
// them, and streaming saves reading every line before writing it (b4-h1024 inference, 32 MiB
// packed a call: 5% faster on a 32 MiB L3; b16-h512, 8 MiB: 3% slower, so not there). The
// cache's size is Linux's (/sys; CPUID's is wrong on some VMs), at most 32 MiB: a VM shares a
// server's L3 with other tenants (docs/design.md, "Packed once").
inline bool stream_packing(std::size_t bytes) {
  static const std::size_t llc = [] {
    constexpr std::size_t cap = std::size_t(32) << 20;
    std::ifstream f("/sys/devices/system/cpu/cpu0/cache/index3/size");
    std::size_t kib = 0;
    return f >> kib && kib > 0 ? std::min(kib << 10, cap) : cap;
  }();
  return 2 * bytes > llc;
}

// The microkernel: acc[m][q] += sum_k a[m][k * sak] * panel[k][q*V .. q*V + V), m < R, q < 4.
// Every output sums its k in a fixed order for a given R (and, for R = 1, blocks of k).
// It prefetches the panel 4 KiB ahead, for panels read from L3 at every step (docs/design.md,
// "Prefetching the panels").
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
#if defined(__SSE__) || defined(__x86_64__)
#pragma GCC unroll 4
    for (Index l = 0; l < 4 * V * Index(sizeof(S)); l += 64)  // the panel's lines 4 KiB ahead
      _mm_prefetch(reinterpret_cast<const char*>(bp) + 4096 + l, _MM_HINT_T0);
#endif
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

// Rows of the register tile that starts `left` rows before the end of a block: kMR, but with
// kMR = 6, 8 or 9 left go as 4 + 4 or 5 + 4, since tiles of 2 or 3 rows run at 3/4 of the FMA
// rate (tiles of 4 to 6 at all of it). Every tile of 2 or more rows sums in the same order, so
// no result changes.
inline int tile_rows(Index left) {
  if (kMR == 6 && (left == 8 || left == 9)) return int(left) - 4;
  return int(std::min<Index>(kMR, left));
}

// k-block of gemm_part: a block of A [kMC x kKC] and of a panel [kKC x 4V] stay in L2. Each
// block carries the C tile out to memory and back; with AVX-512 on the Zen 4 VM (benchmarks/
// ab.py, training, 2 threads) 256 was 1.5-2% faster than the L1-sized 128, 1024 another 1-2%.
constexpr Index kKC = 1024;

// One time step's work on one panel: for each of the B rows b, the tile row (4 vectors q) is
// init(b, q) + A_row(b)[0, K) panel, then done(b, q0, q1, q2, q3). A_row(b) points at row b
// of A (unit stride in k). K is not cut into blocks: each row tile reads the panel from L2,
// which keeps up with the microkernel, where L1-sized blocks of k (128 deep) carried every
// tile's sums out and back (inference at B >= 16 was 2-4% slower, training 1-2%).
// part [B, 4V] holds the tile for the epilogue.
template <typename S, typename ARow, typename Init, typename Done>
EIGEN_ALWAYS_INLINE void panel_rows(Index B, Index K, const S* bp, ARow&& a_row, Init&& init,
                                    Done&& done, S* part) {
  using P = Pk<S>;
  constexpr Index V = kV<S>, W = 4 * V;
  for (Index b0 = 0, rt; b0 < B; b0 += rt) {
    rt = tile_rows(B - b0);
    with_rows(int(rt), [&](auto RC) __attribute__((always_inline)) {
      constexpr int R = decltype(RC)::value;
      P acc[kMR][4];
      const S* ar[kMR];
#pragma GCC unroll 8
      for (int r = 0; r < R; ++r) {
#pragma GCC unroll 4
        for (int q = 0; q < 4; ++q) acc[r][q] = init(b0 + r, q);
        if (K > 0) ar[r] = a_row(b0 + r);
      }
      if (K > 0) microkernel<S, R>(K, ar, 1, bp, acc);
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

// ---- float16 panels (Packed::half, read by lstm_step) -----------------------------------------
// The float16 bits of f if f is a float16 value (a NaN: a quiet NaN), else -1.
inline int to_half(float f) {
  std::uint32_t u;
  std::memcpy(&u, &f, 4);
  const int sign = int(u >> 16) & 0x8000;
  const std::uint32_t a = u & 0x7fffffffu, m = a & 0x7fffffu;
  const int e = int(a >> 23) - 127;  // the exponent
  if (a > 0x7f800000u) return sign | 0x7e00;
  if (a == 0x7f800000u) return sign | 0x7c00;
  if (a == 0) return sign;
  if (e > 15 || e < -24) return -1;
  if (e >= -14) return m & 0x1fff ? -1 : sign | (e + 15) << 10 | int(m >> 13);
  const std::uint32_t full = m | 0x800000u;  // below 2^-14: full * 2^(e + 1) units of 2^-24
  const int shift = -(e + 1);
  return full & ((1u << shift) - 1) ? -1 : sign | int(full >> shift);
}

inline float from_half(std::uint16_t h) {
  const std::uint32_t sign = std::uint32_t(h & 0x8000) << 16, e = (h >> 10) & 0x1f, m = h & 0x3ff;
  std::uint32_t u = sign | (e == 31 ? 0x7f800000u | m << 13 : (e + 112) << 23 | m << 13);
  if (e == 0) {  // zero or subnormal: m * 2^-24, a float32 normal
    const float v = float(m) * 5.9604644775390625e-8f;
    std::memcpy(&u, &v, 4);
    u |= sign;
  }
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

// Groups of lanes for panel_rows_half: with AVX-512, 8 (a 256-bit vcvtph2ps ran at 1.4 times
// the rate of two of them and an insert into 512 bits on the Zen 4 VM); else the float packet.
#if defined(__AVX512F__) && defined(__F16C__)
struct HalfLanes {
  using G = __m256;
  static constexpr int n = 8;
  static G load(const std::uint16_t* p) {
    return _mm256_cvtph_ps(_mm_load_si128(reinterpret_cast<const __m128i*>(p)));
  }
  static G ld(const float* p) { return _mm256_load_ps(p); }
  static void st(float* p, G v) { _mm256_store_ps(p, v); }
  static G set1(float a) { return _mm256_set1_ps(a); }
  static G madd(G a, G b, G c) { return _mm256_fmadd_ps(a, b, c); }  // as pmadd: fused
  static G add(G a, G b) { return _mm256_add_ps(a, b); }
};
#else
struct HalfLanes {
  using G = Pk<float>;
  static constexpr int n = int(kV<float>);
  static G load(const std::uint16_t* p) {
#if defined(__F16C__)
    if constexpr (n == 8)
      return _mm256_cvtph_ps(_mm_load_si128(reinterpret_cast<const __m128i*>(p)));
#endif
    alignas(64) float f[n];
    for (int i = 0; i < n; ++i) f[i] = from_half(p[i]);
    return ei::pload<G>(f);
  }
  static G ld(const float* p) { return ei::pload<G>(p); }
  static void st(float* p, G v) { ei::pstore(p, v); }
  static G set1(float a) { return ei::pset1<G>(a); }
  static G madd(G a, G b, G c) { return ei::pmadd(a, b, c); }
  static G add(G a, G b) { return ei::padd(a, b); }
};
#endif

// panel_rows (float) on a float16 panel bp [K, 4V] of Packed::half: every lane's sum runs in
// microkernel's order (a one-row tile of tile_rows sums even and odd k apart, then adds the
// two and the last k; other rows in k order, here two at a time), so the results are bitwise
// those of panel_rows on the float32 panel of the same values. A step reads half the bytes.
template <typename ARow, typename Init, typename Done>
EIGEN_ALWAYS_INLINE void panel_rows_half(Index B, Index K, const std::uint16_t* bp, ARow&& a_row,
                                         Init&& init, Done&& done, float* part) {
  using L = HalfLanes;
  using G = L::G;
  constexpr Index V = kV<float>, W = 4 * V;
  constexpr int NG = int(W) / L::n;  // groups of lanes in a row of the panel
  for (Index b = 0; b < B; ++b)
    for (int q = 0; q < 4; ++q) ei::pstore(part + b * W + q * V, init(b, q));
  for (Index b0 = 0, rt; b0 < B; b0 += rt) {
    rt = tile_rows(B - b0);
    Index r = b0;
    for (; rt > 1 && r + 1 < b0 + rt; r += 2) {  // two rows at a time, in k order
      const float *a = a_row(r), *a2 = a_row(r + 1);
      float *c = part + r * W, *c2 = c + W;
      G acc[NG], acc2[NG];
#pragma GCC unroll 8
      for (int g = 0; g < NG; ++g) acc[g] = L::ld(c + g * L::n), acc2[g] = L::ld(c2 + g * L::n);
      for (Index k = 0; k < K; ++k) {
        const G ak = L::set1(a[k]), ak2 = L::set1(a2[k]);
#pragma GCC unroll 8
        for (int g = 0; g < NG; ++g) {
          const G w = L::load(bp + k * W + g * L::n);
          acc[g] = L::madd(ak, w, acc[g]), acc2[g] = L::madd(ak2, w, acc2[g]);
        }
      }
#pragma GCC unroll 8
      for (int g = 0; g < NG; ++g) L::st(c + g * L::n, acc[g]), L::st(c2 + g * L::n, acc2[g]);
    }
    for (; r < b0 + rt; ++r) {  // one row: the same sums as in a tile of rt rows
      const float* a = a_row(r);
      float* c = part + r * W;
      G acc[NG];
#pragma GCC unroll 8
      for (int g = 0; g < NG; ++g) acc[g] = L::ld(c + g * L::n);
      Index k = 0;
      if (rt == 1) {
        G odd[NG];
#pragma GCC unroll 8
        for (int g = 0; g < NG; ++g) odd[g] = L::set1(0.f);
        for (; k + 1 < K; k += 2) {
          const G a0 = L::set1(a[k]), a1 = L::set1(a[k + 1]);
          const std::uint16_t* w = bp + k * W;
#pragma GCC unroll 8
          for (int g = 0; g < NG; ++g) {
            acc[g] = L::madd(a0, L::load(w + g * L::n), acc[g]);
            odd[g] = L::madd(a1, L::load(w + W + g * L::n), odd[g]);
          }
        }
#pragma GCC unroll 8
        for (int g = 0; g < NG; ++g) acc[g] = L::add(acc[g], odd[g]);
      }
      for (; k < K; ++k) {
        const G ak = L::set1(a[k]);
#pragma GCC unroll 8
        for (int g = 0; g < NG; ++g) acc[g] = L::madd(ak, L::load(bp + k * W + g * L::n), acc[g]);
      }
#pragma GCC unroll 8
      for (int g = 0; g < NG; ++g) L::st(c + g * L::n, acc[g]);
    }
  }
  for (Index b = 0; b < B; ++b) {
    const float* pb = part + b * W;
    done(b, ei::pload<Pk<float>>(pb), ei::pload<Pk<float>>(pb + V),
         ei::pload<Pk<float>>(pb + 2 * V), ei::pload<Pk<float>>(pb + 3 * V));
  }
}

// ---- int8 panels (Packed::q8, read by lstm_step): dynamic quantization -----------------------
// A vector v (a row of W_ih or W_hh, or a step's row of x or h) with m = max |v_k| is held as
// the integers q_k = rint(v_k * (127 / m)), in [-127, 127], and its scale m / 127, all in float32
// (q = 0 and scale 0 if m < 2^-100; a NaN scale, so NaN results, if v is not finite). A gate's
// pre-activation is float(sum_k qa_k qw_k) * (sa * sw) + the bias: the sums are of integers,
// exact, so the results do not depend on the ISA, the thread count or the order of the sums
// (lstmx.reference.quantize_int8 and lstm_forward(int8=True) compute them in NumPy, bitwise).
struct QScale {
  float scale, inv;
};
inline QScale q_scale(float m) {  // m: max |v_k|, NaN if some v_k is not finite
  if (!(m <= std::numeric_limits<float>::max()))
    return {std::numeric_limits<float>::quiet_NaN(), 0.f};
  if (m < 0x1p-100f) return {0.f, 0.f};
  return {m / 127.f, 127.f / m};
}
inline int q_round(float v, float inv) {  // rint(v * inv) for |v * inv| <= 127 (to even)
  const float t = v * inv;
  return int((t + 12582912.f) - 12582912.f);  // 1.5 * 2^23: integers from here on
}

// Row a [K] of x or h, quantized, as q + 128 (unsigned, for vpdpbusd) into out [4 ceil(K/4)]
// (the padding 128: q = 0). Returns its scale.
inline float q_row(Index K, const float* a, std::uint8_t* out) {
  using P = Pk<float>;
  constexpr Index V = kV<float>;
  P m = ei::pzero(P()), bad = ei::pzero(P());
  Index k = 0;
  for (; k + V <= K; k += V) {
    const P v = ei::ploadu<P>(a + k);
    m = ei::pmax(m, ei::pabs(v)), bad = ei::padd(bad, ei::pmul(v, ei::pzero(v)));
  }
  float mx = ei::predux_max(m), nan = ei::predux(bad);  // nan: NaN if any v is inf or NaN
  for (; k < K; ++k) mx = std::max(mx, std::fabs(a[k])), nan += a[k] * 0.f;
  const QScale s = q_scale(nan == 0 ? mx : nan);
  k = 0;
  if (s.inv != 0)
    for (; k < K; ++k) out[k] = std::uint8_t(q_round(a[k], s.inv) + 128);
  for (; k < 4 * ceil_div(K, 4); ++k) out[k] = 128;
  return s.scale;
}

// acc [B, 4V] = for each row b of a [B, lda] (q + 128, 4 ceil(K/4) bytes used) and lane j, the
// sum over k of a_bk * wq's (k, j), wq [K4, 4V, 4] one panel of Packed::q8.
#if defined(__AVX512F__)
template <int R>  // rows of a at once, each 4 accumulators of 16 lanes (4V = 64 with AVX-512)
__attribute__((target("avx512vnni"))) void q8_tile_vnni(Index K4, const std::int8_t* wq,
                                                         const std::uint8_t* a, Index lda,
                                                         std::int32_t* acc) {
  __m512i s[R][4];
  for (int r = 0; r < R; ++r)
    for (int q = 0; q < 4; ++q) s[r][q] = _mm512_setzero_si512();
  for (Index k = 0; k < K4; ++k) {
    const std::int8_t* w = wq + k * 256;
    const __m512i w0 = _mm512_load_si512(w), w1 = _mm512_load_si512(w + 64),
                  w2 = _mm512_load_si512(w + 128), w3 = _mm512_load_si512(w + 192);
    for (int r = 0; r < R; ++r) {
      std::int32_t a4;
      std::memcpy(&a4, a + r * lda + 4 * k, 4);
      const __m512i av = _mm512_set1_epi32(a4);
      s[r][0] = _mm512_dpbusd_epi32(s[r][0], av, w0);
      s[r][1] = _mm512_dpbusd_epi32(s[r][1], av, w1);
      s[r][2] = _mm512_dpbusd_epi32(s[r][2], av, w2);
      s[r][3] = _mm512_dpbusd_epi32(s[r][3], av, w3);
    }
  }
  for (int r = 0; r < R; ++r)
    for (int q = 0; q < 4; ++q) _mm512_store_si512(acc + r * 64 + q * 16, s[r][q]);
}
#endif

// Without VNNI: (v)pmaddwd on the bytes widened to int16 sums each lane's products in pairs,
// (k0, k1) and (k2, k3) of a quad, into two int32 (then added). A vector takes `bytes` weight
// bytes: bytes / 4 lanes.
#if defined(__AVX512BW__)
struct MaddLanes {
  using T = __m512i;
  static constexpr int bytes = 32;
  static T widen(const std::int8_t* p) {
    return _mm512_cvtepi8_epi16(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
  }
  static T act(std::int64_t a4) { return _mm512_set1_epi64(a4); }
  static T madd(T a, T b) { return _mm512_madd_epi16(a, b); }
  static T add(T a, T b) { return _mm512_add_epi32(a, b); }
  static T zero() { return _mm512_setzero_si512(); }
  static void store(std::int32_t* p, T v) { _mm512_storeu_si512(p, v); }
};
#elif defined(__AVX2__)
struct MaddLanes {
  using T = __m256i;
  static constexpr int bytes = 16;
  static T widen(const std::int8_t* p) {
    return _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  }
  static T act(std::int64_t a4) { return _mm256_set1_epi64x(a4); }
  static T madd(T a, T b) { return _mm256_madd_epi16(a, b); }
  static T add(T a, T b) { return _mm256_add_epi32(a, b); }
  static T zero() { return _mm256_setzero_si256(); }
  static void store(std::int32_t* p, T v) { _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), v); }
};
#elif defined(__SSE2__)
struct MaddLanes {
  using T = __m128i;
  static constexpr int bytes = 8;
  static T widen(const std::int8_t* p) {  // (SSE2 has no pmovsxbw: bytes into high halves)
    const T x = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(p));
    return _mm_srai_epi16(_mm_unpacklo_epi8(x, x), 8);
  }
  static T act(std::int64_t a4) { return _mm_set1_epi64x(a4); }
  static T madd(T a, T b) { return _mm_madd_epi16(a, b); }
  static T add(T a, T b) { return _mm_add_epi32(a, b); }
  static T zero() { return _mm_setzero_si128(); }
  static void store(std::int32_t* p, T v) { _mm_storeu_si128(reinterpret_cast<__m128i*>(p), v); }
};
#endif

// LSTMX_NO_VNNI (set before the first step; a test hook) takes the pmaddwd path on a CPU that has
// VNNI too.
inline void q8_dots(Index B, Index K4, const std::int8_t* wq, const std::uint8_t* a, Index lda,
                    std::int32_t* acc) {
  constexpr Index W = 4 * kV<float>;
#if defined(__AVX512F__)
  static_assert(W == 64, "q8_tile_vnni: 64 lanes");
  static const bool vnni = __builtin_cpu_supports("avx512vnni") && !std::getenv("LSTMX_NO_VNNI");
  if (vnni) {
    Index b = 0;
    for (; b + 4 <= B; b += 4) q8_tile_vnni<4>(K4, wq, a + b * lda, lda, acc + b * W);
    for (; b + 2 <= B; b += 2) q8_tile_vnni<2>(K4, wq, a + b * lda, lda, acc + b * W);
    if (b < B) q8_tile_vnni<1>(K4, wq, a + b * lda, lda, acc + b * W);
    return;
  }
#endif
#if defined(__SSE2__)
  using M = MaddLanes;
  constexpr int NV = int(W) * 4 / M::bytes;  // vectors a quad of the panel: 8
  alignas(64) std::int32_t pairs[2 * W];
  for (Index b = 0; b < B; ++b) {
    typename M::T s[NV];
    for (int v = 0; v < NV; ++v) s[v] = M::zero();
    const std::uint8_t* ab = a + b * lda;
    for (Index k = 0; k < K4; ++k) {
      const std::int64_t a4 = std::int64_t(ab[4 * k]) | std::int64_t(ab[4 * k + 1]) << 16 |
                              std::int64_t(ab[4 * k + 2]) << 32 | std::int64_t(ab[4 * k + 3]) << 48;
      const typename M::T av = M::act(a4);
      const std::int8_t* w = wq + k * W * 4;
#pragma GCC unroll 8
      for (int v = 0; v < NV; ++v) s[v] = M::add(s[v], M::madd(M::widen(w + v * M::bytes), av));
    }
    for (int v = 0; v < NV; ++v) M::store(pairs + v * M::bytes / 2, s[v]);
    for (Index j = 0; j < W; ++j) acc[b * W + j] = pairs[2 * j] + pairs[2 * j + 1];
  }
#else
  for (Index b = 0; b < B; ++b) {  // portable: the same integer sums
    std::int32_t* c = acc + b * W;
    const std::uint8_t* ab = a + b * lda;
    for (Index j = 0; j < W; ++j) c[j] = 0;
    for (Index k = 0; k < K4; ++k) {
      const std::int32_t a0 = ab[4 * k], a1 = ab[4 * k + 1], a2 = ab[4 * k + 2], a3 = ab[4 * k + 3];
      const std::int8_t* w = wq + k * W * 4;
      for (Index j = 0; j < W; ++j)
        c[j] += a0 * w[4 * j] + a1 * w[4 * j + 1] + a2 * w[4 * j + 2] + a3 * w[4 * j + 3];
    }
  }
#endif
}

// Panel p of Packed::q8 from the float32 panel wp [K, 4V] (Panels::Gates, as pack_forward
// writes it): wq [K4, 4V, 4], each lane's scale and 128 * its sum of q. False if wp holds a
// value that is not finite.
inline bool q8_panel(Index K, const float* wp, std::int8_t* wq, float* scale, std::int32_t* qsum) {
  constexpr Index W = 4 * kV<float>;
  const Index K4 = ceil_div(K, 4);
  for (Index j = 0; j < W; ++j) {
    float mx = 0;
    for (Index k = 0; k < K; ++k) {
      const float v = std::fabs(wp[k * W + j]);
      if (!(v <= std::numeric_limits<float>::max())) return false;
      mx = std::max(mx, v);
    }
    const QScale s = q_scale(mx);
    std::int32_t sum = 0;
    for (Index k = 0; k < 4 * K4; ++k) {
      const int q = k < K && s.inv != 0 ? q_round(wp[k * W + j], s.inv) : 0;
      wq[(k / 4 * W + j) * 4 + k % 4] = std::int8_t(q), sum += q;
    }
    scale[j] = s.scale, qsum[j] = 128 * sum;
  }
  return true;
}

// The projection h = r W_hr^T of one panel (Plain, K = H): units [u0, u0 + 4V) of the R = P,
// for rows [0, B) with r's row b at a_row(b); emit(b, j0, nv, h) for each vector of units
// [j0, j0 + nv) that exists.
template <typename S, typename ARow, typename Emit>
EIGEN_ALWAYS_INLINE void project_panel(Index B, Index H, Index R, Index u0, const S* bp,
                                       ARow&& a_row, Emit&& emit, S* part) {
  using P = Pk<S>;
  constexpr Index V = kV<S>;
  panel_rows<S>(
      B, H, bp, a_row, [&](Index, int) __attribute__((always_inline)) { return ei::pzero(P()); },
      [&](Index b, P a0, P a1, P a2, P a3) __attribute__((always_inline)) {
        const P a[4] = {a0, a1, a2, a3};
        for (int g = 0; g < 4; ++g) {
          const Index nv = std::clamp<Index>(R - u0 - g * V, 0, V);
          if (nv) emit(b, u0 + g * V, nv, a[g]);
        }
      },
      part);
}

// C[M, N] = A[M, K] B[K, N], B packed Plain (pack above), C(m, n) = c[m * ldc + n] (or
// c[crow[m] * ldc + n]): this thread's share. A(m, k) = a[m * sam + k], or with a_rows false
// A(m, k) = a[k * sam + m]: then each block of A is first copied, k-major, into ap [kKC x kMC]
// (per-thread scratch), because walking down its columns would thrash the L1. Panels are cut
// into one group per thread (fewer if there are fewer panels; one with a copied A) and rows
// into chunks of kMC; an item is (group, chunk). Within an item, K
// goes in blocks of kKC, and each block of A (kMC x kKC, in L2) serves every panel of the
// group. C carries the sums between k-blocks; every output sums its k in order, whatever the
// split. With c2, the panels of a second B [K, N2] follow B's in bpk, and C2[M, N2] = A B2
// goes to c2 (ldc2): one pass over A serves both products. With add, C += A B (C's sums start
// from it; C2 is still set).
template <typename S>
void gemm_part(int tid, int nt, Index M, Index N, Index K, const S* a, Index sam,
               const S* bpk, S* c, Index ldc, bool a_rows = true, S* ap = nullptr,
               const Index* crow = nullptr, S* c2 = nullptr, Index N2 = 0, Index ldc2 = 0,
               bool add = false) {
  using P = Pk<S>;
  constexpr Index V = kV<S>, W = 4 * V;
  const Index np1 = panel_count<S>(Panels::Plain, N);
  // With a copied A, one group (every panel): each group copies its own A blocks, so more
  // groups would copy A more than once (b32-h256 training, dW = dG^T x: 2-8% slower with two);
  // the chunks below share out evenly anyway.
  const Index np = np1 + (c2 ? panel_count<S>(Panels::Plain, N2) : 0), nc0 = ceil_div(M, kMC);
  const Index ng = a_rows ? std::min<Index>(np, nt) : 1;
  // Chunks: at most kMC rows each, whole row blocks, as many as makes the items share out
  // evenly, and of equal size (within a row block), so no thread waits for another.
  Index nc = nc0;
  while (ng * nc % nt) ++nc;
  const Index units = ceil_div(M, Index(kMR));  // row blocks
  Index i0, i1;
  share(ng * nc, nt, tid, i0, i1);
  for (Index it = i0; it < i1; ++it) {
    const Index g = it / nc, ch = it % nc;
    const Index m0 = std::min(M, units * ch / nc * kMR);
    const Index m1 = std::min(M, units * (ch + 1) / nc * kMR);
    for (Index k0 = 0; k0 == 0 || k0 < K; k0 += kKC) {  // once at least: C = 0 if K = 0
      const Index kb = std::min(kKC, K - k0);
      if (!a_rows)  // ap[k][m - m0] = A(m, k0 + k)
        for (Index k = 0; k < kb; ++k)
          std::copy(a + (k0 + k) * sam + m0, a + (k0 + k) * sam + m1, ap + k * kMC);
      for (Index p = np * g / ng; p < np * (g + 1) / ng; ++p) {
        const bool first = p < np1;  // a panel of B (else of B2)
        const Index n0 = (first ? p : p - np1) * W;
        auto crow_ = [&](Index m) {  // row m of C (or C2)
          return first ? c + (crow ? crow[m] : m) * ldc : c2 + m * ldc2;
        };
        Index nv[4];  // valid lanes of each of the tile's 4 vectors
        for (int q = 0; q < 4; ++q) nv[q] = std::clamp<Index>((first ? N : N2) - n0 - q * V, 0, V);
        for (Index m = m0, rt; m < m1; m += rt) {
          rt = tile_rows(m1 - m);
          with_rows(int(rt), [&](auto RC) {
            constexpr int R = decltype(RC)::value;
            P acc[kMR][4];
            const S* ar[kMR];
#pragma GCC unroll 8
            for (int r = 0; r < R; ++r) {
              ar[r] = a_rows ? a + (m + r) * sam + k0 : ap + (m - m0 + r);
#pragma GCC unroll 4
              for (int q = 0; q < 4; ++q)
                acc[r][q] = (k0 || (add && first)) && nv[q] ? load(crow_(m + r) + n0 + q * V, nv[q])
                                                            : ei::pzero(P());
            }
            microkernel<S, R>(kb, ar, a_rows ? 1 : kMC, bpk + (p * K + k0) * W, acc);
#pragma GCC unroll 8
            for (int r = 0; r < R; ++r)
#pragma GCC unroll 4
              for (int q = 0; q < 4; ++q)
                if (nv[q]) store(crow_(m + r) + n0 + q * V, acc[r][q], nv[q]);
          });
        }
      }
    }
  }
}

template <typename S>
inline S sigmoid(S x) { return S(1) / (S(1) + std::exp(-x)); }  // exp overflow gives 0: stable

enum Stream : std::uint64_t { kZoneoutC = 0, kZoneoutH = 1, kRecurrentDropout = 2 };

// Zoneout mask of step s, user entry b, units [j0, j0 + nv): 1 (keep the old state) with
// probability p in training; the constant p in inference.
template <typename S>
EIGEN_ALWAYS_INLINE Pk<S> zoneout(const Options<S>& o, Stream st, bool training, double p, Index s,
                                  Index B, Index b, Index H, Index j0, Index nv) {
  if (!training) return ei::pset1<Pk<S>>(S(p));
  alignas(64) S m[kV<S>] = {};
  const std::uint64_t base = std::uint64_t((s * B + b) * H + j0);
  for (Index v = 0; v < nv; ++v) m[v] = uniform(o.seed, o.stream + st, base + v) < p ? S(1) : S(0);
  return ei::pload<Pk<S>>(m);
}

// The recurrent-dropout mask [B, H] (user entries): 1/(1-p) with probability 1-p, else 0. Empty
// when there is none.
template <typename S>
Mat<S> dropout_mask(const Options<S>& o, Index B, Index H, bool training) {
  Mat<S> m;
  if (!training || o.recurrent_dropout == 0) return m;
  m.resize(B, H);
  const S keep = S(1 / (1 - o.recurrent_dropout));
  for (Index i = 0; i < B * H; ++i)
    m.data()[i] = uniform(o.seed, o.stream + kRecurrentDropout, std::uint64_t(i)) >=
                  o.recurrent_dropout ? keep : S(0);
  return m;
}

// 1 where a clipped gate's activation a lies strictly inside (lo, hi), the activations of
// -clip and clip: there the clamp passed its input through; 0 where it clamped it.
template <typename P>
EIGEN_ALWAYS_INLINE P inside(const P& a, const P& lo, const P& hi) {
  return ei::pand(ei::pcmp_lt(lo, a), ei::pcmp_lt(a, hi));
}

// The clip bounds, and the activations there (where a clamped gate sits), once per call.
template <typename S>
struct Clamps {
  Pk<S> lo, hi, slo, shi, tlo, thi;
  explicit Clamps(S clip)
      : lo(ei::pset1<Pk<S>>(-clip)), hi(ei::pset1<Pk<S>>(clip)), slo(vsigmoid(lo)),
        shi(vsigmoid(hi)), tlo(vtanh(lo)), thi(vtanh(hi)) {}
  EIGEN_ALWAYS_INLINE Pk<S> operator()(const Pk<S>& z) const {
    return ei::pmin<Eigen::PropagateNaN>(ei::pmax<Eigen::PropagateNaN>(z, lo), hi);
  }
};

// Stores gate vectors (i, f, g, o) of units [j0, j0 + nv) into a gates row g [4H].
template <typename S>
EIGEN_ALWAYS_INLINE void store_gates(S* g, Index H, Index j0, Index nv, const Pk<S>& zi,
                                     const Pk<S>& zf, const Pk<S>& zg, const Pk<S>& zo) {
  store(g + j0, zi, nv), store(g + H + j0, zf, nv), store(g + 2 * H + j0, zg, nv);
  store(g + 3 * H + j0, zo, nv);
}

// Stores a tile row (i, f, g, o; V units each) into z [4V] (aligned), as a panel lays it out.
template <typename S>
EIGEN_ALWAYS_INLINE void store_tile(S* z, const Pk<S>& zi, const Pk<S>& zf, const Pk<S>& zg,
                                    const Pk<S>& zo) {
  constexpr Index V = kV<S>;
  ei::pstore(z, zi), ei::pstore(z + V, zf), ei::pstore(z + 2 * V, zg), ei::pstore(z + 3 * V, zo);
}

// The cell on units [j0, j0 + nv), given the pre-activations z and c_{t-1}: peepholes, clip,
// activations; the gates and the new cell value cn (before zoneout).
template <typename S>
struct CellOut {
  Pk<S> i, f, g, o, cn;
};
template <typename S>
EIGEN_ALWAYS_INLINE CellOut<S> cell_forward(const Options<S>& opt, const Clamps<S>& clamp,
                                            Index H, Index j0, Index nv, const Pk<S>& c0,
                                            Pk<S> zi, Pk<S> zf, Pk<S> zg, Pk<S> zo) {
  const S* pp = opt.peephole;  // [3, H]
  const bool clip = opt.clip > 0;
  if (pp) {
    zi = ei::pmadd(load(pp + j0, nv), c0, zi);
    zf = ei::pmadd(load(pp + H + j0, nv), c0, zf);
  }
  if (clip) zi = clamp(zi), zf = clamp(zf), zg = clamp(zg);
  CellOut<S> c;
  c.i = vsigmoid(zi), c.g = vtanh(zg);
  c.f = opt.input_forget ? ei::psub(ei::pset1<Pk<S>>(1), c.i) : vsigmoid(zf);
  c.cn = ei::padd(ei::pmul(c.f, c0), ei::pmul(c.i, c.g));
  if (pp) zo = ei::pmadd(load(pp + 2 * H + j0, nv), c.cn, zo);
  if (clip) zo = clamp(zo);
  c.o = vsigmoid(zo);
  return c;
}

// The cell backward on units [j, j + n), given the gates, c_{t-1} (cp), dcn = dL/dc_new
// through c_t and the output (not yet through p_o), dzo = dL/dz_o before the clip mask, and
// zcar = z * dL/dc_t (zoneout's share for c_{t-1}) or nullptr: dL/dz of the gates and dL/dc_{t-1}.
template <typename S>
struct CellGrad {
  Pk<S> dzi, dzf, dzg, dzo, dcp;
};
template <typename S>
EIGEN_ALWAYS_INLINE CellGrad<S> cell_backward(const Options<S>& opt, const Clamps<S>& cl, Index H,
                                              Index j, Index n, const Pk<S>& i, const Pk<S>& f,
                                              const Pk<S>& gg, const Pk<S>& o, const Pk<S>& cp,
                                              Pk<S> dcn, Pk<S> dzo, const Pk<S>* zcar) {
  using P = Pk<S>;
  const P one = ei::pset1<P>(1);
  const S* pp = opt.peephole;  // [3, H]
  const bool clip = opt.clip > 0;
  if (clip) dzo = ei::pand(dzo, inside(o, cl.slo, cl.shi));
  if (pp) dcn = ei::pmadd(dzo, load(pp + 2 * H + j, n), dcn);
  P di = ei::pmul(dcn, gg), dzf = ei::pzero(one);
  if (opt.input_forget) di = ei::psub(di, ei::pmul(dcn, cp));
  else dzf = ei::pmul(ei::pmul(dcn, cp), ei::pmul(f, ei::psub(one, f)));
  P dzi = ei::pmul(di, ei::pmul(i, ei::psub(one, i)));
  P dzg = ei::pmul(ei::pmul(dcn, i), ei::psub(one, ei::pmul(gg, gg)));
  if (clip) {
    dzi = ei::pand(dzi, inside(i, cl.slo, cl.shi));
    dzf = ei::pand(dzf, inside(f, cl.slo, cl.shi));
    dzg = ei::pand(dzg, inside(gg, cl.tlo, cl.thi));
  }
  P dcp = ei::pmul(dcn, f);  // dL/dc_{t-1}
  if (zcar) dcp = ei::padd(dcp, *zcar);
  if (pp) {
    dcp = ei::pmadd(dzi, load(pp + j, n), dcp);
    dcp = ei::pmadd(dzf, load(pp + H + j, n), dcp);
  }
  return {dzi, dzf, dzg, dzo, dcp};
}

// h_t of entry k at step s, units [j0, j0 + nv) of R, given h_{t-1} (hp, its row): zoneout,
// then into y and (training) into the cache as step s + 1's h_{t-1}, times the recurrent-dropout
// mask md.
template <typename S>
EIGEN_ALWAYS_INLINE void emit_h(const Dims& d, const Seq& q, const Options<S>& opt,
                                const Mat<S>& md, Cache<S>* cache, Index s, Index k,
                                const S* hp, Index j0, Index nv, Pk<S> h, S* y) {
  const Index pos = q.off[s] + k, b = q.perm[k], R = d.R();
  if (opt.zoneout_h > 0) {
    const Pk<S> z = zoneout<S>(opt, kZoneoutH, cache != nullptr, opt.zoneout_h, s, d.B, b, R, j0, nv);
    h = ei::padd(ei::pmul(z, load(hp + j0, nv)), ei::pmul(ei::psub(ei::pset1<Pk<S>>(1), z), h));
  }
  const Index yr = q.row[pos] * d.y_stride() + j0;  // the row of y, drop and y_drop
  store(y + yr, h, nv);
  if (opt.y_drop) store(opt.y_drop + yr, ei::pmul(h, load(opt.drop + yr, nv)), nv);
  if (cache && s + 1 < d.T && k < q.n[s + 1])
    store(cache->hprev.data() + (q.off[s + 1] + k) * R + j0,
          md.size() ? ei::pmul(h, load(md.data() + b * R + j0, nv)) : h, nv);
}

// dL/dh_new of entry k at step s (s < 0: dh_0), units [j, j + n) of R, from a = dG_{s+1} W_hh:
// times the recurrent-dropout mask md, plus what dhs carries (dh_n at a sequence's last step,
// zoneout's share of dh_{t+1} before) and dy; dhs then carries zoneout's share on. With a
// projection, also into dhn [N, R].
template <typename S>
EIGEN_ALWAYS_INLINE Pk<S> dh_new(const Cache<S>& cache, const Mat<S>& md, const S* dy, Mat<S>& dhs,
                                 PoolMat<S>& dhn, Index s, Index k, Index j, Index n, Pk<S> a) {
  const Seq& q = cache.seq;
  const Options<S>& opt = cache.opt;
  const Index b = q.perm[k], R = cache.d.R();
  Pk<S> dh = md.size() ? ei::pmul(a, load(md.data() + b * R + j, n)) : a;
  dh = ei::padd(dh, load(dhs.data() + k * R + j, n));
  if (s < 0) {  // dh_0
    store(dhs.data() + k * R + j, dh, n);
    return dh;
  }
  const Index pos = q.off[s] + k;
  if (dy) {  // (the gradient of y * drop, with dropout after the pass)
    const Index yr = q.row[pos] * cache.d.y_stride() + j;
    const Pk<S> g = load(dy + yr, n);
    dh = ei::padd(dh, opt.drop ? ei::pmul(g, load(opt.drop + yr, n)) : g);
  }
  if (opt.zoneout_h > 0) {  // h_t = z h_{t-1} + (1 - z) h_new
    const Pk<S> z = zoneout<S>(opt, kZoneoutH, true, opt.zoneout_h, s, cache.d.B, b, R, j, n);
    store(dhs.data() + k * R + j, ei::pmul(z, dh), n);
    dh = ei::pmul(ei::psub(ei::pset1<Pk<S>>(1), z), dh);
  } else {
    store(dhs.data() + k * R + j, ei::pzero(dh), n);
  }
  if (cache.d.P) store(dhn.data() + pos * R + j, dh, n);
  return dh;
}

// ---- Layer norm helpers ----------------------------------------------------------------------
constexpr double kLnEps = 1e-5;

// Sums f(i) (a packet of lanes [i, i + V)) over a row [n] in packets, then the tail lanes
// t(i) one by one: a fixed order, so each row's sum depends on the row alone.
template <typename S, typename F, typename Tail>
EIGEN_ALWAYS_INLINE S row_sum(Index n, F&& f, Tail&& t) {
  Pk<S> acc = ei::pzero(Pk<S>());
  Index i = 0;
  for (; i + kV<S> <= n; i += kV<S>) acc = ei::padd(acc, f(i));
  S sum = ei::predux(acc);
  for (; i < n; ++i) sum += t(i);
  return sum;
}

// Normalises a row a [n] in place, a = (a - mean) * rstd, and returns rstd = 1 / sqrt(var + eps)
// (biased variance, two passes).
template <typename S>
S ln_row(S* a, Index n) {
  using P = Pk<S>;
  const S m = row_sum<S>(n, [&](Index i) { return ei::ploadu<P>(a + i); },
                         [&](Index i) { return a[i]; }) / S(n);
  const P mv = ei::pset1<P>(m);
  const S v = row_sum<S>(
      n,
      [&](Index i) {
        const P d = ei::psub(ei::ploadu<P>(a + i), mv);
        return ei::pmul(d, d);
      },
      [&](Index i) { return (a[i] - m) * (a[i] - m); }) / S(n);
  const S rs = S(1 / std::sqrt(double(v) + kLnEps));
  const P rv = ei::pset1<P>(rs);
  for (Index i = 0; i < n; i += kV<S>) {
    const Index nv = std::min(kV<S>, n - i);
    store(a + i, ei::pmul(ei::psub(load(a + i, nv), mv), rv), nv);
  }
  return rs;
}

// The backward of a = LN(z) * gain for one row [n], given da, the normalised row nrm and its
// rstd: dz = rstd * (dn - mean(dn) - nrm * mean(dn * nrm)) with dn = da * gain.
template <typename S>
void ln_row_backward(const S* da, const S* gain, const S* nrm, S rstd, Index n, S* dz) {
  using P = Pk<S>;
  auto dn = [&](Index i) { return ei::pmul(ei::ploadu<P>(da + i), ei::ploadu<P>(gain + i)); };
  const S s1 = row_sum<S>(n, dn, [&](Index i) { return da[i] * gain[i]; }) / S(n);
  const S s2 = row_sum<S>(
      n, [&](Index i) { return ei::pmul(dn(i), ei::ploadu<P>(nrm + i)); },
      [&](Index i) { return da[i] * gain[i] * nrm[i]; }) / S(n);
  const P m1 = ei::pset1<P>(s1), m2 = ei::pset1<P>(s2), rv = ei::pset1<P>(rstd);
  for (Index i = 0; i < n; i += kV<S>) {
    const Index nv = std::min(kV<S>, n - i);
    const P d = ei::pmul(load(da + i, nv), load(gain + i, nv));
    store(dz + i, ei::pmul(rv, ei::psub(ei::psub(d, m1), ei::pmul(load(nrm + i, nv), m2))), nv);
  }
}

// Thread tid's batch entries [e0, e1) when threads split by rows: whole blocks of kMR, so
// that the microkernel's row groups, and so every sum, are the same for any thread count.
inline void share_entries(Index B, int nt, int tid, Index& e0, Index& e1) {
  Index b0, b1;
  share(ceil_div(B, kMR), nt, tid, b0, b1);
  e0 = std::min(B, b0 * kMR), e1 = std::min(B, b1 * kMR);
}

// Whether a step of the unit-split kernels, with fewer panels than threads, goes by blocks of
// entries instead (share_entries), every panel each: only while the weights it reads every
// step (bytes) fit in L2, since each thread then reads all of them.
inline bool split_entries(Index panels, int threads, Index B, Index bytes) {
  return panels < threads && ceil_div(B, Index(kMR)) > panels && bytes <= (512 << 10);
}
}  // namespace

// ---- The visiting order and the cache -----------------------------------------------------------
Seq::Seq(const Dims& d, const std::int64_t* lengths, bool reverse)
    : T(d.T), B(d.B), perm(d.B), len(d.B), n(d.T + 1, 0), off(d.T + 1, 0) {
  auto L = [&](Index b) { return lengths ? Index(lengths[b]) : T; };
  for (Index b = 0; b < B; ++b) {
    if (L(b) < 0 || L(b) > T)
      throw std::invalid_argument("lengths: expected values in [0, T] = [0, " + std::to_string(T) +
                                  "], got " + std::to_string(L(b)) + " at index " +
                                  std::to_string(b));
    perm[b] = b;
  }
  std::stable_sort(perm.begin(), perm.end(), [&](Index a, Index b) { return L(a) > L(b); });
  for (Index k = 0; k < B; ++k) len[k] = L(perm[k]);
  for (Index s = 0, k = B; s < T; ++s) {
    while (k > 0 && len[k - 1] <= s) --k;
    n[s] = k;
    off[s + 1] = off[s] + k;
  }
  N = off[T];
  row.resize(N);
  for (Index s = 0; s < T; ++s)
    for (Index k = 0; k < n[s]; ++k)
      row[off[s] + k] = d.row(reverse ? len[k] - 1 - s : s, perm[k]);
}

std::size_t Seq::nbytes() const {
  return sizeof(Index) * (perm.size() + len.size() + n.size() + off.size() + row.size());
}

template <typename S>
Cache<S>::Cache(const Dims& dims, const Options<S>& o)
    : d(dims),
      opt(o),
      seq(dims, o.lengths, o.reverse),
      x(seq.N, dims.I),
      w_ih(panel_count<S>(Panels::Plain, dims.I) * 4 * dims.H, 4 * kV<S>),
      w_hh(panel_count<S>(Panels::Plain, dims.R()) * 4 * dims.H, 4 * kV<S>),
      w_hr(dims.P, dims.H),
      peep(o.peephole ? 3 : 0, dims.H),
      gates(seq.N, 4 * dims.H),
      hprev(seq.N, dims.R()),
      r(dims.P ? seq.N : 0, dims.H),
      c(seq.N, dims.H),
      c0(dims.B, dims.H),
      ln(o.ln ? 1 : 0, 10 * dims.H),
      nx(o.ln ? seq.N : 0, 4 * dims.H),
      nh(o.ln ? seq.N : 0, 4 * dims.H),
      nc(o.ln ? seq.N : 0, dims.H),
      rstd(o.ln ? seq.N : 0, 3) {
  opt.lengths = nullptr;  // seq holds them; begin_forward fills these copies:
  opt.peephole = o.peephole ? peep.data() : nullptr;
  opt.ln = o.ln ? ln.data() : nullptr;
  opt.w_hr = dims.P ? w_hr.data() : nullptr;
  opt.y_drop = nullptr;  // (the forward's output; drop stays: backward reads it)
}

template <typename S>
std::size_t Cache<S>::nbytes() const {
  return seq.nbytes() + sizeof(S) * std::size_t(x.size() + w_ih.size() + w_hh.size() +
                                                w_hr.size() + peep.size() + gates.size() +
                                                hprev.size() + r.size() + c.size() + c0.size() +
                                                ln.size() + nx.size() + nh.size() + nc.size() +
                                                rstd.size());
}

// Panels [p0, p1) of W_ih^T and W_hh^T (Gates), and [r0, r1) of W_hr^T (Plain, with d.P), as the
// forward kernels read them: wi [np, I, 4V] (unless null), wh [np, R, 4V], whr [npr, H, 4V].
template <typename S>
void pack_forward(const Dims& d, Index p0, Index p1, Index r0, Index r1, const S* w_ih,
                  const S* w_hh, const S* w_hr, S* wi, S* wh, S* whr) {
  const Index G = 4 * d.H, R = d.R();
  const bool nt = stream_packing(std::size_t((d.I + R) * G + d.P * d.H) * sizeof(S));
  constexpr Index W = 4 * kV<S>;
  if (wi) pack<S>(Panels::Gates, p0, p1, d.I, G, w_ih, 1, d.I, wi + p0 * d.I * W, nt);  // W_ih^T
  pack<S>(Panels::Gates, p0, p1, R, G, w_hh, 1, R, wh + p0 * R * W, nt);                  // W_hh^T
  if (d.P)
    pack<S>(Panels::Plain, r0, r1, d.H, d.P, w_hr, 1, d.H, whr + r0 * d.H * W, nt);  // W_hr^T
}

// The copies the cache keeps of a training forward's inputs, filled by the forward's threads.
// cache_x: rows [r0, r1) of x, in visiting order.
template <typename S>
void cache_x(Cache<S>& cache, Index r0, Index r1, const S* x) {
  const Index I = cache.d.I;
  for (Index p = r0; p < r1; ++p) std::copy_n(x + cache.seq.row[p] * I, I, cache.x.data() + p * I);
}

// cache_weights: the rows of W_ih and W_hh of units [u0, u1) of each gate, packed as the
// backward kernels read them (Plain, K = 4H: Cache's w_ih, w_hh). Streamed past the caches
// when large: backward reads them only after the whole forward.
template <typename S>
void cache_weights(Cache<S>& cache, Index u0, Index u1, const S* w_ih, const S* w_hh) {
  constexpr Index W = 4 * kV<S>;
  const Index I = cache.d.I, H = cache.d.H, G = 4 * H, R = cache.d.R();
  const bool st = stream_packing(std::size_t(G * (I + R)) * sizeof(S));
  for (Index g = 0; g < 4 && u0 < u1; ++g) {
    const Index a = g * H + u0;  // rows [a, a + u1 - u0)
    pack<S>(Panels::Plain, 0, panel_count<S>(Panels::Plain, I), u1 - u0, I, w_ih + a * I, I, 1,
            cache.w_ih.data() + a * W, st, G);
    pack<S>(Panels::Plain, 0, panel_count<S>(Panels::Plain, R), u1 - u0, R, w_hh + a * R, R, 1,
            cache.w_hh.data() + a * W, st, G);
  }
}

// W [K, N] from the Plain panels that cache_weights writes (for the naive kernels).
template <typename S>
Mat<S> unpack(const PoolMat<S>& panels, Index K, Index N) {
  constexpr Index W = 4 * kV<S>;
  Mat<S> m(K, N);
  for (Index k = 0; k < K; ++k)
    for (Index n = 0; n < N; ++n) m(k, n) = panels.data()[(n / W * K + k) * W + n % W];
  return m;
}

// Panels [h0, h1) of W_hr (Plain: 4V units of h, K = P), as the backward kernels read them:
// whr [nph, P, 4V]. (W_hh comes packed in the cache.)
template <typename S>
void pack_backward(const Cache<S>& cache, Index h0, Index h1, S* whr) {
  const Dims& d = cache.d;
  const bool nt = stream_packing(std::size_t(d.P * d.H) * sizeof(S));
  constexpr Index W = 4 * kV<S>;
  if (d.P)
    pack<S>(Panels::Plain, h0, h1, d.P, d.H, cache.w_hr.data(), d.H, 1, whr + h0 * d.P * W, nt);
}

template <typename S>
struct Packed {
  Index I, H, P;
  S* w[3] = {};  // wi, wh, whr as pack_forward writes them, on huge pages
  std::uint16_t* half[2] = {};  // wi, wh in float16 (same layout), if made with kHalf
  // kInt8 (then w[0], w[1] are freed once these are made): wi, wh as int8 in quads
  // [panels, ceil(K / 4), 4V, 4] (q8_panel), each row's scale and 128 times its sum of q
  std::int8_t* q8[2] = {};
  float* qscale[2] = {};       // [panels * 4V]
  std::int32_t* qsum[2] = {};  // [panels * 4V]
  std::size_t cap[11] = {};
  Packed(const Dims& d, int quant) : I(d.I), H(d.H), P(d.P) {
    constexpr Index W = 4 * kV<S>;
    const Index np = panel_count<S>(Panels::Gates, 4 * d.H);
    const Index npr = d.P ? panel_count<S>(Panels::Plain, d.P) : 0;
    const Index n[3] = {np * d.I * W, np * d.R() * W, npr * d.H * W};
    auto block = [&](std::size_t bytes, int slot) { return alloc_block(bytes, cap[slot]); };
    try {
      for (int k = 0; k < 3; ++k) w[k] = static_cast<S*>(block(std::size_t(n[k]) * sizeof(S), k));
      for (int k = 0; quant == kHalf && k < 2; ++k)
        half[k] = static_cast<std::uint16_t*>(block(std::size_t(n[k]) * 2, 3 + k));
      for (int k = 0; quant == kInt8 && k < 2; ++k) {
        const Index K4 = ceil_div(k ? d.R() : d.I, 4);
        q8[k] = static_cast<std::int8_t*>(block(std::size_t(np * K4 * W * 4), 5 + k));
        qscale[k] = static_cast<float*>(block(std::size_t(np * W) * 4, 7 + k));
        qsum[k] = static_cast<std::int32_t*>(block(std::size_t(np * W) * 4, 9 + k));
      }
    } catch (...) {
      release();
      throw;
    }
  }
  ~Packed() { release(); }
  Packed(const Packed&) = delete;
  Packed& operator=(const Packed&) = delete;
  void release() {
    for (S*& p : w) std::free(p), p = nullptr;
    for (std::uint16_t*& p : half) std::free(p), p = nullptr;
    for (int k = 0; k < 2; ++k) {
      std::free(q8[k]), std::free(qscale[k]), std::free(qsum[k]);
      q8[k] = nullptr, qscale[k] = nullptr, qsum[k] = nullptr;
    }
  }
};

namespace {

// The forward kernels' packed weights: a Packed's, or per-call blocks that fill() packs.
template <typename S>
struct Weights {
  Buf<S> own[3];
  const S *wi, *wh, *whr;
  // (pack false: none, for kernels that read the weights as they are; pack_wi false: no W_ih^T)
  Weights(const Dims& d, const Packed<S>* packed, bool pack = true, bool pack_wi = true)
      : wi(), wh(), whr() {
    if (!pack) return;
    if (packed) {
      if (packed->I != d.I || packed->H != d.H || packed->P != d.P)
        throw std::invalid_argument("packed: made for other sizes");
      if (!packed->w[1]) throw std::invalid_argument("packed: int8 weights are for lstm_step only");
      wi = packed->w[0], wh = packed->w[1], whr = packed->w[2];
      return;
    }
    constexpr Index W = 4 * kV<S>;
    const Index np = panel_count<S>(Panels::Gates, 4 * d.H);
    const Index npr = d.P ? panel_count<S>(Panels::Plain, d.P) : 0;
    own[0].resize(pack_wi ? np * d.I * W : 0), own[1].resize(np * d.R() * W);
    own[2].resize(npr * d.H * W);
    wi = own[0].data(), wh = own[1].data(), whr = own[2].data();
  }
  // Thread tid of nt's panels [p0, p1) and [r0, r1) (see pack_forward), unless they came
  // packed; when training, also the cache's copies: the rows of W_ih and W_hh of the same
  // units, panel by panel, so that they come from L2 (cache_weights), and a share of x's rows.
  void fill(const Dims& d, int tid, int nt, Index p0, Index p1, Index r0, Index r1,
            const S* x, const S* w_ih, const S* w_hh, const S* w_hr, Cache<S>* cache) const {
    constexpr Index V = kV<S>;
    S *wi = own[0].data(), *wh = own[1].data(), *whr = own[2].data();
    for (Index p = p0; p < p1; ++p) {
      if (wh) pack_forward(d, p, p + 1, 0, 0, w_ih, w_hh, w_hr, wi, wh, whr);
      if (cache) cache_weights(*cache, p * V, std::min(d.H, (p + 1) * V), w_ih, w_hh);
    }
    if (wh) pack_forward(d, 0, 0, r0, r1, w_ih, w_hh, w_hr, wi, wh, whr);
    if (cache) {
      Index a, b;
      share(cache->seq.N, nt, tid, a, b);
      cache_x(*cache, a, b, x);
    }
  }
};
// Sets h_n, c_n to the initial state and y's padding to 0 and, when training, copies into the
// cache what backward reads (but x and the weights: cache_x, cache_weights). Returns false
// when there is nothing to compute.
template <typename S>
bool begin_forward(const Dims& d, const Seq& q, const Options<S>& opt, const S* h0, const S* c0,
                   const Mat<S>& md, S* y, S* h_n, S* c_n, Cache<S>* cache) {
  const Index B = d.B, H = d.H, R = d.R();
  Map<S> hn(h_n, B, R), cn(c_n, B, H);  // [B, R], [B, H]
  if (c0) cn = CMap<S>(c0, B, H); else cn.setZero();
  if (h0) hn = CMap<S>(h0, B, R); else hn.setZero();
  for (Index k = 0; k < B; ++k)  // y past each sequence's end
    for (Index t = q.len[k]; t < d.T; ++t)
      std::fill_n(y + d.row(t, q.perm[k]) * d.y_stride(), R, S(0));
  if (q.N == 0 || H == 0) return false;
  if (cache) {
    if (d.P) cache->w_hr = CMap<S>(opt.w_hr, d.P, H);
    if (opt.peephole) cache->peep = CMap<S>(opt.peephole, 3, H);
    if (opt.ln) cache->ln = CMap<S>(opt.ln, 1, 10 * H);
    for (Index k = 0; k < B; ++k) {
      cache->c0.row(k) = cn.row(q.perm[k]);
      if (k < q.n[0]) {
        if (md.size()) cache->hprev.row(k) = hn.row(q.perm[k]).cwiseProduct(md.row(q.perm[k]));
        else cache->hprev.row(k) = hn.row(q.perm[k]);
      }
    }
  }
  return true;
}

// h_n, c_n: each sequence's state after its own last step (from y, and from the cache when
// training; inference updates c_n in place).
template <typename S>
void end_forward(const Dims& d, const Seq& q, const S* y, S* h_n, S* c_n, const Cache<S>* cache) {
  const Index H = d.H, R = d.R();
  for (Index k = 0; k < d.B; ++k) {
    if (q.len[k] == 0) continue;
    const Index p = q.off[q.len[k] - 1] + k, b = q.perm[k];
    std::copy_n(y + q.row[p] * d.y_stride(), R, h_n + b * R);
    if (cache) std::copy_n(cache->c.data() + p * H, H, c_n + b * H);
  }
}

// The weight gradients and dx, all big GEMMs over the N tokens (dG packed):
//   dx = dG W_ih   dW_ih = dG^T x   dW_hh = dG^T hprev   db = column sums of dG.
// (With layer norm the fast version takes dGx = dL/d(x W_ih^T) for dx and dW_ih, dGh for dW_hh,
// and dG = dL/dz for db.)
// dx goes to the layout of x (its padding is set to 0 first), or with dx_add is added to it.
// The naive version: Eigen, one thread.
template <typename S>
void weight_grads_naive(const Cache<S>& cache, const PoolMat<S>& dG, S* dx, bool dx_add,
                        S* dw_ih, S* dw_hh, S* db) {
  const Index I = cache.d.I, H = cache.d.H, G = 4 * H;
  const Mat<S> dxp = dG * unpack(cache.w_ih, G, I);  // [N, I]
  for (Index p = 0; p < cache.seq.N; ++p) {
    Map<S> row(dx + cache.seq.row[p] * I, 1, I);
    if (dx_add) row += dxp.row(p); else row = dxp.row(p);
  }
  Map<S>(dw_ih, G, I).noalias() = dG.transpose() * cache.x;
  Map<S>(dw_hh, G, H).noalias() = dG.transpose() * cache.hprev;
  Map<S>(db, 1, G) = dG.colwise().sum();
}

// The fast version: each right-hand matrix is packed (all threads share the work; W_ih comes
// packed in the cache), then one packed GEMM (gemm_part) computes the product. One scratch
// buffer serves all of them in turn.
// With a projection, also dW_hr = dhn^T r (dhn [N, P]: dL/dh_new of every token).
template <typename S>
void weight_grads_fast(int threads, const Cache<S>& cache, const PoolMat<S>& dGx,
                       const PoolMat<S>& dGh, const PoolMat<S>& dG, const PoolMat<S>& dhn, S* dx,
                       bool dx_add, S* dw_ih, S* dw_hh, S* db, S* dw_hr) {
  constexpr Index W = 4 * kV<S>;
  const Index N = cache.seq.N, I = cache.d.I, H = cache.d.H, G = 4 * H, R = cache.d.R();
  const Index npi = panel_count<S>(Panels::Plain, I), npr = panel_count<S>(Panels::Plain, R);
  const Index nph = cache.d.P ? panel_count<S>(Panels::Plain, H) : 0;
  // With fewer inputs than a panel is wide, dx and dW_ih as they are would be mostly padding
  // (I of W columns): then compute their transposes, 4H and N columns wide, and transpose back.
  const bool narrow = I < W;
  const bool fuse = !narrow && dGx.data() == dGh.data();  // dW_ih and dW_hh share A = dG^T
  const Index npg = panel_count<S>(Panels::Plain, G), npn = panel_count<S>(Panels::Plain, N);
  Buf<S> pk(std::max({narrow ? std::max(npn * G, npg * N) : 0, ((fuse ? npi : 0) + npr) * N,
                      npi * N, nph * N}) * W);  // packed right-hand side
  Buf<S> tr(narrow ? I * std::max(N, G) : 0);  // [I, N] dx^T, then [I, 4H] dW_ih^T
  const S *dg = dG.data(), *dgx = dGx.data(), *dgh = dGh.data();   // [N, 4H]
  const double flops = 2.0 * N * (G * (2 * I + R) + cache.d.P * H);
  with_team(threads, npi + npr, flops, [&](int tid, int nt, Errors& err) {
    Buf<S> ap;  // this thread's copy of a block of A^T
    err.run([&] { ap.resize(kKC * kMC); });
    // C[M, n] = A B with A(m, k) = a[m * lda + k] (a_rows) or a[k * lda + m], and
    // B(k, n) = b[k * sbk + n * sbn] (K x n) packed first; with b2 (row-major [K, n2]), also
    // C2[M, n2] = A B2 in the same pass over A.
    auto product = [&](Index M, Index n, Index K, const S* a, Index lda, bool a_rows, const S* b,
                       Index sbk, Index sbn, S* c, const Index* crow, Index n2 = 0,
                       const S* b2 = nullptr, S* c2 = nullptr) {
      const Index np1 = panel_count<S>(Panels::Plain, n);
      Index p0, p1;
      share(np1 + (b2 ? panel_count<S>(Panels::Plain, n2) : 0), nt, tid, p0, p1);
      err.run([&] {
        const Index a0 = std::min(p0, np1), b0 = std::max(p0, np1) - np1;
        pack<S>(Panels::Plain, a0, std::min(p1, np1), K, n, b, sbk, sbn, pk.data() + a0 * K * W);
        if (b2)
          pack<S>(Panels::Plain, b0, std::max(p1, np1) - np1, K, n2, b2, n2, 1,
                  pk.data() + (np1 + b0) * K * W);
      });
      barrier();
      err.run([&] {
        gemm_part<S>(tid, nt, M, n, K, a, lda, pk.data(), c, n, a_rows, ap.data(), crow, c2, n2,
                     n2);
      });
      barrier();  // before pk is packed again
    };
    const S* x = cache.x.data();  // [N, I]
    const S* wi = cache.w_ih.data();  // [npi, 4H, W] W_ih, packed (one panel when narrow)
    if (narrow) {
      Index a, b;
      product(I, N, G, wi, W, false, dgx, 1, G, tr.data(), nullptr);  // dx^T = W_ih^T dG^T
      share(N, nt, tid, a, b);  // (the next product's first barrier ends these reads of tr)
      for (Index n = a; n < b; ++n)
        for (Index i = 0; i < I; ++i) {
          S& o = dx[cache.seq.row[n] * I + i];
          o = dx_add ? o + tr.data()[i * N + n] : tr.data()[i * N + n];
        }
      product(I, G, N, x, I, false, dgx, G, 1, tr.data(), nullptr);  // dW_ih^T = x^T dG
      share(G, nt, tid, a, b);
      for (Index g = a; g < b; ++g)
        for (Index i = 0; i < I; ++i) dw_ih[g * I + i] = tr.data()[i * G + g];
    } else {
      err.run([&] {  // dx = dG W_ih (packed already)
        gemm_part<S>(tid, nt, N, I, G, dgx, G, wi, dx, I, true, ap.data(), cache.seq.row.data(),
                     nullptr, 0, 0, dx_add);
      });
      if (fuse)  // dW_ih = dG^T x and dW_hh = dG^T hprev, in one pass over dG
        product(G, I, N, dgx, G, false, x, I, 1, dw_ih, nullptr, R, cache.hprev.data(), dw_hh);
      else
        product(G, I, N, dgx, G, false, x, I, 1, dw_ih, nullptr);  // dW_ih = dG^T x
    }
    if (!fuse)
      product(G, R, N, dgh, G, false, cache.hprev.data(), R, 1, dw_hh, nullptr);  // dG^T hprev
    if (cache.d.P)
      product(R, H, N, dhn.data(), R, false, cache.r.data(), H, 1, dw_hr, nullptr);  // dhn^T r
    Index c0, c1;  // db: this thread's columns
    share(G, nt, tid, c0, c1);
    err.run([&] {  // rows in order, whatever the split: the sums do not depend on it
      std::fill(db + c0, db + c1, S(0));
      for (Index r = 0; r < N; ++r)
        for (Index c = c0; c < c1; ++c) db[c] += dg[r * G + c];
    });
  });
}

// The input projection's chunks: runs of consecutive steps with about kMC tokens (at least one
// step), so that with lengths a chunk keeps its size as the active batch shrinks.
struct Chunks {
  std::vector<Index> first;  // [T] the first step of each step's chunk
  std::vector<Index> end;    // [T] at a chunk's first step: one past its last step
  Index rows = 0;            // the most tokens in a chunk
  Index count = 0;           // chunks
  explicit Chunks(const Seq& q) : first(q.T), end(q.T) {
    for (Index s = 0; s < q.T;) {
      Index e = s + 1;
      while (e < q.T && q.off[e + 1] - q.off[s] <= std::max(kMC, q.n[s])) ++e;
      std::fill(first.begin() + s, first.begin() + e, s);
      end[s] = e;
      rows = std::max(rows, q.off[e] - q.off[s]);
      s = e, ++count;
    }
  }
};

// ---- Naive reference: Eigen GEMMs, scalar cell loops, one thread ------------------------------
// The plain cell only (any lengths and direction).
template <typename S>
void forward_naive(const Dims& d, const Seq& q, const S* x, const S* w_ih, const S* w_hh,
                   const S* bias, S* y, const S* h_n, S* c_n, Cache<S>* cache) {
  const Index T = d.T, B = d.B, H = d.H, G = 4 * H, N = q.N, ys = d.y_stride();
  FlushDenormals ftz;
  if (cache) cache_x(*cache, 0, N, x), cache_weights(*cache, 0, H, w_ih, w_hh);
  Mat<S> xs, scratch;  // inference: x and the gates, packed
  if (!cache) {
    xs.resize(N, d.I), scratch.resize(N, G);
    for (Index p = 0; p < N; ++p) xs.row(p) = CMap<S>(x + q.row[p] * d.I, 1, d.I);
  }
  S* gates = cache ? cache->gates.data() : scratch.data();  // [N, 4H]
  Map<S>(gates, N, G).noalias() =
      (cache ? cache->x : xs) * CMap<S>(w_ih, G, d.I).transpose();
  Mat<S> cs(B, H), hp(B, H);  // c_{t-1} and h_{t-1} of each entry
  for (Index k = 0; k < B; ++k) cs.row(k) = Map<S>(c_n + q.perm[k] * H, 1, H);
  for (Index s = 0; s < T; ++s) {
    const Index Bs = q.n[s], p0 = q.off[s];
    for (Index k = 0; k < Bs; ++k)
      hp.row(k) = CMap<S>(s ? y + q.row[q.off[s - 1] + k] * ys : h_n + q.perm[k] * H, 1, H);
    Map<S>(gates + p0 * G, Bs, G).noalias() += hp.topRows(Bs) * CMap<S>(w_hh, G, H).transpose();
    for (Index k = 0; k < Bs; ++k) {
      S* gb = gates + (p0 + k) * G;  // gates i, f, g, o at +0, +H, +2H, +3H
      for (Index j = 0; j < H; ++j) {
        S zi = gb[j], zf = gb[H + j], zg = gb[2 * H + j], zo = gb[3 * H + j];
        if (bias) zi += bias[j], zf += bias[H + j], zg += bias[2 * H + j], zo += bias[3 * H + j];
        const S i = sigmoid(zi), f = sigmoid(zf), gg = std::tanh(zg), o = sigmoid(zo);
        const S c = f * cs(k, j) + i * gg;
        gb[j] = i, gb[H + j] = f, gb[2 * H + j] = gg, gb[3 * H + j] = o;
        cs(k, j) = c;
        if (cache) cache->c(p0 + k, j) = c;
        y[q.row[p0 + k] * ys + j] = o * std::tanh(c);
      }
      if (cache && s + 1 < T && k < q.n[s + 1])  // h_t is step t+1's h_{t-1}
        cache->hprev.row(q.off[s + 1] + k) = CMap<S>(y + q.row[p0 + k] * ys, 1, H);
    }
  }
  for (Index k = 0; k < B; ++k) Map<S>(c_n + q.perm[k] * H, 1, H) = cs.row(k);
}

// dhs, dcs [B, H] by entry: dh_n and dc_n on entry; dh_0 and dc_0 on exit.
template <typename S>
void backward_naive(const Cache<S>& cache, const S* dy, Mat<S>& dhs, Mat<S>& dcs,
                    PoolMat<S>& dG) {
  const Dims& d = cache.d;
  const Seq& q = cache.seq;
  const Index H = d.H, G = 4 * H;
  FlushDenormals ftz;
  const Mat<S> w_hh = unpack(cache.w_hh, G, d.R());  // [4H, R]
  for (Index s = d.T - 1; s >= -1; --s) {
    const Index m = q.n[s + 1];  // entries that step s + 1 reads: dh = dG_{s+1} W_hh
    if (m) dhs.topRows(m).noalias() = CMap<S>(dG.data() + q.off[s + 1] * G, m, G) * w_hh;
    if (s < 0) break;
    for (Index k = 0; k < q.n[s]; ++k) {
      const Index p = q.off[s] + k;
      const S* gb = cache.gates.data() + p * G;
      const S* cp = s ? cache.c.data() + (q.off[s - 1] + k) * H : cache.c0.data() + k * H;
      S* db = dG.data() + p * G;
      for (Index j = 0; j < H; ++j) {
        const S i = gb[j], f = gb[H + j], gg = gb[2 * H + j], o = gb[3 * H + j];
        const S tc = std::tanh(cache.c(p, j));
        const S dht = dhs(k, j) + (dy ? dy[q.row[p] * d.y_stride() + j] : S(0));
        const S dct = dcs(k, j) + dht * o * (S(1) - tc * tc);
        db[j] = dct * gg * i * (S(1) - i);
        db[H + j] = dct * cp[j] * f * (S(1) - f);
        db[2 * H + j] = dct * i * (S(1) - gg * gg);
        db[3 * H + j] = dht * tc * o * (S(1) - o);
        dcs(k, j) = dct * f;
      }
    }
  }
}

// ---- Fast: packed weights, fused microkernel epilogues, one barrier a step -----------------------
template <typename S>
void forward_fast(int threads, const Dims& d, const Seq& q, const Options<S>& opt, const S* x,
                  const S* w_ih, const S* w_hh, const S* bias, const S* h0, const Mat<S>& md,
                  S* y, const S* h_n, S* c_n, Cache<S>* cache, const Packed<S>* packed) {
  using P = Pk<S>;
  constexpr Index V = kV<S>, W = 4 * V;
  const Index T = d.T, B = d.B, I = d.I, H = d.H, G = 4 * H;
  const Index np = panel_count<S>(Panels::Gates, G);  // panels: V units, 4 gates each
  // The input projection is computed a chunk of steps at a time (about kMC tokens), just before
  // those steps, by the thread that owns the units: it stays in L2, and needs no [N, 4H]
  // buffer. It is kept panel by panel, zx [np, rows, 4V]: each row of a panel is 256
  // contiguous bytes (with AVX-512), written and read in order. (As rows of [rows, 4H], 4 KiB
  // apart at H = 256, a panel's rows all fell in one L1 set: inference took 1-3% longer on the
  // grid.) Training's step writes the activated gates into the cache.
  const Chunks ch(q);
  const Index R = d.R(), npr = d.P ? panel_count<S>(Panels::Plain, d.P) : 0;
  const bool proj = d.P > 0;
  // Buffers, sized once: packed weights (unless given), the projection of a chunk, and r_t
  // (inference only).
  // With one chunk, each panel of W_ih^T is read once: unless it came packed, it is packed
  // just before its projection (fly) into a one-panel buffer that stays in L2, rather than all
  // into [np, I, 4V] first, out to L3 or memory and back (b1-h128, b4-h1024: 2% faster).
  // With more chunks, packing every panel again for each was 2% slower (b16-h512, b32-h256).
  const bool fly = !packed && ch.count == 1;
  const Weights<S> pw(d, packed, true, !fly);
  Buf<S> zx(ch.rows * np * W), rs(cache || !proj ? 0 : B * H);
  S* gates = cache ? cache->gates.data() : nullptr;  // [N, 4H] (training)
  const bool training = cache != nullptr;
  const bool zc = opt.zoneout_c > 0;
  const P one = ei::pset1<P>(1);
  const Clamps<S> clamp(opt.clip);
  // A step splits by panels, so at most one thread a panel, unless the panels are fewer than
  // the threads: then by blocks of entries (split_entries), or else the others join only if
  // the projection is worth a barrier a step to them (>= 1 MFLOP a step).
  const bool step_rows = split_entries(np, threads, B, G * R * Index(sizeof(S)));
  const Index items = step_rows ? std::min<Index>(ceil_div(B, Index(kMR)), threads)
                      : np < threads && 2.0 * B * I * G >= 1 << 20 ? threads : np;
  with_team(threads, items, 2.0 * q.N * (G * (I + R) + H * d.P), [&](int tid, int nt, Errors& err) {
    Buf<S> part, wip;  // panel_rows' tiles and (fly) a panel of W_ih^T [I, 4V], per thread
    err.run([&] { part.resize(std::max(ch.rows, B) * W), wip.resize(fly ? I * W : 0); });
    Index p0, p1, pr0, pr1;
    share(np, nt, tid, p0, p1);  // this thread's units: [p0 V, p1 V), for good
    share(npr, nt, tid, pr0, pr1);  // and of h with a projection: [pr0 4V, pr1 4V)
    err.run([&] { pw.fill(d, tid, nt, p0, p1, pr0, pr1, x, w_ih, w_hh, opt.w_hr, cache); });
    // The projection goes by the same panels while they share out evenly: each thread then
    // projects just what its own steps read. Otherwise it goes by (panel, block of kMR rows of
    // the chunk) too, evenly, with a barrier after the packing and after each chunk's projection.
    const bool by_rows = np % nt != 0;
    if (by_rows) barrier();  // every panel packed
    Index e0 = 0, e1 = B, sp0 = p0, sp1 = p1;  // a step's entries and panels
    if (step_rows) share_entries(B, nt, tid, e0, e1), sp0 = 0, sp1 = np;
    for (Index s = 0; s < T; ++s) {
      const Index s0 = ch.first[s];  // first step of the projection chunk
      auto zrow = [&](Index p, Index pos) __attribute__((always_inline)) {  // panel p's row of pos
        return zx.data() + (p * ch.rows + pos - q.off[s0]) * W;
      };
      if (s == s0) {  // x W_ih^T + b for the tokens of the chunk's steps
        err.run([&] {
          const Index pa = q.off[s], nr = q.off[ch.end[s]] - pa;
          const Index rb = by_rows ? Index(kMR) : std::max<Index>(nr, 1);  // rows a block
          const Index nb = ceil_div(nr, rb);  // blocks a panel
          Index i0, i1;  // items: (panel, block) in that order; with nb = 1, [p0, p1)
          share(np * nb, nt, tid, i0, i1);
          for (Index it = i0; it < i1;) {
            const Index p = it / nb, b0 = it % nb, b1 = std::min(nb, b0 + i1 - it);
            const Index j0 = p * V, nv = std::min(V, H - j0);
            const Index r0 = b0 * rb, r1 = std::min(nr, b1 * rb);  // rows [r0, r1)
            if (fly) pack<S>(Panels::Gates, p, p + 1, I, G, w_ih, 1, I, wip.data());
            const S* wp = fly ? wip.data() : pw.wi + p * I * W;  // [I, 4V]
            panel_rows<S>(
                r1 - r0, I, wp,
                [&](Index i) __attribute__((always_inline)) { return x + q.row[pa + r0 + i] * I; },
                [&](Index, int g) __attribute__((always_inline)) {
                  return bias ? load(bias + g * H + j0, nv) : ei::pzero(P());
                },
                [&](Index i, P zi, P zf, P zg, P zo) __attribute__((always_inline)) {
                  store_tile(zrow(p, pa + r0 + i), zi, zf, zg, zo);
                },
                part.data());
            it += b1 - b0;
          }
        });
        if (by_rows) barrier();  // the chunk's projection complete
      }
      const Index Bs = q.n[s];
      // h_{t-1} of entry k [R]: a row of y, or of h_n (= h_0)
      auto hprev = [&](Index k) __attribute__((always_inline)) {
        return s ? y + q.row[q.off[s - 1] + k] * d.y_stride() : h_n + q.perm[k] * R;
      };
      auto emit = [&](Index k, Index j0, Index nv, P h) __attribute__((always_inline)) {
        emit_h(d, q, opt, md, cache, s, k, hprev(k), j0, nv, h, y);
      };
      err.run([&] {
        const Index nr = std::max<Index>(0, std::min(e1, Bs) - e0);  // entries [e0, e0 + nr)
        for (Index pi = sp0; pi < sp1; ++pi) {
          const Index p = visit(s % 2, sp0, sp1, pi);  // (b4-h256, b1-h128 2% faster)
          const Index j0 = p * V, nv = std::min(V, H - j0);  // units [j0, j0 + nv)
          panel_rows<S>(
              nr, s || h0 ? R : 0, pw.wh + p * R * W,  // h_{-1} = 0 adds nothing
              [&](Index i) __attribute__((always_inline)) {
                return training ? cache->hprev.data() + (q.off[s] + e0 + i) * R : hprev(e0 + i);
              },
              [&](Index i, int g) __attribute__((always_inline)) {  // the input projection
                return load(zrow(p, q.off[s] + e0 + i) + g * V, nv);
              },
              [&](Index i, P zi, P zf, P zg, P zo) __attribute__((always_inline)) {  // the cell
                const Index k = e0 + i, pos = q.off[s] + k, b = q.perm[k];
                const S* cp = training ? (s ? cache->c.data() + (q.off[s - 1] + k) * H
                                            : cache->c0.data() + k * H)
                                       : c_n + b * H;
                const P c0 = load(cp + j0, nv);  // c_{t-1}
                const CellOut<S> cell = cell_forward(opt, clamp, H, j0, nv, c0, zi, zf, zg, zo);
                const P cn = cell.cn, r = ei::pmul(cell.o, vtanh(cn));
                P c = cn;
                if (zc) {
                  const P z = zoneout<S>(opt, kZoneoutC, training, opt.zoneout_c, s, B, b, H, j0, nv);
                  c = ei::padd(ei::pmul(z, c0), ei::pmul(ei::psub(one, z), cn));
                }
                store((training ? cache->c.data() + pos * H : c_n + b * H) + j0, c, nv);
                if (training)  // the activated gates
                  store_gates(gates + pos * G, H, j0, nv, cell.i, cell.f, cell.g, cell.o);
                if (proj)  // r, for h_t = r W_hr^T once every unit's r is there
                  store((training ? cache->r.data() + pos * H : rs.data() + k * H) + j0, r, nv);
                else
                  emit(k, j0, nv, r);
              },
              part.data());
        }
      });
      if (proj) {
        barrier();  // r_t complete
        err.run([&] {
          for (Index p = pr0; p < pr1; ++p) {
            project_panel<S>(
                Bs, H, R, p * W, pw.whr + p * H * W,
                [&](Index k) __attribute__((always_inline)) {
                  return training ? cache->r.data() + (q.off[s] + k) * H : rs.data() + k * H;
                },
                emit, part.data());
          }
        });
      }
      barrier();  // h_t complete before step t+1 reads it
    }
  });
}

// dhs [B, R], dcs [B, H] by entry: dh_n and dc_n on entry; dh_0 and dc_0 on exit. dpeep
// [3, H] (zero on entry: lstm_backward clears it) or nullptr. With a projection, dhn [N, R]
// receives dL/dh_new of every token (for dW_hr).
template <typename S>
void backward_fast(int threads, const Cache<S>& cache, const S* dy, Mat<S>& dhs, Mat<S>& dcs,
                   PoolMat<S>& dG, S* dpeep, PoolMat<S>& dhn) {
  using P = Pk<S>;
  constexpr Index V = kV<S>, W = 4 * V;
  const Dims& d = cache.d;
  const Seq& q = cache.seq;
  const Options<S>& opt = cache.opt;
  const Index T = d.T, B = d.B, H = d.H, G = 4 * H, R = d.R();
  const bool proj = d.P > 0;
  const Index npr = panel_count<S>(Panels::Plain, R);   // W_hh panels: 4V units of R, K = 4H
  const Index nph = proj ? panel_count<S>(Panels::Plain, H) : 0;  // W_hr: 4V units, K = P
  const S* wh = cache.w_hh.data();  // [npr, 4H, 4V]
  Buf<S> whr(nph * d.P * W);
  const Mat<S> md = dropout_mask(opt, B, R, true);
  const bool zc = opt.zoneout_c > 0;
  const P one = ei::pset1<P>(1), zero = ei::pzero(one);
  const Clamps<S> cl(opt.clip);
  const double flops = 2.0 * q.N * (G * R + d.P * H);
  // A step splits by panels of h; with fewer panels than threads (R <= 64 on 2 threads with
  // AVX-512), by blocks of entries (split_entries), but not with peepholes, whose sums over
  // entries (dpeep) need each unit on one thread. (I = H = 64, B = 64, T = 100: backward
  // 8.0 -> 5.7 ms on 2 threads.)
  const bool by_rows =
      split_entries(npr, threads, B, G * R * Index(sizeof(S))) && !(dpeep && opt.peephole);
  with_team(threads, by_rows ? ceil_div(B, Index(kMR)) : std::max(npr, nph), flops,
            [&](int tid, int nt, Errors& err) {
    Buf<S> part;  // panel_rows' tiles, per thread
    err.run([&] { part.resize(B * W); });
    Index p0 = 0, p1 = npr, r0 = 0, r1 = B, ph0, ph1;
    if (by_rows)
      share_entries(B, nt, tid, r0, r1);  // this thread's rows: [r0, r1), for good
    else
      share(npr, nt, tid, p0, p1);  // this thread's units of h: [p0 4V, p1 4V), for good
    share(nph, nt, tid, ph0, ph1);  // and of r, with a projection
    err.run([&] { pack_backward(cache, ph0, ph1, whr.data()); });
    // Step s, from T - 1 down to -1 (which leaves dh_0 in dhs):
    //   dh_t = dG_{t+1} W_hh (times m) for the thread's units of h, plus what dhs carries (dh_n
    //   at a sequence's last step, the zoneout share of dh_{t+1} before), plus dy_t;
    //   dr_t = dh_new (no projection), or dh_new W_hr after a barrier; the cell backward on
    //   the tile writes dG_t.
    for (Index s = T - 1; s >= -1; --s) {
      const Index Bs = s < 0 ? B : q.n[s], m = q.n[s + 1];  // rows, rows with dG_{s+1}
      // the cell backward of entry k, units [j, j + n) of H, given dL/dr
      auto cell = [&](Index k, Index j, Index n, P dr) __attribute__((always_inline)) {
        const Index pos = q.off[s] + k, b = q.perm[k];
        const S* gb = cache.gates.data() + pos * G;
        const P i = load(gb + j, n), f = load(gb + H + j, n), gg = load(gb + 2 * H + j, n),
                o = load(gb + 3 * H + j, n);
        const P cp = load(s ? cache.c.data() + (q.off[s - 1] + k) * H + j
                            : cache.c0.data() + k * H + j, n);  // c_{t-1}
        // the new cell value, before zoneout
        const P cn = zc ? ei::padd(ei::pmul(f, cp), ei::pmul(i, gg))
                        : load(cache.c.data() + pos * H + j, n);
        const P tc = vtanh(cn), dcar = load(dcs.data() + k * H + j, n);
        P dcn = dcar, z = zero;
        if (zc) {  // c_t = z c_{t-1} + (1 - z) c_new
          z = zoneout<S>(opt, kZoneoutC, true, opt.zoneout_c, s, B, b, H, j, n);
          dcn = ei::pmul(ei::psub(one, z), dcar);
        }
        const P dzo = ei::pmul(ei::pmul(dr, tc), ei::pmul(o, ei::psub(one, o)));
        dcn = ei::padd(dcn, ei::pmul(ei::pmul(dr, o), ei::psub(one, ei::pmul(tc, tc))));
        const P zcar = ei::pmul(z, dcar);
        const CellGrad<S> g = cell_backward(opt, cl, H, j, n, i, f, gg, o, cp, dcn, dzo,
                                            zc ? &zcar : nullptr);
        store_gates(dG.data() + pos * G, H, j, n, g.dzi, g.dzf, g.dzg, g.dzo);
        if (dpeep && opt.peephole) {
          store(dpeep + j, ei::pmadd(g.dzi, cp, load(dpeep + j, n)), n);
          store(dpeep + H + j, ei::pmadd(g.dzf, cp, load(dpeep + H + j, n)), n);
          store(dpeep + 2 * H + j, ei::pmadd(g.dzo, cn, load(dpeep + 2 * H + j, n)), n);
        }
        store(dcs.data() + k * H + j, g.dcp, n);
      };
      auto zeros = [&](Index, int) __attribute__((always_inline)) { return zero; };
      // Runs f(k, j, n, tile vector) over the 4 vectors of panel p (4V units of `units`).
      auto tiles = [&](Index p, Index units, auto&& f) __attribute__((always_inline)) {
        return [&, p, units](Index k, P a0, P a1, P a2, P a3) __attribute__((always_inline)) {
          const P a[4] = {a0, a1, a2, a3};
          for (int g = 0; g < 4; ++g) {
            const Index j = p * W + g * V, n = std::clamp<Index>(units - j, 0, V);
            if (n) f(k, j, n, a[g]);
          }
        };
      };
      auto head_cell = [&](Index k, Index j, Index n, P a) __attribute__((always_inline)) {
        const P dh = dh_new(cache, md, dy, dhs, dhn, s, k, j, n, a);
        if (!proj && s >= 0) cell(k, j, n, dh);
      };
      err.run([&] {
        const Index a = std::max(r0, m), nm = std::max<Index>(0, std::min(r1, m) - r0);
        for (Index p = p0; p < p1; ++p) {
          auto f = tiles(p, R, head_cell);
          panel_rows<S>(  // the entries still running at step s + 1: dG_{s+1} W_hh
              nm, G, wh + p * G * W,
              [&](Index k) __attribute__((always_inline)) {
                return dG.data() + (q.off[s + 1] + r0 + k) * G;
              },
              zeros,
              [&](Index k, P a0, P a1, P a2, P a3) __attribute__((always_inline)) {
                f(r0 + k, a0, a1, a2, a3);
              },
              part.data());
          panel_rows<S>(  // those whose last step is s: no recurrent term
              std::max<Index>(0, std::min(r1, Bs) - a), 0, wh, [&](Index) { return wh; }, zeros,
              [&](Index k, P a0, P a1, P a2, P a3) __attribute__((always_inline)) {
                f(a + k, a0, a1, a2, a3);
              },
              part.data());
        }
      });
      if (proj && s >= 0) {
        barrier();  // dh_new complete
        err.run([&] {
          for (Index p = ph0; p < ph1; ++p)
            panel_rows<S>(  // dr = dh_new W_hr
                Bs, d.P, whr.data() + p * d.P * W,
                [&](Index k) __attribute__((always_inline)) {
                  return dhn.data() + (q.off[s] + k) * R;
                },
                zeros, tiles(p, H, cell), part.data());
        });
      }
      barrier();  // dG_t complete before step t-1 reads it
    }
  });
}

// ---- Dot products of the weights as they are, no packing (streaming, one step) --------------
// At small B a step reads every weight once and reuses it little, so packing W^T (which reads
// and writes them all) would cost more than the step. Instead each output is a dot product of
// a weight row with an input row, in tiles of NR rows by NE inputs: each weight vector loaded
// serves the NE inputs, and the NR x NE independent sums hide the FMA latency. Each sum runs
// over k in a fixed order (per lane, then the lanes), whatever the tiling or the thread split.

// Sums in a tile: half the vector registers (the rest hold inputs and a weight vector).
constexpr int kDotSums = EIGEN_ARCH_DEFAULT_NUMBER_OF_REGISTERS >= 32 ? 16 : 8;

// acc[r][e] += sum_k w[r][k] a[e][k] over K, lane by lane: NR rows w[r], NE rows a[e].
template <typename S, int NR, int NE>
EIGEN_ALWAYS_INLINE void dot_rows(Index K, const S* const* w, const S* const* a,
                                  Pk<S> (&acc)[NR][NE]) {
  using P = Pk<S>;
  constexpr Index V = kV<S>;
  auto block = [&](Index k, Index n) __attribute__((always_inline)) {  // lanes [k, k + n)
    P av[NE];
#pragma GCC unroll 4
    for (int e = 0; e < NE; ++e) av[e] = load(a[e] + k, n);
#pragma GCC unroll 8
    for (int r = 0; r < NR; ++r) {
#if defined(__SSE__) || defined(__x86_64__)
      if constexpr (NE > 1)  // the row 1 KiB ahead (docs/design.md, "Streaming")
        _mm_prefetch(reinterpret_cast<const char*>(w[r] + k) + 1024, _MM_HINT_T0);
#endif
      const P wv = load(w[r] + k, n);
#pragma GCC unroll 4
      for (int e = 0; e < NE; ++e) acc[r][e] = ei::pmadd(wv, av[e], acc[r][e]);
    }
  };
  Index k = 0;
  for (; k + V <= K; k += V) block(k, V);
  if (k < K) block(k, K - k);
}

// out[r][e] = w1[r] . a1[e] + w2[r] . a2[e] (K1 and K2 values; a2 unread when K2 = 0): one set
// of sums, reduced across the lanes once.
template <typename S, int NR, int NE>
EIGEN_ALWAYS_INLINE void dots(Index K1, const S* const* w1, const S* const* a1, Index K2,
                              const S* const* w2, const S* const* a2, S (&out)[NR][NE]) {
  Pk<S> acc[NR][NE];
#pragma GCC unroll 8
  for (int r = 0; r < NR; ++r)
#pragma GCC unroll 4
    for (int e = 0; e < NE; ++e) acc[r][e] = ei::pzero(Pk<S>());
  dot_rows<S, NR, NE>(K1, w1, a1, acc);
  if (K2) dot_rows<S, NR, NE>(K2, w2, a2, acc);
#pragma GCC unroll 8
  for (int r = 0; r < NR; ++r)
#pragma GCC unroll 4
    for (int e = 0; e < NE; ++e) out[r][e] = ei::predux(acc[r][e]);
}

// Calls f(e0, NE) for the rows [e0, e0 + NE) of [0, B), NE <= EM a compile-time count.
template <int EM, typename F>
EIGEN_ALWAYS_INLINE void entry_tiles(Index B, F&& f) {
  for (Index e0 = 0; e0 < B; e0 += EM)
    with_rows<EM>(int(std::min<Index>(EM, B - e0)),
                  [&](auto NE) __attribute__((always_inline)) { f(e0, NE); });
}

// out(e, r, v) with v = w[r] . a(e) over K, for NR rows w[r] and entries e < n, in tiles of NR
// rows by up to kDotSums / NR entries.
template <typename S, int NR, typename A, typename Out>
EIGEN_ALWAYS_INLINE void rows_dots(Index n, Index K, const S* const* w, A&& a, Out&& out) {
  entry_tiles<kDotSums / NR>(n, [&](Index e0, auto NE) __attribute__((always_inline)) {
    constexpr int ne = decltype(NE)::value;
    const S* av[ne];
    for (int e = 0; e < ne; ++e) av[e] = a(e0 + e);
    S o[NR][ne];
    dots<S, NR, ne>(K, w, av, 0, w, av, o);
    for (int r = 0; r < NR; ++r)
      for (int e = 0; e < ne; ++e) out(e0 + e, r, o[r][e]);
  });
}

// h = r W_hr^T for units [j0, j0 + nv) of P (nv <= V) and entries e < n (r's row e at a(e),
// [H]), as dot products of W_hr's rows [P, H]: emit(e, h) with h the units' vector.
template <typename S, typename A, typename Emit>
EIGEN_ALWAYS_INLINE void project_dots(Index n, Index H, Index P, const S* w_hr, Index j0,
                                      Index nv, A&& a, Emit&& emit) {
  entry_tiles<kDotSums / 4>(n, [&](Index e0, auto NE) __attribute__((always_inline)) {
    constexpr int ne = decltype(NE)::value;
    const S* ra[ne];
    for (int e = 0; e < ne; ++e) ra[e] = a(e0 + e);
    alignas(64) S hv[ne][kV<S>] = {};  // [entry, unit] of the block
    for (Index u = 0; u < nv; u += 4) {
      const S* w[4];
      for (int r = 0; r < 4; ++r)  // rows past P repeat the last one, unused
        w[r] = w_hr + std::min(j0 + u + r, P - 1) * H;
      S o[4][ne];
      dots<S, 4, ne>(H, w, ra, 0, w, ra, o);
      for (int r = 0; r < 4 && u + r < nv; ++r)
        for (int e = 0; e < ne; ++e) hv[e][u + r] = o[r][e];
    }
    for (int e = 0; e < ne; ++e) emit(e0 + e, ei::pload<Pk<S>>(hv[e]));
  });
}

// ---- Layer norm: threads own batch entries (whole rows), for the whole call ------------------
// Each thread takes blocks of kMR entries (share_entries) and runs every panel for them: a
// step's full rows of x W_ih^T (Tc steps at a time) and h_{t-1} W_hh^T, their LNs, the cell, the
// LN of c_t and, with a projection, r W_hr^T. An entry's chain through time stays on its thread,
// so the time loop has no barrier. The weights are packed once, by all threads.
template <typename S>
void forward_ln(int threads, const Dims& d, const Seq& q, const Options<S>& opt, const S* x,
                const S* w_ih, const S* w_hh, const S* bias, const S* h0, const Mat<S>& md,
                S* y, const S* h_n, S* c_n, Cache<S>* cache, const Packed<S>* packed) {
  using P = Pk<S>;
  constexpr Index V = kV<S>, W = 4 * V;
  const Index T = d.T, B = d.B, I = d.I, H = d.H, G = 4 * H, R = d.R();
  const Index np = panel_count<S>(Panels::Gates, G);
  const Index npr = d.P ? panel_count<S>(Panels::Plain, d.P) : 0;
  const Index Tc = std::min(T, std::max<Index>(1, kMC / B));
  const bool training = cache != nullptr, proj = d.P > 0, zc = opt.zoneout_c > 0;
  const S *gx = opt.ln, *gh = gx + G, *gc = gh + G, *bc = gc + H;  // [4H], [4H], [H], [H]
  // One step of inference without packed weights (Options::dots): each product is a dot
  // product of a weight row as it is (rows_dots), with no per-call packing.
  const bool dots = opt.dots && !packed && T == 1 && !training;
  const Weights<S> pw(d, packed, !dots);
  // out(e, row, v) for the 4 gate rows of units [j0, j0 + nv) of w [4H, K] and entries e < n
  auto gate_dots = [&](Index n, Index K, const S* w, Index j0, Index nv, auto&& a, auto&& out) {
    for (Index u = j0; u < j0 + nv; ++u) {
      const S* wr[4] = {w + u * K, w + (H + u) * K, w + (2 * H + u) * K, w + (3 * H + u) * K};
      rows_dots<S, 4>(n, K, wr, a, [&](Index e, int g, S v) { out(e, g * H + u, v); });
    }
  };
  // Inference scratch: x W_ih^T of Tc steps [Tc B, 4H]; h W_hh^T, then the gates, of a step
  // [B, 4H]; c_t, then LN(c_t) [B, H]; r [B, H]. Training keeps them in the cache.
  Buf<S> sx(training ? 0 : Tc * B * G), sh(training ? 0 : B * G), sc(training ? 0 : B * H);
  Buf<S> rs(training || !proj ? 0 : B * H);
  const P one = ei::pset1<P>(1), zero = ei::pzero(one);
  const Clamps<S> clamp(opt.clip);
  auto zeros = [&](Index, int) __attribute__((always_inline)) { return zero; };
  // Threads own blocks of kMR entries. With fewer blocks than threads (small B), the others
  // help with the input projection alone (two barriers a chunk; none in the steps).
  const Index eb = ceil_div(B, Index(kMR));
  with_team(threads, std::max<Index>(eb, threads), 2.0 * q.N * (G * (I + R) + H * d.P),
            [&](int tid, int nt, Errors& err) {
    Buf<S> part;  // panel_rows' tiles, per thread
    err.run([&] { part.resize(B * W); });
    Index p0, p1, pr0, pr1, e0, e1;
    share(np, nt, tid, p0, p1);
    share(npr, nt, tid, pr0, pr1);
    err.run([&] { pw.fill(d, tid, nt, p0, p1, pr0, pr1, x, w_ih, w_hh, opt.w_hr, cache); });
    barrier();  // every panel packed
    share_entries(B, nt, tid, e0, e1);  // this thread's entries, for good
    // rows at step t of entries [a, b): [a, a + span(t, a, b)); this thread's: rows(t)
    auto span = [&](Index t, Index a, Index b) {
      return std::max<Index>(0, std::min(b, q.n[t]) - a);
    };
    auto rows = [&](Index t) { return span(t, e0, e1); };
    // x W_ih^T and h_{t-1} W_hh^T go by this thread's entries, every panel; or, when the
    // blocks do not share out evenly among the threads (fewer blocks, or B = 16: 2 blocks
    // against 1), by every entry, this thread's share of the panels [sp0, sp1), between
    // barriers (the rows of sx and sh belong to other threads' steps): then a step has two
    // barriers, and the entries' owners run the rest of it.
    const bool shared = eb % nt != 0;
    Index sp0 = 0, sp1 = np, f0 = e0, f1 = e1;  // panels and entries of the products
    if (shared) share(np, nt, tid, sp0, sp1), f0 = 0, f1 = B;
    for (Index s = 0; s < T; ++s) {
      const Index s0 = s - s % Tc;  // first step of the projection chunk
      auto zx = [&](Index pos) {    // the row of x W_ih^T (then LN) of position pos
        return training ? cache->nx.data() + pos * G : sx.data() + (pos - q.off[s0]) * G;
      };
      if (s == s0 && shared) barrier();  // the last chunk's steps done
      if (s == s0)  // x W_ih^T of steps [s, s + Tc), panel by panel (each serves Tc steps)
        err.run([&] {
          for (Index p = sp0; p < sp1; ++p) {
            const Index j0 = p * V, nv = std::min(V, H - j0);
            for (Index t = s; t < std::min(T, s + Tc); ++t) {
              const Index a = q.off[t] + f0;
              if (dots) {
                gate_dots(
                    span(t, f0, f1), I, w_ih, j0, nv,
                    [&](Index i) { return x + q.row[a + i] * I; },
                    [&](Index i, Index c, S v) { zx(a + i)[c] = v; });
                continue;
              }
              panel_rows<S>(
                  span(t, f0, f1), I, pw.wi + p * I * W,
                  [&](Index i) __attribute__((always_inline)) { return x + q.row[a + i] * I; },
                  zeros,
                  [&](Index i, P zi, P zf, P zg, P zo) __attribute__((always_inline)) {
                    store_gates(zx(a + i), H, j0, nv, zi, zf, zg, zo);
                  },
                  part.data());
            }
          }
        });
      if (s == s0 && shared) barrier();  // the chunk projected
      auto zh = [&](Index k) {  // the row of h_{t-1} W_hh^T (then LN) of entry k
        return training ? cache->nh.data() + (q.off[s] + k) * G : sh.data() + k * G;
      };
      auto hprev = [&](Index k) {  // h_{t-1} of entry k [R]: a row of y, or of h_n (= h_0)
        return s ? y + q.row[q.off[s - 1] + k] * d.y_stride() : h_n + q.perm[k] * R;
      };
      // (shared, but for a chunk's first step, whose barriers serve: h_{t-1} complete, and the
      // owners done with sh)
      if (shared && s != s0) barrier();
      err.run([&] {
        const Index a = q.off[s] + f0;
        for (Index pi = sp0; pi < sp1; ++pi) {
          const Index p = visit(s % 2, sp0, sp1, pi);
          const Index j0 = p * V, nv = std::min(V, H - j0);
          if (dots) {
            gate_dots(
                span(s, f0, f1), h0 ? R : 0, w_hh, j0, nv,
                [&](Index i) { return hprev(f0 + i); },
                [&](Index i, Index c, S v) { zh(f0 + i)[c] = v; });
            continue;
          }
          panel_rows<S>(
              span(s, f0, f1), s || h0 ? R : 0, pw.wh + p * R * W,  // h_{-1} = 0 adds nothing
              [&](Index i) __attribute__((always_inline)) {
                return training ? cache->hprev.data() + (a + i) * R : hprev(f0 + i);
              },
              zeros,
              [&](Index i, P zi, P zf, P zg, P zo) __attribute__((always_inline)) {
                store_gates(zh(f0 + i), H, j0, nv, zi, zf, zg, zo);
              },
              part.data());
        }
      });
      if (shared) barrier();  // every panel of h_{t-1} W_hh^T
      const Index a = q.off[s] + e0, n = rows(s);
      err.run([&] {
        for (Index k = e0; k < e0 + n; ++k) {
          const Index pos = q.off[s] + k, b = q.perm[k];
          S *ax = zx(pos), *ah = zh(k);
          const S rx = ln_row(ax, G), rh = ln_row(ah, G);
          S* gates = training ? cache->gates.data() + pos * G : ah;  // inference: over zh
          S* cn = training ? cache->nc.data() + pos * H : sc.data() + k * H;  // c_t, then LN
          const S* cp = training ? (s ? cache->c.data() + (q.off[s - 1] + k) * H
                                      : cache->c0.data() + k * H)
                                 : c_n + b * H;  // c_{t-1}
          S* cz = training ? cache->c.data() + pos * H : c_n + b * H;  // c_t after zoneout
          for (Index j0 = 0; j0 < H; j0 += V) {
            const Index nv = std::min(V, H - j0);
            P z[4];  // LN(zx) gain_x + LN(zh) gain_h + b
            for (int g = 0; g < 4; ++g) {
              const Index o = g * H + j0;
              z[g] = ei::pmadd(load(ax + o, nv), load(gx + o, nv),
                               ei::pmul(load(ah + o, nv), load(gh + o, nv)));
              if (bias) z[g] = ei::padd(z[g], load(bias + o, nv));
            }
            const P c0 = load(cp + j0, nv);
            const CellOut<S> c = cell_forward(opt, clamp, H, j0, nv, c0, z[0], z[1], z[2], z[3]);
            store_gates(gates, H, j0, nv, c.i, c.f, c.g, c.o);
            store(cn + j0, c.cn, nv);
            P cnew = c.cn;
            if (zc) {
              const P m = zoneout<S>(opt, kZoneoutC, training, opt.zoneout_c, s, B, b, H, j0, nv);
              cnew = ei::padd(ei::pmul(m, c0), ei::pmul(ei::psub(one, m), c.cn));
            }
            store(cz + j0, cnew, nv);
          }
          const S rc = ln_row(cn, H);
          if (training) cache->rstd(pos, 0) = rx, cache->rstd(pos, 1) = rh, cache->rstd(pos, 2) = rc;
          S* rr = training ? cache->r.data() + pos * H : rs.data() + k * H;  // projection only
          for (Index j0 = 0; j0 < H; j0 += V) {  // r = o tanh(LN(c_t) gain_c + bias_c)
            const Index nv = std::min(V, H - j0);
            const P ch = ei::pmadd(load(cn + j0, nv), load(gc + j0, nv), load(bc + j0, nv));
            const P r = ei::pmul(load(gates + 3 * H + j0, nv), vtanh(ch));
            if (proj) store(rr + j0, r, nv);
            else emit_h(d, q, opt, md, cache, s, k, hprev(k), j0, nv, r, y);
          }
        }
        for (Index j0 = 0; dots && j0 < d.P; j0 += V) {  // h = r W_hr^T, V units at a time
          const Index nv = std::min(V, d.P - j0);
          project_dots<S>(
              n, H, d.P, opt.w_hr, j0, nv, [&](Index i) { return rs.data() + (e0 + i) * H; },
              [&](Index i, P h) {
                emit_h(d, q, opt, md, cache, s, e0 + i, hprev(e0 + i), j0, nv, h, y);
              });
        }
        for (Index p = 0; !dots && p < npr; ++p)  // h = r W_hr^T
          project_panel<S>(
              n, H, R, p * W, pw.whr + p * H * W,
              [&](Index i) __attribute__((always_inline)) {
                return training ? cache->r.data() + (a + i) * H : rs.data() + (e0 + i) * H;
              },
              [&](Index i, Index j0, Index nv, P h) __attribute__((always_inline)) {
                emit_h(d, q, opt, md, cache, s, e0 + i, hprev(e0 + i), j0, nv, h, y);
              },
              part.data());
      });
    }
  });
}

// Backward with layer norm, threads owning entries as in forward_ln. Step s (T - 1 down to -1):
// dh_new = dGh_{s+1} W_hh (times m) + carry + dy (dh_new), then dr (= dh_new, or dh_new W_hr),
// then per row: through r = o tanh(LN(c) gain_c + bias_c) and its LN (dch = dL/d(that LN's
// output)), the cell (dG = dL/dz), and the two gate LNs (dGx, dGh). After the loop, the sums
// over tokens, by columns in token order: dln (gains, bias_c) and dpeep (db: weight_grads_fast).
template <typename S>
void backward_ln(int threads, const Cache<S>& cache, const S* dy, Mat<S>& dhs, Mat<S>& dcs,
                 PoolMat<S>& dG, PoolMat<S>& dGx, PoolMat<S>& dGh, PoolMat<S>& dch,
                 PoolMat<S>& dhn, S* dpeep,
                 S* dln) {
  using P = Pk<S>;
  constexpr Index V = kV<S>, W = 4 * V;
  const Dims& d = cache.d;
  const Seq& q = cache.seq;
  const Options<S>& opt = cache.opt;
  const Index T = d.T, B = d.B, H = d.H, G = 4 * H, R = d.R(), N = q.N;
  const bool proj = d.P > 0, zc = opt.zoneout_c > 0;
  const Index npr = panel_count<S>(Panels::Plain, R);   // W_hh panels: 4V units of R, K = 4H
  const Index nph = proj ? panel_count<S>(Panels::Plain, H) : 0;  // W_hr: 4V units, K = P
  const S* wh = cache.w_hh.data();  // [npr, 4H, 4V]
  Buf<S> whr(nph * d.P * W);
  const Mat<S> md = dropout_mask(opt, B, R, true);
  const S *gx = opt.ln, *gh = gx + G, *gc = gh + G, *bc = gc + H;
  const P one = ei::pset1<P>(1), zero = ei::pzero(one);
  const Clamps<S> cl(opt.clip);
  auto zeros = [&](Index, int) __attribute__((always_inline)) { return zero; };
  const Index eb = ceil_div(B, Index(kMR));
  Buf<S> dr(B * H);  // dL/dr of each entry
  with_team(threads, std::max<Index>(eb, threads), 2.0 * N * (G * R + d.P * H),
            [&](int tid, int nt, Errors& err) {
    Buf<S> part, dcl;  // per thread: panel_rows' tiles; a row [H]
    err.run([&] { part.resize(B * W), dcl.resize(H); });
    Index ph0, ph1, e0, e1;
    share(nph, nt, tid, ph0, ph1);
    err.run([&] { pack_backward(cache, ph0, ph1, whr.data()); });
    barrier();  // every panel packed
    share_entries(B, nt, tid, e0, e1);
    // dGh_{s+1} W_hh goes by this thread's entries, every panel; or, when the blocks do not
    // share out evenly (as in forward_ln), by every entry, this thread's share of the panels
    // [sp0, sp1), between barriers: then a step has two barriers, and the owners run the rest.
    const bool shared = eb % nt != 0;
    Index sp0 = 0, sp1 = npr, f0 = e0, f1 = e1;
    if (shared) share(npr, nt, tid, sp0, sp1), f0 = 0, f1 = B;
    for (Index s = T - 1; s >= -1; --s) {
      const Index Bs = s < 0 ? B : q.n[s], m = q.n[s + 1];  // rows, rows with dG_{s+1}
      const Index nr = std::max<Index>(0, std::min(e1, Bs) - e0);  // this thread's
      if (shared) barrier();  // dGh_{s+1} complete, and the owners done with dr
      err.run([&] {
        const Index nrf = std::max<Index>(0, std::min(f1, Bs) - f0);  // the product's rows
        const Index nmf = std::max<Index>(0, std::min(f1, m) - f0);   // with dG_{s+1}
        for (Index p = sp0; p < sp1; ++p) {
          auto f = [&, p](Index i, P a0, P a1, P a2, P a3) __attribute__((always_inline)) {
            const P a[4] = {a0, a1, a2, a3};
            for (int g = 0; g < 4; ++g) {
              const Index j = p * W + g * V, n = std::clamp<Index>(R - j, 0, V);
              if (!n) continue;
              const P dh = dh_new(cache, md, dy, dhs, dhn, s, f0 + i, j, n, a[g]);
              if (!proj && s >= 0) store(dr.data() + (f0 + i) * H + j, dh, n);
            }
          };
          panel_rows<S>(  // the entries still running at step s + 1: dGh_{s+1} W_hh
              nmf, G, wh + p * G * W,
              [&](Index i) __attribute__((always_inline)) {
                return dGh.data() + (q.off[s + 1] + f0 + i) * G;
              },
              zeros, f, part.data());
          panel_rows<S>(  // those whose last step is s: no recurrent term
              nrf - nmf, 0, wh, [&](Index) { return wh; }, zeros,
              [&](Index i, P a0, P a1, P a2, P a3) __attribute__((always_inline)) {
                f(nmf + i, a0, a1, a2, a3);
              },
              part.data());
        }
      });
      if (shared) barrier();  // dh_new of every entry, every unit
      if (s < 0) continue;
      err.run([&] {
        for (Index p = 0; p < nph; ++p)  // dr = dh_new W_hr
          panel_rows<S>(
              nr, d.P, whr.data() + p * d.P * W,
              [&](Index i) __attribute__((always_inline)) {
                return dhn.data() + (q.off[s] + e0 + i) * R;
              },
              zeros,
              [&](Index i, P a0, P a1, P a2, P a3) __attribute__((always_inline)) {
                const P a[4] = {a0, a1, a2, a3};
                for (int g = 0; g < 4; ++g) {
                  const Index j = p * W + g * V, n = std::clamp<Index>(H - j, 0, V);
                  if (n) store(dr.data() + (e0 + i) * H + j, a[g], n);
                }
              },
              part.data());
        for (Index k = e0; k < e0 + nr; ++k) {
          const Index pos = q.off[s] + k, b = q.perm[k];
          const S *gb = cache.gates.data() + pos * G, *nc = cache.nc.data() + pos * H;
          const S* drk = dr.data() + k * H;
          S *dz = dG.data() + pos * G, *dc = dch.data() + pos * H;
          for (Index j = 0; j < H; j += V) {  // dL/dz_o (before the clip mask) and dch
            const Index n = std::min(V, H - j);
            const P o = load(gb + 3 * H + j, n), dro = ei::pmul(load(drk + j, n), o);
            const P tc = vtanh(ei::pmadd(load(nc + j, n), load(gc + j, n), load(bc + j, n)));
            store(dz + 3 * H + j, ei::pmul(ei::pmul(dro, tc), ei::psub(one, o)), n);
            store(dc + j, ei::pmul(dro, ei::psub(one, ei::pmul(tc, tc))), n);
          }
          ln_row_backward(dc, gc, nc, cache.rstd(pos, 2), H, dcl.data());  // dL/dc_new
          for (Index j = 0; j < H; j += V) {  // the cell
            const Index n = std::min(V, H - j);
            const P i = load(gb + j, n), f = load(gb + H + j, n), gg = load(gb + 2 * H + j, n),
                    o = load(gb + 3 * H + j, n);
            const P cp = load(s ? cache.c.data() + (q.off[s - 1] + k) * H + j
                                : cache.c0.data() + k * H + j, n);  // c_{t-1}
            const P dcar = load(dcs.data() + k * H + j, n);
            P dcn = dcar, zcar = zero;
            if (zc) {  // c_t = z c_{t-1} + (1 - z) c_new
              const P z = zoneout<S>(opt, kZoneoutC, true, opt.zoneout_c, s, B, b, H, j, n);
              dcn = ei::pmul(ei::psub(one, z), dcar), zcar = ei::pmul(z, dcar);
            }
            dcn = ei::padd(dcn, load(dcl.data() + j, n));
            const CellGrad<S> g = cell_backward(opt, cl, H, j, n, i, f, gg, o, cp, dcn,
                                                load(dz + 3 * H + j, n), zc ? &zcar : nullptr);
            store_gates(dz, H, j, n, g.dzi, g.dzf, g.dzg, g.dzo);
            store(dcs.data() + k * H + j, g.dcp, n);
          }
          ln_row_backward(dz, gx, cache.nx.data() + pos * G, cache.rstd(pos, 0), G,
                          dGx.data() + pos * G);
          ln_row_backward(dz, gh, cache.nh.data() + pos * G, cache.rstd(pos, 1), G,
                          dGh.data() + pos * G);
        }
      });
    }
    barrier();  // every token's dG, dch
    // The sums over tokens, by columns: this thread's columns of dln = [dgain_x, dgain_h] and
    // of [dgain_c, dbias_c, dpeep]
    Index c0, c1, u0, u1;
    share(G, nt, tid, c0, c1);
    share(H, nt, tid, u0, u1);
    err.run([&] {
      std::fill(dln + c0, dln + c1, S(0)), std::fill(dln + G + c0, dln + G + c1, S(0));
      for (Index t = 0; t < N; ++t)
        for (Index c = c0; c < c1; ++c) {
          dln[c] += dG(t, c) * cache.nx(t, c);
          dln[G + c] += dG(t, c) * cache.nh(t, c);
        }
      for (Index j = u0; j < u1; ++j) {
        dln[2 * G + j] = dln[2 * G + H + j] = 0;
        if (dpeep) dpeep[j] = dpeep[H + j] = dpeep[2 * H + j] = 0;
      }
      for (Index s = 0; s < T; ++s)
        for (Index k = 0; k < q.n[s]; ++k) {
          const Index t = q.off[s] + k;
          const S* cp = s ? cache.c.data() + (q.off[s - 1] + k) * H : cache.c0.data() + k * H;
          for (Index j = u0; j < u1; ++j) {
            dln[2 * G + j] += dch(t, j) * cache.nc(t, j);
            dln[2 * G + H + j] += dch(t, j);
            if (!dpeep) continue;
            const S* gb = cache.gates.data() + t * G;  // c_new, before zoneout:
            const S cn = zc ? gb[H + j] * cp[j] + gb[j] * gb[2 * H + j] : cache.c(t, j);
            dpeep[j] += dG(t, j) * cp[j];
            dpeep[H + j] += dG(t, H + j) * cp[j];
            dpeep[2 * H + j] += dG(t, 3 * H + j) * cn;
          }
        }
    });
  });
}

// The step's pre-activations z [B, 4, V] of units [j0, j0 + nv): x_b W_ih^T + h_b W_hh^T + b.
// A tile is the 4 gates of NU units by up to kDotSums / 4NU entries: two units while B is
// small enough for them to fill the tile, else one.
template <typename S>
void step_gates(const Dims& d, const StepLayer<S>& l, const S* x, const S* h, Index j0, Index nv,
                S* z) {
  constexpr Index V = kV<S>;
  const Index B = d.B, I = d.I, H = d.H, R = d.R();
  auto units = [&](auto NU) __attribute__((always_inline)) {
    constexpr int NR = 4 * decltype(NU)::value, EM = kDotSums / NR;
    for (Index u = 0; u < nv; u += NR / 4) {
      const S *wi[NR], *wh[NR];
      S b[NR];  // b_ih + b_hh of each row
      for (int r = 0; r < NR; ++r) {
        // gate r % 4 of unit j0 + u + r / 4 (the last unit again past nv: unused)
        const Index row = (r % 4) * H + j0 + std::min<Index>(u + r / 4, nv - 1);
        wi[r] = l.w_ih + row * I, wh[r] = l.w_hh + row * R;
        b[r] = l.b_ih ? l.b_ih[row] + l.b_hh[row] : S(0);
      }
      entry_tiles<EM>(B, [&](Index e0, auto NE) __attribute__((always_inline)) {
        constexpr int ne = decltype(NE)::value;
        const S *xa[ne], *ha[ne];
        for (int e = 0; e < ne; ++e) xa[e] = x + (e0 + e) * I, ha[e] = h + (e0 + e) * R;
        S out[NR][ne];
        dots<S, NR, ne>(I, wi, xa, R, wh, ha, out);
        for (int r = 0; r < NR && u + r / 4 < nv; ++r)
          for (int e = 0; e < ne; ++e)
            z[((e0 + e) * 4 + r % 4) * V + u + r / 4] = l.b_ih ? out[r][e] + b[r] : out[r][e];
      });
    }
  };
  if (B <= kDotSums / 8) units(std::integral_constant<int, 2>{});
  else units(std::integral_constant<int, 1>{});
}

}  // namespace

// ---- The sequence: forward and backward through time, either implementation -------------------
template <typename S>
void lstm_forward(Kernel k, int threads, const Dims& d, const Options<S>& opt, const S* x,
                  const S* w_ih, const S* w_hh, const S* bias, const S* h0, const S* c0, S* y,
                  S* h_n, S* c_n, Cache<S>* cache, const Packed<S>* packed) {
  if (k == Kernel::Naive && (!opt.plain() || d.P))
    throw std::invalid_argument("kernel: the naive kernel implements lengths and reverse only");
  if (d.P && !opt.w_hr) throw std::invalid_argument("w_hr: required when P > 0");
  std::optional<Seq> own;  // the visiting order (the cache keeps its own)
  const Seq& q = cache ? cache->seq : own.emplace(d, opt.lengths, opt.reverse);
  const Mat<S> md = dropout_mask(opt, d.B, d.R(), cache != nullptr);
  if (!begin_forward(d, q, opt, h0, c0, md, y, h_n, c_n, cache)) return;
  if (k == Kernel::Naive)
    forward_naive(d, q, x, w_ih, w_hh, bias, y, h_n, c_n, cache);
  else if (opt.ln)
    forward_ln(threads, d, q, opt, x, w_ih, w_hh, bias, h0, md, y, h_n, c_n, cache, packed);
  else
    forward_fast(threads, d, q, opt, x, w_ih, w_hh, bias, h0, md, y, h_n, c_n, cache, packed);
  end_forward(d, q, y, h_n, c_n, cache);
}

template <typename S>
void lstm_backward(Kernel k, int threads, const Cache<S>& cache, const S* dy, const S* dh_n,
                   const S* dc_n, const Grads<S>& g) {
  const Dims& d = cache.d;
  const Seq& q = cache.seq;
  const Index B = d.B, I = d.I, H = d.H, G = 4 * H, R = d.R(), N = q.N;
  if (k == Kernel::Naive && (!cache.opt.plain() || d.P))
    throw std::invalid_argument("kernel: the naive kernel implements lengths and reverse only");
  Mat<S> dhs(B, R), dcs(B, H);  // by entry: dh_n, dc_n in; dh_0, dc_0 out
  for (Index e = 0; e < B; ++e) {
    const Index b = q.perm[e];
    if (dh_n) dhs.row(e) = CMap<S>(dh_n + b * R, 1, R); else dhs.row(e).setZero();
    if (dc_n) dcs.row(e) = CMap<S>(dc_n + b * H, 1, H); else dcs.row(e).setZero();
  }
  if ((N < d.T * B || H == 0) && !g.dx_add) Map<S>(g.dx, d.T * B, I).setZero();  // the padding
  if (g.dpeep) Map<S>(g.dpeep, 3, H).setZero();
  if (g.dln) Map<S>(g.dln, 1, 10 * H).setZero();
  if (N == 0 || H == 0) {
    Map<S>(g.dw_ih, G, I).setZero(), Map<S>(g.dw_hh, G, R).setZero();
    Map<S>(g.db, 1, G).setZero();
    if (g.dw_hr) Map<S>(g.dw_hr, d.P, H).setZero();
  } else {
    PoolMat<S> dG(N, G);             // [N, 4H] per-call scratch: gradients of the pre-activations
    PoolMat<S> dhn(d.P ? N : 0, R);  // [N, P] dL/dh_new, with a projection
    if (k == Kernel::Naive) {
      backward_naive(cache, dy, dhs, dcs, dG);
      weight_grads_naive(cache, dG, g.dx, g.dx_add, g.dw_ih, g.dw_hh, g.db);
    } else if (cache.opt.ln) {
      if (!g.dln) throw std::invalid_argument("dln: required with layer norm");
      PoolMat<S> dGx(N, G), dGh(N, G), dch(N, H);  // dL/d(x W_ih^T), dL/d(h W_hh^T), dL/dLN(c_t)
      backward_ln(threads, cache, dy, dhs, dcs, dG, dGx, dGh, dch, dhn, g.dpeep, g.dln);
      weight_grads_fast(threads, cache, dGx, dGh, dG, dhn, g.dx, g.dx_add, g.dw_ih, g.dw_hh, g.db,
                        g.dw_hr);
    } else {
      backward_fast(threads, cache, dy, dhs, dcs, dG, g.dpeep, dhn);
      weight_grads_fast(threads, cache, dG, dG, dG, dhn, g.dx, g.dx_add, g.dw_ih, g.dw_hh, g.db,
                        g.dw_hr);
    }
  }
  for (Index e = 0; e < B; ++e) {
    Map<S>(g.dh0 + q.perm[e] * R, 1, R) = dhs.row(e);
    Map<S>(g.dc0 + q.perm[e] * H, 1, H) = dcs.row(e);
  }
}

// ---- One step for streaming (see dot_rows) -----------------------------------------------------
template <typename S>
void lstm_step(int threads, const Dims& d, Index L, const StepLayer<S>* layers,
               const Options<S>& opt, const S* x, const S* h, const S* c, S* h_out, S* c_out) {
  using P = Pk<S>;
  constexpr Index V = kV<S>, W = 4 * V;
  const Index B = d.B, H = d.H, R = d.R(), nb = ceil_div(H, V), nbr = ceil_div(d.P, V);
  if (opt.ln || opt.lengths || opt.reverse || opt.recurrent_dropout > 0)
    throw std::invalid_argument("lstm_step: no layer norm, lengths, reverse or dropout");
  for (Index k = 0; k < L; ++k) {
    const Packed<S>* pk = layers[k].packed;
    if (pk && (pk->I != (k ? R : d.I) || pk->H != H || pk->P != d.P))
      throw std::invalid_argument("packed: made for other sizes");
  }
  if (B == 0 || H == 0) return;
  const P one = ei::pset1<P>(1);
  const Clamps<S> clamp(opt.clip);
  Buf<S> rs(d.P ? B * H : 0);  // [B, H] r_t, when projected
  double flops = 0;
  for (Index k = 0; k < L; ++k) flops += 2.0 * B * (4 * H * ((k ? R : d.I) + R) + H * d.P);
  with_team(threads, nb, flops, [&](int tid, int nt, Errors& err) {
    Index b0, b1, r0, r1;
    share(nb, nt, tid, b0, b1);  // this thread's units: blocks [b0, b1) of V
    share(nbr, nt, tid, r0, r1);  // and of P, when projected
    Index q0, q1;
    share(ceil_div(d.P, W), nt, tid, q0, q1);  // or its packed panels of 4V units
    Buf<S> z, part;  // [B, 4, V] pre-activations of one block; panel_rows' tiles
    // int8 panels: x and h quantized, qa [2][B, A4] (q + 128), their scales sa [2][B] and the
    // integer sums of one panel, iacc [B, 4V] (this thread's copies; q_row)
    bool q8 = false;  // (any layer's)
    for (Index k = 0; k < L; ++k) q8 = q8 || (layers[k].packed && layers[k].packed->q8[0]);
    const Index A4 = 4 * ceil_div(std::max(d.I, R), 4);
    Buf<std::uint8_t> qa;
    Buf<float> sa;
    Buf<std::int32_t> iacc;
    err.run([&] {
      z.resize(B * W), part.resize(B * W);
      if (q8) qa.resize(2 * B * A4), sa.resize(2 * B), iacc.resize(B * W);
    });
    static thread_local unsigned calls = 0;  // this thread's: every other call visits down
    const bool down = ++calls % 2;
    for (Index k = 0; k < L; ++k) {
      Dims dk = d;
      dk.I = k ? R : d.I;
      Options<S> ok = opt;
      ok.peephole = layers[k].peephole;
      const S* xk = k ? h_out + (k - 1) * B * R : x;  // [B, I_k]
      const S *hk = h + k * B * R, *ck = c + k * B * H;
      S *ho = h_out + k * B * R, *co = c_out + k * B * H;
      auto emit = [&](Index b, Index j0, Index nv, P hv) __attribute__((always_inline)) {
        if (opt.zoneout_h > 0) {  // inference: the expectation z h_{t-1} + (1 - z) h_new
          const P z = zoneout<S>(opt, kZoneoutH, false, opt.zoneout_h, 0, B, b, R, j0, nv);
          hv = ei::padd(ei::pmul(z, load(hk + b * R + j0, nv)), ei::pmul(ei::psub(one, z), hv));
        }
        store(ho + b * R + j0, hv, nv);
      };
      // The cell of entry b, units [j0, j0 + nv), from its pre-activations.
      auto cell = [&](Index b, Index j0, Index nv, P zi, P zf, P zg, P zo)
                      __attribute__((always_inline)) {
        const P c0 = load(ck + b * H + j0, nv);
        const CellOut<S> cl = cell_forward(ok, clamp, H, j0, nv, c0, zi, zf, zg, zo);
        P cv = cl.cn;
        if (opt.zoneout_c > 0) {
          const P z = zoneout<S>(opt, kZoneoutC, false, opt.zoneout_c, 0, B, b, H, j0, nv);
          cv = ei::padd(ei::pmul(z, c0), ei::pmul(ei::psub(one, z), cl.cn));
        }
        store(co + b * H + j0, cv, nv);
        const P r = ei::pmul(cl.o, vtanh(cl.cn));
        if (d.P) store(rs.data() + b * H + j0, r, nv);
        else emit(b, j0, nv, r);
      };
      const StepLayer<S>& l = layers[k];
      err.run([&] {
        if constexpr (std::is_same_v<S, float>)
          for (Index b = 0; l.packed && l.packed->q8[0] && b0 < b1 && b < B; ++b) {
            sa.data()[b] = q_row(dk.I, xk + b * dk.I, qa.data() + b * A4);
            sa.data()[B + b] = q_row(R, hk + b * R, qa.data() + (B + b) * A4);
          }
        for (Index bi = b0; bi < b1; ++bi) {
          const Index blk = visit(down, b0, b1, bi);
          const Index j0 = blk * V, nv = std::min(V, H - j0);
          if (l.packed) {  // panel blk: x W_ih^T + b into z, then + h W_hh^T and the cell
            // (from the float16 panels if there are: the same sums, panel_rows_half)
            auto panel = [&](int m, Index K, auto&& a_row, auto&& init, auto&& done)
                             __attribute__((always_inline)) {
              if constexpr (std::is_same_v<S, float>) {
                if (const std::uint16_t* hw = l.packed->half[m])
                  return panel_rows_half(B, K, hw + blk * K * W, a_row, init, done, part.data());
                if (const std::int8_t* qw = l.packed->q8[m]) {  // the integer sums, then
                  const Index K4 = ceil_div(K, 4);  // init + float(sum) * (sa * sw)
                  q8_dots(B, K4, qw + blk * K4 * W * 4, qa.data() + m * B * A4, A4, iacc.data());
                  const float* sw = l.packed->qscale[m] + blk * W;
                  const std::int32_t* qs = l.packed->qsum[m] + blk * W;
                  for (Index b = 0; b < B; ++b) {
                    const float s = sa.data()[m * B + b];
                    const std::int32_t* ib = iacc.data() + b * W;
                    float* pb = part.data() + b * W;
                    for (Index j = 0; j < W; ++j) pb[j] = float(ib[j] - qs[j]) * (s * sw[j]);
                    done(b, ei::padd(init(b, 0), ei::pload<P>(pb)),
                         ei::padd(init(b, 1), ei::pload<P>(pb + V)),
                         ei::padd(init(b, 2), ei::pload<P>(pb + 2 * V)),
                         ei::padd(init(b, 3), ei::pload<P>(pb + 3 * V)));
                  }
                  return;
                }
              }
              panel_rows<S>(B, K, l.packed->w[m] + blk * K * W, a_row, init, done, part.data());
            };
            panel(
                0, dk.I,
                [&](Index b) __attribute__((always_inline)) { return xk + b * dk.I; },
                [&](Index, int g) __attribute__((always_inline)) {
                  return l.b_ih ? ei::padd(load(l.b_ih + g * H + j0, nv),
                                           load(l.b_hh + g * H + j0, nv))
                                : ei::pzero(one);
                },
                [&](Index b, P zi, P zf, P zg, P zo) __attribute__((always_inline)) {
                  store_tile(z.data() + b * W, zi, zf, zg, zo);
                });
            panel(
                1, R,
                [&](Index b) __attribute__((always_inline)) { return hk + b * R; },
                [&](Index b, int g) __attribute__((always_inline)) {
                  return ei::pload<P>(z.data() + b * W + g * V);
                },
                [&](Index b, P zi, P zf, P zg, P zo) __attribute__((always_inline)) {
                  cell(b, j0, nv, zi, zf, zg, zo);
                });
            continue;
          }
          step_gates(dk, l, xk, hk, j0, nv, z.data());
          for (Index b = 0; b < B; ++b) {
            const S* zb = z.data() + b * W;
            cell(b, j0, nv, ei::pload<P>(zb), ei::pload<P>(zb + V), ei::pload<P>(zb + 2 * V),
                 ei::pload<P>(zb + 3 * V));
          }
        }
      });
      if (d.P) {
        barrier();  // r_t complete
        err.run([&] {
          for (Index p = q0; l.packed && p < q1; ++p) {  // packed: panels of 4V units of P
            project_panel<S>(
                B, H, R, p * W, l.packed->w[2] + p * H * W,
                [&](Index b) __attribute__((always_inline)) { return rs.data() + b * H; }, emit,
                part.data());
          }
          for (Index blk = r0; !l.packed && blk < r1; ++blk) {
            const Index j0 = blk * V, nv = std::min(V, d.P - j0);
            project_dots<S>(
                B, H, d.P, layers[k].w_hr, j0, nv, [&](Index b) { return rs.data() + b * H; },
                [&](Index b, P hv) { emit(b, j0, nv, hv); });
          }
        });
      }
      if (k + 1 < L) barrier();  // layer k's h complete: the next layer's input
    }
  });
}

// ---- The exported table -------------------------------------------------------------------------
namespace {
template <typename S>
Packed<S>* packed_new(int threads, const Dims& d, const S* w_ih, const S* w_hh, const S* w_hr,
                      int quant) {
  if (d.P && !w_hr) throw std::invalid_argument("w_hr: required when P > 0");
  if (quant != kNone && !std::is_same_v<S, float>)
    throw std::invalid_argument("quant: float16 and int8 panels are for float32 weights only");
  if (quant == kInt8 && std::max(d.I, d.R()) > 65536)  // the int32 sums must not overflow
    throw std::invalid_argument("int8: at most 65536 inputs to a gate, got " +
                                std::to_string(std::max(d.I, d.R())));
  auto pk = std::make_unique<Packed<S>>(d, quant);
  constexpr Index W = 4 * kV<S>;
  const Index np = panel_count<S>(Panels::Gates, 4 * d.H);
  const Index npr = d.P ? panel_count<S>(Panels::Plain, d.P) : 0;
  std::atomic<bool> bad{false};
  with_team(threads, np, 2.0 * 4 * d.H * (d.I + d.R()), [&](int tid, int nt, Errors& err) {
    Index p0, p1, r0, r1;
    share(np, nt, tid, p0, p1);
    share(npr, nt, tid, r0, r1);
    err.run([&] { pack_forward(d, p0, p1, r0, r1, w_ih, w_hh, w_hr, pk->w[0], pk->w[1], pk->w[2]); });
    for (int k = 0; quant != kNone && k < 2; ++k) {  // this thread's panels, as lstm_step
                                                      // shares them
      const Index K = k ? d.R() : d.I;
      if constexpr (std::is_same_v<S, float>)
        for (Index p = p0; quant == kInt8 && p < p1; ++p)
          if (!q8_panel(K, pk->w[k] + p * K * W, pk->q8[k] + p * ceil_div(K, 4) * W * 4,
                        pk->qscale[k] + p * W, pk->qsum[k] + p * W))
            bad = true;
      for (Index i = p0 * K * W; quant == kHalf && i < p1 * K * W; ++i) {
        const int h = to_half(float(pk->w[k][i]));
        if (h < 0) bad = true;
        pk->half[k][i] = std::uint16_t(h < 0 ? 0 : h);
      }
    }
  });
  if (bad && quant == kHalf)
    throw std::invalid_argument("half: w_ih, w_hh hold values that float16 cannot hold exactly");
  if (bad) throw std::invalid_argument("int8: w_ih, w_hh hold values that are not finite");
  for (int k = 0; quant == kInt8 && k < 2; ++k) {  // only the int8 panels are read
    std::free(pk->w[k]);
    pk->w[k] = nullptr, pk->cap[k] = 0;
  }
  return pk.release();
}

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
  return {[](const Dims& d, const Options<S>& o) { return new Cache<S>(d, o); },
          [](Cache<S>* c) { delete c; },
          [](const Cache<S>* c) { return c->nbytes(); }, &lstm_forward<S>, &packed_new<S>,
          [](Packed<S>* p) { delete p; },
          [](const Packed<S>* p) {
            std::size_t n = 0;
            for (std::size_t c : p->cap) n += c;
            return n;
          },
          &lstm_backward<S>, &lstm_step<S>, &activations<S>};
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
