/* test_interrupt.c — fm_interrupt_catch: the first SIGINT / SIGTERM is
 * noted, a second one stops the process as the default handler would, and
 * catch(0) gives the signals back. */
#include "fmseg.h"
#include "tap.h"

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

/* In a child: catch, raise sig twice; how the child ends. */
static int twice_in_child(int sig) {
  pid_t pid = fork();
  if (pid == 0) {
    fm_interrupt_catch(1);
    raise(sig);
    if (fm_interrupt_pending() != sig) _exit(3);
    raise(sig);
    _exit(4);   /* not reached: the second signal kills */
  }
  int status = 0;
  waitpid(pid, &status, 0);
  return status;
}

int main(void) {
  ok(fm_interrupt_pending() == 0, "nothing pending before any signal");
  ok(fm_interrupt_catch(1) == 0, "catch(1) installs the handlers");
  raise(SIGTERM);
  ok(fm_interrupt_pending() == SIGTERM, "SIGTERM is noted, the process lives on");
  ok(fm_interrupt_catch(1) == 0 && fm_interrupt_pending() == SIGTERM, "catch(1) again keeps what is pending");
  ok(fm_interrupt_catch(0) == 0, "catch(0) restores the previous handlers");
  ok(fm_interrupt_catch(1) == 0 && fm_interrupt_pending() == 0, "a new catch starts with nothing pending");
  fm_interrupt_catch(0);

  int st = twice_in_child(SIGINT);
  ok(WIFSIGNALED(st) && WTERMSIG(st) == SIGINT, "a second SIGINT stops the process as the default would");
  st = twice_in_child(SIGTERM);
  ok(WIFSIGNALED(st) && WTERMSIG(st) == SIGTERM, "a second SIGTERM too");

  pid_t pid = fork();
  if (pid == 0) {
    fm_interrupt_catch(1);
    fm_interrupt_catch(0);
    raise(SIGTERM);
    _exit(5);
  }
  int status = 0;
  waitpid(pid, &status, 0);
  ok(WIFSIGNALED(status) && WTERMSIG(status) == SIGTERM, "after catch(0) a signal acts as before");
  pid = fork();
  if (pid == 0) {
    signal(SIGINT, SIG_IGN);
    fm_interrupt_catch(1);
    raise(SIGINT);
    _exit(fm_interrupt_pending() == 0 ? 6 : 7);
  }
  waitpid(pid, &status, 0);
  ok(WIFEXITED(status) && WEXITSTATUS(status) == 6, "an inherited ignored SIGINT stays ignored");
  return done_testing();
}
