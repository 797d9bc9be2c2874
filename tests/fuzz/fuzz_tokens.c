/* fuzz_tokens.c - engine/tokens.c: any file either opens as a token file,
 * and then every id in it is below its limit and every range reads, or is
 * refused with a message. */
#include "fuzz_common.h"
#include "fsdp.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    fsdp_token_file tf;
    if (fsdp_tokens_open(&tf, fuzz_input_file(data, size)) != FSDP_OK) {
        if (!fsdp_last_error()[0] || tf.map_base) abort();
        return 0;
    }
    if (tf.n_tokens < 0 || (tf.token_bytes != 2 && tf.token_bytes != 4)) abort();
    int32_t out[256];
    int64_t n = tf.n_tokens < 256 ? tf.n_tokens : 256;
    if (fsdp_tokens_read(&tf, out, tf.n_tokens - n, n) != FSDP_OK) abort();
    for (int64_t i = 0; i < n; i++) {
        if (out[i] < 0 || out[i] > tf.max_token) abort();
        if (tf.vocab_size > 0 && out[i] >= tf.vocab_size) abort();
    }
    if (fsdp_tokens_read(&tf, out, tf.n_tokens, 1) == FSDP_OK) abort();   /* past the end */
    fsdp_tokens_close(&tf);
    return 0;
}
