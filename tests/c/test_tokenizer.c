/* test_tokenizer.c - the tokenizer.json loader against the `tokenizers` library.
 *
 *   fixtures   tests/golden/tokenizers/{gpt2like,llama3like,llama2like}, made by
 *              tests/golden/make_tokenizer_fixtures.py: every id of tiny
 *              Shakespeare encoded paragraph by paragraph, decode giving each
 *              paragraph back, and the torture strings (ids with and without
 *              special tokens, decoded with and without them), vocab size,
 *              special ids, token <-> id samples
 *   variants   tests/golden/tokenizers/variants/: the other options (Split
 *              behaviors, Digits, Metaspace schemes, unk, prefixes, added
 *              token options, Roberta/OPT processors, ignore_merges)
 *   threads    four threads encoding the corpus at once give the same ids
 *   errors     missing file, malformed JSON (line and column), unknown types
 *              (field path, type, supported list), bad merges, invalid UTF-8,
 *              ids outside the vocabulary, small output buffers
 *   fuzz       truncated and corrupted tokenizer.json files never crash
 *   speed      MB/s over the corpus, printed
 *
 * The corpus is data/tinyshakespeare.txt next to the checkout;
 * when it is missing the corpus checks are skipped (and say so). */
#include <jansson.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include "fsdp.h"
#include "check.h"

static const char *GOLDEN = "tests/golden/tokenizers";
static const char *CORPUS = "data/tinyshakespeare.txt";
static char tmpdir[] = "/tmp/fsdp_test_tok_XXXXXX";

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + 1e-9 * ts.tv_nsec;
}

static char *read_all(const char *path, size_t *n) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long len = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *p = malloc((size_t)len + 1);
    if (fread(p, 1, (size_t)len, f) != (size_t)len) { perror(path); exit(2); }
    fclose(f);
    p[len] = 0;
    if (n) *n = (size_t)len;
    return p;
}

static void write_file(const char *path, const char *text) {
    FILE *f = fopen(path, "wb");
    if (!f || fwrite(text, 1, strlen(text), f) != strlen(text)) { perror(path); exit(2); }
    fclose(f);
}

static const char *tmp(const char *name) {
    static char buf[4][512];
    static int k;
    k = (k + 1) % 4;
    snprintf(buf[k], sizeof buf[k], "%s/%s", tmpdir, name);
    return buf[k];
}

/* encode into a fresh array (size query, then the call); NULL on error */
static int32_t *encode(fsdp_tokenizer *tok, const char *s, size_t n, int add_special, int64_t *count) {
    int64_t need;
    if (fsdp_tokenizer_encode(tok, s, (int64_t)n, add_special, NULL, 0, &need) != FSDP_OK) return NULL;
    int32_t *ids = malloc((size_t)(need + 1) * sizeof *ids);
    if (fsdp_tokenizer_encode(tok, s, (int64_t)n, add_special, ids, need, count) != FSDP_OK || *count != need) {
        free(ids);
        return NULL;
    }
    return ids;
}

static char *decode(fsdp_tokenizer *tok, const int32_t *ids, int64_t n, int skip, int64_t *len) {
    int64_t need;
    if (fsdp_tokenizer_decode(tok, ids, n, skip, NULL, 0, &need) != FSDP_OK) return NULL;
    char *s = malloc((size_t)need + 1);
    if (fsdp_tokenizer_decode(tok, ids, n, skip, s, need + 1, len) != FSDP_OK) { free(s); return NULL; }
    return s;
}

static void print_escaped(const char *s, size_t n) {
    fputc('"', stderr);
    for (size_t i = 0; i < n && i < 120; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c < 0x20 || c == '"') fprintf(stderr, "\\x%02x", c);
        else fputc(c, stderr);
    }
    fputs(n > 120 ? "\"..." : "\"", stderr);
}

static int same_ids(const int32_t *got, int64_t ng, const json_t *want) {
    if ((size_t)ng != json_array_size(want)) return 0;
    for (int64_t i = 0; i < ng; i++)
        if (got[i] != json_integer_value(json_array_get(want, (size_t)i))) return 0;
    return 1;
}

