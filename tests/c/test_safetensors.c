/* test_safetensors.c - safetensors reader and writer, plus the file helpers
 * (crc32, atomic writes, directory commit).
 *
 *   round trip      every dtype, scalar / empty / 8-dim shapes, metadata
 *   reference       tests/golden/safetensors/reference.safetensors, written by
 *                   the real `safetensors` library, against its JSON sidecar
 *   malformed       each broken file fails with the file name and the problem
 *   fuzz            2000 corrupted or truncated variants never crash
 *
 * `test_safetensors --write FILE` writes the file that
 * `tests/golden/make_safetensors_fixture.py --check FILE` verifies with the
 * reference library. */
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include "fsdp.h"
#include "check.h"
#include "dtype_math.h"

static char dir[] = "/tmp/fsdp_test_st_XXXXXX";

static const char *tmp(const char *name) {
    static char buf[4][512];
    static int k;
    k = (k + 1) % 4;
    snprintf(buf[k], sizeof buf[k], "%s/%s", dir, name);
    return buf[k];
}

static void write_bytes(const char *path, const void *data, size_t n) {
    FILE *f = fopen(path, "wb");
    if (!f || fwrite(data, 1, n, f) != n) { perror(path); exit(2); }
    fclose(f);
}

static unsigned char *read_bytes(const char *path, size_t *n) {
    FILE *f = fopen(path, "rb");
    if (!f) { perror(path); exit(2); }
    fseek(f, 0, SEEK_END);
    *n = (size_t)ftell(f);
    fseek(f, 0, SEEK_SET);
    unsigned char *p = malloc(*n + 1);
    if (fread(p, 1, *n, f) != *n) { perror(path); exit(2); }
    fclose(f);
    return p;
}

/* a safetensors file from a header string (unpadded) and data bytes */
static void write_st_raw(const char *path, const char *header, const void *data, size_t data_len) {
    size_t n = strlen(header);
    unsigned char *buf = malloc(8 + n + data_len + 1);
    for (int i = 0; i < 8; i++) buf[i] = (unsigned char)((uint64_t)n >> (8 * i));
    memcpy(buf + 8, header, n);
    if (data_len) memcpy(buf + 8 + n, data, data_len);
    write_bytes(path, buf, 8 + n + data_len);
    free(buf);
}

static int exists(const char *path) { return access(path, F_OK) == 0; }

/* ---- round trip --------------------------------------------------------- */

static const char *st_names[FSDP_NUM_DTYPES] = {"F32", "BF16", "F16", "I32", "I64", "U16", "U8"};

