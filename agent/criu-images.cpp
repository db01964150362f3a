#include "agent/criu-images.h"

#include <endian.h>
#include <fcntl.h>
#include <sys/stat.h>

#include <cstring>
#include <optional>
#include <sstream>

#include <google/protobuf/descriptor.h>
#include <google/protobuf/message.h>
#include <google/protobuf/unknown_field_set.h>

#include "common/error.h"
#include "common/files.h"
#include "common/syscall.h"

namespace migrate {

namespace {

std::string hex(uint32_t value) {
  std::ostringstream out;
  out << "0x" << std::hex << value;
  return out.str();
}

// The first field, anywhere in `message`, that CRIU's schema does not name:
// protobuf keeps unknown fields, and an enum value the schema lacks, aside
// as "unknown" where CRIU's protobuf-c would take the value as it is. So
// such a message would read differently to the check and to CRIU.
std::optional<std::string> unknownField(const google::protobuf::Message& message) {
  auto* reflection = message.GetReflection();
  const auto& unknown = reflection->GetUnknownFields(message);
  if (unknown.field_count() > 0) {
    return message.GetTypeName() + " field " + std::to_string(unknown.field(0).number());
  }
  std::vector<const google::protobuf::FieldDescriptor*> fields;
  reflection->ListFields(message, &fields);
  for (auto* field : fields) {
    if (field->cpp_type() != google::protobuf::FieldDescriptor::CPPTYPE_MESSAGE) continue;
    if (field->is_repeated()) {
      for (int i = 0; i < reflection->FieldSize(message, field); ++i) {
        if (auto found = unknownField(reflection->GetRepeatedMessage(message, field, i))) return found;
      }
    } else if (auto found = unknownField(reflection->GetMessage(message, field))) {
      return found;
    }
  }
  return std::nullopt;
}

}  // namespace

CriuImageReader::CriuImageReader(const fs::path& path, uint32_t magic) : name_(path.filename().string()) {
  // O_NOFOLLOW: CRIU opens the same name; a symlink would make the two read
  // different files.
  fd_ = Fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW));
  if (!fd_) {
    if (errno == ELOOP) fail(ErrorKind::InvalidInput, "criu image `" + name_ + "`: is a symlink");
    failErrno(errno, "open(" + path.string() + ")");
  }
  struct stat st;
  SYSCALL(::fstat(fd_.get(), &st), "fstat", path.string());
  if (!S_ISREG(st.st_mode)) fail(ErrorKind::InvalidInput, "criu image `" + name_ + "`: not a regular file");
  size_ = static_cast<uint64_t>(st.st_size);

  uint32_t first = 0;
  readExact(&first, sizeof first);
  first = le32toh(first);
  if (magic == criu::kInventoryMagic) {
    // Images v1.1: every image but the inventory starts with the common magic.
    if (first != magic) fail(ErrorKind::InvalidInput, "criu image `" + name_ + "`: magic " + hex(first) + ", not " + hex(magic));
    return;
  }
  uint32_t second = 0;
  readExact(&second, sizeof second);
  second = le32toh(second);
  if (first != criu::kImgCommonMagic || second != magic) {
    fail(ErrorKind::InvalidInput, "criu image `" + name_ + "`: magic " + hex(first) + " " + hex(second) + ", not " +
                                      hex(criu::kImgCommonMagic) + " " + hex(magic));
  }
}

void CriuImageReader::readExact(void* buffer, uint64_t bytes) {
  if (bytes > remaining()) {
    fail(ErrorKind::InvalidInput, "criu image `" + name_ + "`: cut at byte " + std::to_string(size_) + " (" +
                                      std::to_string(bytes) + " bytes wanted at " + std::to_string(offset_) + ")");
  }
  auto* out = static_cast<char*>(buffer);
  uint64_t done = 0;
  while (done < bytes) {
    auto n = SYSCALL(::pread(fd_.get(), out + done, bytes - done, static_cast<off_t>(offset_ + done)), "pread", name_);
    if (n == 0) fail(ErrorKind::InvalidInput, "criu image `" + name_ + "`: shrank while it was read");
    done += static_cast<uint64_t>(n);
  }
  offset_ += bytes;
}

bool CriuImageReader::next(google::protobuf::MessageLite& message) {
  if (remaining() == 0) return false;
  uint32_t size = 0;
  auto at = offset_;
  readExact(&size, sizeof size);
  size = le32toh(size);
  // Bounded by the file: a hostile size fails here, before any allocation.
  if (size > remaining()) {
    fail(ErrorKind::InvalidInput, "criu image `" + name_ + "`: entry at byte " + std::to_string(at) + " claims " +
                                      std::to_string(size) + " bytes, " + std::to_string(remaining()) + " left");
  }
  std::string bytes(size, '\0');
  readExact(bytes.data(), size);
  message.Clear();
  if (!message.ParseFromString(bytes)) {
    fail(ErrorKind::InvalidInput, "criu image `" + name_ + "`: entry at byte " + std::to_string(at) +
                                      " is not a valid " + message.GetTypeName() + " (" +
                                      message.InitializationErrorString() + ")");
  }
  if (auto* full = dynamic_cast<google::protobuf::Message*>(&message)) {
    if (auto field = unknownField(*full)) {
      fail(ErrorKind::InvalidInput, "criu image `" + name_ + "`: entry at byte " + std::to_string(at) + " has " +
                                        *field + ", which CRIU's schema does not know (or a value its enum lacks)");
    }
  }
  return true;
}

void CriuImageReader::skip(uint64_t bytes) {
  if (bytes > remaining()) {
    fail(ErrorKind::InvalidInput, "criu image `" + name_ + "`: " + std::to_string(bytes) + " bytes of data claimed, " +
                                      std::to_string(remaining()) + " left");
  }
  offset_ += bytes;
}

void CriuImageReader::readOnly(google::protobuf::MessageLite& message) {
  if (!next(message)) fail(ErrorKind::InvalidInput, "criu image `" + name_ + "`: has no entry");
  if (remaining() != 0) {
    fail(ErrorKind::InvalidInput, "criu image `" + name_ + "`: " + std::to_string(remaining()) +
                                      " bytes after its one " + message.GetTypeName());
  }
}

void writeCriuImage(const fs::path& path, uint32_t magic,
                    const std::vector<const google::protobuf::MessageLite*>& entries) {
  std::string out;
  auto put32 = [&out](uint32_t value) {
    value = htole32(value);
    out.append(reinterpret_cast<const char*>(&value), sizeof value);
  };
  if (magic != criu::kInventoryMagic) put32(criu::kImgCommonMagic);
  put32(magic);
  for (auto* entry : entries) {
    std::string bytes = entry->SerializeAsString();
    put32(static_cast<uint32_t>(bytes.size()));
    out += bytes;
  }
  writeFileAtomic(path, out);
}

}  // namespace migrate
