// Test payload: holds N MiB of a known pattern and verifies all of it in a
// loop, printing "verified <round>" or "CORRUPT at <offset>" (then exits 3).
// usage: memhog MIB [random|zero|text]   (random: incompressible xorshift)
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static uint64_t next(uint64_t* s) {
  uint64_t x = *s;
  x ^= x << 13;
  x ^= x >> 7;
  x ^= x << 17;
  return *s = x;
}

static void fill(uint64_t* words, size_t count, const char* mode) {
  uint64_t seed = 0x9e3779b97f4a7c15ull;
  for (size_t i = 0; i < count; ++i) {
    if (!strcmp(mode, "random")) words[i] = next(&seed);
    else if (!strcmp(mode, "zero")) words[i] = 0;
    else words[i] = 0x2e6f6c6c6568ull + (i % 64);  // compressible, not trivially zero
  }
}

int main(int argc, char** argv) {
  setvbuf(stdout, NULL, _IOLBF, 0);
  size_t mib = argc > 1 ? strtoul(argv[1], NULL, 10) : 16;
  const char* mode = argc > 2 ? argv[2] : "random";
  size_t count = mib * 1024 * 1024 / sizeof(uint64_t);
  uint64_t* words = malloc(count * sizeof(uint64_t));
  uint64_t* expect = malloc(4096 * sizeof(uint64_t));
  if (!words || !expect) return 2;
  fill(words, count, mode);
  printf("ready %zu MiB %s\n", mib, mode);
  struct timespec pause = {0, 200 * 1000 * 1000};
  for (unsigned long round = 1;; ++round) {
    // Regenerate the pattern in chunks and compare, so the check needs no second copy.
    uint64_t seed = 0x9e3779b97f4a7c15ull;
    for (size_t i = 0; i < count; i += 4096) {
      size_t n = count - i < 4096 ? count - i : 4096;
      for (size_t k = 0; k < n; ++k) {
        if (!strcmp(mode, "random")) expect[k] = next(&seed);
        else if (!strcmp(mode, "zero")) expect[k] = 0;
        else expect[k] = 0x2e6f6c6c6568ull + ((i + k) % 64);
      }
      if (memcmp(words + i, expect, n * sizeof(uint64_t)) != 0) {
        printf("CORRUPT at %zu\n", i * sizeof(uint64_t));
        return 3;
      }
    }
    printf("verified %lu\n", round);
    nanosleep(&pause, NULL);
  }
}