static void show_ids(const char *label, const int32_t *got, int64_t ng, const json_t *want) {
    fprintf(stderr, "  %s got  [", label);
    for (int64_t i = 0; i < ng && i < 40; i++) fprintf(stderr, "%s%d", i ? ", " : "", got[i]);
    fprintf(stderr, "%s]\n  %s want [", ng > 40 ? ", ..." : "", label);
    for (size_t i = 0; i < json_array_size(want) && i < 40; i++)
        fprintf(stderr, "%s%lld", i ? ", " : "", (long long)json_integer_value(json_array_get(want, i)));
    fprintf(stderr, "%s]\n", json_array_size(want) > 40 ? ", ..." : "");
}

/* every torture case of an expected.json, plus vocab size, special ids and
 * token samples */
static void check_cases(const char *name, fsdp_tokenizer *tok, const json_t *exp) {
    CHECK(fsdp_tokenizer_vocab_size(tok) == json_integer_value(json_object_get(exp, "vocab_size")),
          "%s: vocab size %d, want %lld", name, fsdp_tokenizer_vocab_size(tok),
          (long long)json_integer_value(json_object_get(exp, "vocab_size")));
    const json_t *cases = json_object_get(exp, "cases");
    size_t i;
    const json_t *c;
    json_array_foreach(cases, i, c) {
        const json_t *text = json_object_get(c, "text");
        const char *s = json_string_value(text);
        size_t n = json_string_length(text);
        int64_t ng, ns, len;
        int32_t *ids = encode(tok, s, n, 0, &ng), *ids_sp = encode(tok, s, n, 1, &ns);
        CHECK(ids && ids_sp, "%s case %zu: encode failed: %s", name, i, fsdp_last_error());
        if (!ids || !ids_sp) { free(ids); free(ids_sp); continue; }
        int ok = same_ids(ids, ng, json_object_get(c, "ids"));
        CHECK(ok, "%s case %zu: ids differ from the library's", name, i);
        if (!ok) {
            fprintf(stderr, "  text "); print_escaped(s, n); fputc('\n', stderr);
            show_ids("ids", ids, ng, json_object_get(c, "ids"));
        }
        ok = same_ids(ids_sp, ns, json_object_get(c, "ids_special"));
        CHECK(ok, "%s case %zu: ids with special tokens differ", name, i);
        if (!ok) show_ids("ids_special", ids_sp, ns, json_object_get(c, "ids_special"));
        static const struct { const char *key; int special, skip; } decs[] = {
            {"decoded", 1, 0}, {"decoded_skip", 1, 1}, {"decoded_plain", 0, 0}};
        for (int d = 0; d < 3; d++) {
            const json_t *want = json_object_get(c, decs[d].key);
            char *got = decode(tok, decs[d].special ? ids_sp : ids, decs[d].special ? ns : ng, decs[d].skip, &len);
            int same = got && (size_t)len == json_string_length(want) &&
                       memcmp(got, json_string_value(want), (size_t)len) == 0;
            CHECK(same, "%s case %zu: %s differs%s%s", name, i, decs[d].key, got ? "" : ": ",
                  got ? "" : fsdp_last_error());
            if (!same && got) {
                fprintf(stderr, "  got  "); print_escaped(got, (size_t)len);
                fprintf(stderr, "\n  want "); print_escaped(json_string_value(want), json_string_length(want));
                fputc('\n', stderr);
            }
            free(got);
        }
        free(ids);
        free(ids_sp);
    }
    const json_t *pair;
    json_array_foreach(json_object_get(exp, "tokens"), i, pair) {
        int32_t id = (int32_t)json_integer_value(json_array_get(pair, 0));
        const char *want = json_string_value(json_array_get(pair, 1));
        const char *got = fsdp_tokenizer_id_to_token(tok, id);
        CHECK(got && strcmp(got, want) == 0, "%s: id_to_token(%d) = %s, want %s", name, id, got ? got : "NULL", want);
        CHECK(fsdp_tokenizer_token_to_id(tok, want) == id, "%s: token_to_id(%s) = %d, want %d", name, want,
              fsdp_tokenizer_token_to_id(tok, want), id);
    }
    const json_t *sp = json_object_get(exp, "special");
    if (sp) {
        static const char *keys[] = {"bos", "eos", "pad"};
        for (int w = 0; w < 3; w++)
            CHECK(fsdp_tokenizer_special_id(tok, w) == json_integer_value(json_object_get(sp, keys[w])),
                  "%s: %s id %d, want %lld", name, keys[w], fsdp_tokenizer_special_id(tok, w),
                  (long long)json_integer_value(json_object_get(sp, keys[w])));
        CHECK(fsdp_tokenizer_num_added(tok, 0) == json_integer_value(json_object_get(sp, "n_prefix")) &&
              fsdp_tokenizer_num_added(tok, 1) == json_integer_value(json_object_get(sp, "n_suffix")),
              "%s: adds %d before and %d after, want %lld and %lld", name, fsdp_tokenizer_num_added(tok, 0),
              fsdp_tokenizer_num_added(tok, 1), (long long)json_integer_value(json_object_get(sp, "n_prefix")),
              (long long)json_integer_value(json_object_get(sp, "n_suffix")));
    }
}

