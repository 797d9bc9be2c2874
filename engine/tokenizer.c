/* tokenizer.c - Hugging Face tokenizer.json, BPE family.
 *
 * Reads the tokenizer.json the `tokenizers` library writes and encodes and
 * decodes the way that library does, id for id. Supported is what the
 * byte-level BPE tokenizers (GPT-2, OPT, Llama 3) and the SentencePiece-style
 * BPE tokenizers with byte fallback (Llama 2, Mistral) are made of:
 *
 *   model           BPE: vocab, merges ("a b" strings or [a, b] pairs),
 *                   unk_token, fuse_unk, byte_fallback, ignore_merges,
 *                   continuing_subword_prefix, end_of_word_suffix
 *   normalizer      Prepend, Replace (String or Regex), Strip, Sequence
 *   pre_tokenizer   ByteLevel, Split (String or Regex, every behavior, invert),
 *                   Metaspace, Digits, Sequence
 *   post_processor  TemplateProcessing, RobertaProcessing, BertProcessing,
 *                   ByteLevel, Sequence (only the ids added around the text)
 *   decoder         ByteLevel, Replace, ByteFallback, Fuse, Strip, Metaspace,
 *                   Sequence
 *   added_tokens    special or not, normalized or not, lstrip, rstrip,
 *                   single_word
 *
 * Anything else is refused at load time with the JSON path of the field and
 * the list of what is supported. Offsets, truncation and padding are not
 * computed: encode gives ids only.
 *
 * Encoding follows the library's pipeline:
 *   1. split the raw text on the added tokens that are not normalized
 *      (leftmost-longest match), each match becoming its id;
 *   2. normalize every other piece, then split it on the normalized added
 *      tokens;
 *   3. run the pre-tokenizers on each remaining piece: each one cuts a piece
 *      into smaller ones (and may rewrite it, as ByteLevel and Metaspace do);
 *   4. BPE each final piece (a "word"): one symbol per character (or per byte
 *      with byte fallback, or <unk>), then merge the pair of lowest rank,
 *      leftmost first, until no pair of the word is in the merge table;
 *   5. put the post-processor's special ids around the result.
 * Stage 3 runs depth first: a piece is cut and each sub-piece goes through the
 * later stages before the next sub-piece, so every stage needs only its own
 * scratch buffers.
 *
 * Regex patterns come in the Oniguruma dialect the library compiles them
 * with; they run on PCRE2 (JIT) after rewriting the escapes whose meaning
 * differs: \s and \S (Oniguruma: the Unicode White_Space set, PCRE2 adds
 * U+180E), \w and \W (Oniguruma counts marks as word characters) and \h, \H
 * (hex digits in Oniguruma).
 *
 * Threads: load once, then encode and decode may be called from several
 * threads on one tokenizer. Each encode borrows a work context (buffers, the
 * BPE heap, a word -> ids cache) from a pool guarded by a mutex, so repeated
 * calls from one thread reuse the same warm cache. */
#define _GNU_SOURCE   /* memmem */
#define PCRE2_CODE_UNIT_WIDTH 8
#include <errno.h>
#include <jansson.h>
#include <pcre2.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "internal.h"

enum {
    MAX_TOKEN_ID = 0x7fffff00,  /* ids are int32 with room to spare */
    CACHE_SLOTS = 1 << 14,      /* word -> ids cache entries per context */
    CACHE_MAX_WORD = 256,       /* longer words are not cached (as the library) */
    MAX_PRE_STEPS = 16,         /* pre-tokenizers after flattening Sequences */
};

static const char GPT2_REGEX[] =
    "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+";

/* ---- growable buffers --------------------------------------------------- */

typedef struct sbuf { char *p; size_t n, cap; } sbuf;
typedef struct ivec { int32_t *p; size_t n, cap; } ivec;

/* makes room for `need` elements of `elem` bytes; -1 when out of memory */
static int grow(void **p, size_t *cap, size_t need, size_t elem) {
    if (need <= *cap) return 0;
    size_t c = *cap ? *cap : 16;
    while (c < need) c *= 2;
    void *q = realloc(*p, c * elem);
    if (!q) return -1;
    *p = q;
    *cap = c;
    return 0;
}

static int sb_reserve(sbuf *b, size_t extra) { return grow((void **)&b->p, &b->cap, b->n + extra + 1, 1); }

static int sb_put(sbuf *b, const void *s, size_t n) {
    if (sb_reserve(b, n)) return -1;
    if (n) memcpy(b->p + b->n, s, n);
    b->n += n;
    return 0;
}

static int iv_push(ivec *v, int32_t x) {
    if (grow((void **)&v->p, &v->cap, v->n + 1, sizeof *v->p)) return -1;
    v->p[v->n++] = x;
    return 0;
}

#define OOM() fsdp_error(FSDP_ERR_OOM, "tokenizer: out of memory")
#define TRY(expr) do { int rc_ = (expr); if (rc_) return rc_; } while (0)

/* ---- UTF-8 ---------------------------------------------------------------- */

/* byte length of the character a (valid) lead byte starts */
static inline int u8_len(unsigned char c) {
    return c < 0x80 ? 1 : c < 0xE0 ? 2 : c < 0xF0 ? 3 : 4;
}

static inline uint32_t u8_decode(const unsigned char *s, int len) {
    switch (len) {
    case 1: return s[0];
    case 2: return (uint32_t)(s[0] & 0x1F) << 6 | (s[1] & 0x3F);
    case 3: return (uint32_t)(s[0] & 0x0F) << 12 | (uint32_t)(s[1] & 0x3F) << 6 | (s[2] & 0x3F);
    default:
        return (uint32_t)(s[0] & 0x07) << 18 | (uint32_t)(s[1] & 0x3F) << 12 |
               (uint32_t)(s[2] & 0x3F) << 6 | (s[3] & 0x3F);
    }
}

static int u8_encode(uint32_t cp, char *out) {
    if (cp < 0x80) { out[0] = (char)cp; return 1; }
    if (cp < 0x800) { out[0] = (char)(0xC0 | cp >> 6); out[1] = (char)(0x80 | (cp & 0x3F)); return 2; }
    if (cp < 0x10000) {
        out[0] = (char)(0xE0 | cp >> 12); out[1] = (char)(0x80 | (cp >> 6 & 0x3F));
        out[2] = (char)(0x80 | (cp & 0x3F));
        return 3;
    }
    out[0] = (char)(0xF0 | cp >> 18); out[1] = (char)(0x80 | (cp >> 12 & 0x3F));
    out[2] = (char)(0x80 | (cp >> 6 & 0x3F)); out[3] = (char)(0x80 | (cp & 0x3F));
    return 4;
}

/* Length of the valid UTF-8 sequence at s (at most n bytes), or the negated
 * length of the invalid one to replace by one U+FFFD: the maximal prefix of
 * a well-formed sequence, at least one byte (Unicode's "maximal subpart"
 * rule, which Rust's from_utf8_lossy follows). */
static int u8_next(const unsigned char *s, size_t n) {
    unsigned char c = s[0];
    if (c < 0x80) return 1;
    int len;
    unsigned char lo = 0x80, hi = 0xBF;  /* range of the second byte */
    if (c >= 0xC2 && c <= 0xDF) len = 2;
    else if (c >= 0xE0 && c <= 0xEF) {
        len = 3;
        if (c == 0xE0) lo = 0xA0;
        if (c == 0xED) hi = 0x9F;      /* no surrogates */
    } else if (c >= 0xF0 && c <= 0xF4) {
        len = 4;
        if (c == 0xF0) lo = 0x90;
        if (c == 0xF4) hi = 0x8F;      /* nothing past U+10FFFF */
    } else return -1;
    for (int i = 1; i < len; i++) {
        if ((size_t)i >= n) return -i;
        unsigned char b = s[i];
        if (i == 1 ? (b < lo || b > hi) : (b < 0x80 || b > 0xBF)) return -i;
    }
    return len;
}

/* offset of the first byte that is not valid UTF-8, or -1 */
static int64_t u8_invalid_at(const char *s, size_t n) {
    const unsigned char *p = (const unsigned char *)s;
    size_t i = 0;
    while (i < n) {
        if (p[i] < 0x80) { i++; continue; }
        int k = u8_next(p + i, n - i);
        if (k < 0) return (int64_t)i;
        i += (size_t)k;
    }
    return -1;
}

/* appends s with invalid sequences replaced by U+FFFD */
static int u8_append_lossy(sbuf *out, const unsigned char *s, size_t n) {
    size_t i = 0;
    while (i < n) {
        int k = u8_next(s + i, n - i);
        if (k > 0) { TRY(sb_put(out, s + i, (size_t)k) ? OOM() : 0); i += (size_t)k; }
        else { TRY(sb_put(out, "\xEF\xBF\xBD", 3) ? OOM() : 0); i += (size_t)-k; }
    }
    return 0;
}

