/* template_lib.c - the values of chat templates and what can be done with
 * them: Python's str() / repr() / json.dumps printing, ==, <, arithmetic,
 * `in`, attribute and item access, and Jinja's filters, tests, globals and
 * the string / dict methods templates call. template.c parses and runs the
 * templates; this file is the value side it calls.
 *
 * The semantics are Python's where a template can see them: ints and
 * floats print as Python prints them (1.0, 1e-05), True/False/None, lists
 * and dicts as their repr, negative indexes count from the end, `//` and
 * `%` floor, a missing key is an "undefined" value that prints as nothing
 * and is an error once used further. tojson is transformers' override of
 * Jinja's filter: json.dumps(x, ensure_ascii=False, indent=None,
 * separators=None, sort_keys=False). String lengths, indexes and slices
 * count code points (UTF-8). */
#include <jansson.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include "template_internal.h"

/* ------------------------------------------------------------------------ */
/* arena and buffer                                                          */

void *tp_alloc(tp_arena *a, size_t n) {
    n = (n + 15) & ~(size_t)15;
    if (!a->head || a->head->cap - a->head->used < n) {
        size_t cap = n > 65536 ? n : 65536;
        if (a->limit && a->total + cap > a->limit) return NULL;
        tp_block *b = malloc(sizeof *b + cap);
        if (!b) return NULL;
        b->next = a->head;
        b->used = 0;
        b->cap = cap;
        a->head = b;
        a->total += cap;
    }
    void *p = a->head->data + a->head->used;
    a->head->used += n;
    memset(p, 0, n);
    return p;
}

void tp_arena_free(tp_arena *a) {
    tp_block *b = a->head;
    while (b) {
        tp_block *next = b->next;
        free(b);
        b = next;
    }
    a->head = NULL;
    a->total = 0;
}

int tp_buf_put(tp_buf *b, const char *s, int64_t n) {
    if (n <= 0) return 0;
    if (b->n + n + 1 > b->cap) {
        int64_t cap = b->cap ? b->cap : 256;
        while (cap < b->n + n + 1) cap *= 2;
        char *p = realloc(b->p, (size_t)cap);
        if (!p) return -1;
        b->p = p;
        b->cap = cap;
    }
    memcpy(b->p + b->n, s, (size_t)n);
    b->n += n;
    b->p[b->n] = 0;
    return 0;
}

int tp_buf_putc(tp_buf *b, char c) { return tp_buf_put(b, &c, 1); }

int tp_buf_printf(tp_buf *b, const char *fmt, ...) {
    char tmp[512];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(tmp, sizeof tmp, fmt, ap);
    va_end(ap);
    if (n < 0) return -1;
    if (n >= (int)sizeof tmp) n = (int)sizeof tmp - 1;
    return tp_buf_put(b, tmp, n);
}

