// Undoing what CRIU's network lock leaves behind when a lazy (post-copy)
// dump fails: see undoCriuNetworkLock.
#pragma once

#include "agent/container.h"

namespace migrate {

// CRIU's lazy dump resumes the container when the page transfer fails, but
// that path skips network_unlock() (cr_dump_finish() decides on unlocking
// before the transfer starts): CRIU's nftables table stays in the netns and
// the dumped TCP sockets stay in repair mode, so no packet flows. Undo both
// as network_unlock() would: drop the CRIU-<pid> tables and take every TCP
// socket of the container's processes out of repair (through a pidfd_getfd()
// duplicate; TCP_REPAIR_OFF on a socket not in repair is harmless).
// Call while the processes are still stopped: once they run, a read on a
// socket still in repair mode fails with EPERM and the program drops the
// connection (docs/design-notes.md, post-copy). Failures on single sockets
// are logged, not thrown.
void undoCriuNetworkLock(const Container& container);

}  // namespace migrate