/* Unicode White_Space: Rust's char::is_whitespace and regex \s */
static int is_space_cp(uint32_t c) {
    return (c >= 0x09 && c <= 0x0D) || c == 0x20 || c == 0x85 || c == 0xA0 || c == 0x1680 ||
           (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 || c == 0x202F ||
           c == 0x205F || c == 0x3000;
}

/* bytes of leading / trailing white space in s[0, n) */
static size_t space_prefix(const char *s, size_t n) {
    const unsigned char *p = (const unsigned char *)s;
    size_t i = 0;
    while (i < n) {
        int k = u8_len(p[i]);
        if (!is_space_cp(u8_decode(p + i, k))) break;
        i += (size_t)k;
    }
    return i;
}

static size_t space_suffix(const char *s, size_t n) {
    const unsigned char *p = (const unsigned char *)s;
    size_t end = n;
    while (end > 0) {
        size_t st = end - 1;
        while (st > 0 && (p[st] & 0xC0) == 0x80) st--;
        if (!is_space_cp(u8_decode(p + st, (int)(end - st)))) break;
        end = st;
    }
    return n - end;
}

/* ---- hashing and maps ----------------------------------------------------- */

static inline uint64_t hash_bytes(const void *data, size_t n) {
    const unsigned char *p = data;
    uint64_t h = 0xcbf29ce484222325ull;
    for (size_t i = 0; i < n; i++) h = (h ^ p[i]) * 0x100000001b3ull;
    h ^= h >> 29;
    h *= 0xbf58476d1ce4e5b9ull;
    return h ^ (h >> 32);
}

/* string -> id, open addressing; the strings belong to the tokenizer */
typedef struct smap_entry { const char *s; uint32_t len; int32_t id; } smap_entry;
typedef struct smap { smap_entry *e; uint32_t mask; uint32_t n; } smap;

static int smap_init(smap *m, size_t expected) {
    size_t cap = 16;
    while (cap < 2 * expected + 2) cap *= 2;
    m->e = calloc(cap, sizeof *m->e);
    if (!m->e) return OOM();
    m->mask = (uint32_t)(cap - 1);
    m->n = 0;
    return 0;
}

static int32_t smap_get(const smap *m, const char *s, size_t len) {
    if (!m->e) return -1;
    uint32_t i = (uint32_t)hash_bytes(s, len) & m->mask;
    for (;;) {
        const smap_entry *e = &m->e[i];
        if (!e->s) return -1;
        if (e->len == len && memcmp(e->s, s, len) == 0) return e->id;
        i = (i + 1) & m->mask;
    }
}

/* inserts or overwrites; the table was sized for every key up front */
static void smap_put(smap *m, const char *s, size_t len, int32_t id) {
    uint32_t i = (uint32_t)hash_bytes(s, len) & m->mask;
    for (;;) {
        smap_entry *e = &m->e[i];
        if (!e->s) { e->s = s; e->len = (uint32_t)len; e->id = id; m->n++; return; }
        if (e->len == len && memcmp(e->s, s, len) == 0) { e->id = id; return; }
        i = (i + 1) & m->mask;
    }
}

/* (left id, right id) -> (rank, merged id) */
typedef struct merge_entry { uint64_t key; uint32_t rank; int32_t id; } merge_entry;
typedef struct merge_map { merge_entry *e; uint64_t mask; } merge_map;

static inline uint64_t pair_key(int32_t a, int32_t b) { return (uint64_t)(uint32_t)a << 32 | (uint32_t)b; }
static inline uint64_t pair_hash(uint64_t k) { k ^= k >> 31; k *= 0x9e3779b97f4a7c15ull; return k ^ (k >> 29); }

static int merge_init(merge_map *m, size_t expected) {
    size_t cap = 16;
    while (cap < 2 * expected + 2) cap *= 2;
    m->e = malloc(cap * sizeof *m->e);
    if (!m->e) return OOM();
    for (size_t i = 0; i < cap; i++) m->e[i].key = UINT64_MAX;
    m->mask = cap - 1;
    return 0;
}

/* a later merge of the same pair replaces an earlier one, as in the library */
static void merge_put(merge_map *m, int32_t a, int32_t b, uint32_t rank, int32_t id) {
    uint64_t k = pair_key(a, b), i = pair_hash(k) & m->mask;
    while (m->e[i].key != UINT64_MAX && m->e[i].key != k) i = (i + 1) & m->mask;
    m->e[i].key = k;
    m->e[i].rank = rank;
    m->e[i].id = id;
}

static inline const merge_entry *merge_get(const merge_map *m, int32_t a, int32_t b) {
    if (!m->e) return NULL;
    uint64_t k = pair_key(a, b), i = pair_hash(k) & m->mask;
    for (;;) {
        const merge_entry *e = &m->e[i];
        if (e->key == k) return e;
        if (e->key == UINT64_MAX) return NULL;
        i = (i + 1) & m->mask;
    }
}

/* ---- patterns: literal strings and regexes ------------------------------- */

typedef struct pattern {
    char *lit;          /* a literal, or NULL for a regex */
    size_t lit_len;
    pcre2_code *re;
} pattern;

/* Rewrites an Oniguruma pattern for PCRE2: \s \S \w \W \h \H take their
 * Oniguruma meaning (White_Space; letters, marks, numbers and connector
 * punctuation; hex digits); everything else is passed through (the dialects
 * agree on what tokenizer files use: \p{..}, (?i:..), lookahead, counted
 * repeats). Negated sets inside [...] keep PCRE2's meaning. */
static char *onig_to_pcre2(const char *pat, size_t n, size_t *out_len) {
    static const char SPACE[] = "\\t-\\r \\x{85}\\p{Z}", HEX[] = "0-9a-fA-F",
                      WORD[] = "\\p{L}\\p{M}\\p{N}\\p{Pc}";
    sbuf b = {0};
    int in_class = 0;
    for (size_t i = 0; i < n; i++) {
        char c = pat[i];
        int fail = 0;
        if (c == '\\' && i + 1 < n) {
            char e = pat[++i];
            const char *set = (e == 's' || e == 'S') ? SPACE : (e == 'h' || e == 'H') ? HEX
                              : (e == 'w' || e == 'W') ? WORD : NULL;
            int negated = e == 'S' || e == 'H' || e == 'W';
            if (set && in_class && !negated) fail = sb_put(&b, set, strlen(set));
            else if (set && !in_class) {
                fail = sb_put(&b, negated ? "[^" : "[", negated ? 2 : 1) || sb_put(&b, set, strlen(set)) ||
                       sb_put(&b, "]", 1);
            } else fail = sb_put(&b, pat + i - 1, 2);   /* other escapes, and \S inside [..] */
        } else if (c == '[' && !in_class) {
            in_class = 1;
            fail = sb_put(&b, "[", 1);
            if (i + 1 < n && pat[i + 1] == '^') fail |= sb_put(&b, "^", 1), i++;
            if (i + 1 < n && pat[i + 1] == ']') fail |= sb_put(&b, "]", 1), i++;  /* literal ] */
        } else if (c == '[' && in_class && i + 1 < n && pat[i + 1] == ':') {
            const char *end = memmem(pat + i, n - i, ":]", 2);   /* [:alpha:] */
            size_t len = end ? (size_t)(end - (pat + i)) + 2 : 1;
            fail = sb_put(&b, pat + i, len);
            i += len - 1;
        } else {
            if (c == ']' && in_class) in_class = 0;
            fail = sb_put(&b, &c, 1);
        }
        if (fail) { free(b.p); return NULL; }
    }
    if (sb_reserve(&b, 0)) { free(b.p); return NULL; }
    b.p[b.n] = 0;
    *out_len = b.n;
    return b.p;
}

/* compiles a regex for PCRE2 (UTF, Unicode properties, JIT); on failure
 * writes the reason to err */
static pcre2_code *compile_regex(const char *pat, size_t n, int onig, char *err, size_t errlen) {
    size_t len = n;
    char *src = onig ? onig_to_pcre2(pat, n, &len) : NULL;
    if (onig && !src) { snprintf(err, errlen, "out of memory"); return NULL; }
    int code;
    PCRE2_SIZE at;
    pcre2_code *re = pcre2_compile((PCRE2_SPTR)(src ? src : pat), len, PCRE2_UTF | PCRE2_UCP, &code,
                                   &at, NULL);
    free(src);
    if (!re) {
        PCRE2_UCHAR msg[256];
        pcre2_get_error_message(code, msg, sizeof msg);
        snprintf(err, errlen, "%s (at offset %zu)", (const char *)msg, (size_t)at);
        return NULL;
    }
    pcre2_jit_compile(re, PCRE2_JIT_COMPLETE);   /* the interpreter is the fallback */
    return re;
}

static void pattern_free(pattern *p) {
    free(p->lit);
    if (p->re) pcre2_code_free(p->re);
    memset(p, 0, sizeof *p);
}

/* Next match of p in s[0, n) at or after `from`; 1 with [*ms, *me) when
 * found, 0 when none, negative status on a regex failure. */
static int pattern_next(const pattern *p, pcre2_match_data *md, const char *s, size_t n, size_t from,
                        size_t *ms, size_t *me) {
    if (from > n) return 0;
    if (p->lit) {
        const char *hit = memmem(s + from, n - from, p->lit, p->lit_len);
        if (!hit) return 0;
        *ms = (size_t)(hit - s);
        *me = *ms + p->lit_len;
        return 1;
    }
    int rc = pcre2_match(p->re, (PCRE2_SPTR)s, n, from, PCRE2_NO_UTF_CHECK, md, NULL);
    if (rc == PCRE2_ERROR_NOMATCH) return 0;
    if (rc < 0) {   /* rc == 0 only says the capture groups did not fit */
        PCRE2_UCHAR msg[256];
        pcre2_get_error_message(rc, msg, sizeof msg);
        return fsdp_error(FSDP_ERR_INVALID, "tokenizer: regex match failed: %s", (const char *)msg);
    }
    PCRE2_SIZE *ov = pcre2_get_ovector_pointer(md);
    *ms = ov[0];
    *me = ov[1];
    return 1;
}

/* ---- the tokenizer ---------------------------------------------------------- */

enum { NORM_PREPEND, NORM_REPLACE, NORM_STRIP };
typedef struct norm_step {
    int kind;
    char *text;         /* Prepend: the prefix; Replace: the replacement */
    size_t text_len;
    pattern pat;        /* Replace */
    int left, right;    /* Strip */
} norm_step;

enum { SPLIT_REMOVED, SPLIT_ISOLATED, SPLIT_MERGED_PREV, SPLIT_MERGED_NEXT, SPLIT_CONTIGUOUS };
enum { PRE_BYTELEVEL, PRE_SPLIT, PRE_METASPACE, PRE_DIGITS };
enum { PREPEND_ALWAYS, PREPEND_FIRST, PREPEND_NEVER };
typedef struct pre_step {
    int kind;
    int add_prefix_space, use_regex;      /* ByteLevel */
    pattern pat;                          /* Split; Metaspace/Digits: what they split on */
    int behavior, invert;                 /* Split */
    char rep[4];                          /* Metaspace replacement, UTF-8 */
    int rep_len, prepend, split;
} pre_step;

enum { DEC_BYTELEVEL, DEC_REPLACE, DEC_BYTEFALLBACK, DEC_FUSE, DEC_STRIP, DEC_METASPACE };
typedef struct dec_step {
    int kind;
    pattern pat;        /* Replace */
    char *text;         /* Replace: the replacement */
    size_t text_len;
    uint32_t cp;        /* Strip: the character; Metaspace: the replacement */
    int start, stop;    /* Strip */
    int prepend;        /* Metaspace */
} dec_step;

typedef struct added_token {
    char *content;
    size_t len;
    char *norm;         /* content after the normalizer (normalized tokens) */
    size_t norm_len;
    int32_t id;
    int special, normalized, lstrip, rstrip, single_word;
} added_token;

/* byte trie of added-token contents, for leftmost-longest matching */
typedef struct trie_node { int32_t child, sibling, token; unsigned char byte; } trie_node;
typedef struct trie {
    trie_node *node;
    size_t n, cap;
    uint8_t first[32];   /* bitmap of the bytes a token can start with */
} trie;

typedef struct bpe_sym { int32_t id, prev, next, len; } bpe_sym;
typedef struct bpe_merge { uint32_t rank; int32_t pos, id; } bpe_merge;
typedef struct cache_slot { uint64_t hash; char *blob; uint32_t word_len, n_ids; } cache_slot;
typedef struct seg { size_t s, e; int match; } seg;

/* per-stage scratch of a pre-tokenizer */
typedef struct stage_buf {
    sbuf a, b;
    seg *segs, *outs;
    size_t segs_cap, outs_cap;
} stage_buf;

/* what one encode call works in; pooled per tokenizer */
typedef struct enc_ctx {
    struct enc_ctx *next_free;
    ivec ids;
    sbuf norm[2];
    stage_buf stage[MAX_PRE_STEPS];
    seg *added, *added2;         /* added-token splits of the text / of a normalized piece */
    size_t added_cap, added2_cap;
    pcre2_match_data *md;
    bpe_sym *sym;
    size_t sym_cap;
    bpe_merge *heap;
    size_t heap_n, heap_cap;
    sbuf word;                   /* a character with prefix / suffix */
    cache_slot *cache;
} enc_ctx;

struct fsdp_tokenizer {
    char *path;
    int32_t n_ids;               /* max id + 1 over the model vocab and added tokens */
    /* BPE model */
    char **model_tok;            /* [n_ids], NULL where the model has no token */
    uint32_t *model_len;
    char *model_text;            /* the vocab's strings, NUL-separated */
    smap vocab;
    merge_map merges;
    int32_t unk_id;              /* -1: no unk token (unknown characters are dropped) */
    char *unk_token;             /* set even when it is missing from the vocab */
    int fuse_unk, byte_fallback, ignore_merges;
    char *prefix, *suffix;       /* continuing_subword_prefix, end_of_word_suffix */
    size_t prefix_len, suffix_len;
    int32_t byte_id[256];        /* <0xXX> tokens, -1 when missing */
    int32_t *cp_id;              /* [0x10000]: one-character tokens of the BMP */
    uint8_t *cut;                /* bitmap over the BMP: a word may be cut before
                                    this character (see find_cut_chars); NULL: none */
    /* added tokens */
    added_token *added;
    size_t n_added;
    smap added_map;
    int32_t *added_of_id;        /* [n_ids]: index into added, -1 when none */
    uint8_t *special;            /* [n_ids]: decode(skip_special) drops it */
    trie raw_trie, norm_trie;
    pcre2_code *word_re;         /* \w of Rust's regex, for single_word */
    /* pipeline */
    norm_step norm[16];
    int n_norm;
    pre_step pre[MAX_PRE_STEPS];
    int n_pre;
    dec_step dec[16];
    int n_dec, has_decoder;
    pattern gpt2;                /* ByteLevel's regex */
    char byte_char[256][3];      /* byte -> UTF-8 of its ByteLevel character */
    uint8_t byte_char_len[256];
    int16_t char_byte[0x144];    /* inverse, -1 for characters outside the map */
    int32_t *before, *after;     /* ids around the text with add_special */
    int n_before, n_after;
    int32_t special_id[4];
    pthread_mutex_t lock;
    enc_ctx *free_ctx;
};

/* ---- work contexts -------------------------------------------------------- */

static void ctx_free(enc_ctx *c) {
    if (!c) return;
    free(c->ids.p);
    free(c->norm[0].p);
    free(c->norm[1].p);
    for (int i = 0; i < MAX_PRE_STEPS; i++) {
        free(c->stage[i].a.p); free(c->stage[i].b.p);
        free(c->stage[i].segs); free(c->stage[i].outs);
    }
    free(c->added); free(c->added2);
    if (c->md) pcre2_match_data_free(c->md);
    free(c->sym); free(c->heap); free(c->word.p);
    if (c->cache) {
        for (size_t i = 0; i < CACHE_SLOTS; i++) free(c->cache[i].blob);
        free(c->cache);
    }
    free(c);
}

static enc_ctx *ctx_get(fsdp_tokenizer *t) {
    pthread_mutex_lock(&t->lock);
    enc_ctx *c = t->free_ctx;
    if (c) t->free_ctx = c->next_free;
    pthread_mutex_unlock(&t->lock);
    if (c) { c->ids.n = 0; return c; }
    c = calloc(1, sizeof *c);
    if (!c) return fsdp_error_null(FSDP_ERR_OOM, "tokenizer: out of memory");
    c->md = pcre2_match_data_create(1, NULL);
    c->cache = calloc(CACHE_SLOTS, sizeof *c->cache);
    if (!c->md || !c->cache) { ctx_free(c); return fsdp_error_null(FSDP_ERR_OOM, "tokenizer: out of memory"); }
    return c;
}

static void ctx_put(fsdp_tokenizer *t, enc_ctx *c) {
    pthread_mutex_lock(&t->lock);
    c->next_free = t->free_ctx;
    t->free_ctx = c;
    pthread_mutex_unlock(&t->lock);
}

/* ---- segments: the library's Pattern::find_matches and split behaviors ---- */

static int seg_push(seg **v, size_t *n, size_t *cap, size_t s, size_t e, int match) {
    if (grow((void **)v, cap, *n + 1, sizeof **v)) return OOM();
    (*v)[(*n)++] = (seg){s, e, match};
    return 0;
}

/* Cuts s[0, n) into matches of p and the gaps between them (the gaps are
 * not matches). An empty string is one empty gap. Like the library's regex
 * iterator, an empty match right where the previous match ended is skipped. */
static int find_segments(const pattern *p, pcre2_match_data *md, const char *s, size_t n, seg **v,
                         size_t *cap, size_t *count) {
    *count = 0;
    if (n == 0) return seg_push(v, count, cap, 0, 0, 0);
    size_t prev = 0, from = 0, ms, me;
    int have_last = 0;
    size_t last_end = 0;
    for (;;) {
        int rc = pattern_next(p, md, s, n, from, &ms, &me);
        if (rc < 0) return rc;
        if (rc == 0) break;
        if (ms == me && have_last && last_end == me) {
            from = me + (me < n ? (size_t)u8_len((unsigned char)s[me]) : 1);
            continue;
        }
        if (prev != ms) TRY(seg_push(v, count, cap, prev, ms, 0));
        TRY(seg_push(v, count, cap, ms, me, 1));
        prev = me;
        have_last = 1;
        last_end = me;
        from = me;
        if (ms == me) from = me + (me < n ? (size_t)u8_len((unsigned char)s[me]) : 1);
    }
    if (prev != n) TRY(seg_push(v, count, cap, prev, n, 0));
    return 0;
}

/* Applies a split behavior to segments (flags already inverted if asked);
 * the kept pieces go to out, empty ones included (the caller skips them). */
static int apply_behavior(int behavior, const seg *in, size_t n, seg **out, size_t *cap,
                          size_t *count) {
    *count = 0;
    int prev_match = 0;
    switch (behavior) {
    case SPLIT_ISOLATED:
        for (size_t i = 0; i < n; i++) TRY(seg_push(out, count, cap, in[i].s, in[i].e, 0));
        return 0;
    case SPLIT_REMOVED:
        for (size_t i = 0; i < n; i++)
            if (!in[i].match) TRY(seg_push(out, count, cap, in[i].s, in[i].e, 0));
        return 0;
    case SPLIT_CONTIGUOUS:
        for (size_t i = 0; i < n; i++) {
            if (in[i].match == prev_match && *count) (*out)[*count - 1].e = in[i].e;
            else TRY(seg_push(out, count, cap, in[i].s, in[i].e, 0));
            prev_match = in[i].match;
        }
        return 0;
    case SPLIT_MERGED_PREV:
        for (size_t i = 0; i < n; i++) {
            if (in[i].match && !prev_match && *count) (*out)[*count - 1].e = in[i].e;
            else TRY(seg_push(out, count, cap, in[i].s, in[i].e, 0));
            prev_match = in[i].match;
        }
        return 0;
    default:   /* SPLIT_MERGED_NEXT: walk backwards, then restore the order */
        for (size_t i = n; i-- > 0;) {
            if (in[i].match && !prev_match && *count) (*out)[*count - 1].s = in[i].s;
            else TRY(seg_push(out, count, cap, in[i].s, in[i].e, 0));
            prev_match = in[i].match;
        }
        for (size_t i = 0, j = *count; i + 1 < j; i++, j--) {
            seg tmp = (*out)[i];
            (*out)[i] = (*out)[j - 1];
            (*out)[j - 1] = tmp;
        }
        return 0;
    }
}

/* ---- BPE -------------------------------------------------------------------- */

/* min-heap on (rank, position): the library's merge order */
static inline int merge_less(const bpe_merge *a, const bpe_merge *b) {
    return a->rank != b->rank ? a->rank < b->rank : a->pos < b->pos;
}

static int heap_push(enc_ctx *c, bpe_merge m) {
    if (grow((void **)&c->heap, &c->heap_cap, c->heap_n + 1, sizeof *c->heap)) return OOM();
    size_t i = c->heap_n++;
    while (i > 0) {
        size_t parent = (i - 1) / 2;
        if (!merge_less(&m, &c->heap[parent])) break;
        c->heap[i] = c->heap[parent];
        i = parent;
    }
    c->heap[i] = m;
    return 0;
}

static bpe_merge heap_pop(enc_ctx *c) {
    bpe_merge top = c->heap[0], last = c->heap[--c->heap_n];
    size_t i = 0, n = c->heap_n;
    for (;;) {
        size_t l = 2 * i + 1, r = l + 1, m = i;
        const bpe_merge *best = &last;
        if (l < n && merge_less(&c->heap[l], best)) { m = l; best = &c->heap[l]; }
        if (r < n && merge_less(&c->heap[r], best)) m = r;
        if (m == i) break;
        c->heap[i] = c->heap[m];
        i = m;
    }
    if (n) c->heap[i] = last;
    return top;
}

static int sym_add(enc_ctx *c, size_t *n, int32_t id, int32_t len) {
    if (grow((void **)&c->sym, &c->sym_cap, *n + 1, sizeof *c->sym)) return OOM();
    c->sym[*n] = (bpe_sym){id, (int32_t)*n - 1, -1, len};
    if (*n) c->sym[*n - 1].next = (int32_t)*n;
    (*n)++;
    return 0;
}

/* vocab id of one character of the word, with the prefix / suffix it takes
 * at that place; the bytes looked up are left in c->word */
static int32_t char_id(const fsdp_tokenizer *t, enc_ctx *c, const char *ch, int len, int first,
                       int last, int *status) {
    int plain = !(!first && t->prefix) && !(last && t->suffix);
    *status = 0;
    if (plain) {
        int32_t id = len <= 3 ? t->cp_id[u8_decode((const unsigned char *)ch, len)]
                              : smap_get(&t->vocab, ch, (size_t)len);
        if (id >= 0) return id;
    }
    c->word.n = 0;
    if ((!plain && !first && t->prefix && sb_put(&c->word, t->prefix, t->prefix_len)) ||
        sb_put(&c->word, ch, (size_t)len) ||
        (!plain && last && t->suffix && sb_put(&c->word, t->suffix, t->suffix_len))) {
        *status = OOM();
        return -1;
    }
    return plain ? -1 : smap_get(&t->vocab, c->word.p, c->word.n);
}

/* the library's BPE::merge_word: ids of one word appended to c->ids */
static int bpe_merge_word(const fsdp_tokenizer *t, enc_ctx *c, const char *w, size_t n) {
    size_t ns = 0;
    int32_t unk = -1, unk_len = 0;   /* a pending <unk> and the bytes it covers */
    for (size_t i = 0; i < n;) {
        int len = u8_len((unsigned char)w[i]);
        int status;
        int32_t id = char_id(t, c, w + i, len, i == 0, i + (size_t)len == n, &status);
        if (status) return status;
        i += (size_t)len;
        if (id >= 0) {
            if (unk >= 0) { TRY(sym_add(c, &ns, unk, unk_len)); unk = -1; }
            TRY(sym_add(c, &ns, id, len));
            continue;
        }
        if (t->byte_fallback) {
            /* every byte of the looked-up string (prefix and suffix included)
             * must have its <0xXX> token, else the character is unknown */
            int all = 1;
            for (size_t k = 0; k < c->word.n; k++) all &= t->byte_id[(unsigned char)c->word.p[k]] >= 0;
            if (all) {
                for (size_t k = 0; k < c->word.n; k++)
                    TRY(sym_add(c, &ns, t->byte_id[(unsigned char)c->word.p[k]], 1));
                continue;   /* a pending <unk> stays pending, as in the library */
            }
        }
        if (!t->unk_token) continue;   /* no unk token: the character is dropped */
        if (t->unk_id < 0)
            return fsdp_error(FSDP_ERR_INVALID, "%s: unk_token \"%s\" is not in the vocabulary", t->path,
                              t->unk_token);
        if (unk >= 0 && t->fuse_unk) { unk_len += len; continue; }
        if (unk >= 0) TRY(sym_add(c, &ns, unk, unk_len));
        unk = t->unk_id;
        unk_len = len;
    }
    if (unk >= 0) TRY(sym_add(c, &ns, unk, unk_len));

    /* merge: always the pair of lowest rank, leftmost among equals; queue
     * entries that went stale are recognized and dropped when popped */
    bpe_sym *s = c->sym;
    c->heap_n = 0;
    for (size_t i = 0; i + 1 < ns; i++) {
        const merge_entry *m = merge_get(&t->merges, s[i].id, s[i + 1].id);
        if (m) TRY(heap_push(c, (bpe_merge){m->rank, (int32_t)i, m->id}));
    }
    while (c->heap_n) {
        bpe_merge top = heap_pop(c);
        bpe_sym *cur = &c->sym[top.pos];
        if (cur->len == 0 || cur->next < 0) continue;
        bpe_sym right = c->sym[cur->next];
        const merge_entry *m = merge_get(&t->merges, cur->id, right.id);
        if (!m || m->id != top.id) continue;
        c->sym[cur->next].len = 0;
        cur->id = top.id;
        cur->len += right.len;
        cur->next = right.next;
        if (right.next >= 0) c->sym[right.next].prev = top.pos;
        if (cur->prev >= 0) {
            const merge_entry *pm = merge_get(&t->merges, c->sym[cur->prev].id, cur->id);
            if (pm) TRY(heap_push(c, (bpe_merge){pm->rank, cur->prev, pm->id}));
        }
        if (cur->next >= 0) {
            const merge_entry *nm = merge_get(&t->merges, cur->id, c->sym[cur->next].id);
            if (nm) TRY(heap_push(c, (bpe_merge){nm->rank, top.pos, nm->id}));
        }
    }
    for (size_t i = 0; i < ns; i++)
        if (c->sym[i].len) TRY(iv_push(&c->ids, c->sym[i].id) ? OOM() : 0);
    return 0;
}

/* a word (or an independent part of one) through the cache, then BPE */
static int bpe_part(const fsdp_tokenizer *t, enc_ctx *c, const char *w, size_t n) {
    uint64_t h = 0;
    cache_slot *slot = NULL;
    if (n < CACHE_MAX_WORD) {
        h = hash_bytes(w, n);
        slot = &c->cache[h & (CACHE_SLOTS - 1)];
        if (slot->blob && slot->hash == h && slot->word_len == n && memcmp(slot->blob, w, n) == 0) {
            const char *ids = slot->blob + ((n + 3) & ~(size_t)3);
            if (grow((void **)&c->ids.p, &c->ids.cap, c->ids.n + slot->n_ids, sizeof *c->ids.p)) return OOM();
            if (slot->n_ids) memcpy(c->ids.p + c->ids.n, ids, slot->n_ids * sizeof(int32_t));
            c->ids.n += slot->n_ids;
            return 0;
        }
    }
    size_t first = c->ids.n;
    TRY(bpe_merge_word(t, c, w, n));
    if (slot) {
        size_t n_ids = c->ids.n - first, off = (n + 3) & ~(size_t)3;
        char *blob = malloc(off + n_ids * sizeof(int32_t));
        if (blob) {   /* a failed cache insert only costs speed */
            memcpy(blob, w, n);
            /* a word can yield no ids (ids.p may still be NULL then) */
            if (n_ids) memcpy(blob + off, c->ids.p + first, n_ids * sizeof(int32_t));
            free(slot->blob);
            *slot = (cache_slot){h, blob, (uint32_t)n, (uint32_t)n_ids};
        }
    }
    return 0;
}

/* one word through the model: ignore_merges, then BPE on the parts no merge
 * can join (the whole word unless the vocab has cut characters) */
static int bpe_word(const fsdp_tokenizer *t, enc_ctx *c, const char *w, size_t n) {
    if (n == 0) return 0;
    if (t->ignore_merges) {
        int32_t id = smap_get(&t->vocab, w, n);
        if (id >= 0) return iv_push(&c->ids, id) ? OOM() : 0;
    }
    if (!t->cut) return bpe_part(t, c, w, n);
    const unsigned char *p = (const unsigned char *)w;
    size_t start = 0;
    for (size_t i = 0; i < n;) {
        int len = u8_len(p[i]);
        if (i > start && len <= 3) {
            uint32_t cp = u8_decode(p + i, len);
            if (t->cut[cp >> 3] & (1u << (cp & 7))) { TRY(bpe_part(t, c, w + start, i - start)); start = i; }
        }
        i += (size_t)len;
    }
    return bpe_part(t, c, w + start, n - start);
}

/* ---- normalizers ----------------------------------------------------------- */

/* out = s with every match of p replaced by text */
static int replace_all(const pattern *p, pcre2_match_data *md, const char *s, size_t n,
                       const char *text, size_t text_len, sbuf *out) {
    out->n = 0;
    size_t from = 0, copied = 0, ms, me, last_end = (size_t)-1;
    for (;;) {
        int rc = pattern_next(p, md, s, n, from, &ms, &me);
        if (rc < 0) return rc;
        if (rc == 0) break;
        if (ms == me && me == last_end) {   /* empty match right after a match */
            from = me + (me < n ? (size_t)u8_len((unsigned char)s[me]) : 1);
            continue;
        }
        if (sb_put(out, s + copied, ms - copied) || sb_put(out, text, text_len)) return OOM();
        copied = me;
        last_end = me;
        from = ms == me ? me + (me < n ? (size_t)u8_len((unsigned char)s[me]) : 1) : me;
    }
    if (sb_put(out, s + copied, n - copied)) return OOM();
    return 0;
}

/* Runs the normalizer on s[0, n); *res points at the result, which lives in
 * c->norm[0] or [1] (or is s itself when there are no steps). */
static int normalize(const fsdp_tokenizer *t, enc_ctx *c, const char *s, size_t n, const char **res,
                     size_t *res_len) {
    const char *cur = s;
    size_t len = n;
    int which = 0;   /* the buffer written next: never the one cur is in */
    for (int i = 0; i < t->n_norm; i++) {
        const norm_step *st = &t->norm[i];
        sbuf *out = &c->norm[which];
        if (st->kind == NORM_PREPEND) {
            if (len == 0) continue;
            out->n = 0;
            if (sb_put(out, st->text, st->text_len) || sb_put(out, cur, len)) return OOM();
        } else if (st->kind == NORM_REPLACE) {
            TRY(replace_all(&st->pat, c->md, cur, len, st->text, st->text_len, out));
        } else {   /* NORM_STRIP */
            size_t lead = st->left ? space_prefix(cur, len) : 0;
            size_t trail = st->right && lead < len ? space_suffix(cur + lead, len - lead) : 0;
            out->n = 0;
            if (sb_put(out, cur + lead, len - lead - trail)) return OOM();
        }
        cur = out->p ? out->p : "";
        len = out->n;
        which ^= 1;
    }
    *res = cur;
    *res_len = len;
    return 0;
}

/* ---- pre-tokenizers -------------------------------------------------------- */

static int run_pre(const fsdp_tokenizer *t, enc_ctx *c, int stage, const char *s, size_t n, int at_start);

/* sends the non-empty pieces of buf to the next stage */
static int emit_pieces(const fsdp_tokenizer *t, enc_ctx *c, int stage, const char *buf, const seg *p,
                       size_t np, int at_start) {
    for (size_t i = 0; i < np; i++)
        if (p[i].e > p[i].s) TRY(run_pre(t, c, stage + 1, buf + p[i].s, p[i].e - p[i].s, at_start && p[i].s == 0));
    return 0;
}

static int pre_split(const fsdp_tokenizer *t, enc_ctx *c, int stage, const pattern *pat, int behavior,
                     int invert, const char *s, size_t n, int at_start) {
    stage_buf *sb = &c->stage[stage];
    size_t nseg, nout;
    TRY(find_segments(pat, c->md, s, n, &sb->segs, &sb->segs_cap, &nseg));
    if (invert)
        for (size_t i = 0; i < nseg; i++) sb->segs[i].match = !sb->segs[i].match;
    TRY(apply_behavior(behavior, sb->segs, nseg, &sb->outs, &sb->outs_cap, &nout));
    return emit_pieces(t, c, stage, s, sb->outs, nout, at_start);
}

/* ByteLevel: optional leading space, the GPT-2 split, each byte to its character */
static int pre_byte_level(const fsdp_tokenizer *t, enc_ctx *c, int stage, const pre_step *st,
                          const char *s, size_t n, int at_start) {
    stage_buf *sb = &c->stage[stage];
    if (st->add_prefix_space && s[0] != ' ') {
        sb->a.n = 0;
        if (sb_put(&sb->a, " ", 1) || sb_put(&sb->a, s, n)) return OOM();
        s = sb->a.p;
        n = sb->a.n;
    }
    size_t nseg = 1;
    if (st->use_regex) TRY(find_segments(&t->gpt2, c->md, s, n, &sb->segs, &sb->segs_cap, &nseg));
    for (size_t i = 0; i < nseg; i++) {
        size_t ps = st->use_regex ? sb->segs[i].s : 0, pe = st->use_regex ? sb->segs[i].e : n;
        if (pe == ps) continue;
        if (sb_reserve(&sb->b, 2 * (pe - ps))) return OOM();
        char *o = sb->b.p;
        for (size_t k = ps; k < pe; k++) {
            unsigned char byte = (unsigned char)s[k];
            memcpy(o, t->byte_char[byte], 2);
            o += t->byte_char_len[byte];
        }
        sb->b.n = (size_t)(o - sb->b.p);
        TRY(run_pre(t, c, stage + 1, sb->b.p, sb->b.n, at_start && ps == 0));
    }
    return 0;
}

/* Metaspace: spaces become the replacement, which may be prepended; then
 * optionally a cut before every replacement character */
static int pre_metaspace(const fsdp_tokenizer *t, enc_ctx *c, int stage, const pre_step *st,
                         const char *s, size_t n, int at_start) {
    stage_buf *sb = &c->stage[stage];
    sbuf *o = &sb->a;
    o->n = 0;
    int starts = n >= (size_t)st->rep_len && memcmp(s, st->rep, (size_t)st->rep_len) == 0;
    if (!starts && s[0] == ' ') starts = 1;   /* the space about to be replaced */
    if (!starts && (st->prepend == PREPEND_ALWAYS || (st->prepend == PREPEND_FIRST && at_start)))
        if (sb_put(o, st->rep, (size_t)st->rep_len)) return OOM();
    for (size_t i = 0; i < n; i++) {
        if (s[i] == ' ') { if (sb_put(o, st->rep, (size_t)st->rep_len)) return OOM(); }
        else if (sb_put(o, s + i, 1)) return OOM();
    }
    if (!st->split) return run_pre(t, c, stage + 1, o->p, o->n, at_start);
    return pre_split(t, c, stage, &st->pat, SPLIT_MERGED_NEXT, 0, o->p, o->n, at_start);
}

static int run_pre(const fsdp_tokenizer *t, enc_ctx *c, int stage, const char *s, size_t n, int at_start) {
    if (n == 0) return 0;
    if (stage == t->n_pre) return bpe_word(t, c, s, n);
    const pre_step *st = &t->pre[stage];
    switch (st->kind) {
    case PRE_BYTELEVEL: return pre_byte_level(t, c, stage, st, s, n, at_start);
    case PRE_METASPACE: return pre_metaspace(t, c, stage, st, s, n, at_start);
    default: return pre_split(t, c, stage, &st->pat, st->behavior, st->invert, s, n, at_start);
    }
}

/* ---- added tokens ------------------------------------------------------------ */

static int trie_add(trie *tr, const char *s, size_t n, int32_t token) {
    if (tr->n == 0) {
        if (grow((void **)&tr->node, &tr->cap, 1, sizeof *tr->node)) return OOM();
        tr->node[0] = (trie_node){-1, -1, -1, 0};
        tr->n = 1;
    }
    tr->first[(unsigned char)s[0] >> 3] |= (uint8_t)(1u << ((unsigned char)s[0] & 7));
    int32_t cur = 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char b = (unsigned char)s[i];
        int32_t ch = tr->node[cur].child;
        while (ch >= 0 && tr->node[ch].byte != b) ch = tr->node[ch].sibling;
        if (ch < 0) {
            if (grow((void **)&tr->node, &tr->cap, tr->n + 1, sizeof *tr->node)) return OOM();
            ch = (int32_t)tr->n++;
            tr->node[ch] = (trie_node){-1, tr->node[cur].child, -1, b};
            tr->node[cur].child = ch;
        }
        cur = ch;
    }
    if (tr->node[cur].token < 0) tr->node[cur].token = token;   /* first wins on duplicates */
    return 0;
}

