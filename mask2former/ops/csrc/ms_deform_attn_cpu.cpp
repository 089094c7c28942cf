// Multi-scale deformable attention on the CPU: forward and backward.
//
// The bilinear gather is fused with the attention-weighted sum: every query reads the four corner rows of
// each sampling point straight from `value` and accumulates them in registers, so no samples tensor exists.
// Sampling convention (as grid_sample with align_corners=False and zero padding, and the original CUDA
// kernel): a location (x, y) in [0, 1] is the pixel coordinate (x * W - 0.5, y * H - 0.5); corners outside
// the map contribute zero.
//
// Shapes (N batch, S tokens, M heads, D channels, Lq queries, L levels, P points):
//   value (N, S, M, D) scalar_t; spatial_shapes (L, 2) int64; level_start (L,) int64
//   sampling_locations (N, Lq, M, L, P, 2) and attention_weights (N, Lq, M, L, P) in acc_t
//   (float for float and bfloat16 values, double for double); output (N, Lq, M, D) scalar_t.
// All arithmetic is in acc_t. The value gradient is computed without atomics: each task owns one
// (batch, head) slice of it, or, when there are fewer slices than threads, a private buffer for a range of
// queries that is summed afterwards.
#include <torch/extension.h>

#include <ATen/Parallel.h>
#include <ATen/OpMathType.h>

#include <cmath>
#include <cstring>
#include <type_traits>
#include <vector>

namespace {

// GCC and Clang vector extensions: 8 floats, one AVX2 register (two SSE/NEON registers elsewhere). Written
// out because the compilers do not vectorise the channel loops behind the gathered row pointers by themselves.
#if defined(__GNUC__) || defined(__clang__)
#define M2F_VECTORS 1
typedef float float8 __attribute__((vector_size(32)));
typedef uint16_t ushort8 __attribute__((vector_size(16)));
typedef uint32_t uint8v __attribute__((vector_size(32)));

template <typename scalar_t>
inline float8 load8(const scalar_t* p) {
  float8 x;
  if constexpr (std::is_same<scalar_t, float>::value) {
    std::memcpy(&x, p, sizeof(x));
  } else if constexpr (std::is_same<scalar_t, c10::BFloat16>::value) {
    ushort8 bits;  // bfloat16 is the upper half of a float
    std::memcpy(&bits, p, sizeof(bits));
    const uint8v wide = __builtin_convertvector(bits, uint8v) << 16;
    std::memcpy(&x, &wide, sizeof(x));
  } else {
    for (int i = 0; i < 8; ++i) x[i] = static_cast<float>(p[i]);
  }
  return x;
}

template <typename scalar_t>
inline void store8(scalar_t* p, float8 x) {
  if constexpr (std::is_same<scalar_t, float>::value) {
    std::memcpy(p, &x, sizeof(x));
  } else {
    for (int i = 0; i < 8; ++i) p[i] = static_cast<scalar_t>(x[i]);
  }
}

inline float hsum(float8 x) {
  return ((x[0] + x[1]) + (x[2] + x[3])) + ((x[4] + x[5]) + (x[6] + x[7]));
}
#endif

// Whether the channel loops run on float8 vectors: float accumulation and a compile-time width of 8k.
template <typename scalar_t, int64_t DC>
constexpr bool use_vectors() {
#ifdef M2F_VECTORS
  return std::is_same<at::opmath_type<scalar_t>, float>::value && DC > 0 && DC % 8 == 0;
#else
  return false;
#endif
}

// The 4 bilinear corners of every sampling point of one (query, head), computed in a first pass without
// branches so that the second pass is a tight gather-multiply-add loop. Corners outside the map (and all
// corners of a NaN location) get weight 0 and offset 0: reading row 0 with weight 0 adds nothing.
template <typename acc_t>
struct PointCorners {
  std::vector<int64_t> offset;  // (L*P*4) element offsets of the corner rows from token 0 of the (n, m) map
  std::vector<acc_t> weight;    // (L*P*4) bilinear weight of each corner (0 when outside)
  std::vector<acc_t> valid;     // (L*P*4) 1 for corners inside the map, else 0
  std::vector<acc_t> frac;      // (L*P*2) fractional parts (lx, ly) of the pixel coordinate
  explicit PointCorners(int64_t LP) : offset(LP * 4), weight(LP * 4), valid(LP * 4), frac(LP * 2) {}

