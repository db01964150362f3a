// What every page of the pagecheck payload holds: a header {magic, page
// index, version} and then a PRNG stream seeded by (seed, index, version),
// and the checksum of a page. Shared, as the one definition, by the payload
// (C, tests/payloads/pagecheck.c) and by the client that checks its replies
// (C++, tests/support/page-check-client.cpp): a client computing the
// expected checksum any other way could agree with a wrong payload.
//
// A page that came back as zeros (a lost post-copy page) has no magic and
// checksums to pagecheckChecksum of zeros, which is no version's checksum.
#pragma once

#include <stddef.h>
#include <stdint.h>

#define PAGECHECK_PAGE_SIZE 4096
#define PAGECHECK_WORDS (PAGECHECK_PAGE_SIZE / 8)
#define PAGECHECK_MAGIC UINT64_C(0x6b63656863656770) /* "pgecheck" */

// The header's words.
#define PAGECHECK_MAGIC_WORD 0
#define PAGECHECK_INDEX_WORD 1
#define PAGECHECK_VERSION_WORD 2
#define PAGECHECK_HEADER_WORDS 3

// splitmix64's finaliser: nearby (seed, index, version) give unrelated streams.
static inline uint64_t pagecheckMix(uint64_t x) {
  x += UINT64_C(0x9e3779b97f4a7c15);
  x = (x ^ (x >> 30)) * UINT64_C(0xbf58476d1ce4e5b9);
  x = (x ^ (x >> 27)) * UINT64_C(0x94d049bb133111eb);
  return x ^ (x >> 31);
}

// Writes the content of `page` at `version` into `words` (PAGECHECK_WORDS).
// Cheap (one xorshift step a word) so that a GiB fills in about a second,
// and incompressible, so that a migration moves every byte of it.
static inline void pagecheckFill(uint64_t* words, uint64_t seed, uint64_t page, uint64_t version) {
  words[PAGECHECK_MAGIC_WORD] = PAGECHECK_MAGIC;
  words[PAGECHECK_INDEX_WORD] = page;
  words[PAGECHECK_VERSION_WORD] = version;
  uint64_t s = pagecheckMix(seed ^ pagecheckMix(page ^ pagecheckMix(version))) | 1;  // xorshift: never 0
  for (size_t i = PAGECHECK_HEADER_WORDS; i < PAGECHECK_WORDS; ++i) {
    s ^= s << 13;
    s ^= s >> 7;
    s ^= s << 17;
    words[i] = s;
  }
}

// FNV-1a over the page's 64-bit words (a word at a time: 512 rounds a page,
// so a scan of a GiB takes well under a second).
static inline uint64_t pagecheckChecksum(const uint64_t* words) {
  uint64_t h = UINT64_C(0xcbf29ce484222325);
  for (size_t i = 0; i < PAGECHECK_WORDS; ++i) {
    h ^= words[i];
    h *= UINT64_C(0x100000001b3);
  }
  return h;
}

// The checksum of `page` at `version`, as a correct payload holds it.
static inline uint64_t pagecheckExpectedChecksum(uint64_t seed, uint64_t page, uint64_t version) {
  uint64_t words[PAGECHECK_WORDS];
  pagecheckFill(words, seed, page, version);
  return pagecheckChecksum(words);
}