/* leftmost-longest match at or after `from`: the token index, -1 when none */
static int32_t trie_find(const trie *tr, const char *s, size_t n, size_t from, size_t *ms, size_t *me) {
    if (tr->n == 0) return -1;
    for (size_t p = from; p < n; p++) {
        unsigned char b0 = (unsigned char)s[p];
        if (!(tr->first[b0 >> 3] & (1u << (b0 & 7)))) continue;
        int32_t cur = 0, best = -1;
        size_t best_end = 0;
        for (size_t i = p; i < n; i++) {
            int32_t ch = tr->node[cur].child;
            while (ch >= 0 && tr->node[ch].byte != (unsigned char)s[i]) ch = tr->node[ch].sibling;
            if (ch < 0) break;
            cur = ch;
            if (tr->node[cur].token >= 0) { best = tr->node[cur].token; best_end = i + 1; }
        }
        if (best >= 0) { *ms = p; *me = best_end; return best; }
    }
    return -1;
}

/* is the character ending at s[end) (or starting at s[start]) a word
 * character (Rust regex \w)? */
static int word_char_at(const fsdp_tokenizer *t, pcre2_match_data *md, const char *s, size_t n,
                        size_t start) {
    int len = u8_len((unsigned char)s[start]);
    return pcre2_match(t->word_re, (PCRE2_SPTR)s + start, start + (size_t)len <= n ? (size_t)len : n - start,
                       0, PCRE2_ANCHORED | PCRE2_NO_UTF_CHECK, md, NULL) >= 0;
}

