/* test_tokens.c - token files: round trips at both widths, a file laid out
 * the way llm.c writes it, and the errors for broken files and tokens that
 * do not fit. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include "fsdp.h"
#include "check.h"

static char dir[] = "/tmp/fsdp_test_tokens_XXXXXX";

static const char *tmp(const char *name) {
    static char buf[2][512];
    static int k;
    k = (k + 1) % 2;
    snprintf(buf[k], sizeof buf[k], "%s/%s", dir, name);
    return buf[k];
}

/* a token file by hand: the header ints given, the rest zero, then body */
static void write_raw(const char *path, const int32_t *head, int nhead, const void *body, size_t body_len) {
    int32_t header[256] = {0};
    memcpy(header, head, nhead * sizeof *head);
    FILE *f = fopen(path, "wb");
    if (!f || fwrite(header, 4, 256, f) != 256 || (body_len && fwrite(body, 1, body_len, f) != body_len)) {
        perror(path);
        exit(2);
    }
    fclose(f);
}

static int error_has(const char *a, const char *b) {
    const char *err = fsdp_last_error();
    return strstr(err, a) && (!b || strstr(err, b));
}

static void test_round_trip(int token_bytes) {
    enum { N = 10000 };
    int vocab = token_bytes == 2 ? 50257 : 128256;
    int32_t *tokens = malloc(N * sizeof *tokens), *back = malloc(N * sizeof *back);
    fsdp_rng rng;
    fsdp_rng_seed(&rng, (uint64_t)token_bytes);
    for (int i = 0; i < N; i++) tokens[i] = (int32_t)(fsdp_rng_next(&rng) % vocab);
    tokens[0] = 0;
    tokens[N - 1] = vocab - 1;
    const char *path = tmp(token_bytes == 2 ? "u16.bin" : "u32.bin");
    CHECK(fsdp_tokens_write(path, tokens, N, token_bytes, vocab) == FSDP_OK, "write: %s", fsdp_last_error());
    CHECK(access(tmp(token_bytes == 2 ? "u16.bin.tmp" : "u32.bin.tmp"), F_OK) != 0, "temporary file left");

    fsdp_token_file tf;
    CHECK(fsdp_tokens_open(&tf, path) == FSDP_OK, "open: %s", fsdp_last_error());
    CHECK(tf.n_tokens == N && tf.token_bytes == token_bytes && tf.vocab_size == vocab,
          "header: %lld tokens, %d bytes, vocab %d", (long long)tf.n_tokens, tf.token_bytes, tf.vocab_size);
    CHECK(fsdp_tokens_read(&tf, back, 0, N) == FSDP_OK, "read: %s", fsdp_last_error());
    CHECK(memcmp(tokens, back, N * sizeof *back) == 0, "tokens differ after a round trip (%d bytes)", token_bytes);
    CHECK(fsdp_tokens_read(&tf, back, 1234, 77) == FSDP_OK && memcmp(back, tokens + 1234, 77 * 4) == 0,
          "read of a middle range");
    CHECK(fsdp_tokens_read(&tf, back, N, 0) == FSDP_OK, "empty read at the end");
    CHECK(fsdp_tokens_read(&tf, back, N - 5, 6) == FSDP_ERR_INVALID && error_has("range", NULL),
          "read past the end: %s", fsdp_last_error());
    CHECK(fsdp_tokens_read(&tf, back, -1, 2) == FSDP_ERR_INVALID, "negative start");
    fsdp_tokens_close(&tf);
    CHECK(tf.map_base == NULL && tf.tokens == NULL, "close clears the struct");
    fsdp_tokens_close(&tf);   /* twice is harmless */
    CHECK(fsdp_tokens_read(&tf, back, 0, 1) == FSDP_ERR_INVALID, "read after close");
    free(tokens);
    free(back);
}

