/* fileio.c - checksums and crash-safe writes.
 *
 * A file is written to "<path>.tmp", fsynced, renamed over <path>, and the
 * directory is fsynced so the rename itself survives a crash: a reader sees
 * either the old file or the complete new one, never a torn mix. A checkpoint
 * directory is built under a temporary name and committed with one rename. */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
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

/* swaps a complete new directory in for an existing one in one step
 * (RENAME_EXCHANGE): a reader sees the old step or the new one, never
 * neither. Afterwards tmp_path holds the old directory, for the caller to
 * remove. Without an existing final_path this is fsdp_dir_commit. */
int fsdp_dir_replace(const char *tmp_path, const char *final_path) {
    FSDP_CHECK_ARG(tmp_path && final_path, "dir replace: NULL path");
    struct stat st;
    if (lstat(final_path, &st) != 0) return fsdp_dir_commit(tmp_path, final_path);
    if (!S_ISDIR(st.st_mode))
        return fsdp_error(FSDP_ERR_IO, "%s: exists and is not a directory, not replacing it", final_path);
    int fd = open(tmp_path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0) return fsdp_error(FSDP_ERR_IO, "%s: cannot open: %s", tmp_path, strerror(errno));
    int synced = fsync(fd) == 0 || errno == EINVAL;
    close(fd);
    if (!synced) return fsdp_error(FSDP_ERR_IO, "%s: fsync failed: %s", tmp_path, strerror(errno));
    if (renameat2(AT_FDCWD, tmp_path, AT_FDCWD, final_path, RENAME_EXCHANGE) != 0) {
        if (errno != EINVAL && errno != ENOSYS)
            return fsdp_error(FSDP_ERR_IO, "%s: exchange with %s failed: %s", tmp_path, final_path, strerror(errno));
        /* no RENAME_EXCHANGE here: move the old one aside under a name the
         * start-up pruning restores if we die before the new one is in */
        size_t len = strlen(final_path);
        char *aside = malloc(len + 64);
        if (!aside) return fsdp_error(FSDP_ERR_OOM, "%s: out of memory", final_path);
        const char *base = strrchr(final_path, '/');
        base = base ? base + 1 : final_path;
        snprintf(aside, len + 64, "%.*s.%s.old-%d", (int)(base - final_path), final_path, base, (int)getpid());
        int status = FSDP_OK;
        if (rename(final_path, aside) != 0)
            status = fsdp_error(FSDP_ERR_IO, "%s: rename to %s failed: %s", final_path, aside, strerror(errno));
        else if ((status = fsdp_dir_commit(tmp_path, final_path)) != FSDP_OK) {
            if (rename(aside, final_path) != 0) { /* leave it for the pruning to restore */ }
        } else if (rename(aside, tmp_path) != 0)
            status = fsdp_error(FSDP_ERR_IO, "%s: rename to %s failed: %s", aside, tmp_path, strerror(errno));
        free(aside);
        return status;
    }
    return fsync_parent(final_path);
}

/* the newest modification time (seconds since the epoch) of a path and, for
 * a directory, of the entries directly in it; -1 with an error when the
 * path cannot be read */
int64_t fsdp_path_newest_mtime(const char *path) {
    if (!path) {
        fsdp_error(FSDP_ERR_INVALID, "mtime: NULL path");
        return -1;
    }
    struct stat st;
    if (lstat(path, &st) != 0) {
        fsdp_error(FSDP_ERR_IO, "%s: cannot stat: %s", path, strerror(errno));
        return -1;
    }
    int64_t newest = st.st_mtime;
    if (!S_ISDIR(st.st_mode)) return newest;
    DIR *d = opendir(path);
    if (!d) return newest;
    struct dirent *e;
    while ((e = readdir(d))) {
        if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0) continue;
        struct stat es;
        if (fstatat(dirfd(d), e->d_name, &es, AT_SYMLINK_NOFOLLOW) == 0 && es.st_mtime > newest)
            newest = es.st_mtime;
    }
    closedir(d);
    return newest;
}

/* 1 when a process with this id runs on this host, 0 when none does */
int fsdp_pid_alive(int64_t pid) {
    if (pid <= 0 || pid > INT32_MAX) return 0;
    return kill((pid_t)pid, 0) == 0 || errno == EPERM;
}

/* reads a file whole through zlib's gz reader, which passes plain files
 * through unchanged and inflates gzip ones; a gzip stream must be complete
 * (its end and CRC read), and a .gz name must hold gzip data */
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
    /* gzread reports a stream cut short (Z_BUF_ERROR, "unexpected end of
     * file") only through gzerror: without this a .gz truncated at a line
     * boundary would read as a shorter, valid file */
    int code = Z_OK;
    const char *msg = gzerror(gz, &code);
    int status = FSDP_OK;
    size_t plen = strlen(path);
    if (msg && strncmp(msg, path, plen) == 0 && strncmp(msg + plen, ": ", 2) == 0) msg += plen + 2;
    if (code != Z_OK)
        status = fsdp_error(FSDP_ERR_FORMAT, "%s: the gzip stream is incomplete after %lld bytes (%s): the file is truncated",
                            path, (long long)n, msg);
    else if (plen > 3 && strcmp(path + plen - 3, ".gz") == 0 && gzdirect(gz))
        status = fsdp_error(FSDP_ERR_FORMAT, "%s: named .gz but not gzip data", path);
    int closed = gzclose(gz);
    if (status == FSDP_OK && closed != Z_OK)
        status = fsdp_error(FSDP_ERR_FORMAT, "%s: the gzip stream is incomplete after %lld bytes (zlib status %d): the file is truncated",
                            path, (long long)n, closed);
    if (status != FSDP_OK) {
        free(buf);
        return status;
    }
    *out = buf;
    *len = n;
    return FSDP_OK;
}

void fsdp_free(void *p) { free(p); }
