// ThreadSanitizer support for Debian's uninstrumented Abseil (TSan builds
// only): a shared library that scripts/tsan.sh preloads (LD_PRELOAD) into
// every test and the binaries they start.
//
// absl::Mutex tells TSan about its locks through __tsan_mutex_* annotations
// compiled into mutex.cc when Abseil itself is built with -fsanitize=thread.
// Debian's libabsl_synchronization.so is not, so TSan cannot see those locks
// and reports every access guarded by an absl::Mutex (ours and gRPC's) as a
// race. This file interposes the library's lock, unlock and wait
// entry points (the executable's definitions win over the shared library's),
// adds the same annotations upstream uses, and calls the real functions.
// Destruction is not annotated: TSan forgets a mutex when its memory is freed,
// and gRPC orders a mutex's last use before its destruction through its own
// reference counts, which TSan cannot see in the uninstrumented library.
//
// It is built without instrumentation and refers to the TSan runtime weakly,
// so that processes without TSan that inherit LD_PRELOAD (openssl, sh) load
// it harmlessly.
//
// Mutex::AwaitWithTimeout, Mutex::LockWhenWithTimeout and
// CondVar::WaitWithTimeout are not wrapped:
// the library implements them as tail calls of the *WithDeadline functions,
// which are (a wrapper inside a wrapper would release the lock twice).
//
// While TSan is told a mutex operation is under way (between pre and post),
// it ignores the thread's memory accesses: that covers the conditions
// absl::Mutex evaluates inside Unlock and Await on behalf of waiters, as
// upstream's own annotations do.
#include <dlfcn.h>
#include <sanitizer/tsan_interface.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>

#pragma weak __tsan_mutex_pre_lock
#pragma weak __tsan_mutex_post_lock
#pragma weak __tsan_mutex_pre_unlock
#pragma weak __tsan_mutex_post_unlock

namespace {

bool HaveTsan() { return &__tsan_mutex_pre_lock != nullptr; }

void PreLock(void* mu, unsigned flags) {
  if (HaveTsan()) __tsan_mutex_pre_lock(mu, flags);
}
void PostLock(void* mu, unsigned flags) {
  if (HaveTsan()) __tsan_mutex_post_lock(mu, flags, 0);
}

// The real function behind `symbol`, in the next object that defines it.
template <typename Fn>
Fn Real(const char* symbol) {
  void* f = dlsym(RTLD_NEXT, symbol);
  if (f == nullptr) {
    std::fprintf(stderr, "tsan_absl_mutex: %s not found in the Abseil library\n", symbol);
    std::abort();
  }
  return reinterpret_cast<Fn>(f);
}

// absl::Duration and absl::Time, passed by value as the library expects
// (two words: seconds and quarter-nanoseconds).
struct Duration {
  int64_t hi;
  uint32_t lo;
};
struct Time {
  Duration rep;
};

constexpr unsigned kRead = __tsan_mutex_read_lock;

void Released(void* mu, unsigned flags) {
  if (HaveTsan()) __tsan_mutex_pre_unlock(mu, flags);
}
void ReleaseDone(void* mu, unsigned flags) {
  if (HaveTsan()) __tsan_mutex_post_unlock(mu, flags);
}
void Reacquired(void* mu) {
  PreLock(mu, 0);
  PostLock(mu, 0);
}

}  // namespace

#define ABSL_SYM(name) "_ZN4absl7debian3" name