/* ---- corpus ---------------------------------------------------------------- */

typedef struct corpus {
    char *text;
    size_t n;
    size_t *start;         /* chunk i is text[start[i], start[i+1]) */
    size_t n_chunks;
} corpus;

/* cut after every blank line, as the fixture script does */
static void cut_chunks(corpus *c) {
    c->start = malloc((c->n / 2 + 2) * sizeof *c->start);
    c->n_chunks = 0;
    size_t s = 0;
    c->start[0] = 0;
    for (size_t i = 0; i + 1 < c->n; i++)
        if (c->text[i] == '\n' && c->text[i + 1] == '\n') {
            c->start[++c->n_chunks] = i + 2;
            s = i + 2;
            i++;
        }
    if (s < c->n) c->start[++c->n_chunks] = c->n;
}

typedef struct thread_job {
    fsdp_tokenizer *tok;
    const corpus *c;
    const int32_t *want;
    const int64_t *off;   /* chunk i's ids start at off[i] */
    int first, step, mismatches;
} thread_job;

static void *thread_encode(void *arg) {
    thread_job *j = arg;
    for (size_t i = (size_t)j->first; i < j->c->n_chunks; i += (size_t)j->step) {
        int64_t n;
        int32_t *ids = encode(j->tok, j->c->text + j->c->start[i], j->c->start[i + 1] - j->c->start[i], 0, &n);
        if (!ids || n != j->off[i + 1] - j->off[i] || memcmp(ids, j->want + j->off[i], (size_t)n * 4) != 0)
            j->mismatches++;
        free(ids);
    }
    return NULL;
}

/* FNV-1a 64 over the ids as little-endian uint32, as the fixture script */
static uint64_t fnv64(const int32_t *ids, int64_t n) {
    uint64_t h = 0xcbf29ce484222325ull;
    for (int64_t i = 0; i < n; i++)
        for (int k = 0; k < 4; k++) h = (h ^ (((uint32_t)ids[i] >> (8 * k)) & 0xFF)) * 0x100000001b3ull;
    return h;
}