static int word_char_before(const fsdp_tokenizer *t, pcre2_match_data *md, const char *s, size_t end) {
    size_t st = end - 1;
    while (st > 0 && ((unsigned char)s[st] & 0xC0) == 0x80) st--;
    return word_char_at(t, md, s, end, st);
}

/* The library's AddedVocabulary::find_matches: cuts s into added tokens
 * (match = 1 + index into t->added) and the text between them (match = 0). */
static int split_added(const fsdp_tokenizer *t, enc_ctx *c, const trie *tr, const char *s, size_t n,
                       seg **v, size_t *cap, size_t *count) {
    *count = 0;
    size_t start_offset = 0, from = 0, ms, me;
    int32_t k;
    while ((k = trie_find(tr, s, n, from, &ms, &me)) >= 0) {
        const added_token *a = &t->added[k];
        from = me;
        if (a->single_word) {
            int start_space = ms == 0 || !word_char_before(t, c->md, s, ms);
            int stop_space = me == n || !word_char_at(t, c->md, s, n, me);
            if (!start_space || !stop_space) continue;
        }
        size_t start = ms, stop = me;
        if (a->lstrip) {
            size_t ws_start = ms - space_suffix(s, ms);
            start = ws_start > start_offset ? ws_start : start_offset;
        }
        if (a->rstrip) {
            stop += space_prefix(s + me, n - me);
            from = stop;   /* the library resumes at the match end; differs only if a
                              token starting with white space follows */
        }
        if (start_offset < start) TRY(seg_push(v, count, cap, start_offset, start, 0));
        TRY(seg_push(v, count, cap, start, stop, 1 + k));
        start_offset = stop;
    }
    if (start_offset != n) TRY(seg_push(v, count, cap, start_offset, n, 0));
    return 0;
}

/* ---- encode -------------------------------------------------------------------- */

static int encode_text(fsdp_tokenizer *t, enc_ctx *c, const char *text, size_t len, int add_special) {
    if (add_special)
        for (int i = 0; i < t->n_before; i++) TRY(iv_push(&c->ids, t->before[i]) ? OOM() : 0);
    size_t nraw;
    TRY(split_added(t, c, &t->raw_trie, text, len, &c->added, &c->added_cap, &nraw));
    for (size_t i = 0; i < nraw; i++) {
        seg r = c->added[i];
        if (r.match) { TRY(iv_push(&c->ids, t->added[r.match - 1].id) ? OOM() : 0); continue; }
        if (r.e == r.s) continue;
        const char *norm;
        size_t norm_len, nn;
        TRY(normalize(t, c, text + r.s, r.e - r.s, &norm, &norm_len));
        TRY(split_added(t, c, &t->norm_trie, norm, norm_len, &c->added2, &c->added2_cap, &nn));
        for (size_t j = 0; j < nn; j++) {
            seg p = c->added2[j];
            if (p.match) { TRY(iv_push(&c->ids, t->added[p.match - 1].id) ? OOM() : 0); continue; }
            if (p.e == p.s) continue;
            TRY(run_pre(t, c, 0, norm + p.s, p.e - p.s, r.s == 0 && p.s == 0));
        }
    }
    if (add_special)
        for (int i = 0; i < t->n_after; i++) TRY(iv_push(&c->ids, t->after[i]) ? OOM() : 0);
    return 0;
}

int fsdp_tokenizer_encode(fsdp_tokenizer *t, const char *text, int64_t len, int add_special, int32_t *out,
                          int64_t cap, int64_t *n_out) {
    FSDP_CHECK_ARG(t && n_out, "tokenizer encode: tokenizer and n_out must not be NULL");
    FSDP_CHECK_ARG(len >= 0 && (text || len == 0), "tokenizer encode: bad text (len %lld)", (long long)len);
    FSDP_CHECK_ARG(cap >= 0 && (out || cap == 0), "tokenizer encode: bad output (cap %lld)", (long long)cap);
    *n_out = 0;
    if (!text) text = "";
    int64_t bad = u8_invalid_at(text, (size_t)len);
    if (bad >= 0)
        return fsdp_error(FSDP_ERR_INVALID, "tokenizer encode: the text is not valid UTF-8 at byte %lld (0x%02x)",
                          (long long)bad, (unsigned char)text[bad]);
    enc_ctx *c = ctx_get(t);
    if (!c) return FSDP_ERR_OOM;
    int rc = encode_text(t, c, text, (size_t)len, add_special);
    if (rc == 0) {
        *n_out = (int64_t)c->ids.n;
        if ((int64_t)c->ids.n <= cap) { if (c->ids.n) memcpy(out, c->ids.p, c->ids.n * sizeof(int32_t)); }
        else if (out)
            rc = fsdp_error(FSDP_ERR_INVALID, "tokenizer encode: the output holds %lld ids but the text needs %lld",
                            (long long)cap, (long long)c->ids.n);
    }
    ctx_put(t, c);
    return rc;
}

