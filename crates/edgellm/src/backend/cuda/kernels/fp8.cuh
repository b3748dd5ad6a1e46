// fp8 E4M3 on the device (the `float8_e4m3fn` of quant/fp8.rs): decoding without a table, the
// nearest-even encoding with saturation at +-448, and the element types of the KV cache.
//
// Decoding: a code's low 7 bits shifted left by 7 with the sign at bit 15 are the f16 whose value
// is the code's value / 256 (exact for every finite code; quant/fp8.rs), two codes per 32-bit word.
// Encoding is in software on every arch (sm_87 has no fp8 conversion instruction), so a cache
// written on Orin and on Hopper holds the same codes as the CPU's `fp8::encode`.

// Two E4M3 codes in the high byte of each 16-bit lane of `lanes` to two fp16 (value / 256), in
// the same lanes.
__device__ __forceinline__ unsigned fp8x2_to_f16x2(unsigned lanes) {
    return ((lanes >> 1) & 0x3F803F80u) | (lanes & 0x80008000u);
}

// The same as floats.
__device__ __forceinline__ void fp8x2_to_f(unsigned lanes, float* w) {
    unsigned h = fp8x2_to_f16x2(lanes);
    w[0] = F16::to_f((u16)(h & 0xffff));
    w[1] = F16::to_f((u16)(h >> 16));
}

// The 4 E4M3 codes of `word` (memory order) as value / 256.
__device__ __forceinline__ void fp8x4_to_f(unsigned word, float* w) {
    fp8x2_to_f(__byte_perm(word, 0, 0x1404), w);      // codes 0, 1
    fp8x2_to_f(__byte_perm(word, 0, 0x3424), w + 2);  // codes 2, 3
}

// The nearest E4M3 code to x, ties to even, saturating at +-448 (NaN saturates too).
__device__ __forceinline__ unsigned char fp8_encode(float x) {
    unsigned sign = __float_as_uint(x) >> 31 << 7;
    float a = fminf(fabsf(x), 448.f);
    unsigned code;
    if (a < 0.015625f) {
        // subnormals and zero: steps of 2^-9, rounded to nearest even (code 8 = 2^-6 is the
        // smallest normal, which the rounding may reach)
        code = (unsigned)__float2int_rn(a * 512.f);
    } else {
        unsigned b = __float_as_uint(a);
        b += 0x7FFFFu + ((b >> 20) & 1u);  // round the mantissa to 3 bits, ties to even
        code = (((b >> 23) - 120u) << 3) | ((b >> 20) & 7u);
    }
    return (unsigned char)(code == 0 ? 0 : (sign | code));
}

// KV cache elements. `load8` reads 8 consecutive elements (16- or 8-byte load) as floats in
// units of `unit` (fp16: the value; fp8: value / 256, the 256 and the per-tensor scale joining
// the caller's multipliers); `f16x8` reads them as 8 fp16 in the same units (exact: every E4M3
// value / 256 is an fp16), the tensor-core operands of the prefill attention; `store` writes
// value / scale; `stage8` copies 8 elements from the cache into shared memory asynchronously
// (common.cuh `cp_async`).
struct KvF16 {
    typedef u16 T;
    static __device__ __forceinline__ void load8(const T* p, float* f) { unpack8<F16>(*(const uint4*)p, f); }
    static __device__ __forceinline__ uint4 f16x8(const T* p) { return *(const uint4*)p; }
    static __device__ __forceinline__ void stage8(T* shared, const T* global) { cp_async<16>(shared, global); }
    static __device__ __forceinline__ void store(T* p, float v, float) { *p = F16::from_f(v); }
};

struct KvFp8 {
    typedef unsigned char T;
    static __device__ __forceinline__ void load8(const T* p, float* f) {
        uint2 raw = *(const uint2*)p;
        fp8x4_to_f(raw.x, f);
        fp8x4_to_f(raw.y, f + 4);
    }
    static __device__ __forceinline__ uint4 f16x8(const T* p) {
        uint2 raw = *(const uint2*)p;
        return make_uint4(fp8x2_to_f16x2(__byte_perm(raw.x, 0, 0x1404)), fp8x2_to_f16x2(__byte_perm(raw.x, 0, 0x3424)),
                          fp8x2_to_f16x2(__byte_perm(raw.y, 0, 0x1404)), fp8x2_to_f16x2(__byte_perm(raw.y, 0, 0x3424)));
    }
    static __device__ __forceinline__ void store(T* p, float v, float scale) { *p = fp8_encode(v / scale); }
    static __device__ __forceinline__ void stage8(T* shared, const T* global) { cp_async<8>(shared, global); }
};
