/* tensor.c - refcounted storage, tensors and views.
 *
 * A storage owns bytes (from the caching pool, or a read-only file mapping).
 * A tensor is a small header (shape, strides, offset) holding one reference to
 * its storage; a view is another header on the same storage, so a base stays
 * alive while any view of it does. fsdp_tensor_free drops one reference. */
#include <errno.h>
#include <stdio.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>
#include "internal.h"
#include "dtype_math.h"

enum { STORAGE_POOL = 0, STORAGE_MMAP = 1, STORAGE_PINNED = 2 };

struct fsdp_storage {
    void *base;
    int64_t nbytes;
    int refcount;
    int device;
    int kind;
    void *map_base;   /* STORAGE_MMAP: whole mapping */
    size_t map_len;
};

static const int dtype_sizes[FSDP_NUM_DTYPES] = {4, 2, 2, 4, 8, 2, 1};
static const char *dtype_names[FSDP_NUM_DTYPES] = {"f32", "bf16", "f16", "i32", "i64", "u16", "u8"};

int fsdp_dtype_size(int dtype) {
    return (dtype >= 0 && dtype < FSDP_NUM_DTYPES) ? dtype_sizes[dtype] : 0;
}

const char *fsdp_dtype_name(int dtype) {
    return (dtype >= 0 && dtype < FSDP_NUM_DTYPES) ? dtype_names[dtype] : NULL;
}

static void storage_decref(fsdp_storage *s) {
    if (!s) return;
    if (__atomic_sub_fetch(&s->refcount, 1, __ATOMIC_ACQ_REL) > 0) return;
    if (s->kind == STORAGE_MMAP) munmap(s->map_base, s->map_len);
    else if (s->kind == STORAGE_PINNED) fsdp_device_ops_for(0)->host_free(s->base);
    else fsdp_mem_release(s->device, s->base, s->nbytes);
    free(s);
}

/* checks dtype, ndim and shape; writes the element count */
static int check_shape(int dtype, int ndim, const int64_t *shape, int64_t *numel) {
    if (!fsdp_dtype_size(dtype)) return fsdp_error(FSDP_ERR_INVALID, "tensor: invalid dtype %d", dtype);
    if (ndim < 0 || ndim > FSDP_MAX_DIMS)
        return fsdp_error(FSDP_ERR_INVALID, "tensor: ndim %d outside 0..%d", ndim, FSDP_MAX_DIMS);
    int64_t n = 1;
    for (int i = 0; i < ndim; i++) {
        if (shape[i] < 0)
            return fsdp_error(FSDP_ERR_INVALID, "tensor: dimension %d has negative size %lld", i,
                              (long long)shape[i]);
        if (shape[i] && n > INT64_MAX / 16 / shape[i])
            return fsdp_error(FSDP_ERR_INVALID, "tensor: shape overflows 64-bit size");
        n *= shape[i];
    }
    *numel = n;
    return FSDP_OK;
}

static void set_contiguous(fsdp_tensor *t, int ndim, const int64_t *shape) {
    t->ndim = ndim;
    int64_t stride = 1;
    for (int i = ndim - 1; i >= 0; i--) {
        t->shape[i] = shape[i];
        t->strides[i] = stride;
        stride *= shape[i];
    }
}

/* a contiguous tensor over new storage of `kind` on device: pool (host or
 * device allocator) or pinned (page-locked host memory, zero-filled) */
static fsdp_tensor *tensor_alloc(int dtype, int device, int kind, int ndim, const int64_t *shape) {
    int64_t numel;
    if (check_shape(dtype, ndim, shape, &numel)) return NULL;
    const fsdp_device_ops *ops = NULL;
    if (kind == STORAGE_PINNED && !(ops = fsdp_device_ops_for(0))) return NULL;
    fsdp_tensor *t = calloc(1, sizeof *t);
    fsdp_storage *s = calloc(1, sizeof *s);
    if (!t || !s) {
        free(t); free(s);
        return fsdp_error_null(FSDP_ERR_OOM, "tensor: out of host memory for a header");
    }
    s->nbytes = numel * dtype_sizes[dtype];
    s->base = ops ? ops->host_alloc(s->nbytes) : fsdp_mem_alloc(device, s->nbytes);
    if (!s->base) { free(t); free(s); return NULL; }
    if (ops) memset(s->base, 0, (size_t)s->nbytes);
    s->refcount = 1;
    s->device = device;
    s->kind = kind;
    t->data = s->base;
    t->storage = s;
    t->numel = numel;
    t->dtype = dtype;
    t->device = device;
    t->flags = kind == STORAGE_PINNED ? 2 : 0;
    set_contiguous(t, ndim, shape);
    return t;
}

