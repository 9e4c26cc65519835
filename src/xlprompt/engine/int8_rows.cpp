// The two elementwise steps around int8_token.py's integer matmul, each in one pass over memory:
//   quantize_rows: s_i = max(max_j |x_ij|, 1e-12) / 127,  q_ij = round_half_even(x_ij / s_i)  (int8)
//   rescale:       y_ij = float(acc_ij) * (s_i * w_j) + b_j                                  (first n rows)
// The arithmetic is exactly PyTorch's eager ops in int8_token.py (division, not a reciprocal; a multiply and
// an add, never a fused multiply-add: built with -ffp-contract=off), so both paths give the same bits.
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <algorithm>
#include <cmath>
#include <vector>
#ifdef __AVX512F__
#include <immintrin.h>
#endif

static void quantize_row(const float* r, int64_t k, int8_t* out, float* scale) {
  int64_t j = 0;
  float m = 0.f;
#ifdef __AVX512F__
  __m512 vm = _mm512_setzero_ps();
  for (; j + 16 <= k; j += 16) vm = _mm512_max_ps(vm, _mm512_abs_ps(_mm512_loadu_ps(r + j)));
  m = _mm512_reduce_max_ps(vm);
#endif
  for (; j < k; ++j) m = std::max(m, std::fabs(r[j]));
  const float s = std::max(m, 1e-12f) / 127.f;
  *scale = s;
  j = 0;
#ifdef __AVX512F__
  const __m512 vs = _mm512_set1_ps(s);
  for (; j + 16 <= k; j += 16) {  // cvtps rounds half to even (the default MXCSR mode), as torch.round does
    __m512i q = _mm512_cvtps_epi32(_mm512_div_ps(_mm512_loadu_ps(r + j), vs));
    _mm_storeu_si128(reinterpret_cast<__m128i*>(out + j), _mm512_cvtsepi32_epi8(q));
  }
#endif
  for (; j < k; ++j) out[j] = static_cast<int8_t>(std::nearbyint(r[j] / s));
}

static void rescale_row(const int32_t* a, int64_t m, float si, const float* sw, const float* b, float* out) {
  int64_t j = 0;
#ifdef __AVX512F__
  const __m512 vsi = _mm512_set1_ps(si);
  for (; j + 16 <= m; j += 16) {
    __m512 t = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_loadu_si512(a + j)), _mm512_mul_ps(vsi, _mm512_loadu_ps(sw + j)));
    if (b) t = _mm512_add_ps(t, _mm512_loadu_ps(b + j));
    _mm512_storeu_ps(out + j, t);
  }
#endif
  for (; j < m; ++j) {
    const float t = static_cast<float>(a[j]) * (si * sw[j]);
    out[j] = b ? t + b[j] : t;
  }
}

std::vector<torch::Tensor> quantize_rows(torch::Tensor x) {
  TORCH_CHECK(x.dim() == 2 && x.scalar_type() == torch::kFloat && x.device().is_cpu(),
              "quantize_rows takes a 2-D float32 CPU tensor");
  x = x.contiguous();
  const int64_t n = x.size(0), k = x.size(1);
  auto q = torch::empty({n, k}, x.options().dtype(torch::kInt8));
  auto s = torch::empty({n, 1}, x.options());
  const float* xp = x.data_ptr<float>();
  int8_t* qp = q.data_ptr<int8_t>();
  float* sp = s.data_ptr<float>();
  at::parallel_for(0, n, 64, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) quantize_row(xp + i * k, k, qp + i * k, sp + i);
  });
  return {q, s};
}

torch::Tensor rescale(torch::Tensor acc, torch::Tensor sx, torch::Tensor sw, c10::optional<torch::Tensor> bias,
                      int64_t n) {
  TORCH_CHECK(acc.dim() == 2 && acc.scalar_type() == torch::kInt && acc.is_contiguous(), "acc: contiguous int32 (rows, out)");
  const int64_t m = acc.size(1);
  TORCH_CHECK(n <= acc.size(0) && sx.numel() >= n && sw.numel() == m && (!bias.has_value() || bias->numel() == m),
              "rescale: shapes do not match");
  TORCH_CHECK(sx.scalar_type() == torch::kFloat && sw.scalar_type() == torch::kFloat && sx.is_contiguous() &&
              sw.is_contiguous(), "rescale: float32 contiguous scales");
  auto y = torch::empty({n, m}, sx.options());
  const int32_t* ap = acc.data_ptr<int32_t>();
  const float* sxp = sx.data_ptr<float>();
  const float* swp = sw.data_ptr<float>();
  const float* bp = nullptr;
  if (bias.has_value()) {
    TORCH_CHECK(bias->scalar_type() == torch::kFloat && bias->is_contiguous(), "rescale: float32 contiguous bias");
    bp = bias->data_ptr<float>();
  }
  float* yp = y.data_ptr<float>();
  at::parallel_for(0, n, 64, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) rescale_row(ap + i * m, m, sxp[i], swp, bp, yp + i * m);
  });
  return y;
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("quantize_rows", &quantize_rows, "per-row symmetric int8 quantization: (int8 rows, (n, 1) scales)");
  m.def("rescale", &rescale, "int32 products to float: acc * (row scale * column scale) + bias, first n rows");
}
