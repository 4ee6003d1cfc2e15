#include "server/auth.h"

#include <algorithm>
#include <map>
#include <set>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "core/file_util.h"

namespace sae::server {
namespace {

constexpr size_t kMinTokenLength = 16;
constexpr size_t kMaxTokenLength = 4096;
constexpr size_t kMaxTokenFileBytes = 1 << 20;

// Compares without an early exit, so the time taken does not tell how much
// of a guessed token was right.
bool ConstantTimeEquals(absl::string_view a, absl::string_view b) {
  const size_t n = std::max(a.size(), b.size());
  unsigned diff = a.size() == b.size() ? 0 : 1;
  for (size_t i = 0; i < n; ++i) {
    const unsigned char x = i < a.size() ? a[i] : 0;
    const unsigned char y = i < b.size() ? b[i] : 0;
    diff |= static_cast<unsigned>(x ^ y);
  }
  return diff == 0;
}

}  // namespace

const char* RoleName(Role role) { return role == Role::kAdmin ? "admin" : "read"; }

absl::StatusOr<Role> RequiredRole(absl::string_view method) {
  static const auto* const kRoles = new std::map<std::string, Role, std::less<>>{
      // Training and data: changing what the server holds.
      {"Train", Role::kAdmin},
      {"CancelTrainingJob", Role::kAdmin},
      {"UploadDataset", Role::kAdmin},
      {"DeleteDataset", Role::kAdmin},
      {"DeleteModelVersion", Role::kAdmin},
      {"SetModelLabel", Role::kAdmin},
      {"ImportModel", Role::kAdmin},
      // Reading: inference, listing, getting, watching, exporting.
      {"GetTrainingJob", Role::kRead},
      {"ListTrainingJobs", Role::kRead},
      {"WatchTrainingJob", Role::kRead},
      {"ListDatasets", Role::kRead},
      {"Encode", Role::kRead},
      {"Decode", Role::kRead},
      {"Reconstruct", Role::kRead},
      {"Denoise", Role::kRead},
      {"StreamEncode", Role::kRead},
      {"StreamReconstruct", Role::kRead},
      {"StreamDenoise", Role::kRead},
      {"ListModels", Role::kRead},
      {"GetModel", Role::kRead},
      {"ExportModel", Role::kRead},
  };
  auto it = kRoles->find(method);
  if (it == kRoles->end()) {
    return absl::NotFoundError(absl::StrCat("no role is set for method '", method, "'"));
  }
  return it->second;
}

absl::StatusOr<std::unique_ptr<TokenAuthenticator>> TokenAuthenticator::FromFile(
    const std::string& path) {
  absl::StatusOr<std::string> text = ReadSmallFile(path, kMaxTokenFileBytes);
  if (!text.ok()) {
    return absl::Status(text.status().code(),
                        absl::StrCat("token file: ", text.status().message()));
  }
  return FromText(*text, path);
}

absl::StatusOr<std::unique_ptr<TokenAuthenticator>> TokenAuthenticator::FromText(
    absl::string_view text, absl::string_view origin) {
  std::vector<Entry> entries;
  std::set<std::string> seen;
  int line_number = 0;
  for (absl::string_view line : absl::StrSplit(text, '\n')) {
    ++line_number;
    line = absl::StripAsciiWhitespace(line);
    if (line.empty() || line[0] == '#') continue;
    std::vector<absl::string_view> fields =
        absl::StrSplit(line, absl::ByAnyChar(" \t"), absl::SkipEmpty());
    auto bad = [&](absl::string_view why) {
      return absl::InvalidArgumentError(
          absl::StrCat("token file ", origin, " line ", line_number, ": ", why,
                       "; expected 'ROLE TOKEN [NAME]' with ROLE read or admin"));
    };
    if (fields.size() < 2 || fields.size() > 3) return bad("wrong number of fields");
    Entry e;
    if (fields[0] == "read") {
      e.role = Role::kRead;
    } else if (fields[0] == "admin") {
      e.role = Role::kAdmin;
    } else {
      return bad(absl::StrCat("unknown role '", fields[0].substr(0, 32), "'"));
    }
    e.token = std::string(fields[1]);
    if (e.token.size() < kMinTokenLength || e.token.size() > kMaxTokenLength) {
      return bad(absl::StrCat("a token must have ", kMinTokenLength, " to ", kMaxTokenLength,
                              " characters"));
    }
    for (char c : e.token) {
      if (c < 0x21 || c > 0x7e) return bad("a token must be printable ASCII without spaces");
    }
    if (!seen.insert(e.token).second) return bad("this token is already on an earlier line");
    e.name = fields.size() == 3 ? std::string(fields[2]) : absl::StrCat("line ", line_number);
    entries.push_back(std::move(e));
  }
  if (entries.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "token file ", origin, " holds no token; expected lines 'ROLE TOKEN [NAME]'"));
  }
  return std::unique_ptr<TokenAuthenticator>(new TokenAuthenticator(std::move(entries)));
}

absl::Status TokenAuthenticator::Check(absl::string_view authorization, absl::string_view method,
                                       std::string* caller) const {
  absl::StatusOr<Role> needed = RequiredRole(method);
  if (!needed.ok()) return absl::PermissionDeniedError(needed.status().message());
  if (authorization.empty()) {
    return absl::UnauthenticatedError(
        "no credentials: send the metadata 'authorization: Bearer TOKEN'");
  }
  constexpr absl::string_view kScheme = "Bearer ";
  if (authorization.size() <= kScheme.size() ||
      !absl::EqualsIgnoreCase(authorization.substr(0, kScheme.size()), kScheme)) {
    return absl::UnauthenticatedError(
        "the authorization metadata must be 'Bearer TOKEN'");
  }
  const absl::string_view token = authorization.substr(kScheme.size());
  const Entry* match = nullptr;
  for (const Entry& e : entries_) {  // every entry, so timing tells nothing
    if (ConstantTimeEquals(e.token, token)) match = &e;
  }
  if (match == nullptr) return absl::UnauthenticatedError("the bearer token is not known");
  if (caller != nullptr) *caller = match->name;
  if (*needed == Role::kAdmin && match->role != Role::kAdmin) {
    return absl::PermissionDeniedError(absl::StrCat(
        method, " needs the admin role; the token of '", match->name, "' has the read role"));
  }
  return absl::OkStatus();
}

}  // namespace sae::server