  // row: the element stride of one token; rows: where the corner rows start (prefetched, as the loop that
  // reads them follows at once).
  template <typename scalar_t>
  void compute(const acc_t* loc, const int64_t* shapes, const int64_t* starts, int64_t L, int64_t P,
               int64_t row, const scalar_t* rows) {
    for (int64_t l = 0; l < L; ++l) {
      const int64_t H = shapes[2 * l], W = shapes[2 * l + 1];
      for (int64_t p = 0; p < P; ++p) {
        const int64_t i = l * P + p;
        const acc_t x = loc[2 * i] * W - acc_t(0.5), y = loc[2 * i + 1] * H - acc_t(0.5);
        const bool inside = x > acc_t(-1) && y > acc_t(-1) && x < acc_t(W) && y < acc_t(H);  // false for NaN
        const acc_t fx = inside ? std::floor(x) : acc_t(0), fy = inside ? std::floor(y) : acc_t(0);
        const int64_t x0 = static_cast<int64_t>(fx), y0 = static_cast<int64_t>(fy);
        const acc_t lx = inside ? x - fx : acc_t(0), ly = inside ? y - fy : acc_t(0);
        frac[2 * i] = lx;
        frac[2 * i + 1] = ly;
        const acc_t wx[2] = {1 - lx, lx}, wy[2] = {1 - ly, ly};
        for (int k = 0; k < 4; ++k) {
          const int64_t xx = x0 + (k & 1), yy = y0 + (k >> 1);
          const bool ok = inside && xx >= 0 && xx < W && yy >= 0 && yy < H;
          offset[4 * i + k] = ok ? (starts[l] + yy * W + xx) * row : 0;
          weight[4 * i + k] = ok ? wy[k >> 1] * wx[k & 1] : acc_t(0);
          valid[4 * i + k] = ok ? acc_t(1) : acc_t(0);
#if defined(__GNUC__) || defined(__clang__)
          __builtin_prefetch(rows + offset[4 * i + k]);
#endif
        }
      }
    }
  }
};

// DC > 0: the channel count is a compile-time constant (the accumulator lives in registers); 0: runtime D.
template <typename scalar_t, int64_t DC>
void forward_kernel(const scalar_t* value, const int64_t* shapes, const int64_t* starts,
                    const at::opmath_type<scalar_t>* loc, const at::opmath_type<scalar_t>* attn, scalar_t* out,
                    int64_t N, int64_t S, int64_t M, int64_t D, int64_t Lq, int64_t L, int64_t P) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t row = M * D;  // stride of one token in value
  const int64_t LP = L * P;
  // One task per (batch, query): all heads, so the output row is written once and in order.
  at::parallel_for(0, N * Lq, 16, [&](int64_t begin, int64_t end) {
    const int64_t Dk = DC > 0 ? DC : D;
    std::vector<acc_t> heap(DC > 0 ? 0 : D);
    acc_t stack[DC > 0 ? DC : 1];
    acc_t* acc = DC > 0 ? stack : heap.data();
    PointCorners<acc_t> pc(LP);
    for (int64_t nq = begin; nq < end; ++nq) {
      const int64_t n = nq / Lq;
      for (int64_t m = 0; m < M; ++m) {
        const int64_t nqm = nq * M + m;
        const scalar_t* v_nm = value + n * S * row + m * D;
        pc.compute(loc + nqm * LP * 2, shapes, starts, L, P, row, v_nm);
        const acc_t* attn_q = attn + nqm * LP;
        scalar_t* o = out + nqm * D;
#ifdef M2F_VECTORS
        if constexpr (use_vectors<scalar_t, DC>()) {
          constexpr int64_t NV = DC / 8;
          float8 vacc[NV];  // a local array of constant size: kept in vector registers
          for (int64_t j = 0; j < NV; ++j) vacc[j] = float8{};
          for (int64_t c = 0; c < 4 * LP; ++c) {
            const float wk = attn_q[c / 4] * pc.weight[c];
            const scalar_t* v = v_nm + pc.offset[c];
            for (int64_t j = 0; j < NV; ++j) vacc[j] += wk * load8(v + 8 * j);
          }
          for (int64_t j = 0; j < NV; ++j) store8(o + 8 * j, vacc[j]);
          continue;
        }
#endif
        for (int64_t d = 0; d < Dk; ++d) acc[d] = 0;
        for (int64_t i = 0; i < LP; ++i) {
          const acc_t a = attn_q[i];
          for (int k = 0; k < 4; ++k) {
            const acc_t wk = a * pc.weight[4 * i + k];
            const scalar_t* v = v_nm + pc.offset[4 * i + k];
#pragma omp simd
            for (int64_t d = 0; d < Dk; ++d) acc[d] += wk * static_cast<acc_t>(v[d]);
          }
        }
        for (int64_t d = 0; d < Dk; ++d) o[d] = static_cast<scalar_t>(acc[d]);
      }
    }
  });
}

