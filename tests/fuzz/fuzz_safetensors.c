/* fuzz_safetensors.c - engine/safetensors.c: the header of any file (length,
 * JSON, dtypes, shapes, offsets, metadata) either opens, and then every
 * tensor's data lies inside the file, or is refused with a message. */
#include <string.h>
#include "fuzz_common.h"
#include "fsdp.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    fsdp_st_file *f = fsdp_st_open(fuzz_input_file(data, size));
    if (!f) {
        if (!fsdp_last_error()[0]) abort();   /* a refusal always says why */
        return 0;
    }
    fsdp_st_info info;
    volatile uint8_t sink = 0;
    for (int i = 0; i < fsdp_st_count(f); i++) {
        const char *name = fsdp_st_name(f, i);
        if (!name || fsdp_st_find(f, name) != i) abort();
        if (fsdp_st_get_info(f, i, &info) != FSDP_OK) abort();
        const uint8_t *p = fsdp_st_data(f, i);
        if (info.nbytes < 0 || (info.nbytes > 0 && !p)) abort();
        /* touch the first and last byte: inside the mapping (ASan sees the
         * mmap as unpoisoned, so a page fault would be the crash) */
        if (info.nbytes > 0) sink ^= p[0] ^ p[info.nbytes - 1];
        (void)fsdp_st_dtype_string(f, i);
    }
    (void)fsdp_st_metadata(f, "format");
    (void)sink;
    fsdp_st_close(f);
    return 0;
}