fsdp_tensor *fsdp_tensor_new(int dtype, int device, int ndim, const int64_t *shape) {
    return tensor_alloc(dtype, device, STORAGE_POOL, ndim, shape);
}

fsdp_tensor *fsdp_tensor_new_pinned(int dtype, int ndim, const int64_t *shape) {
    return tensor_alloc(dtype, FSDP_CPU, STORAGE_PINNED, ndim, shape);
}

fsdp_tensor *fsdp_tensor_zeros(int dtype, int device, int ndim, const int64_t *shape) {
    fsdp_tensor *t = fsdp_tensor_new(dtype, device, ndim, shape);
    if (t && device == FSDP_CPU) memset(t->data, 0, (size_t)t->storage->nbytes);
    if (t && device != FSDP_CPU && fsdp_tensor_fill(t, 0.0)) {
        fsdp_tensor_free(t);
        return NULL;
    }
    return t;
}

fsdp_tensor *fsdp_tensor_view(const fsdp_tensor *base, int ndim, const int64_t *shape,
                              const int64_t *strides, int64_t offset) {
    if (!base || !base->storage) return fsdp_error_null(FSDP_ERR_INVALID, "view: base tensor is NULL or freed");
    int64_t numel;
    if (check_shape(base->dtype, ndim, shape, &numel)) return NULL;
    fsdp_tensor *t = calloc(1, sizeof *t);
    if (!t) return fsdp_error_null(FSDP_ERR_OOM, "view: out of host memory for a header");
    t->dtype = base->dtype;
    t->device = base->device;
    t->numel = numel;
    t->offset = base->offset + offset;
    if (strides) {
        t->ndim = ndim;
        for (int i = 0; i < ndim; i++) { t->shape[i] = shape[i]; t->strides[i] = strides[i]; }
    } else {
        set_contiguous(t, ndim, shape);
    }
    /* bounds: smallest and largest element offsets must lie in the storage */
    int64_t lo = t->offset, hi = t->offset;
    if (numel > 0) {
        for (int i = 0; i < ndim; i++) {
            int64_t ext = (shape[i] - 1) * t->strides[i];
            if (ext < 0) lo += ext; else hi += ext;
        }
    }
    int64_t cap = base->storage->nbytes / dtype_sizes[base->dtype];
    if (numel > 0 && (lo < 0 || hi >= cap)) {
        free(t);
        return fsdp_error_null(FSDP_ERR_INVALID,
                               "view: elements %lld..%lld fall outside the storage of %lld elements",
                               (long long)lo, (long long)hi, (long long)cap);
    }
    t->storage = base->storage;
    __atomic_add_fetch(&t->storage->refcount, 1, __ATOMIC_ACQ_REL);
    t->data = (char *)t->storage->base + t->offset * dtype_sizes[t->dtype];
    return t;
}