static void test_round_trip(void) {
    static const int64_t shapes[][FSDP_MAX_DIMS] = {{0}, {0}, {5}, {3, 4}, {2, 0, 3}, {1, 2, 1, 3, 1, 1, 2, 1}};
    static const int ndims[] = {0, 1, 1, 2, 3, 8};
    enum { NS = sizeof ndims / sizeof ndims[0], NT = FSDP_NUM_DTYPES * NS };
    fsdp_rng rng;
    fsdp_rng_seed(&rng, 1);
    char names[NT][32];
    unsigned char *data[NT];
    int64_t nbytes[NT];
    fsdp_st_writer *w = fsdp_st_writer_new();
    CHECK(w != NULL, "writer_new: %s", fsdp_last_error());
    /* dtypes interleaved so odd-sized u8 tensors sit between wider ones */
    for (int s = 0, t = 0; s < NS; s++) {
        for (int d = FSDP_NUM_DTYPES - 1; d >= 0; d--, t++) {
            int64_t numel = 1;
            for (int k = 0; k < ndims[s]; k++) numel *= shapes[s][k];
            nbytes[t] = numel * fsdp_dtype_size(d);
            data[t] = malloc(nbytes[t] + 1);
            for (int64_t b = 0; b < nbytes[t]; b++) data[t][b] = (unsigned char)fsdp_rng_next(&rng);
            snprintf(names[t], sizeof names[t], "layers.%d.%s", s, fsdp_dtype_name(d));
            int rc = fsdp_st_writer_add(w, names[t], d, ndims[s], shapes[s], data[t]);
            CHECK(rc == FSDP_OK, "add %s: %s", names[t], fsdp_last_error());
        }
    }
    CHECK(fsdp_st_writer_set_metadata(w, "format", "pt") == FSDP_OK, "%s", fsdp_last_error());
    CHECK(fsdp_st_writer_set_metadata(w, "step", "old") == FSDP_OK, "%s", fsdp_last_error());
    CHECK(fsdp_st_writer_set_metadata(w, "step", "42") == FSDP_OK, "%s", fsdp_last_error());
    const char *path = tmp("round.safetensors");
    int rc = fsdp_st_writer_save(w, path);
    CHECK(rc == FSDP_OK, "save: %s", fsdp_last_error());
    CHECK(!exists(tmp("round.safetensors.tmp")), "temporary file left behind");
    /* saving again replaces the file */
    CHECK(fsdp_st_writer_save(w, path) == FSDP_OK, "second save: %s", fsdp_last_error());
    fsdp_st_writer_free(w);

    fsdp_st_file *f = fsdp_st_open(path);
    CHECK(f != NULL, "open: %s", fsdp_last_error());
    if (!f) return;
    CHECK(fsdp_st_count(f) == NT, "count %d", fsdp_st_count(f));
    struct stat st;
    stat(path, &st);
    int64_t expect_offset = -1;
    for (int t = 0, s = 0; s < NS; s++) {
        for (int d = FSDP_NUM_DTYPES - 1; d >= 0; d--, t++) {
            fsdp_st_info info;
            CHECK(fsdp_st_get_info(f, t, &info) == FSDP_OK, "%s", fsdp_last_error());
            const char *name = fsdp_st_name(f, t);
            CHECK(name && strcmp(name, names[t]) == 0, "name %d: %s vs %s", t, name, names[t]);
            CHECK(fsdp_st_find(f, names[t]) == t, "find %s", names[t]);
            CHECK(info.dtype == d && info.ndim == ndims[s] && info.nbytes == nbytes[t], "%s: info", names[t]);
            CHECK(strcmp(fsdp_st_dtype_string(f, t), st_names[d]) == 0, "%s: dtype string %s", names[t],
                  fsdp_st_dtype_string(f, t));
            for (int k = 0; k < ndims[s]; k++)
                CHECK(info.shape[k] == shapes[s][k], "%s: shape[%d] %lld", names[t], k, (long long)info.shape[k]);
            if (expect_offset < 0) {
                CHECK(info.offset % 8 == 0, "data buffer starts at %lld, not 8-byte aligned", (long long)info.offset);
                expect_offset = info.offset;
            }
            CHECK(info.offset == expect_offset, "%s: offset %lld, want %lld (insertion order, no gaps)", names[t],
                  (long long)info.offset, (long long)expect_offset);
            expect_offset += info.nbytes;
            CHECK(memcmp(fsdp_st_data(f, t), data[t], nbytes[t]) == 0, "%s: bytes differ", names[t]);
            free(data[t]);
        }
    }
    CHECK(expect_offset == st.st_size, "data ends at %lld, file is %lld bytes", (long long)expect_offset,
          (long long)st.st_size);
    CHECK(fsdp_st_metadata(f, "format") && strcmp(fsdp_st_metadata(f, "format"), "pt") == 0, "metadata format");
    CHECK(fsdp_st_metadata(f, "step") && strcmp(fsdp_st_metadata(f, "step"), "42") == 0, "metadata step");
    CHECK(fsdp_st_metadata(f, "missing") == NULL, "missing metadata key");
    CHECK(fsdp_st_find(f, "nope") == -1 && fsdp_st_find(f, "__metadata__") == -1, "find of absent names");
    CHECK(fsdp_st_name(f, NT) == NULL && fsdp_st_name(f, -1) == NULL, "name out of range");
    CHECK(fsdp_st_data(f, NT) == NULL, "data out of range");
    fsdp_st_info info;
    CHECK(fsdp_st_get_info(f, NT, &info) == FSDP_ERR_INVALID, "get_info out of range");
    fsdp_st_close(f);

    /* an empty writer makes a valid file with no tensors and no metadata */
    w = fsdp_st_writer_new();
    CHECK(fsdp_st_writer_save(w, tmp("empty.safetensors")) == FSDP_OK, "%s", fsdp_last_error());
    fsdp_st_writer_free(w);
    f = fsdp_st_open(tmp("empty.safetensors"));
    CHECK(f && fsdp_st_count(f) == 0 && fsdp_st_metadata(f, "format") == NULL, "empty file: %s", fsdp_last_error());
    fsdp_st_close(f);
}