/* ---- decode -------------------------------------------------------------------- */

/* a list of strings: string i is data[off[i], off[i+1]) */
typedef struct strlist { sbuf data; int64_t *off; size_t n, cap; } strlist;

static int sl_push(strlist *l, const char *s, size_t n) {
    if (grow((void **)&l->off, &l->cap, l->n + 2, sizeof *l->off)) return OOM();
    if (l->n == 0) l->off[0] = 0;
    if (sb_put(&l->data, s, n)) return OOM();
    l->off[++l->n] = (int64_t)l->data.n;
    return 0;
}

static void sl_clear(strlist *l) { l->n = 0; l->data.n = 0; }
#define SL_STR(l, i) ((l)->data.p + (l)->off[i])
#define SL_LEN(l, i) ((size_t)((l)->off[(i) + 1] - (l)->off[i]))

/* <0xXX> -> the byte, or -1 */
static int byte_token(const char *s, size_t n) {
    if (n != 6 || memcmp(s, "<0x", 3) != 0 || s[5] != '>') return -1;
    int v = 0;
    for (int i = 3; i < 5; i++) {
        char h = s[i];
        int d = h >= '0' && h <= '9' ? h - '0'
              : h >= 'a' && h <= 'f' ? h - 'a' + 10
              : h >= 'A' && h <= 'F' ? h - 'A' + 10 : -1;
        if (d < 0) return -1;
        v = v * 16 + d;
    }
    return v;
}

/* ByteFallback: runs of <0xXX> become their string when valid UTF-8, else
 * one U+FFFD per byte */
static int flush_bytes(strlist *out, sbuf *bytes) {
    if (!bytes->n) return 0;
    if (u8_invalid_at(bytes->p, bytes->n) < 0) TRY(sl_push(out, bytes->p, bytes->n));
    else for (size_t k = 0; k < bytes->n; k++) TRY(sl_push(out, "\xEF\xBF\xBD", 3));
    bytes->n = 0;
    return 0;
}

static int decode_step(const fsdp_tokenizer *t, const dec_step *st, const strlist *in, strlist *out,
                       sbuf *tmp, pcre2_match_data *md) {
    sl_clear(out);
    switch (st->kind) {
    case DEC_BYTELEVEL: {
        tmp->n = 0;
        for (size_t i = 0; i < in->n; i++) {
            const unsigned char *s = (const unsigned char *)SL_STR(in, i);
            size_t n = SL_LEN(in, i), start = tmp->n, k = 0;
            while (k < n) {
                int len = u8_len(s[k]);
                uint32_t cp = u8_decode(s + k, len);
                if (cp >= 0x144 || t->char_byte[cp] < 0) break;
                char b = (char)t->char_byte[cp];
                if (sb_put(tmp, &b, 1)) return OOM();
                k += (size_t)len;
            }
            if (k < n) {   /* not all byte characters: the token's own bytes */
                tmp->n = start;
                if (sb_put(tmp, s, n)) return OOM();
            }
        }
        sbuf text = {0};
        int rc = u8_append_lossy(&text, (const unsigned char *)tmp->p, tmp->n);
        if (!rc) rc = sl_push(out, text.p ? text.p : "", text.n);
        free(text.p);
        return rc;
    }
    case DEC_REPLACE:
        for (size_t i = 0; i < in->n; i++) {
            TRY(replace_all(&st->pat, md, SL_STR(in, i), SL_LEN(in, i), st->text, st->text_len, tmp));
            TRY(sl_push(out, tmp->p ? tmp->p : "", tmp->n));
        }
        return 0;
    case DEC_BYTEFALLBACK:
        tmp->n = 0;
        for (size_t i = 0; i < in->n; i++) {
            int b = byte_token(SL_STR(in, i), SL_LEN(in, i));
            if (b >= 0) { char c = (char)b; if (sb_put(tmp, &c, 1)) return OOM(); continue; }
            TRY(flush_bytes(out, tmp));
            TRY(sl_push(out, SL_STR(in, i), SL_LEN(in, i)));
        }
        return flush_bytes(out, tmp);
    case DEC_FUSE:
        return sl_push(out, in->n ? SL_STR(in, 0) : "", in->n ? (size_t)(in->off[in->n] - in->off[0]) : 0);
    case DEC_STRIP:
        for (size_t i = 0; i < in->n; i++) {
            const unsigned char *s = (const unsigned char *)SL_STR(in, i);
            size_t n = SL_LEN(in, i), cut = 0, end = n, nchars = 0;
            for (size_t k = 0; k < n; k += (size_t)u8_len(s[k])) nchars++;
            int taken = 0;
            while (taken < st->start && cut < n) {
                int len = u8_len(s[cut]);
                if (u8_decode(s + cut, len) != st->cp) break;
                cut += (size_t)len;
                taken++;
            }
            size_t left = nchars - (size_t)taken;
            for (int k = 0; k < st->stop && (size_t)k < left && end > cut; k++) {
                size_t p = end - 1;
                while (p > 0 && (s[p] & 0xC0) == 0x80) p--;
                if (u8_decode(s + p, (int)(end - p)) != st->cp) break;
                end = p;
            }
            TRY(sl_push(out, (const char *)s + cut, end - cut));
        }
        return 0;
    default:   /* DEC_METASPACE */
        for (size_t i = 0; i < in->n; i++) {
            const unsigned char *s = (const unsigned char *)SL_STR(in, i);
            size_t n = SL_LEN(in, i);
            tmp->n = 0;
            for (size_t k = 0; k < n;) {
                int len = u8_len(s[k]);
                if (u8_decode(s + k, len) != st->cp) { if (sb_put(tmp, s + k, (size_t)len)) return OOM(); }
                else if (!(i == 0 && st->prepend != PREPEND_NEVER) && sb_put(tmp, " ", 1)) return OOM();
                k += (size_t)len;
            }
            TRY(sl_push(out, tmp->p ? tmp->p : "", tmp->n));
        }
        return 0;
    }
}

static const char *token_of(const fsdp_tokenizer *t, int32_t id, size_t *len) {
    int32_t a = t->added_of_id[id];
    if (a >= 0) { *len = t->added[a].len; return t->added[a].content; }
    *len = t->model_len[id];
    return t->model_tok[id];
}

static int decode_ids(const fsdp_tokenizer *t, const int32_t *ids, int64_t n, int skip_special, sbuf *res) {
    strlist l[2];
    memset(l, 0, sizeof l);
    sbuf tmp = {0};
    pcre2_match_data *md = NULL;
    int rc = 0, cur = 0;
    for (int64_t i = 0; i < n && !rc; i++) {
        int32_t id = ids[i];
        if (id < 0 || id >= t->n_ids) {
            rc = fsdp_error(FSDP_ERR_INVALID, "tokenizer decode: id %d at position %lld is outside the vocabulary (size %d)",
                            id, (long long)i, t->n_ids);
            break;
        }
        size_t len;
        const char *tok = token_of(t, id, &len);
        if (!tok || (skip_special && t->special[id])) continue;   /* holes are skipped, as in the library */
        rc = sl_push(&l[cur], tok, len);
    }
    if (!rc && t->n_dec && !(md = pcre2_match_data_create(1, NULL))) rc = OOM();
    for (int k = 0; k < t->n_dec && !rc; k++, cur ^= 1) rc = decode_step(t, &t->dec[k], &l[cur], &l[cur ^ 1], &tmp, md);
    res->n = 0;
    for (size_t i = 0; i < l[cur].n && !rc; i++) {
        if (!t->has_decoder && i > 0 && sb_put(res, " ", 1)) rc = OOM();   /* no decoder: joined by spaces */
        else if (sb_put(res, SL_STR(&l[cur], i), SL_LEN(&l[cur], i))) rc = OOM();
    }
    for (int k = 0; k < 2; k++) { free(l[k].data.p); free(l[k].off); }
    free(tmp.p);
    if (md) pcre2_match_data_free(md);
    return rc;
}

int fsdp_tokenizer_decode(fsdp_tokenizer *t, const int32_t *ids, int64_t n, int skip_special, char *out,
                          int64_t cap, int64_t *len) {
    FSDP_CHECK_ARG(t && len, "tokenizer decode: tokenizer and len must not be NULL");
    FSDP_CHECK_ARG(n >= 0 && (ids || n == 0), "tokenizer decode: bad ids (n %lld)", (long long)n);
    FSDP_CHECK_ARG(cap >= 0 && (out || cap == 0), "tokenizer decode: bad output (cap %lld)", (long long)cap);
    *len = 0;
    sbuf res = {0};
    int rc = decode_ids(t, ids, n, skip_special, &res);
    if (rc == 0) {
        *len = (int64_t)res.n;
        if ((int64_t)res.n < cap) { memcpy(out, res.p ? res.p : "", res.n); out[res.n] = 0; }
        else if (out)
            rc = fsdp_error(FSDP_ERR_INVALID,
                            "tokenizer decode: the output holds %lld bytes but the text needs %lld (+1 for the NUL)",
                            (long long)cap, (long long)res.n);
    }
    free(res.p);
    return rc;
}

/* ---- queries ------------------------------------------------------------------- */

int32_t fsdp_tokenizer_vocab_size(const fsdp_tokenizer *t) { return t ? t->n_ids : 0; }

int32_t fsdp_tokenizer_token_to_id(const fsdp_tokenizer *t, const char *token) {
    if (!t || !token) return -1;
    size_t n = strlen(token);
    int32_t id = smap_get(&t->added_map, token, n);
    return id >= 0 ? id : smap_get(&t->vocab, token, n);
}

const char *fsdp_tokenizer_id_to_token(const fsdp_tokenizer *t, int32_t id) {
    if (!t || id < 0 || id >= t->n_ids) return NULL;
    size_t len;
    return token_of(t, id, &len);
}

int32_t fsdp_tokenizer_special_id(const fsdp_tokenizer *t, int which) {
    if (!t || which < 0 || which > 3) return -1;
    return t->special_id[which];
}

int fsdp_tokenizer_num_added(const fsdp_tokenizer *t, int where) {
    if (!t) return 0;
    return where == 0 ? t->n_before : t->n_after;
}

int fsdp_tokenizer_is_special(const fsdp_tokenizer *t, int32_t id) {
    return t && id >= 0 && id < t->n_ids && t->special[id];
}

/* ---- loading -------------------------------------------------------------------- */

typedef struct loader { const char *path; fsdp_tokenizer *t; const json_t *root; } loader;

/* "<file>: <field>: <message>" */
__attribute__((format(printf, 4, 5)))
static int lerr(const loader *L, int code, const char *field, const char *fmt, ...) {
    char msg[768];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    return fsdp_error(code, "%s: %s: %s", L->path, field, msg);
}

/* known: the library's other types of that kind, " A B C " */
static int unknown_type(const loader *L, const char *field, const char *type, const char *known,
                        const char *supported) {
    char where[300], spaced[128];
    snprintf(where, sizeof where, "%s.type", field);
    snprintf(spaced, sizeof spaced, " %s ", type);
    if (known && strstr(known, spaced))
        return lerr(L, FSDP_ERR_UNSUPPORTED, where, "\"%s\" is not supported (supported: %s)", type, supported);
    return lerr(L, FSDP_ERR_UNSUPPORTED, where, "unknown type \"%s\" (supported: %s)", type, supported);
}

/* the "type" string of an object */
static int get_type(const loader *L, const json_t *obj, const char *field, const char **type) {
    if (!json_is_object(obj)) return lerr(L, FSDP_ERR_FORMAT, field, "is not a JSON object");
    const json_t *v = json_object_get(obj, "type");
    if (!json_is_string(v))
        return lerr(L, FSDP_ERR_FORMAT, field, "\"type\" is %s", v ? "not a string" : "missing");
    *type = json_string_value(v);
    return 0;
}

/* a boolean field; missing or null gives def */
static int get_bool(const loader *L, const json_t *obj, const char *field, const char *key, int def, int *out) {
    const json_t *v = json_object_get(obj, key);
    if (!v || json_is_null(v)) { *out = def; return 0; }
    if (!json_is_boolean(v)) return lerr(L, FSDP_ERR_FORMAT, field, "\"%s\" is not true or false", key);
    *out = json_is_true(v);
    return 0;
}

/* a string field (copied, NUL-terminated); missing or null gives NULL unless required */
static int get_str(const loader *L, const json_t *obj, const char *field, const char *key, int required,
                   char **out, size_t *len) {
    const json_t *v = json_object_get(obj, key);
    *out = NULL;
    if (len) *len = 0;
    if (!v || json_is_null(v)) {
        if (required) return lerr(L, FSDP_ERR_FORMAT, field, "\"%s\" is missing", key);
        return 0;
    }
    if (!json_is_string(v)) return lerr(L, FSDP_ERR_FORMAT, field, "\"%s\" is not a string", key);
    size_t n = json_string_length(v);
    *out = malloc(n + 1);
    if (!*out) return OOM();
    memcpy(*out, json_string_value(v), n + 1);
    if (len) *len = n;
    return 0;
}

