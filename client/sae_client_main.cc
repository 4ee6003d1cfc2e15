// sae_client: the command-line client of the sparse autoencoder service.
// Run without arguments (or with --help) for the commands.
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <random>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "client/png_grid.h"
#include "client/sae_client.h"
#include "core/dataset_io.h"
#include "core/file_util.h"
#include "core/flag_util.h"
#include "core/metrics.h"

ABSL_FLAG(std::string, server, "localhost:50051", "address of sae_server (host:port)");
ABSL_FLAG(int, timeout_s, 60, "deadline of each call in seconds");
// Security (docs/security.md).
ABSL_FLAG(bool, tls, false, "use TLS, trusting the system's CAs (implied by --tls-ca/--tls-cert)");
ABSL_FLAG(std::string, tls_ca, "", "PEM CA bundle that signs the server's certificate");
ABSL_FLAG(std::string, tls_cert, "", "PEM client certificate, for servers that require one");
ABSL_FLAG(std::string, tls_key, "", "PEM private key of --tls-cert");
ABSL_FLAG(std::string, token_file, "", "file holding the bearer token sent with every call");
// Data selection.
ABSL_FLAG(std::string, data, "", "train: input file (.npy, .csv or .f32)");
ABSL_FLAG(std::string, input, "", "encode/decode/reconstruct/denoise: input file");
ABSL_FLAG(std::string, output, "", "encode/decode/reconstruct/denoise: output file (.npy or .csv)");
ABSL_FLAG(std::string, format, "auto", "input format: auto (by extension), npy, csv or f32");
ABSL_FLAG(int64_t, columns, 0, "values per row for f32 input");
ABSL_FLAG(std::string, rows, "", "use only rows BEGIN:END of the input (e.g. 0:2000)");
ABSL_FLAG(int64_t, batch_rows, 256, "rows per streamed message");
// Training.
ABSL_FLAG(std::string, model, "", "model: NAME, NAME@VERSION or NAME:LABEL");
ABSL_FLAG(int64_t, d_hidden, 256, "train: hidden units");
ABSL_FLAG(std::string, activation, "relu", "train: relu, topk or sigmoid");
ABSL_FLAG(int64_t, k, 32, "train: active units per row (topk)");
ABSL_FLAG(double, l1, 0.01, "train: L1 coefficient (relu, topk)");
ABSL_FLAG(double, kl_rho, 0.05, "train: target mean activation (sigmoid)");
ABSL_FLAG(double, kl_beta, 3.0, "train: KL weight (sigmoid)");
ABSL_FLAG(double, weight_decay, 0.0, "train: decoupled weight decay");
ABSL_FLAG(int64_t, epochs, 10, "train: passes over the data");
ABSL_FLAG(int64_t, max_steps, 0, "train: stop after this many steps (0: use epochs)");
ABSL_FLAG(int64_t, batch_size, 256, "train: rows per step");
ABSL_FLAG(double, lr, 1e-3, "train: learning rate");
ABSL_FLAG(std::string, optimizer, "adam", "train: adam or sgd");
ABSL_FLAG(int64_t, warmup_steps, 0, "train: learning-rate warm-up steps");
ABSL_FLAG(uint64_t, seed, 1, "train: random seed; denoise --add_noise: noise seed");
ABSL_FLAG(std::string, corruption, "none", "train: none, gaussian, masking or salt_and_pepper");
ABSL_FLAG(double, noise_sigma, 0.3, "train: Gaussian corruption sigma");
ABSL_FLAG(double, noise_p, 0.1, "train: masking / salt-and-pepper probability");
ABSL_FLAG(bool, noise_clip, false, "train: clip corrupted values to [0, 1]");
ABSL_FLAG(bool, clip_output, false, "train: the model's Denoise output is clipped to [0, 1]");
ABSL_FLAG(double, validation, 0.0, "train: fraction of rows held out for validation");
ABSL_FLAG(bool, normalize_input, false, "train: scale rows to mean squared norm d_in");
ABSL_FLAG(std::string, request_id, "", "train: id that makes a retried Train start one job");
ABSL_FLAG(std::string, description, "", "train: free text stored with the version");
ABSL_FLAG(bool, watch, false, "train: follow the job until it ends, with a progress bar");
// Inference.
ABSL_FLAG(bool, sparse, false, "encode: write top codes as CSV lines 'row,unit,value'");
ABSL_FLAG(int64_t, top_n, 0, "encode --sparse: keep the top N codes per row (0: all nonzero)");
ABSL_FLAG(double, add_noise, 0.0,
          "denoise: add Gaussian noise of this sigma (clipped to [0, 1]) to the input first, and "
          "report PSNR against the clean input");
