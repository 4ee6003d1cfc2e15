// Tests of who may call what: the token file, the role table, and an
// in-process server with mutual TLS and tokens called through real channels.
#include "server/auth.h"

#include <unistd.h>

#include <cstdlib>
#include <fstream>

#include "absl/strings/str_cat.h"
#include "client/sae_client.h"
#include "core/file_util.h"
#include "grpc/health/v1/health.grpc.pb.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"
#include "sae/v1/sae.grpc.pb.h"
#include "server/server.h"
#include "server/testing/generic_call.h"

namespace sae::server {
namespace {

constexpr char kAdminToken[] = "admin-0123456789abcdef";
constexpr char kReadToken[] = "read-0123456789abcdef";

const google::protobuf::ServiceDescriptor* Service() {
  return v1::EncodeRequest::descriptor()->file()->FindServiceByName("SparseAutoencoderService");
}

void WriteFile(const std::string& path, const std::string& text) {
  std::ofstream(path) << text;
}

TEST(TokenFileTest, ParsesRolesNamesAndComments) {
  auto auth = TokenAuthenticator::FromText(
      "# role token name\n\nadmin admin-0123456789abcdef trainer\n  read\tread-0123456789abcdef\n",
      "tokens");
  ASSERT_TRUE(auth.ok()) << auth.status();
  EXPECT_EQ((*auth)->size(), 2u);
  std::string caller;
  EXPECT_TRUE((*auth)->Check("Bearer admin-0123456789abcdef", "Train", &caller).ok());
  EXPECT_EQ(caller, "trainer");
  EXPECT_TRUE((*auth)->Check("bearer read-0123456789abcdef", "Encode", &caller).ok());
  EXPECT_EQ(caller, "line 4");
}

TEST(TokenFileTest, BadFilesSayWhichLineAndNeverShowTheToken) {
  struct Case {
    std::string text;
    std::string expected;
  };
  const std::string secret = "s3cret-0123456789abcdef";
  for (const Case& c : std::vector<Case>{
           {"", "holds no token"},
           {"# only a comment\n", "holds no token"},
           {"owner " + secret, "line 1: unknown role 'owner'"},
           {"admin short", "line 1: a token must have 16"},
           {"read", "line 1: wrong number of fields"},
           {"read " + secret + " a b", "line 1: wrong number of fields"},
           {"read " + secret + "\nadmin " + secret, "line 2: this token is already"},
       }) {
    auto auth = TokenAuthenticator::FromText(c.text, "tokens");
    ASSERT_FALSE(auth.ok()) << c.text;
    EXPECT_EQ(auth.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_NE(auth.status().message().find(c.expected), std::string::npos) << auth.status();
    EXPECT_EQ(auth.status().message().find(secret), std::string::npos) << auth.status();
  }
  EXPECT_EQ(TokenAuthenticator::FromFile("/nonexistent/tokens").status().code(),
            absl::StatusCode::kNotFound);
}

TEST(TokenFileTest, CheckSaysUnauthenticatedOrPermissionDenied) {
  auto auth = TokenAuthenticator::FromText(
      absl::StrCat("admin ", kAdminToken, " trainer\nread ", kReadToken, " frontend\n"), "t");
  ASSERT_TRUE(auth.ok());
  const TokenAuthenticator& a = **auth;
  using C = absl::StatusCode;
  EXPECT_EQ(a.Check("", "Encode").code(), C::kUnauthenticated);
  EXPECT_EQ(a.Check("Basic dXNlcjpwYXNz", "Encode").code(), C::kUnauthenticated);
  EXPECT_EQ(a.Check("Bearer ", "Encode").code(), C::kUnauthenticated);
  EXPECT_EQ(a.Check("Bearer read-0123456789abcdeX", "Encode").code(), C::kUnauthenticated);
  EXPECT_EQ(a.Check("Bearer read-0123456789abcde", "Encode").code(), C::kUnauthenticated);
  EXPECT_EQ(a.Check(absl::StrCat("Bearer ", kReadToken), "Encode").code(), C::kOk);
  absl::Status denied = a.Check(absl::StrCat("Bearer ", kReadToken), "Train");
  EXPECT_EQ(denied.code(), C::kPermissionDenied);
  EXPECT_NE(denied.message().find("frontend"), std::string::npos) << denied;
  EXPECT_EQ(denied.message().find(kReadToken), std::string::npos) << denied;
  EXPECT_EQ(a.Check(absl::StrCat("Bearer ", kAdminToken), "Train").code(), C::kOk);
  EXPECT_EQ(a.Check(absl::StrCat("Bearer ", kAdminToken), "Encode").code(), C::kOk);
  EXPECT_EQ(a.Check(absl::StrCat("Bearer ", kAdminToken), "NoSuchMethod").code(),
            C::kPermissionDenied);
}

TEST(RoleTableTest, EveryMethodOfTheServiceHasARole) {
  const auto* service = Service();
  ASSERT_NE(service, nullptr);
  int admin = 0;
  for (int i = 0; i < service->method_count(); ++i) {
    absl::StatusOr<Role> role = RequiredRole(service->method(i)->name());
    ASSERT_TRUE(role.ok()) << role.status();
    admin += *role == Role::kAdmin;
  }
  EXPECT_EQ(admin, 7);  // Train, CancelTrainingJob, UploadDataset, DeleteDataset,
                        // DeleteModelVersion, SetModelLabel, ImportModel
  EXPECT_EQ(*RequiredRole("Encode"), Role::kRead);
  EXPECT_EQ(*RequiredRole("ImportModel"), Role::kAdmin);
}

// A server with mutual TLS, tokens and a plaintext health port, with a PKI
// made for the test by openssl.
class SecureServerTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new std::string(absl::StrCat(::testing::TempDir(), "/auth_", ::getpid()));
    const std::string cmd =
        absl::StrCat(SAE_MAKE_TEST_PKI, " ", *dir_, "/pki > /dev/null 2>&1");
    ASSERT_EQ(std::system(cmd.c_str()), 0) << "openssl could not make the test PKI";
    WriteFile(*dir_ + "/tokens",
              absl::StrCat("admin ", kAdminToken, " trainer\nread ", kReadToken, " frontend\n"));
    WriteFile(*dir_ + "/admin.token", absl::StrCat(kAdminToken, "\n"));
    WriteFile(*dir_ + "/read.token", kReadToken);
  }
  static void TearDownTestSuite() {
    RemoveTree(*dir_).IgnoreError();
    delete dir_;
  }

