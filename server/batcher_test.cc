#include "server/batcher.h"

#include <atomic>
#include <functional>
#include <random>
#include <thread>
#include <vector>

#include "gtest/gtest.h"

namespace sae::server {
namespace {

std::shared_ptr<const Model> TestModel() {
  ModelConfig c = DefaultConfig(64, 256, Activation::kRelu);
  ModelWeights w = InitialWeights(c, 3);
  w.b_enc.setConstant(0.05f);
  return *Model::Create(c, w);
}

// Waits until a leader holds a queue of `batcher` (it then waits there for
// company, with the queue's lock released).
bool WaitForLeader(const Batcher& batcher) {
  for (int i = 0; i < 2000 && batcher.queues_for_testing() == 0; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  return batcher.queues_for_testing() > 0;
}

RowMatrix Rows(int64_t n, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> d;
  RowMatrix m(n, 64);
  for (Eigen::Index i = 0; i < m.size(); ++i) m.data()[i] = d(rng);
  return m;
}

TEST(BatcherTest, ConcurrentCallsAreMergedAndMatchUnbatchedResults) {
  auto model = TestModel();
  Batcher batcher(BatchingOptions{true, 256, 2000, 16384}, {});
  constexpr int kThreads = 16, kCalls = 40;
  std::vector<RowMatrix> inputs, want;
  for (int t = 0; t < kThreads; ++t) {
    inputs.push_back(Rows(1 + t % 3, t));
    want.push_back(*model->Reconstruct(inputs.back()));
  }
  std::atomic<int> mismatches{0}, failures{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      RowMatrix out;
      for (int i = 0; i < kCalls; ++i) {
        absl::Status s = batcher.Run("m", model, BatchOp::kReconstruct, inputs[t],
                                     absl::InfiniteFuture(), nullptr, &out);
        if (!s.ok()) ++failures;
        // Bitwise the unbatched result: these batches (at most 48 rows) run
        // on the packed kernel, where a row's sums do not depend on the
        // others (core/packed_gemm.h).
        if (!s.ok() || out != want[t]) ++mismatches;
      }
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(failures, 0);
  EXPECT_EQ(mismatches, 0);
  const BatchStats stats = batcher.stats();
  EXPECT_EQ(stats.requests, kThreads * kCalls);
  EXPECT_LT(stats.batches, stats.requests / 2) << "calls were not merged";
}

TEST(BatcherTest, EncodeAndDenoiseThroughTheBatcher) {
  auto model = TestModel();
  Batcher batcher(BatchingOptions{}, {});
  const RowMatrix x = Rows(3, 9);
  RowMatrix codes, clean;
  ASSERT_TRUE(batcher.Run("m", model, BatchOp::kEncode, x, absl::InfiniteFuture(), nullptr, &codes).ok());
  EXPECT_LT((codes - *model->Encode(x)).cwiseAbs().maxCoeff(), 1e-5f);
  ASSERT_TRUE(batcher.Run("m", model, BatchOp::kDenoise, x, absl::InfiniteFuture(), nullptr, &clean).ok());
  EXPECT_EQ(clean.cols(), 64);
  RowMatrix bad(2, 63);
  EXPECT_EQ(batcher.Run("m", model, BatchOp::kEncode, bad, absl::InfiniteFuture(), nullptr, &codes).code(),
            absl::StatusCode::kInvalidArgument);
}

// A leader that waits long for company keeps later requests queued: their
// deadline and cancellation still apply, and the queue has a bound.
TEST(BatcherTest, DeadlineCancellationAndQueueLimitHoldWhileQueued) {
  auto model = TestModel();
  Batcher batcher(BatchingOptions{true, 1000, 300000, 6}, {});
  const RowMatrix x = Rows(2, 1);
  RowMatrix leader_out;
  std::thread leader([&] {
    EXPECT_TRUE(batcher.Run("m", model, BatchOp::kEncode, x, absl::InfiniteFuture(), nullptr, &leader_out).ok());
  });
  ASSERT_TRUE(WaitForLeader(batcher));
  RowMatrix out;
  const absl::Time start = absl::Now();
  absl::Status late = batcher.Run("m", model, BatchOp::kEncode, x, absl::Now() + absl::Milliseconds(40),
                                  nullptr, &out);
  EXPECT_EQ(late.code(), absl::StatusCode::kDeadlineExceeded) << late;
  EXPECT_LT(absl::Now() - start, absl::Milliseconds(200));
  std::atomic<bool> cancel{false};
  std::thread canceller([&] {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
    cancel = true;
  });
  absl::Status cancelled = batcher.Run("m", model, BatchOp::kEncode, x, absl::InfiniteFuture(),
                                       [&] { return cancel.load(); }, &out);
  canceller.join();
  EXPECT_EQ(cancelled.code(), absl::StatusCode::kCancelled);
  const RowMatrix big = Rows(5, 2);  // 2 queued + 5 > 6
  EXPECT_EQ(batcher.Run("m", model, BatchOp::kEncode, big, absl::InfiniteFuture(), nullptr, &out).code(),
            absl::StatusCode::kResourceExhausted);
  leader.join();
  EXPECT_EQ(leader_out.rows(), 2);
}

// A server that reloads or serves many versions must not keep a queue (and
// so memory) for every version it ever served: idle queues are freed, and
// the versions they held with them. A stale ticket cancels nothing.
TEST(BatcherTest, IdleQueuesAreFreedWithTheirVersions) {
  Batcher batcher(BatchingOptions{true, 256, 2000, 16384}, {});
  const RowMatrix x = Rows(1, 4);
  std::weak_ptr<const Model> first;
  for (int version = 0; version < 20; ++version) {
    auto model = TestModel();
    if (version == 0) first = model;
    constexpr int kThreads = 4;
    std::vector<std::thread> threads;
    std::atomic<int> failures{0};
    for (int t = 0; t < kThreads; ++t) {
      threads.emplace_back([&] {
        RowMatrix out;
        for (BatchOp op : {BatchOp::kEncode, BatchOp::kDenoise}) {
          if (!batcher.Run("m", model, op, x, absl::InfiniteFuture(), nullptr, &out).ok()) ++failures;
        }
      });
    }
    for (auto& th : threads) th.join();
    ASSERT_EQ(failures, 0);
    EXPECT_EQ(batcher.queues_for_testing(), 0u) << "after version " << version;
  }
  EXPECT_TRUE(first.expired()) << "the batcher still holds a version it no longer serves";

  // A call taken back leaves the leader's queue to the leader, which frees
  // it when done; the ticket is then stale. The leader waits (up to a
  // minute) for a full batch, which a large call gives it at the end, so
  // the test does not hang on the delay nor race it.
  auto model = TestModel();
  const RowMatrix filler = Rows(999, 5);
  RowMatrix leader_out, out, filler_out;
  Batcher slow(BatchingOptions{true, 1000, 60'000'000, 16384}, {});
  std::thread leader([&] {
    EXPECT_TRUE(slow.Run("m", model, BatchOp::kEncode, x, absl::InfiniteFuture(), nullptr,
                         &leader_out).ok());
  });
  std::atomic<int> cancelled_done{0}, filler_done{0};
  Batcher::Ticket ticket;
  if (WaitForLeader(slow)) {
    ticket = slow.Submit("m", model, BatchOp::kEncode, x, absl::InfiniteFuture(), &out,
                         [&](absl::Status) { ++cancelled_done; });
    EXPECT_NE(ticket.id, 0u) << "the call should have queued behind the leader";
    EXPECT_EQ(slow.queues_for_testing(), 1u);
    EXPECT_TRUE(slow.Cancel(ticket));
    EXPECT_FALSE(slow.Cancel(ticket)) << "a ticket cancels once";
  } else {
    ADD_FAILURE() << "no leader within 2 s";
  }
  // Fills the leader's batch (1 + 999 rows), which releases it.
  slow.Submit("m", model, BatchOp::kEncode, filler, absl::InfiniteFuture(), &filler_out,
              [&](absl::Status s) {
                EXPECT_TRUE(s.ok()) << s;
                ++filler_done;
              });
  leader.join();
  EXPECT_EQ(cancelled_done, 0);
  EXPECT_EQ(filler_done, 1);
  EXPECT_EQ(slow.queues_for_testing(), 0u);
  EXPECT_FALSE(slow.Cancel(ticket));
}

// A leader is answered after its own batch, however long calls keep coming:
// each call's completion submits the next (a closed-loop client), which
// would keep a leader without an executor busy for the whole chain.
TEST(BatcherTest, WithAnExecutorALeaderReturnsAfterItsOwnBatch) {
  auto model = TestModel();
  for (const bool with_executor : {false, true}) {
    SCOPED_TRACE(with_executor ? "with an executor" : "without one");
    Batcher batcher(BatchingOptions{true, 256, 0, 16384}, {});
    std::vector<std::function<void()>> handed;
    if (with_executor) {
      batcher.set_executor([&](std::function<void()> fn) { handed.push_back(std::move(fn)); });
    }
    constexpr int kChain = 20;
    const RowMatrix x = Rows(1, 4);
    std::vector<RowMatrix> outs(kChain + 1);
    std::atomic<int> completed{0};
    std::function<void(int)> submit = [&](int i) {
      batcher.Submit("m", model, BatchOp::kEncode, x, absl::InfiniteFuture(), &outs[i],
                     [&, i](absl::Status s) {
                       EXPECT_TRUE(s.ok()) << s;
                       ++completed;
                       if (i < kChain) submit(i + 1);  // queues behind the leader
                     });
    };
    submit(0);
    if (!with_executor) {
      // The first call led the whole chain before its Submit returned.
      EXPECT_EQ(completed.load(), kChain + 1);
      continue;
    }
    // Its own batch ran; the call it queued was handed over, not run here.
    EXPECT_EQ(completed.load(), 1);
    ASSERT_EQ(handed.size(), 1u);
    EXPECT_EQ(batcher.queues_for_testing(), 1u);
    // The executor leads the queue until it is empty, then frees it.
    std::function<void()> lead = std::move(handed[0]);
    lead();
    EXPECT_EQ(completed.load(), kChain + 1);
    EXPECT_EQ(handed.size(), 1u);
    EXPECT_EQ(batcher.queues_for_testing(), 0u);
    for (const RowMatrix& out : outs) EXPECT_EQ(out, outs[0]);
  }
}

TEST(BatcherTest, DisabledPerModel) {
  auto model = TestModel();
  auto overrides = ParseBatchingOverrides("m=off,other=64:100", BatchingOptions{});
  ASSERT_TRUE(overrides.ok());
  EXPECT_FALSE(overrides->at("m").enabled);
  EXPECT_EQ(overrides->at("other").max_batch_rows, 64);
  EXPECT_EQ(overrides->at("other").max_queue_delay_us, 100);
  EXPECT_FALSE(ParseBatchingOverrides("m=fast", BatchingOptions{}).ok());
  EXPECT_FALSE(ParseBatchingOverrides("=off", BatchingOptions{}).ok());
  Batcher batcher(BatchingOptions{}, *overrides);
  RowMatrix out;
  for (int i = 0; i < 5; ++i) {
    ASSERT_TRUE(batcher.Run("m", model, BatchOp::kEncode, Rows(1, i), absl::InfiniteFuture(), nullptr, &out).ok());
  }
  EXPECT_EQ(batcher.stats().batches, 5);
}

}  // namespace
}  // namespace sae::server
