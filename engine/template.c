/* template.c - chat templates: the part of Jinja2 that Hugging Face chat
 * templates use, compiled once and rendered per conversation.
 *
 * The environment is transformers' (apply_chat_template):
 * trim_blocks and lstrip_blocks on, the loop controls {% break %} and
 * {% continue %}, the {% generation %} tag (its output ranges are returned
 * so that assistant tokens can be masked as return_assistant_tokens_mask
 * does), the globals raise_exception, namespace, dict, range and
 * strftime_now, and tojson as json.dumps. Jinja's lexer rules are followed:
 * newlines normalised to \n and one trailing newline dropped, `{%-`/`-%}`
 * strip all whitespace, `{%+`/`+%}` keep it, a block tag alone on its line
 * takes its indentation and its newline with it.
 *
 * Statements: if / elif / else, for (with else, a filter `if`, tuple
 * targets, `loop.*`), set (names, tuples, namespace attributes, set
 * blocks), break, continue, generation, raw, comments. Expressions: the
 * full Jinja operator grammar (or and not, comparisons and `in` / `not in`,
 * + - * / // % ** ~, unary - +), literals (strings, numbers, lists, tuples,
 * dicts), attribute / item / slice access, calls with keyword arguments,
 * filters and tests (template_lib.c lists them), conditional expressions.
 * Anything else (macro, call, filter blocks, include, extends, ...) is
 * refused when the template is compiled, naming the construct, its line
 * and column.
 *
 * A for loop's body is a scope of its own, fresh at every iteration (a
 * `set` inside it is gone after it; namespace() objects carry values out),
 * as in Jinja. Variables come in as one JSON object (messages,
 * add_generation_prompt, bos_token, ... and any other keyword argument). */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "template_internal.h"

#define TRY(x) do { if ((x) != 0) return -1; } while (0)

/* limits that turn a runaway template into an error instead of a hang */
enum { MAX_DEPTH = 150, MAX_STEPS = 20000000 };
static const int64_t MAX_OUTPUT = (int64_t)256 << 20;
static const size_t MAX_MEMORY = (size_t)1 << 30;

/* ------------------------------------------------------------------------ */
/* tokens                                                                    */

enum { T_DATA, T_VAR_BEGIN, T_VAR_END, T_BLOCK_BEGIN, T_BLOCK_END, T_NAME, T_STRING, T_INT, T_FLOAT, T_OP, T_EOF };

typedef struct tok {
    int type;
    int line, col;
    const char *p; /* T_DATA, T_STRING: the text (decoded); T_NAME, T_OP: source */
    int64_t n;
    int64_t i;
    double f;
} tok;

typedef struct lexer {
    const char *src;
    int64_t n;
    tp_arena *arena;
    tok *toks;
    int ntok, cap;
    int64_t *lines; /* offset of every line start */
    int nlines;
} lexer;

static void where(const lexer *L, int64_t off, int *line, int *col) {
    int lo = 0, hi = L->nlines - 1;
    while (lo < hi) {
        int mid = (lo + hi + 1) / 2;
        if (L->lines[mid] <= off) lo = mid;
        else hi = mid - 1;
    }
    *line = lo + 1;
    *col = (int)(off - L->lines[lo]) + 1;
}

