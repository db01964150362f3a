#include "agent/id-mapping-proto.h"

namespace migrate {

std::optional<IdMapping> idMappingFromProto(proto::IdMapping::Reader in) {
  if (in.getSize() == 0) return std::nullopt;
  return IdMapping{in.getHostId(), in.getSize()};
}

void fillIdMapping(proto::IdMapping::Builder out, const IdMapping& mapping) {
  out.setHostId(mapping.hostId);
  out.setSize(mapping.size);
}

}  // namespace migrate
