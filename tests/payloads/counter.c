// Test payload: counts up every 100 ms and prints each value, so a restored
// container must print exactly last+1 next. Also keeps the value in memory
// only: a restart from zero is visible at once.
#include <stdio.h>
#include <time.h>

int main(void) {
  setvbuf(stdout, NULL, _IOLBF, 0);
  struct timespec tick = {0, 100 * 1000 * 1000};
  for (unsigned long n = 1;; ++n) {
    printf("count %lu\n", n);
    nanosleep(&tick, NULL);
  }
}
