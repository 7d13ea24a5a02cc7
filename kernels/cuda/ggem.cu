// GGeM (Group Generalized Mean) pooling over tokens.
//
//   y[b, c] = ( (1/N) * sum_n max(x[b, n, c], eps) ^ p_g(c) ) ^ (1 / p_g(c))
//
// x is [B, N, C] contiguous, y is [B, C]; channels form G contiguous groups of
// C / G channels (a multiple of 8), group g has exponent p[g] >= 1 and
// inv_p[g] = 1 / p[g], both precomputed on the host.
//
// Numerics. Every power is taken in fp32 as t = p * log2(max(x, eps)), so
// x^p is 2^t. Summing 2^t directly overflows fp32 (60000^8 is 1.7e38 and a
// sum of 196 of them is not representable) and underflows for channels below
// eps (eps^8 = 1e-48), so the sum is carried in the log domain as a pair
// (m, s) meaning s * 2^m, with m the largest t seen so far and s in [1, count]:
//
//   y = 2^((m + log2(s) - log2(N)) / p)
//
// Every exp2 argument is <= 0 and s >= 1 once a token is seen, so nothing
// overflows, the logarithm is always of a finite number >= 1, and a channel
// whose inputs all lie below eps pools to eps exactly as the formula says.
// Tokens are processed GGEM_UNROLL rows at a time: the rows' largest t is
// taken first, so the extra exp2 that rescales the running pair is paid once
// per GGEM_UNROLL rows, not once per element. Per element that leaves one
// hardware log2 (__log2f: inputs are >= eps, so normal, and its 2 ulp are far
// inside the fp16 output's rounding) and one exp2f; the full-accuracy log2f is
// a software routine several times longer and would make the loop
// arithmetic-bound. The root, once per output, uses the accurate log2f.
//
// Work split. A block owns one batch item (grid.z), one tile of channels
// (grid.x) and one contiguous range of tokens (grid.y, "split"). Its threads
// form `rows` row walkers of `vec_tile` lanes: lane v loads 8 consecutive
// channels of a token row with 128-bit loads (one for fp16, two for fp32), so
// a row walker reads a contiguous run of the row and consecutive walkers read
// consecutive rows. A lane's 8 channels lie in one group because the group
// size is a multiple of 8. Walkers merge their pairs through shared memory.
// With one split the block applies the root and stores y. With several, each
// block writes its pairs to the workspace, and the last block of a (b, tile)
// to arrive merges the splits in split order (so the result does not depend
// on which block finished last) and stores y.
//
// Split merge and counters. counters[b, tile] counts the splits of (b, tile)
// that have written their pairs. It is zero when a launch starts and zero
// again when it ends, so one zeroed allocation serves every launch on a
// stream without a memset:
//   1. Every thread of a block stores its channels' pairs into the
//      workspace slots [b, split, 0..2, c] that only this block writes.
//   2. __syncthreads(); then thread 0 alone: __threadfence() (release: the
//      barrier orders every thread's stores before it, and the fence is
//      cumulative, so all of them are visible device-wide before the count),
//      atomicAdd(counter, 1).
//   3. The block whose atomicAdd returns splits - 1 is the last: the other
//      splits - 1 blocks have each counted once, so no block touches the
//      counter again in this launch, and thread 0 stores 0 into it. Before
//      that it fences again (acquire: the other blocks' pairs, released
//      before their counts, are visible to the loads after the barrier).
//   4. __syncthreads() hands the verdict to the block; the last block reads
//      the pairs with __ldcg (through L2, past any stale L1 line).
// This is the arrival pattern of cooperative groups' grid sync (barrier,
// fence, atomic, fence, barrier). The next launch on the stream starts after
// this one has finished, so it finds every counter at zero. Every workspace
// slot that step 4 reads was stored in step 1 of the same launch, so the
// workspace needs no initial value.
//
// Kernel parameters, in order (see kernels/src/ggem.rs, which computes them):
//   x          [B, N, C] input, 16-byte aligned
//   y          [B, C] output
//   p, inv_p   [G] exponents and their reciprocals
//   B, N, C, G sizes
//   eps        clamp floor, 1e-6
//   vec_tile   lanes per row walker; blockDim.x = vec_tile * rows
//   rows_per_split  tokens per split; gridDim.y = ceil(N / rows_per_split)
//   workspace  [B, splits, 2, C] floats; unused (may be null) when gridDim.y = 1
//   counters   [B, gridDim.x] unsigned, zero before the launch and left zero
//              by it; unused (may be null) when gridDim.y = 1
//
// blockDim.x must not exceed GGEM_MAX_THREADS.

#include <cuda_fp16.h>

#define GGEM_MAX_THREADS 256
#define GGEM_VEC 8
#define GGEM_UNROLL 4