fsdp_tensor *fsdp_tensor_mmap(const char *path, int64_t byte_offset, int dtype, int ndim,
                              const int64_t *shape) {
    int64_t numel;
    if (check_shape(dtype, ndim, shape, &numel)) return NULL;
    int64_t nbytes = numel * dtype_sizes[dtype];
    int fd = open(path, O_RDONLY);
    if (fd < 0) return fsdp_error_null(FSDP_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fd, &st) != 0) {
        close(fd);
        return fsdp_error_null(FSDP_ERR_IO, "%s: cannot stat: %s", path, strerror(errno));
    }
    if (byte_offset < 0 || byte_offset + nbytes > st.st_size) {
        close(fd);
        return fsdp_error_null(FSDP_ERR_FORMAT, "%s: bytes %lld..%lld requested but the file has %lld",
                               path, (long long)byte_offset, (long long)(byte_offset + nbytes),
                               (long long)st.st_size);
    }
    long page = sysconf(_SC_PAGESIZE);
    int64_t start = byte_offset / page * page;
    size_t len = (size_t)(byte_offset + nbytes - start);
    if (len == 0) len = 1;
    void *m = mmap(NULL, len, PROT_READ, MAP_PRIVATE, fd, start);
    close(fd);
    if (m == MAP_FAILED) return fsdp_error_null(FSDP_ERR_IO, "%s: mmap failed: %s", path, strerror(errno));
    fsdp_tensor *t = calloc(1, sizeof *t);
    fsdp_storage *s = calloc(1, sizeof *s);
    if (!t || !s) {
        free(t); free(s); munmap(m, len);
        return fsdp_error_null(FSDP_ERR_OOM, "mmap: out of host memory for a header");
    }
    s->kind = STORAGE_MMAP;
    s->map_base = m;
    s->map_len = len;
    s->base = (char *)m + (byte_offset - start);
    s->nbytes = nbytes;
    s->refcount = 1;
    s->device = FSDP_CPU;
    t->storage = s;
    t->data = s->base;
    t->numel = numel;
    t->dtype = dtype;
    t->device = FSDP_CPU;
    t->flags = 1; /* read-only */
    set_contiguous(t, ndim, shape);
    return t;
}

void fsdp_tensor_free(fsdp_tensor *t) {
    if (!t) return;
    storage_decref(t->storage);
    t->storage = NULL;
    t->data = NULL;
    free(t);
}

int fsdp_tensor_is_contiguous(const fsdp_tensor *t) {
    int64_t stride = 1;
    for (int i = t->ndim - 1; i >= 0; i--) {
        if (t->shape[i] != 1 && t->strides[i] != stride) return 0;
        stride *= t->shape[i];
    }
    return 1;
}

int64_t fsdp_tensor_nbytes(const fsdp_tensor *t) { return t->numel * dtype_sizes[t->dtype]; }
int64_t fsdp_storage_nbytes(const fsdp_storage *s) { return s ? s->nbytes : 0; }
int fsdp_storage_refcount(const fsdp_storage *s) { return s ? s->refcount : 0; }

/* element offset of linear index i in a strided tensor */
static int64_t strided_offset(const fsdp_tensor *t, int64_t i) {
    int64_t off = 0;
    for (int d = t->ndim - 1; d >= 0; d--) {
        int64_t n = t->shape[d];
        off += (i % n) * t->strides[d];
        i /= n;
    }
    return off;
}

static int is_float_dtype(int d) { return d == FSDP_F32 || d == FSDP_BF16 || d == FSDP_F16; }

static int device_name(char *buf, int device) {
    return device == FSDP_CPU ? snprintf(buf, 16, "cpu") : snprintf(buf, 16, "cuda:%d", device);
}

/* copies where one side is on a device: contiguous tensors only; a dtype
 * change happens on the device (both on one device) */
static int device_copy(fsdp_tensor *dst, const fsdp_tensor *src, int same) {
    char dn[16], sn[16];
    device_name(dn, dst->device);
    device_name(sn, src->device);
    if (!fsdp_tensor_is_contiguous(dst) || !fsdp_tensor_is_contiguous(src))
        return fsdp_error(FSDP_ERR_UNSUPPORTED, "copy %s -> %s: device copies need contiguous tensors", sn, dn);
    const fsdp_device_ops *ops = fsdp_device_ops_for(dst->device != FSDP_CPU ? dst->device : src->device);
    if (!ops) return FSDP_ERR_UNSUPPORTED;
    if (same)
        return ops->copy(dst->data, dst->device, src->data, src->device,
                         dst->numel * dtype_sizes[dst->dtype]);
    if (dst->device != src->device)
        return fsdp_error(FSDP_ERR_UNSUPPORTED, "copy %s (%s) -> %s (%s): a dtype change needs both tensors "
                          "on one device", sn, dtype_names[src->dtype], dn, dtype_names[dst->dtype]);
    return ops->cast(dst->data, dst->dtype, src->data, src->dtype, dst->numel, dst->device);
}