static void test_writer_errors(void) {
    fsdp_st_writer *w = fsdp_st_writer_new();
    float x[4] = {0};
    int64_t shape[9] = {2, 2, 1, 1, 1, 1, 1, 1, 1};
    int64_t bad_shape[2] = {2, -1};
    CHECK(fsdp_st_writer_add(w, "a", FSDP_F32, 2, shape, x) == FSDP_OK, "%s", fsdp_last_error());
    CHECK(fsdp_st_writer_add(w, "a", FSDP_F32, 2, shape, x) == FSDP_ERR_INVALID &&
              strstr(fsdp_last_error(), "duplicate") && strstr(fsdp_last_error(), "'a'"),
          "duplicate name: %s", fsdp_last_error());
    CHECK(fsdp_st_writer_add(w, "__metadata__", FSDP_F32, 2, shape, x) == FSDP_ERR_INVALID, "reserved name");
    CHECK(fsdp_st_writer_add(w, "b", 17, 2, shape, x) == FSDP_ERR_INVALID, "bad dtype");
    CHECK(fsdp_st_writer_add(w, "b", FSDP_F32, 9, shape, x) == FSDP_ERR_INVALID, "9 dims");
    CHECK(fsdp_st_writer_add(w, "b", FSDP_F32, 2, bad_shape, x) == FSDP_ERR_INVALID &&
              strstr(fsdp_last_error(), "negative"), "negative dim: %s", fsdp_last_error());
    CHECK(fsdp_st_writer_add(w, "b", FSDP_F32, 2, shape, NULL) == FSDP_ERR_INVALID, "NULL data");
    CHECK(fsdp_st_writer_add(w, "\xff\xfe", FSDP_F32, 2, shape, x) == FSDP_ERR_INVALID, "invalid UTF-8 name");
    CHECK(fsdp_st_writer_set_metadata(w, "k", "\xc3") == FSDP_ERR_INVALID, "invalid UTF-8 metadata");
    int rc = fsdp_st_writer_save(w, "/nonexistent-dir/x.safetensors");
    CHECK(rc == FSDP_ERR_IO && strstr(fsdp_last_error(), "/nonexistent-dir/x.safetensors"),
          "save into a missing directory: %s", fsdp_last_error());
    /* the failed calls left the writer usable, holding just "a" */
    CHECK(fsdp_st_writer_save(w, tmp("after_errors.safetensors")) == FSDP_OK, "%s", fsdp_last_error());
    fsdp_st_writer_free(w);
    fsdp_st_file *f = fsdp_st_open(tmp("after_errors.safetensors"));
    CHECK(f && fsdp_st_count(f) == 1, "writer state after errors");
    fsdp_st_close(f);
}

/* ---- the reference fixture ---------------------------------------------- */

static int fsdp_dtype_of(const char *s) {
    for (int d = 0; d < FSDP_NUM_DTYPES; d++)
        if (strcmp(st_names[d], s) == 0) return d;
    return -1;
}

/* element i of a float or small integer tensor as f32 */
static float element(const void *p, const char *dtype, int64_t i) {
    if (!strcmp(dtype, "F32")) return ((const float *)p)[i];
    if (!strcmp(dtype, "BF16")) return fsdp_bf16_to_f32(((const uint16_t *)p)[i]);
    if (!strcmp(dtype, "F16")) return fsdp_f16_to_f32(((const uint16_t *)p)[i]);
    if (!strcmp(dtype, "U8")) return ((const uint8_t *)p)[i];
    return NAN;
}

