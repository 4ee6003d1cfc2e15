#include "server/batcher.h"

#include <deque>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"

namespace sae::server {

struct Batcher::Item {
  ConstMatrixMap x;
  RowMatrix* out;
  absl::Status status;
  absl::Time enqueued;
  bool taken = false;
  bool done = false;
  Item(ConstMatrixRef rows, RowMatrix* o)
      : x(rows.data(), rows.rows(), rows.cols(), Eigen::OuterStride<>(rows.outerStride())), out(o) {}
};

struct Batcher::Queue {
  std::shared_ptr<const Model> model;  // keeps the version alive while queued
  BatchOp op;
  std::deque<Item*> items;
  int64_t rows = 0;
  bool leader_active = false;
};

absl::StatusOr<std::map<std::string, BatchingOptions>> ParseBatchingOverrides(
    const std::string& text, const BatchingOptions& defaults) {
  std::map<std::string, BatchingOptions> out;
  if (text.empty()) return out;
  for (absl::string_view item : absl::StrSplit(text, ',')) {
    std::vector<std::string> kv = absl::StrSplit(item, '=');
    auto bad = [&] {
      return absl::InvalidArgumentError(absl::StrCat(
          "batching override '", item, "': expected NAME=off or NAME=MAX_ROWS:DELAY_US"));
    };
    if (kv.size() != 2 || kv[0].empty()) return bad();
    BatchingOptions o = defaults;
    if (kv[1] == "off") {
      o.enabled = false;
    } else {
      std::vector<std::string> parts = absl::StrSplit(kv[1], ':');
      if (parts.size() != 2 || !absl::SimpleAtoi(parts[0], &o.max_batch_rows) ||
          !absl::SimpleAtoi(parts[1], &o.max_queue_delay_us) || o.max_batch_rows < 1 ||
          o.max_queue_delay_us < 0) {
        return bad();
      }
      o.enabled = true;
    }
    out[kv[0]] = o;
  }
  return out;
}

Batcher::Batcher(BatchingOptions defaults, std::map<std::string, BatchingOptions> per_model)
    : defaults_(defaults), per_model_(std::move(per_model)) {}

Batcher::~Batcher() = default;

const BatchingOptions& Batcher::OptionsFor(const std::string& model_name) const {
  auto it = per_model_.find(model_name);
  return it == per_model_.end() ? defaults_ : it->second;
}

BatchStats Batcher::stats() const {
  absl::MutexLock lock(&mu_);
  return stats_;
}

absl::Status Batcher::Compute(const Model& model, BatchOp op, ConstMatrixRef x, RowMatrix* out) {
  const int64_t cols = op == BatchOp::kEncode ? model.d_hidden() : model.d_in();
  if (out->rows() != x.rows() || out->cols() != cols) out->resize(x.rows(), cols);
  switch (op) {
    case BatchOp::kEncode:
      return model.Encode(x, *out);
    case BatchOp::kReconstruct:
      return model.Reconstruct(x, *out);
    case BatchOp::kDenoise:
      return model.Denoise(x, *out);
  }
  return absl::InternalError("unknown batch operation");
}

absl::Status Batcher::Run(const std::string& model_name, const std::shared_ptr<const Model>& model,
                          BatchOp op, ConstMatrixRef x, absl::Time deadline,
                          const std::function<bool()>& cancelled, RowMatrix* out) {
  const BatchingOptions& options = OptionsFor(model_name);
  if (x.cols() != model->d_in()) {
    return absl::InvalidArgumentError(absl::StrCat("input has ", x.cols(),
                                                   " columns, the model expects ", model->d_in()));
  }
  if (!options.enabled || x.rows() >= options.max_batch_rows) {
    {
      absl::MutexLock lock(&mu_);
      int64_t& in_progress = direct_rows_[model.get()];
      if (in_progress > 0 && in_progress + x.rows() > options.max_queued_rows) {
        return absl::ResourceExhaustedError(absl::StrCat(
            "model '", model_name, "' is full: ", in_progress, " rows in progress, limit ",
            options.max_queued_rows, "; retry with backoff"));
      }
      in_progress += x.rows();
      ++stats_.batches;
      ++stats_.requests;
      stats_.rows += x.rows();
    }
    if (observer_) observer_(x.rows(), 0.0);
    absl::Status status = Compute(*model, op, x, out);
    absl::MutexLock lock(&mu_);
    auto it = direct_rows_.find(model.get());
    it->second -= x.rows();
    if (it->second == 0) direct_rows_.erase(it);
    return status;
  }
  Item item(x, out);
  absl::MutexLock lock(&mu_);
  std::unique_ptr<Queue>& slot = queues_[{model.get(), op}];
  if (slot == nullptr) {
    slot = std::make_unique<Queue>();
    slot->op = op;
  }
  Queue* q = slot.get();
  if (q->rows + x.rows() > options.max_queued_rows) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "model '", model_name, "' is full: its batching queue holds ", q->rows,
        " rows, limit ", options.max_queued_rows, "; retry with backoff"));
  }
  q->model = model;
  item.enqueued = absl::Now();
  q->items.push_back(&item);
  q->rows += x.rows();
  ++stats_.requests;
  while (!item.done) {
    if (!q->leader_active) {
      q->leader_active = true;
      Lead(q, options, &item);
      continue;  // item.done is set now
    }
    // Follower: wait for the result, or for leadership, in short slices so
    // that deadline and cancellation are noticed.
    const auto ready = [&item, q]() ABSL_SHARED_LOCKS_REQUIRED(mu_) {
      return item.done || !q->leader_active;
    };
    mu_.AwaitWithDeadline(absl::Condition(&ready),
                          std::min(deadline, absl::Now() + absl::Milliseconds(2)));
    if (item.done || item.taken) continue;
    const bool expired = absl::Now() >= deadline;
    if (expired || (cancelled && cancelled())) {
      for (auto it = q->items.begin(); it != q->items.end(); ++it) {
        if (*it == &item) {
          q->items.erase(it);
          break;
        }
      }
      q->rows -= x.rows();
      if (q->items.empty() && !q->leader_active) q->model.reset();
      return expired ? absl::DeadlineExceededError("the deadline passed while queued for batching")
                     : absl::CancelledError("the call was cancelled while queued for batching");
    }
  }
  return item.status;
}

