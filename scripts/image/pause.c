/* The pod sandbox's process: it holds the pod's namespaces open, and does nothing else.
 * Sleeps until SIGINT or SIGTERM (then exits 0, as the kubelet's StopPodSandbox expects),
 * and reaps any child that ends up re-parented to it (it is PID 1 of a pod that shares its
 * PID namespace). Built static (scripts/image/pause.sh), so the image holds this file only.
 * Behaves as registry.k8s.io/pause's pause.c; -v prints the version. */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#ifndef VERSION
#define VERSION "3.10"
#endif

static void on_stop(int sig) {
  /* Only async-signal-safe calls here. */
  static const char msg[] = "pause: shutting down\n";
  (void)sig;
  (void)!write(STDERR_FILENO, msg, sizeof msg - 1);
  _exit(0);
}

static void on_child(int sig) {
  (void)sig;
  while (waitpid(-1, NULL, WNOHANG) > 0) {
  }
}

int main(int argc, char **argv) {
  if (argc > 1 && strcmp(argv[1], "-v") == 0) {
    printf("pause.c %s (corral)\n", VERSION);
    return 0;
  }
  if (getpid() != 1) {
    /* Not an error: it still works, but orphans of the pod are not reaped by it. */
    fprintf(stderr, "pause: warning: not PID 1\n");
  }
  struct sigaction stop = {.sa_handler = on_stop};
  sigemptyset(&stop.sa_mask);
  struct sigaction child = {.sa_handler = on_child, .sa_flags = SA_NOCLDSTOP | SA_RESTART};
  sigemptyset(&child.sa_mask);
  if (sigaction(SIGINT, &stop, NULL) < 0 || sigaction(SIGTERM, &stop, NULL) < 0 ||
      sigaction(SIGCHLD, &child, NULL) < 0) {
    perror("pause: sigaction");
    return 1;
  }
  for (;;) {
    pause();
  }
}
