// edgelora's CUDA kernels: the GPU twin of core/src/model/mod.rs and core/src/kernels/reference.rs.
//
// Compiled at run time by NVRTC with --fmad=false, so that a*b+c rounds twice as it does in Rust
// (which never contracts to FMA). Every kernel repeats the CPU reference's operations in the
// CPU's order wherever one thread owns a whole sum (a 32-element chunk of a dot product, one
// attention score, one attention output element, the rope rotation, SwiGLU); only the sums that
// are split across threads (chunk sums of a matvec row, rmsnorm's sum of squares, the softmax
// denominator) and expf (CUDA: <= 2 ulp, libm: < 1 ulp) can differ from the CPU. The tests'
// tolerances are derived from exactly that (see targets/cuda/src/tol.rs).
//
// No headers: NVRTC from the PyPI wheel has no CUDA include directory, and nothing here needs one.
// Weights are read byte by byte: ggml blocks are 18/20/34 bytes long, so their f16 scales are
// not 2-byte aligned, and reading bytes keeps every tensor type on one code path.
//
// Layouts (ggml): blocks of 32 weights. Q4_0: f16 d, 16 bytes of nibbles, w = (q - 8) d.
// Q4_1: f16 d, f16 m, 16 bytes, w = q d + m. Q8_0: f16 d, 32 int8, w = q d. The low nibble of
// byte j is element j, the high nibble element j + 16. F16/BF16/F32 rows are plain little-endian
// values and may have any length; they are processed in chunks of 32 like the CPU reference.

typedef unsigned char u8;
typedef unsigned short u16;
typedef unsigned int u32;
typedef long long i64;

#define QK 32
// Tokens one warp carries through a weight row (each weight is dequantised once per NT tokens).
#define NT 4

// Type codes, shared with gpu.rs (TyCode).
#define TY_F32 0
#define TY_F16 1
#define TY_BF16 2
#define TY_Q4_0 3
#define TY_Q4_1 4
#define TY_Q8_0 5

__device__ __forceinline__ u16 ld_u16(const u8* p) { return (u16)(p[0] | (p[1] << 8)); }

__device__ __forceinline__ float ld_f32(const u8* p) {
    return __uint_as_float((u32)p[0] | ((u32)p[1] << 8) | ((u32)p[2] << 16) | ((u32)p[3] << 24));
}

// IEEE half -> float, exact (every half is a float).
__device__ __forceinline__ float f16_to_f32(u16 h) {
    u32 sign = ((u32)h & 0x8000u) << 16;
    u32 exp = ((u32)h >> 10) & 0x1fu;
    u32 mant = (u32)h & 0x3ffu;
    if (exp == 0) {
        // Zero or subnormal: mant * 2^-24, exact in float.
        float v = (float)mant * 5.9604644775390625e-8f;
        return sign ? -v : v;
    }
    if (exp == 31) return __uint_as_float(sign | 0x7f800000u | (mant << 13));
    return __uint_as_float(sign | ((exp + 112u) << 23) | (mant << 13));
}

__device__ __forceinline__ float bf16_to_f32(u16 h) { return __uint_as_float((u32)h << 16); }

// Dequantise chunk `c` (elements 32c .. 32c+31) of a row into w; returns how many elements are
// valid (32, or fewer for the tail of a float row).
template <int TY>
__device__ __forceinline__ int load_chunk(const u8* row, int c, int cols, float* w) {
    if (TY == TY_Q4_0) {
        const u8* b = row + (i64)c * 18;
        float d = f16_to_f32(ld_u16(b));
        for (int j = 0; j < 16; j++) {
            int q = b[2 + j];
            w[j] = (float)((q & 15) - 8) * d;
            w[j + 16] = (float)((q >> 4) - 8) * d;
        }
        return QK;
    } else if (TY == TY_Q4_1) {
        const u8* b = row + (i64)c * 20;
        float d = f16_to_f32(ld_u16(b));
        float m = f16_to_f32(ld_u16(b + 2));
        for (int j = 0; j < 16; j++) {
            int q = b[4 + j];
            w[j] = (float)(q & 15) * d + m;
            w[j + 16] = (float)(q >> 4) * d + m;
        }
        return QK;
    } else if (TY == TY_Q8_0) {
        const u8* b = row + (i64)c * 34;
        float d = f16_to_f32(ld_u16(b));
        for (int j = 0; j < QK; j++) w[j] = (float)(signed char)b[2 + j] * d;
        return QK;
    } else {
        int n = cols - c * QK;
        if (n > QK) n = QK;
        for (int j = 0; j < n; j++) {
            i64 e = (i64)c * QK + j;
            if (TY == TY_F32) w[j] = ld_f32(row + e * 4);
            else if (TY == TY_F16) w[j] = f16_to_f32(ld_u16(row + e * 2));
            else w[j] = bf16_to_f32(ld_u16(row + e * 2));
        }
        return n;
    }
}