/* a one-character string field -> its code point and UTF-8 */
static int get_char(const loader *L, const json_t *obj, const char *field, const char *key, uint32_t *cp,
                    char *utf8, int *utf8_len) {
    const json_t *v = json_object_get(obj, key);
    if (!json_is_string(v))
        return lerr(L, FSDP_ERR_FORMAT, field, "\"%s\" is %s", key, v ? "not a string" : "missing");
    const unsigned char *s = (const unsigned char *)json_string_value(v);
    size_t n = json_string_length(v);
    if (n == 0 || (size_t)u8_len(s[0]) != n)
        return lerr(L, FSDP_ERR_FORMAT, field, "\"%s\" must be a single character, not \"%s\"", key, (const char *)s);
    *cp = u8_decode(s, (int)n);
    if (utf8) { memcpy(utf8, s, n); *utf8_len = (int)n; }
    return 0;
}

/* {"String": "..."} or {"Regex": "..."} */
static int get_pattern(const loader *L, const json_t *obj, const char *field, pattern *p) {
    char where[300];
    snprintf(where, sizeof where, "%s.pattern", field);
    const json_t *v = json_object_get(obj, "pattern");
    const json_t *str = json_object_get(v, "String"), *re = json_object_get(v, "Regex");
    if (!json_is_object(v) || (!json_is_string(str) && !json_is_string(re)))
        return lerr(L, FSDP_ERR_FORMAT, where, "is not {\"String\": ...} or {\"Regex\": ...}");
    if (json_is_string(str)) {
        size_t n = json_string_length(str);
        if (n == 0) return lerr(L, FSDP_ERR_FORMAT, where, "the String pattern is empty");
        p->lit = malloc(n + 1);
        if (!p->lit) return OOM();
        memcpy(p->lit, json_string_value(str), n + 1);
        p->lit_len = n;
        return 0;
    }
    char err[300];
    p->re = compile_regex(json_string_value(re), json_string_length(re), 1, err, sizeof err);
    if (!p->re)
        return lerr(L, FSDP_ERR_FORMAT, where, "regex \"%s\" does not compile: %s", json_string_value(re), err);
    return 0;
}

static int literal_pattern(pattern *p, const char *s, size_t n) {
    p->lit = malloc(n + 1);
    if (!p->lit) return OOM();
    memcpy(p->lit, s, n);
    p->lit[n] = 0;
    p->lit_len = n;
    return 0;
}

/* ---- model ------------------------------------------------------------------ */

/* one merge -> its two tokens (pointing into the JSON) */
static int merge_parts(const loader *L, const json_t *m, size_t i, const char **a, size_t *alen, const char **b,
                       size_t *blen) {
    char where[64];
    snprintf(where, sizeof where, "model.merges[%zu]", i);
    if (json_is_string(m)) {
        const char *s = json_string_value(m), *sp = strchr(s, ' ');
        if (!sp || strchr(sp + 1, ' '))
            return lerr(L, FSDP_ERR_FORMAT, where, "\"%s\" is not two tokens separated by one space", s);
        *a = s; *alen = (size_t)(sp - s);
        *b = sp + 1; *blen = strlen(sp + 1);
        return 0;
    }
    if (json_is_array(m) && json_array_size(m) == 2 && json_is_string(json_array_get(m, 0)) &&
        json_is_string(json_array_get(m, 1))) {
        *a = json_string_value(json_array_get(m, 0)); *alen = json_string_length(json_array_get(m, 0));
        *b = json_string_value(json_array_get(m, 1)); *blen = json_string_length(json_array_get(m, 1));
        return 0;
    }
    return lerr(L, FSDP_ERR_FORMAT, where, "is neither \"a b\" nor [\"a\", \"b\"]");
}

/* Characters a word can be cut before without changing its BPE result:
 * those that are a token by themselves and never appear in a token except at
 * its start. A merge (a, b) whose b starts with such a character would make
 * a token holding it further in, so no merge joins across the cut; unknown
 * characters cannot span it either (it is known). SentencePiece vocabularies
 * have ▁ as one: their words (whole texts, with no pre-tokenizer) fall apart
 * into the cacheable pieces "▁the", "▁king", ... Off with ignore_merges and
 * with prefixes or suffixes, which depend on where the word starts and ends. */
static int find_cut_chars(fsdp_tokenizer *t) {
    if (t->ignore_merges || t->prefix || t->suffix) return 0;
    uint8_t *inner = calloc(0x10000 / 8, 1), *cut = calloc(0x10000 / 8, 1);
    if (!inner || !cut) { free(inner); free(cut); return OOM(); }
    for (int32_t id = 0; id < t->n_ids; id++) {
        const unsigned char *s = (const unsigned char *)t->model_tok[id];
        size_t n = t->model_len[id];
        for (size_t i = s && n ? (size_t)u8_len(s[0]) : n; i < n; i += (size_t)u8_len(s[i])) {
            int len = u8_len(s[i]);
            if (len <= 3) { uint32_t cp = u8_decode(s + i, len); inner[cp >> 3] |= (uint8_t)(1u << (cp & 7)); }
        }
    }
    int any = 0;
    for (uint32_t cp = 0; cp < 0x10000; cp++)
        if (t->cp_id[cp] >= 0 && !(inner[cp >> 3] & (1u << (cp & 7)))) {
            cut[cp >> 3] |= (uint8_t)(1u << (cp & 7));
            any = 1;
        }
    free(inner);
    if (any) t->cut = cut;
    else free(cut);
    return 0;
}

static int parse_model(const loader *L, fsdp_tokenizer *t, const json_t *model, int32_t max_added_id) {
    if (!json_is_object(model)) return lerr(L, FSDP_ERR_FORMAT, "model", "is %s", model ? "not a JSON object" : "missing");
    const json_t *type = json_object_get(model, "type");
    if (type && !json_is_string(type)) return lerr(L, FSDP_ERR_FORMAT, "model", "\"type\" is not a string");
    const char *ty = type ? json_string_value(type) : "BPE";   /* old files leave it out */
    if (strcmp(ty, "BPE") != 0)
        return unknown_type(L, "model", ty, " WordPiece WordLevel Unigram ", "BPE");

    const json_t *vocab = json_object_get(model, "vocab"), *merges = json_object_get(model, "merges");
    if (!json_is_object(vocab))
        return lerr(L, FSDP_ERR_FORMAT, "model.vocab", "is %s", vocab ? "not a JSON object" : "missing");
    /* as the tokenizers library ("Missing vocab/merges"): a BPE model needs
     * a merges list, which may be empty */
    if (!merges) return lerr(L, FSDP_ERR_FORMAT, "model.merges", "is missing (a BPE model needs a merges list; [] for none)");
    if (!json_is_array(merges)) return lerr(L, FSDP_ERR_FORMAT, "model.merges", "is not an array");

    const json_t *dropout = json_object_get(model, "dropout");
    if (dropout && !json_is_null(dropout) && !(json_is_number(dropout) && json_number_value(dropout) == 0))
        return lerr(L, FSDP_ERR_UNSUPPORTED, "model.dropout",
                    "BPE dropout (a training-time option) is not supported; set it to null");
    TRY(get_bool(L, model, "model", "fuse_unk", 0, &t->fuse_unk));
    TRY(get_bool(L, model, "model", "byte_fallback", 0, &t->byte_fallback));
    TRY(get_bool(L, model, "model", "ignore_merges", 0, &t->ignore_merges));
    TRY(get_str(L, model, "model", "unk_token", 0, &t->unk_token, NULL));
    TRY(get_str(L, model, "model", "continuing_subword_prefix", 0, &t->prefix, &t->prefix_len));
    TRY(get_str(L, model, "model", "end_of_word_suffix", 0, &t->suffix, &t->suffix_len));

    /* ids: the vocab's, then room for added tokens */
    int32_t max_id = max_added_id;
    size_t text_bytes = 0;
    const char *key;
    const json_t *v;
    json_object_foreach((json_t *)vocab, key, v) {
        if (!json_is_integer(v) || json_integer_value(v) < 0 || json_integer_value(v) > MAX_TOKEN_ID)
            return lerr(L, FSDP_ERR_FORMAT, "model.vocab", "the id of \"%s\" is not an integer in [0, %d]", key,
                        MAX_TOKEN_ID);
        if (json_integer_value(v) > max_id) max_id = (int32_t)json_integer_value(v);
        text_bytes += strlen(key) + 1;
    }
    /* tables are indexed by id: ids far beyond the number of tokens would
     * be a huge allocation for nothing (an id of 1e9: gigabytes) */
    size_t entries = json_object_size(vocab) + (json_is_array(json_object_get(L->root, "added_tokens"))
                                                ? json_array_size(json_object_get(L->root, "added_tokens")) : 0);
    if ((size_t)max_id >= 2 * entries + 1024) {
        const char *which = "added_tokens";
        json_object_foreach((json_t *)vocab, key, v)
            if (json_integer_value(v) == max_id) { which = key; break; }
        return lerr(L, FSDP_ERR_FORMAT, max_id > max_added_id ? "model.vocab" : "added_tokens",
                    "id %d (of \"%s\") is far beyond the %zu tokens the file has: ids must be dense (below %zu here)",
                    max_id, which, entries, 2 * entries + 1024);
    }
    t->n_ids = max_id + 1;
    t->model_tok = calloc((size_t)t->n_ids, sizeof *t->model_tok);
    t->model_len = calloc((size_t)t->n_ids, sizeof *t->model_len);
    t->model_text = malloc(text_bytes + 1);
    t->cp_id = malloc(0x10000 * sizeof *t->cp_id);
    if (!t->model_tok || !t->model_len || !t->model_text || !t->cp_id) return OOM();
    TRY(smap_init(&t->vocab, json_object_size(vocab)));
    char *text = t->model_text;
    json_object_foreach((json_t *)vocab, key, v) {
        /* two tokens with one id: both encode to it, the later one decodes */
        size_t n = strlen(key);
        int32_t id = (int32_t)json_integer_value(v);
        memcpy(text, key, n + 1);
        t->model_tok[id] = text;
        t->model_len[id] = (uint32_t)n;
        smap_put(&t->vocab, text, n, id);
        text += n + 1;
    }

    /* fast paths: one-character tokens of the BMP, the <0xXX> byte tokens */
    for (size_t i = 0; i < 0x10000; i++) t->cp_id[i] = -1;
    for (int32_t id = 0; id < t->n_ids; id++) {
        const unsigned char *s = (const unsigned char *)t->model_tok[id];
        if (s && t->model_len[id] <= 3 && t->model_len[id] > 0 && (uint32_t)u8_len(s[0]) == t->model_len[id])
            t->cp_id[u8_decode(s, (int)t->model_len[id])] = smap_get(&t->vocab, (const char *)s, t->model_len[id]);
    }
    for (int b = 0; b < 256; b++) {
        char name[8];
        snprintf(name, sizeof name, "<0x%02X>", b);
        t->byte_id[b] = smap_get(&t->vocab, name, 6);
    }
    t->unk_id = t->unk_token ? smap_get(&t->vocab, t->unk_token, strlen(t->unk_token)) : -1;
    TRY(find_cut_chars(t));

    size_t nm = merges ? json_array_size(merges) : 0;
    TRY(merge_init(&t->merges, nm));
    for (size_t i = 0; i < nm; i++) {
        const char *a = NULL, *b = NULL;
        size_t alen = 0, blen = 0;
        TRY(merge_parts(L, json_array_get(merges, i), i, &a, &alen, &b, &blen));
        char where[64];
        snprintf(where, sizeof where, "model.merges[%zu]", i);
        int32_t ia = smap_get(&t->vocab, a, alen), ib = smap_get(&t->vocab, b, blen);
        if (ia < 0 || ib < 0)
            return lerr(L, FSDP_ERR_FORMAT, where, "token \"%.*s\" is not in the vocabulary", (int)(ia < 0 ? alen : blen),
                        ia < 0 ? a : b);
        if (blen < t->prefix_len)
            return lerr(L, FSDP_ERR_FORMAT, where, "token \"%.*s\" is shorter than the continuing_subword_prefix",
                        (int)blen, b);
        /* the merged token: a followed by b without the continuing prefix */
        sbuf m = {0};
        if (sb_put(&m, a, alen) || sb_put(&m, b + t->prefix_len, blen - t->prefix_len)) { free(m.p); return OOM(); }
        int32_t id = smap_get(&t->vocab, m.p, m.n);
        if (id < 0) {
            int rc = lerr(L, FSDP_ERR_FORMAT, where, "the merged token \"%.*s\" is not in the vocabulary", (int)m.n, m.p);
            free(m.p);
            return rc;
        }
        free(m.p);
        merge_put(&t->merges, ia, ib, (uint32_t)i, id);
    }
    return 0;
}

/* ---- added tokens ------------------------------------------------------------ */

