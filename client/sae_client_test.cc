// The client library against a fake server that answers wrongly: every
// reply that disagrees with the request, or with itself, is an error the
// caller sees, never memory written out of bounds, an allocation the reply
// merely asks for, or rows that were not sent.
#include "client/sae_client.h"

#include <sys/stat.h>
#include <unistd.h>

#include <memory>
#include <string>

#include "absl/strings/str_cat.h"
#include "core/file_util.h"
#include "core/testing/test_dir.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"

namespace sae::client {
namespace {

// How the fake server gets its answers wrong.
struct Misbehaviour {
  int64_t extra_rows = 0;         // rows added to (negative: taken from) each answer
  int64_t extra_cols = 0;         // values added to each answered row
  int64_t claimed_rows = 0;       // > 0: the shape claims this many rows, with no data
  int64_t claimed_cols = 0;       // > 0: rows as asked, this many columns, 4 bytes a row
  bool break_offsets = false;     // sparse: offsets that do not span the entries
  int64_t stream_answers = -1;    // >= 0: answer only this many stream messages
  std::string export_file = "";   // a file name to send instead of cfg.json
  bool export_one_file = false;   // send cfg.json only
};

// rows x cols of 0.5 as a raw tensor, or the shape alone when claimed_rows.
void Answer(int64_t rows, int64_t cols, const Misbehaviour& m, v1::Tensor* t) {
  if (m.claimed_rows > 0) {
    t->add_shape(m.claimed_rows);
    t->add_shape(m.claimed_rows);
    return;
  }
  if (m.claimed_cols > 0) {
    t->add_shape(rows);
    t->add_shape(m.claimed_cols);
    t->set_raw(std::string(static_cast<size_t>(rows) * 4, '\0'));
    return;
  }
  rows += m.extra_rows;
  cols += m.extra_cols;
  t->add_shape(rows);
  t->add_shape(cols);
  t->set_raw(std::string(static_cast<size_t>(rows * cols) * 4, '\0'));
}

class FakeService final : public v1::SparseAutoencoderService::Service {
 public:
  explicit FakeService(Misbehaviour m) : m_(std::move(m)) {}

  grpc::Status Encode(grpc::ServerContext*, const v1::EncodeRequest* r,
                      v1::EncodeResponse* out) override {
    const int64_t rows = r->input().shape(0);
    if (r->sparse()) {
      v1::SparseCodes* s = out->mutable_sparse();
      s->set_rows(rows);
      s->set_d_hidden(16);
      s->add_row_offsets(0);
      for (int64_t i = 0; i < rows; ++i) {
        s->add_indices(static_cast<int32_t>(i % 16));
        s->add_values(1.0f);
        s->add_row_offsets(i + 1 + (m_.break_offsets ? 1 : 0));
      }
      return grpc::Status::OK;
    }
    Answer(rows, 16, m_, out->mutable_dense());
    return grpc::Status::OK;
  }
  grpc::Status Reconstruct(grpc::ServerContext*, const v1::ReconstructRequest* r,
                           v1::ReconstructResponse* out) override {
    Answer(r->input().shape(0), r->input().shape(1), m_, out->mutable_output());
    return grpc::Status::OK;
  }
  grpc::Status StreamEncode(
      grpc::ServerContext*,
      grpc::ServerReaderWriter<v1::StreamEncodeResponse, v1::StreamEncodeRequest>* stream)
      override {
    v1::StreamEncodeRequest r;
    for (int64_t answered = 0; stream->Read(&r); ++answered) {
      if (m_.stream_answers >= 0 && answered >= m_.stream_answers) continue;
      v1::StreamEncodeResponse out;
      Answer(r.request().input().shape(0), 16, m_, out.mutable_response()->mutable_dense());
      if (!stream->Write(out)) break;
    }
    return grpc::Status::OK;
  }
  grpc::Status ExportModel(grpc::ServerContext*, const v1::ExportModelRequest*,
                           grpc::ServerWriter<v1::ExportModelResponse>* writer) override {
    v1::ExportModelResponse chunk;
    chunk.set_file_name(m_.export_file.empty() ? "cfg.json" : m_.export_file);
    chunk.set_chunk("{}");
    writer->Write(chunk);
    if (m_.export_one_file) return grpc::Status::OK;
    chunk.set_file_name("sae_weights.safetensors");
    chunk.set_chunk("weights");
    writer->Write(chunk);
    return grpc::Status::OK;
  }

 private:
  const Misbehaviour m_;
};

class ClientRepliesTest : public ::testing::Test {
 protected:
  void Serve(Misbehaviour m) {
    if (server_ != nullptr) {
      server_->Shutdown();
      server_.reset();
    }
    service_ = std::make_unique<FakeService>(std::move(m));
    grpc::ServerBuilder builder;
    int port = 0;
    builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port);
    builder.RegisterService(service_.get());
    server_ = builder.BuildAndStart();
    ASSERT_NE(server_, nullptr);
    ClientOptions options;
    options.max_attempts = 1;
    client_ = SaeClient::Create(absl::StrCat("127.0.0.1:", port), options);
  }
  void TearDown() override {
    if (server_ != nullptr) server_->Shutdown();
  }

  static void ExpectInternal(const absl::Status& s, const std::string& words) {
    EXPECT_EQ(s.code(), absl::StatusCode::kInternal) << s;
    EXPECT_NE(s.message().find(words), std::string::npos) << s;
  }

