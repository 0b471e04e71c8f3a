// Counter-based dropout keep-mask for MindSpore's ops.Custom(func_type="aot") on the CPU: the same bits as
// model/dropout.py's CounterMask (13 element-wise MindSpore passes) in one pass. Used through trainer/cpu.
#include <cstdint>

static inline uint32_t fmix32(uint32_t h) {
  h ^= h >> 16;
  h *= 0x85EBCA6Bu;
  h ^= h >> 13;
  h *= 0xC2B2AE35u;
  h ^= h >> 16;
  return h;
}

// params: x (any dtype; only its shape is read), base int32 [], threshold int32 []; output: float32 mask, x's shape
extern "C" int DropoutMask(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes,
                           void *stream, void *extra) {
  int64_t n = 1;
  for (int j = 0; j < ndims[0]; ++j) n *= shapes[0][j];
  const uint32_t base = static_cast<uint32_t>(static_cast<const int32_t *>(params[1])[0]);
  const uint32_t threshold = static_cast<uint32_t>(static_cast<const int32_t *>(params[2])[0]);
  float *mask = static_cast<float *>(params[3]);
  for (int64_t i = 0; i < n; ++i) {
    const uint32_t h = fmix32(static_cast<uint32_t>(i) * 0x9E3779B1u + base);
    mask[i] = (h & 0xFFFFFFu) < threshold ? 1.f : 0.f;
  }
  return 0;
}
