/* fileio.c - checksums and crash-safe writes.
 *
 * A file is written to "<path>.tmp", fsynced, renamed over <path>, and the
 * directory is fsynced so the rename itself survives a crash: a reader sees
 * either the old file or the complete new one, never a torn mix. A checkpoint
 * directory is built under a temporary name and committed with one rename. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>
#include "internal.h"

enum { CHUNK = 1 << 20, MAX_IO = 1 << 30 };

uint32_t fsdp_crc32(uint32_t crc, const void *data, int64_t n) {
    const unsigned char *p = data;
    while (n > 0) {
        uInt len = (uInt)(n < MAX_IO ? n : MAX_IO);
        crc = (uint32_t)crc32(crc, p, len);
        p += len;
        n -= len;
    }
    return crc;
}

int64_t fsdp_file_crc32(const char *path) {
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        fsdp_error(FSDP_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
        return -1;
    }
    unsigned char *buf = malloc(CHUNK);
    if (!buf) {
        close(fd);
        fsdp_error(FSDP_ERR_OOM, "%s: no memory for a read buffer", path);
        return -1;
    }
    uint32_t crc = 0;
    int64_t result = -1;
    for (;;) {
        ssize_t got = read(fd, buf, CHUNK);
        if (got < 0 && errno == EINTR) continue;
        if (got < 0) { fsdp_error(FSDP_ERR_IO, "%s: read failed: %s", path, strerror(errno)); break; }
        if (got == 0) { result = crc; break; }
        crc = fsdp_crc32(crc, buf, got);
    }
    free(buf);
    close(fd);
    return result;
}

static int write_all(int fd, const void *data, int64_t n) {
    const char *p = data;
    while (n > 0) {
        ssize_t put = write(fd, p, (size_t)(n < MAX_IO ? n : MAX_IO));
        if (put < 0 && errno == EINTR) continue;
        if (put < 0) return -1;
        p += put;
        n -= put;
    }
    return 0;
}

/* fsyncs the directory that holds path, so a rename into it is durable */
static int fsync_parent(const char *path) {
    char *dir = strdup(path);
    if (!dir) return fsdp_error(FSDP_ERR_OOM, "%s: out of memory", path);
    char *slash = strrchr(dir, '/');
    if (!slash) strcpy(dir, ".");
    else if (slash == dir) slash[1] = 0;   /* a file in "/" */
    else *slash = 0;
    int status = FSDP_OK;
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0) status = fsdp_error(FSDP_ERR_IO, "%s: cannot open directory: %s", dir, strerror(errno));
    else if (fsync(fd) != 0 && errno != EINVAL)   /* some file systems cannot sync directories */
        status = fsdp_error(FSDP_ERR_IO, "%s: fsync of directory failed: %s", dir, strerror(errno));
    if (fd >= 0) close(fd);
    free(dir);
    return status;
}

int fsdp_file_write_parts(const char *path, int nparts, const void *const *parts,
                          const int64_t *sizes) {
    FSDP_CHECK_ARG(path && *path, "write: empty path");
    size_t len = strlen(path);
    char *tmp = malloc(len + 5);
    if (!tmp) return fsdp_error(FSDP_ERR_OOM, "%s: out of memory", path);
    memcpy(tmp, path, len);
    memcpy(tmp + len, ".tmp", 5);
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) {
        int status = fsdp_error(FSDP_ERR_IO, "%s: cannot create: %s", tmp, strerror(errno));
        free(tmp);
        return status;
    }
    const char *failed = NULL;
    for (int i = 0; i < nparts && !failed; i++)
        if (sizes[i] > 0 && write_all(fd, parts[i], sizes[i]) != 0) failed = "write";
    if (!failed && fsync(fd) != 0) failed = "fsync";
    int err = errno;
    if (close(fd) != 0 && !failed) { failed = "close"; err = errno; }
    if (!failed && rename(tmp, path) != 0) { failed = "rename"; err = errno; }
    if (failed) {
        int status = fsdp_error(FSDP_ERR_IO, "%s: %s failed: %s", tmp, failed, strerror(err));
        unlink(tmp);
        free(tmp);
        return status;
    }
    free(tmp);
    return fsync_parent(path);
}

