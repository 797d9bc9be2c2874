/* fuzz_tokenizer.c - engine/tokenizer.c: any tokenizer.json either loads or
 * is refused with a message; a loaded one encodes a few texts (ASCII,
 * accents, CJK, emoji, bytes, an added token's look-alike) and decodes what
 * it made, within bounds. */
#include <string.h>
#include "fuzz_common.h"
#include "fsdp.h"
#include "internal.h"

static const char *TEXTS[] = {
    "Hello, world! It's 2024: the quick brown fox.",
    "  leading spaces\n\nand\ttabs  ",
    "na\xc3\xafve caf\xc3\xa9 \xe6\x97\xa5\xe6\x9c\xac\xe8\xaa\x9e \xf0\x9f\x98\x80 <s></s><|endoftext|>",
    "",
    "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaab",
};

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    fsdp_tokenizer *t = fsdp_tokenizer_load_buffer((const char *)data, size, "fuzz/tokenizer.json");
    if (!t) {
        if (!fsdp_last_error()[0]) abort();
        return 0;
    }
    int32_t ids[512];
    char out[4096];
    for (size_t k = 0; k < sizeof TEXTS / sizeof TEXTS[0]; k++) {
        int64_t n = 0, len = 0;
        int rc = fsdp_tokenizer_encode(t, TEXTS[k], (int64_t)strlen(TEXTS[k]), (int)(k & 1), ids, 512, &n);
        if (rc == FSDP_OK) {
            if (n < 0 || n > 512) abort();
            for (int64_t i = 0; i < n; i++)
                if (ids[i] < 0 || ids[i] >= fsdp_tokenizer_vocab_size(t)) abort();
            (void)fsdp_tokenizer_decode(t, ids, n, (int)(k & 1), out, sizeof out, &len);
        }
    }
    int32_t some[64];
    int v = fsdp_tokenizer_vocab_size(t);
    for (int i = 0; i < 64; i++) some[i] = v > 0 ? (i * 7919) % v : 0;
    int64_t len = 0;
    if (v > 0) (void)fsdp_tokenizer_decode(t, some, 64, 0, out, sizeof out, &len);
    for (int w = 0; w < 3; w++) (void)fsdp_tokenizer_special_id(t, w);
    fsdp_tokenizer_free(t);
    return 0;
}
