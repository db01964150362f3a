// Test payload: holds MIB MiB of pages whose content says what they should
// be (tests/payloads/pagecheck-content.h) and serves writes and reads of them
// on TCP, so that a client can check every acknowledged write survived a
// migration and every byte read back is right (issue 12: a write lost after
// the switchover, a page that came back as zeros after the page source died).
//
//   usage: pagecheck PORT MIB SEED   (PORT 0: any free port, named in the ready line)
//
// Line protocol, one client at a time, every reply sent only once the memory
// operation is done:
//   W <page> <version>  rewrites the page at that version    -> ok <writes>
//   R <page>            reads it                             -> page <page> <version in header> <checksum, hex>
//   C                   the writes done so far               -> count <writes>
//   S                   checks every page against its header -> scan <bad pages>
//   anything else                                            -> err <why>
// <writes> is kept in this process's memory: a lost write shows as a count
// that went back. Prints "ready ..." once filled and listening.
#include <errno.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>

#include "pagecheck-content.h"

#define MAX_LINE 128

static uint64_t* memory;
static uint64_t pageCount;
static uint64_t seed;
static uint64_t writes;  // in memory, migrated with the rest

static uint64_t* pageAt(uint64_t page) { return memory + page * PAGECHECK_WORDS; }

// A whole unsigned decimal number, nothing around it.
static int parseNumber(const char* text, uint64_t* out) {
  if (!text || *text < '0' || *text > '9') return 0;
  errno = 0;
  char* end;
  unsigned long long v = strtoull(text, &end, 10);
  if (errno || *end) return 0;
  *out = v;
  return 1;
}

static void sendAll(int fd, const char* text, size_t len) {
  while (len > 0) {
    ssize_t n = send(fd, text, len, MSG_NOSIGNAL);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return;  // the client went: the next read says so
    text += n;
    len -= (size_t)n;
  }
}

static uint64_t scanBadPages(void) {
  uint64_t bad = 0;
  for (uint64_t p = 0; p < pageCount; ++p) {
    const uint64_t* w = pageAt(p);
    if (w[PAGECHECK_MAGIC_WORD] != PAGECHECK_MAGIC || w[PAGECHECK_INDEX_WORD] != p ||
        pagecheckChecksum(w) != pagecheckExpectedChecksum(seed, p, w[PAGECHECK_VERSION_WORD])) {
      ++bad;
    }
  }
  return bad;
}

// Answers one request line (without its newline) into `reply`.
static void handle(char* line, char* reply, size_t size) {
  char* words[4] = {0};
  int n = 0;
  for (char* save = NULL, *w = strtok_r(line, " ", &save); w; w = strtok_r(NULL, " ", &save)) {
    if (n == 4) {
      snprintf(reply, size, "err too many words\n");
      return;
    }
    words[n++] = w;
  }
  uint64_t page = 0, version = 0;
  if (n == 3 && !strcmp(words[0], "W")) {
    if (!parseNumber(words[1], &page) || !parseNumber(words[2], &version)) {
      snprintf(reply, size, "err W takes <page> <version>\n");
    } else if (page >= pageCount) {
      snprintf(reply, size, "err page %" PRIu64 " out of range (%" PRIu64 " pages)\n", page, pageCount);
    } else {
      pagecheckFill(pageAt(page), seed, page, version);
      ++writes;
      snprintf(reply, size, "ok %" PRIu64 "\n", writes);
    }
  } else if (n == 2 && !strcmp(words[0], "R")) {
    if (!parseNumber(words[1], &page)) {
      snprintf(reply, size, "err R takes <page>\n");
    } else if (page >= pageCount) {
      snprintf(reply, size, "err page %" PRIu64 " out of range (%" PRIu64 " pages)\n", page, pageCount);
    } else {
      const uint64_t* w = pageAt(page);
      snprintf(reply, size, "page %" PRIu64 " %" PRIu64 " %016" PRIx64 "\n", page, w[PAGECHECK_VERSION_WORD],
               pagecheckChecksum(w));
    }
  } else if (n == 1 && !strcmp(words[0], "C")) {
    snprintf(reply, size, "count %" PRIu64 "\n", writes);
  } else if (n == 1 && !strcmp(words[0], "S")) {
    snprintf(reply, size, "scan %" PRIu64 "\n", scanBadPages());
  } else {
    snprintf(reply, size, "err unknown request\n");
  }
}

// Serves one client until it goes. A line longer than MAX_LINE is answered
// with one err and skipped up to its newline.
static void serve(int client) {
  char buf[4096], line[MAX_LINE + 1], reply[160];
  size_t len = 0;
  int overlong = 0;
  for (;;) {
    ssize_t got = read(client, buf, sizeof buf);
    if (got < 0 && errno == EINTR) continue;
    if (got <= 0) return;
    for (ssize_t i = 0; i < got; ++i) {
      char c = buf[i];
      if (c != '\n') {
        if (len < MAX_LINE) line[len++] = c;
        else overlong = 1;
        continue;
      }
      if (len > 0 && line[len - 1] == '\r') --len;
      line[len] = '\0';
      if (overlong) snprintf(reply, sizeof reply, "err line longer than %d bytes\n", MAX_LINE);
      else handle(line, reply, sizeof reply);
      sendAll(client, reply, strlen(reply));
      len = 0;
      overlong = 0;
    }
  }
}

int main(int argc, char** argv) {
  setvbuf(stdout, NULL, _IOLBF, 0);
  uint64_t port, mib;
  if (argc != 4 || !parseNumber(argv[1], &port) || port > 65535 || !parseNumber(argv[2], &mib) ||
      mib == 0 || mib > (UINT64_C(1) << 20) || !parseNumber(argv[3], &seed)) {
    fprintf(stderr, "usage: pagecheck PORT MIB SEED\n");
    return 2;
  }
  signal(SIGPIPE, SIG_IGN);
  pageCount = mib * 1024 * 1024 / PAGECHECK_PAGE_SIZE;
  memory = mmap(NULL, mib << 20, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (memory == MAP_FAILED) {
    perror("pagecheck: mmap");
    return 2;
  }
  for (uint64_t p = 0; p < pageCount; ++p) pagecheckFill(pageAt(p), seed, p, 0);

  int listener = socket(AF_INET, SOCK_STREAM, 0);
  int one = 1;
  setsockopt(listener, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port), .sin_addr.s_addr = htonl(INADDR_ANY)};
  if (listener < 0 || bind(listener, (struct sockaddr*)&addr, sizeof addr) < 0 || listen(listener, 16) < 0) {
    perror("pagecheck: bind/listen");
    return 1;
  }
  socklen_t addrLen = sizeof addr;
  getsockname(listener, (struct sockaddr*)&addr, &addrLen);
  port = ntohs(addr.sin_port);
  printf("ready %" PRIu64 " MiB %" PRIu64 " pages seed %" PRIu64 " port %" PRIu64 "\n", mib, pageCount, seed, port);
  for (;;) {
    int client = accept(listener, NULL, NULL);
    if (client < 0) continue;
    printf("client connected\n");
    serve(client);
    close(client);
    printf("client gone\n");
  }
}