// Gradients for batch n, head m, queries [q_begin, q_end). v_nm and grad_value_nm point at the (S, D) maps
// of (n, m) in value and in a gradient buffer, both with token stride `row`; only this call writes the rows
// it touches.
template <typename scalar_t, int64_t DC>
void backward_range(const scalar_t* v_nm, int64_t row, const int64_t* shapes, const int64_t* starts,
                    const at::opmath_type<scalar_t>* loc, const at::opmath_type<scalar_t>* attn,
                    const scalar_t* grad_out, at::opmath_type<scalar_t>* grad_value_nm,
                    at::opmath_type<scalar_t>* grad_loc, at::opmath_type<scalar_t>* grad_attn, int64_t n,
                    int64_t m, int64_t q_begin, int64_t q_end, int64_t M, int64_t D, int64_t Lq, int64_t L,
                    int64_t P) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t LP = L * P;
  const int64_t Dk = DC > 0 ? DC : D;
  std::vector<acc_t> heap(DC > 0 ? 0 : D);
  acc_t stack[DC > 0 ? DC : 1];
  acc_t* g = DC > 0 ? stack : heap.data();
  PointCorners<acc_t> pc(LP);
  for (int64_t q = q_begin; q < q_end; ++q) {
    const int64_t nqm = (n * Lq + q) * M + m;
    const scalar_t* go = grad_out + nqm * D;
    for (int64_t d = 0; d < Dk; ++d) g[d] = static_cast<acc_t>(go[d]);
#ifdef M2F_VECTORS
    float8 gvec[use_vectors<scalar_t, DC>() ? DC / 8 : 1];
    if constexpr (use_vectors<scalar_t, DC>()) {
      for (int64_t j = 0; j < DC / 8; ++j) std::memcpy(&gvec[j], g + 8 * j, sizeof(float8));
    }
#endif
    pc.compute(loc + nqm * LP * 2, shapes, starts, L, P, row, v_nm);
    const acc_t* attn_q = attn + nqm * LP;
    acc_t* gloc_q = grad_loc + nqm * LP * 2;
    acc_t* gattn_q = grad_attn + nqm * LP;
    for (int64_t l = 0; l < L; ++l) {
      const int64_t H = shapes[2 * l], W = shapes[2 * l + 1];
      for (int64_t p = 0; p < P; ++p) {
        const int64_t i = l * P + p;
        const acc_t a = attn_q[i];
        acc_t dot[4];  // <grad_out, corner value>, 0 for corners outside the map
#ifdef M2F_VECTORS
        if constexpr (use_vectors<scalar_t, DC>()) {
          constexpr int64_t NV = DC / 8;
          for (int k = 0; k < 4; ++k) {
            const acc_t awk = a * pc.weight[4 * i + k];
            const scalar_t* v = v_nm + pc.offset[4 * i + k];
            acc_t* gv = grad_value_nm + pc.offset[4 * i + k];
            float8 s = float8{};
            for (int64_t j = 0; j < NV; ++j) {
              s += gvec[j] * load8(v + 8 * j);
              store8(gv + 8 * j, load8(gv + 8 * j) + awk * gvec[j]);
            }
            dot[k] = pc.valid[4 * i + k] * hsum(s);
          }
        } else
#endif
        for (int k = 0; k < 4; ++k) {
          const acc_t wk = pc.weight[4 * i + k];
          const scalar_t* v = v_nm + pc.offset[4 * i + k];
          acc_t* gv = grad_value_nm + pc.offset[4 * i + k];
          const acc_t awk = a * wk;
          acc_t s = 0;
#pragma omp simd reduction(+ : s)
          for (int64_t d = 0; d < Dk; ++d) {
            s += g[d] * static_cast<acc_t>(v[d]);
            gv[d] += awk * g[d];
          }
          // A corner outside the map read row 0 with weight 0: its dot product must not count.
          dot[k] = pc.valid[4 * i + k] * s;
        }
        const acc_t lx = pc.frac[2 * i], ly = pc.frac[2 * i + 1], hx = 1 - lx, hy = 1 - ly;
        const acc_t* w4 = &pc.weight[4 * i];
        gattn_q[i] = w4[0] * dot[0] + w4[1] * dot[1] + w4[2] * dot[2] + w4[3] * dot[3];
        // d(corner weight)/dx and /dy, times d(pixel coordinate)/d(location) = W, H.
        const acc_t dx = hy * (dot[1] - dot[0]) + ly * (dot[3] - dot[2]);
        const acc_t dy = hx * (dot[2] - dot[0]) + lx * (dot[3] - dot[1]);
        gloc_q[2 * i] = a * dx * W;
        gloc_q[2 * i + 1] = a * dy * H;
      }
    }
  }
}