static void test_reference_fixture(void) {
    const char *path = "tests/golden/safetensors/reference.safetensors";
    json_error_t jerr;
    json_t *want = json_load_file("tests/golden/safetensors/reference.json", 0, &jerr);
    CHECK(want != NULL, "reference.json: %s (line %d)", jerr.text, jerr.line);
    fsdp_st_file *f = fsdp_st_open(path);
    CHECK(f != NULL, "open: %s", fsdp_last_error());
    if (!f || !want) { fsdp_st_close(f); json_decref(want); return; }

    const char *key;
    json_t *value;
    json_object_foreach(json_object_get(want, "metadata"), key, value) {
        const char *got = fsdp_st_metadata(f, key);
        CHECK(got && strcmp(got, json_string_value(value)) == 0, "metadata %s: %s", key, got);
    }
    json_t *tensors = json_object_get(want, "tensors");
    CHECK(fsdp_st_count(f) == (int)json_array_size(tensors), "count %d", fsdp_st_count(f));
    size_t i;
    json_array_foreach(tensors, i, value) {
        const char *name = json_string_value(json_object_get(value, "name"));
        const char *dtype = json_string_value(json_object_get(value, "dtype"));
        json_t *shape = json_object_get(value, "shape"), *values = json_object_get(value, "values");
        /* the file's own order, which the sidecar lists */
        CHECK(fsdp_st_name(f, (int)i) && strcmp(fsdp_st_name(f, (int)i), name) == 0, "tensor %zu is %s, want %s",
              i, fsdp_st_name(f, (int)i), name);
        int t = fsdp_st_find(f, name);
        CHECK(t == (int)i, "find %s: %d", name, t);
        if (t < 0) continue;
        fsdp_st_info info;
        fsdp_st_get_info(f, t, &info);
        CHECK(info.dtype == fsdp_dtype_of(dtype), "%s: dtype %d", name, info.dtype);
        CHECK(strcmp(fsdp_st_dtype_string(f, t), dtype) == 0, "%s: dtype string %s", name, fsdp_st_dtype_string(f, t));
        CHECK(info.ndim == (int)json_array_size(shape), "%s: ndim %d", name, info.ndim);
        for (int d = 0; d < info.ndim; d++)
            CHECK(info.shape[d] == json_integer_value(json_array_get(shape, d)), "%s: shape[%d]", name, d);
        const void *p = fsdp_st_data(f, t);
        uint32_t crc = fsdp_crc32(0, p, info.nbytes);
        CHECK(crc == (uint32_t)json_integer_value(json_object_get(value, "crc32")), "%s: crc32 %u", name, crc);
        size_t n = json_array_size(values);
        CHECK(n * (info.dtype >= 0 ? fsdp_dtype_size(info.dtype) : 8) == (size_t)info.nbytes, "%s: value count", name);
        if (!strcmp(dtype, "I64") || !strcmp(dtype, "F64")) {   /* compared at full width */
            for (size_t k = 0; k < n; k++) {
                json_t *v = json_array_get(values, k);
                if (!strcmp(dtype, "I64"))
                    CHECK(((const int64_t *)p)[k] == json_integer_value(v), "%s[%zu]", name, k);
                else
                    CHECK(((const double *)p)[k] == json_number_value(v), "%s[%zu]", name, k);
            }
        } else {
            float got[16], exp[16];
            CHECK(n <= 16, "%s: fixture tensor larger than this test expects", name);
            for (size_t k = 0; k < n && k < 16; k++) {
                got[k] = element(p, dtype, k);
                exp[k] = (float)json_number_value(json_array_get(values, k));
            }
            CHECK_CLOSE(name, got, exp, (long)(n < 16 ? n : 16), 0.0, 0.0);   /* exact */
        }
    }
    fsdp_st_close(f);
    json_decref(want);
}

/* ---- malformed files ---------------------------------------------------- */

/* opening path must fail with a message naming the file and the problem */
static void expect_fail(const char *path, const char *problem, const char *what) {
    fsdp_clear_error();
    fsdp_st_file *f = fsdp_st_open(path);
    const char *err = fsdp_last_error();
    CHECK(f == NULL && strstr(err, path) && strstr(err, problem), "%s: want \"%s\", got \"%s\"", what, problem, err);
    fsdp_st_close(f);
}

static void expect_fail_header(const char *header, size_t data_len, const char *problem, const char *what) {
    static unsigned char zeros[256];
    const char *path = tmp("bad.safetensors");
    write_st_raw(path, header, zeros, data_len);
    expect_fail(path, problem, what);
}