int fsdp_file_write_atomic(const char *path, const void *data, int64_t n) {
    FSDP_CHECK_ARG(n >= 0 && (data || n == 0), "%s: write of %lld bytes from NULL", path ? path : "(null)",
                   (long long)n);
    return fsdp_file_write_parts(path, 1, &data, &n);
}

int fsdp_dir_commit(const char *tmp_path, const char *final_path) {
    FSDP_CHECK_ARG(tmp_path && final_path, "dir commit: NULL path");
    struct stat st;
    if (stat(tmp_path, &st) != 0 || !S_ISDIR(st.st_mode))
        return fsdp_error(FSDP_ERR_IO, "%s: not a directory, cannot commit it", tmp_path);
    /* the entries of the directory itself must be durable before it appears */
    int fd = open(tmp_path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0) return fsdp_error(FSDP_ERR_IO, "%s: cannot open: %s", tmp_path, strerror(errno));
    int synced = fsync(fd) == 0 || errno == EINVAL;
    close(fd);
    if (!synced) return fsdp_error(FSDP_ERR_IO, "%s: fsync failed: %s", tmp_path, strerror(errno));
    /* RENAME_NOREPLACE refuses an existing target atomically; plain rename()
     * would silently replace an empty directory */
    if (renameat2(AT_FDCWD, tmp_path, AT_FDCWD, final_path, RENAME_NOREPLACE) != 0) {
        if (errno == EEXIST)
            return fsdp_error(FSDP_ERR_IO, "%s: already exists, not replacing it with %s", final_path,
                              tmp_path);
        if (errno != EINVAL)
            return fsdp_error(FSDP_ERR_IO, "%s: rename to %s failed: %s", tmp_path, final_path,
                              strerror(errno));
        /* file system without RENAME_NOREPLACE: check, then rename */
        if (lstat(final_path, &st) == 0)
            return fsdp_error(FSDP_ERR_IO, "%s: already exists, not replacing it with %s", final_path,
                              tmp_path);
        if (rename(tmp_path, final_path) != 0)
            return fsdp_error(FSDP_ERR_IO, "%s: rename to %s failed: %s", tmp_path, final_path,
                              strerror(errno));
    }
    return fsync_parent(final_path);
}

/* reads a file whole through zlib's gz reader, which passes plain files
 * through unchanged and inflates gzip ones */
int fsdp_file_read_all(const char *path, char **out, int64_t *len) {
    *out = NULL;
    *len = 0;
    gzFile gz = gzopen(path, "rb");
    if (!gz) return fsdp_error(FSDP_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
    int64_t cap = 1 << 20, n = 0;
    char *buf = malloc((size_t)cap);
    if (!buf) { gzclose(gz); return fsdp_error(FSDP_ERR_OOM, "%s: out of memory", path); }
    for (;;) {
        if (n == cap) {
            char *bigger = realloc(buf, (size_t)(cap * 2));
            if (!bigger) { free(buf); gzclose(gz); return fsdp_error(FSDP_ERR_OOM, "%s: out of memory at %lld bytes", path, (long long)n); }
            buf = bigger;
            cap *= 2;
        }
        int want = (int)((cap - n) < (1 << 30) ? (cap - n) : (1 << 30));
        int got = gzread(gz, buf + n, (unsigned)want);
        if (got < 0) {
            int code;
            const char *msg = gzerror(gz, &code);
            int status = fsdp_error(FSDP_ERR_FORMAT, "%s: cannot decompress after %lld bytes: %s", path, (long long)n, msg);
            free(buf);
            gzclose(gz);
            return status;
        }
        if (got == 0) break;
        n += got;
    }
    gzclose(gz);
    *out = buf;
    *len = n;
    return FSDP_OK;
}

void fsdp_free(void *p) { free(p); }
