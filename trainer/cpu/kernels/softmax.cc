// Softmax backward over the last axis for MindSpore's ops.Custom(func_type="aot") on the CPU: dx = y * (dy - sum(y * dy)).
// Loaded by trainer/cpu/backward.py through trainer/cpu/kernels (compiled on first use, cached). float32 only.
// One kernel where MindSpore 2.10's CPU SoftmaxGrad expands to Mul, ReduceSum, Sub and Mul, the ReduceSum
// alone 0.45 ms for [12, 4, 64, 64] attention weights (bench/HISTORY.md, issue 5).
#include <cstdint>

// params: inputs y [..., n] (the softmax output), dy [..., n]; output dx [..., n]
extern "C" int SoftmaxBackward(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes,
                               void *stream, void *extra) {
  const float *y = static_cast<const float *>(params[0]);
  const float *dy = static_cast<const float *>(params[1]);
  float *dx = static_cast<float *>(params[2]);
  const int64_t n = shapes[0][ndims[0] - 1];
  int64_t rows = 1;
  for (int i = 0; i < ndims[0] - 1; ++i) rows *= shapes[0][i];
  for (int64_t r = 0; r < rows; ++r) {
    const float *yr = y + r * n, *dyr = dy + r * n;
    float *dxr = dx + r * n;
    float dot = 0.f;
    for (int64_t j = 0; j < n; ++j) dot += yr[j] * dyr[j];
    for (int64_t j = 0; j < n; ++j) dxr[j] = yr[j] * (dyr[j] - dot);
  }
  return 0;
}