ABSL_FLAG(std::string, png, "", "denoise: write a picture grid (clean | noisy | denoised); "
                                "features: the picture of decoder rows");
ABSL_FLAG(int, png_rows, 8, "denoise --png: how many examples to draw");
ABSL_FLAG(int, count, 100, "features: how many units to draw");
ABSL_FLAG(bool, force, false, "models delete: also remove labels pointing at the version");

namespace {

using sae::RowMatrix;
using sae::client::SaeClient;
namespace v1 = sae::v1;

constexpr char kUsage[] =
    "sae_client: the command-line client of the sparse autoencoder service.\n\n"
    "  sae_client health\n"
    "  sae_client train --model=NAME --data=FILE [--d_hidden --activation --epochs ...] [--watch]\n"
    "  sae_client jobs list | get ID | cancel ID | watch ID\n"
    "  sae_client models list | get NAME | delete NAME@VERSION [--force]\n"
    "                    | label NAME LABEL VERSION (0 removes) | import NAME FOLDER\n"
    "                    | export NAME[@VERSION|:LABEL] FOLDER\n"
    "  sae_client datasets list | delete ID\n"
    "  sae_client encode|decode|reconstruct|denoise --model=REF --input=FILE --output=FILE\n"
    "  sae_client denoise ... --add_noise=0.3 --png=denoise.png\n"
    "  sae_client features --model=REF --png=features.png [--count=100]\n\n"
    "Common flags: --server=host:port (default localhost:50051), --timeout_s,\n"
    "  --tls-ca=CA.pem [--tls-cert=CLIENT.pem --tls-key=CLIENT.key] (TLS; plaintext without),\n"
    "  --token-file=FILE (bearer token). Flags take dashes or underscores.\n"
    "Files: .npy (float32, float64, uint8 scaled to [0,1]), .csv, .f32 (with --columns).";

int Fail(const absl::Status& s) {
  std::string hint;
  if (absl::IsUnauthenticated(s)) {
    hint = " (pass --token-file=FILE with a token the server knows)";
  } else if (absl::IsPermissionDenied(s)) {
    hint = " (this call needs a token with the admin role)";
  }
  std::fprintf(stderr, "sae_client: %s%s\n", std::string(s.message()).c_str(), hint.c_str());
  return 1;
}

int Usage(const std::string& why) {
  std::fprintf(stderr, "sae_client: %s\n\n%s\n", why.c_str(), kUsage);
  return 2;
}

absl::StatusOr<RowMatrix> ReadInput(const std::string& path) {
  if (path.empty()) return absl::InvalidArgumentError("no input file: pass --input (or --data)");
  absl::StatusOr<sae::DatasetFormat> format = sae::ParseDatasetFormat(absl::GetFlag(FLAGS_format));
  if (!format.ok()) return format.status();
  absl::StatusOr<RowMatrix> m = sae::ReadDataset(path, *format, absl::GetFlag(FLAGS_columns));
  if (!m.ok()) {
    return absl::Status(m.status().code(), absl::StrCat("cannot read input: ", m.status().message()));
  }
  const std::string rows = absl::GetFlag(FLAGS_rows);
  if (rows.empty()) return m;
  std::vector<std::string> parts = absl::StrSplit(rows, ':');
  int64_t begin = 0, end = m->rows();
  if (parts.size() != 2 || (!parts[0].empty() && !absl::SimpleAtoi(parts[0], &begin)) ||
      (!parts[1].empty() && !absl::SimpleAtoi(parts[1], &end)) || begin < 0 || end > m->rows() ||
      begin >= end) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--rows=", rows, " is not a range BEGIN:END within the file's ", m->rows(), " rows"));
  }
  return RowMatrix(m->middleRows(begin, end - begin));
}