// Calls f with std::integral_constant<int64_t, D> for the common head widths, else with 0 (runtime D).
template <typename F>
void with_channels(int64_t D, F&& f) {
  switch (D) {
    case 8: f(std::integral_constant<int64_t, 8>()); break;
    case 16: f(std::integral_constant<int64_t, 16>()); break;
    case 32: f(std::integral_constant<int64_t, 32>()); break;
    case 64: f(std::integral_constant<int64_t, 64>()); break;
    default: f(std::integral_constant<int64_t, 0>());
  }
}

void check_inputs(const at::Tensor& value, const at::Tensor& shapes, const at::Tensor& starts,
                  const at::Tensor& loc, const at::Tensor& attn) {
  TORCH_CHECK(value.device().is_cpu() && loc.device().is_cpu() && attn.device().is_cpu(),
              "ms_deform_attn_cpu: tensors must be on the CPU");
  TORCH_CHECK(value.dim() == 4, "ms_deform_attn_cpu: value must be (N, S, M, D), got ", value.sizes());
  TORCH_CHECK(loc.dim() == 6 && loc.size(5) == 2,
              "ms_deform_attn_cpu: sampling_locations must be (N, Lq, M, L, P, 2), got ", loc.sizes());
  TORCH_CHECK(attn.sizes() == loc.sizes().slice(0, 5),
              "ms_deform_attn_cpu: attention_weights must be (N, Lq, M, L, P) = ", loc.sizes().slice(0, 5),
              ", got ", attn.sizes());
  TORCH_CHECK(loc.size(0) == value.size(0) && loc.size(2) == value.size(2),
              "ms_deform_attn_cpu: batch and heads of sampling_locations ", loc.sizes(),
              " do not match value ", value.sizes());
  TORCH_CHECK(shapes.dim() == 2 && shapes.size(0) == loc.size(3) && shapes.size(1) == 2 &&
                  shapes.scalar_type() == at::kLong && starts.numel() == shapes.size(0),
              "ms_deform_attn_cpu: spatial_shapes must be (L, 2) int64 with L = ", loc.size(3));
  TORCH_CHECK(value.is_contiguous() && loc.is_contiguous() && attn.is_contiguous() && shapes.is_contiguous() &&
                  starts.is_contiguous(),
              "ms_deform_attn_cpu: inputs must be contiguous");
  int64_t tokens = 0;
  const int64_t* hw = shapes.data_ptr<int64_t>();
  for (int64_t l = 0; l < shapes.size(0); ++l) tokens += hw[2 * l] * hw[2 * l + 1];
  TORCH_CHECK(tokens == value.size(1), "ms_deform_attn_cpu: spatial_shapes hold ", tokens,
              " tokens (sum of H * W) but value has S = ", value.size(1));
  const auto acc = value.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  TORCH_CHECK(loc.scalar_type() == acc && attn.scalar_type() == acc, "ms_deform_attn_cpu: for ",
              value.scalar_type(), " values, locations and weights must be ", acc);
}

}  // namespace

at::Tensor ms_deform_attn_forward(const at::Tensor& value, const at::Tensor& spatial_shapes,
                                  const at::Tensor& level_start, const at::Tensor& sampling_locations,
                                  const at::Tensor& attention_weights) {
  check_inputs(value, spatial_shapes, level_start, sampling_locations, attention_weights);
  const int64_t N = value.size(0), S = value.size(1), M = value.size(2), D = value.size(3);
  const int64_t Lq = sampling_locations.size(1), L = sampling_locations.size(3), P = sampling_locations.size(4);
  auto out = at::empty({N, Lq, M * D}, value.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, value.scalar_type(), "ms_deform_attn_forward", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    auto run = [&](auto dc) {
      forward_kernel<scalar_t, decltype(dc)::value>(
          value.data_ptr<scalar_t>(), spatial_shapes.data_ptr<int64_t>(), level_start.data_ptr<int64_t>(),
          sampling_locations.data_ptr<acc_t>(), attention_weights.data_ptr<acc_t>(), out.data_ptr<scalar_t>(), N,
          S, M, D, Lq, L, P);
    };
    with_channels(D, run);
  });
  return out;
}

