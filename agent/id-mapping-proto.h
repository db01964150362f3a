// An IdMapping (agent/id-mapping.h) in the control protocol's form
// (schema/control.capnp IdMapping), for the agent daemon and the coordinator
// alike: the mapping a container reports is the one a target is asked to
// give it, so both ends read and write it the same way.
#pragma once

#include <optional>

#include "agent/id-mapping.h"
#include "schema/control.capnp.h"

namespace migrate {

// Size 0 (also an unset field) is the host's user namespace: nullopt.
std::optional<IdMapping> idMappingFromProto(proto::IdMapping::Reader in);
void fillIdMapping(proto::IdMapping::Builder out, const IdMapping& mapping);

}  // namespace migrate