absl::Status WriteOutput(const std::string& path, const RowMatrix& m) {
  if (path.empty()) return absl::InvalidArgumentError("no output file: pass --output");
  if (path.size() >= 4 && path.substr(path.size() - 4) == ".csv") return sae::WriteCsv(path, m);
  return sae::WriteNpy(path, m);
}

absl::StatusOr<v1::ModelRef> ModelFlag() {
  const std::string m = absl::GetFlag(FLAGS_model);
  if (m.empty()) return absl::InvalidArgumentError("no model: pass --model=NAME[@VERSION|:LABEL]");
  return sae::client::ParseModelRef(m);
}

bool IsFinalState(v1::JobState s) {
  return s != v1::JOB_STATE_QUEUED && s != v1::JOB_STATE_RUNNING &&
         s != v1::JOB_STATE_UNSPECIFIED;
}

std::string StateName(v1::JobState s) {
  std::string name = v1::JobState_Name(s);
  return name.substr(std::string("JOB_STATE_").size());
}

void PrintJob(const v1::TrainingJob& j) {
  std::printf("%s  %-11s model %s", j.id().c_str(), StateName(j.state()).c_str(),
              j.model_name().c_str());
  if (j.published_version() > 0) std::printf("@%lld", static_cast<long long>(j.published_version()));
  std::printf("  step %lld/%lld", static_cast<long long>(j.progress().step()),
              static_cast<long long>(j.progress().total_steps()));
  if (!j.error().empty()) std::printf("  (%s)", j.error().c_str());
  std::printf("\n");
}

// A tqdm-style progress line on a terminal; plain lines (every ~10%)
// otherwise.
class ProgressView {
 public:
  ProgressView() : tty_(::isatty(1)) {}
  void Show(const v1::TrainingJob& j) {
    const auto& p = j.progress();
    if (p.total_steps() <= 0) {
      if (j.state() != last_state_) std::printf("job %s: %s\n", j.id().c_str(), StateName(j.state()).c_str());
      last_state_ = j.state();
      std::fflush(stdout);
      return;
    }
    const double frac = static_cast<double>(p.step()) / static_cast<double>(p.total_steps());
    const std::string stats = absl::StrFormat(
        "%lld/%lld steps | %lld rows | loss %.4g | fvu %.3f | L0 %.1f | %.0f rows/s | eta %.0fs",
        static_cast<long long>(p.step()), static_cast<long long>(p.total_steps()),
        static_cast<long long>(p.rows_seen()), p.loss(), p.fvu(), p.mean_l0(), p.rows_per_second(),
        p.eta_seconds());
    if (tty_) {
      const int width = 30, filled = static_cast<int>(frac * width);
      std::printf("\r%3.0f%% |%s%s| %s   ", 100 * frac, std::string(filled, '#').c_str(),
                  std::string(width - filled, ' ').c_str(), stats.c_str());
      if (IsFinalState(j.state())) std::printf("\n");
    } else if ((frac >= next_report_ || IsFinalState(j.state())) && p.step() != last_step_) {
      std::printf("%3.0f%% %s\n", 100 * frac, stats.c_str());
      last_step_ = p.step();
      while (next_report_ <= frac) next_report_ += 0.1;
    }
    std::fflush(stdout);
  }