void Batcher::Lead(Queue* q, const BatchingOptions& options, Item* own) {
  // Runs batches until this leader's own item is done, then passes
  // leadership to the next waiting request.
  while (!own->done) {
    if (options.max_queue_delay_us > 0 && q->rows < options.max_batch_rows) {
      const auto full = [q, &options]() ABSL_SHARED_LOCKS_REQUIRED(mu_) {
        return q->rows >= options.max_batch_rows;
      };
      mu_.AwaitWithTimeout(absl::Condition(&full),
                           absl::Microseconds(options.max_queue_delay_us));
    }
    std::vector<Item*> batch;
    int64_t rows = 0;
    while (!q->items.empty() &&
           (batch.empty() || rows + q->items.front()->x.rows() <= options.max_batch_rows)) {
      Item* it = q->items.front();
      q->items.pop_front();
      it->taken = true;
      rows += it->x.rows();
      batch.push_back(it);
    }
    q->rows -= rows;
    if (batch.empty()) break;  // own item left the queue (cannot happen: it is taken here)
    const double waited_us = absl::ToDoubleMicroseconds(absl::Now() - batch.front()->enqueued);
    ++stats_.batches;
    stats_.rows += rows;
    std::shared_ptr<const Model> model = q->model;
    mu_.Unlock();
    if (batch.size() == 1) {
      batch[0]->status = Compute(*model, q->op, batch[0]->x, batch[0]->out);
    } else {
      RowMatrix merged(rows, model->d_in());
      int64_t r = 0;
      for (Item* it : batch) {
        merged.middleRows(r, it->x.rows()) = it->x;
        r += it->x.rows();
      }
      RowMatrix result;
      absl::Status s = Compute(*model, q->op, merged, &result);
      r = 0;
      for (Item* it : batch) {
        it->status = s;
        if (s.ok()) *it->out = result.middleRows(r, it->x.rows());
        r += it->x.rows();
      }
    }
    if (observer_) observer_(rows, waited_us);
    mu_.Lock();
    for (Item* it : batch) it->done = true;
  }
  q->leader_active = false;
  // An idle queue must not keep its model version alive (it may have been
  // deleted or replaced); the next request sets it again.
  if (q->items.empty()) q->model.reset();
}

}  // namespace sae::server