static void test_malformed(void) {
    const char *path = tmp("bad.safetensors");
    write_bytes(path, "", 0);
    expect_fail(path, "shorter than the 8-byte", "empty file");
    write_bytes(path, "\x10\0\0", 3);
    expect_fail(path, "shorter than the 8-byte", "3-byte file");
    expect_fail(tmp("does-not-exist.safetensors"), "cannot open", "missing file");
    expect_fail(dir, "not a regular file", "a directory");

    unsigned char buf[64] = {0xe8, 0x03};   /* claims 1000 header bytes */
    memcpy(buf + 8, "{}", 2);
    write_bytes(path, buf, sizeof buf);
    expect_fail(path, "header length 1000 runs past the end of the file (64 bytes)", "header beyond file");
    unsigned char huge[16] = {0, 0, 0, 0, 0, 1};   /* 2^40 */
    write_bytes(path, huge, sizeof huge);
    expect_fail(path, "is absurd", "absurd header length");

    expect_fail_header("{\"w\": {\"dtype\": \"F32\",", 0, "not valid JSON", "invalid JSON");
    expect_fail_header("{\"w\": {\"dtype\": \"F32\",\n \"shape\": [1] \"x\"}}", 0, "line 2", "JSON error position");
    expect_fail_header("[1, 2]", 0, "not a JSON object", "header is an array");
    expect_fail_header("{\"w\": 3}", 0, "tensor 'w': entry is not a JSON object", "entry not an object");
    expect_fail_header("{\"w\": {\"shape\": [2], \"data_offsets\": [0, 8]}}", 8, "tensor 'w': \"dtype\" is missing",
                       "missing dtype");
    expect_fail_header("{\"w\": {\"dtype\": 1, \"shape\": [2], \"data_offsets\": [0, 8]}}", 8,
                       "tensor 'w': \"dtype\" is not a string", "dtype not a string");
    expect_fail_header("{\"w\": {\"dtype\": \"F33\", \"shape\": [2], \"data_offsets\": [0, 8]}}", 8,
                       "tensor 'w': unknown dtype \"F33\"", "unknown dtype");
    expect_fail_header("{\"w\": {\"dtype\": \"F32\", \"data_offsets\": [0, 8]}}", 8, "tensor 'w': \"shape\" is missing",
                       "missing shape");
    expect_fail_header("{\"w\": {\"dtype\": \"F32\", \"shape\": \"2\", \"data_offsets\": [0, 8]}}", 8,
                       "\"shape\" is not an array", "shape not an array");
    expect_fail_header("{\"w\": {\"dtype\": \"F32\", \"shape\": [2, 1.5], \"data_offsets\": [0, 8]}}", 8,
                       "shape[1] is not an integer", "fractional dim");
    expect_fail_header("{\"w\": {\"dtype\": \"F32\", \"shape\": [2, -1], \"data_offsets\": [0, 8]}}", 8,
                       "tensor 'w': shape[1] is negative (-1)", "negative dim");
    expect_fail_header("{\"w\": {\"dtype\": \"F32\", \"shape\": [1,1,1,1,1,1,1,1,2], \"data_offsets\": [0, 8]}}", 8,
                       "shape has 9 dimensions, at most 8", "9 dims");
    expect_fail_header("{\"w\": {\"dtype\": \"F32\", \"shape\": [2]}}", 8, "tensor 'w': \"data_offsets\" is missing",
                       "missing data_offsets");
    expect_fail_header("{\"w\": {\"dtype\": \"F32\", \"shape\": [2], \"data_offsets\": [0]}}", 8,
                       "not [begin, end] integers", "one offset");
    expect_fail_header("{\"w\": {\"dtype\": \"F32\", \"shape\": [2], \"data_offsets\": [8, 0]}}", 8,
                       "not an ordered range", "reversed offsets");
    expect_fail_header("{\"w\": {\"dtype\": \"F32\", \"shape\": [2, 3], \"data_offsets\": [0, 20]}}", 24,
                       "tensor 'w': shape [2, 3] of F32 needs 24 bytes but data_offsets [0, 20] span 20",
                       "shape disagrees with offsets");
    expect_fail_header("{\"w\": {\"dtype\": \"F32\", \"shape\": [4611686018427387904, 4], \"data_offsets\": [0, 0]}}",
                       0, "shape [4611686018427387904, 4] is too large", "shape overflow");
    expect_fail_header("{\"w\": {\"dtype\": \"F4\", \"shape\": [3], \"data_offsets\": [0, 2]}}", 2,
                       "not a whole number of bytes", "odd count of 4-bit values");
    expect_fail_header("{\"a\": {\"dtype\": \"F32\", \"shape\": [4], \"data_offsets\": [0, 16]},"
                       " \"b\": {\"dtype\": \"F32\", \"shape\": [4], \"data_offsets\": [8, 24]}}", 24,
                       "tensors 'a' (bytes", "overlapping ranges");
    expect_fail_header("{\"a\": {\"dtype\": \"F32\", \"shape\": [2], \"data_offsets\": [0, 8]},"
                       " \"a\": {\"dtype\": \"F32\", \"shape\": [2], \"data_offsets\": [8, 16]}}", 16,
                       "duplicate", "duplicate names");
    expect_fail_header("{\"__metadata__\": {\"k\": 1}}", 0, "\"__metadata__\" value for \"k\" is not a string",
                       "metadata value not a string");
    expect_fail_header("{\"__metadata__\": [1]}", 0, "\"__metadata__\" is not a JSON object", "metadata not an object");

    /* truncated data: the header is fine but the data stops short; the
     * header is 65 bytes, so the data runs from 73 and w needs 73..97 */
    const char *h = "{\"w\": {\"dtype\": \"F32\", \"shape\": [2, 3], \"data_offsets\": [0, 24]}}";
    CHECK(strlen(h) == 65, "header length %zu", strlen(h));
    expect_fail_header(h, 10, "truncated: tensor 'w' needs bytes 73..97 but the file has only 83", "truncated data");

    /* valid dtypes we do not compute with read as dtype -1 */
    write_st_raw(path, "{\"d\": {\"dtype\": \"F64\", \"shape\": [2], \"data_offsets\": [0, 16]},"
                       " \"b\": {\"dtype\": \"BOOL\", \"shape\": [3], \"data_offsets\": [16, 19]},"
                       " \"q\": {\"dtype\": \"F4\", \"shape\": [2, 2], \"data_offsets\": [19, 21]},"
                       " \"z\": {\"dtype\": \"I8\", \"shape\": [0], \"data_offsets\": [19, 19]},"
                       " \"f\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [24, 28]}}",
                 "0123456789abcdefghijklmnopqrstuvwxyz", 28);
    fsdp_st_file *f = fsdp_st_open(path);
    CHECK(f != NULL, "unhandled dtypes: %s", fsdp_last_error());
    if (f) {
        fsdp_st_info info;
        fsdp_st_get_info(f, fsdp_st_find(f, "d"), &info);
        CHECK(info.dtype == -1 && info.nbytes == 16 && !strcmp(fsdp_st_dtype_string(f, 0), "F64"), "F64 entry");
        fsdp_st_get_info(f, fsdp_st_find(f, "q"), &info);
        CHECK(info.dtype == -1 && info.nbytes == 2 && !strcmp(fsdp_st_dtype_string(f, 2), "F4"), "F4 entry");
        fsdp_st_get_info(f, fsdp_st_find(f, "f"), &info);
        CHECK(info.dtype == FSDP_F32 && memcmp(fsdp_st_data(f, 4), "opqr", 4) == 0, "F32 after a gap");
    }
    fsdp_st_close(f);
}