 private:
  bool tty_;
  double next_report_ = 0.0;
  int64_t last_step_ = -1;
  v1::JobState last_state_ = v1::JOB_STATE_UNSPECIFIED;
};

int CmdTrain(SaeClient& client) {
  const std::string name = absl::GetFlag(FLAGS_model);
  if (name.empty()) return Usage("train needs --model=NAME");
  absl::StatusOr<RowMatrix> data = ReadInput(absl::GetFlag(FLAGS_data));
  if (!data.ok()) return Fail(data.status());
  v1::TrainRequest r;
  r.set_model_name(name);
  v1::ModelConfig* c = r.mutable_config();
  c->set_d_in(data->cols());
  c->set_d_hidden(absl::GetFlag(FLAGS_d_hidden));
  const std::string act = absl::GetFlag(FLAGS_activation);
  if (act == "relu") {
    c->set_activation(v1::ACTIVATION_RELU);
    c->set_l1_coefficient(static_cast<float>(absl::GetFlag(FLAGS_l1)));
  } else if (act == "topk") {
    c->set_activation(v1::ACTIVATION_TOPK);
    c->set_k(absl::GetFlag(FLAGS_k));
  } else if (act == "sigmoid") {
    c->set_activation(v1::ACTIVATION_SIGMOID);
    c->set_kl_rho(static_cast<float>(absl::GetFlag(FLAGS_kl_rho)));
    c->set_kl_beta(static_cast<float>(absl::GetFlag(FLAGS_kl_beta)));
  } else {
    return Usage(absl::StrCat("--activation=", act, " is not relu, topk or sigmoid"));
  }
  c->set_weight_decay(static_cast<float>(absl::GetFlag(FLAGS_weight_decay)));
  if (absl::GetFlag(FLAGS_clip_output)) {
    c->set_clip_output(true);
    c->set_clip_min(0.0f);
    c->set_clip_max(1.0f);
  }
  v1::TrainingOptions* o = r.mutable_options();
  o->set_epochs(absl::GetFlag(FLAGS_epochs));
  o->set_max_steps(absl::GetFlag(FLAGS_max_steps));
  o->set_batch_size(absl::GetFlag(FLAGS_batch_size));
  o->set_learning_rate(static_cast<float>(absl::GetFlag(FLAGS_lr)));
  const std::string opt = absl::GetFlag(FLAGS_optimizer);
  if (opt != "adam" && opt != "sgd") return Usage(absl::StrCat("--optimizer=", opt, " is not adam or sgd"));
  o->set_optimizer(opt == "adam" ? v1::OPTIMIZER_ADAM : v1::OPTIMIZER_SGD);
  o->set_warmup_steps(absl::GetFlag(FLAGS_warmup_steps));
  o->set_seed(absl::GetFlag(FLAGS_seed));
  const std::string corruption = absl::GetFlag(FLAGS_corruption);
  if (corruption == "none") {
    o->set_corruption(v1::CORRUPTION_NONE);
  } else if (corruption == "gaussian") {
    o->set_corruption(v1::CORRUPTION_GAUSSIAN);
  } else if (corruption == "masking") {
    o->set_corruption(v1::CORRUPTION_MASKING);
  } else if (corruption == "salt_and_pepper") {
    o->set_corruption(v1::CORRUPTION_SALT_AND_PEPPER);
  } else {
    return Usage(absl::StrCat("--corruption=", corruption,
                              " is not none, gaussian, masking or salt_and_pepper"));
  }
  o->set_noise_sigma(static_cast<float>(absl::GetFlag(FLAGS_noise_sigma)));
  o->set_noise_probability(static_cast<float>(absl::GetFlag(FLAGS_noise_p)));
  o->set_noise_clip(absl::GetFlag(FLAGS_noise_clip));
  o->set_validation_fraction(absl::GetFlag(FLAGS_validation));
  o->set_normalize_input(absl::GetFlag(FLAGS_normalize_input));
  r.set_request_id(absl::GetFlag(FLAGS_request_id));
  r.set_description(absl::GetFlag(FLAGS_description));

  std::printf("uploading %lld x %lld rows to %s\n", static_cast<long long>(data->rows()),
              static_cast<long long>(data->cols()), client.address().c_str());
  absl::StatusOr<v1::Dataset> dataset = client.UploadDataset(*data, absl::GetFlag(FLAGS_data));
  if (!dataset.ok()) return Fail(dataset.status());
  r.set_dataset_id(dataset->id());
  absl::StatusOr<v1::TrainingJob> job = client.Train(r);
  if (!job.ok()) return Fail(job.status());
  std::printf("started job %s (dataset %s)\n", job->id().c_str(), dataset->id().c_str());
  if (!absl::GetFlag(FLAGS_watch)) return 0;
  ProgressView view;
  absl::StatusOr<v1::TrainingJob> last =
      client.WatchJob(job->id(), [&](const v1::TrainingJob& j) { view.Show(j); });
  if (!last.ok()) return Fail(last.status());
  client.DeleteDataset(dataset->id()).IgnoreError();
  if (last->state() != v1::JOB_STATE_SUCCEEDED) {
    std::fprintf(stderr, "sae_client: job %s %s: %s\n", last->id().c_str(),
                 StateName(last->state()).c_str(), last->error().c_str());
    return 1;
  }
  std::printf("published %s@%lld", last->model_name().c_str(),
              static_cast<long long>(last->published_version()));
  for (const char* m : {"fvu", "mean_l0", "dead_fraction", "validation_denoised_psnr_db"}) {
    if (auto it = last->metrics().find(m); it != last->metrics().end()) {
      std::printf("  %s %.4g", m, it->second);
    }
  }
  std::printf("\n");
  return 0;
}