static void check_corpus(const char *name, fsdp_tokenizer *tok, const corpus *c, const char *tok_path,
                         const json_t *info) {
    fsdp_token_file tf;
    if (fsdp_tokens_open(&tf, tok_path) != FSDP_OK) {
        CHECK(0, "%s: %s", name, fsdp_last_error());
        return;
    }
    int32_t *want = malloc((size_t)tf.n_tokens * sizeof *want);
    fsdp_tokens_read(&tf, want, 0, tf.n_tokens);
    int64_t *off = malloc((c->n_chunks + 1) * sizeof *off);
    int32_t *got = malloc((size_t)(tf.n_tokens + 1) * sizeof *got);
    int64_t total = 0;
    int failures = 0, roundtrip_failures = 0;
    double t0 = now();
    for (size_t i = 0; i < c->n_chunks; i++) {
        off[i] = total;
        int64_t n;
        int64_t cap = tf.n_tokens - total;
        int rc = fsdp_tokenizer_encode(tok, c->text + c->start[i], (int64_t)(c->start[i + 1] - c->start[i]), 0,
                                       got + total, cap > 0 ? cap : 0, &n);
        if (rc != FSDP_OK) { CHECK(0, "%s: chunk %zu: %s", name, i, fsdp_last_error()); failures++; break; }
        total += n;
    }
    double t_cold = now() - t0;
    off[c->n_chunks] = total;
    CHECK(total == tf.n_tokens, "%s: corpus gives %lld ids, the library %lld", name, (long long)total,
          (long long)tf.n_tokens);
    for (size_t i = 0; i < c->n_chunks && !failures && total == tf.n_tokens; i++) {
        int64_t n = off[i + 1] - off[i];
        if (memcmp(got + off[i], want + off[i], (size_t)n * 4) == 0) continue;
        for (int64_t k = 0; k < n; k++)
            if (got[off[i] + k] != want[off[i] + k]) {
                CHECK(0, "%s: chunk %zu, id %lld: got %d want %d", name, i, (long long)k, got[off[i] + k],
                      want[off[i] + k]);
                break;
            }
        if (++failures > 5) break;
    }
    /* the library gives each paragraph back from its ids */
    for (size_t i = 0; i < c->n_chunks && total == tf.n_tokens; i++) {
        int64_t len;
        char *text = decode(tok, got + off[i], off[i + 1] - off[i], 0, &len);
        size_t n = c->start[i + 1] - c->start[i];
        if (!text || (size_t)len != n || memcmp(text, c->text + c->start[i], n) != 0) {
            if (++roundtrip_failures <= 3) {
                CHECK(0, "%s: decode(encode(chunk %zu)) differs", name, i);
                if (text) { fprintf(stderr, "  got  "); print_escaped(text, (size_t)len); fputc('\n', stderr); }
            }
        }
        free(text);
    }
    CHECK(roundtrip_failures == 0, "%s: %d chunks do not round-trip", name, roundtrip_failures);

    /* speed: chunked again (warm cache), and the whole file in one call */
    t0 = now();
    for (size_t i = 0; i < c->n_chunks; i++) {
        int64_t n;
        fsdp_tokenizer_encode(tok, c->text + c->start[i], (int64_t)(c->start[i + 1] - c->start[i]), 0, got,
                              tf.n_tokens, &n);
    }
    double t_warm = now() - t0;
    int64_t n_whole;
    int32_t *whole = malloc((c->n + 16) * sizeof *whole);
    t0 = now();
    int rc = fsdp_tokenizer_encode(tok, c->text, (int64_t)c->n, 0, whole, (int64_t)c->n + 16, &n_whole);
    double t_whole = now() - t0;
    CHECK(rc == FSDP_OK, "%s: whole corpus: %s", name, fsdp_last_error());
    if (rc == FSDP_OK) {
        char hex[17];
        snprintf(hex, sizeof hex, "%016llx", (unsigned long long)fnv64(whole, n_whole));
        const char *want_hex = json_string_value(json_object_get(info, "whole_fnv64"));
        CHECK(n_whole == json_integer_value(json_object_get(info, "whole_tokens")) && want_hex &&
              strcmp(hex, want_hex) == 0, "%s: the whole file in one call gives %lld ids (hash %s), the library %lld (%s)",
              name, (long long)n_whole, hex, (long long)json_integer_value(json_object_get(info, "whole_tokens")),
              want_hex ? want_hex : "?");
    }
    free(whole);
    t0 = now();
    int64_t len;
    char *text = decode(tok, want, tf.n_tokens, 0, &len);
    double t_dec = now() - t0;
    free(text);
    printf("%-12s %7lld ids  encode %6.1f MB/s by paragraph (first pass %6.1f), %6.1f MB/s whole file;"
           " decode %6.1f MB/s\n", name, (long long)tf.n_tokens, c->n / t_warm / 1e6, c->n / t_cold / 1e6,
           c->n / t_whole / 1e6, c->n / t_dec / 1e6);

    /* four threads at once, each on every fourth paragraph */
    if (total == tf.n_tokens) {
        pthread_t th[4];
        thread_job jobs[4];
        for (int k = 0; k < 4; k++) {
            jobs[k] = (thread_job){tok, c, want, off, k, 4, 0};
            pthread_create(&th[k], NULL, thread_encode, &jobs[k]);
        }
        int bad = 0;
        for (int k = 0; k < 4; k++) { pthread_join(th[k], NULL); bad += jobs[k].mismatches; }
        CHECK(bad == 0, "%s: %d paragraphs differ when four threads encode at once", name, bad);
    }
    free(want); free(got); free(off);
    fsdp_tokens_close(&tf);
}

