/* safetensors.c - reading and writing the safetensors format.
 *
 * A file is: an 8-byte little-endian length N, N bytes of JSON header, then
 * the data buffer. The header maps each tensor name to
 *   {"dtype": "F32", "shape": [2, 3], "data_offsets": [begin, end]}
 * with offsets relative to the start of the data buffer, plus an optional
 * "__metadata__" object of string values.
 *
 * The reader maps the file read-only and checks the whole header before
 * returning: every entry well formed, its byte size matching its shape, its
 * range inside the file and no two ranges overlapping. A file that passes can
 * be read through fsdp_st_data without further checks. Every error names the
 * file and, where there is one, the tensor.
 *
 * The writer lays tensors out in the order they were added, and pads the
 * header with spaces so the data buffer starts on an 8-byte boundary, as the
 * reference library does. */
#define _GNU_SOURCE   /* qsort_r */
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>
#include "internal.h"

enum { MAX_HEADER = 100 * 1000 * 1000 };

/* Every dtype of the format. The ones we compute with map to an fsdp_dtype;
 * the others read with dtype -1 so a caller can skip them by name. Sizes are
 * in bits because F4 and F6 pack several elements into a byte. */
static const struct { const char *name; int bits; int dtype; } st_dtypes[] = {
    {"F32", 32, FSDP_F32},  {"BF16", 16, FSDP_BF16}, {"F16", 16, FSDP_F16},
    {"I32", 32, FSDP_I32},  {"I64", 64, FSDP_I64},   {"U16", 16, FSDP_U16},
    {"U8", 8, FSDP_U8},     {"F64", 64, -1},         {"C64", 64, -1},
    {"I16", 16, -1},        {"U32", 32, -1},         {"U64", 64, -1},
    {"I8", 8, -1},          {"BOOL", 8, -1},         {"F8_E4M3", 8, -1},
    {"F8_E5M2", 8, -1},     {"F8_E4M3FNUZ", 8, -1},  {"F8_E5M2FNUZ", 8, -1},
    {"F8_E8M0", 8, -1},     {"F6_E2M3", 6, -1},      {"F6_E3M2", 6, -1},
    {"F4", 4, -1},
};
enum { N_ST_DTYPES = sizeof st_dtypes / sizeof st_dtypes[0] };

static int st_dtype_lookup(const char *s) {
    for (int i = 0; i < N_ST_DTYPES; i++)
        if (strcmp(st_dtypes[i].name, s) == 0) return i;
    return -1;
}

static const char *st_dtype_of(int dtype) {
    for (int i = 0; i < N_ST_DTYPES; i++)
        if (st_dtypes[i].dtype == dtype && dtype >= 0) return st_dtypes[i].name;
    return NULL;
}

/* ---- reader ------------------------------------------------------------- */

typedef struct st_entry {
    const char *name;       /* strings point into the parsed header */
    const char *dtype_str;
    fsdp_st_info info;
} st_entry;

struct fsdp_st_file {
    char *path;
    unsigned char *map;
    size_t map_len;
    json_t *header;         /* owns the strings the entries point to */
    json_t *metadata;       /* borrowed from header; NULL when absent */
    int n;
    st_entry *entries;      /* in file order */
    int *by_name;           /* entry indices sorted by name, for find */
};

/* qsort_r comparators of entry indices; ctx is the entry array */
static int cmp_by_name(const void *a, const void *b, void *ctx) {
    const st_entry *e = ctx;
    return strcmp(e[*(const int *)a].name, e[*(const int *)b].name);
}

static int cmp_by_offset(const void *a, const void *b, void *ctx) {
    const st_entry *e = ctx;
    int64_t x = e[*(const int *)a].info.offset, y = e[*(const int *)b].info.offset;
    return (x > y) - (x < y);
}

/* the integer at index i of a JSON array, or -1 when it is not one */
static int get_int(const json_t *array, size_t i, int64_t *out) {
    const json_t *v = json_array_get(array, i);
    if (!json_is_integer(v)) return -1;
    *out = json_integer_value(v);
    return 0;
}