int CmdJobs(SaeClient& client, const std::vector<char*>& args) {
  const std::string sub = args.size() > 2 ? args[2] : "list";
  if (sub == "list") {
    absl::StatusOr<std::vector<v1::TrainingJob>> jobs = client.ListJobs();
    if (!jobs.ok()) return Fail(jobs.status());
    for (const auto& j : *jobs) PrintJob(j);
    return 0;
  }
  if (args.size() < 4) return Usage(absl::StrCat("jobs ", sub, " needs a job id"));
  const std::string id = args[3];
  absl::StatusOr<v1::TrainingJob> job;
  if (sub == "get") {
    job = client.GetJob(id);
  } else if (sub == "cancel") {
    job = client.CancelJob(id);
  } else if (sub == "watch") {
    ProgressView view;
    job = client.WatchJob(id, [&](const v1::TrainingJob& j) { view.Show(j); });
  } else {
    return Usage(absl::StrCat("unknown jobs command '", sub, "'"));
  }
  if (!job.ok()) return Fail(job.status());
  PrintJob(*job);
  return 0;
}

int CmdModels(SaeClient& client, const std::vector<char*>& args) {
  const std::string sub = args.size() > 2 ? args[2] : "list";
  if (sub == "list") {
    absl::StatusOr<std::vector<v1::ModelSummary>> models = client.ListModels();
    if (!models.ok()) return Fail(models.status());
    for (const auto& m : *models) {
      std::printf("%-24s latest %lld  versions %lld", m.name().c_str(),
                  static_cast<long long>(m.latest_version()), static_cast<long long>(m.version_count()));
      for (const auto& [label, v] : m.labels()) std::printf("  %s=%lld", label.c_str(), static_cast<long long>(v));
      std::printf("\n");
    }
    return 0;
  }
  if (sub == "get" && args.size() >= 4) {
    absl::StatusOr<v1::GetModelResponse> m = client.GetModel(args[3]);
    if (!m.ok()) return Fail(m.status());
    for (const auto& v : m->versions()) {
      std::printf("%s@%lld  %s  d_in %lld d_hidden %lld %s  %s", m->name().c_str(),
                  static_cast<long long>(v.version()), v.created_at().c_str(),
                  static_cast<long long>(v.config().d_in()), static_cast<long long>(v.config().d_hidden()),
                  v1::Activation_Name(v.config().activation()).c_str(), v.source().c_str());
      for (const auto& l : v.labels()) std::printf("  [%s]", l.c_str());
      if (auto it = v.metrics().find("fvu"); it != v.metrics().end()) std::printf("  fvu %.4f", it->second);
      std::printf("\n");
    }
    return 0;
  }
  if (sub == "delete" && args.size() >= 4) {
    absl::StatusOr<v1::ModelRef> ref = sae::client::ParseModelRef(args[3]);
    if (!ref.ok()) return Fail(ref.status());
    if (ref->version() < 1) return Usage("models delete needs NAME@VERSION");
    absl::Status s = client.DeleteModelVersion(ref->name(), ref->version(), absl::GetFlag(FLAGS_force));
    if (!s.ok()) return Fail(s);
    std::printf("deleted %s\n", args[3]);
    return 0;
  }
  if (sub == "label" && args.size() >= 6) {
    int64_t version;
    if (!absl::SimpleAtoi(args[5], &version)) return Usage("models label NAME LABEL VERSION");
    absl::StatusOr<std::map<std::string, int64_t>> labels = client.SetLabel(args[3], args[4], version);
    if (!labels.ok()) return Fail(labels.status());
    for (const auto& [l, v] : *labels) std::printf("%s=%lld\n", l.c_str(), static_cast<long long>(v));
    return 0;
  }
  if (sub == "import" && args.size() >= 5) {
    absl::StatusOr<v1::ModelVersion> v = client.ImportModel(args[3], args[4]);
    if (!v.ok()) return Fail(v.status());
    std::printf("imported %s@%lld\n", args[3], static_cast<long long>(v->version()));
    return 0;
  }
  if (sub == "export" && args.size() >= 5) {
    absl::StatusOr<v1::ModelRef> ref = sae::client::ParseModelRef(args[3]);
    if (!ref.ok()) return Fail(ref.status());
    absl::Status s = client.ExportModel(*ref, args[4]);
    if (!s.ok()) return Fail(s);
    std::printf("exported %s to %s\n", args[3], args[4]);
    return 0;
  }
  return Usage(absl::StrCat("models ", sub, ": wrong arguments"));
}

