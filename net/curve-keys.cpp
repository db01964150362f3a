#include "net/curve-keys.h"

#include <sys/stat.h>
#include <zmq.h>

#include <algorithm>
#include <array>
#include <cctype>
#include <cstring>

#include "common/error.h"
#include "common/files.h"
#include "common/syscall.h"

namespace migrate {

namespace {

constexpr size_t kZ85KeyLength = 40;

std::string trim(std::string s) {
  auto notSpace = [](unsigned char c) { return !std::isspace(c); };
  s.erase(s.begin(), std::find_if(s.begin(), s.end(), notSpace));
  s.erase(std::find_if(s.rbegin(), s.rend(), notSpace).base(), s.end());
  return s;
}

std::string readKeyFile(const fs::path& file, std::string_view what) {
  auto content = readFileIfExists(file);
  if (!content) fail(ErrorKind::NotFound, "curve: " + std::string(what) + " " + file.string() + " does not exist");
  std::string key = trim(std::move(*content));
  checkCurveKey(key, std::string(what) + " " + file.string());
  return key;
}

}  // namespace

void checkCurveKey(std::string_view key, std::string_view what) {
  std::array<uint8_t, 32> binary;
  if (key.size() != kZ85KeyLength) {
    fail(ErrorKind::InvalidInput, "curve: " + std::string(what) + " is not a Z85 CURVE key (" +
                                      std::to_string(key.size()) + " characters, expected 40)");
  }
  std::string terminated(key);
  if (zmq_z85_decode(binary.data(), terminated.c_str()) == nullptr) {
    fail(ErrorKind::InvalidInput, "curve: " + std::string(what) + " is not valid Z85");
  }
}

CurveKeyPair generateCurveKeyPair() {
  std::array<char, kZ85KeyLength + 1> pub{}, sec{};
  if (zmq_curve_keypair(pub.data(), sec.data()) != 0) {
    failErrno(zmq_errno(), "curve: zmq_curve_keypair (is libzmq built with libsodium?)");
  }
  return CurveKeyPair{pub.data(), sec.data()};
}

void saveKeyPair(const fs::path& dir, std::string_view name, const CurveKeyPair& keys) {
  checkCurveKey(keys.publicKey, "public key");
  checkCurveKey(keys.secretKey, "secret key");
  std::string base(name);
  writeFileAtomic(dir / (base + ".key"), keys.secretKey + "\n", 0600);
  writeFileAtomic(dir / (base + ".pub"), keys.publicKey + "\n", 0644);
}

CurveKeyPair loadKeyPair(const fs::path& dir, std::string_view name) {
  std::string base(name);
  fs::path secretFile = dir / (base + ".key");
  struct stat st;
  if (::stat(secretFile.c_str(), &st) == 0 && (st.st_mode & 077) != 0) {
    // A secret anyone on the host can read authenticates anyone as us.
    char mode[8];
    std::snprintf(mode, sizeof(mode), "%04o", st.st_mode & 07777);
    fail(ErrorKind::InvalidInput, "curve: secret key " + secretFile.string() + " is accessible by group/others (mode " +
                                      mode + "); chmod 600 it");
  }
  CurveKeyPair keys;
  keys.secretKey = readKeyFile(secretFile, "secret key");
  keys.publicKey = readKeyFile(dir / (base + ".pub"), "public key");

  std::array<char, kZ85KeyLength + 1> derived{};
  if (zmq_curve_public(derived.data(), keys.secretKey.c_str()) != 0) {
    failErrno(zmq_errno(), "curve: zmq_curve_public for " + secretFile.string());
  }
  if (keys.publicKey != derived.data()) {
    fail(ErrorKind::InvalidInput, "curve: public key " + (dir / (base + ".pub")).string() +
                                      " does not belong to secret key " + secretFile.string());
  }
  return keys;
}

std::string loadPublicKey(const fs::path& file) { return readKeyFile(file, "public key"); }

}  // namespace migrate
