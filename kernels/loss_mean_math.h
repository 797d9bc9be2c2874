/* loss_mean_math.h - the per-row gradient of a mean over counted rows (the
 * cross-entropy loss over the tokens whose target is not ignore_index),
 * shared by crossentropy_mean_cpu.c and crossentropy_mean_cuda.cu so both
 * give the same bits: dout / count in double, rounded once (what the Lua
 * op computed on the host before the count moved to the device). */
#ifndef FSDP_LOSS_MEAN_MATH_H
#define FSDP_LOSS_MEAN_MATH_H
#include <stdint.h>
#include "fsdp_hd.h"

/* A denominator > 0 replaces the count (SFT: the learned tokens of the
 * whole step over every rank and micro-batch, known before the step); the
 * loss is then the sum over the counted rows divided by it. */

/* d loss[n] for a counted row of a mean over count rows (0 when none count) */
FSDP_HD float fsdp_mean_row_grad(float dout, int32_t count, double denominator) {
    if (count <= 0) return 0.0f;
    return (float)((double)dout / (denominator > 0.0 ? denominator : (double)count));
}

/* the mean itself from the sum (in double) and the count */
FSDP_HD float fsdp_mean_of(double total, int32_t count, double denominator) {
    if (count <= 0) return 0.0f;
    return (float)(total / (denominator > 0.0 ? denominator : (double)count));
}
#endif