static json_t *load_json(const char *path) {
    json_error_t err;
    json_t *j = json_load_file(path, 0, &err);
    if (!j) { fprintf(stderr, "%s: %s\n", path, err.text); exit(2); }
    return j;
}

static void check_fixture(const char *name, const corpus *c) {
    char path[512], exp_path[512];
    snprintf(path, sizeof path, "%s/%s/tokenizer.json", GOLDEN, name);
    snprintf(exp_path, sizeof exp_path, "%s/%s/expected.json", GOLDEN, name);
    fsdp_tokenizer *tok = fsdp_tokenizer_load(path);
    CHECK(tok != NULL, "%s: %s", name, fsdp_last_error());
    if (!tok) return;
    json_t *exp = load_json(exp_path);
    check_cases(name, tok, exp);
    if (json_object_get(exp, "corpus")) {
        if (c->text) {
            snprintf(path, sizeof path, "%s/%s/corpus.tok", GOLDEN, name);
            check_corpus(name, tok, c, path, json_object_get(exp, "corpus"));
        } else printf("%-12s SKIP corpus: %s is missing\n", name, CORPUS);
    }
    json_decref(exp);
    fsdp_tokenizer_free(tok);
}

static void check_variants(void) {
    char list[600];
    snprintf(list, sizeof list, "ls %s/variants", GOLDEN);
    FILE *p = popen(list, "r");
    char name[256];
    int n = 0;
    while (p && fgets(name, sizeof name, p)) {
        name[strcspn(name, "\n")] = 0;
        char sub[300];
        snprintf(sub, sizeof sub, "variants/%s", name);
        check_fixture(sub, &(corpus){0});
        n++;
    }
    if (p) pclose(p);
    CHECK(n >= 20, "only %d variants found under %s/variants", n, GOLDEN);
    printf("variants: %d tokenizers checked\n", n);
}

/* ---- errors ------------------------------------------------------------------ */

static const char *TINY =
    "{\"added_tokens\": [{\"id\": 3, \"content\": \"<s>\", \"special\": true}],\n"
    " \"normalizer\": NORM,\n"
    " \"pre_tokenizer\": PRE,\n"
    " \"decoder\": DEC,\n"
    " \"model\": {\"type\": \"MODEL\", \"vocab\": {\"a\": 0, \"b\": 1, \"ab\": 2}, \"merges\": [MERGES]}}\n";

/* TINY with its placeholders replaced */
static const char *tiny(const char *norm, const char *pre, const char *dec, const char *model, const char *merges) {
    static char out[4096];
    const char *keys[] = {"NORM", "PRE", "DEC", "MODEL", "MERGES"}, *vals[] = {norm, pre, dec, model, merges};
    char *o = out;
    for (const char *s = TINY; *s;) {
        int hit = 0;
        for (int k = 0; k < 5 && !hit; k++)
            if (strncmp(s, keys[k], strlen(keys[k])) == 0) {
                o += sprintf(o, "%s", vals[k]);
                s += strlen(keys[k]);
                hit = 1;
            }
        if (!hit) *o++ = *s++;
    }
    *o = 0;
    return out;
}