/* checks one header entry and fills e; the data buffer runs from data_start
 * to the end of the file */
static int parse_entry(const char *path, const char *name, const json_t *v, int64_t data_start,
                       int64_t file_size, st_entry *e) {
    e->name = name;
    if (!json_is_object(v))
        return fsdp_error(FSDP_ERR_FORMAT, "%s: tensor '%s': entry is not a JSON object", path, name);

    const json_t *dtype = json_object_get(v, "dtype");
    if (!json_is_string(dtype))
        return fsdp_error(FSDP_ERR_FORMAT, "%s: tensor '%s': \"dtype\" is %s", path, name,
                          dtype ? "not a string" : "missing");
    e->dtype_str = json_string_value(dtype);
    int k = st_dtype_lookup(e->dtype_str);
    if (k < 0)
        return fsdp_error(FSDP_ERR_FORMAT, "%s: tensor '%s': unknown dtype \"%s\"", path, name,
                          e->dtype_str);
    e->info.dtype = st_dtypes[k].dtype;

    const json_t *shape = json_object_get(v, "shape");
    if (!json_is_array(shape))
        return fsdp_error(FSDP_ERR_FORMAT, "%s: tensor '%s': \"shape\" is %s", path, name,
                          shape ? "not an array" : "missing");
    size_t ndim = json_array_size(shape);
    if (ndim > FSDP_MAX_DIMS)
        return fsdp_error(FSDP_ERR_FORMAT, "%s: tensor '%s': shape has %zu dimensions, at most %d are supported",
                          path, name, ndim, FSDP_MAX_DIMS);
    e->info.ndim = (int32_t)ndim;
    int64_t numel = 1;
    int overflow = 0;
    for (size_t d = 0; d < ndim; d++) {
        int64_t n;
        if (get_int(shape, d, &n))
            return fsdp_error(FSDP_ERR_FORMAT, "%s: tensor '%s': shape[%zu] is not an integer", path,
                              name, d);
        if (n < 0)
            return fsdp_error(FSDP_ERR_FORMAT, "%s: tensor '%s': shape[%zu] is negative (%lld)", path,
                              name, d, (long long)n);
        e->info.shape[d] = n;
        overflow |= __builtin_mul_overflow(numel, n, &numel);
    }

    const json_t *offsets = json_object_get(v, "data_offsets");
    if (!json_is_array(offsets))
        return fsdp_error(FSDP_ERR_FORMAT, "%s: tensor '%s': \"data_offsets\" is %s", path, name,
                          offsets ? "not an array" : "missing");
    int64_t begin, end;
    if (json_array_size(offsets) != 2 || get_int(offsets, 0, &begin) || get_int(offsets, 1, &end))
        return fsdp_error(FSDP_ERR_FORMAT, "%s: tensor '%s': \"data_offsets\" is not [begin, end] integers",
                          path, name);
    if (begin < 0 || end < begin)
        return fsdp_error(FSDP_ERR_FORMAT, "%s: tensor '%s': data_offsets [%lld, %lld] are not an ordered range",
                          path, name, (long long)begin, (long long)end);

    int64_t bits;
    overflow |= __builtin_mul_overflow(numel, (int64_t)st_dtypes[k].bits, &bits);
    if (overflow || bits % 8 || bits / 8 != end - begin) {
        char dims[160] = "";
        for (size_t d = 0, used = 0; d < ndim && used < sizeof dims; d++)
            used += snprintf(dims + used, sizeof dims - used, "%s%lld", d ? ", " : "",
                             (long long)e->info.shape[d]);
        if (overflow)
            return fsdp_error(FSDP_ERR_FORMAT, "%s: tensor '%s': shape [%s] is too large", path, name, dims);
        if (bits % 8)
            return fsdp_error(FSDP_ERR_FORMAT, "%s: tensor '%s': shape [%s] of %s is not a whole number of bytes",
                              path, name, dims, e->dtype_str);
        return fsdp_error(FSDP_ERR_FORMAT,
                          "%s: tensor '%s': shape [%s] of %s needs %lld bytes but data_offsets [%lld, %lld] span %lld",
                          path, name, dims, e->dtype_str, (long long)(bits / 8), (long long)begin,
                          (long long)end, (long long)(end - begin));
    }
    /* data_start <= file_size, so this cannot overflow */
    if (end > file_size - data_start)
        return fsdp_error(FSDP_ERR_FORMAT,
                          "%s: truncated: tensor '%s' needs bytes %lld..%lld but the file has only %lld",
                          path, name, (long long)(data_start + begin), (long long)(data_start + end),
                          (long long)file_size);
    e->info.offset = data_start + begin;
    e->info.nbytes = end - begin;
    return FSDP_OK;
}

