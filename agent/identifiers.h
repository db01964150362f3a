// The identifiers that name things on a host and travel between hosts in
// bundles and requests. Each has one pattern, checked wherever a value
// arrives from outside (a bundle's config.dump or manifest, a request), so
// that no identifier can become a path component, a line break in a file we
// write, or a name another pattern would read differently.
//
//   container id    32 lowercase hex characters (newContainerId), also runc's id
//                   and a directory name under the state dir
//   container name  1-64 of [A-Za-z0-9_.-], not starting with `.` or `-`
//   host name       the same pattern as a container name
//   hostname (UTS)  the same pattern as a container name
//   image digest    `sha256:` and 64 lowercase hex characters
#pragma once

#include <string>
#include <string_view>

namespace migrate {

bool isContainerId(std::string_view value);
bool isContainerName(std::string_view value);
bool isImageDigest(std::string_view value);

// Each throws Error(InvalidInput) "`<what>` <quoted value>: <the rule>".
void checkContainerId(std::string_view value, std::string_view what);
void checkContainerName(std::string_view value, std::string_view what);
void checkHostName(std::string_view value, std::string_view what);
void checkImageDigest(std::string_view value, std::string_view what);

// A value from outside, fit to quote in a message or a log line: control
// characters escaped, at most 64 characters kept.
std::string quotedForMessage(std::string_view value);

}  // namespace migrate
