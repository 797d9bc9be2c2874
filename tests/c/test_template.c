/* test_template.c - the chat-template engine through its C API:
 *   conformance  every case of tests/golden/templates/conformance.json (made
 *                by tests/golden/make_template_fixtures.py from transformers'
 *                Jinja environment) renders the same text, or fails where
 *                Jinja fails, with the line and column in the message
 *   spans        {% generation %} output ranges in bytes
 *   errors       NULL arguments, bad variables, unsupported tags; a failed
 *                render leaves nothing allocated and the template usable
 *   threads      one compiled template rendered by several threads at once */
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "fsdp.h"
#include "check.h"

static const char *CONFORMANCE = "tests/golden/templates/conformance.json";

static int render(const fsdp_template *t, const char *vars, char **out, int64_t *n) {
    return fsdp_template_render(t, vars, vars ? (int64_t)strlen(vars) : 0, out, n, NULL, NULL);
}

static void test_conformance(void) {
    json_error_t e;
    json_t *root = json_load_file(CONFORMANCE, 0, &e);
    CHECK(root != NULL, "%s: %s (line %d)", CONFORMANCE, e.text, e.line);
    if (!root) return;
    json_t *cases = json_object_get(root, "cases");
    size_t i;
    json_t *c;
    int rendered = 0, failed = 0;
    json_array_foreach(cases, i, c) {
        const char *src = json_string_value(json_object_get(c, "template"));
        char *vars = json_dumps(json_object_get(c, "vars"), JSON_PRESERVE_ORDER | JSON_COMPACT);
        json_t *want = json_object_get(c, "text");
        fsdp_template *t = fsdp_template_new(src, (int64_t)strlen(src));
        char *out = NULL;
        int64_t n = 0;
        int rc = t ? render(t, vars, &out, &n) : -1;
        if (want) {
            const char *w = json_string_value(want);
            size_t wn = json_string_length(want);
            CHECK(rc == 0 && (size_t)n == wn && memcmp(out, w, wn) == 0, "case %zu %s: want \"%s\" got \"%s\" (%s)", i,
                  src, w, out ? out : "", rc ? fsdp_last_error() : "");
            rendered++;
        } else {
            CHECK(rc != 0, "case %zu %s: Jinja fails (%s), we rendered \"%s\"", i, src,
                  json_string_value(json_object_get(c, "error")), out ? out : "");
            CHECK(rc == 0 || strstr(fsdp_last_error(), "chat template line "), "case %zu: error without a line: %s", i,
                  fsdp_last_error());
            failed++;
        }
        fsdp_free(out);
        fsdp_template_free(t);
        free(vars);
    }
    CHECK(rendered > 80 && failed > 20, "%d rendered, %d failing cases", rendered, failed);
    json_decref(root);
}

static void test_spans(void) {
    const char *src =
        "{% for m in messages %}<{{ m.role }}>{% if m.role == 'assistant' %}{% generation %}{{ m.content }}"
        "{% endgeneration %}{% else %}{{ m.content }}{% endif %}{% endfor %}";
    const char *vars = "{\"messages\": [{\"role\": \"user\", \"content\": \"h\\u00e9\"}, "
                       "{\"role\": \"assistant\", \"content\": \"yo\"}, {\"role\": \"assistant\", \"content\": \"\"}]}";
    fsdp_template *t = fsdp_template_new(src, (int64_t)strlen(src));
    CHECK(t != NULL, "%s", fsdp_last_error());
    CHECK(fsdp_template_has_generation(t) == 1, "has_generation");
    char *out = NULL;
    int64_t n = 0, *spans = NULL, ns = 0;
    int rc = fsdp_template_render(t, vars, (int64_t)strlen(vars), &out, &n, &spans, &ns);
    CHECK(rc == 0, "%s", fsdp_last_error());
    const char *want = "<user>h\xc3\xa9<assistant>yo<assistant>";
    CHECK(rc == 0 && n == (int64_t)strlen(want) && !memcmp(out, want, (size_t)n), "text %s", out);
    /* "<user>hé" is 9 bytes, "<assistant>" 11 */
    CHECK(ns == 2 && spans[0] == 20 && spans[1] == 22 && spans[2] == 33 && spans[3] == 33, "spans %lld: %lld %lld %lld %lld",
          (long long)ns, (long long)(ns ? spans[0] : -1), (long long)(ns ? spans[1] : -1),
          (long long)(ns > 1 ? spans[2] : -1), (long long)(ns > 1 ? spans[3] : -1));
    fsdp_free(out);
    fsdp_free(spans);
    fsdp_template_free(t);
}

