#include "agent/tar-stream.h"

#include <archive.h>
#include <archive_entry.h>

#include <catch2/catch.hpp>
#include <stdexcept>

#include "common/error.h"

using namespace migrate;

namespace {

std::string writeOneEntryTar(const std::string& name, const std::string& content, std::string* tapped = nullptr) {
  StringOutputStream out;
  TarTap tap;
  if (tapped) tap = [tapped](const void* data, size_t size) { tapped->append(static_cast<const char*>(data), size); };
  TarOutputArchive tar(out, tap);
  REQUIRE(archive_write_set_format_pax_restricted(tar.get()) == ARCHIVE_OK);
  REQUIRE(archive_write_set_bytes_per_block(tar.get(), 0) == ARCHIVE_OK);
  REQUIRE(tar.open() == ARCHIVE_OK);
  archive_entry* entry = archive_entry_new();
  archive_entry_set_pathname(entry, name.c_str());
  archive_entry_set_filetype(entry, AE_IFREG);
  archive_entry_set_perm(entry, 0644);
  archive_entry_set_size(entry, static_cast<la_int64_t>(content.size()));
  REQUIRE(archive_write_header(tar.get(), entry) == ARCHIVE_OK);
  archive_entry_free(entry);
  REQUIRE(archive_write_data(tar.get(), content.data(), content.size()) == static_cast<la_ssize_t>(content.size()));
  REQUIRE(archive_write_close(tar.get()) == ARCHIVE_OK);
  return out.data();
}

class FailingInputStream final : public InputStream {
 public:
  size_t read(void*, size_t) override { throw std::runtime_error("the peer went away"); }
};

class FailingOutputStream final : public OutputStream {
 public:
  void write(const void*, size_t) override { throw std::runtime_error("disk full"); }
};

}  // namespace

TEST_CASE("tar archives round-trip through the stream adapters, and the taps see every byte") {
  std::string written;
  auto bytes = writeOneEntryTar("hello.txt", "hello, world", &written);
  CHECK(written == bytes);

  StringInputStream in(bytes);
  std::string read;
  TarInputArchive tar(in, 4096, [&](const void* data, size_t size) { read.append(static_cast<const char*>(data), size); });
  REQUIRE(archive_read_support_format_tar(tar.get()) == ARCHIVE_OK);
  REQUIRE(tar.open() == ARCHIVE_OK);
  archive_entry* entry = nullptr;
  REQUIRE(archive_read_next_header(tar.get(), &entry) == ARCHIVE_OK);
  CHECK(std::string(archive_entry_pathname(entry)) == "hello.txt");
  char buffer[64];
  auto n = archive_read_data(tar.get(), buffer, sizeof buffer);
  CHECK(std::string(buffer, static_cast<size_t>(n)) == "hello, world");
  CHECK(archive_read_next_header(tar.get(), &entry) == ARCHIVE_EOF);
  CHECK(read == bytes.substr(0, read.size()));
}

TEST_CASE("an exception from the input stream crosses libarchive and is rethrown") {
  FailingInputStream in;
  TarInputArchive tar(in, 4096);
  archive_read_support_format_tar(tar.get());
  CHECK(tar.open() != ARCHIVE_OK);
  CHECK_THROWS_WITH(tar.rethrowStreamError(), "the peer went away");
  tar.rethrowStreamError();  // once only: nothing left to rethrow
  CHECK_FALSE(tar.errorText().empty());
}

TEST_CASE("an exception from the output stream crosses libarchive and is rethrown") {
  FailingOutputStream out;
  TarOutputArchive tar(out);
  archive_write_set_format_pax_restricted(tar.get());
  archive_write_set_bytes_per_block(tar.get(), 0);
  int status = tar.open();
  if (status == ARCHIVE_OK) {
    archive_entry* entry = archive_entry_new();
    archive_entry_set_pathname(entry, "x");
    archive_entry_set_filetype(entry, AE_IFREG);
    archive_entry_set_size(entry, 0);
    status = archive_write_header(tar.get(), entry);
    archive_entry_free(entry);
  }
  CHECK(status < ARCHIVE_WARN);
  CHECK_THROWS_WITH(tar.rethrowStreamError(), "disk full");
}
