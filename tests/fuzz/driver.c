/* driver.c - a mutation driver for the fuzz targets where clang's libFuzzer
 * is not installed (`make fuzz` picks libFuzzer when it can). It takes the
 * same arguments (corpus directories, -max_total_time=N, -max_len=N,
 * -artifact_prefix=P, -seed=N), reads every file of the directories as the
 * starting corpus, and until the time is up runs the target on mutations of
 * them: bit flips, interesting bytes and numbers, inserted and deleted runs,
 * tokens of the formats (JSON, YAML, safetensors), splices of two entries,
 * truncation. No coverage feedback: it is a plain random search, built with
 * ASan + UBSan like the libFuzzer build. An input that crashes is written to
 * P + "crash-<n>" by the sanitizer's death callback. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <dirent.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
__attribute__((weak)) int LLVMFuzzerInitialize(int *argc, char ***argv);
void __sanitizer_set_death_callback(void (*callback)(void));

typedef struct { uint8_t *p; size_t n; } blob;
static blob *corpus;
static size_t n_corpus, cap_corpus;
static uint8_t *cur;
static size_t cur_n;
static const char *artifact_prefix = "";
static uint64_t rng_state = 0x9e3779b97f4a7c15ull;

static uint64_t rnd(void) {
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return rng_state;
}

static void add(const uint8_t *p, size_t n) {
    if (n_corpus == cap_corpus) {
        cap_corpus = cap_corpus ? 2 * cap_corpus : 64;
        corpus = realloc(corpus, cap_corpus * sizeof *corpus);
        if (!corpus) abort();
    }
    blob b = {malloc(n ? n : 1), n};
    if (!b.p) abort();
    memcpy(b.p, p, n);
    corpus[n_corpus++] = b;
}

static void load_dir(const char *dir) {
    DIR *d = opendir(dir);
    if (!d) return;
    struct dirent *e;
    while ((e = readdir(d))) {
        if (e->d_name[0] == '.') continue;
        char path[4096];
        snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
        struct stat st;
        if (stat(path, &st) != 0 || !S_ISREG(st.st_mode)) continue;
        FILE *f = fopen(path, "rb");
        if (!f) continue;
        uint8_t *buf = malloc(st.st_size ? st.st_size : 1);
        size_t got = fread(buf, 1, st.st_size, f);
        fclose(f);
        add(buf, got);
        free(buf);
    }
    closedir(d);
}

static void on_death(void) {
    static int saved;
    if (saved++) return;
    char path[4096];
    snprintf(path, sizeof path, "%scrash-%lld", artifact_prefix, (long long)time(NULL));
    FILE *f = fopen(path, "wb");
    if (f) {
        fwrite(cur, 1, cur_n, f);
        fclose(f);
        fprintf(stderr, "driver: the crashing input is in %s (%zu bytes)\n", path, cur_n);
    }
}

static const char *TOKENS[] = {"\"", "'", "{", "}", "[", "]", ":", ",", "\n", "\n  ", "- ", "# ", "|", ">", "\\",
                               "\\u", "\\ud800", "null", "true", "1e999", "-1", "0", "4294967296", "9007199254740993",
                               "\"\": ", "{\"type\": \"BPE\"", "\"merges\": []", "\"vocab\": {", "\"dtype\": \"F32\"",
                               "\"shape\": [", "\"data_offsets\": [", "---\n", "...\n", "\t", "\r\n", "\xff", "\x1f\x8b"};

static size_t mutate(uint8_t *buf, size_t n, size_t max) {
    int rounds = 1 + (int)(rnd() % 4);
    for (int r = 0; r < rounds; r++) {
        size_t pos = n ? rnd() % n : 0;
        switch (rnd() % 9) {
        case 0: if (n) buf[pos] ^= (uint8_t)(1u << (rnd() % 8)); break;
        case 1: if (n) buf[pos] = (uint8_t[]){0, 1, 0x7f, 0x80, 0xff, '0', '9', ' '}[rnd() % 8]; break;
        case 2: if (n < max) { memmove(buf + pos + 1, buf + pos, n - pos); buf[pos] = (uint8_t)rnd(); n++; } break;
        case 3: if (n) { size_t k = 1 + rnd() % (n - pos); memmove(buf + pos, buf + pos + k, n - pos - k); n -= k; } break;
        case 4: { const char *t = TOKENS[rnd() % (sizeof TOKENS / sizeof TOKENS[0])];
                  size_t k = strlen(t);
                  if (n + k <= max) { memmove(buf + pos + k, buf + pos, n - pos); memcpy(buf + pos, t, k); n += k; } } break;
        case 5: if (n) n = rnd() % n; break;
        case 6: if (n >= 8) { uint64_t v = (uint64_t[]){0, 1, 0xffffffffull, 0x7fffffffull, 1ull << 40, ~0ull}[rnd() % 6];
                             size_t at = rnd() % (n - 7); memcpy(buf + at, &v, 8); } break;
        case 7: if (n_corpus) { blob *o = &corpus[rnd() % n_corpus];
                                if (o->n) { size_t a = rnd() % o->n, k = 1 + rnd() % (o->n - a);
                                            if (n + k <= max) { memmove(buf + pos + k, buf + pos, n - pos);
                                                                memcpy(buf + pos, o->p + a, k); n += k; } } } break;
        case 8: if (n >= 2) { size_t a = rnd() % n, b = rnd() % n; uint8_t t = buf[a]; buf[a] = buf[b]; buf[b] = t; } break;
        }
    }
    return n;
}

int main(int argc, char **argv) {
    double seconds = 10;
    size_t max_len = 4096;
    long long runs = -1;
    for (int i = 1; i < argc; i++) {
        if (!strncmp(argv[i], "-max_total_time=", 16)) seconds = atof(argv[i] + 16);
        else if (!strncmp(argv[i], "-max_len=", 9)) max_len = (size_t)atol(argv[i] + 9);
        else if (!strncmp(argv[i], "-artifact_prefix=", 17)) artifact_prefix = argv[i] + 17;
        else if (!strncmp(argv[i], "-seed=", 6)) rng_state ^= (uint64_t)atoll(argv[i] + 6) * 0x2545F4914F6CDD1Dull;
        else if (!strncmp(argv[i], "-runs=", 6)) runs = atoll(argv[i] + 6);
        else if (argv[i][0] == '-') { /* libFuzzer flags this driver does not need */ }
        else load_dir(argv[i]);
    }
    if (LLVMFuzzerInitialize) LLVMFuzzerInitialize(&argc, &argv);
    __sanitizer_set_death_callback(on_death);
    if (!n_corpus) add((const uint8_t *)"", 0);
    cur = malloc(max_len + 1);
    /* every seed as it is, then mutations until the time is up */
    long long execs = 0;
    for (size_t i = 0; i < n_corpus; i++) {
        cur_n = corpus[i].n < max_len ? corpus[i].n : max_len;
        memcpy(cur, corpus[i].p, cur_n);
        LLVMFuzzerTestOneInput(cur, cur_n);
        execs++;
    }
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (;;) {
        if (runs >= 0 && execs >= runs) break;
        if ((execs & 63) == 0) {
            clock_gettime(CLOCK_MONOTONIC, &t1);
            if ((t1.tv_sec - t0.tv_sec) + (t1.tv_nsec - t0.tv_nsec) * 1e-9 >= seconds) break;
        }
        blob *b = &corpus[rnd() % n_corpus];
        cur_n = b->n < max_len ? b->n : max_len;
        memcpy(cur, b->p, cur_n);
        cur_n = mutate(cur, cur_n, max_len);
        LLVMFuzzerTestOneInput(cur, cur_n);
        execs++;
        /* keep some mutants as seeds for further mutation */
        if (rnd() % 64 == 0 && n_corpus < 4096) add(cur, cur_n);
    }
    clock_gettime(CLOCK_MONOTONIC, &t1);
    double took = (t1.tv_sec - t0.tv_sec) + (t1.tv_nsec - t0.tv_nsec) * 1e-9;
    fprintf(stderr, "driver: %lld runs in %.0f s (%.0f/s), no crash\n", execs, took, execs / (took > 0 ? took : 1));
    return 0;
}
