/* tokens.c - tokenized datasets as flat binary files.
 *
 * A 1024-byte header of 256 int32 (little-endian):
 *   [0] magic 20240520   [1] version: 1 = uint16 tokens, 2 = uint32 tokens
 *   [2] token count, low 31 bits   [3] token count, the bits above those
 *   [4] vocab size, 0 when unknown, the rest zero
 * then the tokens. llm.c writes version 1 with the count in [2] and zeros
 * elsewhere, which is the same layout, so its files read as they are.
 * Files are memory-mapped. Opening checks the header (magic, version, zero
 * reserved fields), the size, and every id in one vectorised pass, so a bad
 * id is an error at start, not at the batch that holds it; reading a batch
 * copies a range out as int32. */
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>
#include "internal.h"

enum { TOKEN_MAGIC = 20240520, HEADER_INTS = 256, HEADER_BYTES = HEADER_INTS * 4 };

/* the largest id among n tokens: a max reduction the compiler vectorises,
 * over the cores (a 1 GB file is read at memory speed) */
static uint32_t max_token(const void *tokens, int64_t n, int token_bytes) {
    uint32_t max = 0;
    if (token_bytes == 2) {
        const uint16_t *p = tokens;
#pragma omp parallel for simd reduction(max : max) schedule(static) if (n > (1 << 22))
        for (int64_t i = 0; i < n; i++) max = p[i] > max ? p[i] : max;
    } else {
        const uint32_t *p = tokens;
#pragma omp parallel for simd reduction(max : max) schedule(static) if (n > (1 << 22))
        for (int64_t i = 0; i < n; i++) max = p[i] > max ? p[i] : max;
    }
    return max;
}

static uint32_t max_at(const void *tokens, int64_t i, int token_bytes) {
    return token_bytes == 2 ? ((const uint16_t *)tokens)[i] : ((const uint32_t *)tokens)[i];
}

/* the first position holding an id >= limit (only called when there is one) */
static int64_t first_at_least(const void *tokens, int64_t n, int token_bytes, uint32_t limit) {
    for (int64_t i = 0; i < n; i++)
        if (max_at(tokens, i, token_bytes) >= limit) return i;
    return -1;
}

int fsdp_tokens_open(fsdp_token_file *tf, const char *path) {
    FSDP_CHECK_ARG(tf && path, "tokens: NULL file or path");
    memset(tf, 0, sizeof *tf);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return fsdp_error(FSDP_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fd, &st) != 0) {
        close(fd);
        return fsdp_error(FSDP_ERR_IO, "%s: cannot stat: %s", path, strerror(errno));
    }
    if (!S_ISREG(st.st_mode)) {
        close(fd);
        return fsdp_error(FSDP_ERR_IO, "%s: not a regular file", path);
    }
    int32_t h[HEADER_INTS];
    if (st.st_size < HEADER_BYTES || pread(fd, h, sizeof h, 0) != (ssize_t)sizeof h) {
        close(fd);
        return fsdp_error(FSDP_ERR_FORMAT, "%s: %lld bytes, shorter than the %d-byte token file header", path,
                          (long long)st.st_size, HEADER_BYTES);
    }
    const char *bad = NULL;
    int bad_at = -1;
    if (h[0] != TOKEN_MAGIC) bad = "magic";
    else if (h[1] != 1 && h[1] != 2) bad = "version";
    else if (h[2] < 0 || h[3] < 0 || h[3] >= (1 << 30)) bad = "token count";
    else if (h[4] < 0) bad = "vocab size";
    else
        for (int i = 5; i < HEADER_INTS && !bad; i++)
            if (h[i] != 0) { bad = "reserved field"; bad_at = i; }
    if (bad) {
        close(fd);
        if (h[0] != TOKEN_MAGIC)
            return fsdp_error(FSDP_ERR_FORMAT, "%s: bad magic %d (expected %d): not a token file", path, h[0],
                              TOKEN_MAGIC);
        if (bad_at >= 0)
            return fsdp_error(FSDP_ERR_FORMAT,
                              "%s: bad reserved field in the header: int %d is %d, expected 0 (not a token file "
                              "this version reads)", path, bad_at, h[bad_at]);
        return fsdp_error(FSDP_ERR_FORMAT, "%s: bad %s in the header (version %d, count fields %d %d, vocab %d)",
                          path, bad, h[1], h[2], h[3], h[4]);
    }
    int token_bytes = h[1] == 1 ? 2 : 4;
    /* h[2] < 2^31 and h[3] < 2^30: n < 2^61, so n * 4 + 1024 fits uint64
     * (not int64: the size is compared without signed arithmetic) */
    int64_t n = (int64_t)h[2] | (int64_t)h[3] << 31;
    uint64_t expected = (uint64_t)n * (uint64_t)token_bytes + HEADER_BYTES;
    if ((uint64_t)st.st_size != expected) {
        close(fd);
        return fsdp_error(FSDP_ERR_FORMAT,
                          "%s: size mismatch: the header says %lld tokens of %d bytes (%llu bytes with the header) but the file has %lld bytes",
                          path, (long long)n, token_bytes, (unsigned long long)expected, (long long)st.st_size);
    }
    void *m = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
    close(fd);
    if (m == MAP_FAILED) return fsdp_error(FSDP_ERR_IO, "%s: mmap failed: %s", path, strerror(errno));
    const void *tokens = (const char *)m + HEADER_BYTES;
    /* every id is checked here, once, not in the batch that reads it */
    uint32_t limit = h[4] > 0 ? (uint32_t)h[4] : (uint32_t)INT32_MAX + 1;
    uint32_t max = max_token(tokens, n, token_bytes);
    if (n > 0 && max >= limit) {
        int64_t at = first_at_least(tokens, n, token_bytes, limit);
        uint32_t id = max_at(tokens, at, token_bytes);
        munmap(m, (size_t)st.st_size);
        if (h[4] > 0)
            return fsdp_error(FSDP_ERR_FORMAT, "%s: token %u at position %lld is not below the vocab size %d of the header",
                              path, id, (long long)at, h[4]);
        return fsdp_error(FSDP_ERR_FORMAT, "%s: token %u at position %lld does not fit an int32 id", path, id,
                          (long long)at);
    }
    tf->map_base = m;
    tf->map_len = st.st_size;
    tf->tokens = tokens;
    tf->n_tokens = n;
    tf->token_bytes = token_bytes;
    tf->vocab_size = h[4];
    tf->max_token = n > 0 ? (int64_t)max : -1;
    return FSDP_OK;
}