static int parse_metadata(fsdp_st_file *f, json_t *meta) {
    if (!json_is_object(meta))
        return fsdp_error(FSDP_ERR_FORMAT, "%s: \"__metadata__\" is not a JSON object", f->path);
    const char *key;
    json_t *value;
    json_object_foreach(meta, key, value) {
        if (!json_is_string(value))
            return fsdp_error(FSDP_ERR_FORMAT, "%s: \"__metadata__\" value for \"%s\" is not a string",
                              f->path, key);
    }
    f->metadata = meta;
    return FSDP_OK;
}

/* no two non-empty byte ranges may share a byte; order is scratch space */
static int check_overlaps(fsdp_st_file *f, int *order) {
    for (int i = 0; i < f->n; i++) order[i] = i;
    qsort_r(order, f->n, sizeof *order, cmp_by_offset, f->entries);
    const st_entry *last = NULL;   /* the non-empty range reaching furthest so far */
    for (int i = 0; i < f->n; i++) {
        const st_entry *e = &f->entries[order[i]];
        if (e->info.nbytes == 0) continue;
        if (last && e->info.offset < last->info.offset + last->info.nbytes)
            return fsdp_error(FSDP_ERR_FORMAT, "%s: tensors '%s' (bytes %lld..%lld) and '%s' (bytes %lld..%lld) overlap",
                              f->path, last->name, (long long)last->info.offset,
                              (long long)(last->info.offset + last->info.nbytes), e->name,
                              (long long)e->info.offset, (long long)(e->info.offset + e->info.nbytes));
        if (!last || e->info.offset + e->info.nbytes > last->info.offset + last->info.nbytes) last = e;
    }
    return FSDP_OK;
}

/* parses and checks the header; on error the caller closes f */
static int parse_header(fsdp_st_file *f, int64_t header_len) {
    json_error_t jerr;
    f->header = json_loadb((const char *)f->map + 8, (size_t)header_len, JSON_REJECT_DUPLICATES, &jerr);
    if (!f->header)
        return fsdp_error(FSDP_ERR_FORMAT, "%s: header is not valid JSON: %s (line %d, column %d)", f->path,
                          jerr.text, jerr.line, jerr.column);
    if (!json_is_object(f->header))
        return fsdp_error(FSDP_ERR_FORMAT, "%s: header is not a JSON object", f->path);

    size_t count = json_object_size(f->header);
    f->entries = calloc(count ? count : 1, sizeof *f->entries);
    f->by_name = calloc(count ? count : 1, sizeof *f->by_name);
    if (!f->entries || !f->by_name) return fsdp_error(FSDP_ERR_OOM, "%s: out of memory for the header", f->path);
    int64_t data_start = 8 + header_len;
    const char *key;
    json_t *value;
    json_object_foreach(f->header, key, value) {
        int status = strcmp(key, "__metadata__") == 0
                         ? parse_metadata(f, value)
                         : parse_entry(f->path, key, value, data_start, (int64_t)f->map_len, &f->entries[f->n++]);
        if (status) return status;
    }
    if (check_overlaps(f, f->by_name)) return FSDP_ERR_FORMAT;
    for (int i = 0; i < f->n; i++) f->by_name[i] = i;
    qsort_r(f->by_name, f->n, sizeof *f->by_name, cmp_by_name, f->entries);
    return FSDP_OK;
}

