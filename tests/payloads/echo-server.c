// Test payload: TCP echo server (one thread of control, poll over all
// clients). usage: echo-server PORT
#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define MAX_CLIENTS 64

int main(int argc, char** argv) {
  setvbuf(stdout, NULL, _IOLBF, 0);
  int port = argc > 1 ? atoi(argv[1]) : 7777;
  int listener = socket(AF_INET, SOCK_STREAM, 0);
  int one = 1;
  setsockopt(listener, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons(port), .sin_addr.s_addr = htonl(INADDR_ANY)};
  if (bind(listener, (struct sockaddr*)&addr, sizeof addr) < 0 || listen(listener, 16) < 0) {
    perror("echo-server: bind/listen");
    return 1;
  }
  printf("listening %d\n", port);
  struct pollfd fds[MAX_CLIENTS + 1];
  int n = 1;
  fds[0].fd = listener;
  fds[0].events = POLLIN;
  char buf[65536];
  for (;;) {
    if (poll(fds, n, -1) < 0) continue;
    if ((fds[0].revents & POLLIN) && n <= MAX_CLIENTS) {
      int c = accept(listener, NULL, NULL);
      if (c >= 0) {
        fds[n].fd = c;
        fds[n].events = POLLIN;
        ++n;
        printf("client connected\n");
      }
    }
    for (int i = 1; i < n; ++i) {
      if (!(fds[i].revents & (POLLIN | POLLHUP | POLLERR))) continue;
      ssize_t got = read(fds[i].fd, buf, sizeof buf);
      if (got <= 0) {
        close(fds[i].fd);
        fds[i] = fds[--n];
        --i;
        printf("client gone\n");
        continue;
      }
      for (ssize_t off = 0; off < got;) {
        ssize_t w = write(fds[i].fd, buf + off, got - off);
        if (w <= 0) break;
        off += w;
      }
    }
  }
}
