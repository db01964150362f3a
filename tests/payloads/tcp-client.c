// Test client: streams numbered messages to an echo server over ONE TCP
// connection and checks that every reply is exactly the message sent, in
// order: no byte lost, duplicated or reordered. Runs until SIGTERM/SIGINT or
// DURATION seconds, then prints a JSON summary and exits 0 only if the
// connection stayed up and every reply matched. While it runs, "verified N"
// lines on stderr (at most every 100 ms) say how far it got, for a test to
// wait on.
// usage: tcp-client IP PORT [DURATION_S] [INTERVAL_MS]
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

static volatile sig_atomic_t stop;
static void onSignal(int sig) { (void)sig; stop = 1; }

static double now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec + ts.tv_nsec / 1e9;
}

int main(int argc, char** argv) {
  if (argc < 3) {
    fprintf(stderr, "usage: tcp-client IP PORT [DURATION_S] [INTERVAL_MS]\n");
    return 2;
  }
  setvbuf(stdout, NULL, _IOLBF, 0);
  double duration = argc > 3 ? atof(argv[3]) : 1e9;
  int intervalMs = argc > 4 ? atoi(argv[4]) : 20;
  struct sigaction sa = {0};
  sa.sa_handler = onSignal;  // no SA_RESTART: a blocked read returns EINTR
  sigaction(SIGTERM, &sa, NULL);
  sigaction(SIGINT, &sa, NULL);

  int fd = socket(AF_INET, SOCK_STREAM, 0);
  struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons(atoi(argv[2]))};
  inet_pton(AF_INET, argv[1], &addr.sin_addr);
  double start = now();
  int connected = -1;
  while (now() - start < 10 && !stop) {  // the server may still be starting
    if ((connected = connect(fd, (struct sockaddr*)&addr, sizeof addr)) == 0) break;
    close(fd);
    fd = socket(AF_INET, SOCK_STREAM, 0);
    usleep(100000);
  }
  if (connected != 0) {
    printf("{\"error\": \"connect: %s\", \"sent\": 0, \"verified\": 0}\n", strerror(errno));
    return 1;
  }
  int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  struct timeval replyTimeout = {30, 0};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &replyTimeout, sizeof replyTimeout);
  fprintf(stderr, "tcp-client: connected to %s:%s\n", argv[1], argv[2]);

  unsigned long sent = 0, verified = 0;
  double lastReply = now(), maxStall = 0, lastProgress = 0;
  const char* error = NULL;
  char msg[64], reply[64];
  start = now();
  while (!stop && now() - start < duration) {
    int len = snprintf(msg, sizeof msg, "msg %lu\n", sent + 1);
    if (write(fd, msg, len) != len) {
      error = "write failed";
      break;
    }
    ++sent;
    int got = 0;
    while (got < len) {
      ssize_t n = read(fd, reply + got, len - got);
      // A stop request waits for the reply in flight (bounded by SO_RCVTIMEO),
      // so `sent == verified` holds for a clean stop.
      if (n < 0 && errno == EINTR) continue;
      if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
        error = "no reply within 30 s";
        break;
      }
      if (n <= 0) {
        error = n == 0 ? "connection closed by peer" : strerror(errno);
        break;
      }
      got += n;
    }
    if (error || got < len) break;
    if (memcmp(msg, reply, len) != 0) {
      error = "reply does not match the message sent";
      break;
    }
    ++verified;
    double t = now();
    if (t - lastReply > maxStall) maxStall = t - lastReply;
    lastReply = t;
    if (t - lastProgress >= 0.1) {
      fprintf(stderr, "verified %lu\n", verified);
      lastProgress = t;
    }
    usleep(intervalMs * 1000);
  }
  printf("{\"sent\": %lu, \"verified\": %lu, \"maxStallMs\": %.1f, \"error\": %s%s%s}\n", sent, verified,
         maxStall * 1000, error ? "\"" : "", error ? error : "null", error ? "\"" : "");
  close(fd);
  return error ? 1 : 0;
}