namespace {

__device__ __forceinline__ float ggem_neg_inf() { return __int_as_float(0xff800000); }

// Loads 8 consecutive channels as fp32.
__device__ __forceinline__ void ggem_load8(const __half* __restrict__ src, float (&out)[GGEM_VEC]) {
    const uint4 raw = *reinterpret_cast<const uint4*>(src);
    const __half2* h = reinterpret_cast<const __half2*>(&raw);
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        const float2 f = __half22float2(h[i]);
        out[2 * i] = f.x;
        out[2 * i + 1] = f.y;
    }
}

__device__ __forceinline__ void ggem_load8(const float* __restrict__ src, float (&out)[GGEM_VEC]) {
    const float4 a = reinterpret_cast<const float4*>(src)[0];
    const float4 b = reinterpret_cast<const float4*>(src)[1];
    out[0] = a.x;
    out[1] = a.y;
    out[2] = a.z;
    out[3] = a.w;
    out[4] = b.x;
    out[5] = b.y;
    out[6] = b.z;
    out[7] = b.w;
}

__device__ __forceinline__ void ggem_store(__half* dst, float v) { *dst = __float2half_rn(v); }
__device__ __forceinline__ void ggem_store(float* dst, float v) { *dst = v; }

// Merges (m2, s2) into (m, s), both meaning s * 2^m. An empty pair is
// (-inf, 0); merging two empty pairs stays empty and never forms inf - inf.
__device__ __forceinline__ void ggem_merge(float& m, float& s, float m2, float s2) {
    const float hi = fmaxf(m, m2);
    const float lo = fminf(m, m2);
    const float scale = (lo == ggem_neg_inf()) ? 0.0f : exp2f(lo - hi);
    s = (m >= m2) ? fmaf(s2, scale, s) : fmaf(s, scale, s2);
    m = hi;
}

// The root: (s * 2^m / N) ^ inv_p, with s >= 1.
__device__ __forceinline__ float ggem_root(float m, float s, float log2_n, float inv_p) {
    return exp2f((m + log2f(s) - log2_n) * inv_p);
}

