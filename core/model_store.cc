#include "core/model_store.h"

#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <random>
#include <set>

#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "core/file_util.h"
#include "core/mapped_file.h"
#include "nlohmann/json.hpp"

namespace sae {
namespace {

using Json = nlohmann::json;

constexpr char kStateFile[] = "store.json";
constexpr char kLockFile[] = ".lock";
constexpr char kTmpPrefix[] = ".tmp-";
constexpr char kDeletingPrefix[] = ".deleting-";
constexpr size_t kMaxStateBytes = 1 << 20;
constexpr int64_t kMaxVersion = 999999999999LL;

// store.json: labels and the next version number. Written atomically under
// the model's lock; read without it (a rename makes every read consistent).
struct ModelState {
  int64_t next_version = 1;
  std::map<std::string, int64_t> labels;
};

absl::StatusOr<ModelState> ReadState(const std::string& model_dir) {
  ModelState state;
  const std::string path = model_dir + "/" + kStateFile;
  absl::StatusOr<std::string> text = ReadSmallFile(path, kMaxStateBytes);
  if (absl::IsNotFound(text.status())) return state;
  if (!text.ok()) return text.status();
  Json j = Json::parse(*text, nullptr, false);
  if (j.is_discarded() || !j.is_object()) {
    return absl::DataLossError(absl::StrCat(path, ": not a JSON object"));
  }
  if (auto it = j.find("next_version"); it != j.end() && it->is_number_integer()) {
    state.next_version = std::max<int64_t>(1, it->get<int64_t>());
  }
  if (auto it = j.find("labels"); it != j.end() && it->is_object()) {
    for (auto l = it->begin(); l != it->end(); ++l) {
      if (l.value().is_number_integer()) state.labels[l.key()] = l.value().get<int64_t>();
    }
  }
  return state;
}

absl::Status WriteState(const std::string& model_dir, const ModelState& state) {
  Json j = {{"next_version", state.next_version}, {"labels", state.labels}};
  return ReplaceFileAtomically(model_dir + "/" + kStateFile, j.dump(2) + "\n");
}

// "17" -> 17; anything that is not a canonical positive number -> nullopt.
std::optional<int64_t> ParseVersionName(const std::string& name) {
  if (name.empty() || name.size() > 12 || name[0] == '0') return std::nullopt;
  for (char c : name) {
    if (!absl::ascii_isdigit(c)) return std::nullopt;
  }
  int64_t v = 0;
  if (!absl::SimpleAtoi(name, &v)) return std::nullopt;
  return v;
}

absl::Status UnknownModel(absl::string_view name) {
  return absl::NotFoundError(absl::StrCat("unknown model '", name, "'"));
}

absl::Status NoSuchVersion(absl::string_view name, int64_t version) {
  return absl::NotFoundError(absl::StrCat("model '", name, "' has no version ", version));
}

// OK when model `name` has a folder at `model_dir`; NOT_FOUND when it has
// none; IsFolder's error when the folder cannot be examined (a transient
// I/O error is not the model's removal).
absl::Status CheckModelFolder(const std::string& model_dir, absl::string_view name) {
  absl::StatusOr<bool> folder = IsFolder(model_dir);
  if (!folder.ok()) return folder.status();
  return *folder ? absl::OkStatus() : UnknownModel(name);
}

// The same for version `version` of model `name`.
absl::Status CheckVersionFolder(const std::string& model_dir, absl::string_view name,
                                int64_t version) {
  if (version < 1) return NoSuchVersion(name, version);
  absl::StatusOr<bool> folder = IsFolder(absl::StrCat(model_dir, "/", version));
  if (!folder.ok()) return folder.status();
  return *folder ? absl::OkStatus() : NoSuchVersion(name, version);
}

absl::StatusOr<std::vector<int64_t>> ListVersionNumbers(const std::string& model_dir) {
  absl::StatusOr<std::vector<std::string>> names = ListDirectory(model_dir);
  if (!names.ok()) return names.status();
  std::vector<int64_t> versions;
  for (const std::string& n : *names) {
    std::optional<int64_t> v = ParseVersionName(n);
    if (!v) continue;
    absl::StatusOr<bool> dir = IsFolder(model_dir + "/" + n);
    if (!dir.ok()) return dir.status();
    if (*dir) versions.push_back(*v);
  }
  std::sort(versions.begin(), versions.end());
  return versions;
}

std::string RandomSuffix() {
  static thread_local std::mt19937_64 rng(std::random_device{}() ^
                                          (static_cast<uint64_t>(::getpid()) << 32));
  return absl::StrFormat("%d-%016x", ::getpid(), rng());
}

}  // namespace

absl::Status ValidateStoreName(absl::string_view name, absl::string_view what) {
  auto bad = [&](absl::string_view why) {
    return absl::InvalidArgumentError(absl::StrCat(
        "invalid ", what, " name '", absl::CHexEscape(name.substr(0, 80)),
        name.size() > 80 ? "..." : "", "': ", why,
        "; expected 1-63 characters of [a-z0-9._-] starting with a letter or digit"));
  };
  if (name.empty()) return bad("empty");
  if (name.size() > 63) return bad(absl::StrCat("too long (", name.size(), " characters)"));
  const char first = name[0];
  if (!(absl::ascii_islower(first) || absl::ascii_isdigit(first))) {
    return bad("must start with a lowercase letter or digit");
  }
  for (char c : name) {
    if (!(absl::ascii_islower(c) || absl::ascii_isdigit(c) || c == '.' || c == '_' || c == '-')) {
      return bad("holds a character outside [a-z0-9._-]");
    }
  }
  return absl::OkStatus();
}

std::string ModelRef::ToString() const {
  if (version > 0) return absl::StrCat(name, "@", version);
  if (!label.empty()) return absl::StrCat(name, ":", label);
  return name;
}

absl::StatusOr<ModelRef> ParseModelRef(absl::string_view text) {
  ModelRef ref;
  const size_t at = text.find('@');
  const size_t colon = text.find(':');
  if (at != absl::string_view::npos && colon != absl::string_view::npos) {
    return absl::InvalidArgumentError(absl::StrCat(
        "model reference '", text, "' has both '@' and ':'; use name, name@VERSION or name:LABEL"));
  }
  if (at != absl::string_view::npos) {
    ref.name = std::string(text.substr(0, at));
    int64_t v = 0;
    if (!absl::SimpleAtoi(text.substr(at + 1), &v) || v < 1) {
      return absl::InvalidArgumentError(absl::StrCat(
          "model reference '", text, "': the version after '@' must be a positive integer"));
    }
    ref.version = v;
  } else if (colon != absl::string_view::npos) {
    ref.name = std::string(text.substr(0, colon));
    ref.label = std::string(text.substr(colon + 1));
    if (ref.label == "latest") ref.label.clear();
    if (!ref.label.empty()) {
      if (absl::Status s = ValidateStoreName(ref.label, "label"); !s.ok()) return s;
    }
  } else {
    ref.name = std::string(text);
  }
  if (absl::Status s = ValidateStoreName(ref.name, "model"); !s.ok()) return s;
  return ref;
}

std::vector<StoreChange> DiffSnapshots(const StoreSnapshot& before, const StoreSnapshot& after) {
  std::vector<StoreChange> out;
  std::set<std::string> names;
  for (const auto& [n, _] : before.models) names.insert(n);
  for (const auto& [n, _] : after.models) names.insert(n);
  static const StoreSnapshot::ModelState kEmpty;
  for (const std::string& name : names) {
    const auto b = before.models.find(name);
    const auto a = after.models.find(name);
    const StoreSnapshot::ModelState& old_state = b == before.models.end() ? kEmpty : b->second;
    const StoreSnapshot::ModelState& new_state = a == after.models.end() ? kEmpty : a->second;
    std::vector<int64_t> added, removed;
    std::set_difference(new_state.versions.begin(), new_state.versions.end(),
                        old_state.versions.begin(), old_state.versions.end(),
                        std::back_inserter(added));
    std::set_difference(old_state.versions.begin(), old_state.versions.end(),
                        new_state.versions.begin(), new_state.versions.end(),
                        std::back_inserter(removed));
    for (int64_t v : added) out.push_back({StoreChange::Kind::kVersionAdded, name, v, ""});
    for (int64_t v : removed) out.push_back({StoreChange::Kind::kVersionRemoved, name, v, ""});
    for (const auto& [label, v] : new_state.labels) {
      auto it = old_state.labels.find(label);
      if (it == old_state.labels.end() || it->second != v) {
        out.push_back({StoreChange::Kind::kLabelSet, name, v, label});
      }
    }
    for (const auto& [label, v] : old_state.labels) {
      if (!new_state.labels.count(label)) {
        out.push_back({StoreChange::Kind::kLabelRemoved, name, v, label});
      }
    }
  }
  return out;
}

absl::StatusOr<std::unique_ptr<ModelStore>> ModelStore::Open(const std::string& root_in) {
  if (root_in.empty()) return absl::InvalidArgumentError("the store root is empty");
  std::string root = root_in;
  while (root.size() > 1 && root.back() == '/') root.pop_back();
  // Create the root and its parents, as mkdir -p does.
  for (size_t pos = root.find('/', 1); ; pos = root.find('/', pos + 1)) {
    const std::string prefix = pos == std::string::npos ? root : root.substr(0, pos);
    if (absl::Status s = MakeDirectory(prefix); !s.ok()) return s;
    if (pos == std::string::npos) break;
  }
  absl::StatusOr<bool> root_is_folder = IsFolder(root);
  if (!root_is_folder.ok()) return root_is_folder.status();
  if (!*root_is_folder) {
    return absl::FailedPreconditionError(absl::StrCat("store root '", root, "' is not a folder"));
  }
  std::unique_ptr<ModelStore> store(new ModelStore(root));
  absl::StatusOr<std::vector<std::string>> names = ListDirectory(root);
  if (!names.ok()) return names.status();
  for (const std::string& name : *names) {
    // Best effort, as the cleaning itself: an entry that cannot be examined
    // now is left for the next start.
    if (!ValidateStoreName(name, "model").ok() || !IsFolder(root + "/" + name).value_or(false)) {
      continue;
    }
    if (absl::Status s = store->CleanLeftovers(root + "/" + name); !s.ok()) return s;
  }
  return store;
}

absl::Status ModelStore::CleanLeftovers(const std::string& model_dir) const {
  absl::StatusOr<std::vector<std::string>> names = ListDirectory(model_dir);
  if (!names.ok()) return names.status();
  for (const std::string& n : *names) {
    const std::string path = model_dir + "/" + n;
    if (absl::StartsWith(n, kDeletingPrefix)) {
      // Best effort, as in DeleteVersion: a file another replica still has
      // open (NFS) can keep it a while, and must not stop this one opening.
      RemoveTree(path).IgnoreError();
    } else if (absl::StartsWith(n, kTmpPrefix) && !absl::EndsWith(n, ".lock")) {
      // A publisher holds <tmp>.lock while it writes; a lock we can take
      // belongs to a publisher that died.
      absl::StatusOr<FileLock> lock = FileLock::TryAcquire(path + ".lock");
      if (absl::IsUnavailable(lock.status())) continue;
      if (!lock.ok()) return lock.status();
      if (absl::Status s = RemoveTree(path); !s.ok()) return s;
      ::unlink((path + ".lock").c_str());
    } else if (absl::StartsWith(n, kTmpPrefix) && absl::EndsWith(n, ".lock")) {
      const std::string dir = path.substr(0, path.size() - 5);
      if (PathExists(dir)) continue;  // handled with its folder
      absl::StatusOr<FileLock> lock = FileLock::TryAcquire(path);
      if (lock.ok()) ::unlink(path.c_str());
    } else if (absl::StartsWith(n, absl::StrCat(kStateFile, ".tmp-"))) {
      absl::StatusOr<FileLock> lock = FileLock::Acquire(model_dir + "/" + kLockFile);
      if (!lock.ok()) return lock.status();
      ::unlink(path.c_str());
    }
  }
  return absl::OkStatus();
}

std::string ModelStore::ModelDir(absl::string_view name) const {
  return absl::StrCat(root_, "/", name);
}

absl::StatusOr<int64_t> ModelStore::Publish(absl::string_view name, const Model& model,
                                            const ModelMetadata& metadata) {
  if (absl::Status s = ValidateStoreName(name, "model"); !s.ok()) return s;
  const std::string model_dir = ModelDir(name);
  if (absl::Status s = MakeDirectory(model_dir); !s.ok()) return s;
  const std::string tmp = absl::StrCat(model_dir, "/", kTmpPrefix, RandomSuffix());
  absl::StatusOr<FileLock> tmp_lock = FileLock::Acquire(tmp + ".lock");
  if (!tmp_lock.ok()) return tmp_lock.status();
  auto discard = [&](absl::Status why) {
    RemoveTree(tmp).IgnoreError();
    ::unlink((tmp + ".lock").c_str());
    return why;
  };
  if (absl::Status s = MakeDirectory(tmp); !s.ok()) return discard(s);
  if (absl::Status s = SaveModelFolder(model, metadata, tmp); !s.ok()) return discard(s);
  if (absl::Status s = FsyncDirectory(tmp); !s.ok()) return discard(s);

  absl::StatusOr<FileLock> lock = FileLock::Acquire(model_dir + "/" + kLockFile);
  if (!lock.ok()) return discard(lock.status());
  absl::StatusOr<ModelState> state = ReadState(model_dir);
  if (!state.ok()) return discard(state.status());
  absl::StatusOr<std::vector<int64_t>> versions = ListVersionNumbers(model_dir);
  if (!versions.ok()) return discard(versions.status());
  // A model's first version: its folder's entry in the root must be as
  // durable as the version (whoever created the folder).
  if (versions->empty()) {
    if (absl::Status s = FsyncDirectory(root_); !s.ok()) return discard(s);
  }
  int64_t version = std::max(state->next_version, versions->empty() ? 1 : versions->back() + 1);
  // The number is recorded as taken before the version appears: a version
  // that was visible, even for a moment before a failure undid it, may have
  // been loaded by a replica, so its number must never name other bytes.
  // A failed write of store.json leaves the store as it was; a failed
  // rename leaves it with the number skipped.
  ModelState next = *state;
  while (true) {
    if (version > kMaxVersion) return discard(absl::ResourceExhaustedError("version numbers exhausted"));
    if (next.next_version != version + 1) {
      next.next_version = version + 1;
      if (absl::Status s = WriteState(model_dir, next); !s.ok()) return discard(s);
    }
    const std::string target = absl::StrCat(model_dir, "/", version);
    if (::rename(tmp.c_str(), target.c_str()) == 0) break;
    if (errno != EEXIST && errno != ENOTEMPTY) {
      absl::Status failed = ErrnoToStatus(errno, "cannot publish into", target);
      // ENOTDIR (a file in the way) would read as NOT_FOUND: not about the
      // caller's request.
      if (absl::IsNotFound(failed)) failed = absl::InternalError(failed.message());
      return discard(failed);
    }
    ++version;  // taken by a writer that does not use the lock
  }
  const std::string target = absl::StrCat(model_dir, "/", version);
  if (absl::Status s = FsyncDirectory(model_dir); !s.ok()) {
    // Undo; the number stays used (a gap in the numbers is harmless).
    if (::rename(target.c_str(), tmp.c_str()) != 0) RemoveTree(target).IgnoreError();
    FsyncDirectory(model_dir).IgnoreError();
    return discard(s);
  }
  ::unlink((tmp + ".lock").c_str());
  return version;
}

absl::StatusOr<int64_t> ModelStore::Resolve(const ModelRef& ref) const {
  if (absl::Status s = ValidateStoreName(ref.name, "model"); !s.ok()) return s;
  const std::string model_dir = ModelDir(ref.name);
  if (absl::Status s = CheckModelFolder(model_dir, ref.name); !s.ok()) return s;
  if (ref.version > 0) {
    if (absl::Status s = CheckVersionFolder(model_dir, ref.name, ref.version); !s.ok()) return s;
    return ref.version;
  }
  if (!ref.label.empty()) {
    if (absl::Status s = ValidateStoreName(ref.label, "label"); !s.ok()) return s;
    absl::StatusOr<ModelState> state = ReadState(model_dir);
    if (!state.ok()) return state.status();
    auto it = state->labels.find(ref.label);
    if (it == state->labels.end()) {
      return absl::NotFoundError(absl::StrCat("model '", ref.name, "' has no label '", ref.label, "'"));
    }
    return it->second;
  }
  absl::StatusOr<std::vector<int64_t>> versions = ListVersionNumbers(model_dir);
  if (!versions.ok()) return versions.status();
  if (versions->empty()) {
    return absl::NotFoundError(absl::StrCat("model '", ref.name, "' has no versions"));
  }
  return versions->back();
}

absl::StatusOr<LoadedModel> ModelStore::Load(const ModelRef& ref) const {
  absl::StatusOr<int64_t> version = Resolve(ref);
  if (!version.ok()) return version.status();
  const std::string model_dir = ModelDir(ref.name);
  if (absl::Status s = CheckVersionFolder(model_dir, ref.name, *version); !s.ok()) return s;
  absl::StatusOr<LoadedModel> loaded = LoadModelFolder(absl::StrCat(model_dir, "/", *version));
  if (after_read_) after_read_(ref.name, *version);
  // A version deleted while it loaded (its folder renamed away) reads as a
  // missing file, which in a version that exists means corruption: tell
  // the two apart.
  if (absl::IsDataLoss(loaded.status())) {
    if (absl::Status s = CheckVersionFolder(model_dir, ref.name, *version); !s.ok()) return s;
  }
  return loaded;
}

absl::StatusOr<std::vector<std::string>> ModelStore::ListModels() const {
  absl::StatusOr<std::vector<std::string>> names = ListDirectory(root_);
  if (!names.ok()) return names.status();
  std::vector<std::string> out;
  for (const std::string& n : *names) {
    if (!ValidateStoreName(n, "model").ok()) continue;
    absl::StatusOr<bool> dir = IsFolder(root_ + "/" + n);
    if (!dir.ok()) return dir.status();
    if (*dir) out.push_back(n);
  }
  std::sort(out.begin(), out.end());
  return out;
}

absl::StatusOr<std::map<std::string, int64_t>> ModelStore::Labels(absl::string_view name) const {
  if (absl::Status s = ValidateStoreName(name, "model"); !s.ok()) return s;
  if (absl::Status s = CheckModelFolder(ModelDir(name), name); !s.ok()) return s;
  absl::StatusOr<ModelState> state = ReadState(ModelDir(name));
  if (!state.ok()) return state.status();
  return state->labels;
}

absl::StatusOr<std::vector<VersionInfo>> ModelStore::ListVersions(absl::string_view name) const {
  absl::StatusOr<std::map<std::string, int64_t>> labels = Labels(name);
  if (!labels.ok()) return labels.status();
  const std::string model_dir = ModelDir(name);
  absl::StatusOr<std::vector<int64_t>> versions = ListVersionNumbers(model_dir);
  if (!versions.ok()) return versions.status();
  std::vector<VersionInfo> out;
  for (int64_t v : *versions) {
    VersionInfo info;
    info.version = v;
    for (const auto& [label, target] : *labels) {
      if (target == v) info.labels.push_back(label);
    }
    const std::string dir = absl::StrCat(model_dir, "/", v);
    absl::StatusOr<ModelMetadata> meta = ReadModelMetadata(dir);
    if (meta.ok()) info.metadata = std::move(*meta);
    struct stat st;
    if (::stat((dir + "/" + kWeightsFileName).c_str(), &st) == 0) info.bytes = st.st_size;
    out.push_back(std::move(info));
  }
  return out;
}

absl::Status ModelStore::DeleteVersion(absl::string_view name, int64_t version, bool force) {
  if (absl::Status s = ValidateStoreName(name, "model"); !s.ok()) return s;
  const std::string model_dir = ModelDir(name);
  if (absl::Status s = CheckModelFolder(model_dir, name); !s.ok()) return s;
  std::string doomed;
  {
    absl::StatusOr<FileLock> lock = FileLock::Acquire(model_dir + "/" + kLockFile);
    if (!lock.ok()) return lock.status();
    if (absl::Status s = CheckVersionFolder(model_dir, name, version); !s.ok()) return s;
    const std::string dir = absl::StrCat(model_dir, "/", version);
    absl::StatusOr<ModelState> state = ReadState(model_dir);
    if (!state.ok()) return state.status();
    std::vector<std::string> pointing;
    for (const auto& [label, v] : state->labels) {
      if (v == version) pointing.push_back(label);
    }
    if (!pointing.empty() && !force) {
      return absl::FailedPreconditionError(absl::StrCat(
          "version ", version, " of '", name, "' is labelled '", pointing.front(),
          "'; move or remove the label first, or delete with force"));
    }
    ModelState next = *state;
    for (const std::string& label : pointing) next.labels.erase(label);
    next.next_version = std::max(next.next_version, version + 1);
    // Write the state first: if this fails nothing has changed.
    if (absl::Status s = WriteState(model_dir, next); !s.ok()) return s;
    doomed = absl::StrCat(model_dir, "/", kDeletingPrefix, version, "-", RandomSuffix());
    if (::rename(dir.c_str(), doomed.c_str()) != 0) {
      const int e = errno;
      WriteState(model_dir, *state).IgnoreError();
      return ErrnoToStatus(e, "cannot delete", dir);
    }
    if (absl::Status s = FsyncDirectory(model_dir); !s.ok()) return s;
  }
  RemoveTree(doomed).IgnoreError();  // the delete is done; see the header
  return absl::OkStatus();
}

absl::Status ModelStore::SetLabel(absl::string_view name, absl::string_view label, int64_t version) {
  if (absl::Status s = ValidateStoreName(name, "model"); !s.ok()) return s;
  if (absl::Status s = ValidateStoreName(label, "label"); !s.ok()) return s;
  if (label == "latest") {
    return absl::InvalidArgumentError("'latest' is reserved: it always means the newest version");
  }
  const std::string model_dir = ModelDir(name);
  if (absl::Status s = CheckModelFolder(model_dir, name); !s.ok()) return s;
  absl::StatusOr<FileLock> lock = FileLock::Acquire(model_dir + "/" + kLockFile);
  if (!lock.ok()) return lock.status();
  if (absl::Status s = CheckVersionFolder(model_dir, name, version); !s.ok()) return s;
  absl::StatusOr<ModelState> state = ReadState(model_dir);
  if (!state.ok()) return state.status();
  state->labels[std::string(label)] = version;
  return WriteState(model_dir, *state);
}

absl::Status ModelStore::RemoveLabel(absl::string_view name, absl::string_view label) {
  if (absl::Status s = ValidateStoreName(name, "model"); !s.ok()) return s;
  if (absl::Status s = ValidateStoreName(label, "label"); !s.ok()) return s;
  const std::string model_dir = ModelDir(name);
  if (absl::Status s = CheckModelFolder(model_dir, name); !s.ok()) return s;
  absl::StatusOr<FileLock> lock = FileLock::Acquire(model_dir + "/" + kLockFile);
  if (!lock.ok()) return lock.status();
  absl::StatusOr<ModelState> state = ReadState(model_dir);
  if (!state.ok()) return state.status();
  if (state->labels.erase(std::string(label)) == 0) {
    return absl::NotFoundError(absl::StrCat("model '", name, "' has no label '", label, "'"));
  }
  return WriteState(model_dir, *state);
}

absl::StatusOr<StoreSnapshot> ModelStore::Snapshot() const {
  absl::StatusOr<std::vector<std::string>> models = ListModels();
  if (!models.ok()) return models.status();
  StoreSnapshot snap;
  for (const std::string& name : *models) {
    StoreSnapshot::ModelState& m = snap.models[name];
    absl::StatusOr<std::vector<int64_t>> versions = ListVersionNumbers(ModelDir(name));
    if (versions.ok()) m.versions = std::move(*versions);
    absl::StatusOr<ModelState> state = ReadState(ModelDir(name));
    if (state.ok()) m.labels = std::move(state->labels);
    // A model folder removed meanwhile is simply empty.
    m.versions_read = versions.ok() || absl::IsNotFound(versions.status());
    m.labels_read = state.ok() || absl::IsNotFound(state.status());
  }
  return snap;
}

}  // namespace sae