extern "C" {

void MutexLock(void* mu) __asm__(ABSL_SYM("5Mutex4LockEv"));
void MutexLock(void* mu) {
  static auto real = Real<void (*)(void*)>(ABSL_SYM("5Mutex4LockEv"));
  PreLock(mu, 0);
  real(mu);
  PostLock(mu, 0);
}

void MutexReaderLock(void* mu) __asm__(ABSL_SYM("5Mutex10ReaderLockEv"));
void MutexReaderLock(void* mu) {
  static auto real = Real<void (*)(void*)>(ABSL_SYM("5Mutex10ReaderLockEv"));
  PreLock(mu, kRead);
  real(mu);
  PostLock(mu, kRead);
}

bool MutexTryLock(void* mu) __asm__(ABSL_SYM("5Mutex7TryLockEv"));
bool MutexTryLock(void* mu) {
  static auto real = Real<bool (*)(void*)>(ABSL_SYM("5Mutex7TryLockEv"));
  PreLock(mu, __tsan_mutex_try_lock);
  const bool locked = real(mu);
  PostLock(mu, __tsan_mutex_try_lock | (locked ? 0 : __tsan_mutex_try_lock_failed));
  return locked;
}

void MutexUnlock(void* mu) __asm__(ABSL_SYM("5Mutex6UnlockEv"));
void MutexUnlock(void* mu) {
  static auto real = Real<void (*)(void*)>(ABSL_SYM("5Mutex6UnlockEv"));
  Released(mu, 0);
  real(mu);
  ReleaseDone(mu, 0);
}

void MutexReaderUnlock(void* mu) __asm__(ABSL_SYM("5Mutex12ReaderUnlockEv"));
void MutexReaderUnlock(void* mu) {
  static auto real = Real<void (*)(void*)>(ABSL_SYM("5Mutex12ReaderUnlockEv"));
  Released(mu, kRead);
  real(mu);
  ReleaseDone(mu, kRead);
}

void MutexLockWhen(void* mu, const void* cond) __asm__(ABSL_SYM("5Mutex8LockWhenERKNS0_9ConditionE"));
void MutexLockWhen(void* mu, const void* cond) {
  static auto real =
      Real<void (*)(void*, const void*)>(ABSL_SYM("5Mutex8LockWhenERKNS0_9ConditionE"));
  PreLock(mu, 0);
  real(mu, cond);
  PostLock(mu, 0);
}

// absl::Notification's timed waits lock this way (LockWhenWithTimeout is
// a tail call of it, like AwaitWithTimeout below).
bool MutexLockWhenWithDeadline(void* mu, const void* cond, Time deadline)
    __asm__(ABSL_SYM("5Mutex20LockWhenWithDeadlineERKNS0_9ConditionENS0_4TimeE"));
bool MutexLockWhenWithDeadline(void* mu, const void* cond, Time deadline) {
  static auto real = Real<bool (*)(void*, const void*, Time)>(
      ABSL_SYM("5Mutex20LockWhenWithDeadlineERKNS0_9ConditionENS0_4TimeE"));
  PreLock(mu, 0);
  const bool met = real(mu, cond, deadline);
  PostLock(mu, 0);
  return met;
}

// Await: the caller holds `mu` (for writing, as everywhere in this
// project); the library may release it while waiting and holds it again on
// return.
void MutexAwait(void* mu, const void* cond) __asm__(ABSL_SYM("5Mutex5AwaitERKNS0_9ConditionE"));
void MutexAwait(void* mu, const void* cond) {
  static auto real =
      Real<void (*)(void*, const void*)>(ABSL_SYM("5Mutex5AwaitERKNS0_9ConditionE"));
  Released(mu, 0);
  real(mu, cond);
  ReleaseDone(mu, 0);
  Reacquired(mu);
}

bool MutexAwaitWithDeadline(void* mu, const void* cond, Time deadline)
    __asm__(ABSL_SYM("5Mutex17AwaitWithDeadlineERKNS0_9ConditionENS0_4TimeE"));
bool MutexAwaitWithDeadline(void* mu, const void* cond, Time deadline) {
  static auto real = Real<bool (*)(void*, const void*, Time)>(
      ABSL_SYM("5Mutex17AwaitWithDeadlineERKNS0_9ConditionENS0_4TimeE"));
  Released(mu, 0);
  const bool met = real(mu, cond, deadline);
  ReleaseDone(mu, 0);
  Reacquired(mu);
  return met;
}

void CondVarWait(void* cv, void* mu) __asm__(ABSL_SYM("7CondVar4WaitEPNS0_5MutexE"));
void CondVarWait(void* cv, void* mu) {
  static auto real = Real<void (*)(void*, void*)>(ABSL_SYM("7CondVar4WaitEPNS0_5MutexE"));
  Released(mu, 0);
  real(cv, mu);
  ReleaseDone(mu, 0);
  Reacquired(mu);
}

bool CondVarWaitWithDeadline(void* cv, void* mu, Time deadline)
    __asm__(ABSL_SYM("7CondVar16WaitWithDeadlineEPNS0_5MutexENS0_4TimeE"));
bool CondVarWaitWithDeadline(void* cv, void* mu, Time deadline) {
  static auto real = Real<bool (*)(void*, void*, Time)>(
      ABSL_SYM("7CondVar16WaitWithDeadlineEPNS0_5MutexENS0_4TimeE"));
  Released(mu, 0);
  const bool timed_out = real(cv, mu, deadline);
  ReleaseDone(mu, 0);
  Reacquired(mu);
  return timed_out;
}

}  // extern "C"
