// A tiny CPU emulation of the CUDA features kernels.cu uses, so that its kernels run under g++
// on a machine with no GPU (tests/kernels_emulated.rs). One OS thread per CUDA thread, blocks one
// after another; __syncthreads and __shfl_xor_sync are barriers. Function-local __shared__
// arrays become statics (one block at a time, so one copy is enough); the test rewrites the one
// `extern __shared__` declaration to use emu_dyn_smem. Compiled with -ffp-contract=off, like
// NVRTC's --fmad=false. It checks indexing, layouts and reductions, not CUDA's ulps.
#pragma once
#include <barrier>
#include <cmath>
#include <cstring>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

struct emu_dim3 {
    unsigned x = 1, y = 1, z = 1;
};
inline thread_local emu_dim3 threadIdx, blockIdx;
inline emu_dim3 blockDim, gridDim;
inline std::vector<float> emu_dyn;
inline float* emu_dyn_smem() { return emu_dyn.data(); }
inline std::barrier<>* emu_block_barrier = nullptr;
inline std::vector<std::unique_ptr<std::barrier<>>> emu_warp_barriers;
inline float emu_shfl[32][32];
// The state above is global: one launch at a time (the Rust test harness runs tests in threads).
inline std::mutex emu_launch_lock;

#define __global__
#define __device__
#define __forceinline__ inline
#define __shared__ static

inline void __syncthreads() { emu_block_barrier->arrive_and_wait(); }

inline float __shfl_xor_sync(unsigned, float v, int o) {
    unsigned w = threadIdx.x >> 5, l = threadIdx.x & 31;
    emu_shfl[w][l] = v;
    emu_warp_barriers[w]->arrive_and_wait();
    float r = emu_shfl[w][l ^ (unsigned)o];
    emu_warp_barriers[w]->arrive_and_wait();
    return r;
}

inline float __uint_as_float(unsigned u) {
    float f;
    std::memcpy(&f, &u, 4);
    return f;
}
inline float __int_as_float(int i) {
    float f;
    std::memcpy(&f, &i, 4);
    return f;
}

// Run kernel<<<grid, block, smem>>>(args...) to completion.
template <typename F, typename... A>
void emu_launch(F kernel, emu_dim3 grid, emu_dim3 block, size_t smem, A... args) {
    std::lock_guard<std::mutex> guard(emu_launch_lock);
    blockDim = block;
    gridDim = grid;
    for (unsigned by = 0; by < grid.y; by++) {
        for (unsigned bx = 0; bx < grid.x; bx++) {
            emu_dyn.assign(smem / sizeof(float) + 1, 0.0f);
            std::barrier<> bb(block.x);
            emu_block_barrier = &bb;
            emu_warp_barriers.clear();
            for (unsigned w = 0; w < (block.x + 31) / 32; w++) emu_warp_barriers.emplace_back(new std::barrier<>(32));
            std::vector<std::thread> ts;
            for (unsigned t = 0; t < block.x; t++) {
                ts.emplace_back([=] {
                    threadIdx = emu_dim3{t, 0, 0};
                    blockIdx = emu_dim3{bx, by, 0};
                    kernel(args...);
                });
            }
            for (auto& t : ts) t.join();
        }
    }
}
