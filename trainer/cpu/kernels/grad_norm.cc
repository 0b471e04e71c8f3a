// Sum of squares over many float32 tensors in one kernel, for the gradient-clipping norm, for MindSpore's
// ops.Custom(func_type="aot") on the CPU. Used by trainer/cpu/grad_norm.py through trainer/cpu/kernels (compiled on
// first use, cached). One kernel where Square, ReduceSum (twice) and AddN over 129 gradients launch about
// 300 small ones (bench/HISTORY.md, issue 5).
#include <cstdint>

// params: inputs t_0 .. t_{k-1} (any shapes); output [1]: the sum over all of t^2
extern "C" int SumOfSquares(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes,
                            void *stream, void *extra) {
  double total = 0.0;
  for (int i = 0; i < nparam - 1; ++i) {
    int64_t n = 1;
    for (int j = 0; j < ndims[i]; ++j) n *= shapes[i][j];
    const float *t = static_cast<const float *>(params[i]);
    for (int64_t start = 0; start < n; start += 65536) {  // float partial sums (vectorised), a double across
      const int64_t end = start + 65536 < n ? start + 65536 : n;
      float partial = 0.f;
      for (int64_t k = start; k < end; ++k) partial += t[k] * t[k];
      total += partial;
    }
  }
  static_cast<float *>(params[nparam - 1])[0] = static_cast<float>(total);
  return 0;
}
