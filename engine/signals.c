/* signals.c - record signals for the Lua side to poll. The handler only
 * stores the number (async-signal-safe); nothing runs inside it. */
#include <signal.h>
#include <string.h>
#include <errno.h>
#include "internal.h"

static volatile sig_atomic_t pending_signal;

static void record(int signum) { pending_signal = signum; }

int fsdp_signal_watch(int signum) {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = record;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = SA_RESTART;
    if (sigaction(signum, &sa, NULL) != 0)
        return fsdp_error(FSDP_ERR_INVALID, "signal_watch: cannot watch signal %d: %s", signum, strerror(errno));
    return FSDP_OK;
}

int fsdp_signal_pending(int clear) {
    int s = pending_signal;
    if (clear) pending_signal = 0;
    return s;
}