static int lex_fail(const lexer *L, int64_t off, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static int lex_fail(const lexer *L, int64_t off, const char *fmt, ...) {
    char msg[600];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    int line, col;
    where(L, off, &line, &col);
    return fsdp_error(FSDP_ERR_INVALID, "chat template line %d col %d: %s", line, col, msg);
}

static int push(lexer *L, int type, int64_t off, const char *p, int64_t n) {
    if (L->ntok == L->cap) {
        int cap = L->cap ? L->cap * 2 : 256;
        tok *t = realloc(L->toks, (size_t)cap * sizeof *t);
        if (!t) return fsdp_error(FSDP_ERR_OOM, "chat template: out of memory");
        L->toks = t;
        L->cap = cap;
    }
    tok *t = &L->toks[L->ntok++];
    memset(t, 0, sizeof *t);
    t->type = type;
    t->p = p;
    t->n = n;
    where(L, off, &t->line, &t->col);
    return 0;
}

/* byte length of the whitespace code point at off, 0 when none */
static int space_at(const lexer *L, int64_t off) {
    if (off >= L->n) return 0;
    int64_t i = off;
    uint32_t c = tp_utf8_next(L->src, L->n, &i);
    return tp_is_space(c) ? (int)(i - off) : 0;
}

static int64_t skip_space(const lexer *L, int64_t off) {
    int k;
    while ((k = space_at(L, off)) > 0) off += k;
    return off;
}

/* end of [a, b) with trailing whitespace removed */
static int64_t rstrip(const lexer *L, int64_t a, int64_t b) {
    int64_t end = a, i = a;
    while (i < b) {
        int k = space_at(L, i);
        if (k) i += k;
        else { tp_utf8_next(L->src, b, &i); end = i; }
    }
    return end;
}

static int starts(const lexer *L, int64_t off, const char *s) {
    size_t n = strlen(s);
    return off + (int64_t)n <= L->n && memcmp(L->src + off, s, n) == 0;
}

/* the data before a tag, with the tag's whitespace control applied */
static int emit_data(lexer *L, int64_t a, int64_t b, char sign, int lstrip_applies, int line_starting) {
    if (sign == '-') b = rstrip(L, a, b);
    else if (sign != '+' && lstrip_applies) {
        int64_t l = a;
        for (int64_t i = b - 1; i >= a; i--)
            if (L->src[i] == '\n') { l = i + 1; break; }
        if ((l > a || line_starting) && l < b && skip_space(L, l) >= b) b = l;
    }
    if (b > a) return push(L, T_DATA, a, L->src + a, b - a);
    return 0;
}

/* Python's unicode-escape of a string literal's body */
static int decode_string(lexer *L, int64_t off, const char *p, int64_t n, const char **out, int64_t *out_n) {
    tp_buf b = {0};
    for (int64_t i = 0; i < n; i++) {
        char c = p[i];
        if (c != '\\' || i + 1 >= n) { if (tp_buf_putc(&b, c)) goto oom; continue; }
        char e = p[++i];
        uint32_t cp = 0;
        int hex = 0;
        switch (e) {
        case '\n': break;
        case '\\': if (tp_buf_putc(&b, '\\')) goto oom; break;
        case '\'': if (tp_buf_putc(&b, '\'')) goto oom; break;
        case '"': if (tp_buf_putc(&b, '"')) goto oom; break;
        case 'a': if (tp_buf_putc(&b, 7)) goto oom; break;
        case 'b': if (tp_buf_putc(&b, 8)) goto oom; break;
        case 'f': if (tp_buf_putc(&b, 12)) goto oom; break;
        case 'n': if (tp_buf_putc(&b, '\n')) goto oom; break;
        case 'r': if (tp_buf_putc(&b, '\r')) goto oom; break;
        case 't': if (tp_buf_putc(&b, '\t')) goto oom; break;
        case 'v': if (tp_buf_putc(&b, 11)) goto oom; break;
        case 'x': hex = 2; break;
        case 'u': hex = 4; break;
        case 'U': hex = 8; break;
        case 'N':
            free(b.p);
            return lex_fail(L, off, "\\N{...} escapes in string literals are not supported");
        default:
            if (e >= '0' && e <= '7') {
                int k = 0;
                while (k < 3 && i < n && p[i] >= '0' && p[i] <= '7') { cp = cp * 8 + (uint32_t)(p[i] - '0'); i++; k++; }
                i--;
                hex = -1;
            } else if (tp_buf_putc(&b, '\\') || tp_buf_putc(&b, e)) goto oom;
        }
        if (hex > 0) {
            for (int k = 0; k < hex; k++) {
                char h = i + 1 < n ? p[i + 1] : 0;
                int d = h >= '0' && h <= '9' ? h - '0' : h >= 'a' && h <= 'f' ? h - 'a' + 10 : h >= 'A' && h <= 'F' ? h - 'A' + 10 : -1;
                if (d < 0) {
                    free(b.p);
                    return lex_fail(L, off, "truncated \\%c escape in a string literal", e);
                }
                cp = cp * 16 + (uint32_t)d;
                i++;
            }
        }
        if (hex) {
            if (cp > 0x10ffff) { free(b.p); return lex_fail(L, off, "escape out of the Unicode range in a string literal"); }
            char t[4];
            int m;
            if (cp < 0x80) { t[0] = (char)cp; m = 1; }
            else if (cp < 0x800) { t[0] = (char)(0xc0 | cp >> 6); t[1] = (char)(0x80 | (cp & 63)); m = 2; }
            else if (cp < 0x10000) { t[0] = (char)(0xe0 | cp >> 12); t[1] = (char)(0x80 | (cp >> 6 & 63)); t[2] = (char)(0x80 | (cp & 63)); m = 3; }
            else { t[0] = (char)(0xf0 | cp >> 18); t[1] = (char)(0x80 | (cp >> 12 & 63)); t[2] = (char)(0x80 | (cp >> 6 & 63)); t[3] = (char)(0x80 | (cp & 63)); m = 4; }
            if (tp_buf_put(&b, t, m)) goto oom;
        }
    }
    {
        char *s = tp_alloc(L->arena, (size_t)b.n + 1);
        if (!s) goto oom;
        if (b.n) memcpy(s, b.p, (size_t)b.n);
        *out = s;
        *out_n = b.n;
        free(b.p);
        return 0;
    }
oom:
    free(b.p);
    return fsdp_error(FSDP_ERR_OOM, "chat template: out of memory");
}

static const char *const OPS[] = {"//", "**", "==", "!=", ">=", "<=", "+", "-", "/", "*", "%", "~", "[", "]",
                                  "(", ")", "{", "}", ">", "<", "=", ".", ":", "|", ",", ";", NULL};

static int is_digit(char c) { return c >= '0' && c <= '9'; }
static int is_name_start(char c) { return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_'; }
static int is_name_char(char c) { return is_name_start(c) || is_digit(c); }

/* digits with single underscores between them; returns the end */
static int64_t scan_digits(const lexer *L, int64_t i) {
    while (i < L->n && (is_digit(L->src[i]) || (L->src[i] == '_' && i + 1 < L->n && is_digit(L->src[i + 1]) && i > 0 &&
                                                 is_digit(L->src[i - 1]))))
        i++;
    return i;
}

/* the tokens inside {{ }} or {% %}; *pos is after the opener */
static int lex_tag(lexer *L, int64_t *pos, char kind, int64_t open_off, int *line_starting) {
    char stack[64];
    int depth = 0;
    int64_t i = *pos;
    while (1) {
        if (i >= L->n)
            return lex_fail(L, open_off, "this %s is never closed (expected '%s')", kind == '%' ? "{% tag" : "{{ expression",
                            kind == '%' ? "%}" : "}}");
        if (depth == 0) {
            int64_t end = -1;
            if (kind == '%') {
                if (starts(L, i, "+%}")) end = i + 3;
                else if (starts(L, i, "-%}")) end = skip_space(L, i + 3);
                else if (starts(L, i, "%}")) { end = i + 2; if (end < L->n && L->src[end] == '\n') end++; }
            } else {
                if (starts(L, i, "-}}")) end = skip_space(L, i + 3);
                else if (starts(L, i, "}}")) end = i + 2;
            }
            if (end >= 0) {
                TRY(push(L, kind == '%' ? T_BLOCK_END : T_VAR_END, i, NULL, 0));
                *line_starting = L->src[end - 1] == '\n';
                *pos = end;
                return 0;
            }
        }
        int k = space_at(L, i);
        if (k) { i += k; continue; }
        char c = L->src[i];
        if (is_digit(c)) {
            int64_t j = scan_digits(L, i), st = i;
            int is_float = 0;
            if (!(i > 0 && L->src[i - 1] == '.')) {
                if (j + 1 < L->n && L->src[j] == '.' && is_digit(L->src[j + 1])) { j = scan_digits(L, j + 1); is_float = 1; }
                if (j < L->n && (L->src[j] == 'e' || L->src[j] == 'E')) {
                    int64_t e = j + 1;
                    if (e < L->n && (L->src[e] == '+' || L->src[e] == '-')) e++;
                    if (e < L->n && is_digit(L->src[e])) { j = scan_digits(L, e); is_float = 1; }
                }
            }
            char buf[80];
            int64_t m = 0;
            for (int64_t q = st; q < j && m < 79; q++)
                if (L->src[q] != '_') buf[m++] = L->src[q];
            buf[m] = 0;
            TRY(push(L, is_float ? T_FLOAT : T_INT, st, L->src + st, j - st));
            if (is_float) L->toks[L->ntok - 1].f = strtod(buf, NULL);
            else {
                char *endp;
                long long v = strtoll(buf, &endp, 10);
                if (m > 18 && (v == 0 || v == -1 || v > 999999999999999999LL))
                    return lex_fail(L, st, "the integer %s does not fit 64 bits", buf);
                L->toks[L->ntok - 1].i = v;
            }
            i = j;
            continue;
        }
        if (is_name_start(c)) {
            int64_t j = i + 1;
            while (j < L->n && is_name_char(L->src[j])) j++;
            TRY(push(L, T_NAME, i, L->src + i, j - i));
            i = j;
            continue;
        }
        if (c == '\'' || c == '"') {
            int64_t j = i + 1;
            while (j < L->n && L->src[j] != c) j += L->src[j] == '\\' ? 2 : 1;
            if (j >= L->n) return lex_fail(L, i, "a string literal is never closed");
            const char *s = NULL;
            int64_t sn = 0;
            TRY(decode_string(L, i, L->src + i + 1, j - i - 1, &s, &sn));
            TRY(push(L, T_STRING, i, s, sn));
            i = j + 1;
            continue;
        }
        int op = -1;
        for (int q = 0; OPS[q]; q++)
            if (starts(L, i, OPS[q])) { op = q; break; }
        if (op < 0) return lex_fail(L, i, "unexpected character '%c' in a tag", c);
        const char *o = OPS[op];
        if (o[0] == '(' || o[0] == '[' || o[0] == '{') {
            if (depth == (int)sizeof stack) return lex_fail(L, i, "brackets nested too deeply");
            stack[depth++] = o[0] == '(' ? ')' : o[0] == '[' ? ']' : '}';
        } else if (o[1] == 0 && (o[0] == ')' || o[0] == ']' || o[0] == '}')) {
            if (depth == 0) return lex_fail(L, i, "unexpected '%c'", o[0]);
            if (stack[depth - 1] != o[0]) return lex_fail(L, i, "unexpected '%c', expected '%c'", o[0], stack[depth - 1]);
            depth--;
        }
        TRY(push(L, T_OP, i, L->src + i, (int64_t)strlen(o)));
        i += (int64_t)strlen(o);
    }
}

static int lex(lexer *L) {
    int64_t pos = 0;
    int line_starting = 1;
    while (pos < L->n) {
        int64_t q = pos;
        while (q + 1 < L->n && !(L->src[q] == '{' && (L->src[q + 1] == '{' || L->src[q + 1] == '%' || L->src[q + 1] == '#')))
            q++;
        if (q + 1 >= L->n) { TRY(push(L, T_DATA, pos, L->src + pos, L->n - pos)); break; }
        char kind = L->src[q + 1];
        char sign = q + 2 < L->n && (L->src[q + 2] == '-' || L->src[q + 2] == '+') ? L->src[q + 2] : 0;
        int64_t after = q + 2 + (sign ? 1 : 0);
        /* {% raw %} ... {% endraw %} */
        if (kind == '%') {
            int64_t r = skip_space(L, after);
            if (starts(L, r, "raw") && !(r + 3 < L->n && is_name_char(L->src[r + 3]))) {
                int64_t e = skip_space(L, r + 3), body;
                if (starts(L, e, "-%}")) body = skip_space(L, e + 3);
                else if (starts(L, e, "%}")) body = e + 2;
                else return lex_fail(L, q, "expected '%%}' after 'raw'");
                TRY(emit_data(L, pos, q, sign, 1, line_starting));
                line_starting = L->src[body - 1] == '\n';
                /* find {% endraw %} */
                int64_t s = body;
                while (1) {
                    while (s + 1 < L->n && !(L->src[s] == '{' && L->src[s + 1] == '%')) s++;
                    if (s + 1 >= L->n) return lex_fail(L, q, "this {%% raw %%} is never closed (expected {%% endraw %%})");
                    char esign = s + 2 < L->n && (L->src[s + 2] == '-' || L->src[s + 2] == '+') ? L->src[s + 2] : 0;
                    int64_t w = skip_space(L, s + 2 + (esign ? 1 : 0)), end = -1;
                    if (starts(L, w, "endraw")) {
                        int64_t x = skip_space(L, w + 6);
                        if (starts(L, x, "+%}")) end = x + 3;
                        else if (starts(L, x, "-%}")) end = skip_space(L, x + 3);
                        else if (starts(L, x, "%}")) { end = x + 2; if (end < L->n && L->src[end] == '\n') end++; }
                    }
                    if (end >= 0) {
                        TRY(emit_data(L, body, s, esign, 1, line_starting));
                        line_starting = L->src[end - 1] == '\n';
                        pos = end;
                        break;
                    }
                    s += 2;
                }
                continue;
            }
        }
        TRY(emit_data(L, pos, q, sign, kind != '{', line_starting));
        line_starting = 0;
        if (kind == '#') {
            int64_t e = after;
            while (e + 1 < L->n && !(L->src[e] == '#' && L->src[e + 1] == '}')) e++;
            if (e + 1 >= L->n) return lex_fail(L, q, "this {# comment is never closed (expected '#}')");
            char esign = e > after && (L->src[e - 1] == '-' || L->src[e - 1] == '+') ? L->src[e - 1] : 0;
            int64_t end = e + 2;
            if (esign == '-') end = skip_space(L, end);
            else if (esign != '+' && end < L->n && L->src[end] == '\n') end++;
            line_starting = L->src[end - 1] == '\n';
            pos = end;
            continue;
        }
        TRY(push(L, kind == '%' ? T_BLOCK_BEGIN : T_VAR_BEGIN, q, NULL, 0));
        pos = after;
        TRY(lex_tag(L, &pos, kind, q, &line_starting));
    }
    return push(L, T_EOF, L->n, NULL, 0);
}

/* ------------------------------------------------------------------------ */
/* syntax tree                                                               */

enum {
    N_TEXT, N_OUTPUT, N_IF, N_FOR, N_SET, N_SETBLOCK, N_BREAK, N_CONTINUE, N_GENERATION,
    E_CONST, E_NAME, E_GETATTR, E_GETITEM, E_SLICE, E_CALL, E_FILTER, E_TEST, E_NEG, E_POS, E_NOT,
    E_AND, E_OR, E_BINOP, E_CONCAT, E_COMPARE, E_COND, E_LIST, E_TUPLE, E_DICT
};

typedef struct node node;
struct node {
    int type, line, col;
    int op;                    /* E_BINOP operator, E_TEST negated */
    int id;                    /* filter / test id */
    const char *name;          /* E_NAME, E_GETATTR, filter / test, namespace attribute */
    tvalue lit;                /* E_CONST, N_TEXT */
    node *a, *b, *c, *d;
    node **args;               /* positional arguments, items, operands */
    int nargs;
    const char **knames;       /* keyword arguments */
    node **kargs;
    int nk;
    int *ops;                  /* E_COMPARE */
    const char **names;        /* N_FOR / N_SET targets */
    int nnames;
    node **body, **orelse;
    int nbody, norelse;
};

typedef struct parser {
    tok *t;
    int i, ntok;
    tp_arena *arena;
    int depth, loops;
    int has_generation;
} parser;

static tok *cur(parser *P) { return &P->t[P->i]; }
static tok *peek(parser *P, int k) { return &P->t[P->i + k < P->ntok ? P->i + k : P->ntok - 1]; }

static int tok_is(const tok *t, int type, const char *text) {
    if (t->type != type) return 0;
    if (!text) return 1;
    size_t n = strlen(text);
    return t->n == (int64_t)n && memcmp(t->p, text, n) == 0;
}
static int is_op(parser *P, const char *op) { return tok_is(cur(P), T_OP, op); }
static int is_name(parser *P, const char *name) { return tok_is(cur(P), T_NAME, name); }

static const char *describe(const tok *t, char *buf, size_t n) {
    switch (t->type) {
    case T_EOF: return "end of template";
    case T_VAR_END: return "end of print statement ('}}')";
    case T_BLOCK_END: return "end of statement block ('%}')";
    case T_VAR_BEGIN: return "'{{'";
    case T_BLOCK_BEGIN: return "'{%'";
    case T_DATA: return "template text";
    case T_STRING: return "a string";
    default:
        snprintf(buf, n, "'%.*s'", (int)(t->n < 40 ? t->n : 40), t->p);
        return buf;
    }
}

static void *pfail(parser *P, const tok *t, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void *pfail(parser *P, const tok *t, const char *fmt, ...) {
    char msg[600];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    fsdp_error(FSDP_ERR_INVALID, "chat template line %d col %d: %s", t->line, t->col, msg);
    return NULL;
}

static node *mk(parser *P, int type, const tok *at) {
    node *n = tp_alloc(P->arena, sizeof *n);
    if (!n) { fsdp_error(FSDP_ERR_OOM, "chat template: out of memory"); return NULL; }
    n->type = type;
    n->line = at->line;
    n->col = at->col;
    return n;
}

static const char *intern(parser *P, const tok *t) {
    char *s = tp_alloc(P->arena, (size_t)t->n + 1);
    if (!s) return NULL;
    memcpy(s, t->p, (size_t)t->n);
    return s;
}

/* a growable array of pointers in the arena */
typedef struct pvec { void **v; int n, cap; } pvec;
static int pvec_push(parser *P, pvec *x, void *p) {
    if (x->n == x->cap) {
        int cap = x->cap ? x->cap * 2 : 8;
        void **v = tp_alloc(P->arena, (size_t)cap * sizeof *v);
        if (!v) return fsdp_error(FSDP_ERR_OOM, "chat template: out of memory");
        if (x->n) memcpy(v, x->v, (size_t)x->n * sizeof *v);
        x->v = v;
        x->cap = cap;
    }
    x->v[x->n++] = p;
    return 0;
}

static int expect_op(parser *P, const char *op) {
    if (is_op(P, op)) { P->i++; return 0; }
    char b[64];
    pfail(P, cur(P), "expected '%s', got %s", op, describe(cur(P), b, sizeof b));
    return -1;
}

static int expect_end(parser *P, const char *what) {
    if (cur(P)->type == T_BLOCK_END) { P->i++; return 0; }
    char b[64];
    pfail(P, cur(P), "expected the end of the '%s' tag ('%%}'), got %s", what, describe(cur(P), b, sizeof b));
    return -1;
}

static node *parse_expression(parser *P, int with_condexpr);
static node *parse_unary(parser *P, int with_filter);
static node *parse_primary(parser *P);
static node *parse_postfix(parser *P, node *n);
static node *parse_tuple(parser *P, int with_condexpr, const char *extra_end, int explicit_parens);

/* call arguments after '(' : positional, then name=value */
static int parse_call_args(parser *P, node *n) {
    pvec args = {0}, kn = {0}, kv = {0};
    if (expect_op(P, "(")) return -1;
    while (!is_op(P, ")")) {
        if (args.n || kn.n) { if (expect_op(P, ",")) return -1; if (is_op(P, ")")) break; }
        if (is_op(P, "*") || is_op(P, "**")) { pfail(P, cur(P), "*args and **kwargs in calls are not supported"); return -1; }
        if (cur(P)->type == T_NAME && tok_is(peek(P, 1), T_OP, "=")) {
            const char *k = intern(P, cur(P));
            P->i += 2;
            node *v = parse_expression(P, 1);
            if (!k || !v || pvec_push(P, &kn, (void *)k) || pvec_push(P, &kv, v)) return -1;
        } else {
            if (kn.n) { pfail(P, cur(P), "a positional argument follows a keyword argument"); return -1; }
            node *v = parse_expression(P, 1);
            if (!v || pvec_push(P, &args, v)) return -1;
        }
    }
    P->i++;
    n->args = (node **)args.v;
    n->nargs = args.n;
    n->knames = (const char **)kn.v;
    n->kargs = (node **)kv.v;
    n->nk = kn.n;
    return 0;
}

static node *parse_filter(parser *P, node *subject) {
    tok *pipe = cur(P);
    P->i++; /* | */
    if (cur(P)->type != T_NAME) { char b[64]; return pfail(P, cur(P), "expected a filter name after '|', got %s", describe(cur(P), b, sizeof b)); }
    tok *nt = cur(P);
    const char *name = intern(P, nt);
    if (!name) return NULL;
    P->i++;
    if (is_op(P, ".")) return pfail(P, nt, "dotted filter names are not supported");
    int id = tp_filter_id(name);
    if (id < 0) return pfail(P, nt, "unknown filter '%s' (supported: %s)", name, tp_filter_names());
    node *n = mk(P, E_FILTER, pipe);
    if (!n) return NULL;
    n->a = subject;
    n->name = name;
    n->id = id;
    if (is_op(P, "(") && parse_call_args(P, n)) return NULL;
    return n;
}

static node *parse_test(parser *P, node *subject) {
    tok *is = cur(P);
    P->i++; /* is */
    node *n = mk(P, E_TEST, is);
    if (!n) return NULL;
    n->a = subject;
    if (is_name(P, "not")) { n->op = 1; P->i++; }
    tok *nt = cur(P);
    const char *name = NULL;
    if (nt->type == T_NAME) name = intern(P, nt);
    if (!name) { char b[64]; return pfail(P, nt, "expected a test name after 'is', got %s", describe(nt, b, sizeof b)); }
    P->i++;
    int id = tp_test_id(name);
    if (id < 0) return pfail(P, nt, "unknown test '%s' (supported: %s)", name, tp_test_names());
    n->name = name;
    n->id = id;
    tok *c = cur(P);
    if (is_op(P, "(")) { if (parse_call_args(P, n)) return NULL; }
    else if ((c->type == T_NAME || c->type == T_STRING || c->type == T_INT || c->type == T_FLOAT || is_op(P, "[") ||
              is_op(P, "{")) &&
             !is_name(P, "else") && !is_name(P, "or") && !is_name(P, "and")) {
        if (is_name(P, "is")) return pfail(P, c, "tests cannot be chained with 'is'");
        node *x = parse_primary(P);
        if (!x) return NULL;
        x = parse_postfix(P, x);
        if (!x) return NULL;
        n->args = tp_alloc(P->arena, sizeof(node *));
        if (!n->args) return NULL;
        n->args[0] = x;
        n->nargs = 1;
    }
    return n;
}

static node *parse_subscript(parser *P, node *obj) {
    tok *t = cur(P);
    if (is_op(P, ".")) {
        P->i++;
        tok *a = cur(P);
        if (a->type == T_NAME) {
            node *n = mk(P, E_GETATTR, t);
            if (!n) return NULL;
            n->a = obj;
            n->name = intern(P, a);
            P->i++;
            return n;
        }
        if (a->type == T_INT) {
            node *n = mk(P, E_GETITEM, t), *k = mk(P, E_CONST, a);
            if (!n || !k) return NULL;
            k->lit = tv_int(a->i);
            n->a = obj;
            n->b = k;
            P->i++;
            return n;
        }
        char b[64];
        return pfail(P, a, "expected a name or a number after '.', got %s", describe(a, b, sizeof b));
    }
    P->i++; /* [ */
    node *parts[3] = {NULL, NULL, NULL};
    int is_slice = 0;
    if (!is_op(P, ":")) { parts[0] = parse_expression(P, 1); if (!parts[0]) return NULL; }
    if (is_op(P, ":")) {
        is_slice = 1;
        P->i++;
        if (!is_op(P, "]") && !is_op(P, ":")) { parts[1] = parse_expression(P, 1); if (!parts[1]) return NULL; }
        if (is_op(P, ":")) {
            P->i++;
            if (!is_op(P, "]")) { parts[2] = parse_expression(P, 1); if (!parts[2]) return NULL; }
        }
    }
    if (is_op(P, ",")) return pfail(P, cur(P), "tuple subscripts (a[x, y]) are not supported");
    if (expect_op(P, "]")) return NULL;
    node *n = mk(P, is_slice ? E_SLICE : E_GETITEM, t);
    if (!n) return NULL;
    n->a = obj;
    n->b = parts[0];
    n->c = parts[1];
    n->d = parts[2];
    return n;
}

static node *parse_postfix(parser *P, node *n) {
    while (n) {
        if (is_op(P, ".") || is_op(P, "[")) n = parse_subscript(P, n);
        else if (is_op(P, "(")) {
            node *call = mk(P, E_CALL, cur(P));
            if (!call) return NULL;
            call->a = n;
            if (parse_call_args(P, call)) return NULL;
            n = call;
        } else break;
    }
    return n;
}

static node *parse_filter_expr(parser *P, node *n) {
    while (n) {
        if (is_op(P, "|")) n = parse_filter(P, n);
        else if (is_name(P, "is")) n = parse_test(P, n);
        else if (is_op(P, "(")) {
            node *call = mk(P, E_CALL, cur(P));
            if (!call) return NULL;
            call->a = n;
            if (parse_call_args(P, call)) return NULL;
            n = call;
        } else break;
    }
    return n;
}

static node *parse_list_or_dict(parser *P, int dict) {
    tok *t = cur(P);
    P->i++;
    node *n = mk(P, dict ? E_DICT : E_LIST, t);
    if (!n) return NULL;
    pvec items = {0}, vals = {0};
    const char *close = dict ? "}" : "]";
    while (!is_op(P, close)) {
        if (items.n) { if (expect_op(P, ",")) return NULL; if (is_op(P, close)) break; }
        node *k = parse_expression(P, 1);
        if (!k || pvec_push(P, &items, k)) return NULL;
        if (dict) {
            if (expect_op(P, ":")) return NULL;
            node *v = parse_expression(P, 1);
            if (!v || pvec_push(P, &vals, v)) return NULL;
        }
    }
    P->i++;
    n->args = (node **)items.v;
    n->nargs = items.n;
    n->kargs = (node **)vals.v;
    return n;
}

static node *parse_primary(parser *P) {
    tok *t = cur(P);
    node *n;
    switch (t->type) {
    case T_NAME:
        if (tok_is(t, T_NAME, "true") || tok_is(t, T_NAME, "True") || tok_is(t, T_NAME, "false") ||
            tok_is(t, T_NAME, "False")) {
            n = mk(P, E_CONST, t);
            if (n) n->lit = tv_bool(t->p[0] == 't' || t->p[0] == 'T');
        } else if (tok_is(t, T_NAME, "none") || tok_is(t, T_NAME, "None")) {
            n = mk(P, E_CONST, t);
            if (n) n->lit = tv_none();
        } else {
            n = mk(P, E_NAME, t);
            if (n && !(n->name = intern(P, t))) return NULL;
        }
        P->i++;
        return n;
    case T_STRING: {
        /* adjacent strings concatenate */
        tp_buf b = {0};
        while (cur(P)->type == T_STRING) {
            if (tp_buf_put(&b, cur(P)->p, cur(P)->n)) { free(b.p); return NULL; }
            P->i++;
        }
        n = mk(P, E_CONST, t);
        char *s = tp_alloc(P->arena, (size_t)b.n + 1);
        if (!n || !s) { free(b.p); return NULL; }
        if (b.n) memcpy(s, b.p, (size_t)b.n);
        free(b.p);
        n->lit = tv_str(s, b.n);
        return n;
    }
    case T_INT: case T_FLOAT:
        n = mk(P, E_CONST, t);
        if (n) n->lit = t->type == T_INT ? tv_int(t->i) : tv_float(t->f);
        P->i++;
        return n;
    default: break;
    }
    if (is_op(P, "(")) {
        P->i++;
        n = parse_tuple(P, 1, NULL, 1);
        if (!n || expect_op(P, ")")) return NULL;
        return n;
    }
    if (is_op(P, "[")) return parse_list_or_dict(P, 0);
    if (is_op(P, "{")) return parse_list_or_dict(P, 1);
    char b[64];
    return pfail(P, t, "unexpected %s", describe(t, b, sizeof b));
}

static node *parse_unary(parser *P, int with_filter) {
    tok *t = cur(P);
    node *n;
    if (is_op(P, "-") || is_op(P, "+")) {
        P->i++;
        if (++P->depth > MAX_DEPTH) return pfail(P, t, "expression nested more than %d deep", MAX_DEPTH);
        n = mk(P, is_op(P, "-") ? E_NEG : E_POS, t);
        if (!n) return NULL;
        n->type = tok_is(t, T_OP, "-") ? E_NEG : E_POS;
        n->a = parse_unary(P, 0);
        if (!n->a) return NULL;
        P->depth--;
    } else n = parse_primary(P);
    n = parse_postfix(P, n);
    if (n && with_filter) n = parse_filter_expr(P, n);
    return n;
}

static node *binop(parser *P, int op, const tok *t, node *a, node *b) {
    if (!a || !b) return NULL;
    node *n = mk(P, E_BINOP, t);
    if (!n) return NULL;
    n->op = op;
    n->a = a;
    n->b = b;
    return n;
}

static node *parse_pow(parser *P) {
    node *left = parse_unary(P, 1);
    while (left && is_op(P, "**")) { tok *t = cur(P); P->i++; left = binop(P, 'p', t, left, parse_unary(P, 1)); }
    return left;
}

static node *parse_math2(parser *P) {
    node *left = parse_pow(P);
    while (left) {
        tok *t = cur(P);
        int op = is_op(P, "*") ? '*' : is_op(P, "/") ? '/' : is_op(P, "//") ? 'f' : is_op(P, "%") ? '%' : 0;
        if (!op) break;
        P->i++;
        left = binop(P, op, t, left, parse_pow(P));
    }
    return left;
}

static node *parse_concat(parser *P) {
    tok *t = cur(P);
    node *first = parse_math2(P);
    if (!first || !is_op(P, "~")) return first;
    pvec parts = {0};
    if (pvec_push(P, &parts, first)) return NULL;
    while (is_op(P, "~")) {
        P->i++;
        node *x = parse_math2(P);
        if (!x || pvec_push(P, &parts, x)) return NULL;
    }
    node *n = mk(P, E_CONCAT, t);
    if (!n) return NULL;
    n->args = (node **)parts.v;
    n->nargs = parts.n;
    return n;
}

static node *parse_math1(parser *P) {
    node *left = parse_concat(P);
    while (left && (is_op(P, "+") || is_op(P, "-"))) {
        tok *t = cur(P);
        int op = t->p[0];
        P->i++;
        left = binop(P, op, t, left, parse_concat(P));
    }
    return left;
}

static node *parse_compare(parser *P) {
    tok *t = cur(P);
    node *first = parse_math1(P);
    if (!first) return NULL;
    pvec operands = {0};
    int ops[64], nops = 0;
    while (1) {
        int op = is_op(P, "==") ? '=' : is_op(P, "!=") ? '!' : is_op(P, "<") ? '<' : is_op(P, "<=") ? 'l'
               : is_op(P, ">") ? '>' : is_op(P, ">=") ? 'g' : 0;
        if (op) P->i++;
        else if (is_name(P, "in")) { op = 'i'; P->i++; }
        else if (is_name(P, "not") && tok_is(peek(P, 1), T_NAME, "in")) { op = 'n'; P->i += 2; }
        else break;
        if (nops == 64) return pfail(P, cur(P), "too many chained comparisons");
        node *x = parse_math1(P);
        if (!x || pvec_push(P, &operands, x)) return NULL;
        ops[nops++] = op;
    }
    if (!nops) return first;
    node *n = mk(P, E_COMPARE, t);
    if (!n) return NULL;
    n->a = first;
    n->args = (node **)operands.v;
    n->nargs = nops;
    n->ops = tp_alloc(P->arena, (size_t)nops * sizeof(int));
    if (!n->ops) return NULL;
    memcpy(n->ops, ops, (size_t)nops * sizeof(int));
    return n;
}

static node *parse_not(parser *P) {
    if (is_name(P, "not")) {
        tok *t = cur(P);
        P->i++;
        if (++P->depth > MAX_DEPTH) return pfail(P, t, "expression nested more than %d deep", MAX_DEPTH);
        node *n = mk(P, E_NOT, t);
        if (!n || !(n->a = parse_not(P))) return NULL;
        P->depth--;
        return n;
    }
    return parse_compare(P);
}

static node *parse_and(parser *P) {
    node *left = parse_not(P);
    while (left && is_name(P, "and")) {
        tok *t = cur(P);
        P->i++;
        node *n = mk(P, E_AND, t);
        if (!n) return NULL;
        n->a = left;
        if (!(n->b = parse_not(P))) return NULL;
        left = n;
    }
    return left;
}

static node *parse_or(parser *P) {
    node *left = parse_and(P);
    while (left && is_name(P, "or")) {
        tok *t = cur(P);
        P->i++;
        node *n = mk(P, E_OR, t);
        if (!n) return NULL;
        n->a = left;
        if (!(n->b = parse_and(P))) return NULL;
        left = n;
    }
    return left;
}

static node *parse_expression(parser *P, int with_condexpr) {
    if (++P->depth > MAX_DEPTH) return pfail(P, cur(P), "expression nested more than %d deep", MAX_DEPTH);
    tok *t = cur(P);
    node *e = parse_or(P);
    while (e && with_condexpr && is_name(P, "if")) {
        P->i++;
        node *n = mk(P, E_COND, t);
        if (!n) return NULL;
        n->a = e;
        if (!(n->b = parse_or(P))) return NULL;
        if (is_name(P, "else")) {
            P->i++;
            if (!(n->c = parse_expression(P, 1))) return NULL;
        }
        e = n;
    }
    P->depth--;
    return e;
}

static int tuple_end(parser *P, const char *extra_end) {
    tok *t = cur(P);
    if (t->type == T_VAR_END || t->type == T_BLOCK_END || t->type == T_EOF || is_op(P, ")")) return 1;
    return extra_end && is_name(P, extra_end);
}

static node *parse_tuple(parser *P, int with_condexpr, const char *extra_end, int explicit_parens) {
    tok *t = cur(P);
    pvec items = {0};
    int is_tuple = 0;
    while (1) {
        if (items.n && expect_op(P, ",")) return NULL;
        if (tuple_end(P, extra_end)) break;
        node *x = parse_expression(P, with_condexpr);
        if (!x || pvec_push(P, &items, x)) return NULL;
        if (is_op(P, ",")) is_tuple = 1;
        else break;
    }
    if (!is_tuple) {
        if (items.n) return items.v[0];
        if (!explicit_parens) { char b[64]; return pfail(P, cur(P), "expected an expression, got %s", describe(cur(P), b, sizeof b)); }
    }
    node *n = mk(P, E_TUPLE, t);
    if (!n) return NULL;
    n->args = (node **)items.v;
    n->nargs = items.n;
    return n;
}

/* names of a for / set target: `x`, `a, b` or `(a, b)` */
static int parse_targets(parser *P, node *n, const char *stmt) {
    pvec names = {0};
    int parens = 0;
    if (is_op(P, "(")) { parens = 1; P->i++; }
    while (1) {
        if (cur(P)->type != T_NAME) {
            char b[64];
            pfail(P, cur(P), "expected a variable name in the '%s' target, got %s", stmt, describe(cur(P), b, sizeof b));
            return -1;
        }
        const char *name = intern(P, cur(P));
        if (!name || pvec_push(P, &names, (void *)name)) return -1;
        P->i++;
        if (!is_op(P, ",")) break;
        P->i++;
    }
    if (parens && expect_op(P, ")")) return -1;
    n->names = (const char **)names.v;
    n->nnames = names.n;
    return 0;
}

static int subparse(parser *P, const char *const *ends, pvec *body, const char *open_tag, const tok *open_at);

static const char *const END_IF[] = {"elif", "else", "endif", NULL};
static const char *const END_IF_ELSE[] = {"endif", NULL};
static const char *const END_FOR[] = {"else", "endfor", NULL};
static const char *const END_FOR_ELSE[] = {"endfor", NULL};

static const char *const END_SET[] = {"endset", NULL};
static const char *const END_GEN[] = {"endgeneration", NULL};

/* the {% else %} block of an if or a for (the else tag just read), up to
 * its end tag (ends), into n->orelse; nonzero on a parse error */
static int parse_else(parser *P, node *n, const char *const *ends, const char *open_tag, tok *at) {
    if (expect_end(P, "else")) return 1;
    pvec orelse = {0};
    if (subparse(P, ends, &orelse, open_tag, at)) return 1;
    n->orelse = (node **)orelse.v;
    n->norelse = orelse.n;
    P->i++;
    return 0;
}

static node *parse_if(parser *P, tok *at) {
    node *n = mk(P, N_IF, at);
    if (!n || !(n->a = parse_tuple(P, 0, NULL, 0)) || expect_end(P, "if")) return NULL;
    pvec body = {0};
    if (subparse(P, END_IF, &body, "if", at)) return NULL;
    n->body = (node **)body.v;
    n->nbody = body.n;
    tok *end = cur(P);
    P->i++;
    if (tok_is(end, T_NAME, "elif")) {
        node *e = parse_if(P, end);
        if (!e) return NULL;
        n->orelse = tp_alloc(P->arena, sizeof(node *));
        if (!n->orelse) return NULL;
        n->orelse[0] = e;
        n->norelse = 1;
        return n;
    }
    if (tok_is(end, T_NAME, "else") && parse_else(P, n, END_IF_ELSE, "if", at)) return NULL;
    if (expect_end(P, "endif")) return NULL;
    return n;
}

static node *parse_for(parser *P, tok *at) {
    node *n = mk(P, N_FOR, at);
    if (!n || parse_targets(P, n, "for")) return NULL;
    if (!is_name(P, "in")) { char b[64]; return pfail(P, cur(P), "expected 'in' in the for loop, got %s", describe(cur(P), b, sizeof b)); }
    P->i++;
    if (!(n->a = parse_tuple(P, 0, "recursive", 0))) return NULL;
    if (is_name(P, "if")) {
        P->i++;
        if (!(n->b = parse_expression(P, 1))) return NULL;
    }
    if (is_name(P, "recursive")) return pfail(P, cur(P), "recursive for loops are not supported");
    if (expect_end(P, "for")) return NULL;
    pvec body = {0};
    P->loops++;
    if (subparse(P, END_FOR, &body, "for", at)) return NULL;
    P->loops--;
    n->body = (node **)body.v;
    n->nbody = body.n;
    tok *end = cur(P);
    P->i++;
    if (tok_is(end, T_NAME, "else") && parse_else(P, n, END_FOR_ELSE, "for", at)) return NULL;
    if (expect_end(P, "endfor")) return NULL;
    return n;
}

static node *parse_set(parser *P, tok *at) {
    node *n = mk(P, N_SET, at);
    if (!n) return NULL;
    if (cur(P)->type == T_NAME && tok_is(peek(P, 1), T_OP, ".") && peek(P, 2)->type == T_NAME) {
        /* namespace attribute: set ns.x = ... */
        node *ns = mk(P, E_NAME, cur(P));
        if (!ns || !(ns->name = intern(P, cur(P)))) return NULL;
        n->d = ns;
        n->name = intern(P, peek(P, 2));
        P->i += 3;
    } else if (parse_targets(P, n, "set")) return NULL;
    if (is_op(P, "=")) {
        P->i++;
        if (!(n->a = parse_tuple(P, 1, NULL, 0)) || expect_end(P, "set")) return NULL;
        return n;
    }
    if (is_op(P, "|")) return pfail(P, cur(P), "filters on {%% set %%} blocks are not supported");
    if (n->d || n->nnames != 1) return pfail(P, at, "a {%% set %%} block assigns one plain name");
    if (expect_end(P, "set")) return NULL;
    n->type = N_SETBLOCK;
    pvec body = {0};
    if (subparse(P, END_SET, &body, "set", at)) return NULL;
    n->body = (node **)body.v;
    n->nbody = body.n;
    P->i++;
    if (expect_end(P, "endset")) return NULL;
    return n;
}

static const char *const UNSUPPORTED_TAGS[] = {"macro", "call", "filter", "with", "include", "import", "from",
                                               "extends", "block", "autoescape", "do", "trans", "pluralize", NULL};

static node *parse_statement(parser *P) {
    tok *at = cur(P);
    if (at->type != T_NAME) { char b[64]; return pfail(P, at, "expected a tag name after '{%%', got %s", describe(at, b, sizeof b)); }
    P->i++;
    if (tok_is(at, T_NAME, "if")) return parse_if(P, at);
    if (tok_is(at, T_NAME, "for")) return parse_for(P, at);
    if (tok_is(at, T_NAME, "set")) return parse_set(P, at);
    if (tok_is(at, T_NAME, "break") || tok_is(at, T_NAME, "continue")) {
        if (!P->loops) return pfail(P, at, "'%.*s' outside a for loop", (int)at->n, at->p);
        node *n = mk(P, tok_is(at, T_NAME, "break") ? N_BREAK : N_CONTINUE, at);
        if (!n || expect_end(P, n->type == N_BREAK ? "break" : "continue")) return NULL;
        return n;
    }
    if (tok_is(at, T_NAME, "generation")) {
        node *n = mk(P, N_GENERATION, at);
        if (!n || expect_end(P, "generation")) return NULL;
        pvec body = {0};
        int loops = P->loops;
        P->loops = 0; /* the body is a macro in Jinja: no break / continue through it */
        if (subparse(P, END_GEN, &body, "generation", at)) return NULL;
        P->loops = loops;
        n->body = (node **)body.v;
        n->nbody = body.n;
        P->i++;
        if (expect_end(P, "endgeneration")) return NULL;
        P->has_generation = 1;
        return n;
    }
    for (int i = 0; UNSUPPORTED_TAGS[i]; i++)
        if (tok_is(at, T_NAME, UNSUPPORTED_TAGS[i]))
            return pfail(P, at, "the tag '%s' is not supported (supported tags: if, elif, else, for, set, break, continue, generation, raw)",
                         UNSUPPORTED_TAGS[i]);
    return pfail(P, at, "unexpected tag '%.*s' here", (int)at->n, at->p);
}

/* statements until a {% tag %} named in ends (left as the current token) */
static int subparse(parser *P, const char *const *ends, pvec *body, const char *open_tag, const tok *open_at) {
    if (++P->depth > MAX_DEPTH) { pfail(P, cur(P), "blocks nested more than %d deep", MAX_DEPTH); return -1; }
    while (1) {
        tok *t = cur(P);
        if (t->type == T_EOF) {
            if (!ends) break;
            pfail(P, open_at, "this '%s' is never closed (expected '{%% %s %%}')", open_tag, ends[0][0] == 'e' && ends[1] ? ends[1] : ends[0]);
            if (ends[1] && !strcmp(ends[0], "elif")) pfail(P, open_at, "this 'if' is never closed (expected '{%% endif %%}')");
            return -1;
        }
        if (t->type == T_DATA) {
            node *n = mk(P, N_TEXT, t);
            if (!n || pvec_push(P, body, n)) return -1;
            n->lit = tv_str(t->p, t->n);
            P->i++;
        } else if (t->type == T_VAR_BEGIN) {
            P->i++;
            node *n = mk(P, N_OUTPUT, t);
            if (!n || !(n->a = parse_tuple(P, 1, NULL, 0))) return -1;
            if (cur(P)->type != T_VAR_END) {
                char b[64];
                pfail(P, cur(P), "expected the end of the expression ('}}'), got %s", describe(cur(P), b, sizeof b));
                return -1;
            }
            P->i++;
            if (pvec_push(P, body, n)) return -1;
        } else if (t->type == T_BLOCK_BEGIN) {
            tok *name = peek(P, 1);
            if (ends && name->type == T_NAME)
                for (int k = 0; ends[k]; k++)
                    if (tok_is(name, T_NAME, ends[k])) { P->i++; P->depth--; return 0; }
            if (name->type == T_NAME && ends == NULL) {
                static const char *const closers[] = {"elif", "else", "endif", "endfor", "endset", "endgeneration", NULL};
                for (int k = 0; closers[k]; k++)
                    if (tok_is(name, T_NAME, closers[k])) { pfail(P, name, "'%s' without an open block", closers[k]); return -1; }
            }
            P->i++;
            node *n = parse_statement(P);
            if (!n || pvec_push(P, body, n)) return -1;
        } else {
            char b[64];
            pfail(P, t, "unexpected %s", describe(t, b, sizeof b));
            return -1;
        }
    }
    P->depth--;
    return 0;
}

/* ------------------------------------------------------------------------ */
/* the compiled template                                                     */

struct fsdp_template {
    tp_arena arena;
    node **body;
    int nbody;
    int has_generation;
};

static int check_utf8(const char *s, int64_t n, int64_t *bad) {
    const unsigned char *p = (const unsigned char *)s;
    for (int64_t i = 0; i < n;) {
        unsigned c = p[i];
        int len = c < 0x80 ? 1 : (c & 0xe0) == 0xc0 ? 2 : (c & 0xf0) == 0xe0 ? 3 : (c & 0xf8) == 0xf0 ? 4 : 0;
        if (!len || i + len > n || (len == 2 && c < 0xc2)) { *bad = i; return 0; }
        for (int k = 1; k < len; k++)
            if ((p[i + k] & 0xc0) != 0x80) { *bad = i; return 0; }
        i += len;
    }
    return 1;
}

fsdp_template *fsdp_template_new(const char *source, int64_t len) {
    if (!source || len < 0) return fsdp_error_null(FSDP_ERR_INVALID, "chat template: NULL source");
    int64_t bad;
    if (!check_utf8(source, len, &bad)) {
        int line = 1;
        for (int64_t i = 0; i < bad; i++) line += source[i] == '\n';
        return fsdp_error_null(FSDP_ERR_INVALID, "chat template line %d: invalid UTF-8 (byte %lld)", line, (long long)bad);
    }
    fsdp_template *t = calloc(1, sizeof *t);
    if (!t) return fsdp_error_null(FSDP_ERR_OOM, "chat template: out of memory");
    /* newlines as \n, one trailing newline dropped (Jinja's keep_trailing_newline=False) */
    char *src = tp_alloc(&t->arena, (size_t)len + 1);
    lexer L = {0};
    if (!src) goto oom;
    int64_t n = 0;
    for (int64_t i = 0; i < len; i++) {
        if (source[i] == '\r') { src[n++] = '\n'; if (i + 1 < len && source[i + 1] == '\n') i++; }
        else src[n++] = source[i];
    }
    if (n > 0 && src[n - 1] == '\n') n--;
    L.src = src;
    L.n = n;
    L.arena = &t->arena;
    L.lines = malloc(sizeof(int64_t) * (size_t)(n + 2));
    if (!L.lines) goto oom;
    L.lines[L.nlines++] = 0;
    for (int64_t i = 0; i < n; i++)
        if (src[i] == '\n') L.lines[L.nlines++] = i + 1;
    if (lex(&L)) goto fail;
    parser P = {.t = L.toks, .ntok = L.ntok, .arena = &t->arena};
    pvec body = {0};
    if (subparse(&P, NULL, &body, NULL, NULL)) goto fail;
    t->body = (node **)body.v;
    t->nbody = body.n;
    t->has_generation = P.has_generation;
    free(L.toks);
    free(L.lines);
    return t;
oom:
    fsdp_error(FSDP_ERR_OOM, "chat template: out of memory");
fail:
    free(L.toks);
    free(L.lines);
    tp_arena_free(&t->arena);
    free(t);
    return NULL;
}

void fsdp_template_free(fsdp_template *t) {
    if (!t) return;
    tp_arena_free(&t->arena);
    free(t);
}

int fsdp_template_has_generation(const fsdp_template *t) { return t && t->has_generation; }

/* ------------------------------------------------------------------------ */
/* rendering                                                                 */

typedef struct scope {
    struct scope *parent;
    const char **names;
    tvalue *vals;
    int n, cap;
} scope;

typedef struct rstate {
    tp_render R;
    tp_buf *out;
    scope *sc;
    int64_t *spans;
    int64_t nspans, capspans;
    int64_t steps;
    int depth;
} rstate;

int tp_fail(tp_render *R, const char *fmt, ...) {
    if (R->failed) return -1; /* the first message stays */
    char msg[700];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    fsdp_error(FSDP_ERR_INVALID, "chat template line %d col %d: %s", R->line, R->col, msg);
    R->failed = 1;
    return -1;
}

static scope *scope_push(rstate *S) {
    scope *s = tp_alloc(&S->R.arena, sizeof *s);
    if (!s) { tp_fail(&S->R, "out of memory (a render may use up to 1 GiB)"); return NULL; }
    s->parent = S->sc;
    S->sc = s;
    return s;
}

static int scope_set(rstate *S, const char *name, tvalue v) {
    scope *s = S->sc;
    for (int i = 0; i < s->n; i++)
        if (!strcmp(s->names[i], name)) { s->vals[i] = v; return 0; }
    if (s->n == s->cap) {
        int cap = s->cap ? s->cap * 2 : 8;
        const char **names = tp_alloc(&S->R.arena, (size_t)cap * sizeof *names);
        tvalue *vals = tp_alloc(&S->R.arena, (size_t)cap * sizeof *vals);
        if (!names || !vals) return tp_fail(&S->R, "out of memory");
        if (s->n) {
            memcpy(names, s->names, (size_t)s->n * sizeof *names);
            memcpy(vals, s->vals, (size_t)s->n * sizeof *vals);
        }
        s->names = names;
        s->vals = vals;
        s->cap = cap;
    }
    s->names[s->n] = name;
    s->vals[s->n++] = v;
    return 0;
}

static int lookup(rstate *S, const char *name, tvalue *out) {
    for (scope *s = S->sc; s; s = s->parent)
        for (int i = s->n - 1; i >= 0; i--)
            if (!strcmp(s->names[i], name)) { *out = s->vals[i]; return 1; }
    return tp_global(name, out);
}

static int eval(rstate *S, const node *e, tvalue *out);

static void at(rstate *S, const node *n) { S->R.line = n->line; S->R.col = n->col; }

/* arguments of a call / filter / test node */
static int eval_args(rstate *S, const node *n, tp_args *a) {
    tvalue *v = n->nargs ? tp_alloc(&S->R.arena, (size_t)n->nargs * sizeof *v) : NULL;
    tvalue *kv = n->nk ? tp_alloc(&S->R.arena, (size_t)n->nk * sizeof *kv) : NULL;
    if ((n->nargs && !v) || (n->nk && !kv)) return tp_fail(&S->R, "out of memory");
    for (int i = 0; i < n->nargs; i++) TRY(eval(S, n->args[i], &v[i]));
    for (int i = 0; i < n->nk; i++) TRY(eval(S, n->kargs[i], &kv[i]));
    a->n = n->nargs;
    a->v = v;
    a->nk = n->nk;
    a->kname = n->knames;
    a->kv = kv;
    return 0;
}

static int eval(rstate *S, const node *e, tvalue *out) {
    tp_render *R = &S->R;
    if (++S->depth > MAX_DEPTH * 4) { at(S, e); return tp_fail(R, "evaluation nested too deeply"); }
    int rc = 0;
    tvalue a, b;
    tp_args args;
    switch (e->type) {
    case E_CONST: *out = e->lit; break;
    case E_NAME:
        if (!lookup(S, e->name, out)) {
            char msg[200];
            snprintf(msg, sizeof msg, "'%s' is undefined", e->name);
            rc = tv_str_copy(R, msg, (int64_t)strlen(msg), &a);
            *out = tv_undef(a.u.s.p);
        }
        break;
    case E_GETATTR:
        if ((rc = eval(S, e->a, &a))) break;
        at(S, e);
        rc = tv_getattr(R, &a, e->name, out);
        break;
    case E_GETITEM:
        if ((rc = eval(S, e->a, &a)) || (rc = eval(S, e->b, &b))) break;
        at(S, e);
        rc = tv_getitem(R, &a, &b, out);
        break;
    case E_SLICE: {
        tvalue parts[3] = {tv_none(), tv_none(), tv_none()};
        if ((rc = eval(S, e->a, &a))) break;
        const node *p[3] = {e->b, e->c, e->d};
        for (int i = 0; i < 3 && !rc; i++)
            if (p[i]) rc = eval(S, p[i], &parts[i]);
        if (rc) break;
        at(S, e);
        rc = tv_slice(R, &a, &parts[0], &parts[1], &parts[2], out);
        break;
    }
    case E_CALL:
        if ((rc = eval(S, e->a, &a)) || (rc = eval_args(S, e, &args))) break;
        at(S, e);
        rc = tp_call(R, &a, &args, out);
        break;
    case E_FILTER:
        if ((rc = eval(S, e->a, &a)) || (rc = eval_args(S, e, &args))) break;
        at(S, e);
        rc = tp_apply_filter(R, e->id, &a, &args, out);
        break;
    case E_TEST: {
        int r;
        if ((rc = eval(S, e->a, &a)) || (rc = eval_args(S, e, &args))) break;
        at(S, e);
        if ((rc = tp_apply_test(R, e->id, &a, &args, &r))) break;
        *out = tv_bool(e->op ? !r : r);
        break;
    }
    case E_NEG: case E_POS:
        if ((rc = eval(S, e->a, &a))) break;
        at(S, e);
        rc = tv_unary(R, e->type == E_NEG ? 'n' : 'p', &a, out);
        break;
    case E_NOT:
        if ((rc = eval(S, e->a, &a))) break;
        *out = tv_bool(!tv_truthy(&a));
        break;
    case E_AND: case E_OR:
        if ((rc = eval(S, e->a, &a))) break;
        if (tv_truthy(&a) == (e->type == E_OR)) *out = a;
        else rc = eval(S, e->b, out);
        break;
    case E_BINOP:
        if ((rc = eval(S, e->a, &a)) || (rc = eval(S, e->b, &b))) break;
        at(S, e);
        rc = tv_binary(R, e->op, &a, &b, out);
        break;
    case E_CONCAT: {
        tp_buf buf = {0};
        for (int i = 0; i < e->nargs && !rc; i++) {
            if ((rc = eval(S, e->args[i], &a))) break;
            at(S, e);
            rc = tv_print(R, &buf, &a);
        }
        if (!rc) rc = tv_str_copy(R, buf.p ? buf.p : "", buf.n, out);
        free(buf.p);
        break;
    }
    case E_COMPARE: {
        if ((rc = eval(S, e->a, &a))) break;
        *out = tv_bool(1);
        for (int i = 0; i < e->nargs; i++) {
            if ((rc = eval(S, e->args[i], &b))) break;
            at(S, e);
            int r = 0, c;
            switch (e->ops[i]) {
            case '=': r = tv_equal(&a, &b); break;
            case '!': r = !tv_equal(&a, &b); break;
            case 'i': rc = tv_contains(R, &b, &a, &r); break;
            case 'n': rc = tv_contains(R, &b, &a, &r); r = !r; break;
            default:
                rc = tv_compare(R, &a, &b, &c);
                r = e->ops[i] == '<' ? c < 0 : e->ops[i] == 'l' ? c <= 0 : e->ops[i] == '>' ? c > 0 : c >= 0;
            }
            if (rc) break;
            if (!r) { *out = tv_bool(0); break; }
            a = b;
        }
        break;
    }
    case E_COND:
        if ((rc = eval(S, e->b, &a))) break;
        if (tv_truthy(&a)) rc = eval(S, e->a, out);
        else if (e->c) rc = eval(S, e->c, out);
        else *out = tv_undef("the inline if-expression is false and has no else");
        break;
    case E_LIST: case E_TUPLE:
        if ((rc = tv_list_new(R, e->nargs, out))) break;
        out->u.l->tuple = e->type == E_TUPLE;
        for (int i = 0; i < e->nargs && !rc; i++) rc = eval(S, e->args[i], &out->u.l->v[i]);
        break;
    case E_DICT:
        if ((rc = tv_dict_new(R, out))) break;
        for (int i = 0; i < e->nargs && !rc; i++) {
            if ((rc = eval(S, e->args[i], &a)) || (rc = eval(S, e->kargs[i], &b))) break;
            rc = tv_dict_set(R, out->u.d, a, b);
        }
        break;
    default:
        at(S, e);
        rc = tp_fail(R, "internal: unknown expression node %d", e->type);
    }
    S->depth--;
    return rc ? -1 : 0;
}

/* statements: 0 done, 1 break, 2 continue, -1 error */
static int exec_body(rstate *S, node **body, int n);

static int assign(rstate *S, const node *n, tvalue v) {
    if (n->nnames == 1) return scope_set(S, n->names[0], v);
    if (v.kind != TV_LIST) return tp_fail(&S->R, "cannot unpack a %s into %d names", tv_type_name(&v), n->nnames);
    if (v.u.l->n != n->nnames)
        return tp_fail(&S->R, "cannot unpack %lld values into %d names", (long long)v.u.l->n, n->nnames);
    for (int i = 0; i < n->nnames; i++) TRY(scope_set(S, n->names[i], v.u.l->v[i]));
    return 0;
}

static int exec_for(rstate *S, const node *n) {
    tvalue seq, items;
    TRY(eval(S, n->a, &seq));
    at(S, n);
    TRY(tv_iterate(&S->R, &seq, &items));
    if (n->b) { /* for x in xs if cond: filter first (loop.length counts what is kept) */
        tvalue kept;
        TRY(tv_list_new(&S->R, items.u.l->n, &kept));
        kept.u.l->n = 0;
        scope *s = scope_push(S);
        if (!s) return -1;
        int rc = 0;
        for (int64_t i = 0; i < items.u.l->n && !rc; i++) {
            if (++S->steps > MAX_STEPS) { at(S, n); rc = tp_fail(&S->R, "the template ran more than %d steps", MAX_STEPS); break; }
            s->n = 0; /* a fresh scope for every item */
            tvalue c;
            rc = assign(S, n, items.u.l->v[i]);
            if (!rc) rc = eval(S, n->b, &c);
            if (!rc && tv_truthy(&c)) kept.u.l->v[kept.u.l->n++] = items.u.l->v[i];
        }
        S->sc = s->parent;
        TRY(rc);
        items = kept;
    }
    if (items.u.l->n == 0) return exec_body(S, n->orelse, n->norelse);
    tv_loop *L = tp_alloc(&S->R.arena, sizeof *L);
    if (!L) return tp_fail(&S->R, "out of memory");
    L->length = items.u.l->n;
    L->items = items;
    tvalue loop = {.kind = TV_LOOP};
    loop.u.loop = L;
    scope *s = scope_push(S);
    if (!s) return -1;
    int rc = 0;
    for (int64_t i = 0; i < items.u.l->n; i++) {
        if (++S->steps > MAX_STEPS) { at(S, n); rc = tp_fail(&S->R, "the template ran more than %d steps", MAX_STEPS); break; }
        L->index0 = i;
        s->n = 0; /* every iteration starts from a fresh scope, as in Jinja */
        rc = assign(S, n, items.u.l->v[i]);
        if (!rc) rc = scope_set(S, "loop", loop);
        if (!rc) rc = exec_body(S, n->body, n->nbody);
        if (rc < 0 || rc == 1) break;
        rc = 0;
    }
    S->sc = s->parent;
    return rc < 0 ? -1 : 0;
}

static int exec_node(rstate *S, const node *n) {
    tp_render *R = &S->R;
    if (++S->steps > MAX_STEPS) { at(S, n); return tp_fail(R, "the template ran more than %d steps", MAX_STEPS); }
    if (S->out->n > MAX_OUTPUT) { at(S, n); return tp_fail(R, "the output is larger than %lld bytes", (long long)MAX_OUTPUT); }
    tvalue v;
    switch (n->type) {
    case N_TEXT:
        if (tp_buf_put(S->out, n->lit.u.s.p, n->lit.u.s.n)) { at(S, n); return tp_fail(R, "out of memory"); }
        return 0;
    case N_OUTPUT:
        TRY(eval(S, n->a, &v));
        at(S, n);
        return tv_print(R, S->out, &v);
    case N_IF:
        TRY(eval(S, n->a, &v));
        if (tv_truthy(&v)) return exec_body(S, n->body, n->nbody);
        return exec_body(S, n->orelse, n->norelse);
    case N_FOR: return exec_for(S, n);
    case N_SET:
        TRY(eval(S, n->a, &v));
        at(S, n);
        if (n->d) {
            tvalue ns;
            TRY(eval(S, n->d, &ns));
            at(S, n);
            if (ns.kind != TV_NS) return tp_fail(R, "cannot assign an attribute to a %s (only to a namespace())", tv_type_name(&ns));
            tvalue key;
            TRY(tv_str_copy(R, n->name, (int64_t)strlen(n->name), &key));
            return tv_dict_set(R, ns.u.d, key, v);
        }
        return assign(S, n, v);
    case N_SETBLOCK: {
        tp_buf tmp = {0}, *saved = S->out;
        S->out = &tmp;
        scope *s = scope_push(S);
        int rc = s ? exec_body(S, n->body, n->nbody) : -1;
        if (s) S->sc = s->parent;
        S->out = saved;
        if (rc == 0) rc = tv_str_copy(R, tmp.p ? tmp.p : "", tmp.n, &v);
        free(tmp.p);
        TRY(rc);
        return scope_set(S, n->names[0], v);
    }
    case N_BREAK: return 1;
    case N_CONTINUE: return 2;
    case N_GENERATION: {
        int64_t start = S->out->n;
        scope *s = scope_push(S);
        if (!s) return -1;
        int rc = exec_body(S, n->body, n->nbody);
        S->sc = s->parent;
        if (rc < 0) return -1;
        if (S->nspans == S->capspans) {
            int64_t cap = S->capspans ? S->capspans * 2 : 16;
            int64_t *p = realloc(S->spans, (size_t)cap * 2 * sizeof *p);
            if (!p) return tp_fail(R, "out of memory");
            S->spans = p;
            S->capspans = cap;
        }
        S->spans[2 * S->nspans] = start;
        S->spans[2 * S->nspans + 1] = S->out->n;
        S->nspans++;
        return rc;
    }
    }
    at(S, n);
    return tp_fail(R, "internal: unknown statement node %d", n->type);
}

static int exec_body(rstate *S, node **body, int n) {
    for (int i = 0; i < n; i++) {
        int rc = exec_node(S, body[i]);
        if (rc) return rc;
    }
    return 0;
}

int fsdp_template_render(const fsdp_template *t, const char *vars_json, int64_t vars_len, char **out,
                         int64_t *out_len, int64_t **spans, int64_t *n_spans) {
    FSDP_CHECK_ARG(t && out && out_len, "chat template render: NULL template or output");
    FSDP_CHECK_ARG(!spans == !n_spans, "chat template render: spans and n_spans go together");
    *out = NULL;
    *out_len = 0;
    if (spans) { *spans = NULL; *n_spans = 0; }
    rstate S = {0};
    tp_buf buf = {0};
    S.out = &buf;
    S.R.arena.limit = MAX_MEMORY;
    int rc = -1;
    tvalue vars;
    if (!scope_push(&S)) goto done;
    if (vars_json && vars_len > 0) {
        if (tv_from_json(&S.R, vars_json, vars_len, &vars)) goto done;
        for (int64_t i = 0; i < vars.u.d->n; i++) {
            const tvalue *k = &vars.u.d->k[i];
            if (scope_set(&S, k->u.s.p, vars.u.d->v[i])) goto done;
        }
    }
    if (exec_body(&S, t->body, t->nbody) < 0) goto done;
    if (tp_buf_put(&buf, "", 0) || (!buf.p && !(buf.p = calloc(1, 1)))) {
        fsdp_error(FSDP_ERR_OOM, "chat template: out of memory");
        goto done;
    }
    *out = buf.p;
    *out_len = buf.n;
    buf.p = NULL;
    if (spans) {
        *spans = S.spans;
        *n_spans = S.nspans;
        S.spans = NULL;
    }
    rc = 0;
done:
    free(buf.p);
    free(S.spans);
    tp_arena_free(&S.R.arena);
    return rc == 0 ? FSDP_OK : FSDP_ERR_INVALID;
}