  std::unique_ptr<FakeService> service_;
  std::unique_ptr<grpc::Server> server_;
  std::unique_ptr<SaeClient> client_;
  v1::ModelRef model_ = [] {
    v1::ModelRef m;
    m.set_name("m");
    return m;
  }();
  RowMatrix x_ = RowMatrix::Constant(5, 4, 0.25f);
};

TEST_F(ClientRepliesTest, AnHonestServerIsAccepted) {
  Serve({});
  absl::StatusOr<RowMatrix> codes = client_->Encode(model_, x_);
  ASSERT_TRUE(codes.ok()) << codes.status();
  EXPECT_EQ(codes->rows(), 5);
  EXPECT_EQ(codes->cols(), 16);
  EXPECT_TRUE(client_->Reconstruct(model_, x_).ok());
  EXPECT_TRUE(client_->EncodeSparse(model_, x_, 0).ok());
  int64_t rows = 0;
  EXPECT_TRUE(client_->Stream(SaeClient::StreamOp::kEncode, model_, x_, 2,
                              [&](const RowMatrix& b) {
                                rows += b.rows();
                                return absl::OkStatus();
                              })
                  .ok());
  EXPECT_EQ(rows, 5);
}

TEST_F(ClientRepliesTest, ARowCountOtherThanSentIsAnError) {
  Serve({.extra_rows = 1});
  ExpectInternal(client_->Encode(model_, x_).status(), "server sent 6 rows, expected 5");
}

TEST_F(ClientRepliesTest, AShapeThatItsDataDoesNotFillIsNotAllocated) {
  Serve({.claimed_rows = 5});  // a 5 x 5 shape with no data
  ExpectInternal(client_->Encode(model_, x_).status(), "size differs from its shape");
}

TEST_F(ClientRepliesTest, AHugeClaimedShapeIsNotAllocated) {
  // 2^40 x 2^40: allocating it would throw; the row count is checked first.
  Serve({.claimed_rows = int64_t{1} << 40});
  ExpectInternal(client_->Encode(model_, x_).status(), "expected 5");
}

TEST_F(ClientRepliesTest, AWidthWhoseRowSizeOverflowsIsNotAllocated) {
  // (2^62 + 1) * 4 bytes wraps to 4 in 64 bits: 4 bytes a row would seem to
  // fit the data sent.
  Serve({.claimed_cols = (int64_t{1} << 62) + 1});
  ExpectInternal(client_->Encode(model_, x_).status(), "rows of 4611686018427387905 values");
  // 2^62 * 4 wraps to 0.
  Serve({.claimed_cols = int64_t{1} << 62});
  ExpectInternal(client_->Encode(model_, x_).status(), "rows of 4611686018427387904 values");
}

TEST_F(ClientRepliesTest, AReconstructionOfAnotherWidthIsAnError) {
  Serve({.extra_cols = 1});
  ExpectInternal(client_->Reconstruct(model_, x_).status(), "rows of 5 values, expected 4");
}

TEST_F(ClientRepliesTest, SparseCodesWhoseOffsetsDoNotSpanTheEntriesAreAnError) {
  Serve({.break_offsets = true});
  ExpectInternal(client_->EncodeSparse(model_, x_, 0).status(), "malformed sparse codes");
}

TEST_F(ClientRepliesTest, AStreamAnswerWithMoreRowsThanItsBatchNeverReachesTheSink) {
  Serve({.extra_rows = 1});
  int batches = 0;
  absl::Status s = client_->Stream(SaeClient::StreamOp::kEncode, model_, x_, 2,
                                   [&](const RowMatrix&) {
                                     ++batches;
                                     return absl::OkStatus();
                                   });
  ExpectInternal(s, "server sent 3 rows, expected 2");
  EXPECT_EQ(batches, 0);
}

TEST_F(ClientRepliesTest, AStreamThatEndsBeforeEveryRowIsAnsweredIsAnError) {
  Serve({.stream_answers = 1});
  absl::Status s = client_->Stream(SaeClient::StreamOp::kEncode, model_, x_, 2,
                                   [](const RowMatrix&) { return absl::OkStatus(); });
  ExpectInternal(s, "server answered 2 of 5 rows");
}

TEST_F(ClientRepliesTest, AnExportWithAnUnexpectedOrMissingFileIsAnError) {
  const std::string dir = sae::testing::FreshTestDir("client_export");
  ASSERT_TRUE(MakeDirectory(dir).ok());
  Serve({.export_file = "../escape"});
  ExpectInternal(client_->ExportModel(model_, dir + "/a"), "unexpected file");
  EXPECT_FALSE(PathExists(dir + "/escape"));
  Serve({.export_one_file = true});
  ExpectInternal(client_->ExportModel(model_, dir + "/b"), "1 of the model folder's 2 files");
  RemoveTree(dir).IgnoreError();
}

TEST_F(ClientRepliesTest, AnExportThatCannotBeWrittenIsAnError) {
  struct stat st;
  if (::stat("/dev/full", &st) != 0) GTEST_SKIP() << "no /dev/full here";
  const std::string dir = sae::testing::FreshTestDir("client_export_full");
  ASSERT_TRUE(MakeDirectory(dir).ok());
  ASSERT_TRUE(MakeDirectory(dir + "/out").ok());
  // Writes to /dev/full fail with ENOSPC, as on a full disk.
  ASSERT_EQ(::symlink("/dev/full", (dir + "/out/cfg.json").c_str()), 0);
  Serve({});
  ExpectInternal(client_->ExportModel(model_, dir + "/out"), "cannot write");
  RemoveTree(dir).IgnoreError();
}

}  // namespace
}  // namespace sae::client