int CmdDatasets(SaeClient& client, const std::vector<char*>& args) {
  const std::string sub = args.size() > 2 ? args[2] : "list";
  if (sub == "list") {
    absl::StatusOr<std::vector<v1::Dataset>> list = client.ListDatasets();
    if (!list.ok()) return Fail(list.status());
    for (const auto& d : *list) {
      std::printf("%s  %lld x %lld  %s  %s\n", d.id().c_str(), static_cast<long long>(d.rows()),
                  static_cast<long long>(d.columns()), d.created_at().c_str(), d.display_name().c_str());
    }
    return 0;
  }
  if (sub == "delete" && args.size() >= 4) {
    absl::Status s = client.DeleteDataset(args[3]);
    if (!s.ok()) return Fail(s);
    std::printf("deleted %s\n", args[3]);
    return 0;
  }
  return Usage(absl::StrCat("datasets ", sub, ": wrong arguments"));
}

int CmdInference(SaeClient& client, const std::string& cmd) {
  absl::StatusOr<v1::ModelRef> model = ModelFlag();
  if (!model.ok()) return Fail(model.status());
  absl::StatusOr<RowMatrix> input = ReadInput(absl::GetFlag(FLAGS_input));
  if (!input.ok()) return Fail(input.status());
  const std::string output = absl::GetFlag(FLAGS_output);
  if (output.empty()) return Usage(absl::StrCat(cmd, " needs --output=FILE"));
  if (cmd == "encode" && absl::GetFlag(FLAGS_sparse)) {
    absl::StatusOr<v1::SparseCodes> codes = client.EncodeSparse(*model, *input, absl::GetFlag(FLAGS_top_n));
    if (!codes.ok()) return Fail(codes.status());
    // The client library has checked the codes' offsets and indices.
    std::string csv = "row,unit,value\n";
    for (int64_t r = 0; r < codes->rows(); ++r) {
      for (int64_t i = codes->row_offsets(r); i < codes->row_offsets(r + 1); ++i) {
        absl::StrAppend(&csv, r, ",", codes->indices(i), ",", codes->values(i), "\n");
      }
    }
    if (absl::Status w = sae::ReplaceFileAtomically(output, csv); !w.ok()) return Fail(w);
    return 0;
  }
  if (cmd == "decode") {
    absl::StatusOr<RowMatrix> out = client.Decode(*model, *input);
    if (!out.ok()) return Fail(out.status());
    absl::Status s = WriteOutput(output, *out);
    return s.ok() ? 0 : Fail(s);
  }
  RowMatrix clean = *input;
  const double sigma = absl::GetFlag(FLAGS_add_noise);
  if (cmd == "denoise" && sigma > 0) {
    std::mt19937_64 rng(absl::GetFlag(FLAGS_seed));
    std::normal_distribution<float> normal(0.0f, static_cast<float>(sigma));
    for (Eigen::Index i = 0; i < input->size(); ++i) {
      input->data()[i] = std::clamp(input->data()[i] + normal(rng), 0.0f, 1.0f);
    }
  }
  const auto op = cmd == "encode" ? SaeClient::StreamOp::kEncode
                  : cmd == "reconstruct" ? SaeClient::StreamOp::kReconstruct
                                         : SaeClient::StreamOp::kDenoise;
  RowMatrix result;
  int64_t filled = 0;
  absl::Status s = client.Stream(op, *model, *input, absl::GetFlag(FLAGS_batch_rows),
                                 [&](const RowMatrix& batch) {
                                   if (result.size() == 0) result.resize(input->rows(), batch.cols());
                                   // The library checks each answer's shape.
                                   if (filled + batch.rows() > result.rows() ||
                                       batch.cols() != result.cols()) {
                                     return absl::InternalError("server sent more rows than asked");
                                   }
                                   result.middleRows(filled, batch.rows()) = batch;
                                   filled += batch.rows();
                                   return absl::OkStatus();
                                 });
  if (!s.ok()) return Fail(s);
  if (absl::Status w = WriteOutput(output, result); !w.ok()) return Fail(w);
  std::printf("%s: %lld rows -> %s\n", cmd.c_str(), static_cast<long long>(filled), output.c_str());
  if (cmd == "denoise" && sigma > 0) {
    std::printf("PSNR against the clean input: noisy %.2f dB -> denoised %.2f dB\n",
                sae::Psnr(clean, *input, 1.0), sae::Psnr(clean, result, 1.0));
  }
  const std::string png = absl::GetFlag(FLAGS_png);
  if (cmd == "denoise" && !png.empty()) {
    const int n = std::min<int>(absl::GetFlag(FLAGS_png_rows), static_cast<int>(input->rows()));
    const int per = sigma > 0 ? 3 : 2;
    RowMatrix tiles(n * per, input->cols());
    for (int i = 0; i < n; ++i) {
      int t = i * per;
      if (sigma > 0) tiles.row(t++) = clean.row(i);
      tiles.row(t++) = input->row(i);
      tiles.row(t) = result.row(i);
    }
    sae::client::GridOptions g;
    sae::client::SquareTile(input->cols(), &g.tile_height, &g.tile_width);
    g.columns = per * 4;
    g.scale = 3;
    if (absl::Status w = sae::client::WriteTileGridPng(png, tiles, g); !w.ok()) return Fail(w);
    std::printf("wrote %s (%s)\n", png.c_str(),
                sigma > 0 ? "clean | noisy | denoised" : "noisy | denoised");
  }
  return 0;
}

