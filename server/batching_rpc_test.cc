// Dynamic batching through the RPC path: Encode, Reconstruct and Denoise on
// gRPC's callback API, where a call waiting for its batch holds no thread.
// Results match the model's own, and a call whose deadline passes while it
// is queued is taken back from the queue (its rows no longer count against
// the queue's bound).
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstring>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "core/file_util.h"
#include "core/model.h"
#include "core/model_store.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"
#include "sae/v1/sae.grpc.pb.h"
#include "server/server.h"
#include "server/testing/test_util.h"

namespace sae::server {
namespace {

using testing::RandomMatrix;
using testing::SetTensor;
using Clock = std::chrono::steady_clock;

constexpr int64_t kIn = 8, kHidden = 32;

class BatchingRpcTest : public ::testing::Test {
 protected:
  void StartServer(int64_t max_rows, int64_t max_delay_us, int64_t max_queued_rows,
                   int64_t d_in = kIn, int64_t d_hidden = kHidden) {
    root_ = absl::StrCat(::testing::TempDir(), "/batching_rpc_", ::getpid(), "_",
                         ::testing::UnitTest::GetInstance()->current_test_info()->name());
    ASSERT_TRUE(RemoveTree(root_).ok());
    auto store = ModelStore::Open(root_ + "/models");
    ASSERT_TRUE(store.ok()) << store.status();
    ModelConfig config = DefaultConfig(d_in, d_hidden, Activation::kRelu);
    auto model = Model::Create(config, InitialWeights(config, 7));
    ASSERT_TRUE(model.ok()) << model.status();
    model_ = std::move(*model);
    ASSERT_TRUE((*store)->Publish("m", *model_, {}).ok());
    ServerOptions options;
    options.listen_address = "127.0.0.1:0";
    options.security.plaintext = true;
    options.store_root = root_ + "/models";
    options.accept_training = false;
    options.batch_max_rows = max_rows;
    options.batch_max_delay_us = max_delay_us;
    options.batch_max_queued_rows = max_queued_rows;
    options.max_message_bytes = 256 << 20;
    auto server = Server::Start(options);
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = std::move(*server);
    stub_ =
        v1::SparseAutoencoderService::NewStub(testing::LocalChannel(server_->port(), 256 << 20));
  }
  void TearDown() override {
    server_.reset();
    RemoveTree(root_).IgnoreError();
  }

  grpc::Status Encode(const RowMatrix& x, std::chrono::milliseconds timeout,
                      v1::EncodeResponse* out) {
    v1::EncodeRequest request;
    request.mutable_model()->set_name("m");
    SetTensor(x, request.mutable_input(), /*raw=*/true);
    request.set_raw_output(true);
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + timeout);
    return stub_->Encode(&ctx, request, out);
  }

  static RowMatrix Rows(const v1::Tensor& t) {
    RowMatrix m(t.shape(0), t.shape(1));
    std::memcpy(m.data(), t.raw().data(), t.raw().size());
    return m;
  }

