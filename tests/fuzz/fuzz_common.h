/* fuzz_common.h - what the fuzz targets share: the input as a file (a
 * memfd, named /proc/self/fd/N, for the readers that take a path and mmap). */
#ifndef FSDP_FUZZ_COMMON_H
#define FSDP_FUZZ_COMMON_H
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <unistd.h>

/* the input as the whole content of a file; the same file every call */
static const char *fuzz_input_file(const uint8_t *data, size_t size) {
    static int fd = -1;
    static char path[64];
    if (fd < 0) {
        fd = memfd_create("fsdp-fuzz", 0);
        if (fd < 0) { perror("memfd_create"); abort(); }
        snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
    }
    if (ftruncate(fd, 0) != 0 || (size && pwrite(fd, data, size, 0) != (ssize_t)size)) { perror("memfd"); abort(); }
    return path;
}
#endif