fsdp_st_file *fsdp_st_open(const char *path) {
    if (!path) return fsdp_error_null(FSDP_ERR_INVALID, "safetensors: NULL path");
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return fsdp_error_null(FSDP_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fd, &st) != 0) {
        close(fd);
        return fsdp_error_null(FSDP_ERR_IO, "%s: cannot stat: %s", path, strerror(errno));
    }
    if (!S_ISREG(st.st_mode)) {
        close(fd);
        return fsdp_error_null(FSDP_ERR_IO, "%s: not a regular file", path);
    }
    if (st.st_size < 8) {
        close(fd);
        return fsdp_error_null(FSDP_ERR_FORMAT, "%s: file is %lld bytes, shorter than the 8-byte header length",
                               path, (long long)st.st_size);
    }
    void *m = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
    close(fd);
    if (m == MAP_FAILED) return fsdp_error_null(FSDP_ERR_IO, "%s: mmap failed: %s", path, strerror(errno));

    fsdp_st_file *f = calloc(1, sizeof *f);
    if (f) f->path = strdup(path);
    if (!f || !f->path) {
        free(f);
        munmap(m, (size_t)st.st_size);
        return fsdp_error_null(FSDP_ERR_OOM, "%s: out of memory", path);
    }
    f->map = m;
    f->map_len = (size_t)st.st_size;

    uint64_t header_len = 0;
    for (int i = 7; i >= 0; i--) header_len = header_len << 8 | f->map[i];
    int status;
    if (header_len > MAX_HEADER)
        status = fsdp_error(FSDP_ERR_FORMAT, "%s: header length %llu is absurd (more than %d bytes): not a safetensors file?",
                            path, (unsigned long long)header_len, MAX_HEADER);
    else if (header_len > f->map_len - 8)
        status = fsdp_error(FSDP_ERR_FORMAT, "%s: header length %llu runs past the end of the file (%lld bytes)",
                            path, (unsigned long long)header_len, (long long)st.st_size);
    else
        status = parse_header(f, (int64_t)header_len);
    if (status) {
        fsdp_st_close(f);
        return NULL;
    }
    return f;
}

void fsdp_st_close(fsdp_st_file *f) {
    if (!f) return;
    if (f->map) munmap(f->map, f->map_len);
    json_decref(f->header);
    free(f->entries);
    free(f->by_name);
    free(f->path);
    free(f);
}

int fsdp_st_count(const fsdp_st_file *f) { return f ? f->n : 0; }

const char *fsdp_st_name(const fsdp_st_file *f, int i) {
    return f && i >= 0 && i < f->n ? f->entries[i].name : NULL;
}

int fsdp_st_find(const fsdp_st_file *f, const char *name) {
    if (!f || !name) return -1;
    int lo = 0, hi = f->n - 1;
    while (lo <= hi) {
        int mid = lo + (hi - lo) / 2;
        int c = strcmp(name, f->entries[f->by_name[mid]].name);
        if (c == 0) return f->by_name[mid];
        if (c < 0) hi = mid - 1;
        else lo = mid + 1;
    }
    return -1;
}

int fsdp_st_get_info(const fsdp_st_file *f, int i, fsdp_st_info *out) {
    FSDP_CHECK_ARG(f && out, "safetensors: NULL file or output");
    FSDP_CHECK_ARG(i >= 0 && i < f->n, "%s: tensor index %d outside 0..%d", f->path, i, f->n - 1);
    *out = f->entries[i].info;
    return FSDP_OK;
}

