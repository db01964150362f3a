// Which pages of each process the source's CRIU holds for lazy-pages: the
// PE_LAZY entries of the checkpoint's pagemap-<pid>.img (criu/page-xfer.c
// writes one per iovec of its lazy page pipes, and serves a GET only at an
// address inside one; any other address ends its page server, and with it
// the dump). The target's relay reads them to ask for pages ahead of
// lazy-pages (page-answerer.h). The images came in the bundle, checked
// (criu-image-check.h); what is read here only decides what to ask for.
#pragma once

#include <cstdint>
#include <filesystem>
#include <map>
#include <vector>

#include "agent/page-server-protocol.h"

namespace migrate {

// Throws Error(InvalidInput) on an image CRIU would not have written.
LazyPages readLazyPages(const std::filesystem::path& checkpointDir);

}  // namespace migrate
