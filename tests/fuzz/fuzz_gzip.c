/* fuzz_gzip.c - engine/fileio.c's reader of prepare's inputs: any file,
 * plain or gzip (whole, cut short, damaged, concatenated), reads whole or is
 * refused with a message. */
#include "fuzz_common.h"
#include "fsdp.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    char *out = NULL;
    int64_t len = -1;
    if (fsdp_file_read_all(fuzz_input_file(data, size), &out, &len) != FSDP_OK) {
        if (!fsdp_last_error()[0] || out) abort();
        return 0;
    }
    if (len < 0 || !out) abort();
    /* a plain file reads as itself */
    if (size < 2 || data[0] != 0x1f || data[1] != 0x8b) {
        if (len != (int64_t)size) abort();
        for (int64_t i = 0; i < len; i++)
            if ((uint8_t)out[i] != data[i]) abort();
    }
    fsdp_free(out);
    return 0;
}