const void *fsdp_st_data(const fsdp_st_file *f, int i) {
    if (!f || i < 0 || i >= f->n) return NULL;
    return f->map + f->entries[i].info.offset;
}

const char *fsdp_st_dtype_string(const fsdp_st_file *f, int i) {
    return f && i >= 0 && i < f->n ? f->entries[i].dtype_str : NULL;
}

const char *fsdp_st_metadata(const fsdp_st_file *f, const char *key) {
    if (!f || !f->metadata || !key) return NULL;
    return json_string_value(json_object_get(f->metadata, key));
}

/* ---- writer ------------------------------------------------------------- */

typedef struct st_item {
    char *name;
    int dtype;
    int ndim;
    int64_t shape[FSDP_MAX_DIMS];
    const void *data;
    int64_t nbytes;
} st_item;

struct fsdp_st_writer {
    st_item *items;
    int n, cap;
    json_t *names;      /* name -> index, to refuse duplicates */
    json_t *metadata;   /* string values, in insertion order */
};

fsdp_st_writer *fsdp_st_writer_new(void) {
    fsdp_st_writer *w = calloc(1, sizeof *w);
    if (!w) return fsdp_error_null(FSDP_ERR_OOM, "safetensors writer: out of memory");
    w->names = json_object();
    w->metadata = json_object();
    if (!w->names || !w->metadata) {
        fsdp_st_writer_free(w);
        return fsdp_error_null(FSDP_ERR_OOM, "safetensors writer: out of memory");
    }
    return w;
}

void fsdp_st_writer_free(fsdp_st_writer *w) {
    if (!w) return;
    for (int i = 0; i < w->n; i++) free(w->items[i].name);
    free(w->items);
    json_decref(w->names);
    json_decref(w->metadata);
    free(w);
}

int fsdp_st_writer_add(fsdp_st_writer *w, const char *name, int dtype, int ndim,
                       const int64_t *shape, const void *data) {
    FSDP_CHECK_ARG(w && name, "safetensors writer: NULL writer or name");
    FSDP_CHECK_ARG(strcmp(name, "__metadata__") != 0, "safetensors writer: \"__metadata__\" is reserved");
    FSDP_CHECK_ARG(fsdp_dtype_size(dtype), "safetensors writer: tensor '%s': invalid dtype %d", name, dtype);
    FSDP_CHECK_ARG(ndim >= 0 && ndim <= FSDP_MAX_DIMS,
                   "safetensors writer: tensor '%s': ndim %d outside 0..%d", name, ndim, FSDP_MAX_DIMS);
    FSDP_CHECK_ARG(ndim == 0 || shape, "safetensors writer: tensor '%s': NULL shape", name);
    FSDP_CHECK_ARG(!json_object_get(w->names, name), "safetensors writer: duplicate tensor name '%s'", name);
    st_item it = {.dtype = dtype, .ndim = ndim, .data = data};
    int64_t numel = 1;
    for (int d = 0; d < ndim; d++) {
        FSDP_CHECK_ARG(shape[d] >= 0, "safetensors writer: tensor '%s': shape[%d] is negative (%lld)", name,
                       d, (long long)shape[d]);
        FSDP_CHECK_ARG(!__builtin_mul_overflow(numel, shape[d], &numel),
                       "safetensors writer: tensor '%s': shape overflows", name);
        it.shape[d] = shape[d];
    }
    FSDP_CHECK_ARG(!__builtin_mul_overflow(numel, (int64_t)fsdp_dtype_size(dtype), &it.nbytes),
                   "safetensors writer: tensor '%s': shape overflows", name);
    FSDP_CHECK_ARG(data || it.nbytes == 0, "safetensors writer: tensor '%s': NULL data", name);
    if (w->n == w->cap) {
        int cap = w->cap ? 2 * w->cap : 16;
        st_item *items = realloc(w->items, cap * sizeof *items);
        if (!items) return fsdp_error(FSDP_ERR_OOM, "safetensors writer: out of memory");
        w->items = items;
        w->cap = cap;
    }
    it.name = strdup(name);
    if (!it.name) return fsdp_error(FSDP_ERR_OOM, "safetensors writer: out of memory");
    if (json_object_set_new(w->names, name, json_integer(w->n)) != 0) {
        free(it.name);
        return fsdp_error(FSDP_ERR_INVALID, "safetensors writer: tensor name '%s' is not valid UTF-8", name);
    }
    w->items[w->n++] = it;
    return FSDP_OK;
}