int CmdFeatures(SaeClient& client) {
  absl::StatusOr<v1::ModelRef> model = ModelFlag();
  if (!model.ok()) return Fail(model.status());
  const std::string png = absl::GetFlag(FLAGS_png);
  if (png.empty()) return Usage("features needs --png=FILE");
  // Decoder rows through the API: Decode(one-hot) - Decode(zero).
  absl::StatusOr<v1::GetModelResponse> info = client.GetModel(model->name());
  if (!info.ok()) return Fail(info.status());
  int64_t version = model->version();
  if (version == 0 && !model->label().empty() && model->label() != "latest") {
    auto it = info->labels().find(model->label());
    if (it == info->labels().end()) {
      return Fail(absl::NotFoundError(absl::StrCat("model '", model->name(), "' has no label '",
                                                   model->label(), "'")));
    }
    version = it->second;
  }
  int64_t d_hidden = 0;
  for (const auto& v : info->versions()) {
    if (version == 0 || v.version() == version) d_hidden = v.config().d_hidden();  // else latest
  }
  if (d_hidden < 1) return Fail(absl::NotFoundError("the model has no usable version"));
  if (absl::GetFlag(FLAGS_count) < 1) {
    return Usage(absl::StrCat("--count must be >= 1, got ", absl::GetFlag(FLAGS_count)));
  }
  const int64_t count = std::min<int64_t>(absl::GetFlag(FLAGS_count), d_hidden);
  RowMatrix codes = RowMatrix::Zero(count + 1, d_hidden);
  for (int64_t j = 0; j < count; ++j) codes(j, j) = 1.0f;
  absl::StatusOr<RowMatrix> decoded = client.Decode(*model, codes);
  if (!decoded.ok()) return Fail(decoded.status());
  RowMatrix features = decoded->topRows(count).rowwise() - decoded->row(count);
  sae::client::GridOptions g;
  sae::client::SquareTile(features.cols(), &g.tile_height, &g.tile_width);
  g.columns = 10;
  g.normalize_each = true;
  if (absl::Status s = sae::client::WriteTileGridPng(png, features, g); !s.ok()) return Fail(s);
  std::printf("wrote %s (%lld decoder rows)\n", png.c_str(), static_cast<long long>(count));
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage(kUsage);
  sae::NormalizeFlagDashes(argc, argv);
  std::vector<char*> args = absl::ParseCommandLine(argc, argv);
  if (args.size() < 2) return Usage("no command");
  const std::string cmd = args[1];
  sae::client::ClientOptions options;
  options.deadline = std::chrono::seconds(std::max(1, absl::GetFlag(FLAGS_timeout_s)));
  absl::StatusOr<sae::client::ClientSecurity> security = sae::client::LoadClientSecurity(
      absl::GetFlag(FLAGS_tls), absl::GetFlag(FLAGS_tls_ca), absl::GetFlag(FLAGS_tls_cert),
      absl::GetFlag(FLAGS_tls_key), absl::GetFlag(FLAGS_token_file));
  if (!security.ok()) return Fail(security.status());
  options.security = std::move(*security);
  std::unique_ptr<SaeClient> client = SaeClient::Create(absl::GetFlag(FLAGS_server), options);
  if (cmd == "health") {
    absl::Status s = client->CheckHealth();
    if (!s.ok()) return Fail(s);
    std::printf("%s: SERVING\n", client->address().c_str());
    return 0;
  }
  if (cmd == "train") return CmdTrain(*client);
  if (cmd == "jobs") return CmdJobs(*client, args);
  if (cmd == "models") return CmdModels(*client, args);
  if (cmd == "datasets") return CmdDatasets(*client, args);
  if (cmd == "encode" || cmd == "decode" || cmd == "reconstruct" || cmd == "denoise") {
    return CmdInference(*client, cmd);
  }
  if (cmd == "features") return CmdFeatures(*client);
  return Usage(absl::StrCat("unknown command '", cmd, "'"));
}