/* first pass: the largest id, so the id tables can be sized */
static int added_max_id(const loader *L, const json_t *list, int32_t *max_id) {
    *max_id = -1;
    if (!list || json_is_null(list)) return 0;
    if (!json_is_array(list)) return lerr(L, FSDP_ERR_FORMAT, "added_tokens", "is not an array");
    for (size_t i = 0; i < json_array_size(list); i++) {
        const json_t *id = json_object_get(json_array_get(list, i), "id");
        if (!json_is_integer(id) || json_integer_value(id) < 0 || json_integer_value(id) > MAX_TOKEN_ID) {
            char where[64];
            snprintf(where, sizeof where, "added_tokens[%zu]", i);
            return lerr(L, FSDP_ERR_FORMAT, where, "\"id\" is not an integer in [0, %d]", MAX_TOKEN_ID);
        }
        if (json_integer_value(id) > *max_id) *max_id = (int32_t)json_integer_value(id);
    }
    return 0;
}

static int parse_added(const loader *L, fsdp_tokenizer *t, const json_t *list) {
    size_t n = list && json_is_array(list) ? json_array_size(list) : 0;
    t->added = calloc(n ? n : 1, sizeof *t->added);
    t->added_of_id = malloc((size_t)t->n_ids * sizeof *t->added_of_id);
    t->special = calloc((size_t)t->n_ids, 1);
    if (!t->added || !t->added_of_id || !t->special) return OOM();
    for (int32_t i = 0; i < t->n_ids; i++) t->added_of_id[i] = -1;
    TRY(smap_init(&t->added_map, n));
    for (size_t i = 0; i < n; i++) {
        const json_t *o = json_array_get(list, i);
        char where[64];
        snprintf(where, sizeof where, "added_tokens[%zu]", i);
        if (!json_is_object(o)) return lerr(L, FSDP_ERR_FORMAT, where, "is not a JSON object");
        added_token a = {0};
        TRY(get_str(L, o, where, "content", 1, &a.content, &a.len));
        int ok = get_bool(L, o, where, "special", 0, &a.special) == 0 &&
                 get_bool(L, o, where, "normalized", !a.special, &a.normalized) == 0 &&
                 get_bool(L, o, where, "lstrip", 0, &a.lstrip) == 0 &&
                 get_bool(L, o, where, "rstrip", 0, &a.rstrip) == 0 &&
                 get_bool(L, o, where, "single_word", 0, &a.single_word) == 0;
        if (!ok || a.len == 0 || smap_get(&t->added_map, a.content, a.len) >= 0) {
            free(a.content);   /* empty and repeated contents are ignored, as in the library */
            if (!ok) return FSDP_ERR_FORMAT;
            continue;
        }
        /* a token the model already has keeps the model's id (the library
         * re-adds the tokens on load and warns when the file disagrees) */
        int32_t model_id = smap_get(&t->vocab, a.content, a.len);
        a.id = model_id >= 0 ? model_id : (int32_t)json_integer_value(json_object_get(o, "id"));
        t->added[t->n_added] = a;
        smap_put(&t->added_map, a.content, a.len, a.id);
        t->added_of_id[a.id] = (int32_t)t->n_added;
        if (a.special) t->special[a.id] = 1;
        t->n_added++;
    }
    return 0;
}

/* the two tries: raw contents of non-normalized tokens, normalized contents
 * of the others (special tokens first, then the rest, like the library) */
static int build_tries(fsdp_tokenizer *t) {
    enc_ctx *c = ctx_get(t);
    if (!c) return FSDP_ERR_OOM;
    int rc = 0;
    for (int pass = 0; pass < 2 && !rc; pass++) {
        for (size_t i = 0; i < t->n_added && !rc; i++) {
            added_token *a = &t->added[i];
            if (a->special != (pass == 0)) continue;
            if (!a->normalized) { rc = trie_add(&t->raw_trie, a->content, a->len, (int32_t)i); continue; }
            const char *s;
            size_t n;
            rc = normalize(t, c, a->content, a->len, &s, &n);
            if (rc) break;
            if (n == 0) continue;
            if (!(a->norm = malloc(n))) { rc = OOM(); break; }
            memcpy(a->norm, s, n);
            a->norm_len = n;
            rc = trie_add(&t->norm_trie, a->norm, n, (int32_t)i);
        }
    }
    ctx_put(t, c);
    return rc;
}

/* ---- normalizer, pre-tokenizer, decoder, post-processor -------------------- */

static const char NORM_SUPPORTED[] = "Prepend, Replace, Strip, Sequence";
static const char NORM_KNOWN[] = " NFC NFD NFKC NFKD Lowercase BertNormalizer StripAccents Precompiled Nmt ByteLevel Append ";

static int parse_normalizer(const loader *L, fsdp_tokenizer *t, const json_t *o, const char *field) {
    if (!o || json_is_null(o)) return 0;
    const char *type = NULL;
    TRY(get_type(L, o, field, &type));
    if (strcmp(type, "Sequence") == 0) {
        const json_t *list = json_object_get(o, "normalizers");
        char where[300];
        snprintf(where, sizeof where, "%s.normalizers", field);
        if (!json_is_array(list)) return lerr(L, FSDP_ERR_FORMAT, where, "is not an array");
        for (size_t i = 0; i < json_array_size(list); i++) {
            snprintf(where, sizeof where, "%s.normalizers[%zu]", field, i);
            TRY(parse_normalizer(L, t, json_array_get(list, i), where));
        }
        return 0;
    }
    if (t->n_norm == (int)(sizeof t->norm / sizeof t->norm[0]))
        return lerr(L, FSDP_ERR_UNSUPPORTED, field, "more than %d normalizers", t->n_norm);
    norm_step *st = &t->norm[t->n_norm];
    if (strcmp(type, "Prepend") == 0) {
        st->kind = NORM_PREPEND;
        TRY(get_str(L, o, field, "prepend", 1, &st->text, &st->text_len));
    } else if (strcmp(type, "Replace") == 0) {
        st->kind = NORM_REPLACE;
        TRY(get_pattern(L, o, field, &st->pat));
        TRY(get_str(L, o, field, "content", 1, &st->text, &st->text_len));
    } else if (strcmp(type, "Strip") == 0) {
        st->kind = NORM_STRIP;
        TRY(get_bool(L, o, field, "strip_left", 1, &st->left));
        TRY(get_bool(L, o, field, "strip_right", 1, &st->right));
    } else return unknown_type(L, field, type, NORM_KNOWN, NORM_SUPPORTED);
    t->n_norm++;
    return 0;
}

static const char PRE_SUPPORTED[] = "ByteLevel, Split, Metaspace, Digits, Sequence";
static const char PRE_KNOWN[] =
    " Whitespace WhitespaceSplit BertPreTokenizer Punctuation CharDelimiterSplit UnicodeScripts FixedLength ";

static int parse_behavior(const loader *L, const json_t *o, const char *field, int *out) {
    static const char *names[] = {"Removed", "Isolated", "MergedWithPrevious", "MergedWithNext", "Contiguous"};
    const json_t *v = json_object_get(o, "behavior");
    const char *s = json_string_value(v);
    for (int i = 0; s && i < 5; i++)
        if (strcmp(s, names[i]) == 0) { *out = i; return 0; }
    return lerr(L, FSDP_ERR_FORMAT, field,
                "\"behavior\" is %s%s%s (supported: Removed, Isolated, MergedWithPrevious, MergedWithNext, Contiguous)",
                s ? "\"" : "", s ? s : "missing", s ? "\"" : "");
}

static int parse_prepend_scheme(const loader *L, const json_t *o, const char *field, int *out) {
    const json_t *ps = json_object_get(o, "prepend_scheme");
    int add_prefix = 1, have_add = json_is_boolean(json_object_get(o, "add_prefix_space"));
    TRY(get_bool(L, o, field, "add_prefix_space", 1, &add_prefix));
    if (!ps || json_is_null(ps)) { *out = add_prefix ? PREPEND_ALWAYS : PREPEND_NEVER; return 0; }
    const char *s = json_string_value(ps);
    if (s && strcmp(s, "always") == 0) *out = PREPEND_ALWAYS;
    else if (s && strcmp(s, "first") == 0) *out = PREPEND_FIRST;
    else if (s && strcmp(s, "never") == 0) *out = PREPEND_NEVER;
    else return lerr(L, FSDP_ERR_FORMAT, field, "\"prepend_scheme\" is not \"always\", \"first\" or \"never\"");
    if (have_add && !add_prefix && *out != PREPEND_NEVER)
        return lerr(L, FSDP_ERR_FORMAT, field, "add_prefix_space does not match prepend_scheme");
    return 0;
}

static int parse_pre(const loader *L, fsdp_tokenizer *t, const json_t *o, const char *field) {
    if (!o || json_is_null(o)) return 0;
    const char *type = NULL;
    TRY(get_type(L, o, field, &type));
    if (strcmp(type, "Sequence") == 0) {
        const json_t *list = json_object_get(o, "pretokenizers");
        char where[300];
        snprintf(where, sizeof where, "%s.pretokenizers", field);
        if (!json_is_array(list)) return lerr(L, FSDP_ERR_FORMAT, where, "is not an array");
        for (size_t i = 0; i < json_array_size(list); i++) {
            snprintf(where, sizeof where, "%s.pretokenizers[%zu]", field, i);
            TRY(parse_pre(L, t, json_array_get(list, i), where));
        }
        return 0;
    }
    if (t->n_pre == MAX_PRE_STEPS) return lerr(L, FSDP_ERR_UNSUPPORTED, field, "more than %d pre-tokenizers", MAX_PRE_STEPS);
    pre_step *st = &t->pre[t->n_pre];
    if (strcmp(type, "ByteLevel") == 0) {
        st->kind = PRE_BYTELEVEL;
        TRY(get_bool(L, o, field, "add_prefix_space", 1, &st->add_prefix_space));
        TRY(get_bool(L, o, field, "use_regex", 1, &st->use_regex));
    } else if (strcmp(type, "Split") == 0) {
        st->kind = PRE_SPLIT;
        TRY(get_pattern(L, o, field, &st->pat));
        TRY(parse_behavior(L, o, field, &st->behavior));
        TRY(get_bool(L, o, field, "invert", 0, &st->invert));
    } else if (strcmp(type, "Metaspace") == 0) {
        uint32_t cp;
        st->kind = PRE_METASPACE;
        TRY(get_char(L, o, field, "replacement", &cp, st->rep, &st->rep_len));
        TRY(parse_prepend_scheme(L, o, field, &st->prepend));
        TRY(get_bool(L, o, field, "split", 1, &st->split));
        TRY(literal_pattern(&st->pat, st->rep, (size_t)st->rep_len));
    } else if (strcmp(type, "Digits") == 0) {
        int individual = 0;
        char err[200];
        st->kind = PRE_DIGITS;
        TRY(get_bool(L, o, field, "individual_digits", 0, &individual));
        st->behavior = individual ? SPLIT_ISOLATED : SPLIT_CONTIGUOUS;
        st->pat.re = compile_regex("\\p{N}", 5, 0, err, sizeof err);
        if (!st->pat.re) return lerr(L, FSDP_ERR_FORMAT, field, "%s", err);
    } else return unknown_type(L, field, type, PRE_KNOWN, PRE_SUPPORTED);
    t->n_pre++;
    return 0;
}

static const char DEC_SUPPORTED[] = "ByteLevel, Replace, ByteFallback, Fuse, Strip, Metaspace, Sequence";
static const char DEC_KNOWN[] = " WordPiece BPEDecoder CTC ";

static int parse_decoder(const loader *L, fsdp_tokenizer *t, const json_t *o, const char *field) {
    if (!o || json_is_null(o)) return 0;
    const char *type = NULL;
    TRY(get_type(L, o, field, &type));
    t->has_decoder = 1;
    if (strcmp(type, "Sequence") == 0) {
        const json_t *list = json_object_get(o, "decoders");
        char where[300];
        snprintf(where, sizeof where, "%s.decoders", field);
        if (!json_is_array(list)) return lerr(L, FSDP_ERR_FORMAT, where, "is not an array");
        for (size_t i = 0; i < json_array_size(list); i++) {
            snprintf(where, sizeof where, "%s.decoders[%zu]", field, i);
            TRY(parse_decoder(L, t, json_array_get(list, i), where));
        }
        return 0;
    }
    if (t->n_dec == (int)(sizeof t->dec / sizeof t->dec[0]))
        return lerr(L, FSDP_ERR_UNSUPPORTED, field, "more than %d decoders", t->n_dec);
    dec_step *st = &t->dec[t->n_dec];
    if (strcmp(type, "ByteLevel") == 0) st->kind = DEC_BYTELEVEL;
    else if (strcmp(type, "ByteFallback") == 0) st->kind = DEC_BYTEFALLBACK;
    else if (strcmp(type, "Fuse") == 0) st->kind = DEC_FUSE;
    else if (strcmp(type, "Replace") == 0) {
        st->kind = DEC_REPLACE;
        TRY(get_pattern(L, o, field, &st->pat));
        TRY(get_str(L, o, field, "content", 1, &st->text, &st->text_len));
    } else if (strcmp(type, "Strip") == 0) {
        st->kind = DEC_STRIP;
        TRY(get_char(L, o, field, "content", &st->cp, NULL, NULL));
        const json_t *a = json_object_get(o, "start"), *b = json_object_get(o, "stop");
        if (!json_is_integer(a) || !json_is_integer(b) || json_integer_value(a) < 0 || json_integer_value(b) < 0 ||
            json_integer_value(a) > 1 << 20 || json_integer_value(b) > 1 << 20)
            return lerr(L, FSDP_ERR_FORMAT, field, "\"start\" and \"stop\" must be non-negative integers");
        st->start = (int)json_integer_value(a);
        st->stop = (int)json_integer_value(b);
    } else if (strcmp(type, "Metaspace") == 0) {
        st->kind = DEC_METASPACE;
        TRY(get_char(L, o, field, "replacement", &st->cp, NULL, NULL));
        TRY(parse_prepend_scheme(L, o, field, &st->prepend));
    } else return unknown_type(L, field, type, DEC_KNOWN, DEC_SUPPORTED);
    t->n_dec++;
    return 0;
}