// Y[t][r] = dot(W row r, X[t]) (store) or Y[t][r] += scale * dot(...) (accumulate), for t < n.
// W: rows x cols of type TY, row_bytes apart. X: n x cols f32. Y: n x rows f32.
// One warp per row; lane l takes chunks l, l+32, ...; each chunk's sum runs in element order as
// in reference::dot_row_f32, then the lanes' partial sums meet in a butterfly.
// Launch: block (128), grid (ceil(rows / 4), ceil(n / NT)).
template <int TY>
__device__ __forceinline__ void matmul_impl(const u8* W, int rows, int cols, i64 row_bytes, const float* X,
                                            int n, float* Y, float scale, int accumulate) {
    int r = (int)((blockIdx.x * (i64)blockDim.x + threadIdx.x) >> 5);
    int lane = threadIdx.x & 31;
    if (r >= rows) return;  // the whole warp leaves together
    int t0 = blockIdx.y * NT;
    const u8* row = W + (i64)r * row_bytes;
    int nchunks = (cols + QK - 1) / QK;
    float acc[NT];
    for (int t = 0; t < NT; t++) acc[t] = 0.0f;
    float w[QK];
    for (int c = lane; c < nchunks; c += 32) {
        int len = load_chunk<TY>(row, c, cols, w);
        for (int t = 0; t < NT; t++) {
            if (t0 + t < n) {
                const float* x = X + (i64)(t0 + t) * cols + (i64)c * QK;
                float s = 0.0f;
                for (int j = 0; j < len; j++) s += w[j] * x[j];
                acc[t] += s;
            }
        }
    }
    for (int t = 0; t < NT; t++) {
        float v = acc[t];
        for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
        acc[t] = v;
    }
    if (lane == 0) {
        for (int t = 0; t < NT; t++) {
            if (t0 + t < n) {
                float* y = Y + (i64)(t0 + t) * rows + r;
                *y = accumulate ? *y + scale * acc[t] : scale * acc[t];
            }
        }
    }
}

// out[t] = row ids[t] of W, dequantised (the embedding lookup). Exact: dequantisation rounds
// the same way on both sides. Launch: block (128) threads over chunks, grid (ceil(chunks/128), n).
template <int TY>
__device__ __forceinline__ void get_rows_impl(const u8* W, int n_rows, int cols, i64 row_bytes, const int* ids,
                                              float* out) {
    int t = blockIdx.y;
    int c = blockIdx.x * blockDim.x + threadIdx.x;
    int nchunks = (cols + QK - 1) / QK;
    int id = ids[t];
    if (c >= nchunks || id < 0 || id >= n_rows) return;
    float w[QK];
    int len = load_chunk<TY>(W + (i64)id * row_bytes, c, cols, w);
    for (int j = 0; j < len; j++) out[(i64)t * cols + (i64)c * QK + j] = w[j];
}

#define DEFINE_TYPED(NAME, TY)                                                                             \
    extern "C" __global__ void matmul_##NAME(const u8* W, int rows, int cols, i64 row_bytes, const float* X, \
                                             int n, float* Y, float scale, int accumulate) {                 \
        matmul_impl<TY>(W, rows, cols, row_bytes, X, n, Y, scale, accumulate);                              \
    }                                                                                                      \
    extern "C" __global__ void get_rows_##NAME(const u8* W, int n_rows, int cols, i64 row_bytes,            \
                                               const int* ids, float* out) {                                 \
        get_rows_impl<TY>(W, n_rows, cols, row_bytes, ids, out);                                            \
    }

DEFINE_TYPED(f32, TY_F32)
DEFINE_TYPED(f16, TY_F16)
DEFINE_TYPED(bf16, TY_BF16)
DEFINE_TYPED(q4_0, TY_Q4_0)
DEFINE_TYPED(q4_1, TY_Q4_1)
DEFINE_TYPED(q8_0, TY_Q8_0)

// Sum (or max) over a block of up to 1024 threads; every thread gets the result.
__device__ float block_reduce(float v, int is_max) {
    __shared__ float part[32];
    __shared__ float result;
    for (int o = 16; o > 0; o >>= 1) {
        float u = __shfl_xor_sync(0xffffffffu, v, o);
        v = is_max ? fmaxf(v, u) : v + u;
    }
    int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, nwarps = (blockDim.x + 31) >> 5;
    if (lane == 0) part[warp] = v;
    __syncthreads();
    if (warp == 0) {
        float w = lane < nwarps ? part[lane] : (is_max ? __int_as_float(0xff800000) : 0.0f);
        for (int o = 16; o > 0; o >>= 1) {
            float u = __shfl_xor_sync(0xffffffffu, w, o);
            w = is_max ? fmaxf(w, u) : w + u;
        }
        if (lane == 0) result = w;
    }
    __syncthreads();
    float r = result;
    __syncthreads();  // `part`/`result` may be reused by the next call
    return r;
}

