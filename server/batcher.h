// Dynamic batching: concurrent Encode, Reconstruct and Denoise requests for
// the same model version are merged into one matrix product and split back,
// as TF Serving's and Triton's batchers do. A one-row request costs about
// as much as an 8-row one (reading the weights dominates), so merging turns
// many small calls into few products.
//
// No threads of its own: the call that finds its queue idle leads it. The
// leader waits up to max_queue_delay for company (or until max_batch_rows
// are queued), runs the product for the rows queued so far and hands each
// call its result. Calls that find a leader at work just queue: Submit
// returns at once and the leader completes them, so an asynchronous
// (callback-API) handler never blocks on the queue. With a delay of 0
// batches form from the calls that queue while a product runs. With an
// executor (set_executor), the calling leader computes only the batch that
// holds its own call and hands the rest of the queue to the executor, which
// leads it until it is empty; without one, the calling leader goes on until
// the queue is empty (under steady load, for as long as the load lasts).
//
// A call's deadline and cancellation still hold in the queue: Run returns
// DEADLINE_EXCEEDED or CANCELLED if its rows were not taken yet, Submit's
// caller takes a call back with Cancel, and the leader drops calls whose
// deadline passed. A full queue is RESOURCE_EXHAUSTED. Results are bitwise
// the unbatched ones for merged batches of up to 128 rows (the model's
// packed kernel, core/packed_gemm.h, sums each row on its own); larger
// batches run on sgemm and match within float rounding.
//
// Thread-safe.
#ifndef SAE_SERVER_BATCHER_H_
#define SAE_SERVER_BATCHER_H_

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <utility>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "core/model.h"

namespace sae::server {

struct BatchingOptions {
  bool enabled = true;
  int64_t max_batch_rows = 256;    // rows merged into one product
  int64_t max_queue_delay_us = 0;  // how long a leader waits for company
  // Rows that may wait per model version and operation; beyond:
  // RESOURCE_EXHAUSTED. Calls too large to merge (or all calls, with
  // batching off) are bounded the same way: their rows in progress per model
  // version may not exceed it, except that a call arriving while none is in
  // progress is always admitted.
  int64_t max_queued_rows = 16384;
};

// Parses "name=off" or "name=ROWS:DELAY_US" items, comma-separated, into
// per-model settings on top of `defaults`. INVALID_ARGUMENT naming the item.
absl::StatusOr<std::map<std::string, BatchingOptions>> ParseBatchingOverrides(
    const std::string& text, const BatchingOptions& defaults);

enum class BatchOp { kEncode, kReconstruct, kDenoise };

struct BatchStats {
  int64_t batches = 0;
  int64_t rows = 0;
  int64_t requests = 0;
};

class Batcher {
 public:
  Batcher(BatchingOptions defaults, std::map<std::string, BatchingOptions> per_model);
  ~Batcher();

  // Receives a call's outcome, exactly once, after *out is filled.
  using Done = std::function<void(absl::Status)>;
  // Identifies a queued call, for Cancel. Empty (id 0) when there is nothing
  // left to cancel (the call completed inside Submit). It names its queue
  // by key, not by address: a queue is freed once it is idle and empty.
  struct Ticket {
    const Model* model = nullptr;
    BatchOp op = BatchOp::kEncode;
    uint64_t id = 0;
  };

  // Computes `op` of `model` on `x` into `out` (resized to fit) and calls
  // done(status), exactly once, unless Cancel takes the call back first.
  // `x` and `out` must stay valid until then. `model_name` selects per-model
  // settings. When the call finds its queue idle, this thread leads it (see
  // above) and done has run before Submit returns; errors found up front (a
  // width the model does not take, a full queue) are also reported through
  // done before Submit returns.
  Ticket Submit(const std::string& model_name, const std::shared_ptr<const Model>& model,
                BatchOp op, ConstMatrixRef x, absl::Time deadline, RowMatrix* out, Done done);
  // Takes back a call still waiting in its queue: true when it was (its done
  // will never run), false when it is being computed or completed already.
  bool Cancel(const Ticket& ticket);

  // Whether a call of `rows` rows for `model_name` queues to be merged
  // (batching on for that model and fewer than max_batch_rows rows); other
  // calls are computed on the calling thread, at once.
  bool Merges(const std::string& model_name, int64_t rows) const {
    const BatchingOptions& options = OptionsFor(model_name);
    return options.enabled && rows < options.max_batch_rows;
  }

  // Submit, waiting for the outcome. `cancelled` is polled while waiting.
  absl::Status Run(const std::string& model_name, const std::shared_ptr<const Model>& model,
                   BatchOp op, ConstMatrixRef x, absl::Time deadline,
                   const std::function<bool()>& cancelled, RowMatrix* out);

  BatchStats stats() const;
  // Queues held (one per model version and operation with calls waiting or
  // a leader at work); for tests.
  size_t queues_for_testing() const;
  // Observer of every product run (batch rows, microseconds the oldest
  // request waited); for metrics. Set before serving starts.
  void set_observer(std::function<void(int64_t rows, double queue_us)> observer) {
    observer_ = std::move(observer);
  }
  // Runs a closure on another thread (a ComputePool's Run), so that a
  // caller that leads returns after its own batch; see above. It must run
  // every closure it is given while the batcher lives. Set before serving.
  void set_executor(std::function<void(std::function<void()>)> executor) {
    executor_ = std::move(executor);
  }

 private:
  struct Item;
  struct Queue;
  using QueueKey = std::pair<const Model*, BatchOp>;
  const BatchingOptions& OptionsFor(const std::string& model_name) const;
  // Runs batches until `q` is empty, or, when `hand_off`, until one batch
  // has run and calls still wait: then `q` keeps its leader and *handed is
  // set, for the caller to start LeadElsewhere after releasing mu_. Returns
  // `q` when it ends idle (as TakeIfIdleLocked). Called and returns with mu_
  // held.
  std::unique_ptr<Queue> Lead(Queue* q, const BatchingOptions& options, bool hand_off,
                              bool* handed) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Leads `q` (which has a leader: this) on the executor until it is empty.
  void LeadElsewhere(Queue* q, const BatchingOptions& options) ABSL_LOCKS_EXCLUDED(mu_);
  // Takes `q` out of queues_ if it is idle (no leader) and empty, for the
  // caller to destroy after releasing mu_ (it may hold the last reference
  // to its model version, which may have been deleted or replaced).
  std::unique_ptr<Queue> TakeIfIdleLocked(Queue* q) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  static absl::Status Compute(const Model& model, BatchOp op, ConstMatrixRef x, RowMatrix* out);

  const BatchingOptions defaults_;
  const std::map<std::string, BatchingOptions> per_model_;
  std::function<void(int64_t, double)> observer_;
  std::function<void(std::function<void()>)> executor_;
  mutable absl::Mutex mu_;
  std::map<QueueKey, std::unique_ptr<Queue>> queues_ ABSL_GUARDED_BY(mu_);
  BatchStats stats_ ABSL_GUARDED_BY(mu_);
  uint64_t next_id_ ABSL_GUARDED_BY(mu_) = 1;
  // Rows of unmerged calls being computed, per model version.
  std::map<const Model*, int64_t> direct_rows_ ABSL_GUARDED_BY(mu_);
};

}  // namespace sae::server

#endif  // SAE_SERVER_BATCHER_H_