static int push_ids(int32_t **v, int *n, const int32_t *ids, int k, int front) {
    if (k <= 0) return 0; /* nothing to add (ids may be NULL then) */
    int32_t *p = realloc(*v, (size_t)(*n + k + 1) * sizeof **v);
    if (!p) return OOM();
    *v = p;
    if (front) {
        memmove(p + k, p, (size_t)*n * sizeof *p);
        memcpy(p, ids, (size_t)k * sizeof *p);
    } else memcpy(p + *n, ids, (size_t)k * sizeof *p);
    *n += k;
    return 0;
}

/* ["<s>", 0] of Roberta/BertProcessing */
static int token_pair(const loader *L, const json_t *o, const char *field, const char *key, int32_t *id) {
    const json_t *v = json_object_get(o, key), *x = json_array_get(v, 1);
    if (!json_is_array(v) || json_array_size(v) != 2 || !json_is_integer(x) || json_integer_value(x) < 0 ||
        json_integer_value(x) > MAX_TOKEN_ID)
        return lerr(L, FSDP_ERR_FORMAT, field, "\"%s\" is not [token, id]", key);
    *id = (int32_t)json_integer_value(x);
    return 0;
}

static const char POST_SUPPORTED[] = "TemplateProcessing, RobertaProcessing, BertProcessing, ByteLevel, Sequence";

/* Only what add_special puts around one sequence: the ids before and after. */
static int parse_post(const loader *L, fsdp_tokenizer *t, const json_t *o, const char *field) {
    if (!o || json_is_null(o)) return 0;
    const char *type = NULL;
    TRY(get_type(L, o, field, &type));
    if (strcmp(type, "Sequence") == 0) {
        const json_t *list = json_object_get(o, "processors");
        char where[300];
        snprintf(where, sizeof where, "%s.processors", field);
        if (!json_is_array(list)) return lerr(L, FSDP_ERR_FORMAT, where, "is not an array");
        for (size_t i = 0; i < json_array_size(list); i++) {
            snprintf(where, sizeof where, "%s.processors[%zu]", field, i);
            TRY(parse_post(L, t, json_array_get(list, i), where));
        }
        return 0;
    }
    if (strcmp(type, "ByteLevel") == 0) return 0;   /* offsets only */
    if (strcmp(type, "RobertaProcessing") == 0 || strcmp(type, "BertProcessing") == 0) {
        int32_t cls, sep;
        TRY(token_pair(L, o, field, "cls", &cls));
        TRY(token_pair(L, o, field, "sep", &sep));
        TRY(push_ids(&t->before, &t->n_before, &cls, 1, 1));
        return push_ids(&t->after, &t->n_after, &sep, 1, 0);
    }
    if (strcmp(type, "TemplateProcessing") != 0) return unknown_type(L, field, type, NULL, POST_SUPPORTED);
    char where[300];
    snprintf(where, sizeof where, "%s.single", field);
    const json_t *single = json_object_get(o, "single"), *specials = json_object_get(o, "special_tokens");
    if (!json_is_array(single)) return lerr(L, FSDP_ERR_FORMAT, where, "is not an array");
    int32_t *ids = NULL;
    int n_ids = 0, n_pre = -1, rc = 0;
    for (size_t i = 0; i < json_array_size(single) && !rc; i++) {
        const json_t *item = json_array_get(single, i), *sp = json_object_get(item, "SpecialToken"),
                     *seq = json_object_get(item, "Sequence");
        snprintf(where, sizeof where, "%s.single[%zu]", field, i);
        if (json_is_object(seq)) {
            const char *which = json_string_value(json_object_get(seq, "id"));
            if (!which || strcmp(which, "A") != 0 || n_pre >= 0)
                rc = lerr(L, FSDP_ERR_UNSUPPORTED, where,
                          "the single-sequence template may hold $A once and no other sequence");
            n_pre = n_ids;
        } else if (json_is_object(sp)) {
            const char *name = json_string_value(json_object_get(sp, "id"));
            const json_t *entry = json_object_get(specials, name ? name : ""), *list = json_object_get(entry, "ids");
            if (!name || !json_is_array(list)) {
                rc = lerr(L, FSDP_ERR_FORMAT, where, "special token \"%s\" is not in %s.special_tokens",
                          name ? name : "?", field);
                break;
            }
            for (size_t k = 0; k < json_array_size(list) && !rc; k++) {
                const json_t *x = json_array_get(list, k);
                if (!json_is_integer(x) || json_integer_value(x) < 0 || json_integer_value(x) > MAX_TOKEN_ID)
                    rc = lerr(L, FSDP_ERR_FORMAT, where, "an id of \"%s\" is not a valid id", name);
                else {
                    int32_t id = (int32_t)json_integer_value(x);
                    rc = push_ids(&ids, &n_ids, &id, 1, 0);
                }
            }
        } else rc = lerr(L, FSDP_ERR_FORMAT, where, "is neither {\"SpecialToken\": ...} nor {\"Sequence\": ...}");
    }
    snprintf(where, sizeof where, "%s.single", field);
    if (!rc && n_pre < 0) rc = lerr(L, FSDP_ERR_FORMAT, where, "the single-sequence template has no $A");
    if (!rc) rc = push_ids(&t->before, &t->n_before, ids, n_pre, 1);
    if (!rc && n_ids > n_pre) rc = push_ids(&t->after, &t->n_after, ids + n_pre, n_ids - n_pre, 0);
    free(ids);
    return rc;
}

/* bos / eos from the template, else from well-known names */
static void find_special_ids(fsdp_tokenizer *t) {
    static const char *bos[] = {"<s>", "<|begin_of_text|>", "<|startoftext|>", "<bos>", "<|endoftext|>", NULL};
    static const char *eos[] = {"</s>", "<|end_of_text|>", "<|endoftext|>", "<eos>", NULL};
    static const char *pad[] = {"<pad>", "<|pad|>", "[PAD]", "<|finetune_right_pad_id|>", NULL};
    static const char **names[] = {bos, eos, pad};
    for (int w = 0; w < 3; w++) {
        t->special_id[w] = -1;
        for (int i = 0; names[w][i] && t->special_id[w] < 0; i++)
            t->special_id[w] = fsdp_tokenizer_token_to_id(t, names[w][i]);
    }
    if (t->n_before) t->special_id[FSDP_TOKEN_BOS] = t->before[0];
    if (t->n_after) t->special_id[FSDP_TOKEN_EOS] = t->after[t->n_after - 1];
    t->special_id[FSDP_TOKEN_UNK] = t->unk_id;
}

static void init_byte_level(fsdp_tokenizer *t) {
    /* bytes that print keep their code point; the others take 256, 257, ... */
    int next = 256;
    for (int i = 0; i < 0x144; i++) t->char_byte[i] = -1;
    for (int b = 0; b < 256; b++) {
        int printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
        int cp = printable ? b : next++;
        t->byte_char_len[b] = (uint8_t)u8_encode((uint32_t)cp, t->byte_char[b]);
        t->char_byte[cp] = (int16_t)b;
    }
}

static int read_file(const char *path, char **data, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f) return fsdp_error(FSDP_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
    sbuf b = {0};
    char chunk[1 << 16];
    size_t k;
    while ((k = fread(chunk, 1, sizeof chunk, f)) > 0)
        if (sb_put(&b, chunk, k)) { fclose(f); free(b.p); return OOM(); }
    int err = ferror(f);
    fclose(f);
    if (err) { free(b.p); return fsdp_error(FSDP_ERR_IO, "%s: read failed", path); }
    *data = b.p;
    *len = b.n;
    return 0;
}

void fsdp_tokenizer_free(fsdp_tokenizer *t) {
    if (!t) return;
    free(t->model_tok); free(t->model_len); free(t->model_text); free(t->vocab.e); free(t->merges.e);
    free(t->unk_token); free(t->prefix); free(t->suffix); free(t->cp_id); free(t->cut);
    for (size_t i = 0; i < t->n_added; i++) { free(t->added[i].content); free(t->added[i].norm); }
    free(t->added); free(t->added_map.e); free(t->added_of_id); free(t->special);
    free(t->raw_trie.node); free(t->norm_trie.node);
    if (t->word_re) pcre2_code_free(t->word_re);
    /* every slot, not n_norm: a step that failed half-way (a Replace with its
     * regex compiled but no "content") holds memory too */
    for (int i = 0; i < (int)(sizeof t->norm / sizeof t->norm[0]); i++) { free(t->norm[i].text); pattern_free(&t->norm[i].pat); }
    for (int i = 0; i < MAX_PRE_STEPS; i++) pattern_free(&t->pre[i].pat);
    for (int i = 0; i < (int)(sizeof t->dec / sizeof t->dec[0]); i++) { free(t->dec[i].text); pattern_free(&t->dec[i].pat); }
    pattern_free(&t->gpt2);
    free(t->before); free(t->after);
    while (t->free_ctx) { enc_ctx *c = t->free_ctx; t->free_ctx = c->next_free; ctx_free(c); }
    pthread_mutex_destroy(&t->lock);
    free(t->path);
    free(t);
}

static int load(const loader *L, fsdp_tokenizer *t, const json_t *root) {
    if (!json_is_object(root)) return fsdp_error(FSDP_ERR_FORMAT, "%s: the top level is not a JSON object", L->path);
    static const char word[] = "[\\p{Alphabetic}\\p{M}\\p{Nd}\\p{Pc}\\x{200C}\\x{200D}]";
    char err[300];
    if (!(t->gpt2.re = compile_regex(GPT2_REGEX, sizeof GPT2_REGEX - 1, 1, err, sizeof err)) ||
        !(t->word_re = compile_regex(word, sizeof word - 1, 0, err, sizeof err)))
        return fsdp_error(FSDP_ERR_INVALID, "tokenizer: built-in regex: %s", err);
    init_byte_level(t);
    const json_t *added = json_object_get(root, "added_tokens");
    int32_t max_added;
    TRY(added_max_id(L, added, &max_added));
    TRY(parse_model(L, t, json_object_get(root, "model"), max_added));
    TRY(parse_added(L, t, added));
    TRY(parse_normalizer(L, t, json_object_get(root, "normalizer"), "normalizer"));
    TRY(build_tries(t));
    TRY(parse_pre(L, t, json_object_get(root, "pre_tokenizer"), "pre_tokenizer"));
    TRY(parse_post(L, t, json_object_get(root, "post_processor"), "post_processor"));
    TRY(parse_decoder(L, t, json_object_get(root, "decoder"), "decoder"));
    for (int i = 0; i < t->n_before + t->n_after; i++) {
        int32_t id = i < t->n_before ? t->before[i] : t->after[i - t->n_before];
        if (id >= t->n_ids) return lerr(L, FSDP_ERR_FORMAT, "post_processor", "id %d is outside the vocabulary", id);
    }
    find_special_ids(t);
    return 0;
}

/* a tokenizer from tokenizer.json's bytes; name is what errors call it */
fsdp_tokenizer *fsdp_tokenizer_load_buffer(const char *data, size_t len, const char *name) {
    json_error_t jerr;
    json_t *root = json_loadb(data, len, JSON_ALLOW_NUL, &jerr);
    if (!root)
        return fsdp_error_null(FSDP_ERR_FORMAT, "%s: invalid JSON at line %d, column %d: %s", name, jerr.line,
                               jerr.column, jerr.text);
    fsdp_tokenizer *t = calloc(1, sizeof *t);
    if (!t || !(t->path = strdup(name))) {
        free(t);
        json_decref(root);
        return fsdp_error_null(FSDP_ERR_OOM, "tokenizer: out of memory");
    }
    pthread_mutex_init(&t->lock, NULL);
    loader L = {t->path, t, root};
    int rc = load(&L, t, root);
    json_decref(root);
    if (rc) { fsdp_tokenizer_free(t); return NULL; }
    return t;
}

fsdp_tokenizer *fsdp_tokenizer_load(const char *path) {
    if (!path) return fsdp_error_null(FSDP_ERR_INVALID, "tokenizer load: path is NULL");
    char *data;
    size_t len;
    if (read_file(path, &data, &len)) return NULL;
    fsdp_tokenizer *t = fsdp_tokenizer_load_buffer(data, len, path);
    free(data);
    return t;
}
