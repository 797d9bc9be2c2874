/* template_internal.h - what template.c (lexer, parser, renderer) and
 * template_lib.c (values: printing, JSON, comparison; filters, tests,
 * methods, globals) share. Not public. */
#ifndef FSDP_TEMPLATE_INTERNAL_H
#define FSDP_TEMPLATE_INTERNAL_H

#include <stddef.h>
#include <stdint.h>
#include "internal.h"

/* ---- arena: every value of one render lives here, freed in one go ---- */
typedef struct tp_block { struct tp_block *next; size_t used, cap; char data[]; } tp_block;
typedef struct tp_arena { tp_block *head; size_t total, limit; /* bytes; limit 0: none */ } tp_arena;

void *tp_alloc(tp_arena *a, size_t n); /* zeroed; NULL when out of memory or past the limit */
void tp_arena_free(tp_arena *a);

/* ---- growable byte buffer (malloc) ---- */
typedef struct tp_buf { char *p; int64_t n, cap; } tp_buf;
int tp_buf_put(tp_buf *b, const char *s, int64_t n); /* 0, or -1 out of memory */
int tp_buf_putc(tp_buf *b, char c);
int tp_buf_printf(tp_buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* the code point at s[*i], advancing *i (invalid bytes read as themselves) */
uint32_t tp_utf8_next(const char *s, int64_t n, int64_t *i);
/* Python's str.isspace() for one code point (also what \s matches) */
int tp_is_space(uint32_t c);

/* ---- values (Python's, as Jinja sees them) ---- */
enum {
    TV_UNDEF,  /* a name or key that does not exist: prints '', false, empty */
    TV_NONE, TV_BOOL, TV_INT, TV_FLOAT, TV_STR,
    TV_LIST,   /* list, or tuple when l->tuple */
    TV_DICT,   /* insertion-ordered */
    TV_NS,     /* namespace(): a dict whose attributes can be set */
    TV_LOOP,   /* the loop variable of a for */
    TV_FUNC,   /* a global function (raise_exception, namespace, range, ...) */
    TV_METHOD  /* a method bound to a value ('x'.strip, d.items, loop.cycle) */
};

typedef struct tv_list tv_list;
typedef struct tv_dict tv_dict;
typedef struct tv_loop tv_loop;
typedef struct tvalue tvalue;

struct tvalue {
    int kind;
    union {
        int b;
        int64_t i;
        double f;
        struct { const char *p; int64_t n; } s;
        tv_list *l;
        tv_dict *d;    /* TV_DICT and TV_NS */
        tv_loop *loop;
        struct { int id; const tvalue *self; } fn; /* TV_FUNC (self NULL), TV_METHOD */
        const char *undef;                         /* why it is undefined, for errors */
    } u;
};

struct tv_list { int64_t n; int tuple; tvalue *v; };
struct tv_dict { int64_t n, cap; tvalue *k, *v; };
struct tv_loop { int64_t index0, length; tvalue items; };

/* ---- the renderer state the library needs ---- */
typedef struct tp_render {
    tp_arena arena;
    int line, col;      /* position of the node being evaluated, for errors */
    int failed;
} tp_render;

/* records "chat template line L col C: ..." for fsdp_last_error(); returns -1 */
int tp_fail(tp_render *R, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* constructors */
tvalue tv_undef(const char *why);
tvalue tv_none(void);
tvalue tv_bool(int b);
tvalue tv_int(int64_t i);
tvalue tv_float(double f);
tvalue tv_str(const char *p, int64_t n);        /* does not copy */
int tv_str_copy(tp_render *R, const char *p, int64_t n, tvalue *out);
int tv_list_new(tp_render *R, int64_t n, tvalue *out); /* n undefined items */
int tv_dict_new(tp_render *R, tvalue *out);
int tv_dict_set(tp_render *R, tv_dict *d, tvalue key, tvalue val);
/* 1 found (*val set), 0 not */
int tv_dict_get(const tv_dict *d, tvalue key, tvalue *val);
int tv_dict_get_str(const tv_dict *d, const char *key, tvalue *val);

const char *tv_type_name(const tvalue *v); /* Python's: 'str', 'dict', 'NoneType', ... */
int tv_truthy(const tvalue *v);
/* str(v) and repr(v) appended to b; -1 with an error when v cannot be printed */
int tv_print(tp_render *R, tp_buf *b, const tvalue *v);
int tv_repr(tp_render *R, tp_buf *b, const tvalue *v);
/* str(v) as a value */
int tv_to_str(tp_render *R, const tvalue *v, tvalue *out);
/* ==, and Python ordering (-1/0/1 in *cmp; an error for unorderable types) */
int tv_equal(const tvalue *a, const tvalue *b);
int tv_compare(tp_render *R, const tvalue *a, const tvalue *b, int *cmp);
/* the items iteration gives (list items, dict keys, string characters) */
int tv_iterate(tp_render *R, const tvalue *v, tvalue *out_list);
/* Python arithmetic: op one of + - * / // % ** ; unary: 'n' negate, 'p' plus */
int tv_binary(tp_render *R, int op, const tvalue *a, const tvalue *b, tvalue *out);
int tv_unary(tp_render *R, int op, const tvalue *a, tvalue *out);
/* `a in b` */
int tv_contains(tp_render *R, const tvalue *container, const tvalue *item, int *result);
/* a.name (attribute first, then item) and a[key] (item first, then attribute) */
int tv_getattr(tp_render *R, const tvalue *obj, const char *name, tvalue *out);
int tv_getitem(tp_render *R, const tvalue *obj, const tvalue *key, tvalue *out);
int tv_slice(tp_render *R, const tvalue *obj, const tvalue *start, const tvalue *stop, const tvalue *step,
             tvalue *out);

/* ---- calls: arguments ---- */
typedef struct tp_args {
    int n;              /* positional */
    const tvalue *v;
    int nk;             /* keyword */
    const char *const *kname;
    const tvalue *kv;
} tp_args;

/* filters and tests by name: an id >= 0, or -1 when unknown */
int tp_filter_id(const char *name);
int tp_test_id(const char *name);
const char *tp_filter_names(void); /* for error messages */
const char *tp_test_names(void);
int tp_apply_filter(tp_render *R, int id, const tvalue *v, const tp_args *a, tvalue *out);
int tp_apply_test(tp_render *R, int id, const tvalue *v, const tp_args *a, int *result);
/* global names: raise_exception, namespace, range, dict, strftime_now;
 * 1 when name is one (*out set) */
int tp_global(const char *name, tvalue *out);
/* calls a TV_FUNC or TV_METHOD */
int tp_call(tp_render *R, const tvalue *fn, const tp_args *a, tvalue *out);

/* JSON text (jansson) -> value; a JSON object's keys keep their order */
int tv_from_json(tp_render *R, const char *text, int64_t len, tvalue *out);

#endif
