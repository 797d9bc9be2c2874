/* rope_cuda.cu - rotary position embedding, rotate-half pairing (GPT-NeoX,
 * Hugging Face Llama). inp/out are [B, T, NH, HD] with ld elements between
 * tokens; cos/sin are [T, HD/2]. One thread per rotated pair; the rotation
 * is rope_math.h's. Forward may run in place; backward accumulates. */
#include "cuda_common.cuh"
#include "rope_math.h"

/* ---- kernels ------------------------------------------------------------ */

/* pair p of B*T*NH*(HD/2): i = p % (HD/2), then head, then token (b*T + t) */
template <int BACKWARD>
static __global__ void rope_kernel(float *out, const float *inp, const float *cos, const float *sin,
                                   int T, int NH, int HD, int ld, int64_t pairs) {
    const int64_t p = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (p >= pairs) return;
    const int half_hd = HD / 2;
    const int i = (int)(p % half_hd);
    const int64_t head = p / half_hd; /* (b*T + t) * NH + h */
    const int h = (int)(head % NH);
    const int64_t bt = head / NH;
    const int t = (int)(bt % T);
    const int64_t at = bt * ld + (int64_t)h * HD + i;
    const float c = cos[(int64_t)t * half_hd + i], s = sin[(int64_t)t * half_hd + i];
    float o1, o2;
    if (BACKWARD) {
        fsdp_rope_rotate_back(inp[at], inp[at + half_hd], c, s, &o1, &o2);
        out[at] += o1;
        out[at + half_hd] += o2;
    } else {
        fsdp_rope_rotate(inp[at], inp[at + half_hd], c, s, &o1, &o2);
        out[at] = o1;
        out[at + half_hd] = o2;
    }
}

/* ---- launchers ---------------------------------------------------------- */

template <int BACKWARD>
static int rope(const char *fn, float *out, const float *inp, const float *cos, const float *sin,
                int B, int T, int NH, int HD, int ld, fsdp_stream stream) {
    FSDP_CHECK_ARG(out && inp, "%s: input or output is NULL", fn);
    FSDP_CHECK_ARG(cos && sin, "%s: cos or sin table is NULL", fn);
    FSDP_CHECK_ARG(B > 0 && T > 0 && NH > 0, "%s: B (%d), T (%d) and NH (%d) must be positive", fn,
                   B, T, NH);
    FSDP_CHECK_ARG(HD > 0 && HD % 2 == 0, "%s: HD (%d) must be positive and even", fn, HD);
    FSDP_CHECK_ARG(ld >= NH * HD, "%s: ld (%d) is less than NH*HD (%d)", fn, ld, NH * HD);
    FSDP_CHECK_ARG(!BACKWARD || out != inp, "%s: dinp must not be dout (backward accumulates)", fn);
    const int64_t pairs = (int64_t)B * T * NH * (HD / 2);
    const int64_t blocks = fsdp_cuda_grid(pairs, FSDP_EW_THREADS);
    FSDP_CUDA_CHECK_GRID(fn, blocks);
    void (*kernel)(float *, const float *, const float *, const float *, int, int, int, int,
                   int64_t) = rope_kernel<BACKWARD>;
    FSDP_LAUNCH(kernel, (unsigned)blocks, FSDP_EW_THREADS, 0, stream, out, inp, cos, sin, T, NH, HD,
                ld, pairs);
    return fsdp_cuda_launched(fn);
}

int fsdp_rope_forward_cuda(float *out, const float *inp, const float *cos, const float *sin,
                           int B, int T, int NH, int HD, int ld, fsdp_stream stream) {
    return rope<0>("fsdp_rope_forward_cuda", out, inp, cos, sin, B, T, NH, HD, ld, stream);
}

int fsdp_rope_backward_cuda(float *dinp, const float *dout, const float *cos, const float *sin,
                            int B, int T, int NH, int HD, int ld, fsdp_stream stream) {
    return rope<1>("fsdp_rope_backward_cuda", dinp, dout, cos, sin, B, T, NH, HD, ld, stream);
}