// out[t] = x[t] / sqrt(mean(x[t]^2) + eps) * w, as model::rmsnorm: (v * inv) * w.
// Launch: block (256), grid (n tokens).
extern "C" __global__ void rmsnorm(const float* x, const float* w, float* out, int dim, float eps) {
    const float* xr = x + (i64)blockIdx.x * dim;
    float* o = out + (i64)blockIdx.x * dim;
    float s = 0.0f;
    for (int i = threadIdx.x; i < dim; i += blockDim.x) s += xr[i] * xr[i];
    s = block_reduce(s, 0);
    float ss = s / (float)dim;
    float inv = 1.0f / sqrtf(ss + eps);
    for (int i = threadIdx.x; i < dim; i += blockDim.x) o[i] = xr[i] * inv * w[i];
}

// Rotate adjacent pairs of every head of token t by table t's (cos, sin) pairs, as model::rope.
// x: n tokens, `stride` floats apart, each n_heads heads of head_dim. table: n x (2 * pairs).
// Launch: block (128), grid (n).
extern "C" __global__ void rope(float* x, int stride, int n_heads, int head_dim, const float* table, int pairs) {
    int t = blockIdx.x;
    const float* tab = table + (i64)t * 2 * pairs;
    for (int i = threadIdx.x; i < n_heads * pairs; i += blockDim.x) {
        int h = i / pairs, p = i % pairs;
        float* v = x + (i64)t * stride + (i64)h * head_dim + 2 * p;
        float a = v[0], b = v[1], c = tab[2 * p], s = tab[2 * p + 1];
        v[0] = a * c - b * s;
        v[1] = a * s + b * c;
    }
}

// Causal attention with a KV cache, GQA, for tokens at positions start .. start+n-1.
// q: n x (n_heads*head_dim); kc, vc: this layer's cache, positions x (n_kv_heads*head_dim),
// filled up to start+n; out: n x (n_heads*head_dim). Scores, weights and outputs follow the
// CPU's order; the max and the denominator are block reductions.
// Launch: block (128), grid (n_heads, n), dynamic shared memory (start + n) floats.
extern "C" __global__ void attention(const float* q, const float* kc, const float* vc, float* out, int n_heads,
                                     int n_kv_heads, int head_dim, int start, float scale) {
    extern __shared__ float att[];
    int h = blockIdx.x, t = blockIdx.y, pos = start + t;
    int kv_dim = n_kv_heads * head_dim, q_dim = n_heads * head_dim;
    int kvo = (h / (n_heads / n_kv_heads)) * head_dim;
    const float* qh = q + (i64)t * q_dim + (i64)h * head_dim;
    for (int j = threadIdx.x; j <= pos; j += blockDim.x) {
        const float* k = kc + (i64)j * kv_dim + kvo;
        float s = 0.0f;
        for (int d = 0; d < head_dim; d++) s += qh[d] * k[d];
        att[j] = s * scale;
    }
    __syncthreads();
    float m = __int_as_float(0xff800000);
    for (int j = threadIdx.x; j <= pos; j += blockDim.x) m = fmaxf(m, att[j]);
    m = block_reduce(m, 1);
    float sum = 0.0f;
    for (int j = threadIdx.x; j <= pos; j += blockDim.x) {
        float e = expf(att[j] - m);
        att[j] = e;
        sum += e;
    }
    sum = block_reduce(sum, 0);
    if (sum > 0.0f) {
        float inv = 1.0f / sum;
        for (int j = threadIdx.x; j <= pos; j += blockDim.x) att[j] *= inv;
    }
    __syncthreads();
    float* o = out + (i64)t * q_dim + (i64)h * head_dim;
    for (int d = threadIdx.x; d < head_dim; d += blockDim.x) {
        float acc = 0.0f;
        for (int j = 0; j <= pos; j++) acc += att[j] * vc[(i64)j * kv_dim + kvo + d];
        o[d] = acc;
    }
}

// g = silu(g) * u with silu(x) = x / (1 + exp(-x)), as the CPU. Launch: for_num_elems(n).
extern "C" __global__ void swiglu(float* g, const float* u, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) {
        float x = g[i];
        g[i] = x / (1.0f + expf(-x)) * u[i];
    }
}

// x += y. Launch: for_num_elems(n).
extern "C" __global__ void add(float* x, const float* y, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) x[i] += y[i];
}

// y[t][r] *= g[r] for n tokens of `rows` values (DoRA's per-row magnitude factors).
// Launch: for_num_elems(n * rows).
extern "C" __global__ void row_scale(float* y, const float* g, int rows, int n) {
    i64 i = blockIdx.x * (i64)blockDim.x + threadIdx.x;
    if (i < (i64)n * rows) y[i] *= g[i % rows];
}
