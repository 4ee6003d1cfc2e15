// A versioned model store on a local or shared file system.
//
//   <root>/<model>/<version>/    one model folder (model_io.h), versions 1, 2, ...
//   <root>/<model>/store.json    labels ("stable" -> 3) and the next version number
//   <root>/<model>/.lock         flock(2) taken while versions or labels change
//
// Guarantees:
// - Model and label names match [a-z0-9][a-z0-9._-]{0,62}; anything else is
//   INVALID_ARGUMENT and nothing outside the root is ever read or written.
// - Versions are positive, only grow, and are never reused after a delete.
// - Publishing is atomic and durable: the folder is written under a
//   temporary name (.tmp-*), its files and the folder fsynced, then renamed
//   into place and the parent fsynced. A crash leaves the old state or the
//   new version, never half a version. Leftover temporaries of dead
//   publishers are removed by Open.
// - Several processes (server replicas on a shared volume) may use one store
//   at once: version numbers and label changes are serialised by the lock.
// - Load verifies every file's checksum; a corrupt version is DATA_LOSS and
//   is never returned.
//
// Thread-safe: any number of threads may call a ModelStore at once.
#ifndef SAE_CORE_MODEL_STORE_H_
#define SAE_CORE_MODEL_STORE_H_

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "core/model_io.h"

namespace sae {

// OK for a valid model or label name, INVALID_ARGUMENT saying why otherwise.
absl::Status ValidateStoreName(absl::string_view name, absl::string_view what);

// Which version of a model: a number, a label, or the newest.
struct ModelRef {
  std::string name;
  int64_t version = 0;  // > 0: this version
  std::string label;    // non-empty: the version the label points at
  // Neither: the latest version.

  static ModelRef Latest(std::string name) { return {std::move(name), 0, ""}; }
  static ModelRef Version(std::string name, int64_t v) { return {std::move(name), v, ""}; }
  static ModelRef Label(std::string name, std::string l) { return {std::move(name), 0, std::move(l)}; }
  std::string ToString() const;  // "name@3", "name:stable", "name"
};

// Parses "name", "name@3" or "name:label" (the CLI's and API's short form).
absl::StatusOr<ModelRef> ParseModelRef(absl::string_view text);

struct VersionInfo {
  int64_t version = 0;
  std::vector<std::string> labels;  // labels pointing here
  ModelMetadata metadata;           // from sae_service.json (not verified)
  int64_t bytes = 0;                // size of the weights file
};

// The store's state as seen at one moment, for change detection.
struct StoreSnapshot {
  struct ModelState {
    std::vector<int64_t> versions;  // ascending
    std::map<std::string, int64_t> labels;
    // False when reading the model's versions (labels) failed with an I/O
    // error, not an absence: they are then unknown, not empty.
    bool versions_read = true;
    bool labels_read = true;
  };
  std::map<std::string, ModelState> models;
};

struct StoreChange {
  enum class Kind { kVersionAdded, kVersionRemoved, kLabelSet, kLabelRemoved };
  Kind kind;
  std::string model;
  int64_t version = 0;  // the version added/removed, or the label's new target
  std::string label;    // for label changes
};
// What changed between two snapshots, in model, then version/label order.
std::vector<StoreChange> DiffSnapshots(const StoreSnapshot& before, const StoreSnapshot& after);

class ModelStore {
 public:
  // Opens (creating if needed) the store at `root`, removing temporaries
  // left by publishers that died.
  static absl::StatusOr<std::unique_ptr<ModelStore>> Open(const std::string& root);

  const std::string& root() const { return root_; }

  // Publishes `model` as the next version of `name` (creating the model if
  // new) and returns the version number.
  absl::StatusOr<int64_t> Publish(absl::string_view name, const Model& model,
                                  const ModelMetadata& metadata);

  // Loads and verifies a version. NOT_FOUND for an unknown model, version or
  // label, also for a version deleted while it loaded; DATA_LOSS for a
  // corrupt version.
  absl::StatusOr<LoadedModel> Load(const ModelRef& ref) const;
  // The version number `ref` stands for now.
  absl::StatusOr<int64_t> Resolve(const ModelRef& ref) const;

  absl::StatusOr<std::vector<std::string>> ListModels() const;
  absl::StatusOr<std::vector<VersionInfo>> ListVersions(absl::string_view name) const;
  absl::StatusOr<std::map<std::string, int64_t>> Labels(absl::string_view name) const;

  // Deletes a version. FAILED_PRECONDITION while a label points at it,
  // unless `force`, which also removes those labels. The version is gone
  // once its folder is renamed aside; removing the files after that is best
  // effort (a file still open on NFS can keep the folder), and what is left
  // is removed by the next Open.
  absl::Status DeleteVersion(absl::string_view name, int64_t version, bool force);

  // Points `label` at an existing version (moving it if it exists).
  absl::Status SetLabel(absl::string_view name, absl::string_view label, int64_t version);
  // NOT_FOUND if the label does not exist.
  absl::Status RemoveLabel(absl::string_view name, absl::string_view label);

  absl::StatusOr<StoreSnapshot> Snapshot() const;

  // For tests: called on the loading thread when Load has read a version's
  // files, before it checks that the version is still there. Set before
  // the store is in use.
  void set_after_read_for_testing(std::function<void(const std::string& name, int64_t version)> hook) {
    after_read_ = std::move(hook);
  }

 private:
  explicit ModelStore(std::string root) : root_(std::move(root)) {}
  std::string ModelDir(absl::string_view name) const;
  absl::Status CleanLeftovers(const std::string& model_dir) const;

  const std::string root_;
  std::function<void(const std::string&, int64_t)> after_read_;
};

}  // namespace sae

#endif  // SAE_CORE_MODEL_STORE_H_