/* ---- fuzz --------------------------------------------------------------- */

static void test_fuzz(void) {
    /* a small valid file with several entries and metadata */
    fsdp_st_writer *w = fsdp_st_writer_new();
    float a[6] = {1, 2, 3, 4, 5, 6};
    int64_t s23[2] = {2, 3}, s3[1] = {3}, s0[1] = {0};
    fsdp_st_writer_add(w, "a", FSDP_F32, 2, s23, a);
    fsdp_st_writer_add(w, "bb", FSDP_U8, 1, s3, a);
    fsdp_st_writer_add(w, "c.weight", FSDP_BF16, 1, s3, a);
    fsdp_st_writer_add(w, "d", FSDP_I64, 0, NULL, a);
    fsdp_st_writer_add(w, "e", FSDP_I32, 1, s0, NULL);
    fsdp_st_writer_set_metadata(w, "format", "pt");
    const char *good = tmp("fuzz_base.safetensors"), *path = tmp("fuzz.safetensors");
    CHECK(fsdp_st_writer_save(w, good) == FSDP_OK, "%s", fsdp_last_error());
    fsdp_st_writer_free(w);
    size_t n;
    unsigned char *base = read_bytes(good, &n), *buf = malloc(n);
    size_t header_end = 8 + (base[0] | base[1] << 8);

    fsdp_rng rng;
    fsdp_rng_seed(&rng, 7);
    int opened = 0, failed = 0;
    for (int iter = 0; iter < 2000; iter++) {
        memcpy(buf, base, n);
        size_t len = n;
        int mode = iter % 5;
        int flips = 1 + (int)(fsdp_rng_next(&rng) % 3);
        for (int k = 0; k < flips; k++) {
            size_t at = mode == 1 ? fsdp_rng_next(&rng) % n : fsdp_rng_next(&rng) % header_end;
            if (mode == 0 || mode == 1) buf[at] ^= (unsigned char)(1u << (fsdp_rng_next(&rng) % 8));
            if (mode == 2 && buf[at] >= '0' && buf[at] <= '9') buf[at] = (unsigned char)('0' + fsdp_rng_next(&rng) % 10);
            if (mode == 3) buf[at] = (unsigned char)fsdp_rng_next(&rng);
        }
        if (mode == 4 || fsdp_rng_next(&rng) % 8 == 0) len = fsdp_rng_next(&rng) % (n + 1);
        write_bytes(path, buf, len);
        fsdp_clear_error();
        fsdp_st_file *f = fsdp_st_open(path);
        if (!f) {
            failed++;
            CHECK(strstr(fsdp_last_error(), path) != NULL, "variant %d: message without the path: %s", iter,
                  fsdp_last_error());
            continue;
        }
        opened++;
        unsigned sum = 0;
        for (int t = 0; t < fsdp_st_count(f); t++) {
            fsdp_st_info info;
            CHECK(fsdp_st_get_info(f, t, &info) == FSDP_OK, "%s", fsdp_last_error());
            CHECK(info.offset >= 0 && info.offset + info.nbytes <= (int64_t)len, "variant %d: range outside file",
                  iter);
            const unsigned char *p = fsdp_st_data(f, t);
            for (int64_t b = 0; b < info.nbytes; b++) sum += p[b];
            CHECK(fsdp_st_find(f, fsdp_st_name(f, t)) == t, "variant %d: find", iter);
            (void)fsdp_st_dtype_string(f, t);
        }
        (void)fsdp_st_metadata(f, "format");
        (void)sum;
        fsdp_st_close(f);
    }
    printf("fuzz: %d variants opened, %d rejected\n", opened, failed);
    CHECK(opened > 50 && failed > 500, "fuzz mix: %d opened, %d rejected", opened, failed);
    free(base);
    free(buf);
}

