/* interrupt.c — SIGINT and SIGTERM during long work (an evaluation). While
 * caught, the first signal is only noted: the loop finishes the item in
 * flight, keeps what is done and stops. A second signal restores the
 * previous handlers and raises itself again, so an impatient user still
 * stops the process at once. A signal the process inherited as ignored
 * stays ignored. */
#include "internal.h"

#include <signal.h>
#include <string.h>

static volatile sig_atomic_t fm__pending;
static struct sigaction fm__previous[2];
static int fm__catching;
static const int fm__signals[2] = {SIGINT, SIGTERM};

static int fm__installed[2];

static void fm__restore(void) {
  for (int i = 0; i < 2; ++i)
    if (fm__installed[i]) sigaction(fm__signals[i], &fm__previous[i], NULL);
  fm__installed[0] = fm__installed[1] = 0;
  fm__catching = 0;
}

static void fm__on_signal(int sig) {
  if (fm__pending) {   /* the second one: behave as if we had never caught it */
    fm__restore();
    raise(sig);
    return;
  }
  fm__pending = sig;
}

int fm_interrupt_catch(int on) {
  if (on && !fm__catching) {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = fm__on_signal;
    sigemptyset(&sa.sa_mask);
    for (int i = 0; i < 2; ++i) {
      /* a signal the parent ignores (nohup, a shell's background job)
       * stays ignored */
      struct sigaction now;
      if (sigaction(fm__signals[i], NULL, &now) != 0)
        return fm__error("fm_interrupt_catch: sigaction failed");
      if (now.sa_handler == SIG_IGN) continue;
      if (sigaction(fm__signals[i], &sa, &fm__previous[i]) != 0)
        return fm__error("fm_interrupt_catch: sigaction failed");
      fm__installed[i] = 1;
    }
    fm__pending = 0;
    fm__catching = 1;
  } else if (!on && fm__catching) {
    fm__restore();
  }
  return 0;
}

int fm_interrupt_pending(void) { return (int)fm__pending; }