  void SetUp() override {
    ServerOptions options;
    options.listen_address = "127.0.0.1:0";
    options.health_listen = "127.0.0.1:0";
    options.store_root = *dir_ + "/models";
    options.datasets_root = *dir_ + "/datasets";
    options.security.tls_cert_file = Pki("server.pem");
    options.security.tls_key_file = Pki("server.key");
    options.security.tls_client_ca_file = Pki("ca.pem");
    options.security.token_file = *dir_ + "/tokens";
    auto server = Server::Start(options);
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = std::move(*server);
    address_ = absl::StrCat("localhost:", server_->port());
  }

  static std::string Pki(const std::string& name) { return *dir_ + "/pki/" + name; }

  // A client with the test CA, a client certificate and a token file.
  std::unique_ptr<client::SaeClient> Client(const std::string& token_file,
                                            const std::string& cert = "client") {
    auto security = client::LoadClientSecurity(false, Pki("ca.pem"), Pki(cert + ".pem"),
                                               Pki(cert + ".key"), token_file);
    EXPECT_TRUE(security.ok()) << security.status();
    client::ClientOptions options;
    options.security = *security;
    options.max_attempts = 1;
    options.deadline = std::chrono::seconds(10);
    return client::SaeClient::Create(address_, options);
  }

  std::shared_ptr<grpc::Channel> MutualTlsChannel() {
    auto security = client::LoadClientSecurity(false, Pki("ca.pem"), Pki("client.pem"),
                                               Pki("client.key"), "");
    EXPECT_TRUE(security.ok());
    return grpc::CreateChannel(address_, client::MakeChannelCredentials(*security));
  }