/* ---- crc32, atomic writes, directory commit ----------------------------- */

static void test_fileio(void) {
    CHECK(fsdp_crc32(0, "123456789", 9) == 0xCBF43926u, "crc32 check value");
    CHECK(fsdp_crc32(fsdp_crc32(0, "1234", 4), "56789", 5) == 0xCBF43926u, "crc32 in two pieces");

    size_t n = 3 * (1 << 20) + 17;
    unsigned char *big = malloc(n);
    fsdp_rng rng;
    fsdp_rng_seed(&rng, 3);
    for (size_t i = 0; i < n; i++) big[i] = (unsigned char)fsdp_rng_next(&rng);
    const char *path = tmp("blob.bin");
    CHECK(fsdp_file_write_atomic(path, big, (int64_t)n) == FSDP_OK, "%s", fsdp_last_error());
    CHECK(!exists(tmp("blob.bin.tmp")), "temporary file left behind");
    size_t got_n;
    unsigned char *got = read_bytes(path, &got_n);
    CHECK(got_n == n && memcmp(got, big, n) == 0, "atomic write contents");
    CHECK(fsdp_file_crc32(path) == (int64_t)fsdp_crc32(0, big, (int64_t)n), "file crc32 over 1 MiB chunks");
    free(got);
    free(big);
    CHECK(fsdp_file_write_atomic(path, NULL, 0) == FSDP_OK, "empty write: %s", fsdp_last_error());
    CHECK(fsdp_file_crc32(path) == 0, "crc32 of an empty file");
    CHECK(fsdp_file_crc32(tmp("missing")) == -1 && strstr(fsdp_last_error(), "missing"), "crc32 of a missing file");
    CHECK(fsdp_file_write_atomic(tmp("no/such/dir"), "x", 1) == FSDP_ERR_IO && strstr(fsdp_last_error(), "no/such/dir"),
          "write into a missing directory: %s", fsdp_last_error());

    const char *work = tmp("step_10.tmp"), *final = tmp("step_10");
    mkdir(work, 0755);
    write_bytes(tmp("step_10.tmp/index.json"), "{}", 2);
    CHECK(fsdp_dir_commit(work, final) == FSDP_OK, "commit: %s", fsdp_last_error());
    CHECK(exists(tmp("step_10/index.json")) && !exists(work), "committed directory in place");
    mkdir(work, 0755);
    CHECK(fsdp_dir_commit(work, final) == FSDP_ERR_IO && strstr(fsdp_last_error(), "already exists"),
          "commit onto an existing directory: %s", fsdp_last_error());
    mkdir(tmp("empty_target"), 0755);
    CHECK(fsdp_dir_commit(work, tmp("empty_target")) == FSDP_ERR_IO, "commit onto an existing empty directory");
    CHECK(exists(work), "failed commit keeps the source");
    CHECK(fsdp_dir_commit(tmp("nothing.tmp"), tmp("nothing")) == FSDP_ERR_IO && strstr(fsdp_last_error(), "nothing.tmp"),
          "commit of a missing directory: %s", fsdp_last_error());
}

