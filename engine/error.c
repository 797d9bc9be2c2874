/* error.c - the last-error message, one per thread. */
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include "internal.h"

static __thread char last_error[1024];

const char *fsdp_last_error(void) { return last_error; }
void fsdp_clear_error(void) { last_error[0] = 0; }

static void set_message(const char *fmt, va_list ap) {
    vsnprintf(last_error, sizeof last_error, fmt, ap);
}

int fsdp_error(int code, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    set_message(fmt, ap);
    va_end(ap);
    return code;
}

void *fsdp_error_null(int code, const char *fmt, ...) {
    va_list ap;
    (void)code;
    va_start(ap, fmt);
    set_message(fmt, ap);
    va_end(ap);
    return NULL;
}

int fsdp_abi_version(void) { return FSDP_ABI_VERSION; }

int64_t fsdp_struct_size(const char *name) {
    static const struct { const char *name; int64_t size; } table[] = {
        {"fsdp_tensor", sizeof(fsdp_tensor)},
        {"fsdp_mem_stats", sizeof(fsdp_mem_stats)},
        {"fsdp_rng", sizeof(fsdp_rng)},
        {"fsdp_st_info", sizeof(fsdp_st_info)},
        {"fsdp_token_file", sizeof(fsdp_token_file)},
    };
    for (size_t i = 0; i < sizeof table / sizeof table[0]; i++)
        if (strcmp(table[i].name, name) == 0) return table[i].size;
    return -1;
}