template <typename T>
__device__ __forceinline__ void ggem_kernel(
    const T* __restrict__ x, T* __restrict__ y, const float* __restrict__ p,
    const float* __restrict__ inv_p, int B, int N, int C, int G, float eps, int vec_tile,
    int rows_per_split, float* __restrict__ workspace, unsigned int* __restrict__ counters) {
    __shared__ float sh_m[GGEM_MAX_THREADS * GGEM_VEC];
    __shared__ float sh_s[GGEM_MAX_THREADS * GGEM_VEC];
    __shared__ bool sh_last;

    const int b = blockIdx.z;
    if (b >= B) {
        return;
    }
    const int tid = threadIdx.x;
    const int rows = blockDim.x / vec_tile;
    const int lane = tid % vec_tile;
    const int row = tid / vec_tile;
    const int tile = blockIdx.x;
    const int split = blockIdx.y;
    const int splits = gridDim.y;
    const int vecs = C / GGEM_VEC;
    const int vec = tile * vec_tile + lane;
    const int group_size = C / G;
    const int n_begin = split * rows_per_split;
    const int n_end = min(N, n_begin + rows_per_split);

    float m[GGEM_VEC];
    float s[GGEM_VEC];
#pragma unroll
    for (int k = 0; k < GGEM_VEC; ++k) {
        m[k] = ggem_neg_inf();
        s[k] = 0.0f;
    }

    if (row < rows && vec < vecs) {
        const int c0 = vec * GGEM_VEC;
        const float pg = p[c0 / group_size];
        const T* __restrict__ src = x + static_cast<size_t>(b) * N * C + c0;
        const int stride = rows * GGEM_UNROLL;
        for (int n = n_begin + row; n < n_end; n += stride) {
            float t[GGEM_UNROLL][GGEM_VEC];
#pragma unroll
            for (int u = 0; u < GGEM_UNROLL; ++u) {
                const int nu = n + u * rows;
                if (nu < n_end) {
                    float v[GGEM_VEC];
                    ggem_load8(src + static_cast<size_t>(nu) * C, v);
#pragma unroll
                    for (int k = 0; k < GGEM_VEC; ++k) {
                        t[u][k] = pg * __log2f(fmaxf(v[k], eps));
                    }
                } else {
#pragma unroll
                    for (int k = 0; k < GGEM_VEC; ++k) {
                        t[u][k] = ggem_neg_inf();
                    }
                }
            }
            // Row u = 0 always exists (n < n_end), so the chunk maximum is finite.
#pragma unroll
            for (int k = 0; k < GGEM_VEC; ++k) {
                float mc = t[0][k];
#pragma unroll
                for (int u = 1; u < GGEM_UNROLL; ++u) {
                    mc = fmaxf(mc, t[u][k]);
                }
                float sc = 0.0f;
#pragma unroll
                for (int u = 0; u < GGEM_UNROLL; ++u) {
                    sc += exp2f(t[u][k] - mc);
                }
                ggem_merge(m[k], s[k], mc, sc);
            }
        }
    }

    // Stage the walkers' pairs as [row][half][lane][4] so that consecutive
    // threads' 16-byte stores are contiguous.
    const int tile_channels = vec_tile * GGEM_VEC;
    const int half_stride = vec_tile * 4;
    {
        float* dm = sh_m + row * tile_channels + lane * 4;
        float* ds = sh_s + row * tile_channels + lane * 4;
        *reinterpret_cast<float4*>(dm) = make_float4(m[0], m[1], m[2], m[3]);
        *reinterpret_cast<float4*>(dm + half_stride) = make_float4(m[4], m[5], m[6], m[7]);
        *reinterpret_cast<float4*>(ds) = make_float4(s[0], s[1], s[2], s[3]);
        *reinterpret_cast<float4*>(ds + half_stride) = make_float4(s[4], s[5], s[6], s[7]);
    }
    __syncthreads();

    const float log2_n = log2f(static_cast<float>(N));
    const int tile_c0 = tile * tile_channels;
    for (int i = tid; i < tile_channels; i += blockDim.x) {
        const int half = i / half_stride;
        const int w = i - half * half_stride;
        const int c = tile_c0 + (w / 4) * GGEM_VEC + half * 4 + (w % 4);
        if (c >= C) {
            continue;
        }
        // Walker 0 has at least one token: every split is non-empty.
        float pm = sh_m[i];
        float ps = sh_s[i];
        for (int r = 1; r < rows; ++r) {
            ggem_merge(pm, ps, sh_m[r * tile_channels + i], sh_s[r * tile_channels + i]);
        }
        if (splits == 1) {
            ggem_store(y + static_cast<size_t>(b) * C + c, ggem_root(pm, ps, log2_n, inv_p[c / group_size]));
        } else {
            float* ws = workspace + (static_cast<size_t>(b) * splits + split) * 2 * C;
            ws[c] = pm;
            ws[C + c] = ps;
        }
    }
    if (splits == 1) {
        return;
    }

    // Count this block in; the last of the (b, tile) to arrive merges and
    // resets the counter (steps 2 to 4 at the top of this file).
    __syncthreads();
    unsigned int* counter = counters + static_cast<size_t>(b) * gridDim.x + tile;
    if (tid == 0) {
        __threadfence();
        const unsigned int arrived = atomicAdd(counter, 1u);
        const bool last = arrived == static_cast<unsigned int>(splits - 1);
        if (last) {
            __threadfence();
            // Every split has counted itself in and none counts again in
            // this launch: the counter is free to go back to zero.
            *counter = 0u;
        }
        sh_last = last;
    }
    __syncthreads();
    if (!sh_last) {
        return;
    }

    // Last block of this (b, tile): merge the splits in order.
    const float* ws_b = workspace + static_cast<size_t>(b) * splits * 2 * C;
    for (int i = tid; i < tile_channels; i += blockDim.x) {
        const int c = tile_c0 + i;
        if (c >= C) {
            break;
        }
        float pm = __ldcg(ws_b + c);
        float ps = __ldcg(ws_b + C + c);
        for (int sp = 1; sp < splits; ++sp) {
            const float* ws = ws_b + static_cast<size_t>(sp) * 2 * C;
            ggem_merge(pm, ps, __ldcg(ws + c), __ldcg(ws + C + c));
        }
        ggem_store(y + static_cast<size_t>(b) * C + c, ggem_root(pm, ps, log2_n, inv_p[c / group_size]));
    }
}

}  // namespace

extern "C" __global__ void __launch_bounds__(GGEM_MAX_THREADS) ggem_f16(
    const __half* __restrict__ x, __half* __restrict__ y, const float* __restrict__ p,
    const float* __restrict__ inv_p, int B, int N, int C, int G, float eps, int vec_tile,
    int rows_per_split, float* __restrict__ workspace, unsigned int* __restrict__ counters) {
    ggem_kernel<__half>(x, y, p, inv_p, B, N, C, G, eps, vec_tile, rows_per_split, workspace,
                        counters);
}

extern "C" __global__ void __launch_bounds__(GGEM_MAX_THREADS) ggem_f32(
    const float* __restrict__ x, float* __restrict__ y, const float* __restrict__ p,
    const float* __restrict__ inv_p, int B, int N, int C, int G, float eps, int vec_tile,
    int rows_per_split, float* __restrict__ workspace, unsigned int* __restrict__ counters) {
    ggem_kernel<float>(x, y, p, inv_p, B, N, C, G, eps, vec_tile, rows_per_split, workspace,
                       counters);
}
