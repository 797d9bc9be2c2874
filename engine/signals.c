/* signals.c - record signals for the Lua side to poll. The handler only
 * stores the number and, for a signal marked as an interrupt, sets the
 * collectives' interrupt flag (fsdp_comm_interrupt: a store, so
 * async-signal-safe); nothing else runs inside it. */
#include <signal.h>
#include <string.h>
#include <errno.h>
#include "internal.h"

static volatile sig_atomic_t pending_signal;
static volatile sig_atomic_t interrupt_signal; /* this signal also interrupts waits */

static void record(int signum) {
    pending_signal = signum;
    if (signum == interrupt_signal) fsdp_comm_interrupt();
}

static int watch(int signum, int flags, const char *fn) {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = record;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = SA_RESTART | flags;
    if (sigaction(signum, &sa, NULL) != 0)
        return fsdp_error(FSDP_ERR_INVALID, "%s: cannot watch signal %d: %s", fn, signum, strerror(errno));
    /* a launcher may have started this process with the signal blocked
     * (fsdp-lua -i under its launcher blocks SIGINT for mpiexec): a watched
     * signal must arrive */
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, signum);
    sigprocmask(SIG_UNBLOCK, &set, NULL);
    return FSDP_OK;
}

int fsdp_signal_watch(int signum) { return watch(signum, 0, "signal_watch"); }

int fsdp_signal_watch_once(int signum) { return watch(signum, SA_RESETHAND, "signal_watch_once"); }

int fsdp_signal_interrupts(int signum) {
    interrupt_signal = signum;
    return FSDP_OK;
}

int fsdp_signal_pending(int clear) {
    int s = pending_signal;
    if (clear) pending_signal = 0;
    return s;
}

int fsdp_signal_block(int signum, int block) {
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, signum);
    if (sigprocmask(block ? SIG_BLOCK : SIG_UNBLOCK, &set, NULL) != 0)
        return fsdp_error(FSDP_ERR_INVALID, "signal_block: signal %d: %s", signum, strerror(errno));
    return FSDP_OK;
}
