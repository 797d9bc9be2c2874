/* test_fileio.c - engine/fileio.c: a directory swapped in for an existing
 * one (RENAME_EXCHANGE) leaves the old one under the temporary name, a
 * commit over an existing directory is refused, gzip streams must be whole
 * (a stream cut after its last line is an error, as is a .gz that is not
 * gzip), the newest mtime of a directory and the pid probe. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include <zlib.h>
#include "fsdp.h"
#include "check.h"

static char dir[] = "/tmp/fsdp_test_fileio_XXXXXX";

static const char *at(const char *name) {
    static char buf[4][512];
    static int k;
    k = (k + 1) % 4;
    snprintf(buf[k], sizeof buf[k], "%s/%s", dir, name);
    return buf[k];
}

static void put(const char *path, const void *data, size_t n) {
    FILE *f = fopen(path, "wb");
    if (!f || fwrite(data, 1, n, f) != n) { perror(path); exit(2); }
    fclose(f);
}

static char *get(const char *path) {
    static char buf[256];
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = 0;
    return buf;
}

static void test_dirs(void) {
    mkdir(at("step"), 0755);
    put(at("step/f"), "old", 3);
    mkdir(at("tmp"), 0755);
    put(at("tmp/f"), "new", 3);
    CHECK(fsdp_dir_commit(at("tmp"), at("step")) != FSDP_OK && strstr(fsdp_last_error(), "already exists"),
          "commit over an existing step: %s", fsdp_last_error());
    CHECK(fsdp_dir_replace(at("tmp"), at("step")) == FSDP_OK, "replace: %s", fsdp_last_error());
    char *s = get(at("step/f"));
    CHECK(s && strcmp(s, "new") == 0, "the new step is in place: %s", s ? s : "(missing)");
    s = get(at("tmp/f"));
    CHECK(s && strcmp(s, "old") == 0, "the old step is under the temporary name: %s", s ? s : "(missing)");
    /* without an existing target, replace is a commit */
    CHECK(fsdp_dir_replace(at("tmp"), at("step2")) == FSDP_OK && get(at("step2/f")), "replace into nothing: %s",
          fsdp_last_error());
    CHECK(fsdp_path_newest_mtime(at("step")) >= (int64_t)time(NULL) - 60, "newest mtime of a fresh directory");
    CHECK(fsdp_path_newest_mtime(at("nothing")) == -1 && strstr(fsdp_last_error(), "cannot stat"), "mtime of nothing");
    CHECK(fsdp_pid_alive(getpid()) == 1 && fsdp_pid_alive(0) == 0 && fsdp_pid_alive(1LL << 40) == 0, "pid probe");
}

static void test_gzip(void) {
    char text[4096];
    size_t n = 0;
    for (int i = 0; i < 100; i++) n += (size_t)snprintf(text + n, sizeof text - n, "{\"text\": \"line %d\"}\n", i);
    uLongf cap = compressBound(n) + 64;
    unsigned char *gz = malloc(cap);
    /* a gzip stream: deflate with a gzip wrapper (windowBits 31) */
    z_stream z = {0};
    deflateInit2(&z, 6, Z_DEFLATED, 31, 8, Z_DEFAULT_STRATEGY);
    z.next_in = (unsigned char *)text; z.avail_in = (uInt)n;
    z.next_out = gz; z.avail_out = (uInt)cap;
    deflate(&z, Z_FINISH);
    size_t gz_n = z.total_out;
    deflateEnd(&z);

    char *out = NULL;
    int64_t len = 0;
    put(at("whole.jsonl.gz"), gz, gz_n);
    CHECK(fsdp_file_read_all(at("whole.jsonl.gz"), &out, &len) == FSDP_OK && len == (int64_t)n &&
          memcmp(out, text, n) == 0, "a whole stream reads: %s", fsdp_last_error());
    fsdp_free(out);
    /* the 8-byte trailer gone: every line is there, the stream is not whole */
    put(at("cut.jsonl.gz"), gz, gz_n - 8);
    out = NULL;
    CHECK(fsdp_file_read_all(at("cut.jsonl.gz"), &out, &len) == FSDP_ERR_FORMAT && out == NULL &&
          strstr(fsdp_last_error(), "cut.jsonl.gz") && strstr(fsdp_last_error(), "truncated"),
          "a stream cut at a line boundary: %s", fsdp_last_error());
    put(at("plain.jsonl.gz"), text, n);
    CHECK(fsdp_file_read_all(at("plain.jsonl.gz"), &out, &len) == FSDP_ERR_FORMAT &&
          strstr(fsdp_last_error(), "not gzip"), ".gz that is not gzip: %s", fsdp_last_error());
    put(at("plain.jsonl"), text, n);
    out = NULL;
    CHECK(fsdp_file_read_all(at("plain.jsonl"), &out, &len) == FSDP_OK && len == (int64_t)n, "plain file: %s",
          fsdp_last_error());
    fsdp_free(out);
    free(gz);
}

int main(void) {
    if (!mkdtemp(dir)) { perror("mkdtemp"); return 2; }
    test_dirs();
    test_gzip();
    if (!check_failures) {
        char cmd[600];
        snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
        if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", dir);
    }
    return check_exit("test_fileio");
}