/* ---- --write: the file the Python reference library checks -------------- */

static int write_cross_check_file(const char *path) {
    union { float f[6]; uint16_t h[6]; int32_t i[6]; int64_t l[6]; uint8_t b[6]; } v[FSDP_NUM_DTYPES];
    int64_t shape[2] = {2, 3}, zero = 0;
    float scalar = 3.5f;
    int empty_data = 0;
    fsdp_st_writer *w = fsdp_st_writer_new();
    /* u8 first, so every later tensor starts at an odd offset */
    for (int d = FSDP_NUM_DTYPES - 1; d >= 0; d--) {
        for (int i = 0; i < 6; i++) {
            int x = (d == FSDP_U8 || d == FSDP_U16) ? i : i - 2;
            switch (d) {
            case FSDP_F32: v[d].f[i] = (float)x; break;
            case FSDP_BF16: v[d].h[i] = fsdp_f32_to_bf16((float)x); break;
            case FSDP_F16: v[d].h[i] = fsdp_f32_to_f16((float)x); break;
            case FSDP_I32: v[d].i[i] = x; break;
            case FSDP_I64: v[d].l[i] = x; break;
            case FSDP_U16: v[d].h[i] = (uint16_t)x; break;
            case FSDP_U8: v[d].b[i] = (uint8_t)x; break;
            }
        }
        char name[16];
        snprintf(name, sizeof name, "t_%s", fsdp_dtype_name(d));
        fsdp_st_writer_add(w, name, d, 2, shape, &v[d]);
    }
    fsdp_st_writer_add(w, "scalar", FSDP_F32, 0, NULL, &scalar);
    fsdp_st_writer_add(w, "empty", FSDP_I32, 1, &zero, &empty_data);
    fsdp_st_writer_set_metadata(w, "writer", "fsdp-lua");
    fsdp_st_writer_set_metadata(w, "purpose", "cross-check");
    int rc = fsdp_st_writer_save(w, path);
    fsdp_st_writer_free(w);
    if (rc) fprintf(stderr, "%s\n", fsdp_last_error());
    else printf("wrote %s\n", path);
    return rc != 0;
}

int main(int argc, char **argv) {
    if (argc == 3 && strcmp(argv[1], "--write") == 0) return write_cross_check_file(argv[2]);
    if (!mkdtemp(dir)) { perror("mkdtemp"); return 2; }
    test_round_trip();
    test_writer_errors();
    test_reference_fixture();
    test_malformed();
    test_fuzz();
    test_fileio();
    if (!check_failures) {
        char cmd[600];
        snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
        if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", dir);
    }
    return check_exit("test_safetensors");
}
