#include "core/model_store.h"

#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <random>
#include <set>
#include <thread>

#include "absl/strings/str_cat.h"
#include "core/file_util.h"
#include "core/testing/test_dir.h"
#include "gtest/gtest.h"

extern char** environ;

namespace sae {
namespace {

class ModelStoreTest : public ::testing::Test {
 protected:
  void SetUp() override {
    root_ = testing::FreshTestDir("store");
    auto store = ModelStore::Open(root_);
    ASSERT_TRUE(store.ok()) << store.status();
    store_ = std::move(*store);
  }
  void TearDown() override {
    SetWriteFaultHookForTesting(nullptr);
    SetStatFaultHookForTesting(nullptr);
    RemoveTree(root_).IgnoreError();
  }

  std::shared_ptr<const Model> SmallModel(uint64_t seed) {
    ModelConfig c = DefaultConfig(8, 16, Activation::kRelu);
    return *Model::Create(c, InitialWeights(c, seed));
  }

  std::string root_;
  std::unique_ptr<ModelStore> store_;
};

TEST_F(ModelStoreTest, PublishLoadAndList) {
  auto m1 = SmallModel(1), m2 = SmallModel(2);
  ModelMetadata meta;
  meta.metrics["fvu"] = 0.5;
  EXPECT_EQ(*store_->Publish("digits", *m1, meta), 1);
  EXPECT_EQ(*store_->Publish("digits", *m2, {}), 2);
  EXPECT_EQ(*store_->Publish("other-model.v2", *m1, {}), 1);
  EXPECT_EQ(*store_->ListModels(), (std::vector<std::string>{"digits", "other-model.v2"}));

  absl::StatusOr<LoadedModel> latest = store_->Load(ModelRef::Latest("digits"));
  ASSERT_TRUE(latest.ok()) << latest.status();
  EXPECT_EQ(latest->model->weights().w_enc, m2->weights().w_enc);
  absl::StatusOr<LoadedModel> first = store_->Load(ModelRef::Version("digits", 1));
  ASSERT_TRUE(first.ok());
  EXPECT_EQ(first->model->weights().w_enc, m1->weights().w_enc);
  EXPECT_EQ(first->metadata.metrics.at("fvu"), 0.5);

  absl::StatusOr<std::vector<VersionInfo>> versions = store_->ListVersions("digits");
  ASSERT_TRUE(versions.ok());
  ASSERT_EQ(versions->size(), 2u);
  EXPECT_EQ((*versions)[0].version, 1);
  EXPECT_GT((*versions)[0].bytes, 8 * 16 * 4 * 2);
}

TEST_F(ModelStoreTest, UnknownModelsVersionsAndLabelsAreNotFound) {
  EXPECT_EQ(store_->Load(ModelRef::Latest("nope")).status().code(), absl::StatusCode::kNotFound);
  ASSERT_TRUE(store_->Publish("m", *SmallModel(1), {}).ok());
  EXPECT_EQ(store_->Load(ModelRef::Version("m", 7)).status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(store_->Load(ModelRef::Label("m", "stable")).status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(store_->SetLabel("m", "stable", 9).code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(store_->RemoveLabel("m", "stable").code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(store_->DeleteVersion("m", 3, false).code(), absl::StatusCode::kNotFound);
}

// A folder that cannot be examined (EIO: a failing disk, a stale NFS handle)
// is an error, never read as absent: a client must not be told a model or
// version does not exist, nor a poll see it removed, because of a transient
// fault.
TEST_F(ModelStoreTest, AFolderThatCannotBeExaminedIsAnErrorNotAnAbsence) {
  ASSERT_TRUE(store_->Publish("m", *SmallModel(1), {}).ok());
  ASSERT_TRUE(store_->Publish("m", *SmallModel(2), {}).ok());
  ASSERT_TRUE(store_->SetLabel("m", "stable", 2).ok());
  std::string failing;
  SetStatFaultHookForTesting([&](const std::string& path) { return path == failing ? EIO : 0; });
  const auto internal = absl::StatusCode::kInternal;

  failing = root_ + "/m/2";
  EXPECT_EQ(store_->Resolve(ModelRef::Version("m", 2)).status().code(), internal);
  EXPECT_EQ(store_->Resolve(ModelRef::Latest("m")).status().code(), internal);
  EXPECT_EQ(store_->Load(ModelRef::Version("m", 2)).status().code(), internal);
  EXPECT_EQ(store_->ListVersions("m").status().code(), internal);
  EXPECT_EQ(store_->DeleteVersion("m", 2, true).code(), internal);
  EXPECT_EQ(store_->SetLabel("m", "canary", 2).code(), internal);
  absl::StatusOr<StoreSnapshot> snap = store_->Snapshot();
  ASSERT_TRUE(snap.ok()) << snap.status();
  EXPECT_FALSE(snap->models.at("m").versions_read);
  EXPECT_TRUE(snap->models.at("m").labels_read);
  // The other version is still served, and the message names the folder.
  EXPECT_TRUE(store_->Load(ModelRef::Version("m", 1)).ok());
  EXPECT_NE(store_->Load(ModelRef::Version("m", 2)).status().message().find(failing),
            std::string::npos);

  failing = root_ + "/m";
  EXPECT_EQ(store_->Load(ModelRef::Version("m", 1)).status().code(), internal);
  EXPECT_EQ(store_->Load(ModelRef::Label("m", "stable")).status().code(), internal);
  EXPECT_EQ(store_->Labels("m").status().code(), internal);
  EXPECT_EQ(store_->RemoveLabel("m", "stable").code(), internal);
  EXPECT_EQ(store_->ListModels().status().code(), internal);
  EXPECT_EQ(store_->Snapshot().status().code(), internal);

  // Nothing changed meanwhile, and nothing is lost once the fault clears.
  SetStatFaultHookForTesting(nullptr);
  EXPECT_EQ(*store_->Resolve(ModelRef::Latest("m")), 2);
  EXPECT_EQ(*store_->Resolve(ModelRef::Label("m", "stable")), 2);
  EXPECT_EQ(store_->ListVersions("m")->size(), 2u);
}

TEST_F(ModelStoreTest, BadNamesAreRejectedAndNothingLeavesTheRoot) {
  auto m = SmallModel(1);
  const std::string long_name(10000, 'a');
  for (std::string name : {std::string(".."), std::string("../escape"), std::string("a/b"),
                           std::string("/abs"), std::string("Upper"), std::string(""),
                           std::string("a\0b", 3), std::string(".hidden"), std::string("-x"),
                           std::string(64, 'a'), long_name, std::string("sp ace")}) {
    absl::StatusOr<int64_t> v = store_->Publish(name, *m, {});
    EXPECT_EQ(v.status().code(), absl::StatusCode::kInvalidArgument) << name.substr(0, 20);
    EXPECT_EQ(store_->Load(ModelRef::Latest(name)).status().code(),
              absl::StatusCode::kInvalidArgument);
    EXPECT_EQ(store_->SetLabel("ok", name, 1).code(), absl::StatusCode::kInvalidArgument);
  }
  EXPECT_FALSE(PathExists(root_ + "/../escape"));
  EXPECT_TRUE(store_->ListModels()->empty());
  EXPECT_TRUE(ValidateStoreName(std::string(63, 'a'), "model").ok());
  EXPECT_TRUE(ValidateStoreName("a..b", "model").ok());  // no path component
  EXPECT_EQ(store_->SetLabel("x", "latest", 1).code(), absl::StatusCode::kInvalidArgument);
}

TEST_F(ModelStoreTest, LabelsMoveAndGuardDeletes) {
  for (int i = 0; i < 3; ++i) ASSERT_TRUE(store_->Publish("m", *SmallModel(i), {}).ok());
  ASSERT_TRUE(store_->SetLabel("m", "stable", 1).ok());
  ASSERT_TRUE(store_->SetLabel("m", "canary", 3).ok());
  EXPECT_EQ(*store_->Resolve(ModelRef::Label("m", "stable")), 1);
  ASSERT_TRUE(store_->SetLabel("m", "stable", 2).ok());  // move
  EXPECT_EQ(*store_->Resolve(ModelRef::Label("m", "stable")), 2);

  absl::Status refused = store_->DeleteVersion("m", 2, false);
  EXPECT_EQ(refused.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(refused.message().find("stable"), absl::string_view::npos);
  ASSERT_TRUE(store_->DeleteVersion("m", 1, false).ok());
  ASSERT_TRUE(store_->DeleteVersion("m", 2, true).ok());  // force drops 'stable'
  EXPECT_EQ(store_->Labels("m")->count("stable"), 0u);
  EXPECT_EQ(store_->Labels("m")->at("canary"), 3);
  ASSERT_TRUE(store_->RemoveLabel("m", "canary").ok());
  EXPECT_TRUE(store_->Labels("m")->empty());
}

TEST_F(ModelStoreTest, VersionsAreNeverReusedAfterDelete) {
  ASSERT_EQ(*store_->Publish("m", *SmallModel(1), {}), 1);
  ASSERT_EQ(*store_->Publish("m", *SmallModel(2), {}), 2);
  ASSERT_TRUE(store_->DeleteVersion("m", 2, false).ok());
  EXPECT_EQ(*store_->Publish("m", *SmallModel(3), {}), 3);
  ASSERT_TRUE(store_->DeleteVersion("m", 3, false).ok());
  ASSERT_TRUE(store_->DeleteVersion("m", 1, false).ok());
  // Even with every version gone and a fresh handle on the store.
  auto reopened = ModelStore::Open(root_);
  ASSERT_TRUE(reopened.ok());
  EXPECT_EQ(*(*reopened)->Publish("m", *SmallModel(4), {}), 4);
}

// A number is recorded as taken before its version appears, so a publish
// that fails once its folder could have been seen (here: the rename, over a
// stray file named like the next version) never hands the number to other
// bytes later.
TEST_F(ModelStoreTest, ANumberAPublishMayHaveShownIsNeverReused) {
  ASSERT_EQ(*store_->Publish("m", *SmallModel(1), {}), 1);
  const std::string stray = root_ + "/m/2";
  { std::ofstream(stray) << "not a version"; }
  EXPECT_FALSE(store_->Publish("m", *SmallModel(2), {}).ok());
  ASSERT_EQ(::unlink(stray.c_str()), 0);
  EXPECT_EQ(*store_->Publish("m", *SmallModel(3), {}), 3);
}

TEST_F(ModelStoreTest, CorruptVersionIsNeverServed) {
  ASSERT_TRUE(store_->Publish("m", *SmallModel(1), {}).ok());
  const std::string weights = root_ + "/m/1/sae_weights.safetensors";
  std::fstream f(weights, std::ios::in | std::ios::out | std::ios::binary);
  f.seekp(-3, std::ios::end);
  f.put('\x7f');
  f.close();
  absl::StatusOr<LoadedModel> m = store_->Load(ModelRef::Latest("m"));
  EXPECT_EQ(m.status().code(), absl::StatusCode::kDataLoss) << m.status();
}

TEST_F(ModelStoreTest, AFailingWriteLeavesTheStoreAsItWas) {
  ASSERT_TRUE(store_->Publish("m", *SmallModel(1), {}).ok());
  ASSERT_TRUE(store_->SetLabel("m", "stable", 1).ok());
  const StoreSnapshot before = *store_->Snapshot();
  // Fail each file write of a publish in turn: weights, cfg, metadata, state.
  for (const std::string target : {"sae_weights", "cfg.json", "sae_service.json", "store.json"}) {
    SetWriteFaultHookForTesting([target](const std::string& path) {
      if (path.find(target) != std::string::npos) {
        return absl::ResourceExhaustedError("injected: no space left on device");
      }
      return absl::OkStatus();
    });
    absl::StatusOr<int64_t> v = store_->Publish("m", *SmallModel(2), {});
    EXPECT_EQ(v.status().code(), absl::StatusCode::kResourceExhausted) << target;
    if (target == "store.json") {
      EXPECT_EQ(store_->SetLabel("m", "canary", 1).code(), absl::StatusCode::kResourceExhausted);
      EXPECT_FALSE(store_->DeleteVersion("m", 1, true).ok());
    }
    SetWriteFaultHookForTesting(nullptr);
    const StoreSnapshot after = *store_->Snapshot();
    EXPECT_TRUE(DiffSnapshots(before, after).empty()) << target;
    // No temporaries left behind.
    const std::vector<std::string> names = *ListDirectory(root_ + "/m");
    for (const std::string& n : names) EXPECT_EQ(n.find(".tmp-"), std::string::npos) << n;
  }
  EXPECT_EQ(*store_->Publish("m", *SmallModel(3), {}), 2);
}

TEST_F(ModelStoreTest, OpenRemovesLeftoversOfDeadPublishers) {
  ASSERT_TRUE(store_->Publish("m", *SmallModel(1), {}).ok());
  ASSERT_TRUE(MakeDirectory(root_ + "/m/.tmp-dead-1").ok());
  ASSERT_TRUE(WriteFileDurably(root_ + "/m/.tmp-dead-1/cfg.json", {"{"}).ok());
  ASSERT_TRUE(MakeDirectory(root_ + "/m/.deleting-4-x").ok());
  // A live publisher's temporary (its lock is held) must survive.
  ASSERT_TRUE(MakeDirectory(root_ + "/m/.tmp-live-2").ok());
  absl::StatusOr<FileLock> live = FileLock::Acquire(root_ + "/m/.tmp-live-2.lock");
  ASSERT_TRUE(live.ok());
  ASSERT_TRUE(ModelStore::Open(root_).ok());
  EXPECT_FALSE(PathExists(root_ + "/m/.tmp-dead-1"));
  EXPECT_FALSE(PathExists(root_ + "/m/.deleting-4-x"));
  EXPECT_TRUE(PathExists(root_ + "/m/.tmp-live-2"));
  EXPECT_TRUE(store_->Load(ModelRef::Latest("m")).ok());
}

TEST_F(ModelStoreTest, SnapshotsReportChanges) {
  const StoreSnapshot s0 = *store_->Snapshot();
  ASSERT_TRUE(store_->Publish("m", *SmallModel(1), {}).ok());
  ASSERT_TRUE(store_->Publish("m", *SmallModel(2), {}).ok());
  ASSERT_TRUE(store_->SetLabel("m", "stable", 1).ok());
  const StoreSnapshot s1 = *store_->Snapshot();
  std::vector<StoreChange> changes = DiffSnapshots(s0, s1);
  ASSERT_EQ(changes.size(), 3u);
  EXPECT_EQ(changes[0].kind, StoreChange::Kind::kVersionAdded);
  EXPECT_EQ(changes[1].version, 2);
  EXPECT_EQ(changes[2].kind, StoreChange::Kind::kLabelSet);
  ASSERT_TRUE(store_->SetLabel("m", "stable", 2).ok());
  ASSERT_TRUE(store_->DeleteVersion("m", 1, false).ok());
  changes = DiffSnapshots(s1, *store_->Snapshot());
  ASSERT_EQ(changes.size(), 2u);
  EXPECT_EQ(changes[0].kind, StoreChange::Kind::kVersionRemoved);
  EXPECT_EQ(changes[1].kind, StoreChange::Kind::kLabelSet);
  EXPECT_EQ(changes[1].version, 2);
}

TEST(ModelRefTest, ParsesTheShortForms) {
  EXPECT_EQ(ParseModelRef("digits@3")->version, 3);
  EXPECT_EQ(ParseModelRef("digits:stable")->label, "stable");
  EXPECT_EQ(ParseModelRef("digits:latest")->label, "");
  EXPECT_EQ(ParseModelRef("digits")->ToString(), "digits");
  EXPECT_EQ(ParseModelRef("digits@0").status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ParseModelRef("digits@x").status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ParseModelRef("a@1:b").status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ParseModelRef("../x").status().code(), absl::StatusCode::kInvalidArgument);
}

// --- multi-process tests, with the store_publisher helper ---------------

pid_t Spawn(const std::vector<std::string>& args, int* stdout_fd) {
  std::vector<char*> argv;
  for (const std::string& a : args) argv.push_back(const_cast<char*>(a.c_str()));
  argv.push_back(nullptr);
  int pipe_fds[2];
  if (::pipe(pipe_fds) != 0) return -1;
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_adddup2(&actions, pipe_fds[1], 1);
  posix_spawn_file_actions_addclose(&actions, pipe_fds[0]);
  pid_t pid = -1;
  if (posix_spawn(&pid, argv[0], &actions, nullptr, argv.data(), environ) != 0) pid = -1;
  posix_spawn_file_actions_destroy(&actions);
  ::close(pipe_fds[1]);
  *stdout_fd = pipe_fds[0];
  return pid;
}

std::string ReadAll(int fd) {
  std::string out;
  char buf[4096];
  ssize_t n;
  while ((n = ::read(fd, buf, sizeof(buf))) > 0) out.append(buf, static_cast<size_t>(n));
  ::close(fd);
  return out;
}

TEST_F(ModelStoreTest, TwoProcessesPublishingAtOnceGetDistinctVersions) {
  int out_a, out_b;
  const pid_t a = Spawn({SAE_STORE_PUBLISHER, root_, "shared", "50", "1"}, &out_a);
  const pid_t b = Spawn({SAE_STORE_PUBLISHER, root_, "shared", "50", "2"}, &out_b);
  ASSERT_GT(a, 0);
  ASSERT_GT(b, 0);
  const std::string va = ReadAll(out_a), vb = ReadAll(out_b);
  int status_a, status_b;
  ::waitpid(a, &status_a, 0);
  ::waitpid(b, &status_b, 0);
  ASSERT_TRUE(WIFEXITED(status_a) && WEXITSTATUS(status_a) == 0);
  ASSERT_TRUE(WIFEXITED(status_b) && WEXITSTATUS(status_b) == 0);
  std::set<int64_t> seen;
  for (const std::string* text : {&va, &vb}) {
    std::istringstream in(*text);
    int64_t v;
    while (in >> v) EXPECT_TRUE(seen.insert(v).second) << "version " << v << " given twice";
  }
  EXPECT_EQ(seen.size(), 100u);
  absl::StatusOr<std::vector<VersionInfo>> versions = store_->ListVersions("shared");
  ASSERT_EQ(versions->size(), 100u);
  for (const VersionInfo& info : *versions) {
    EXPECT_TRUE(store_->Load(ModelRef::Version("shared", info.version)).ok()) << info.version;
  }
}

TEST_F(ModelStoreTest, KillNineDuringPublishNeverLeavesHalfAVersion) {
  std::mt19937 rng(42);
  std::uniform_int_distribution<int> delay_us(0, 30000);
  int killed_mid_publish = 0;
  for (int round = 0; round < 100; ++round) {
    int out;
    const pid_t pid = Spawn({SAE_STORE_PUBLISHER, root_, "crash", "1000", std::to_string(round)}, &out);
    ASSERT_GT(pid, 0);
    // Kill while it publishes, not while it starts up (which alone can take
    // the whole delay under a sanitizer on a busy machine): wait for its
    // first version, then a random part of the next few publishes.
    char c = 0;
    while (::read(out, &c, 1) == 1 && c != '\n') {
    }
    std::this_thread::sleep_for(std::chrono::microseconds(delay_us(rng)));
    ::kill(pid, SIGKILL);
    int status;
    ::waitpid(pid, &status, 0);
    ::close(out);
    if (WIFSIGNALED(status)) ++killed_mid_publish;
    // After each kill the store opens cleanly and every version is whole.
    absl::StatusOr<std::unique_ptr<ModelStore>> store = ModelStore::Open(root_);
    ASSERT_TRUE(store.ok()) << store.status();
    if (!PathExists(root_ + "/crash")) continue;
    const std::vector<std::string> names = *ListDirectory(root_ + "/crash");
    for (const std::string& n : names) {
      EXPECT_EQ(n.rfind(".tmp-", 0), std::string::npos) << "leftover " << n;
    }
    const std::vector<VersionInfo> versions = *(*store)->ListVersions("crash");
    for (const VersionInfo& info : versions) {
      absl::StatusOr<LoadedModel> m = (*store)->Load(ModelRef::Version("crash", info.version));
      ASSERT_TRUE(m.ok()) << "round " << round << " version " << info.version << ": " << m.status();
    }
  }
  EXPECT_GT(killed_mid_publish, 90);
  EXPECT_GT((*store_->ListVersions("crash")).size(), 0u);
}

}  // namespace
}  // namespace sae