// Returns grad_value in the accumulation type (float or double): the caller casts it to value's dtype.
std::vector<at::Tensor> ms_deform_attn_backward(const at::Tensor& value, const at::Tensor& spatial_shapes,
                                                const at::Tensor& level_start,
                                                const at::Tensor& sampling_locations,
                                                const at::Tensor& attention_weights, const at::Tensor& grad_output) {
  check_inputs(value, spatial_shapes, level_start, sampling_locations, attention_weights);
  const int64_t N = value.size(0), S = value.size(1), M = value.size(2), D = value.size(3);
  const int64_t Lq = sampling_locations.size(1), L = sampling_locations.size(3), P = sampling_locations.size(4);
  TORCH_CHECK(grad_output.sizes() == at::IntArrayRef({N, Lq, M * D}) && grad_output.scalar_type() == value.scalar_type(),
              "ms_deform_attn_cpu: grad_output must be (N, Lq, M * D) of value's dtype, got ", grad_output.sizes());
  const auto grad_out = grad_output.contiguous();
  const auto acc_opts = sampling_locations.options();
  auto grad_loc = at::empty_like(sampling_locations);
  auto grad_attn = at::empty_like(attention_weights);
  const int64_t threads = at::get_num_threads();
  const int64_t slices = N * M;
  // Enough (batch, head) slices to keep every thread busy: each task owns whole slices of grad_value.
  // Otherwise split the queries into chunks, each with a private grad_value, summed at the end.
  const int64_t chunks = slices >= threads ? 1 : std::min<int64_t>((threads + slices - 1) / slices, std::max<int64_t>(Lq, 1));
  // A task walks all queries of one head: with value in (N, M, S, D) its rows are contiguous in memory
  // instead of one in M of every token row, which halves the backward's time (docs/PERFORMANCE.md).
  auto value_t = value.permute({0, 2, 1, 3}).contiguous();
  at::Tensor grad_value_t = at::zeros({chunks, N, M, S, D}, acc_opts);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, value.scalar_type(), "ms_deform_attn_backward", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* v = value_t.data_ptr<scalar_t>();
    const int64_t* shapes = spatial_shapes.data_ptr<int64_t>();
    const int64_t* starts = level_start.data_ptr<int64_t>();
    const acc_t* loc = sampling_locations.data_ptr<acc_t>();
    const acc_t* attn = attention_weights.data_ptr<acc_t>();
    const scalar_t* go = grad_out.data_ptr<scalar_t>();
    acc_t* gv = grad_value_t.data_ptr<acc_t>();
    acc_t* gl = grad_loc.data_ptr<acc_t>();
    acc_t* ga = grad_attn.data_ptr<acc_t>();
    const int64_t slice_stride = N * S * M * D;  // one chunk's buffer
    const int64_t per_chunk = (Lq + chunks - 1) / chunks;
    at::parallel_for(0, slices * chunks, 1, [&](int64_t begin, int64_t end) {
      for (int64_t t = begin; t < end; ++t) {
        const int64_t chunk = t / slices, nm = t % slices, n = nm / M, m = nm % M;
        const int64_t q0 = chunk * per_chunk, q1 = std::min(Lq, q0 + per_chunk);
        if (q0 >= q1) continue;
        acc_t* gv_nm = gv + chunk * slice_stride + nm * S * D;
        with_channels(D, [&](auto dc) {
          backward_range<scalar_t, decltype(dc)::value>(v + nm * S * D, D, shapes, starts, loc, attn, go, gv_nm, gl,
                                                        ga, n, m, q0, q1, M, D, Lq, L, P);
        });
      }
    });
  });
  value_t.reset();  // freed before the gradient is laid out as value: one copy less at the peak
  const auto grad_value = (chunks > 1 ? grad_value_t.sum(0) : grad_value_t[0]).permute({0, 2, 1, 3}).contiguous();
  return {grad_value, grad_loc, grad_attn};
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("forward", &ms_deform_attn_forward, "multi-scale deformable attention forward (CPU)");
  m.def("backward", &ms_deform_attn_backward, "multi-scale deformable attention backward (CPU)");
}