static void test_errors(void) {
    CHECK(fsdp_template_new(NULL, 0) == NULL, "NULL source");
    const char *src = "{{ messages[0].content }}";
    fsdp_template *t = fsdp_template_new(src, (int64_t)strlen(src));
    char *out = (char *)1;
    int64_t n = 7;
    CHECK(render(t, "{\"messages\": []}", &out, &n) != 0 && out == NULL && n == 0, "undefined use");
    CHECK(strstr(fsdp_last_error(), "line 1 col 15") && strstr(fsdp_last_error(), "has no element 0"), "%s",
          fsdp_last_error());
    CHECK(render(t, "{\"messages\": [", &out, &n) != 0 && strstr(fsdp_last_error(), "invalid JSON"), "%s",
          fsdp_last_error());
    CHECK(fsdp_template_render(NULL, "{}", 2, &out, &n, NULL, NULL) != 0, "NULL template");
    /* still usable after failures */
    CHECK(render(t, "{\"messages\": [{\"content\": \"ok\"}]}", &out, &n) == 0 && n == 2 && !memcmp(out, "ok", 2),
          "render after failures: %s", fsdp_last_error());
    fsdp_free(out);
    fsdp_template_free(t);
    const char *bad[] = {"{% macro m() %}{% endmacro %}", "line\n  {{ x | nofilter }}", "{% for %}", "{{ 1 + }}"};
    const char *where[] = {"line 1 col 4", "line 2 col 10", "line 1 col 8", "line 1 col 8"};
    for (int i = 0; i < 4; i++) {
        CHECK(fsdp_template_new(bad[i], (int64_t)strlen(bad[i])) == NULL && strstr(fsdp_last_error(), where[i]),
              "%s: %s", bad[i], fsdp_last_error());
    }
    /* a source with an embedded NUL is rendered as given */
    const char nul[] = "a\0b";
    t = fsdp_template_new(nul, 3);
    CHECK(t && render(t, NULL, &out, &n) == 0 && n == 3 && out[1] == 0, "embedded NUL");
    fsdp_free(out);
    fsdp_template_free(t);
}

static void test_threads(void) {
    const char *src = "{% set ns = namespace(s=0) %}{% for i in range(n) %}{% set ns.s = ns.s + i %}{% endfor %}{{ ns.s }}";
    fsdp_template *t = fsdp_template_new(src, (int64_t)strlen(src));
    int bad = 0;
#pragma omp parallel for num_threads(4) reduction(+ : bad)
    for (int k = 0; k < 64; k++) {
        char vars[64], want[32];
        snprintf(vars, sizeof vars, "{\"n\": %d}", 100 + k);
        snprintf(want, sizeof want, "%d", (100 + k) * (99 + k) / 2);
        char *out = NULL;
        int64_t n = 0;
        if (fsdp_template_render(t, vars, (int64_t)strlen(vars), &out, &n, NULL, NULL) != 0 || strcmp(out, want) != 0) bad++;
        fsdp_free(out);
    }
    CHECK(bad == 0, "%d of 64 concurrent renders wrong", bad);
    fsdp_template_free(t);
}

int main(void) {
    test_conformance();
    test_spans();
    test_errors();
    test_threads();
    return check_exit("test_template");
}
