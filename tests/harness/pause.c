/*
 * The pod sandbox's first process for Revmesh's node tests (image
 * revmesh.local/pause): it holds the pod's namespaces, reaps the orphans
 * the kernel hands to it as PID 1, and exits on SIGTERM or SIGINT.
 * Built with `gcc -static` by tests/harness/images.py.
 */
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

static volatile sig_atomic_t stop_signal;

static void on_stop(int sig) { stop_signal = sig; }

static void on_child(int sig) {
    (void)sig;
    while (waitpid(-1, NULL, WNOHANG) > 0) {
    }
}

int main(int argc, char **argv) {
    if (argc > 1 && (strcmp(argv[1], "-v") == 0 || strcmp(argv[1], "--version") == 0)) {
        puts("revmesh pause 3.2");
        return 0;
    }
    if (getpid() != 1) {
        fprintf(stderr, "pause: running as pid %d; orphans are reaped only when it runs as pid 1\n", (int)getpid());
    }

    struct sigaction action;
    memset(&action, 0, sizeof action);
    action.sa_handler = on_stop;
    sigaction(SIGTERM, &action, NULL);
    sigaction(SIGINT, &action, NULL);
    action.sa_handler = on_child;
    action.sa_flags = SA_NOCLDSTOP | SA_RESTART;
    sigaction(SIGCHLD, &action, NULL);

    /* Signals stay blocked except inside sigsuspend, so a SIGTERM that
     * arrives between the check and the wait cannot be missed. */
    sigset_t blocked, waiting;
    sigemptyset(&blocked);
    sigaddset(&blocked, SIGTERM);
    sigaddset(&blocked, SIGINT);
    sigaddset(&blocked, SIGCHLD);
    sigprocmask(SIG_BLOCK, &blocked, &waiting);
    sigdelset(&waiting, SIGTERM);
    sigdelset(&waiting, SIGINT);
    sigdelset(&waiting, SIGCHLD);
    while (!stop_signal) {
        sigsuspend(&waiting);
    }
    fprintf(stderr, "pause: signal %d, exiting\n", (int)stop_signal);
    return 0;
}