/* the file must fail to load with every pattern in the message */
static void load_fails(const char *label, const char *json, const char **patterns) {
    const char *path = tmp("bad.json");
    write_file(path, json);
    fsdp_tokenizer *tok = fsdp_tokenizer_load(path);
    CHECK(tok == NULL, "%s: loaded", label);
    fsdp_tokenizer_free(tok);
    const char *msg = fsdp_last_error();
    CHECK(strstr(msg, path) != NULL, "%s: message lacks the file name: %s", label, msg);
    for (int i = 0; patterns[i]; i++)
        CHECK(strstr(msg, patterns[i]) != NULL, "%s: message lacks \"%s\": %s", label, patterns[i], msg);
}

static void check_errors(void) {
    fsdp_tokenizer *tok = fsdp_tokenizer_load(tmp("missing/tokenizer.json"));
    CHECK(tok == NULL && strstr(fsdp_last_error(), "cannot open") && strstr(fsdp_last_error(), "missing/tokenizer.json"),
          "missing file: %s", fsdp_last_error());

    load_fails("malformed JSON", "{\"model\": {\"type\": \"BPE\",\n  \"vocab\": {\"a\": 0,, }}}",
               (const char *[]){"invalid JSON", "line 2", "column", NULL});
    load_fails("truncated JSON", "{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0",
               (const char *[]){"invalid JSON", "line 1", NULL});
    load_fails("not an object", "[1, 2]", (const char *[]){"top level is not a JSON object", NULL});
    load_fails("no model", "{\"normalizer\": null}", (const char *[]){"model", "missing", NULL});
    load_fails("Unigram model", tiny("null", "null", "null", "Unigram", ""),
               (const char *[]){"model.type", "\"Unigram\" is not supported", "supported: BPE", NULL});
    load_fails("unknown model", tiny("null", "null", "null", "Fancy", ""),
               (const char *[]){"model.type", "unknown type \"Fancy\"", "supported: BPE", NULL});
    load_fails("unknown pre-tokenizer",
               tiny("null",
                    "{\"type\": \"Sequence\", \"pretokenizers\": [{\"type\": \"ByteLevel\"}, {\"type\": \"Whitespace\"}]}",
                    "null", "BPE", ""),
               (const char *[]){"pre_tokenizer.pretokenizers[1].type", "Whitespace",
                                "supported: ByteLevel, Split, Metaspace, Digits, Sequence", NULL});
    load_fails("made-up pre-tokenizer", tiny("null", "{\"type\": \"Squash\"}", "null", "BPE", ""),
               (const char *[]){"pre_tokenizer.type", "unknown type \"Squash\"", "supported:", NULL});
    load_fails("NFC normalizer",
               tiny("{\"type\": \"Sequence\", \"normalizers\": [{\"type\": \"NFC\"}]}", "null", "null", "BPE", ""),
               (const char *[]){"normalizer.normalizers[0].type", "\"NFC\" is not supported",
                                "supported: Prepend, Replace, Strip, Sequence", NULL});
    load_fails("WordPiece decoder", tiny("null", "null", "{\"type\": \"WordPiece\"}", "BPE", ""),
               (const char *[]){"decoder.type", "WordPiece", "supported: ByteLevel", NULL});
    load_fails("no type", tiny("{\"prepend\": \"x\"}", "null", "null", "BPE", ""),
               (const char *[]){"normalizer", "\"type\" is missing", NULL});
    load_fails("bad regex",
               tiny("null", "{\"type\": \"Split\", \"pattern\": {\"Regex\": \"(a\"}, \"behavior\": \"Isolated\"}",
                    "null", "BPE", ""),
               (const char *[]){"pre_tokenizer.pattern", "does not compile", NULL});
    load_fails("bad behavior",
               tiny("null", "{\"type\": \"Split\", \"pattern\": {\"String\": \" \"}, \"behavior\": \"Sideways\"}",
                    "null", "BPE", ""),
               (const char *[]){"pre_tokenizer", "Sideways", "MergedWithNext", NULL});
    load_fails("merge of unknown token", tiny("null", "null", "null", "BPE", "\"a c\""),
               (const char *[]){"model.merges[0]", "\"c\" is not in the vocabulary", NULL});
    load_fails("malformed merge", tiny("null", "null", "null", "BPE", "\"a b\", \"ab\""),
               (const char *[]){"model.merges[1]", "two tokens", NULL});
    load_fails("merge result missing", tiny("null", "null", "null", "BPE", "\"b a\""),
               (const char *[]){"model.merges[0]", "merged token \"ba\"", NULL});
    load_fails("dropout", "{\"model\": {\"type\": \"BPE\", \"dropout\": 0.1, \"vocab\": {}, \"merges\": []}}",
               (const char *[]){"model.dropout", "not supported", NULL});

    /* as the tokenizers library: a BPE model without merges is refused
     * ("Missing vocab/merges"); [] is fine */
    load_fails("no merges", "{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0}}}",
               (const char *[]){"model.merges", "is missing", NULL});
    load_fails("null merges", "{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0}, \"merges\": null}}",
               (const char *[]){"model.merges", "is not an array", NULL});
    /* an id of 1e9 is refused up front, not allocated for */
    load_fails("sparse id", "{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0, \"b\": 1000000000}, \"merges\": []}}",
               (const char *[]){"model.vocab", "id 1000000000 (of \"b\")", "ids must be dense", NULL});
    load_fails("sparse added id",
               "{\"added_tokens\": [{\"id\": 900000000, \"content\": \"<x>\"}], "
               "\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0}, \"merges\": []}}",
               (const char *[]){"added_tokens", "id 900000000", "ids must be dense", NULL});
    /* a Replace normalizer without "content" after its regex compiled: an
     * error, and (under ASan) no leak of the compiled regex */
    load_fails("Replace without content",
               tiny("{\"type\": \"Replace\", \"pattern\": {\"Regex\": \"a+\"}}", "null", "null", "BPE", ""),
               (const char *[]){"normalizer", "\"content\" is missing", NULL});

    /* a good tiny tokenizer: both merge forms, encode / decode errors */
    const char *path = tmp("good.json");
    write_file(path, tiny("null", "null", "null", "BPE", "[\"a\", \"b\"]"));
    tok = fsdp_tokenizer_load(path);
    CHECK(tok != NULL, "tiny tokenizer: %s", fsdp_last_error());
    if (!tok) return;
    int32_t ids[8];
    int64_t n = -1;
    /* first thing encoded: a word that yields no ids (no unk token), which
     * once copied 0 bytes from a NULL buffer (UBSan) */
    CHECK(fsdp_tokenizer_encode(tok, "c", 1, 0, ids, 8, &n) == FSDP_OK && n == 0, "a word with no ids: n %lld",
          (long long)n);
    CHECK(fsdp_tokenizer_encode(tok, "abab<s>b", 8, 0, ids, 8, &n) == FSDP_OK && n == 4 && ids[0] == 2 &&
          ids[1] == 2 && ids[2] == 3 && ids[3] == 1, "tiny encode: n %lld", (long long)n);
    CHECK(fsdp_tokenizer_encode(tok, "abab<s>b", 8, 0, ids, 3, &n) == FSDP_ERR_INVALID && n == 4 &&
          strstr(fsdp_last_error(), "needs 4"), "small output: %s", fsdp_last_error());
    CHECK(fsdp_tokenizer_encode(tok, "ab\xff" "b", 4, 0, ids, 8, &n) == FSDP_ERR_INVALID &&
          strstr(fsdp_last_error(), "not valid UTF-8 at byte 2"), "invalid UTF-8: %s", fsdp_last_error());
    CHECK(fsdp_tokenizer_encode(tok, "a\xed\xa0\x80", 4, 0, ids, 8, &n) == FSDP_ERR_INVALID,
          "a UTF-16 surrogate is not UTF-8");
    CHECK(fsdp_tokenizer_encode(tok, "abc", 3, 0, ids, 8, &n) == FSDP_OK && n == 1,
          "no unk token: an unknown character is dropped, as in the library (n %lld)", (long long)n);
    char out[16];
    int64_t len;
    int32_t bad[2] = {2, 4};
    CHECK(fsdp_tokenizer_decode(tok, bad, 2, 0, out, sizeof out, &len) == FSDP_ERR_INVALID &&
          strstr(fsdp_last_error(), "id 4 at position 1"), "decode out of range: %s", fsdp_last_error());
    int32_t good[3] = {2, 3, 0};
    CHECK(fsdp_tokenizer_decode(tok, good, 3, 0, out, sizeof out, &len) == FSDP_OK && strcmp(out, "ab <s> a") == 0,
          "no decoder joins tokens with spaces: \"%s\"", out);
    CHECK(fsdp_tokenizer_decode(tok, good, 3, 1, out, sizeof out, &len) == FSDP_OK && strcmp(out, "ab a") == 0,
          "skip_special: \"%s\"", out);
    CHECK(fsdp_tokenizer_decode(tok, good, 3, 0, out, 8, &len) == FSDP_ERR_INVALID && len == 8,
          "decode into a small buffer: %s", fsdp_last_error());
    CHECK(fsdp_tokenizer_token_to_id(tok, "<s>") == 3 && fsdp_tokenizer_token_to_id(tok, "zz") == -1 &&
          fsdp_tokenizer_id_to_token(tok, 7) == NULL && fsdp_tokenizer_is_special(tok, 3) &&
          !fsdp_tokenizer_is_special(tok, 2), "token queries");
    CHECK(fsdp_tokenizer_special_id(tok, FSDP_TOKEN_BOS) == 3 && fsdp_tokenizer_special_id(tok, FSDP_TOKEN_EOS) == -1 &&
          fsdp_tokenizer_special_id(tok, FSDP_TOKEN_UNK) == -1, "special ids by name");
    fsdp_tokenizer_free(tok);
}