static void test_llmc_file(void) {
    /* llm.c: magic, version 1, count, then zeros; uint16 tokens */
    uint16_t body[5] = {50256, 464, 3290, 0, 65535};
    int32_t head[3] = {20240520, 1, 5};
    const char *path = tmp("llmc.bin");
    write_raw(path, head, 3, body, sizeof body);
    fsdp_token_file tf;
    CHECK(fsdp_tokens_open(&tf, path) == FSDP_OK, "llm.c file: %s", fsdp_last_error());
    int32_t out[5];
    CHECK(tf.n_tokens == 5 && tf.token_bytes == 2 && tf.vocab_size == 0, "llm.c header");
    CHECK(fsdp_tokens_read(&tf, out, 0, 5) == FSDP_OK, "%s", fsdp_last_error());
    for (int i = 0; i < 5; i++) CHECK(out[i] == body[i], "token %d: %d", i, out[i]);
    fsdp_tokens_close(&tf);

    /* and what we write for the same tokens is byte for byte llm.c's file */
    int32_t tokens[5] = {50256, 464, 3290, 0, 65535};
    CHECK(fsdp_tokens_write(tmp("ours.bin"), tokens, 5, 2, 0) == FSDP_OK, "%s", fsdp_last_error());
    CHECK(fsdp_file_crc32(tmp("ours.bin")) == fsdp_file_crc32(path), "our v1 file differs from llm.c's layout");
}

static void test_bad_files(void) {
    fsdp_token_file tf;
    const char *path = tmp("bad.bin");
    uint16_t body[4] = {1, 2, 3, 4};

    int32_t magic[3] = {20240521, 1, 4};
    write_raw(path, magic, 3, body, sizeof body);
    CHECK(fsdp_tokens_open(&tf, path) == FSDP_ERR_FORMAT && error_has(path, "bad magic 20240521"),
          "wrong magic: %s", fsdp_last_error());
    CHECK(tf.map_base == NULL, "failed open leaves the struct empty");

    int32_t version[3] = {20240520, 3, 4};
    write_raw(path, version, 3, body, sizeof body);
    CHECK(fsdp_tokens_open(&tf, path) == FSDP_ERR_FORMAT && error_has(path, "bad version"), "version 3: %s",
          fsdp_last_error());

    int32_t count[3] = {20240520, 1, 5};   /* 5 tokens claimed, 4 present */
    write_raw(path, count, 3, body, sizeof body);
    CHECK(fsdp_tokens_open(&tf, path) == FSDP_ERR_FORMAT &&
              error_has(path, "size mismatch: the header says 5 tokens of 2 bytes (1034 bytes with the header) "
                              "but the file has 1032 bytes"),
          "size mismatch: %s", fsdp_last_error());

    /* the high count bits: 2^31 + 4 tokens claimed */
    int32_t high[4] = {20240520, 2, 4, 1};
    write_raw(path, high, 4, body, sizeof body);
    CHECK(fsdp_tokens_open(&tf, path) == FSDP_ERR_FORMAT && error_has("2147483652 tokens of 4 bytes", NULL),
          "count from header[2] and header[3]: %s", fsdp_last_error());

    int32_t negative[3] = {20240520, 1, -1};
    write_raw(path, negative, 3, body, sizeof body);
    CHECK(fsdp_tokens_open(&tf, path) == FSDP_ERR_FORMAT && error_has(path, "token count"), "negative count: %s",
          fsdp_last_error());

    FILE *f = fopen(path, "wb");
    fwrite("short", 1, 5, f);
    fclose(f);
    CHECK(fsdp_tokens_open(&tf, path) == FSDP_ERR_FORMAT && error_has(path, "shorter than the 1024-byte"),
          "short file: %s", fsdp_last_error());
    CHECK(fsdp_tokens_open(&tf, tmp("missing.bin")) == FSDP_ERR_IO && error_has("missing.bin", "cannot open"),
          "missing file: %s", fsdp_last_error());
    CHECK(fsdp_tokens_open(&tf, dir) == FSDP_ERR_IO && error_has(dir, "not a regular file"), "a directory: %s",
          fsdp_last_error());

    /* the largest count the header can hold: no overflow in the size check */
    int32_t huge[4] = {20240520, 2, 0x7fffffff, (1 << 30) - 1};
    write_raw(path, huge, 4, body, sizeof body);
    CHECK(fsdp_tokens_open(&tf, path) == FSDP_ERR_FORMAT &&
              error_has("2305843009213693951 tokens of 4 bytes (9223372036854776828 bytes", NULL),
          "huge count: %s", fsdp_last_error());

    /* a reserved header field that is not zero */
    int32_t reserved[8] = {20240520, 1, 4, 0, 0, 0, 0, 99};
    write_raw(path, reserved, 8, body, sizeof body);
    CHECK(fsdp_tokens_open(&tf, path) == FSDP_ERR_FORMAT && error_has(path, "int 7 is 99, expected 0"),
          "reserved field: %s", fsdp_last_error());

    /* a uint32 token beyond int32, and one beyond the vocab, fail at open,
     * naming the first bad position */
    uint32_t wide[3] = {7, 0x80000000u, 9};
    int32_t v2[5] = {20240520, 2, 3, 0, 0};
    write_raw(path, v2, 5, wide, sizeof wide);
    CHECK(fsdp_tokens_open(&tf, path) == FSDP_ERR_FORMAT && error_has(path, "token 2147483648 at position 1"),
          "token beyond int32: %s", fsdp_last_error());
    CHECK(tf.map_base == NULL, "failed open leaves the struct empty");
    int32_t vocab[5] = {20240520, 1, 4, 0, 4};
    write_raw(path, vocab, 5, body, sizeof body);
    CHECK(fsdp_tokens_open(&tf, path) == FSDP_ERR_FORMAT &&
              error_has(path, "token 4 at position 3 is not below the vocab size 4"),
          "token beyond the vocab: %s", fsdp_last_error());
    vocab[4] = 5;
    write_raw(path, vocab, 5, body, sizeof body);
    CHECK(fsdp_tokens_open(&tf, path) == FSDP_OK && tf.max_token == 4, "vocab 5: %s", fsdp_last_error());
    fsdp_tokens_close(&tf);
}