  std::string root_;
  std::shared_ptr<const Model> model_;
  std::unique_ptr<Server> server_;
  std::unique_ptr<v1::SparseAutoencoderService::Stub> stub_;
};

// Many clients at once, each call checked against the model's own result.
TEST_F(BatchingRpcTest, ConcurrentCallsMatchTheModel) {
  StartServer(/*max_rows=*/256, /*max_delay_us=*/500, /*max_queued_rows=*/16384);
  constexpr int kClients = 12, kCalls = 15;
  std::atomic<int> failures{0}, mismatches{0};
  std::vector<std::thread> clients;
  for (int c = 0; c < kClients; ++c) {
    clients.emplace_back([&, c] {
      for (int i = 0; i < kCalls; ++i) {
        const RowMatrix x = RandomMatrix(1 + (c + i) % 3, kIn, 100 * c + i);
        v1::EncodeResponse encoded;
        if (!Encode(x, std::chrono::seconds(20), &encoded).ok()) {
          ++failures;
          continue;
        }
        // Bitwise the same merged or alone (core/packed_gemm.h: these
        // batches stay under the packed kernel's 128 rows).
        const auto check = [&](const RowMatrix& got, const RowMatrix& want) {
          if (got != want) ++mismatches;
        };
        check(Rows(encoded.dense()), *model_->Encode(x));
        v1::ReconstructRequest rr;
        rr.mutable_model()->set_name("m");
        SetTensor(x, rr.mutable_input());
        rr.set_raw_output(true);
        v1::ReconstructResponse reconstructed;
        grpc::ClientContext ctx;
        if (!stub_->Reconstruct(&ctx, rr, &reconstructed).ok()) {
          ++failures;
          continue;
        }
        check(Rows(reconstructed.output()), *model_->Reconstruct(x));
        if (reconstructed.row_mse_size() != x.rows()) ++mismatches;
        v1::DenoiseRequest dr;
        dr.mutable_model()->set_name("m");
        SetTensor(x, dr.mutable_input(), /*raw=*/true);
        v1::DenoiseResponse denoised;
        grpc::ClientContext ctx2;
        if (!stub_->Denoise(&ctx2, dr, &denoised).ok()) {
          ++failures;
          continue;
        }
        // Packed floats when raw output was not asked for.
        RowMatrix got(x.rows(), kIn);
        if (denoised.output().values().values_size() != got.size()) {
          ++mismatches;
          continue;
        }
        std::memcpy(got.data(), denoised.output().values().values().data(), got.size() * 4);
        check(got, *model_->Denoise(x));
      }
    });
  }
  for (auto& t : clients) t.join();
  EXPECT_EQ(failures, 0);
  EXPECT_EQ(mismatches, 0);
}

// The leader (1 row) waits 400 ms for company, as batches of 10 rows are
// not full yet. A call of 8 rows whose deadline passes in the queue fails
// with DEADLINE_EXCEEDED and gives its rows back: a later call of 2 rows fits
// in the 10-row queue only because of that (1 + 8 + 2 > 10), and is served
// with the leader's batch.
TEST_F(BatchingRpcTest, ACallWhoseDeadlinePassesInTheQueueIsTakenBack) {
  StartServer(/*max_rows=*/10, /*max_delay_us=*/400000, /*max_queued_rows=*/10);
  const RowMatrix one = RandomMatrix(1, kIn, 1), eight = RandomMatrix(8, kIn, 2),
                  two = RandomMatrix(2, kIn, 3);
  const auto start = Clock::now();
  grpc::Status leader_status, later_status;
  v1::EncodeResponse leader_out, later_out;
  std::thread leader([&] { leader_status = Encode(one, std::chrono::seconds(20), &leader_out); });
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  v1::EncodeResponse expired_out;
  const grpc::Status expired = Encode(eight, std::chrono::milliseconds(100), &expired_out);
  EXPECT_EQ(expired.error_code(), grpc::StatusCode::DEADLINE_EXCEEDED) << expired.error_message();
  ASSERT_LT(Clock::now() - start, std::chrono::milliseconds(300)) << "the machine is too slow";
  // The server's cancellation lands a little after the client's deadline
  // (tens of ms under ASan on a busy machine): while the queue is still
  // full, try again, but only within the leader's 400 ms wait, so that a
  // call admitted proves the expired call's rows were given back.
  std::thread later([&] {
    while (true) {
      const auto attempt = Clock::now();
      later_status = Encode(two, std::chrono::seconds(20), &later_out);
      if (later_status.error_code() != grpc::StatusCode::RESOURCE_EXHAUSTED ||
          attempt - start > std::chrono::milliseconds(330)) {
        break;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
  });
  leader.join();
  later.join();
  ASSERT_TRUE(leader_status.ok()) << leader_status.error_message();
  ASSERT_TRUE(later_status.ok()) << later_status.error_message()
                                 << " (the expired call still held its queue rows)";
  EXPECT_LT((Rows(leader_out.dense()) - *model_->Encode(one)).cwiseAbs().maxCoeff(), 1e-5f);
  EXPECT_LT((Rows(later_out.dense()) - *model_->Encode(two)).cwiseAbs().maxCoeff(), 1e-5f);
}

// Calls too large to merge are computed off gRPC's callback threads, so a
// one-row call is not held up behind them (on the callback threads it waited
// until both large calls were done, 1.2 s on the development machine).
TEST_F(BatchingRpcTest, ASmallCallIsNotHeldUpByLargeOnes) {
  constexpr int64_t kWide = 784, kLarge = 6000;
  StartServer(/*max_rows=*/256, /*max_delay_us=*/0, /*max_queued_rows=*/16384, kWide, 4096);
  const RowMatrix large = RandomMatrix(kLarge, kWide, 5), small = RandomMatrix(1, kWide, 6);
  std::atomic<int> large_done{0};
  std::vector<double> large_ms(2);
  std::vector<std::thread> larges;
  const auto start = Clock::now();
  for (int i = 0; i < 2; ++i) {
    larges.emplace_back([&, i] {
      v1::ReconstructRequest r;
      r.mutable_model()->set_name("m");
      SetTensor(large, r.mutable_input(), /*raw=*/true);
      r.set_raw_output(true);
      v1::ReconstructResponse out;
      grpc::ClientContext ctx;
      EXPECT_TRUE(stub_->Reconstruct(&ctx, r, &out).ok());
      large_ms[i] = std::chrono::duration<double, std::milli>(Clock::now() - start).count();
      ++large_done;
    });
  }
  // One-row calls, one after another, for as long as both large ones run.
  double slowest_small_ms = 0;
  int smalls = 0;
  while (large_done == 0) {
    const auto t = Clock::now();
    v1::EncodeResponse out;
    ASSERT_TRUE(Encode(small, std::chrono::seconds(60), &out).ok());
    if (large_done == 0) {
      slowest_small_ms = std::max(
          slowest_small_ms, std::chrono::duration<double, std::milli>(Clock::now() - t).count());
      ++smalls;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  for (auto& t : larges) t.join();
  if (smalls < 3) GTEST_SKIP() << "the large calls ended too soon to overlap small ones";
  const double first_large = std::min(large_ms[0], large_ms[1]);
  EXPECT_LT(slowest_small_ms, first_large / 2)
      << "slowest of " << smalls << " small calls " << slowest_small_ms << " ms, large calls "
      << large_ms[0] << " and " << large_ms[1] << " ms";
}

}  // namespace
}  // namespace sae::server