int fsdp_st_writer_set_metadata(fsdp_st_writer *w, const char *key, const char *value) {
    FSDP_CHECK_ARG(w && key && value, "safetensors writer: NULL writer, key or value");
    json_t *s = json_string(value);
    if (!s) return fsdp_error(FSDP_ERR_INVALID, "safetensors writer: metadata value for '%s' is not valid UTF-8", key);
    if (json_object_set_new(w->metadata, key, s) != 0)
        return fsdp_error(FSDP_ERR_INVALID, "safetensors writer: metadata key '%s' is not valid UTF-8", key);
    return FSDP_OK;
}

/* the JSON header, padded with spaces to a multiple of 8 bytes; NULL on error */
static char *build_header(const fsdp_st_writer *w, int64_t *len) {
    json_t *root = json_object();
    int bad = !root;
    if (!bad && json_object_size(w->metadata))
        bad = json_object_set(root, "__metadata__", w->metadata) != 0;
    int64_t offset = 0;
    for (int i = 0; i < w->n && !bad; i++) {
        const st_item *it = &w->items[i];
        json_t *entry = json_object(), *shape = json_array();
        for (int d = 0; d < it->ndim; d++) bad |= json_array_append_new(shape, json_integer(it->shape[d]));
        bad |= json_object_set_new(entry, "dtype", json_string(st_dtype_of(it->dtype)));
        bad |= json_object_set_new(entry, "shape", shape);
        bad |= json_object_set_new(entry, "data_offsets",
                                   json_pack("[II]", (json_int_t)offset, (json_int_t)(offset + it->nbytes)));
        bad |= json_object_set_new(root, it->name, entry);
        offset += it->nbytes;
    }
    char *text = bad ? NULL : json_dumps(root, JSON_COMPACT);
    json_decref(root);
    if (!text) return fsdp_error_null(FSDP_ERR_OOM, "safetensors writer: cannot build the header");
    size_t n = strlen(text), padded = (n + 7) / 8 * 8;
    char *out = realloc(text, 8 + padded);
    if (!out) {
        free(text);
        return fsdp_error_null(FSDP_ERR_OOM, "safetensors writer: out of memory");
    }
    memmove(out + 8, out, n);
    memset(out + 8 + n, ' ', padded - n);
    for (int i = 0; i < 8; i++) out[i] = (char)((uint64_t)padded >> (8 * i));
    *len = 8 + (int64_t)padded;
    return out;
}

int fsdp_st_writer_save(fsdp_st_writer *w, const char *path) {
    FSDP_CHECK_ARG(w && path, "safetensors writer: NULL writer or path");
    int64_t header_len = 0;
    char *header = build_header(w, &header_len);
    if (!header) return FSDP_ERR_OOM;
    const void **parts = malloc((w->n + 1) * sizeof *parts);
    int64_t *sizes = malloc((w->n + 1) * sizeof *sizes);
    int status;
    if (!parts || !sizes) {
        status = fsdp_error(FSDP_ERR_OOM, "%s: out of memory", path);
    } else {
        parts[0] = header;
        sizes[0] = header_len;
        for (int i = 0; i < w->n; i++) {
            parts[i + 1] = w->items[i].data;
            sizes[i + 1] = w->items[i].nbytes;
        }
        status = fsdp_file_write_parts(path, w->n + 1, (const void *const *)parts, sizes);
    }
    free(parts);
    free(sizes);
    free(header);
    return status;
}