/* the scan at open finds the largest id wherever it is, in a file long
 * enough to take the parallel path */
static void test_max_scan(void) {
    enum { N = (1 << 22) + 37 };
    int32_t *tokens = calloc(N, sizeof *tokens);
    for (int64_t pos = 0; pos < N; pos += N / 5 + 3) {
        for (int i = 0; i < N; i++) tokens[i] = i % 1000;
        tokens[pos] = 60000;
        CHECK(fsdp_tokens_write(tmp("scan.bin"), tokens, N, 2, 0) == FSDP_OK, "%s", fsdp_last_error());
        fsdp_token_file tf;
        CHECK(fsdp_tokens_open(&tf, tmp("scan.bin")) == FSDP_OK && tf.max_token == 60000,
              "max at %lld: %lld (%s)", (long long)pos, (long long)tf.max_token, fsdp_last_error());
        fsdp_tokens_close(&tf);
    }
    free(tokens);
}

static void test_write_errors(void) {
    int32_t tokens[8] = {1, 2, 3, 4, 5, 70000, 7, 8};
    const char *path = tmp("w.bin");
    CHECK(fsdp_tokens_write(path, tokens, 8, 2, 0) == FSDP_ERR_INVALID &&
              error_has(path, "token 70000 at position 5 does not fit in uint16"),
          "too large for uint16: %s", fsdp_last_error());
    CHECK(access(path, F_OK) != 0, "nothing written after a refused write");
    CHECK(fsdp_tokens_write(path, tokens, 8, 4, 0) == FSDP_OK, "70000 fits uint32: %s", fsdp_last_error());
    CHECK(fsdp_tokens_write(path, tokens, 8, 4, 50000) == FSDP_ERR_INVALID &&
              error_has("token 70000 at position 5 is not below the vocab size 50000", NULL),
          "beyond the vocab: %s", fsdp_last_error());
    tokens[2] = -3;
    CHECK(fsdp_tokens_write(path, tokens, 8, 4, 0) == FSDP_ERR_INVALID &&
              error_has("token -3 at position 2 is negative", NULL), "negative: %s", fsdp_last_error());
    CHECK(fsdp_tokens_write(path, tokens, 8, 3, 0) == FSDP_ERR_INVALID && error_has("width 3", NULL),
          "width 3: %s", fsdp_last_error());

    /* an empty file is valid */
    fsdp_token_file tf;
    CHECK(fsdp_tokens_write(tmp("empty.bin"), NULL, 0, 4, 100) == FSDP_OK, "%s", fsdp_last_error());
    CHECK(fsdp_tokens_open(&tf, tmp("empty.bin")) == FSDP_OK && tf.n_tokens == 0 && tf.token_bytes == 4 &&
              tf.max_token == -1,
          "empty file: %s", fsdp_last_error());
    fsdp_tokens_close(&tf);
}

int main(void) {
    if (!mkdtemp(dir)) { perror("mkdtemp"); return 2; }
    test_round_trip(2);
    test_round_trip(4);
    test_llmc_file();
    test_bad_files();
    test_write_errors();
    test_max_scan();
    if (!check_failures) {
        char cmd[600];
        snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
        if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", dir);
    }
    return check_exit("test_tokens");
}