void fsdp_tokens_close(fsdp_token_file *tf) {
    if (!tf) return;
    if (tf->map_base) munmap(tf->map_base, (size_t)tf->map_len);
    memset(tf, 0, sizeof *tf);
}

int fsdp_tokens_read(const fsdp_token_file *tf, int32_t *out, int64_t start, int64_t n) {
    FSDP_CHECK_ARG(tf && tf->map_base, "tokens: file is not open");
    FSDP_CHECK_ARG(out || n == 0, "tokens: NULL output");
    FSDP_CHECK_ARG(start >= 0 && n >= 0 && start <= tf->n_tokens && n <= tf->n_tokens - start,
                   "tokens: range [%lld, %lld) outside the file's %lld tokens", (long long)start,
                   (long long)(start + n), (long long)tf->n_tokens);
    /* ids were checked when the file was opened */
    if (tf->token_bytes == 2) {
        const uint16_t *src = (const uint16_t *)tf->tokens + start;
        for (int64_t i = 0; i < n; i++) out[i] = src[i];
    } else {
        const uint32_t *src = (const uint32_t *)tf->tokens + start;
        for (int64_t i = 0; i < n; i++) out[i] = (int32_t)src[i];
    }
    return FSDP_OK;
}

int fsdp_tokens_write(const char *path, const int32_t *tokens, int64_t n, int token_bytes,
                      int vocab_size) {
    FSDP_CHECK_ARG(path, "tokens: NULL path");
    FSDP_CHECK_ARG(token_bytes == 2 || token_bytes == 4, "%s: token width %d bytes, expected 2 or 4", path,
                   token_bytes);
    FSDP_CHECK_ARG(n >= 0 && (tokens || n == 0), "%s: %lld tokens from NULL", path, (long long)n);
    FSDP_CHECK_ARG(vocab_size >= 0, "%s: negative vocab size %d", path, vocab_size);
    FSDP_CHECK_ARG(n < ((int64_t)1 << 61), "%s: %lld tokens is too many", path, (long long)n);
    for (int64_t i = 0; i < n; i++) {
        int32_t t = tokens[i];
        if (t < 0)
            return fsdp_error(FSDP_ERR_INVALID, "%s: token %d at position %lld is negative", path, t, (long long)i);
        if (token_bytes == 2 && t > UINT16_MAX)
            return fsdp_error(FSDP_ERR_INVALID, "%s: token %d at position %lld does not fit in uint16 (max %d)",
                              path, t, (long long)i, UINT16_MAX);
        if (vocab_size > 0 && t >= vocab_size)
            return fsdp_error(FSDP_ERR_INVALID, "%s: token %d at position %lld is not below the vocab size %d",
                              path, t, (long long)i, vocab_size);
    }

    int32_t header[HEADER_INTS] = {TOKEN_MAGIC, token_bytes == 2 ? 1 : 2, (int32_t)(n & INT32_MAX),
                                   (int32_t)(n >> 31), vocab_size};
    /* 4-byte tokens are already in place: non-negative int32 is uint32 */
    uint16_t *narrow = NULL;
    const void *body = tokens;
    if (token_bytes == 2) {
        narrow = malloc(n ? n * 2 : 1);
        if (!narrow) return fsdp_error(FSDP_ERR_OOM, "%s: out of memory for %lld tokens", path, (long long)n);
        for (int64_t i = 0; i < n; i++) narrow[i] = (uint16_t)tokens[i];
        body = narrow;
    }
    const void *parts[2] = {header, body};
    int64_t sizes[2] = {HEADER_BYTES, n * token_bytes};
    int status = fsdp_file_write_parts(path, 2, parts, sizes);
    free(narrow);
    return status;
}
