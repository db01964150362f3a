// Paths relative to a directory, as read from hostile input (a bundle's or an
// image's tar entries, deleted.files): checked and normalised in one place.
#pragma once

#include <string>
#include <string_view>
#include <utility>

namespace migrate {

// Whether a path that names the directory itself ("", ".", "./") is accepted:
// a bundle entry must name something beneath its tree, an image layer may
// carry an entry for its root.
enum class RootPath { Refuse, Accept };

// Validates `path` and returns it normalised in `out` (no empty or "."
// components, no trailing slash; "" for the root itself when accepted).
// False with `problem` set to the reason: "empty path", "absolute path",
// "`..` component in path", "NUL byte in path", "path longer than 4096 bytes".
bool tryNormaliseRelativePath(std::string_view path, std::string& out, std::string& problem,
                              RootPath root = RootPath::Refuse);
// The same, throwing Error(InvalidInput) with the reason.
std::string normaliseRelativePath(std::string_view path, RootPath root = RootPath::Refuse);

// A normalised path's parent ("" at the top) and last component.
std::pair<std::string, std::string> splitParent(const std::string& path);
// `name` beneath `dir` ("" is the top).
std::string joinPath(const std::string& dir, const std::string& name);

}  // namespace migrate
