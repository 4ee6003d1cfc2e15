// Command-line helpers shared by the project's binaries.
#ifndef SAE_CORE_FLAG_UTIL_H_
#define SAE_CORE_FLAG_UTIL_H_

#include <cstring>

namespace sae {

// Lets flags be spelled with dashes: rewrites "--tls-ca=x" to "--tls_ca=x"
// in place (only the name, before any '='), since absl flag names are C++
// identifiers. Stops at a bare "--", after which arguments are not flags.
inline void NormalizeFlagDashes(int argc, char** argv) {
  for (int i = 1; i < argc; ++i) {
    char* a = argv[i];
    if (std::strcmp(a, "--") == 0) return;
    if (a[0] != '-') continue;
    char* name = a + (a[1] == '-' ? 2 : 1);
    for (char* c = name; *c != '\0' && *c != '='; ++c) {
      if (*c == '-') *c = '_';
    }
  }
}

}  // namespace sae

#endif  // SAE_CORE_FLAG_UTIL_H_