  static std::string* dir_;
  std::unique_ptr<Server> server_;
  std::string address_;
};

std::string* SecureServerTest::dir_ = nullptr;

TEST_F(SecureServerTest, AdminTokenOverMutualTlsMayDoEverything) {
  auto admin = Client(*dir_ + "/admin.token");
  ASSERT_TRUE(admin->CheckHealth().ok());
  v1::TrainRequest train;
  train.set_model_name("secure");
  train.mutable_config()->set_d_in(4);
  train.mutable_config()->set_d_hidden(8);
  train.mutable_options()->set_epochs(1);
  train.mutable_inline_data()->add_shape(16);
  train.mutable_inline_data()->add_shape(4);
  for (int i = 0; i < 64; ++i) train.mutable_inline_data()->mutable_values()->add_values(i % 5);
  absl::StatusOr<v1::TrainingJob> job = admin->Train(train);
  ASSERT_TRUE(job.ok()) << job.status();
  absl::StatusOr<v1::TrainingJob> done = admin->WatchJob(job->id(), nullptr);
  ASSERT_TRUE(done.ok()) << done.status();
  EXPECT_EQ(done->state(), v1::JOB_STATE_SUCCEEDED) << done->error();
  // The read token may encode with the model, but not label it.
  auto reader = Client(*dir_ + "/read.token");
  RowMatrix x = RowMatrix::Ones(2, 4);
  v1::ModelRef ref;
  ref.set_name("secure");
  EXPECT_TRUE(reader->Encode(ref, x).ok());
  EXPECT_EQ(reader->SetLabel("secure", "stable", 1).status().code(),
            absl::StatusCode::kPermissionDenied);
  EXPECT_TRUE(admin->SetLabel("secure", "stable", 1).ok());
}

TEST_F(SecureServerTest, EveryMethodChecksTheTokenAndRoleFirst) {
  auto channel = MutualTlsChannel();
  ::testing::internal::CaptureStderr();
  for (const auto& [name, path] : testing::MethodPaths(Service())) {
    const Role role = *RequiredRole(name);
    grpc::Status none = testing::CallWithBytes(channel, path, "");
    EXPECT_EQ(none.error_code(), grpc::StatusCode::UNAUTHENTICATED) << name;
    grpc::Status wrong = testing::CallWithBytes(
        channel, path, "", {{"authorization", "Bearer not-a-known-token-0000"}});
    EXPECT_EQ(wrong.error_code(), grpc::StatusCode::UNAUTHENTICATED) << name;
    grpc::Status read = testing::CallWithBytes(
        channel, path, "", {{"authorization", absl::StrCat("Bearer ", kReadToken)}});
    if (role == Role::kAdmin) {
      EXPECT_EQ(read.error_code(), grpc::StatusCode::PERMISSION_DENIED) << name;
    } else {
      EXPECT_NE(read.error_code(), grpc::StatusCode::PERMISSION_DENIED) << name;
      EXPECT_NE(read.error_code(), grpc::StatusCode::UNAUTHENTICATED) << name;
    }
    grpc::Status admin = testing::CallWithBytes(
        channel, path, "", {{"authorization", absl::StrCat("Bearer ", kAdminToken)}});
    EXPECT_NE(admin.error_code(), grpc::StatusCode::PERMISSION_DENIED) << name;
    EXPECT_NE(admin.error_code(), grpc::StatusCode::UNAUTHENTICATED) << name;
  }
  const std::string log = ::testing::internal::GetCapturedStderr();
  EXPECT_NE(log.find("refused Train to 'frontend'"), std::string::npos) << log;
  EXPECT_EQ(log.find(kReadToken), std::string::npos) << "a token was logged";
  EXPECT_EQ(log.find(kAdminToken), std::string::npos) << "a token was logged";
}

TEST_F(SecureServerTest, HealthNeedsNoTokenAndHasAPlaintextPort) {
  auto no_token = Client("");
  EXPECT_TRUE(no_token->CheckHealth().ok());
  EXPECT_EQ(no_token->ListModels().status().code(), absl::StatusCode::kUnauthenticated);
  // The health port answers plaintext health checks and nothing else.
  ASSERT_NE(server_->health_port(), 0);
  auto plain = grpc::CreateChannel(absl::StrCat("127.0.0.1:", server_->health_port()),
                                   grpc::InsecureChannelCredentials());
  auto health = grpc::health::v1::Health::NewStub(plain);
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
  grpc::health::v1::HealthCheckResponse response;
  ASSERT_TRUE(health->Check(&ctx, {}, &response).ok());
  EXPECT_EQ(response.status(), grpc::health::v1::HealthCheckResponse::SERVING);
  grpc::Status encode = testing::CallWithBytes(
      plain, "/sae.v1.SparseAutoencoderService/ListModels", "",
      {{"authorization", absl::StrCat("Bearer ", kAdminToken)}});
  EXPECT_EQ(encode.error_code(), grpc::StatusCode::UNIMPLEMENTED);
}

TEST_F(SecureServerTest, ConnectionsWithoutTheRightCertificatesFail) {
  const std::string admin_token = *dir_ + "/admin.token";
  // Plaintext to a TLS port.
  client::ClientOptions plain;
  plain.max_attempts = 1;
  plain.deadline = std::chrono::seconds(5);
  plain.security.token = kAdminToken;
  EXPECT_EQ(client::SaeClient::Create(address_, plain)->ListModels().status().code(),
            absl::StatusCode::kUnavailable);
  // TLS without a client certificate, while the server requires one.
  auto no_cert = client::LoadClientSecurity(true, Pki("ca.pem"), "", "", admin_token);
  ASSERT_TRUE(no_cert.ok());
  client::ClientOptions options = plain;
  options.security = *no_cert;
  EXPECT_EQ(client::SaeClient::Create(address_, options)->ListModels().status().code(),
            absl::StatusCode::kUnavailable);
  // A client certificate from another CA.
  EXPECT_EQ(Client(admin_token, "rogue")->ListModels().status().code(),
            absl::StatusCode::kUnavailable);
  // A server certificate the client does not trust.
  auto wrong_ca = client::LoadClientSecurity(true, Pki("rogue-ca.pem"), Pki("client.pem"),
                                             Pki("client.key"), admin_token);
  ASSERT_TRUE(wrong_ca.ok());
  options.security = *wrong_ca;
  EXPECT_EQ(client::SaeClient::Create(address_, options)->ListModels().status().code(),
            absl::StatusCode::kUnavailable);
  // And the right ones work.
  EXPECT_TRUE(Client(admin_token)->ListModels().ok());
}

TEST_F(SecureServerTest, BadSecurityOptionsAreRefusedAtStart) {
  auto start = [&](auto edit) {
    ServerOptions o;
    o.listen_address = "127.0.0.1:0";
    o.store_root = *dir_ + "/models2";
    o.datasets_root = *dir_ + "/datasets2";
    o.jobs_root = *dir_ + "/jobs2";
    o.security.tls_cert_file = Pki("server.pem");
    o.security.tls_key_file = Pki("server.key");
    edit(o);
    return Server::Start(o).status();
  };
  EXPECT_TRUE(start([](ServerOptions&) {}).ok());
  absl::Status none = start([](ServerOptions& o) { o.security = {}; });
  EXPECT_EQ(none.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(none.message().find("plaintext"), std::string::npos) << none;
  EXPECT_EQ(start([](ServerOptions& o) { o.security.plaintext = true; }).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(start([](ServerOptions& o) { o.security.tls_key_file.clear(); }).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(start([&](ServerOptions& o) { o.security.tls_cert_file = *dir_ + "/none.pem"; }).code(),
            absl::StatusCode::kNotFound);
  const absl::Status not_pem =
      start([&](ServerOptions& o) { o.security.tls_key_file = *dir_ + "/tokens"; });
  EXPECT_EQ(not_pem.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(not_pem.message().find("tls_key: '"), std::string::npos) << not_pem;
  EXPECT_NE(not_pem.message().find("is not PEM"), std::string::npos) << not_pem;
  EXPECT_EQ(start([&](ServerOptions& o) { o.security.token_file = Pki("ca.pem"); }).code(),
            absl::StatusCode::kInvalidArgument);
  // Client side: a certificate without its key, a missing file, a bad token file.
  EXPECT_EQ(client::LoadClientSecurity(false, "", Pki("client.pem"), "", "").status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(client::LoadClientSecurity(false, *dir_ + "/none.pem", "", "", "").status().code(),
            absl::StatusCode::kNotFound);
  EXPECT_EQ(client::LoadClientSecurity(false, "", "", "", *dir_ + "/tokens").status().code(),
            absl::StatusCode::kInvalidArgument);
  // A file that is not PEM, named by its flag (the same check as the server's).
  const absl::Status client_not_pem =
      client::LoadClientSecurity(false, *dir_ + "/tokens", "", "", "").status();
  EXPECT_EQ(client_not_pem.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(client_not_pem.message().find("--tls-ca: '"), std::string::npos) << client_not_pem;
  EXPECT_TRUE(client::LoadClientSecurity(false, Pki("ca.pem"), Pki("client.pem"),
                                         Pki("client.key"), "")
                  .ok());
}

}  // namespace
}  // namespace sae::server
