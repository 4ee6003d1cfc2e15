// Who may call what: bearer tokens with roles, read from a token file.
//
// A token file has one token per line, "ROLE TOKEN [NAME]", where ROLE is
// `read` (inference, listing, getting, watching, exporting) or `admin`
// (everything `read` may do, plus training, uploads, cancels, deletes,
// labels and imports). NAME names the caller in logs; tokens themselves are
// never logged and never appear in a status message. Blank lines and lines
// starting with '#' are skipped.
//
//   # role  token                             name
//   admin   9c1d0e57a3b04f2d8e6b1a7c5f3e2d90  trainer
//   read    4b7e2a9f0c8d4e1b9a6f3c2d5e8b7a10  frontend
//
// Callers send "authorization: Bearer TOKEN" as call metadata.
#ifndef SAE_SERVER_AUTH_H_
#define SAE_SERVER_AUTH_H_

#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace sae::server {

enum class Role { kRead, kAdmin };

const char* RoleName(Role role);

// The role a method of sae.v1.SparseAutoencoderService needs ("Encode",
// "Train", ...). NOT_FOUND for a method this table does not know, so that a
// new RPC cannot be added without deciding who may call it.
absl::StatusOr<Role> RequiredRole(absl::string_view method);

class TokenAuthenticator {
 public:
  // Reads and checks a token file. NOT_FOUND when it cannot be read;
  // INVALID_ARGUMENT (with the line number, never the token) for an unknown
  // role, a token shorter than 16 characters, a repeated token, or a file
  // with no token at all.
  static absl::StatusOr<std::unique_ptr<TokenAuthenticator>> FromFile(const std::string& path);
  // The same from the file's text; `origin` names it in messages.
  static absl::StatusOr<std::unique_ptr<TokenAuthenticator>> FromText(absl::string_view text,
                                                                      absl::string_view origin);

  // Checks the value of an "authorization" header for a call of `method`.
  // UNAUTHENTICATED when the header is missing, not "Bearer TOKEN", or the
  // token is unknown; PERMISSION_DENIED when the token's role is not enough.
  // Sets *caller (if given) to the token's name on success or denial.
  absl::Status Check(absl::string_view authorization, absl::string_view method,
                     std::string* caller = nullptr) const;

  size_t size() const { return entries_.size(); }

 private:
  struct Entry {
    std::string token;
    Role role;
    std::string name;
  };
  explicit TokenAuthenticator(std::vector<Entry> entries) : entries_(std::move(entries)) {}
  const std::vector<Entry> entries_;
};

}  // namespace sae::server

#endif  // SAE_SERVER_AUTH_H_