int fsdp_tensor_copy(fsdp_tensor *dst, const fsdp_tensor *src) {
    if (!dst || !src || !dst->storage || !src->storage)
        return fsdp_error(FSDP_ERR_INVALID, "copy: NULL or freed tensor");
    if (dst->flags & 1) return fsdp_error(FSDP_ERR_INVALID, "copy: destination is read-only (memory-mapped)");
    if (dst->numel != src->numel) return fsdp_error(FSDP_ERR_INVALID, "copy: %lld elements into %lld",
                                                    (long long)src->numel, (long long)dst->numel);
    if (dst->ndim == src->ndim)
        for (int i = 0; i < dst->ndim; i++)
            if (dst->shape[i] != src->shape[i])
                return fsdp_error(FSDP_ERR_INVALID, "copy: shapes differ in dimension %d (%lld vs %lld)", i,
                                  (long long)dst->shape[i], (long long)src->shape[i]);
    int same = dst->dtype == src->dtype;
    if (!same && !(is_float_dtype(dst->dtype) && is_float_dtype(src->dtype)))
        return fsdp_error(FSDP_ERR_INVALID, "copy: cannot convert %s to %s", dtype_names[src->dtype],
                          dtype_names[dst->dtype]);
    int64_t n = dst->numel;
    int es = dtype_sizes[dst->dtype];
    if (dst->device != FSDP_CPU || src->device != FSDP_CPU) return device_copy(dst, src, same);
    if (same && fsdp_tensor_is_contiguous(dst) && fsdp_tensor_is_contiguous(src)) {
        memmove(dst->data, src->data, (size_t)(n * es));
        return FSDP_OK;
    }
    int dc = fsdp_tensor_is_contiguous(dst), sc = fsdp_tensor_is_contiguous(src);
    #pragma omp parallel for if (n > 65536)
    for (int64_t i = 0; i < n; i++) {
        int64_t so = sc ? i : strided_offset(src, i);
        int64_t d = dc ? i : strided_offset(dst, i);
        if (same) memcpy((char *)dst->data + d * es, (const char *)src->data + so * es, (size_t)es);
        else fsdp_store_from_f32(dst->data, d, dst->dtype, fsdp_load_as_f32(src->data, so, src->dtype));
    }
    return FSDP_OK;
}

int fsdp_tensor_fill(fsdp_tensor *t, double value) {
    if (!t || !t->storage) return fsdp_error(FSDP_ERR_INVALID, "fill: NULL or freed tensor");
    if (t->device != FSDP_CPU) {
        if (!fsdp_tensor_is_contiguous(t))
            return fsdp_error(FSDP_ERR_UNSUPPORTED, "fill: cuda:%d tensor is not contiguous", t->device);
        const fsdp_device_ops *ops = fsdp_device_ops_for(t->device);
        return ops ? ops->fill(t->data, t->device, t->dtype, value, t->numel) : FSDP_ERR_UNSUPPORTED;
    }
    if (t->flags & 1) return fsdp_error(FSDP_ERR_INVALID, "fill: tensor is read-only (memory-mapped)");
    int64_t n = t->numel;
    int c = fsdp_tensor_is_contiguous(t);
    if (c && value == 0.0) { /* zeroing gradients every step: all-zero bits in every dtype */
        memset(t->data, 0, (size_t)(n * dtype_sizes[t->dtype]));
        return FSDP_OK;
    }
    #pragma omp parallel for if (n > 65536)
    for (int64_t i = 0; i < n; i++) {
        int64_t o = c ? i : strided_offset(t, i);
        switch (t->dtype) {
        case FSDP_F32: case FSDP_BF16: case FSDP_F16: fsdp_store_from_f32(t->data, o, t->dtype, (float)value); break;
        case FSDP_I32: ((int32_t *)t->data)[o] = (int32_t)value; break;
        case FSDP_I64: ((int64_t *)t->data)[o] = (int64_t)value; break;
        case FSDP_U16: ((uint16_t *)t->data)[o] = (uint16_t)value; break;
        case FSDP_U8: ((uint8_t *)t->data)[o] = (uint8_t)value; break;
        }
    }
    return FSDP_OK;
}
