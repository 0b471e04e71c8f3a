// LayerNorm over the last axis, forward and backward, for MindSpore's ops.Custom(func_type="aot") on the CPU.
// Loaded by trainer/cpu/backward.py through trainer/cpu/kernels (compiled on first use, cached). float32 only.
// One kernel each way, where MindSpore 2.10's CPU LayerNorm forward is slow (0.5 ms for [768, 256])
// and the written-out backward of trainer/cpu/backward.py takes about ten element-wise kernels
// (bench/HISTORY.md, issue 5).
#include <cmath>
#include <cstdint>
#include <cstring>

// Rows (all axes but the last) and row width of params[0].
static void rows_and_width(int *ndims, int64_t **shapes, int64_t *rows, int64_t *width) {
  *width = shapes[0][ndims[0] - 1];
  *rows = 1;
  for (int i = 0; i < ndims[0] - 1; ++i) *rows *= shapes[0][i];
}

// y = (x - mean) * rstd * gamma + beta over the last axis; also writes mean and rstd = 1 / sqrt(var + eps) per row.
// params: inputs x [..., d], gamma [d], beta [d], eps [1]; outputs y [..., d], mean [...], rstd [...]
extern "C" int LayerNormForward(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes,
                                void *stream, void *extra) {
  const float *x = static_cast<const float *>(params[0]);
  const float *gamma = static_cast<const float *>(params[1]);
  const float *beta = static_cast<const float *>(params[2]);
  const float eps = static_cast<const float *>(params[3])[0];
  float *y = static_cast<float *>(params[4]);
  float *mean_out = static_cast<float *>(params[5]);
  float *rstd_out = static_cast<float *>(params[6]);
  int64_t n, d;
  rows_and_width(ndims, shapes, &n, &d);
  for (int64_t r = 0; r < n; ++r) {
    const float *xr = x + r * d;
    float *yr = y + r * d;
    float sum = 0.f;
    for (int64_t j = 0; j < d; ++j) sum += xr[j];
    const float mean = sum / d;
    float var = 0.f;
    for (int64_t j = 0; j < d; ++j) { const float c = xr[j] - mean; var += c * c; }
    const float rstd = 1.f / std::sqrt(var / d + eps);
    for (int64_t j = 0; j < d; ++j) yr[j] = (xr[j] - mean) * rstd * gamma[j] + beta[j];
    mean_out[r] = mean;
    rstd_out[r] = rstd;
  }
  return 0;
}

// With xhat = (x - mean) * rstd and g = dy * gamma: dx = rstd * (g - mean(g) - xhat * mean(g * xhat)),
// dgamma = sum over rows of dy * xhat, dbeta = sum over rows of dy.
// params: inputs x [..., d], gamma [d], mean [...], rstd [...], dy [..., d]; outputs dx [..., d], dgamma [d], dbeta [d]
extern "C" int LayerNormBackward(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes,
                                 void *stream, void *extra) {
  const float *x = static_cast<const float *>(params[0]);
  const float *gamma = static_cast<const float *>(params[1]);
  const float *mean = static_cast<const float *>(params[2]);
  const float *rstd = static_cast<const float *>(params[3]);
  const float *dy = static_cast<const float *>(params[4]);
  float *dx = static_cast<float *>(params[5]);
  float *dgamma = static_cast<float *>(params[6]);
  float *dbeta = static_cast<float *>(params[7]);
  int64_t n, d;
  rows_and_width(ndims, shapes, &n, &d);
  std::memset(dgamma, 0, sizeof(float) * d);
  std::memset(dbeta, 0, sizeof(float) * d);
  for (int64_t r = 0; r < n; ++r) {
    const float *xr = x + r * d, *dyr = dy + r * d;
    float *dxr = dx + r * d;
    const float m = mean[r], s = rstd[r];
    float sum_g = 0.f, sum_gx = 0.f;
    for (int64_t j = 0; j < d; ++j) {
      const float xhat = (xr[j] - m) * s;
      const float g = dyr[j] * gamma[j];
      sum_g += g;
      sum_gx += g * xhat;
      dgamma[j] += dyr[j] * xhat;
      dbeta[j] += dyr[j];
    }
    const float mg = sum_g / d, mgx = sum_gx / d;
    for (int64_t j = 0; j < d; ++j) {
      const float xhat = (xr[j] - m) * s;
      dxr[j] = s * (dyr[j] * gamma[j] - mg - xhat * mgx);
    }
  }
  return 0;
}
