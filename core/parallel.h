// A small fork-join helper for the element-wise and sparse parts of a
// training step (the GEMMs are threaded by OpenBLAS itself).
//
// ParallelFor splits [0, n) into `Parallelism()` contiguous chunks, runs
// chunk 0 on the calling thread and the others on a process-wide pool, and
// returns when all are done. The split depends only on n and the thread
// count, so code that gives each chunk its own output (and combines partial
// results in chunk order) is deterministic.
#ifndef SAE_CORE_PARALLEL_H_
#define SAE_CORE_PARALLEL_H_

#include <cstdint>
#include <functional>

namespace sae {

// Threads ParallelFor uses on the calling thread: the BLAS thread count
// (SetBlasThreads) on a foreground thread, BackgroundThreads() on a
// background one.
int Parallelism();

// Threads that the ParallelFor calls (and so the products and training
// steps) of background threads use. By default one fewer than the BLAS
// thread count, at least 1, so that while background work (a training job)
// runs a core stays free for requests: with both cores of the development
// machine in training, a one-row Encode's p99 rose from about 1 ms to 5 - 6.6
// ms; with one, it stayed under 2.2 ms (docs/api.md). A process that serves
// no requests (a dedicated trainer) sets it to the core count.
// num_threads <= 0 restores the default. Process-wide.
void SetBackgroundThreads(int num_threads);
int BackgroundThreads();

// Makes the calling thread a background thread, for the rest of its life:
// it runs at a low CPU priority (nice 10, so a request thread that wakes up
// gets the core first, while the thread still progresses on a busy
// machine), and the chunks of its ParallelFor calls (and so of its GEMMs)
// run on a pool of background workers of the same priority, so that it
// never holds the pool that requests use. Training jobs run this way.
// Returns false (and the thread stays as it was) when the kernel refuses.
bool MakeCurrentThreadBackground();
bool IsBackgroundThread();

// While one exists, ParallelFor calls on the thread that made it run on that
// thread alone (Parallelism() is 1 there). For work done on behalf of many
// requests at once, when the other cores are better left to those requests'
// RPC work. Nests.
class ScopedSerial {
 public:
  ScopedSerial();
  ~ScopedSerial();
  ScopedSerial(const ScopedSerial&) = delete;
  ScopedSerial& operator=(const ScopedSerial&) = delete;
};

// Calls fn(chunk, begin, end) for each chunk of [0, n); chunks below
// `min_per_chunk` items are merged so small loops stay on one thread.
// Thread-safe: while one call holds the pool, other calls (from other
// threads, or nested) run their chunks serially on their own thread.
// Background threads have a pool of their own, so they never hold up others.
void ParallelFor(int64_t n, int64_t min_per_chunk,
                 const std::function<void(int chunk, int64_t begin, int64_t end)>& fn);

}  // namespace sae

#endif  // SAE_CORE_PARALLEL_H_