/* a printf into the render's arena (messages kept with undefined values) */
static const char *arena_printf(tp_render *R, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static const char *arena_printf(tp_render *R, const char *fmt, ...) {
    char tmp[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(tmp, sizeof tmp, fmt, ap);
    va_end(ap);
    size_t n = strlen(tmp);
    char *p = tp_alloc(&R->arena, n + 1);
    if (!p) return "undefined";
    memcpy(p, tmp, n + 1);
    return p;
}

#define OOM(R) tp_fail(R, "out of memory (a render may use up to 1 GiB)")
#define TRY(x) do { if ((x) != 0) return -1; } while (0)

/* ------------------------------------------------------------------------ */
/* constructors and containers                                               */

tvalue tv_undef(const char *why) { tvalue v = {.kind = TV_UNDEF}; v.u.undef = why; return v; }
tvalue tv_none(void) { tvalue v = {.kind = TV_NONE}; return v; }
tvalue tv_bool(int b) { tvalue v = {.kind = TV_BOOL}; v.u.b = b != 0; return v; }
tvalue tv_int(int64_t i) { tvalue v = {.kind = TV_INT}; v.u.i = i; return v; }
tvalue tv_float(double f) { tvalue v = {.kind = TV_FLOAT}; v.u.f = f; return v; }
tvalue tv_str(const char *p, int64_t n) { tvalue v = {.kind = TV_STR}; v.u.s.p = p; v.u.s.n = n; return v; }

int tv_str_copy(tp_render *R, const char *p, int64_t n, tvalue *out) {
    char *s = tp_alloc(&R->arena, (size_t)n + 1);
    if (!s) return OOM(R);
    if (n) memcpy(s, p, (size_t)n);
    *out = tv_str(s, n);
    return 0;
}

/* a string value holding a buffer's bytes (the buffer is freed) */
static int str_from_buf(tp_render *R, tp_buf *b, tvalue *out) {
    int rc = tv_str_copy(R, b->p ? b->p : "", b->n, out);
    free(b->p);
    b->p = NULL;
    b->n = b->cap = 0;
    return rc;
}

int tv_list_new(tp_render *R, int64_t n, tvalue *out) {
    tv_list *l = tp_alloc(&R->arena, sizeof *l);
    if (!l) return OOM(R);
    l->n = n;
    if (n > 0) {
        l->v = tp_alloc(&R->arena, (size_t)n * sizeof(tvalue));
        if (!l->v) return OOM(R);
    }
    out->kind = TV_LIST;
    out->u.l = l;
    return 0;
}

int tv_dict_new(tp_render *R, tvalue *out) {
    tv_dict *d = tp_alloc(&R->arena, sizeof *d);
    if (!d) return OOM(R);
    out->kind = TV_DICT;
    out->u.d = d;
    return 0;
}

static int64_t dict_find(const tv_dict *d, tvalue key) {
    for (int64_t i = 0; i < d->n; i++)
        if (tv_equal(&d->k[i], &key)) return i;
    return -1;
}

int tv_dict_set(tp_render *R, tv_dict *d, tvalue key, tvalue val) {
    int64_t i = dict_find(d, key);
    if (i >= 0) { d->v[i] = val; return 0; }
    if (d->n == d->cap) {
        int64_t cap = d->cap ? d->cap * 2 : 8;
        tvalue *k = tp_alloc(&R->arena, (size_t)cap * sizeof *k);
        tvalue *v = tp_alloc(&R->arena, (size_t)cap * sizeof *v);
        if (!k || !v) return OOM(R);
        if (d->n) {
            memcpy(k, d->k, (size_t)d->n * sizeof *k);
            memcpy(v, d->v, (size_t)d->n * sizeof *v);
        }
        d->k = k;
        d->v = v;
        d->cap = cap;
    }
    d->k[d->n] = key;
    d->v[d->n] = val;
    d->n++;
    return 0;
}

int tv_dict_get(const tv_dict *d, tvalue key, tvalue *val) {
    int64_t i = dict_find(d, key);
    if (i < 0) return 0;
    *val = d->v[i];
    return 1;
}

int tv_dict_get_str(const tv_dict *d, const char *key, tvalue *val) {
    return tv_dict_get(d, tv_str(key, (int64_t)strlen(key)), val);
}

/* ------------------------------------------------------------------------ */
/* UTF-8                                                                     */

/* the code point at s[*i] (advancing *i); invalid bytes read as themselves */
uint32_t tp_utf8_next(const char *s, int64_t n, int64_t *i) {
    const unsigned char *p = (const unsigned char *)s + *i;
    int64_t left = n - *i;
    uint32_t c = p[0];
    int len = 1;
    if (c >= 0xf0 && left >= 4) { c = (c & 7) << 18 | (p[1] & 63u) << 12 | (p[2] & 63u) << 6 | (p[3] & 63u); len = 4; }
    else if (c >= 0xe0 && left >= 3) { c = (c & 15) << 12 | (p[1] & 63u) << 6 | (p[2] & 63u); len = 3; }
    else if (c >= 0xc0 && left >= 2) { c = (c & 31) << 6 | (p[1] & 63u); len = 2; }
    *i += len;
    return c;
}

static int utf8_put(tp_buf *b, uint32_t c) {
    char t[4];
    int n;
    if (c < 0x80) { t[0] = (char)c; n = 1; }
    else if (c < 0x800) { t[0] = (char)(0xc0 | c >> 6); t[1] = (char)(0x80 | (c & 63)); n = 2; }
    else if (c < 0x10000) {
        t[0] = (char)(0xe0 | c >> 12); t[1] = (char)(0x80 | (c >> 6 & 63)); t[2] = (char)(0x80 | (c & 63)); n = 3;
    } else {
        t[0] = (char)(0xf0 | c >> 18); t[1] = (char)(0x80 | (c >> 12 & 63));
        t[2] = (char)(0x80 | (c >> 6 & 63)); t[3] = (char)(0x80 | (c & 63)); n = 4;
    }
    return tp_buf_put(b, t, n);
}

static int64_t utf8_len(const char *s, int64_t n) {
    int64_t count = 0;
    for (int64_t i = 0; i < n; count++) tp_utf8_next(s, n, &i);
    return count;
}

/* Python's str.isspace() */
int tp_is_space(uint32_t c) {
    return (c >= 9 && c <= 13) || (c >= 0x1c && c <= 0x20) || c == 0x85 || c == 0xa0 || c == 0x1680 ||
           (c >= 0x2000 && c <= 0x200a) || c == 0x2028 || c == 0x2029 || c == 0x202f || c == 0x205f || c == 0x3000;
}

/* case mappings of Latin (Basic, Latin-1, Extended-A, Extended Additional),
 * Greek, Cyrillic and fullwidth letters; other scripts stay as they are.
 * (ß upper-cases to "SS" in map_case.) */
typedef struct case_range { uint32_t lo, hi; uint32_t delta; int pairs; } case_range;
/* upper case [lo, hi] -> lower case [lo + delta, hi + delta]; or, with
 * pairs, upper and lower alternating from lo (upper) to hi (lower) */
static const case_range CASES[] = {
    {0x41, 0x5a, 32, 0},     {0xc0, 0xd6, 32, 0},     {0xd8, 0xde, 32, 0},     {0x100, 0x12f, 1, 1},
    {0x132, 0x137, 1, 1},    {0x139, 0x148, 1, 1},    {0x14a, 0x177, 1, 1},    {0x179, 0x17e, 1, 1},
    {0x386, 0x386, 38, 0},   {0x388, 0x38a, 37, 0},   {0x38c, 0x38c, 64, 0},   {0x38e, 0x38f, 63, 0},
    {0x391, 0x3a1, 32, 0},   {0x3a3, 0x3ab, 32, 0},   {0x400, 0x40f, 80, 0},   {0x410, 0x42f, 32, 0},
    {0x460, 0x481, 1, 1},    {0x48a, 0x4bf, 1, 1},    {0x4d0, 0x52f, 1, 1},    {0x1e00, 0x1e95, 1, 1},
    {0x1ea0, 0x1eff, 1, 1},  {0xff21, 0xff3a, 32, 0},
};

static uint32_t to_lower(uint32_t c) {
    if (c == 0x178) return 0xff;
    for (size_t i = 0; i < sizeof CASES / sizeof CASES[0]; i++) {
        const case_range *r = &CASES[i];
        if (c < r->lo || c > r->hi) continue;
        if (!r->pairs) return c + r->delta;
        return (c - r->lo) % 2 == 0 ? c + 1 : c;
    }
    return c;
}

static uint32_t to_upper(uint32_t c) {
    if (c == 0xff) return 0x178;
    if (c == 0x3c2) return 0x3a3; /* final sigma */
    for (size_t i = 0; i < sizeof CASES / sizeof CASES[0]; i++) {
        const case_range *r = &CASES[i];
        if (r->pairs) {
            if (c >= r->lo && c <= r->hi) return (c - r->lo) % 2 == 1 ? c - 1 : c;
        } else if (c >= r->lo + r->delta && c <= r->hi + r->delta) return c - r->delta;
    }
    return c;
}

static int is_cased_letter(uint32_t c) { return to_upper(c) != c || to_lower(c) != c; }

/* ------------------------------------------------------------------------ */
/* types, truth                                                              */

const char *tv_type_name(const tvalue *v) {
    switch (v->kind) {
    case TV_UNDEF: return "Undefined";
    case TV_NONE: return "NoneType";
    case TV_BOOL: return "bool";
    case TV_INT: return "int";
    case TV_FLOAT: return "float";
    case TV_STR: return "str";
    case TV_LIST: return v->u.l->tuple ? "tuple" : "list";
    case TV_DICT: return "dict";
    case TV_NS: return "Namespace";
    case TV_LOOP: return "LoopContext";
    case TV_FUNC: return "function";
    default: return "method";
    }
}

/* Jinja's object_type_repr: "dict object", "None" */
static const char *obj_repr(const tvalue *v) {
    switch (v->kind) {
    case TV_NONE: return "None";
    case TV_BOOL: return "bool object";
    case TV_INT: return "int object";
    case TV_FLOAT: return "float object";
    case TV_STR: return "str object";
    case TV_LIST: return v->u.l->tuple ? "tuple object" : "list object";
    case TV_DICT: return "dict object";
    case TV_NS: return "Namespace object";
    case TV_LOOP: return "LoopContext object";
    default: return "function object";
    }
}

int tv_truthy(const tvalue *v) {
    switch (v->kind) {
    case TV_UNDEF: case TV_NONE: return 0;
    case TV_BOOL: return v->u.b;
    case TV_INT: return v->u.i != 0;
    case TV_FLOAT: return v->u.f != 0;
    case TV_STR: return v->u.s.n > 0;
    case TV_LIST: return v->u.l->n > 0;
    case TV_DICT: return v->u.d->n > 0;
    default: return 1;
    }
}

static int is_num(const tvalue *v) { return v->kind == TV_INT || v->kind == TV_FLOAT || v->kind == TV_BOOL; }
static int is_int(const tvalue *v) { return v->kind == TV_INT || v->kind == TV_BOOL; }
static int64_t as_int(const tvalue *v) { return v->kind == TV_BOOL ? v->u.b : v->u.i; }
static double as_float(const tvalue *v) {
    return v->kind == TV_FLOAT ? v->u.f : (double)as_int(v);
}

static int undefined_error(tp_render *R, const tvalue *v) {
    return tp_fail(R, "%s", v->u.undef ? v->u.undef : "undefined value");
}

/* ------------------------------------------------------------------------ */
/* printing                                                                  */

/* Python's repr(float): the shortest digits that read back, fixed notation
 * for 1e-4 <= |x| < 1e16, else d.ddde+XX */
static int put_float(tp_buf *b, double x) {
    if (isnan(x)) return tp_buf_put(b, "nan", 3);
    if (isinf(x)) return x > 0 ? tp_buf_put(b, "inf", 3) : tp_buf_put(b, "-inf", 4);
    char tmp[48];
    for (int p = 1; p <= 17; p++) {
        snprintf(tmp, sizeof tmp, "%.*e", p - 1, x);
        if (strtod(tmp, NULL) == x) break;
    }
    const char *s = tmp;
    int neg = 0;
    if (*s == '-') { neg = 1; s++; }
    char digits[24];
    int nd = 0;
    for (; *s && *s != 'e'; s++)
        if (*s != '.') digits[nd++] = *s;
    int exp = atoi(s + 1);
    while (nd > 1 && digits[nd - 1] == '0') nd--;
    int decpt = exp + 1;
    char out[64];
    int o = 0;
    if (neg) out[o++] = '-';
    if (decpt > -4 && decpt <= 16) {
        if (decpt <= 0) {
            out[o++] = '0'; out[o++] = '.';
            for (int i = 0; i < -decpt; i++) out[o++] = '0';
            for (int i = 0; i < nd; i++) out[o++] = digits[i];
        } else if (decpt >= nd) {
            for (int i = 0; i < nd; i++) out[o++] = digits[i];
            for (int i = nd; i < decpt; i++) out[o++] = '0';
            out[o++] = '.'; out[o++] = '0';
        } else {
            for (int i = 0; i < decpt; i++) out[o++] = digits[i];
            out[o++] = '.';
            for (int i = decpt; i < nd; i++) out[o++] = digits[i];
        }
    } else {
        out[o++] = digits[0];
        if (nd > 1) {
            out[o++] = '.';
            for (int i = 1; i < nd; i++) out[o++] = digits[i];
        }
        o += snprintf(out + o, sizeof out - (size_t)o, "e%c%02d", decpt - 1 < 0 ? '-' : '+', abs(decpt - 1));
    }
    return tp_buf_put(b, out, o);
}

/* printable as Python's str.isprintable() sees it (approximately: controls,
 * separators and format characters are not) */
static int py_printable(uint32_t c) {
    if (c < 0x20 || (c >= 0x7f && c <= 0xa0) || c == 0xad) return 0;
    if (c == 0x1680 || c == 0x180e || (c >= 0x2000 && c <= 0x200f) || (c >= 0x2028 && c <= 0x202f) ||
        (c >= 0x205f && c <= 0x2064) || c == 0x3000 || c == 0xfeff || (c >= 0xd800 && c <= 0xdfff))
        return 0;
    return 1;
}

static int repr_str(tp_buf *b, const char *p, int64_t n) {
    int has_single = memchr(p, '\'', (size_t)n) != NULL, has_double = memchr(p, '"', (size_t)n) != NULL;
    char q = has_single && !has_double ? '"' : '\'';
    TRY(tp_buf_putc(b, q));
    for (int64_t i = 0; i < n;) {
        int64_t start = i;
        uint32_t c = tp_utf8_next(p, n, &i);
        if (c == (uint32_t)q || c == '\\') { TRY(tp_buf_putc(b, '\\')); TRY(tp_buf_putc(b, (char)c)); }
        else if (c == '\n') TRY(tp_buf_put(b, "\\n", 2));
        else if (c == '\r') TRY(tp_buf_put(b, "\\r", 2));
        else if (c == '\t') TRY(tp_buf_put(b, "\\t", 2));
        else if (!py_printable(c)) {
            if (c < 0x100) TRY(tp_buf_printf(b, "\\x%02x", c));
            else if (c < 0x10000) TRY(tp_buf_printf(b, "\\u%04x", c));
            else TRY(tp_buf_printf(b, "\\U%08x", c));
        } else TRY(tp_buf_put(b, p + start, i - start));
    }
    return tp_buf_putc(b, q);
}

static int print_value(tp_render *R, tp_buf *b, const tvalue *v, int repr) {
    switch (v->kind) {
    case TV_UNDEF: return 0;
    case TV_NONE: return tp_buf_put(b, "None", 4) ? OOM(R) : 0;
    case TV_BOOL: return (v->u.b ? tp_buf_put(b, "True", 4) : tp_buf_put(b, "False", 5)) ? OOM(R) : 0;
    case TV_INT: return tp_buf_printf(b, "%lld", (long long)v->u.i) ? OOM(R) : 0;
    case TV_FLOAT: return put_float(b, v->u.f) ? OOM(R) : 0;
    case TV_STR:
        if (repr) return repr_str(b, v->u.s.p, v->u.s.n) ? OOM(R) : 0;
        return tp_buf_put(b, v->u.s.p, v->u.s.n) ? OOM(R) : 0;
    case TV_LIST: {
        const tv_list *l = v->u.l;
        if (tp_buf_putc(b, l->tuple ? '(' : '[')) return OOM(R);
        for (int64_t i = 0; i < l->n; i++) {
            if (i && tp_buf_put(b, ", ", 2)) return OOM(R);
            TRY(print_value(R, b, &l->v[i], 1));
        }
        if (l->tuple && l->n == 1 && tp_buf_putc(b, ',')) return OOM(R);
        return tp_buf_putc(b, l->tuple ? ')' : ']') ? OOM(R) : 0;
    }
    case TV_DICT: case TV_NS: {
        const tv_dict *d = v->u.d;
        if (v->kind == TV_NS && tp_buf_put(b, "<Namespace ", 11)) return OOM(R);
        if (tp_buf_putc(b, '{')) return OOM(R);
        for (int64_t i = 0; i < d->n; i++) {
            if (i && tp_buf_put(b, ", ", 2)) return OOM(R);
            TRY(print_value(R, b, &d->k[i], 1));
            if (tp_buf_put(b, ": ", 2)) return OOM(R);
            TRY(print_value(R, b, &d->v[i], 1));
        }
        if (tp_buf_putc(b, '}')) return OOM(R);
        if (v->kind == TV_NS && tp_buf_putc(b, '>')) return OOM(R);
        return 0;
    }
    default:
        return tp_fail(R, "cannot print a %s", tv_type_name(v));
    }
}

int tv_print(tp_render *R, tp_buf *b, const tvalue *v) { return print_value(R, b, v, 0); }
int tv_repr(tp_render *R, tp_buf *b, const tvalue *v) { return print_value(R, b, v, 1); }

int tv_to_str(tp_render *R, const tvalue *v, tvalue *out) {
    if (v->kind == TV_STR) { *out = *v; return 0; }
    tp_buf b = {0};
    if (tv_print(R, &b, v)) { free(b.p); return -1; }
    return str_from_buf(R, &b, out);
}

/* ------------------------------------------------------------------------ */
/* JSON                                                                      */

typedef struct json_opts {
    const char *indent; /* NULL: one line */
    const char *item_sep, *key_sep;
    int sort_keys, ensure_ascii;
} json_opts;

static int json_str(tp_buf *b, const char *p, int64_t n, int ensure_ascii) {
    TRY(tp_buf_putc(b, '"'));
    for (int64_t i = 0; i < n;) {
        int64_t start = i;
        uint32_t c = tp_utf8_next(p, n, &i);
        switch (c) {
        case '"': TRY(tp_buf_put(b, "\\\"", 2)); break;
        case '\\': TRY(tp_buf_put(b, "\\\\", 2)); break;
        case '\n': TRY(tp_buf_put(b, "\\n", 2)); break;
        case '\r': TRY(tp_buf_put(b, "\\r", 2)); break;
        case '\t': TRY(tp_buf_put(b, "\\t", 2)); break;
        case '\b': TRY(tp_buf_put(b, "\\b", 2)); break;
        case '\f': TRY(tp_buf_put(b, "\\f", 2)); break;
        default:
            if (c < 0x20) TRY(tp_buf_printf(b, "\\u%04x", c));
            else if (ensure_ascii && c >= 0x7f) {
                if (c >= 0x10000) {
                    uint32_t v = c - 0x10000;
                    TRY(tp_buf_printf(b, "\\u%04x\\u%04x", 0xd800 | (v >> 10), 0xdc00 | (v & 0x3ff)));
                } else TRY(tp_buf_printf(b, "\\u%04x", c));
            } else TRY(tp_buf_put(b, p + start, i - start));
        }
    }
    return tp_buf_putc(b, '"');
}

static int json_newline(tp_buf *b, const json_opts *o, int level) {
    TRY(tp_buf_putc(b, '\n'));
    for (int i = 0; i < level; i++) TRY(tp_buf_put(b, o->indent, (int64_t)strlen(o->indent)));
    return 0;
}

static int json_key(tp_render *R, tp_buf *b, const tvalue *k, const json_opts *o) {
    switch (k->kind) {
    case TV_STR: return json_str(b, k->u.s.p, k->u.s.n, o->ensure_ascii) ? OOM(R) : 0;
    case TV_NONE: return tp_buf_put(b, "\"null\"", 6) ? OOM(R) : 0;
    case TV_BOOL: return (k->u.b ? tp_buf_put(b, "\"true\"", 6) : tp_buf_put(b, "\"false\"", 7)) ? OOM(R) : 0;
    case TV_INT: return tp_buf_printf(b, "\"%lld\"", (long long)k->u.i) ? OOM(R) : 0;
    case TV_FLOAT:
        if (tp_buf_putc(b, '"') || put_float(b, k->u.f) || tp_buf_putc(b, '"')) return OOM(R);
        return 0;
    default:
        return tp_fail(R, "tojson: keys must be str, int, float, bool or None, not %s", tv_type_name(k));
    }
}

static const tv_dict *sort_dict_keys(tp_render *R, const tv_dict *d);

static int json_dump(tp_render *R, tp_buf *b, const tvalue *v, const json_opts *o, int level) {
    if (level > 200) return tp_fail(R, "tojson: nesting deeper than 200");
    switch (v->kind) {
    case TV_NONE: return tp_buf_put(b, "null", 4) ? OOM(R) : 0;
    case TV_BOOL: return (v->u.b ? tp_buf_put(b, "true", 4) : tp_buf_put(b, "false", 5)) ? OOM(R) : 0;
    case TV_INT: return tp_buf_printf(b, "%lld", (long long)v->u.i) ? OOM(R) : 0;
    case TV_FLOAT:
        if (isnan(v->u.f)) return tp_buf_put(b, "NaN", 3) ? OOM(R) : 0;
        if (isinf(v->u.f)) return (v->u.f > 0 ? tp_buf_put(b, "Infinity", 8) : tp_buf_put(b, "-Infinity", 9)) ? OOM(R) : 0;
        return put_float(b, v->u.f) ? OOM(R) : 0;
    case TV_STR: return json_str(b, v->u.s.p, v->u.s.n, o->ensure_ascii) ? OOM(R) : 0;
    case TV_LIST: {
        const tv_list *l = v->u.l;
        if (l->n == 0) return tp_buf_put(b, "[]", 2) ? OOM(R) : 0;
        if (tp_buf_putc(b, '[')) return OOM(R);
        for (int64_t i = 0; i < l->n; i++) {
            if (i && tp_buf_put(b, o->item_sep, (int64_t)strlen(o->item_sep))) return OOM(R);
            if (o->indent && json_newline(b, o, level + 1)) return OOM(R);
            TRY(json_dump(R, b, &l->v[i], o, level + 1));
        }
        if (o->indent && json_newline(b, o, level)) return OOM(R);
        return tp_buf_putc(b, ']') ? OOM(R) : 0;
    }
    case TV_DICT: {
        const tv_dict *d = o->sort_keys ? sort_dict_keys(R, v->u.d) : v->u.d;
        if (!d) return -1;
        if (d->n == 0) return tp_buf_put(b, "{}", 2) ? OOM(R) : 0;
        if (tp_buf_putc(b, '{')) return OOM(R);
        for (int64_t i = 0; i < d->n; i++) {
            if (i && tp_buf_put(b, o->item_sep, (int64_t)strlen(o->item_sep))) return OOM(R);
            if (o->indent && json_newline(b, o, level + 1)) return OOM(R);
            TRY(json_key(R, b, &d->k[i], o));
            if (tp_buf_put(b, o->key_sep, (int64_t)strlen(o->key_sep))) return OOM(R);
            TRY(json_dump(R, b, &d->v[i], o, level + 1));
        }
        if (o->indent && json_newline(b, o, level)) return OOM(R);
        return tp_buf_putc(b, '}') ? OOM(R) : 0;
    }
    case TV_UNDEF:
        return tp_fail(R, "tojson: %s", v->u.undef ? v->u.undef : "undefined value");
    default:
        return tp_fail(R, "tojson: Object of type %s is not JSON serializable", tv_type_name(v));
    }
}

static int from_json(tp_render *R, json_t *j, tvalue *out, int depth) {
    if (depth > 200) return tp_fail(R, "variables: JSON nested deeper than 200");
    switch (json_typeof(j)) {
    case JSON_OBJECT: {
        TRY(tv_dict_new(R, out));
        const char *key;
        json_t *val;
        json_object_foreach(j, key, val) {
            tvalue k, v;
            TRY(tv_str_copy(R, key, (int64_t)strlen(key), &k));
            TRY(from_json(R, val, &v, depth + 1));
            TRY(tv_dict_set(R, out->u.d, k, v));
        }
        return 0;
    }
    case JSON_ARRAY: {
        size_t n = json_array_size(j);
        TRY(tv_list_new(R, (int64_t)n, out));
        for (size_t i = 0; i < n; i++) TRY(from_json(R, json_array_get(j, i), &out->u.l->v[i], depth + 1));
        return 0;
    }
    case JSON_STRING: return tv_str_copy(R, json_string_value(j), (int64_t)json_string_length(j), out);
    case JSON_INTEGER: *out = tv_int((int64_t)json_integer_value(j)); return 0;
    case JSON_REAL: *out = tv_float(json_real_value(j)); return 0;
    case JSON_TRUE: *out = tv_bool(1); return 0;
    case JSON_FALSE: *out = tv_bool(0); return 0;
    default: *out = tv_none(); return 0;
    }
}

int tv_from_json(tp_render *R, const char *text, int64_t len, tvalue *out) {
    json_error_t e;
    json_t *j = json_loadb(text, (size_t)len, JSON_ALLOW_NUL, &e);
    if (!j) {
        fsdp_error(FSDP_ERR_INVALID, "chat template variables: invalid JSON at line %d column %d: %s", e.line,
                   e.column, e.text);
        R->failed = 1;
        return -1;
    }
    if (!json_is_object(j)) {
        json_decref(j);
        fsdp_error(FSDP_ERR_INVALID, "chat template variables: the JSON is not an object");
        R->failed = 1;
        return -1;
    }
    int rc = from_json(R, j, out, 0);
    json_decref(j);
    return rc;
}

/* ------------------------------------------------------------------------ */
/* comparison                                                                */

int tv_equal(const tvalue *a, const tvalue *b) {
    if (is_num(a) && is_num(b)) {
        if (is_int(a) && is_int(b)) return as_int(a) == as_int(b);
        return as_float(a) == as_float(b);
    }
    if (a->kind != b->kind) return 0;
    switch (a->kind) {
    case TV_UNDEF: case TV_NONE: return 1;
    case TV_STR: return a->u.s.n == b->u.s.n && memcmp(a->u.s.p, b->u.s.p, (size_t)a->u.s.n) == 0;
    case TV_LIST: {
        if (a->u.l->tuple != b->u.l->tuple || a->u.l->n != b->u.l->n) return 0;
        for (int64_t i = 0; i < a->u.l->n; i++)
            if (!tv_equal(&a->u.l->v[i], &b->u.l->v[i])) return 0;
        return 1;
    }
    case TV_DICT: {
        const tv_dict *x = a->u.d, *y = b->u.d;
        if (x->n != y->n) return 0;
        for (int64_t i = 0; i < x->n; i++) {
            tvalue w;
            if (!tv_dict_get(y, x->k[i], &w) || !tv_equal(&x->v[i], &w)) return 0;
        }
        return 1;
    }
    case TV_NS: return a->u.d == b->u.d;
    case TV_LOOP: return a->u.loop == b->u.loop;
    default: return a->u.fn.id == b->u.fn.id && a->u.fn.self == b->u.fn.self;
    }
}

int tv_compare(tp_render *R, const tvalue *a, const tvalue *b, int *cmp) {
    if (is_num(a) && is_num(b)) {
        if (is_int(a) && is_int(b)) { int64_t x = as_int(a), y = as_int(b); *cmp = (x > y) - (x < y); }
        else { double x = as_float(a), y = as_float(b); *cmp = (x > y) - (x < y); }
        return 0;
    }
    if (a->kind == TV_STR && b->kind == TV_STR) {
        int64_t n = a->u.s.n < b->u.s.n ? a->u.s.n : b->u.s.n;
        int c = memcmp(a->u.s.p, b->u.s.p, (size_t)n);
        *cmp = c ? (c > 0) - (c < 0) : (a->u.s.n > b->u.s.n) - (a->u.s.n < b->u.s.n);
        return 0;
    }
    if (a->kind == TV_LIST && b->kind == TV_LIST && a->u.l->tuple == b->u.l->tuple) {
        int64_t n = a->u.l->n < b->u.l->n ? a->u.l->n : b->u.l->n;
        for (int64_t i = 0; i < n; i++) {
            if (tv_equal(&a->u.l->v[i], &b->u.l->v[i])) continue;
            return tv_compare(R, &a->u.l->v[i], &b->u.l->v[i], cmp);
        }
        *cmp = (a->u.l->n > b->u.l->n) - (a->u.l->n < b->u.l->n);
        return 0;
    }
    if (a->kind == TV_UNDEF) return undefined_error(R, a);
    if (b->kind == TV_UNDEF) return undefined_error(R, b);
    return tp_fail(R, "comparison not supported between instances of '%s' and '%s'", tv_type_name(a), tv_type_name(b));
}

/* ------------------------------------------------------------------------ */
/* iteration, arithmetic, membership                                         */

int tv_iterate(tp_render *R, const tvalue *v, tvalue *out) {
    switch (v->kind) {
    case TV_UNDEF: return tv_list_new(R, 0, out);
    case TV_LIST: *out = *v; return 0;
    case TV_DICT: case TV_NS: {
        TRY(tv_list_new(R, v->u.d->n, out));
        for (int64_t i = 0; i < v->u.d->n; i++) out->u.l->v[i] = v->u.d->k[i];
        return 0;
    }
    case TV_STR: {
        int64_t n = utf8_len(v->u.s.p, v->u.s.n);
        TRY(tv_list_new(R, n, out));
        int64_t i = 0, k = 0;
        while (i < v->u.s.n) {
            int64_t s = i;
            tp_utf8_next(v->u.s.p, v->u.s.n, &i);
            out->u.l->v[k++] = tv_str(v->u.s.p + s, i - s);
        }
        return 0;
    }
    default:
        return tp_fail(R, "'%s' object is not iterable", tv_type_name(v));
    }
}

static int concat(tp_render *R, const char *a, int64_t na, const char *b, int64_t nb, tvalue *out) {
    char *s = tp_alloc(&R->arena, (size_t)(na + nb) + 1);
    if (!s) return OOM(R);
    memcpy(s, a, (size_t)na);
    memcpy(s + na, b, (size_t)nb);
    *out = tv_str(s, na + nb);
    return 0;
}

static const char *op_name(int op) {
    switch (op) {
    case 'f': return "//";
    case 'p': return "**";
    case '+': return "+";
    case '-': return "-";
    case '*': return "*";
    case '/': return "/";
    default: return "%";
    }
}

static int repeat(tp_render *R, const tvalue *seq, int64_t times, tvalue *out) {
    if (times < 0) times = 0;
    if (seq->kind == TV_STR) {
        if (seq->u.s.n && times > ((int64_t)1 << 30) / seq->u.s.n) return tp_fail(R, "string repetition too large");
        char *s = tp_alloc(&R->arena, (size_t)(seq->u.s.n * times) + 1);
        if (!s) return OOM(R);
        for (int64_t i = 0; i < times; i++) memcpy(s + i * seq->u.s.n, seq->u.s.p, (size_t)seq->u.s.n);
        *out = tv_str(s, seq->u.s.n * times);
        return 0;
    }
    const tv_list *l = seq->u.l;
    if (l->n && times > ((int64_t)1 << 24) / l->n) return tp_fail(R, "list repetition too large");
    TRY(tv_list_new(R, l->n * times, out));
    out->u.l->tuple = l->tuple;
    for (int64_t i = 0; i < times; i++)
        for (int64_t j = 0; j < l->n; j++) out->u.l->v[i * l->n + j] = l->v[j];
    return 0;
}

int tv_binary(tp_render *R, int op, const tvalue *a, const tvalue *b, tvalue *out) {
    if (a->kind == TV_UNDEF) return undefined_error(R, a);
    if (b->kind == TV_UNDEF) return undefined_error(R, b);
    if (is_num(a) && is_num(b)) {
        if (is_int(a) && is_int(b) && op != '/') {
            int64_t x = as_int(a), y = as_int(b), r = 0;
            switch (op) {
            case '+': if (__builtin_add_overflow(x, y, &r)) goto overflow; break;
            case '-': if (__builtin_sub_overflow(x, y, &r)) goto overflow; break;
            case '*': if (__builtin_mul_overflow(x, y, &r)) goto overflow; break;
            case 'f': case '%':
                if (y == 0) return tp_fail(R, "integer division or modulo by zero");
                if (x == INT64_MIN && y == -1) goto overflow;
                r = op == 'f' ? x / y - ((x % y != 0) && ((x < 0) != (y < 0))) : x % y;
                if (op == '%' && r != 0 && ((r < 0) != (y < 0))) r += y;
                break;
            case 'p':
                if (y < 0) { *out = tv_float(pow((double)x, (double)y)); return 0; }
                r = 1;
                for (int64_t i = 0; i < y; i++)
                    if (__builtin_mul_overflow(r, x, &r)) goto overflow;
                break;
            }
            *out = tv_int(r);
            return 0;
        }
        double x = as_float(a), y = as_float(b), r = 0;
        switch (op) {
        case '+': r = x + y; break;
        case '-': r = x - y; break;
        case '*': r = x * y; break;
        case '/': if (y == 0) return tp_fail(R, "division by zero"); r = x / y; break;
        case 'f': if (y == 0) return tp_fail(R, "float floor division by zero"); r = floor(x / y); break;
        case '%':
            if (y == 0) return tp_fail(R, "float modulo by zero");
            r = fmod(x, y);
            if (r != 0 && ((r < 0) != (y < 0))) r += y;
            break;
        case 'p': r = pow(x, y); break;
        }
        *out = tv_float(r);
        return 0;
    }
    if (op == '+') {
        if (a->kind == TV_STR && b->kind == TV_STR) return concat(R, a->u.s.p, a->u.s.n, b->u.s.p, b->u.s.n, out);
        if (a->kind == TV_LIST && b->kind == TV_LIST && a->u.l->tuple == b->u.l->tuple) {
            TRY(tv_list_new(R, a->u.l->n + b->u.l->n, out));
            out->u.l->tuple = a->u.l->tuple;
            for (int64_t i = 0; i < a->u.l->n; i++) out->u.l->v[i] = a->u.l->v[i];
            for (int64_t i = 0; i < b->u.l->n; i++) out->u.l->v[a->u.l->n + i] = b->u.l->v[i];
            return 0;
        }
        if (a->kind == TV_STR)
            return tp_fail(R, "can only concatenate str (not \"%s\") to str", tv_type_name(b));
    }
    if (op == '*') {
        if ((a->kind == TV_STR || a->kind == TV_LIST) && is_int(b)) return repeat(R, a, as_int(b), out);
        if ((b->kind == TV_STR || b->kind == TV_LIST) && is_int(a)) return repeat(R, b, as_int(a), out);
    }
    if (op == '%' && a->kind == TV_STR) return tp_fail(R, "string formatting with %% is not supported");
    return tp_fail(R, "unsupported operand type(s) for %s: '%s' and '%s'", op_name(op), tv_type_name(a),
                   tv_type_name(b));
overflow:
    return tp_fail(R, "integer overflow in %s", op_name(op));
}

int tv_unary(tp_render *R, int op, const tvalue *a, tvalue *out) {
    if (a->kind == TV_UNDEF) return undefined_error(R, a);
    if (!is_num(a)) return tp_fail(R, "bad operand type for unary %c: '%s'", op == 'n' ? '-' : '+', tv_type_name(a));
    if (op == 'p') { *out = is_int(a) ? tv_int(as_int(a)) : *a; return 0; }
    if (is_int(a)) {
        if (as_int(a) == INT64_MIN) return tp_fail(R, "integer overflow in unary -");
        *out = tv_int(-as_int(a));
    } else *out = tv_float(-a->u.f);
    return 0;
}

static int64_t str_find(const char *h, int64_t nh, const char *n, int64_t nn, int64_t from) {
    if (nn == 0) return from <= nh ? from : -1;
    for (int64_t i = from; i + nn <= nh; i++)
        if (memcmp(h + i, n, (size_t)nn) == 0) return i;
    return -1;
}

int tv_contains(tp_render *R, const tvalue *c, const tvalue *item, int *result) {
    switch (c->kind) {
    case TV_UNDEF: *result = 0; return 0;
    case TV_STR:
        if (item->kind != TV_STR)
            return tp_fail(R, "'in <string>' requires string as left operand, not %s", tv_type_name(item));
        *result = str_find(c->u.s.p, c->u.s.n, item->u.s.p, item->u.s.n, 0) >= 0;
        return 0;
    case TV_LIST:
        *result = 0;
        for (int64_t i = 0; i < c->u.l->n; i++)
            if (tv_equal(&c->u.l->v[i], item)) { *result = 1; break; }
        return 0;
    case TV_DICT: case TV_NS: {
        tvalue v;
        *result = tv_dict_get(c->u.d, *item, &v);
        return 0;
    }
    default:
        return tp_fail(R, "argument of type '%s' is not iterable", tv_type_name(c));
    }
}

/* ------------------------------------------------------------------------ */
/* methods                                                                   */

enum {
    /* str */
    M_STRIP, M_LSTRIP, M_RSTRIP, M_STARTSWITH, M_ENDSWITH, M_UPPER, M_LOWER, M_TITLE, M_CAPITALIZE,
    M_REPLACE, M_SPLIT, M_RSPLIT, M_JOIN, M_FIND, M_RFIND, M_COUNT, M_SPLITLINES, M_ISDIGIT, M_ISSPACE,
    M_ISALPHA, M_ISUPPER, M_ISLOWER,
    /* dict */
    M_ITEMS, M_KEYS, M_VALUES, M_GET,
    /* loop */
    M_CYCLE,
    /* globals (TV_FUNC) */
    F_RAISE, F_NAMESPACE, F_RANGE, F_DICT, F_STRFTIME,
};

static const char *const str_methods[] = {
    "strip", "lstrip", "rstrip", "startswith", "endswith", "upper", "lower", "title", "capitalize",
    "replace", "split", "rsplit", "join", "find", "rfind", "count", "splitlines", "isdigit", "isspace",
    "isalpha", "isupper", "islower", NULL};
/* Python str methods not implemented here: named in the error */
static const char *const str_methods_missing[] = {
    "casefold", "center", "encode", "expandtabs", "format", "format_map", "index", "isalnum", "isascii",
    "isdecimal", "isidentifier", "isnumeric", "isprintable", "istitle", "ljust", "maketrans", "partition",
    "removeprefix", "removesuffix", "rindex", "rjust", "rpartition", "swapcase", "translate", "zfill", NULL};

static int name_index(const char *const *names, const char *name) {
    for (int i = 0; names[i]; i++)
        if (strcmp(names[i], name) == 0) return i;
    return -1;
}

static int bind(tp_render *R, const tvalue *self, int id, tvalue *out) {
    tvalue *copy = tp_alloc(&R->arena, sizeof *copy);
    if (!copy) return OOM(R);
    *copy = *self;
    out->kind = TV_METHOD;
    out->u.fn.id = id;
    out->u.fn.self = copy;
    return 0;
}

static int arg_count(tp_render *R, const char *what, const tp_args *a, int lo, int hi) {
    if (a->n < lo || a->n > hi) {
        if (lo == hi) return tp_fail(R, "%s takes %d argument(s), %d given", what, lo, a->n);
        return tp_fail(R, "%s takes %d to %d arguments, %d given", what, lo, hi, a->n);
    }
    return 0;
}

static int no_kwargs(tp_render *R, const char *what, const tp_args *a) {
    if (a->nk) return tp_fail(R, "%s takes no keyword argument '%s'", what, a->kname[0]);
    return 0;
}

static int want_str(tp_render *R, const char *what, const tvalue *v) {
    if (v->kind == TV_UNDEF) return undefined_error(R, v);
    if (v->kind != TV_STR) return tp_fail(R, "%s wants a string, got %s", what, tv_type_name(v));
    return 0;
}

/* strip chars (NULL: whitespace) from the left (which & 1) and right (which & 2) */
static int do_strip(tp_render *R, const tvalue *s, const tvalue *chars, int which, tvalue *out) {
    const char *p = s->u.s.p;
    int64_t a = 0, b = s->u.s.n;
    int use_chars = chars && chars->kind != TV_NONE && chars->kind != TV_UNDEF;
    if (use_chars) TRY(want_str(R, "strip", chars));
    /* a code point of the set? */
#define IN_SET(c) (use_chars ? str_find(chars->u.s.p, chars->u.s.n, p + cs, ce - cs, 0) >= 0 : tp_is_space(c))
    if (which & 1) {
        while (a < b) {
            int64_t cs = a, ce = a;
            uint32_t c = tp_utf8_next(p, b, &ce);
            if (!IN_SET(c)) break;
            a = ce;
        }
    }
    if (which & 2) {
        while (b > a) {
            int64_t cs = b - 1;
            while (cs > a && ((unsigned char)p[cs] & 0xc0) == 0x80) cs--;
            int64_t ce = cs;
            uint32_t c = tp_utf8_next(p, b, &ce);
            ce = b;
            if (!IN_SET(c)) break;
            b = cs;
        }
    }
#undef IN_SET
    *out = tv_str(p + a, b - a);
    return 0;
}

static int map_case(tp_render *R, const tvalue *s, int mode, tvalue *out) {
    /* mode: 'u' upper, 'l' lower, 't' title, 'c' capitalize */
    tp_buf b = {0};
    int prev_cased = 0, first = 1;
    for (int64_t i = 0; i < s->u.s.n;) {
        uint32_t c = tp_utf8_next(s->u.s.p, s->u.s.n, &i);
        uint32_t m = c;
        if (c == 0xdf && (mode == 'u' || ((mode == 't' && !prev_cased) || (mode == 'c' && first)))) {
            /* ß has no one-letter capital: "SS" (title case: "Ss") */
            if (tp_buf_put(&b, mode == 'u' ? "SS" : "Ss", 2)) { free(b.p); return OOM(R); }
            prev_cased = 1;
            first = 0;
            continue;
        }
        if (mode == 'u') m = to_upper(c);
        else if (mode == 'l') m = to_lower(c);
        else if (mode == 't') { m = prev_cased ? to_lower(c) : to_upper(c); prev_cased = is_cased_letter(c); }
        else { m = first ? to_upper(c) : to_lower(c); first = 0; }
        if (utf8_put(&b, m)) { free(b.p); return OOM(R); }
    }
    return str_from_buf(R, &b, out);
}

static int do_replace(tp_render *R, const tvalue *s, const tvalue *old, const tvalue *new_, int64_t count, tvalue *out) {
    TRY(want_str(R, "replace", old));
    TRY(want_str(R, "replace", new_));
    tp_buf b = {0};
    int64_t i = 0, done = 0;
    if (old->u.s.n == 0) { /* Python inserts between every character */
        while (1) {
            if (count < 0 || done < count) { if (tp_buf_put(&b, new_->u.s.p, new_->u.s.n)) goto oom; done++; }
            if (i >= s->u.s.n) break;
            int64_t st = i;
            tp_utf8_next(s->u.s.p, s->u.s.n, &i);
            if (tp_buf_put(&b, s->u.s.p + st, i - st)) goto oom;
        }
        return str_from_buf(R, &b, out);
    }
    while (i <= s->u.s.n) {
        int64_t j = (count < 0 || done < count) ? str_find(s->u.s.p, s->u.s.n, old->u.s.p, old->u.s.n, i) : -1;
        if (j < 0) { if (tp_buf_put(&b, s->u.s.p + i, s->u.s.n - i)) goto oom; break; }
        if (tp_buf_put(&b, s->u.s.p + i, j - i) || tp_buf_put(&b, new_->u.s.p, new_->u.s.n)) goto oom;
        i = j + old->u.s.n;
        done++;
    }
    return str_from_buf(R, &b, out);
oom:
    free(b.p);
    return OOM(R);
}

/* a growable list of values in the arena */
typedef struct vec { tvalue *v; int64_t n, cap; } vec;

static int vec_push(tp_render *R, vec *x, tvalue v) {
    if (x->n == x->cap) {
        int64_t cap = x->cap ? x->cap * 2 : 8;
        tvalue *p = tp_alloc(&R->arena, (size_t)cap * sizeof *p);
        if (!p) return OOM(R);
        if (x->n) memcpy(p, x->v, (size_t)x->n * sizeof *p);
        x->v = p;
        x->cap = cap;
    }
    x->v[x->n++] = v;
    return 0;
}

static int vec_list(tp_render *R, vec *x, tvalue *out) {
    TRY(tv_list_new(R, 0, out));
    out->u.l->n = x->n;
    out->u.l->v = x->v;
    return 0;
}

static int do_split(tp_render *R, const tvalue *s, const tvalue *sep, int64_t maxsplit, int from_right, tvalue *out) {
    vec parts = {0};
    const char *p = s->u.s.p;
    int64_t n = s->u.s.n;
    if (!sep || sep->kind == TV_NONE || sep->kind == TV_UNDEF) { /* runs of whitespace */
        if (from_right && maxsplit >= 0) return tp_fail(R, "rsplit with maxsplit and no separator is not supported");
        int64_t i = 0, splits = 0;
        while (i < n) {
            int64_t j = i;
            while (j < n) { int64_t k = j; if (!tp_is_space(tp_utf8_next(p, n, &k))) break; j = k; }
            i = j;
            if (i >= n) break;
            if (maxsplit >= 0 && splits >= maxsplit) {
                int64_t e = n;
                while (e > i) { int64_t cs = e - 1; while (cs > i && ((unsigned char)p[cs] & 0xc0) == 0x80) cs--;
                    int64_t k = cs; if (!tp_is_space(tp_utf8_next(p, n, &k))) break; e = cs; }
                TRY(vec_push(R, &parts, tv_str(p + i, e - i)));
                i = n;
                break;
            }
            while (j < n) { int64_t k = j; if (tp_is_space(tp_utf8_next(p, n, &k))) break; j = k; }
            TRY(vec_push(R, &parts, tv_str(p + i, j - i)));
            splits++;
            i = j;
        }
        return vec_list(R, &parts, out);
    }
    TRY(want_str(R, "split", sep));
    if (sep->u.s.n == 0) return tp_fail(R, "split: empty separator");
    if (from_right && maxsplit >= 0) {
        /* rsplit: cut from the end */
        int64_t end = n, splits = 0;
        vec rev = {0};
        while (splits < maxsplit) {
            int64_t j = -1;
            for (int64_t k = end - sep->u.s.n; k >= 0; k--)
                if (memcmp(p + k, sep->u.s.p, (size_t)sep->u.s.n) == 0) { j = k; break; }
            if (j < 0) break;
            TRY(vec_push(R, &rev, tv_str(p + j + sep->u.s.n, end - j - sep->u.s.n)));
            end = j;
            splits++;
        }
        TRY(vec_push(R, &parts, tv_str(p, end)));
        for (int64_t k = rev.n - 1; k >= 0; k--) TRY(vec_push(R, &parts, rev.v[k]));
        return vec_list(R, &parts, out);
    }
    int64_t i = 0, splits = 0;
    while (1) {
        int64_t j = (maxsplit < 0 || splits < maxsplit) ? str_find(p, n, sep->u.s.p, sep->u.s.n, i) : -1;
        if (j < 0) { TRY(vec_push(R, &parts, tv_str(p + i, n - i))); break; }
        TRY(vec_push(R, &parts, tv_str(p + i, j - i)));
        i = j + sep->u.s.n;
        splits++;
    }
    return vec_list(R, &parts, out);
}

static int do_join(tp_render *R, const tvalue *sep, const tvalue *seq, const char *attr, tvalue *out);
static int get_attr_or_item(tp_render *R, const tvalue *v, const char *attr, tvalue *out);

static int call_str_method(tp_render *R, int id, const tvalue *s, const tp_args *a, tvalue *out) {
    const char *name = str_methods[id];
    TRY(no_kwargs(R, name, a));
    switch (id) {
    case M_STRIP: case M_LSTRIP: case M_RSTRIP:
        TRY(arg_count(R, name, a, 0, 1));
        return do_strip(R, s, a->n ? &a->v[0] : NULL, id == M_STRIP ? 3 : id == M_LSTRIP ? 1 : 2, out);
    case M_STARTSWITH: case M_ENDSWITH: {
        TRY(arg_count(R, name, a, 1, 1));
        const tvalue *x = &a->v[0];
        int64_t n = 1;
        const tvalue *items = x;
        if (x->kind == TV_LIST && x->u.l->tuple) { n = x->u.l->n; items = x->u.l->v; }
        int hit = 0;
        for (int64_t i = 0; i < n; i++) {
            TRY(want_str(R, name, &items[i]));
            int64_t m = items[i].u.s.n;
            if (m > s->u.s.n) continue;
            const char *at = id == M_STARTSWITH ? s->u.s.p : s->u.s.p + s->u.s.n - m;
            if (memcmp(at, items[i].u.s.p, (size_t)m) == 0) hit = 1;
        }
        *out = tv_bool(hit);
        return 0;
    }
    case M_UPPER: TRY(arg_count(R, name, a, 0, 0)); return map_case(R, s, 'u', out);
    case M_LOWER: TRY(arg_count(R, name, a, 0, 0)); return map_case(R, s, 'l', out);
    case M_TITLE: TRY(arg_count(R, name, a, 0, 0)); return map_case(R, s, 't', out);
    case M_CAPITALIZE: TRY(arg_count(R, name, a, 0, 0)); return map_case(R, s, 'c', out);
    case M_REPLACE:
        TRY(arg_count(R, name, a, 2, 3));
        if (a->n == 3 && !is_int(&a->v[2])) return tp_fail(R, "replace: count must be an int");
        return do_replace(R, s, &a->v[0], &a->v[1], a->n == 3 ? as_int(&a->v[2]) : -1, out);
    case M_SPLIT: case M_RSPLIT:
        TRY(arg_count(R, name, a, 0, 2));
        if (a->n == 2 && !is_int(&a->v[1])) return tp_fail(R, "%s: maxsplit must be an int", name);
        return do_split(R, s, a->n ? &a->v[0] : NULL, a->n == 2 ? as_int(&a->v[1]) : -1, id == M_RSPLIT, out);
    case M_JOIN: TRY(arg_count(R, name, a, 1, 1)); return do_join(R, s, &a->v[0], NULL, out);
    case M_FIND: case M_RFIND: case M_COUNT: {
        TRY(arg_count(R, name, a, 1, 1));
        TRY(want_str(R, name, &a->v[0]));
        const tvalue *x = &a->v[0];
        if (id == M_COUNT) {
            int64_t c = 0, i = 0;
            if (x->u.s.n == 0) { *out = tv_int(utf8_len(s->u.s.p, s->u.s.n) + 1); return 0; }
            while ((i = str_find(s->u.s.p, s->u.s.n, x->u.s.p, x->u.s.n, i)) >= 0) { c++; i += x->u.s.n; }
            *out = tv_int(c);
            return 0;
        }
        int64_t at = -1;
        if (id == M_FIND) at = str_find(s->u.s.p, s->u.s.n, x->u.s.p, x->u.s.n, 0);
        else
            for (int64_t k = s->u.s.n - x->u.s.n; k >= 0; k--)
                if (memcmp(s->u.s.p + k, x->u.s.p, (size_t)x->u.s.n) == 0) { at = k; break; }
        *out = tv_int(at < 0 ? -1 : utf8_len(s->u.s.p, at)); /* code point index */
        return 0;
    }
    case M_SPLITLINES: {
        TRY(arg_count(R, name, a, 0, 0));
        vec parts = {0};
        const char *p = s->u.s.p;
        int64_t n = s->u.s.n, i = 0, st = 0;
        while (i < n) {
            int64_t k = i;
            uint32_t c = tp_utf8_next(p, n, &k);
            int brk = c == '\n' || c == '\r' || c == 0x0b || c == 0x0c || c == 0x1c || c == 0x1d || c == 0x1e ||
                      c == 0x85 || c == 0x2028 || c == 0x2029;
            if (brk) {
                TRY(vec_push(R, &parts, tv_str(p + st, i - st)));
                if (c == '\r' && k < n && p[k] == '\n') k++;
                st = k;
            }
            i = k;
        }
        if (st < n) TRY(vec_push(R, &parts, tv_str(p + st, n - st)));
        return vec_list(R, &parts, out);
    }
    default: { /* is* predicates */
        TRY(arg_count(R, name, a, 0, 0));
        int all = s->u.s.n > 0, cased = 0;
        for (int64_t i = 0; i < s->u.s.n;) {
            uint32_t c = tp_utf8_next(s->u.s.p, s->u.s.n, &i);
            int ok = 1;
            if (id == M_ISDIGIT) ok = c >= '0' && c <= '9';
            else if (id == M_ISSPACE) ok = tp_is_space(c);
            else if (id == M_ISALPHA) ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= 0x80 && is_cased_letter(c));
            else if (id == M_ISUPPER) { if (to_lower(c) != c) cased = 1; else if (to_upper(c) != c) ok = 0; }
            else if (id == M_ISLOWER) { if (to_upper(c) != c) cased = 1; else if (to_lower(c) != c) ok = 0; }
            if (!ok) all = 0;
        }
        if (id == M_ISUPPER || id == M_ISLOWER) all = all && cased;
        *out = tv_bool(all);
        return 0;
    }
    }
}

static int make_items(tp_render *R, const tv_dict *d, tvalue *out) {
    TRY(tv_list_new(R, d->n, out));
    for (int64_t i = 0; i < d->n; i++) {
        tvalue pair;
        TRY(tv_list_new(R, 2, &pair));
        pair.u.l->tuple = 1;
        pair.u.l->v[0] = d->k[i];
        pair.u.l->v[1] = d->v[i];
        out->u.l->v[i] = pair;
    }
    return 0;
}

static int call_method(tp_render *R, int id, const tvalue *self, const tp_args *a, tvalue *out) {
    if (id < M_ITEMS) return call_str_method(R, id, self, a, out);
    switch (id) {
    case M_ITEMS: case M_KEYS: case M_VALUES: {
        const char *name = id == M_ITEMS ? "items" : id == M_KEYS ? "keys" : "values";
        TRY(no_kwargs(R, name, a));
        TRY(arg_count(R, name, a, 0, 0));
        const tv_dict *d = self->u.d;
        if (id == M_ITEMS) return make_items(R, d, out);
        TRY(tv_list_new(R, d->n, out));
        for (int64_t i = 0; i < d->n; i++) out->u.l->v[i] = id == M_KEYS ? d->k[i] : d->v[i];
        return 0;
    }
    case M_GET:
        TRY(no_kwargs(R, "get", a));
        TRY(arg_count(R, "get", a, 1, 2));
        if (!tv_dict_get(self->u.d, a->v[0], out)) *out = a->n == 2 ? a->v[1] : tv_none();
        return 0;
    case M_CYCLE:
        TRY(no_kwargs(R, "loop.cycle", a));
        if (a->n == 0) return tp_fail(R, "loop.cycle needs at least one argument");
        *out = a->v[self->u.loop->index0 % a->n];
        return 0;
    }
    return tp_fail(R, "unknown method");
}

/* ------------------------------------------------------------------------ */
/* attributes and items                                                      */

static int loop_attr(tp_render *R, const tvalue *obj, const char *name, tvalue *out) {
    const tv_loop *L = obj->u.loop;
    int64_t i = L->index0, n = L->length;
    if (!strcmp(name, "index")) *out = tv_int(i + 1);
    else if (!strcmp(name, "index0")) *out = tv_int(i);
    else if (!strcmp(name, "revindex")) *out = tv_int(n - i);
    else if (!strcmp(name, "revindex0")) *out = tv_int(n - i - 1);
    else if (!strcmp(name, "first")) *out = tv_bool(i == 0);
    else if (!strcmp(name, "last")) *out = tv_bool(i == n - 1);
    else if (!strcmp(name, "length")) *out = tv_int(n);
    else if (!strcmp(name, "depth")) *out = tv_int(1);
    else if (!strcmp(name, "depth0")) *out = tv_int(0);
    else if (!strcmp(name, "previtem"))
        *out = i > 0 ? L->items.u.l->v[i - 1] : tv_undef("there is no previous item");
    else if (!strcmp(name, "nextitem"))
        *out = i + 1 < n ? L->items.u.l->v[i + 1] : tv_undef("there is no next item");
    else if (!strcmp(name, "cycle")) return bind(R, obj, M_CYCLE, out);
    else *out = tv_undef(arena_printf(R, "'LoopContext object' has no attribute '%s'", name));
    return 0;
}

int tv_getattr(tp_render *R, const tvalue *obj, const char *name, tvalue *out) {
    switch (obj->kind) {
    case TV_UNDEF: return undefined_error(R, obj);
    case TV_DICT: {
        int m = !strcmp(name, "items") ? M_ITEMS : !strcmp(name, "keys") ? M_KEYS
              : !strcmp(name, "values") ? M_VALUES : !strcmp(name, "get") ? M_GET : -1;
        if (m >= 0) return bind(R, obj, m, out);
        if (tv_dict_get_str(obj->u.d, name, out)) return 0;
        *out = tv_undef(arena_printf(R, "'dict object' has no attribute '%s'", name));
        return 0;
    }
    case TV_NS:
        if (tv_dict_get_str(obj->u.d, name, out)) return 0;
        *out = tv_undef(arena_printf(R, "'Namespace object' has no attribute '%s'", name));
        return 0;
    case TV_STR: {
        int m = name_index(str_methods, name);
        if (m >= 0) return bind(R, obj, m, out);
        if (name_index(str_methods_missing, name) >= 0)
            *out = tv_undef(arena_printf(R, "the str method '%s' is not supported", name));
        else *out = tv_undef(arena_printf(R, "'str object' has no attribute '%s'", name));
        return 0;
    }
    case TV_LOOP: return loop_attr(R, obj, name, out);
    default:
        *out = tv_undef(arena_printf(R, "'%s' has no attribute '%s'", obj_repr(obj), name));
        return 0;
    }
}

/* a code-point index of a string -> byte range */
static int str_index(const tvalue *s, int64_t idx, int64_t *a, int64_t *b) {
    int64_t n = utf8_len(s->u.s.p, s->u.s.n);
    if (idx < 0) idx += n;
    if (idx < 0 || idx >= n) return 0;
    int64_t i = 0;
    for (int64_t k = 0; k < idx; k++) tp_utf8_next(s->u.s.p, s->u.s.n, &i);
    *a = i;
    tp_utf8_next(s->u.s.p, s->u.s.n, &i);
    *b = i;
    return 1;
}

int tv_getitem(tp_render *R, const tvalue *obj, const tvalue *key, tvalue *out) {
    if (obj->kind == TV_UNDEF) return undefined_error(R, obj);
    if (key->kind == TV_UNDEF) return undefined_error(R, key);
    switch (obj->kind) {
    case TV_DICT: case TV_NS:
        if (tv_dict_get(obj->u.d, *key, out)) return 0;
        break;
    case TV_LIST:
        if (is_int(key)) {
            int64_t i = as_int(key), n = obj->u.l->n;
            if (i < 0) i += n;
            if (i >= 0 && i < n) { *out = obj->u.l->v[i]; return 0; }
            *out = tv_undef(arena_printf(R, "'%s' has no element %lld", obj_repr(obj), (long long)as_int(key)));
            return 0;
        }
        break;
    case TV_STR:
        if (is_int(key)) {
            int64_t a, b;
            if (str_index(obj, as_int(key), &a, &b)) { *out = tv_str(obj->u.s.p + a, b - a); return 0; }
            *out = tv_undef(arena_printf(R, "'str object' has no element %lld", (long long)as_int(key)));
            return 0;
        }
        break;
    default: break;
    }
    if (key->kind == TV_STR) {
        char name[128];
        int64_t n = key->u.s.n < 127 ? key->u.s.n : 127;
        memcpy(name, key->u.s.p, (size_t)n);
        name[n] = 0;
        if (obj->kind == TV_DICT || obj->kind == TV_NS) {
            if (obj->kind == TV_DICT && (!strcmp(name, "items") || !strcmp(name, "keys") || !strcmp(name, "values") ||
                                         !strcmp(name, "get")))
                return tv_getattr(R, obj, name, out);
            *out = tv_undef(arena_printf(R, "'%s' has no attribute '%s'", obj_repr(obj), name));
            return 0;
        }
        return tv_getattr(R, obj, name, out);
    }
    tp_buf b = {0};
    tv_repr(R, &b, key);
    *out = tv_undef(arena_printf(R, "'%s' has no element %s", obj_repr(obj), b.p ? b.p : "?"));
    free(b.p);
    return 0;
}

/* Python's slice.indices */
static int slice_bounds(tp_render *R, int64_t n, const tvalue *start, const tvalue *stop, const tvalue *step,
                        int64_t *a, int64_t *b, int64_t *c) {
    const tvalue *parts[3] = {start, stop, step};
    for (int i = 0; i < 3; i++)
        if (parts[i] && parts[i]->kind != TV_NONE && !is_int(parts[i]))
            return tp_fail(R, "slice indices must be integers or None, not %s", tv_type_name(parts[i]));
    *c = step && step->kind != TV_NONE ? as_int(step) : 1;
    if (*c == 0) return tp_fail(R, "slice step cannot be zero");
    int64_t lo = *c > 0 ? 0 : -1, hi = *c > 0 ? n : n - 1;
    if (start && start->kind != TV_NONE) {
        *a = as_int(start);
        if (*a < 0) { *a += n; if (*a < lo) *a = lo; }
        else if (*a > hi) *a = hi;
    } else *a = *c > 0 ? lo : hi;
    if (stop && stop->kind != TV_NONE) {
        *b = as_int(stop);
        if (*b < 0) { *b += n; if (*b < lo) *b = lo; }
        else if (*b > hi) *b = hi;
    } else *b = *c > 0 ? hi : lo;
    return 0;
}

int tv_slice(tp_render *R, const tvalue *obj, const tvalue *start, const tvalue *stop, const tvalue *step,
             tvalue *out) {
    if (obj->kind == TV_UNDEF) return undefined_error(R, obj);
    tvalue items;
    if (obj->kind == TV_STR) TRY(tv_iterate(R, obj, &items));
    else if (obj->kind == TV_LIST) items = *obj;
    else return tp_fail(R, "'%s' object is not subscriptable with a slice", tv_type_name(obj));
    int64_t n = items.u.l->n, a = 0, b = 0, c = 1;
    TRY(slice_bounds(R, n, start, stop, step, &a, &b, &c));
    vec picked = {0};
    for (int64_t i = a; c > 0 ? i < b : i > b; i += c) TRY(vec_push(R, &picked, items.u.l->v[i]));
    if (obj->kind == TV_STR) {
        tp_buf buf = {0};
        for (int64_t i = 0; i < picked.n; i++)
            if (tp_buf_put(&buf, picked.v[i].u.s.p, picked.v[i].u.s.n)) { free(buf.p); return OOM(R); }
        return str_from_buf(R, &buf, out);
    }
    TRY(vec_list(R, &picked, out));
    out->u.l->tuple = obj->u.l->tuple;
    return 0;
}

/* ------------------------------------------------------------------------ */
/* filters                                                                   */

enum {
    FL_ABS, FL_CAPITALIZE, FL_COUNT, FL_D, FL_DEFAULT, FL_DICTSORT, FL_FIRST, FL_FLOAT, FL_INT, FL_ITEMS,
    FL_JOIN, FL_LAST, FL_LENGTH, FL_LIST, FL_LOWER, FL_MAP, FL_MAX, FL_MIN, FL_REJECT, FL_REJECTATTR,
    FL_REPLACE, FL_REVERSE, FL_ROUND, FL_SAFE, FL_SELECT, FL_SELECTATTR, FL_SORT, FL_STRING, FL_SUM,
    FL_TITLE, FL_TOJSON, FL_TRIM, FL_UNIQUE, FL_UPPER, FL_INDENT, FL_WORDCOUNT
};
static const char *const filter_names[] = {
    "abs", "capitalize", "count", "d", "default", "dictsort", "first", "float", "int", "items",
    "join", "last", "length", "list", "lower", "map", "max", "min", "reject", "rejectattr",
    "replace", "reverse", "round", "safe", "select", "selectattr", "sort", "string", "sum",
    "title", "tojson", "trim", "unique", "upper", "indent", "wordcount", NULL};

int tp_filter_id(const char *name) { return name_index(filter_names, name); }

const char *tp_filter_names(void) {
    return "abs, capitalize, count, default (d), dictsort, first, float, indent, int, items, join, last, "
           "length, list, lower, map, max, min, reject, rejectattr, replace, reverse, round, safe, select, "
           "selectattr, sort, string, sum, title, tojson, trim, unique, upper, wordcount";
}

/* the argument named `name` (keyword) or at position pos; NULL when absent */
static const tvalue *arg(const tp_args *a, int pos, const char *name) {
    for (int i = 0; i < a->nk; i++)
        if (!strcmp(a->kname[i], name)) return &a->kv[i];
    if (pos >= 0 && pos < a->n) return &a->v[pos];
    return NULL;
}

static int check_kwargs(tp_render *R, const char *what, const tp_args *a, const char *const *allowed) {
    for (int i = 0; i < a->nk; i++)
        if (name_index(allowed, a->kname[i]) < 0)
            return tp_fail(R, "%s got an unexpected keyword argument '%s'", what, a->kname[i]);
    return 0;
}

static int get_attr_or_item(tp_render *R, const tvalue *v, const char *attr, tvalue *out) {
    /* Jinja's environment.getitem with dotted paths ("a.b", "0") */
    tvalue cur = *v;
    const char *p = attr;
    while (1) {
        const char *dot = strchr(p, '.');
        size_t n = dot ? (size_t)(dot - p) : strlen(p);
        char part[128];
        if (n >= sizeof part) n = sizeof part - 1;
        memcpy(part, p, n);
        part[n] = 0;
        char *end;
        long long idx = strtoll(part, &end, 10);
        tvalue key = (*part && !*end) ? tv_int(idx) : tv_str(part, (int64_t)n);
        if (key.kind == TV_STR) TRY(tv_str_copy(R, part, (int64_t)n, &key));
        TRY(tv_getitem(R, &cur, &key, &cur));
        if (!dot) break;
        if (cur.kind == TV_UNDEF) break;
        p = dot + 1;
    }
    *out = cur;
    return 0;
}

static int do_join(tp_render *R, const tvalue *sep, const tvalue *seq, const char *attr, tvalue *out) {
    tvalue items;
    TRY(tv_iterate(R, seq, &items));
    tp_buf b = {0};
    for (int64_t i = 0; i < items.u.l->n; i++) {
        tvalue x = items.u.l->v[i];
        if (attr && get_attr_or_item(R, &x, attr, &x)) { free(b.p); return -1; }
        if (i && sep && tp_buf_put(&b, sep->u.s.p, sep->u.s.n)) { free(b.p); return OOM(R); }
        if (tv_print(R, &b, &x)) { free(b.p); return -1; }
    }
    return str_from_buf(R, &b, out);
}

static int length_of(tp_render *R, const tvalue *v, int64_t *n) {
    switch (v->kind) {
    case TV_UNDEF: *n = 0; return 0;
    case TV_STR: *n = utf8_len(v->u.s.p, v->u.s.n); return 0;
    case TV_LIST: *n = v->u.l->n; return 0;
    case TV_DICT: case TV_NS: *n = v->u.d->n; return 0;
    default: return tp_fail(R, "object of type '%s' has no len()", tv_type_name(v));
    }
}

/* stable merge sort of values by key values */
static int sort_values(tp_render *R, tvalue *v, tvalue *keys, int64_t n, int reverse) {
    if (n < 2) return 0;
    tvalue *tv = tp_alloc(&R->arena, (size_t)n * sizeof *tv), *tk = tp_alloc(&R->arena, (size_t)n * sizeof *tk);
    if (!tv || !tk) return OOM(R);
    for (int64_t width = 1; width < n; width *= 2) {
        for (int64_t lo = 0; lo < n; lo += 2 * width) {
            int64_t mid = lo + width < n ? lo + width : n, hi = lo + 2 * width < n ? lo + 2 * width : n;
            int64_t i = lo, j = mid, k = lo;
            while (i < mid && j < hi) {
                int c;
                TRY(tv_compare(R, &keys[j], &keys[i], &c));
                int take_right = reverse ? c > 0 : c < 0;
                if (take_right) { tv[k] = v[j]; tk[k++] = keys[j++]; }
                else { tv[k] = v[i]; tk[k++] = keys[i++]; }
            }
            while (i < mid) { tv[k] = v[i]; tk[k++] = keys[i++]; }
            while (j < hi) { tv[k] = v[j]; tk[k++] = keys[j++]; }
        }
        memcpy(v, tv, (size_t)n * sizeof *v);
        memcpy(keys, tk, (size_t)n * sizeof *keys);
    }
    return 0;
}

static const tv_dict *sort_dict_keys(tp_render *R, const tv_dict *d) {
    tv_dict *s = tp_alloc(&R->arena, sizeof *s);
    tvalue *k = tp_alloc(&R->arena, (size_t)(d->n + 1) * sizeof *k), *v = tp_alloc(&R->arena, (size_t)(d->n + 1) * sizeof *v);
    tvalue *idx = tp_alloc(&R->arena, (size_t)(d->n + 1) * sizeof *idx);
    if (!s || !k || !v || !idx) { OOM(R); return NULL; }
    memcpy(k, d->k, (size_t)d->n * sizeof *k);
    for (int64_t i = 0; i < d->n; i++) idx[i] = tv_int(i);
    tvalue *keys = tp_alloc(&R->arena, (size_t)(d->n + 1) * sizeof *keys);
    if (!keys) { OOM(R); return NULL; }
    memcpy(keys, d->k, (size_t)d->n * sizeof *keys);
    if (sort_values(R, idx, keys, d->n, 0)) return NULL;
    for (int64_t i = 0; i < d->n; i++) { k[i] = d->k[idx[i].u.i]; v[i] = d->v[idx[i].u.i]; }
    s->k = k;
    s->v = v;
    s->n = s->cap = d->n;
    return s;
}

/* select / reject / selectattr / rejectattr: test_args start at a->v[first] */
static int do_select(tp_render *R, const tvalue *seq, const tp_args *a, int attr_mode, int keep_when, tvalue *out) {
    tvalue items;
    TRY(tv_iterate(R, seq, &items));
    int first = 0;
    const char *attr = NULL;
    char attr_buf[128];
    if (attr_mode) {
        if (a->n < 1 || a->v[0].kind != TV_STR) return tp_fail(R, "selectattr/rejectattr want an attribute name");
        int64_t n = a->v[0].u.s.n < 127 ? a->v[0].u.s.n : 127;
        memcpy(attr_buf, a->v[0].u.s.p, (size_t)n);
        attr_buf[n] = 0;
        attr = attr_buf;
        first = 1;
    }
    int test = -1;
    if (a->n > first) {
        if (a->v[first].kind != TV_STR) return tp_fail(R, "select: the test name must be a string");
        char name[64];
        int64_t n = a->v[first].u.s.n < 63 ? a->v[first].u.s.n : 63;
        memcpy(name, a->v[first].u.s.p, (size_t)n);
        name[n] = 0;
        test = tp_test_id(name);
        if (test < 0) return tp_fail(R, "no test named '%s' (supported: %s)", name, tp_test_names());
        first++;
    }
    tp_args targs = {.n = a->n - first, .v = a->v + first};
    vec kept = {0};
    for (int64_t i = 0; i < items.u.l->n; i++) {
        tvalue x = items.u.l->v[i];
        if (attr) TRY(get_attr_or_item(R, &x, attr, &x));
        int r;
        if (test >= 0) TRY(tp_apply_test(R, test, &x, &targs, &r));
        else r = tv_truthy(&x);
        if (r == keep_when) TRY(vec_push(R, &kept, items.u.l->v[i]));
    }
    return vec_list(R, &kept, out);
}

static int to_number(tp_render *R, const tvalue *v, int want_int, const tvalue *def, tvalue *out) {
    if (v->kind == TV_INT || v->kind == TV_BOOL) { *out = want_int ? tv_int(as_int(v)) : tv_float((double)as_int(v)); return 0; }
    if (v->kind == TV_FLOAT) { *out = want_int ? tv_int((int64_t)v->u.f) : *v; return 0; }
    if (v->kind == TV_STR) {
        char buf[64];
        int64_t n = v->u.s.n < 63 ? v->u.s.n : 63;
        memcpy(buf, v->u.s.p, (size_t)n);
        buf[n] = 0;
        char *end;
        if (want_int) {
            long long x = strtoll(buf, &end, 10);
            if (end != buf && *end == 0) { *out = tv_int(x); return 0; }
            double f = strtod(buf, &end);
            if (end != buf && *end == 0) { *out = tv_int((int64_t)f); return 0; }
        } else {
            double f = strtod(buf, &end);
            if (end != buf && *end == 0) { *out = tv_float(f); return 0; }
        }
    }
    *out = def ? *def : (want_int ? tv_int(0) : tv_float(0));
    return 0;
}

int tp_apply_filter(tp_render *R, int id, const tvalue *v, const tp_args *a, tvalue *out) {
    const char *name = filter_names[id];
    static const char *const none[] = {NULL};
    switch (id) {
    case FL_ABS:
        TRY(check_kwargs(R, name, a, none));
        if (!is_num(v)) return tp_fail(R, "abs: bad operand type '%s'", tv_type_name(v));
        *out = is_int(v) ? tv_int(as_int(v) < 0 ? -as_int(v) : as_int(v)) : tv_float(fabs(v->u.f));
        return 0;
    case FL_CAPITALIZE: case FL_LOWER: case FL_UPPER: case FL_TITLE: {
        tvalue s;
        TRY(tv_to_str(R, v, &s));
        return map_case(R, &s, id == FL_CAPITALIZE ? 'c' : id == FL_LOWER ? 'l' : id == FL_UPPER ? 'u' : 't', out);
    }
    case FL_COUNT: case FL_LENGTH: {
        int64_t n = 0;
        TRY(length_of(R, v, &n));
        *out = tv_int(n);
        return 0;
    }
    case FL_D: case FL_DEFAULT: {
        static const char *const kw[] = {"default_value", "boolean", NULL};
        TRY(check_kwargs(R, name, a, kw));
        const tvalue *dv = arg(a, 0, "default_value");
        const tvalue *boolean = arg(a, 1, "boolean");
        int use_default = v->kind == TV_UNDEF || (boolean && tv_truthy(boolean) && !tv_truthy(v));
        *out = use_default ? (dv ? *dv : tv_str("", 0)) : *v;
        return 0;
    }
    case FL_DICTSORT: case FL_ITEMS: {
        if (v->kind == TV_UNDEF) return tv_list_new(R, 0, out);
        if (v->kind != TV_DICT) return tp_fail(R, "%s: wants a mapping, got %s", name, tv_type_name(v));
        if (id == FL_ITEMS) return make_items(R, v->u.d, out);
        const tv_dict *d = sort_dict_keys(R, v->u.d);
        if (!d) return -1;
        return make_items(R, d, out);
    }
    case FL_FIRST: case FL_LAST: {
        tvalue items;
        TRY(tv_iterate(R, v, &items));
        if (items.u.l->n == 0) { *out = tv_undef(arena_printf(R, "%s: the sequence is empty", name)); return 0; }
        *out = items.u.l->v[id == FL_FIRST ? 0 : items.u.l->n - 1];
        return 0;
    }
    case FL_FLOAT: case FL_INT: return to_number(R, v, id == FL_INT, arg(a, 0, "default"), out);
    case FL_JOIN: {
        static const char *const kw[] = {"d", "attribute", NULL};
        TRY(check_kwargs(R, name, a, kw));
        const tvalue *sep = arg(a, 0, "d");
        const tvalue *attr = arg(a, 1, "attribute");
        tvalue s = tv_str("", 0);
        if (sep) TRY(tv_to_str(R, sep, &s));
        char buf[128];
        if (attr) {
            if (attr->kind != TV_STR) return tp_fail(R, "join: attribute must be a string");
            int64_t n = attr->u.s.n < 127 ? attr->u.s.n : 127;
            memcpy(buf, attr->u.s.p, (size_t)n);
            buf[n] = 0;
        }
        return do_join(R, &s, v, attr ? buf : NULL, out);
    }
    case FL_LIST: {
        tvalue items;
        TRY(tv_iterate(R, v, &items));
        TRY(tv_list_new(R, items.u.l->n, out));
        for (int64_t i = 0; i < items.u.l->n; i++) out->u.l->v[i] = items.u.l->v[i];
        return 0;
    }
    case FL_MAP: {
        tvalue items;
        TRY(tv_iterate(R, v, &items));
        const tvalue *attr = arg(a, -1, "attribute");
        TRY(tv_list_new(R, items.u.l->n, out));
        if (attr) {
            const tvalue *def = arg(a, -1, "default");
            if (attr->kind != TV_STR) return tp_fail(R, "map: attribute must be a string");
            char buf[128];
            int64_t n = attr->u.s.n < 127 ? attr->u.s.n : 127;
            memcpy(buf, attr->u.s.p, (size_t)n);
            buf[n] = 0;
            for (int64_t i = 0; i < items.u.l->n; i++) {
                TRY(get_attr_or_item(R, &items.u.l->v[i], buf, &out->u.l->v[i]));
                if (def && out->u.l->v[i].kind == TV_UNDEF) out->u.l->v[i] = *def;
            }
            return 0;
        }
        if (a->n < 1 || a->v[0].kind != TV_STR) return tp_fail(R, "map wants a filter name or attribute=");
        char fname[64];
        int64_t n = a->v[0].u.s.n < 63 ? a->v[0].u.s.n : 63;
        memcpy(fname, a->v[0].u.s.p, (size_t)n);
        fname[n] = 0;
        int f = tp_filter_id(fname);
        if (f < 0) return tp_fail(R, "map: no filter named '%s' (supported: %s)", fname, tp_filter_names());
        tp_args rest = {.n = a->n - 1, .v = a->v + 1, .nk = a->nk, .kname = a->kname, .kv = a->kv};
        for (int64_t i = 0; i < items.u.l->n; i++) TRY(tp_apply_filter(R, f, &items.u.l->v[i], &rest, &out->u.l->v[i]));
        return 0;
    }
    case FL_MAX: case FL_MIN: {
        tvalue items;
        TRY(tv_iterate(R, v, &items));
        if (items.u.l->n == 0) { *out = tv_undef(arena_printf(R, "%s: the sequence is empty", name)); return 0; }
        *out = items.u.l->v[0];
        for (int64_t i = 1; i < items.u.l->n; i++) {
            int c;
            TRY(tv_compare(R, &items.u.l->v[i], out, &c));
            if (id == FL_MAX ? c > 0 : c < 0) *out = items.u.l->v[i];
        }
        return 0;
    }
    case FL_REJECT: return do_select(R, v, a, 0, 0, out);
    case FL_SELECT: return do_select(R, v, a, 0, 1, out);
    case FL_REJECTATTR: return do_select(R, v, a, 1, 0, out);
    case FL_SELECTATTR: return do_select(R, v, a, 1, 1, out);
    case FL_REPLACE: {
        tvalue s;
        TRY(tv_to_str(R, v, &s));
        if (a->n < 2 || a->n > 3) return tp_fail(R, "replace takes 2 or 3 arguments, %d given", a->n);
        if (a->n == 3 && !is_int(&a->v[2])) return tp_fail(R, "replace: count must be an int");
        return do_replace(R, &s, &a->v[0], &a->v[1], a->n == 3 ? as_int(&a->v[2]) : -1, out);
    }
    case FL_REVERSE: {
        if (v->kind == TV_STR || v->kind == TV_LIST) {
            tvalue step = tv_int(-1);
            return tv_slice(R, v, NULL, NULL, &step, out);
        }
        tvalue items;
        TRY(tv_iterate(R, v, &items));
        tvalue step = tv_int(-1);
        return tv_slice(R, &items, NULL, NULL, &step, out);
    }
    case FL_ROUND: {
        const tvalue *prec = arg(a, 0, "precision");
        const tvalue *method = arg(a, 1, "method");
        if (!is_num(v)) return tp_fail(R, "round: wants a number, got %s", tv_type_name(v));
        double x = as_float(v), s = pow(10, prec ? (double)as_int(prec) : 0);
        if (method && method->kind == TV_STR && method->u.s.n == 4 && !memcmp(method->u.s.p, "ceil", 4)) x = ceil(x * s) / s;
        else if (method && method->kind == TV_STR && method->u.s.n == 5 && !memcmp(method->u.s.p, "floor", 5)) x = floor(x * s) / s;
        else x = round(x * s) / s;
        *out = tv_float(x);
        return 0;
    }
    case FL_SAFE: *out = *v; return 0;
    case FL_SORT: {
        static const char *const kw[] = {"reverse", "case_sensitive", "attribute", NULL};
        TRY(check_kwargs(R, name, a, kw));
        const tvalue *rev = arg(a, 0, "reverse"), *attr = arg(a, 2, "attribute");
        tvalue items;
        TRY(tv_iterate(R, v, &items));
        int64_t n = items.u.l->n;
        TRY(tv_list_new(R, n, out));
        tvalue *keys = tp_alloc(&R->arena, (size_t)(n + 1) * sizeof *keys);
        if (!keys) return OOM(R);
        char buf[128];
        if (attr) {
            if (attr->kind != TV_STR) return tp_fail(R, "sort: attribute must be a string");
            int64_t m = attr->u.s.n < 127 ? attr->u.s.n : 127;
            memcpy(buf, attr->u.s.p, (size_t)m);
            buf[m] = 0;
        }
        for (int64_t i = 0; i < n; i++) {
            out->u.l->v[i] = items.u.l->v[i];
            keys[i] = items.u.l->v[i];
            if (attr) TRY(get_attr_or_item(R, &keys[i], buf, &keys[i]));
            if (keys[i].kind == TV_STR) TRY(map_case(R, &keys[i], 'l', &keys[i])); /* case-insensitive */
        }
        return sort_values(R, out->u.l->v, keys, n, rev && tv_truthy(rev));
    }
    case FL_STRING: return tv_to_str(R, v, out);
    case FL_SUM: {
        tvalue items;
        TRY(tv_iterate(R, v, &items));
        const tvalue *start = arg(a, 1, "start");
        *out = start ? *start : tv_int(0);
        for (int64_t i = 0; i < items.u.l->n; i++) TRY(tv_binary(R, '+', out, &items.u.l->v[i], out));
        return 0;
    }
    case FL_TOJSON: {
        static const char *const kw[] = {"ensure_ascii", "indent", "separators", "sort_keys", NULL};
        TRY(check_kwargs(R, name, a, kw));
        if (a->n > 0) return tp_fail(R, "tojson takes keyword arguments only (indent=, separators=, sort_keys=, ensure_ascii=)");
        json_opts o = {NULL, ", ", ": ", 0, 0};
        const tvalue *ind = arg(a, -1, "indent"), *sep = arg(a, -1, "separators");
        const tvalue *sk = arg(a, -1, "sort_keys"), *ea = arg(a, -1, "ensure_ascii");
        char indent_buf[64];
        if (ind && ind->kind != TV_NONE) {
            if (is_int(ind)) {
                int64_t k = as_int(ind);
                if (k < 0) k = 0;
                if (k > 63) k = 63;
                memset(indent_buf, ' ', (size_t)k);
                indent_buf[k] = 0;
            } else if (ind->kind == TV_STR) {
                int64_t k = ind->u.s.n < 63 ? ind->u.s.n : 63;
                memcpy(indent_buf, ind->u.s.p, (size_t)k);
                indent_buf[k] = 0;
            } else return tp_fail(R, "tojson: indent must be an int or a string");
            o.indent = indent_buf;
            o.item_sep = ",";
        }
        char item_buf[32], key_buf[32];
        if (sep && sep->kind != TV_NONE) {
            if (sep->kind != TV_LIST || sep->u.l->n != 2 || sep->u.l->v[0].kind != TV_STR || sep->u.l->v[1].kind != TV_STR)
                return tp_fail(R, "tojson: separators must be a pair of strings");
            int64_t n0 = sep->u.l->v[0].u.s.n < 31 ? sep->u.l->v[0].u.s.n : 31;
            int64_t n1 = sep->u.l->v[1].u.s.n < 31 ? sep->u.l->v[1].u.s.n : 31;
            memcpy(item_buf, sep->u.l->v[0].u.s.p, (size_t)n0);
            item_buf[n0] = 0;
            memcpy(key_buf, sep->u.l->v[1].u.s.p, (size_t)n1);
            key_buf[n1] = 0;
            o.item_sep = item_buf;
            o.key_sep = key_buf;
        }
        o.sort_keys = sk && tv_truthy(sk);
        o.ensure_ascii = ea && tv_truthy(ea);
        tp_buf b = {0};
        if (json_dump(R, &b, v, &o, 0)) { free(b.p); return -1; }
        return str_from_buf(R, &b, out);
    }
    case FL_TRIM: {
        tvalue s;
        TRY(tv_to_str(R, v, &s));
        const tvalue *chars = arg(a, 0, "chars");
        return do_strip(R, &s, chars, 3, out);
    }
    case FL_UNIQUE: {
        tvalue items;
        TRY(tv_iterate(R, v, &items));
        vec kept = {0};
        for (int64_t i = 0; i < items.u.l->n; i++) {
            int seen = 0;
            for (int64_t j = 0; j < kept.n && !seen; j++) seen = tv_equal(&kept.v[j], &items.u.l->v[i]);
            if (!seen) TRY(vec_push(R, &kept, items.u.l->v[i]));
        }
        return vec_list(R, &kept, out);
    }
    case FL_INDENT: {
        static const char *const kw[] = {"width", "first", "blank", NULL};
        TRY(check_kwargs(R, name, a, kw));
        const tvalue *w = arg(a, 0, "width"), *first = arg(a, 1, "first"), *blank = arg(a, 2, "blank");
        tvalue s, pad = tv_str("    ", 4);
        TRY(tv_to_str(R, v, &s));
        if (w && is_int(w)) {
            int64_t k = as_int(w) < 0 ? 0 : as_int(w) > 256 ? 256 : as_int(w);
            char *p = tp_alloc(&R->arena, (size_t)k + 1);
            if (!p) return OOM(R);
            memset(p, ' ', (size_t)k);
            pad = tv_str(p, k);
        } else if (w && w->kind == TV_STR) pad = *w;
        tp_buf b = {0};
        const char *p = s.u.s.p;
        int64_t n = s.u.s.n, i = 0, line = 0;
        while (i < n || (i == n && line == 0)) {
            const char *nl = memchr(p + i, '\n', (size_t)(n - i));
            int64_t e = nl ? nl - p : n;
            int is_blank = e == i;
            int indent = (line > 0 || (first && tv_truthy(first))) && (!is_blank || (blank && tv_truthy(blank)));
            if (indent && tp_buf_put(&b, pad.u.s.p, pad.u.s.n)) goto oom;
            if (tp_buf_put(&b, p + i, e - i)) goto oom;
            if (!nl) break;
            if (tp_buf_putc(&b, '\n')) goto oom;
            i = e + 1;
            line++;
            if (i == n) break; /* a trailing newline ends it */
        }
        return str_from_buf(R, &b, out);
    oom:
        free(b.p);
        return OOM(R);
    }
    case FL_WORDCOUNT: {
        tvalue s, parts;
        TRY(tv_to_str(R, v, &s));
        TRY(do_split(R, &s, NULL, -1, 0, &parts));
        *out = tv_int(parts.u.l->n);
        return 0;
    }
    }
    return tp_fail(R, "filter '%s' is not implemented", name);
}

/* ------------------------------------------------------------------------ */
/* tests                                                                     */

enum {
    TS_DEFINED, TS_UNDEFINED, TS_NONE, TS_BOOLEAN, TS_TRUE, TS_FALSE, TS_INTEGER, TS_FLOAT, TS_NUMBER,
    TS_STRING, TS_MAPPING, TS_ITERABLE, TS_SEQUENCE, TS_CALLABLE, TS_SAMEAS, TS_EQ, TS_EQUALTO, TS_EQ2,
    TS_NE, TS_NE2, TS_LT, TS_LT2, TS_LE, TS_LE2, TS_GT, TS_GT2, TS_GE, TS_GE2, TS_IN, TS_ODD, TS_EVEN,
    TS_DIVISIBLEBY, TS_LOWER, TS_UPPER, TS_LESSTHAN, TS_GREATERTHAN
};
static const char *const test_names[] = {
    "defined", "undefined", "none", "boolean", "true", "false", "integer", "float", "number",
    "string", "mapping", "iterable", "sequence", "callable", "sameas", "eq", "equalto", "==",
    "ne", "!=", "lt", "<", "le", "<=", "gt", ">", "ge", ">=", "in", "odd", "even",
    "divisibleby", "lower", "upper", "lessthan", "greaterthan", NULL};

int tp_test_id(const char *name) { return name_index(test_names, name); }

const char *tp_test_names(void) {
    return "defined, undefined, none, boolean, true, false, integer, float, number, string, mapping, "
           "iterable, sequence, callable, sameas, eq (equalto, ==), ne (!=), lt (<, lessthan), le (<=), "
           "gt (>, greaterthan), ge (>=), in, odd, even, divisibleby, lower, upper";
}

int tp_apply_test(tp_render *R, int id, const tvalue *v, const tp_args *a, int *r) {
    const tvalue *x = a->n > 0 ? &a->v[0] : NULL;
    int needs_arg = id >= TS_SAMEAS && id <= TS_IN;
    if (id == TS_DIVISIBLEBY || id == TS_LESSTHAN || id == TS_GREATERTHAN) needs_arg = 1;
    if (needs_arg && !x) return tp_fail(R, "the test '%s' needs an argument", test_names[id]);
    int c;
    switch (id) {
    case TS_DEFINED: *r = v->kind != TV_UNDEF; return 0;
    case TS_UNDEFINED: *r = v->kind == TV_UNDEF; return 0;
    case TS_NONE: *r = v->kind == TV_NONE; return 0;
    case TS_BOOLEAN: *r = v->kind == TV_BOOL; return 0;
    case TS_TRUE: *r = v->kind == TV_BOOL && v->u.b; return 0;
    case TS_FALSE: *r = v->kind == TV_BOOL && !v->u.b; return 0;
    case TS_INTEGER: *r = v->kind == TV_INT; return 0;
    case TS_FLOAT: *r = v->kind == TV_FLOAT; return 0;
    case TS_NUMBER: *r = is_num(v); return 0;
    case TS_STRING: *r = v->kind == TV_STR; return 0;
    case TS_MAPPING: *r = v->kind == TV_DICT; return 0;
    case TS_ITERABLE: *r = v->kind == TV_STR || v->kind == TV_LIST || v->kind == TV_DICT || v->kind == TV_UNDEF; return 0;
    case TS_SEQUENCE: *r = v->kind == TV_STR || v->kind == TV_LIST || v->kind == TV_DICT; return 0;
    case TS_CALLABLE: *r = v->kind == TV_FUNC || v->kind == TV_METHOD; return 0;
    case TS_SAMEAS:
        *r = v->kind == x->kind && (v->kind == TV_NONE || v->kind == TV_UNDEF ||
                                    (v->kind == TV_BOOL && v->u.b == x->u.b) || tv_equal(v, x));
        if (v->kind == TV_LIST || v->kind == TV_DICT) *r = v->kind == x->kind && v->u.l == x->u.l;
        return 0;
    case TS_EQ: case TS_EQUALTO: case TS_EQ2: *r = tv_equal(v, x); return 0;
    case TS_NE: case TS_NE2: *r = !tv_equal(v, x); return 0;
    case TS_LT: case TS_LT2: case TS_LESSTHAN: TRY(tv_compare(R, v, x, &c)); *r = c < 0; return 0;
    case TS_LE: case TS_LE2: TRY(tv_compare(R, v, x, &c)); *r = c <= 0; return 0;
    case TS_GT: case TS_GT2: case TS_GREATERTHAN: TRY(tv_compare(R, v, x, &c)); *r = c > 0; return 0;
    case TS_GE: case TS_GE2: TRY(tv_compare(R, v, x, &c)); *r = c >= 0; return 0;
    case TS_IN: return tv_contains(R, x, v, r);
    case TS_ODD: case TS_EVEN: case TS_DIVISIBLEBY: {
        if (!is_int(v)) return tp_fail(R, "the test '%s' wants an integer, got %s", test_names[id], tv_type_name(v));
        int64_t m = id == TS_DIVISIBLEBY ? (x && is_int(x) ? as_int(x) : 0) : 2;
        if (m == 0) return tp_fail(R, "divisibleby: wants a non-zero integer");
        int64_t rem = as_int(v) % m;
        *r = id == TS_ODD ? rem != 0 : rem == 0;
        return 0;
    }
    case TS_LOWER: case TS_UPPER: {
        if (v->kind != TV_STR) { *r = 0; return 0; }
        tvalue m;
        TRY(map_case(R, v, id == TS_LOWER ? 'l' : 'u', &m));
        *r = tv_equal(&m, v);
        return 0;
    }
    }
    return tp_fail(R, "test '%s' is not implemented", test_names[id]);
}

/* ------------------------------------------------------------------------ */
/* globals and calls                                                         */

int tp_global(const char *name, tvalue *out) {
    static const char *const names[] = {"raise_exception", "namespace", "range", "dict", "strftime_now", NULL};
    int i = name_index(names, name);
    if (i < 0) return 0;
    out->kind = TV_FUNC;
    out->u.fn.id = F_RAISE + i;
    out->u.fn.self = NULL;
    return 1;
}

static int make_dict_from_args(tp_render *R, const tp_args *a, tvalue *out) {
    TRY(tv_dict_new(R, out));
    if (a->n > 1) return tp_fail(R, "namespace()/dict() take at most one positional argument");
    if (a->n == 1) {
        if (a->v[0].kind != TV_DICT && a->v[0].kind != TV_NS)
            return tp_fail(R, "namespace()/dict() want a mapping, got %s", tv_type_name(&a->v[0]));
        for (int64_t i = 0; i < a->v[0].u.d->n; i++) TRY(tv_dict_set(R, out->u.d, a->v[0].u.d->k[i], a->v[0].u.d->v[i]));
    }
    for (int i = 0; i < a->nk; i++) {
        tvalue k;
        TRY(tv_str_copy(R, a->kname[i], (int64_t)strlen(a->kname[i]), &k));
        TRY(tv_dict_set(R, out->u.d, k, a->kv[i]));
    }
    return 0;
}

int tp_call(tp_render *R, const tvalue *fn, const tp_args *a, tvalue *out) {
    if (fn->kind == TV_UNDEF) return undefined_error(R, fn);
    if (fn->kind == TV_METHOD) return call_method(R, fn->u.fn.id, fn->u.fn.self, a, out);
    if (fn->kind != TV_FUNC) return tp_fail(R, "'%s' object is not callable", tv_type_name(fn));
    switch (fn->u.fn.id) {
    case F_RAISE: {
        tvalue msg = a->n ? a->v[0] : tv_str("", 0);
        tp_buf b = {0};
        if (tv_print(R, &b, &msg)) { free(b.p); return -1; }
        int rc = tp_fail(R, "the template raised an exception: %s", b.p ? b.p : "");
        free(b.p);
        return rc;
    }
    case F_NAMESPACE:
        TRY(make_dict_from_args(R, a, out));
        out->kind = TV_NS;
        return 0;
    case F_DICT: return make_dict_from_args(R, a, out);
    case F_RANGE: {
        TRY(no_kwargs(R, "range", a));
        TRY(arg_count(R, "range", a, 1, 3));
        for (int i = 0; i < a->n; i++)
            if (!is_int(&a->v[i])) return tp_fail(R, "range: wants integers, got %s", tv_type_name(&a->v[i]));
        int64_t start = a->n > 1 ? as_int(&a->v[0]) : 0, stop = a->n > 1 ? as_int(&a->v[1]) : as_int(&a->v[0]);
        int64_t step = a->n > 2 ? as_int(&a->v[2]) : 1;
        if (step == 0) return tp_fail(R, "range: step must not be zero");
        int64_t n = step > 0 ? (stop > start ? (stop - start + step - 1) / step : 0)
                             : (start > stop ? (start - stop - step - 1) / -step : 0);
        if (n > 1000000) return tp_fail(R, "range: %lld items is more than the 1000000 allowed", (long long)n);
        TRY(tv_list_new(R, n, out));
        for (int64_t i = 0; i < n; i++) out->u.l->v[i] = tv_int(start + i * step);
        return 0;
    }
    case F_STRFTIME: {
        TRY(arg_count(R, "strftime_now", a, 1, 1));
        TRY(want_str(R, "strftime_now", &a->v[0]));
        char fmt[128], buf[256];
        int64_t n = a->v[0].u.s.n < 127 ? a->v[0].u.s.n : 127;
        memcpy(fmt, a->v[0].u.s.p, (size_t)n);
        fmt[n] = 0;
        time_t now = time(NULL);
        struct tm tm;
        localtime_r(&now, &tm);
        size_t len = strftime(buf, sizeof buf, fmt, &tm);
        return tv_str_copy(R, buf, (int64_t)len, out);
    }
    }
    return tp_fail(R, "unknown function");
}