/* ---- fuzz ---------------------------------------------------------------------- */

static void check_fuzz(void) {
    char path[512];
    snprintf(path, sizeof path, "%s/variants/roberta/tokenizer.json", GOLDEN);
    size_t n;
    char *good = read_all(path, &n);
    CHECK(good != NULL, "%s is missing", path);
    if (!good) return;
    char *buf = malloc(n + 1);
    const char *f = tmp("fuzz.json");
    srand(1234);
    int loaded = 0;
    for (int it = 0; it < 300; it++) {
        memcpy(buf, good, n + 1);
        size_t len = n;
        if (it % 3 == 0) len = (size_t)rand() % n;   /* truncated */
        else
            for (int k = 0; k < 1 + it % 5; k++) buf[(size_t)rand() % n] = (char)(rand() % 256);
        buf[len] = 0;
        FILE *o = fopen(f, "wb");
        fwrite(buf, 1, len, o);
        fclose(o);
        fsdp_tokenizer *tok = fsdp_tokenizer_load(f);
        if (tok) {
            loaded++;
            int64_t cnt;
            int32_t *ids = encode(tok, "Hello <mask> world, it's 12 o'clock", 35, 1, &cnt);
            if (ids) { int64_t l; free(decode(tok, ids, cnt, 0, &l)); }
            free(ids);
            fsdp_tokenizer_free(tok);
        } else CHECK(fsdp_last_error()[0] != 0, "fuzz %d: failed without a message", it);
    }
    printf("fuzz: 300 damaged files, %d still loaded, none crashed\n", loaded);
    free(buf);
    free(good);
}

int main(void) {
    if (!mkdtemp(tmpdir)) { perror("mkdtemp"); return 2; }
    corpus c = {0};
    c.text = read_all(CORPUS, &c.n);
    if (c.text) cut_chunks(&c);
    check_fixture("gpt2like", &c);
    check_fixture("llama3like", &c);
    check_fixture("llama2like", &c);
    check_variants();
    check_errors();
    check_fuzz();
    free(c.text);
    free(c.start);
    char cmd[600];
    snprintf(cmd, sizeof cmd, "rm -rf %s", tmpdir);
    if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", tmpdir);
    return check_exit("test_tokenizer");
}
