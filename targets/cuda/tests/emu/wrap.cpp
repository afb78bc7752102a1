// C entry points over the emulated kernels, with the launch shapes gpu.rs uses.
#include "cuda_emu.h"
#include "kernels_emu.cu"

typedef void (*matmul_fn)(const u8*, int, int, i64, const float*, int, float*, float, int);
typedef void (*get_rows_fn)(const u8*, int, int, i64, const int*, float*);
static const matmul_fn MATMUL[6] = {matmul_f32, matmul_f16, matmul_bf16, matmul_q4_0, matmul_q4_1, matmul_q8_0};
static const get_rows_fn GET_ROWS[6] = {get_rows_f32, get_rows_f16, get_rows_bf16, get_rows_q4_0, get_rows_q4_1, get_rows_q8_0};
static unsigned cdiv(long long a, long long b) { return (unsigned)((a + b - 1) / b > 0 ? (a + b - 1) / b : 1); }

extern "C" void emu_matmul(int code, const u8* w, int rows, int cols, i64 row_bytes, const float* x, int n, float* y,
                           float scale, int acc) {
    emu_launch(MATMUL[code], emu_dim3{cdiv(rows, 4), cdiv(n, NT), 1}, emu_dim3{128, 1, 1}, 0, w, rows, cols, row_bytes, x, n, y,
               scale, acc);
}
extern "C" void emu_get_rows(int code, const u8* w, int rows, int cols, i64 row_bytes, const int* ids, int n, float* out) {
    emu_launch(GET_ROWS[code], emu_dim3{cdiv((cols + 31) / 32, 128), (unsigned)n, 1}, emu_dim3{128, 1, 1}, 0, w, rows, cols,
               row_bytes, ids, out);
}
extern "C" void emu_rmsnorm(const float* x, const float* w, float* out, int n, int dim, float eps) {
    emu_launch(rmsnorm, emu_dim3{(unsigned)n, 1, 1}, emu_dim3{256, 1, 1}, 0, x, w, out, dim, eps);
}
extern "C" void emu_rope(float* x, int n, int stride, int heads, int head_dim, const float* table, int pairs) {
    emu_launch(rope, emu_dim3{(unsigned)n, 1, 1}, emu_dim3{128, 1, 1}, 0, x, stride, heads, head_dim, table, pairs);
}
extern "C" void emu_attention(const float* q, const float* kc, const float* vc, float* out, int n, int nh, int nkv, int hd,
                              int start, float scale) {
    emu_launch(attention, emu_dim3{(unsigned)nh, (unsigned)n, 1}, emu_dim3{128, 1, 1}, (size_t)(start + n) * 4, q, kc, vc, out,
               nh, nkv, hd, start, scale);
}
extern "C" void emu_swiglu(float* g, const float* u, int n) {
    emu_launch(swiglu, emu_dim3{cdiv(n, 256), 1, 1}, emu_dim3{256, 1, 1}, 0, g, u, n);
}
