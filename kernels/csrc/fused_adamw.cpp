// Native CPU implementation of the fused inherited AdamW step (see kernels/reference.py).
//
// One pass over memory per element: read p, g, m, v (+ anchor, kappa, extra_grad, fisher),
// write p, m, v (+ fisher). Work is split into fixed-size chunks over all tensors of a group
// and distributed with an OpenMP parallel for (dynamic schedule: robust on shared cores);
// each chunk runs a `#pragma omp simd` loop over __restrict pointers. Every option combination is a separate template instantiation so the
// inner loop has no branches. Two copies of every instantiation are compiled: a baseline
// (x86-64 SSE2, or the target's default) and an AVX2+FMA one selected at runtime with
// __builtin_cpu_supports, so the library runs on any x86-64 CI machine without -march=native.
//
// Registered as torch.ops.ladder_kernels.fused_adamw_multi_ (TORCH_LIBRARY), CPU only.
// Argument validation happens in Python (kernels/__init__.py); the checks here are cheap
// guards (TORCH_CHECK) against misuse from other callers.
//
// `decoupled` (the penalty's decoupled form): kappa*(p - anchor) is not added to the gradient;
// after the AdamW update p -= min(lr*kappa, 1) * (p - anchor) (kernels/reference.py).

#include <ATen/core/Tensor.h>
#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>
#include <torch/library.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif

namespace {

struct Scalars {
  float decay;        // 1 - lr * weight_decay
  float beta1, one_minus_beta1;
  float beta2, one_minus_beta2;
  float step_size;    // lr / (1 - beta1^step)
  float inv_bc2_sqrt; // 1 / sqrt(1 - beta2^step)
  float eps;
  float damping;
  float fisher_scale;
  float lr;           // the decoupled pull's scale
};

struct TensorPtrs {
  float* p;
  const void* g;
  float* m;
  float* v;
  const float* a;   // anchor
  const void* k;    // kappa
  const float* e;   // extra_grad
  float* f;         // fisher
};

static inline __attribute__((always_inline)) float load_f(const float* x, int64_t i) { return x[i]; }
static inline __attribute__((always_inline)) float load_f(const uint16_t* x, int64_t i) {
  uint32_t u = static_cast<uint32_t>(x[i]) << 16;  // bf16 -> fp32 is a 16-bit shift
  float f;
  std::memcpy(&f, &u, sizeof(f));
  return f;
}

template <typename GT, typename KT, bool ANCH, bool EXTRA, bool FISH, bool PEN, bool DEC>
static inline __attribute__((always_inline)) double body(const TensorPtrs& t, const Scalars& s,
                                                         int64_t begin, int64_t end) {
  float* __restrict p = t.p;
  const GT* __restrict g = static_cast<const GT*>(t.g);
  float* __restrict m = t.m;
  float* __restrict v = t.v;
  const float* __restrict a = t.a;
  const KT* __restrict k = static_cast<const KT*>(t.k);
  const float* __restrict e = t.e;
  float* __restrict f = t.f;
  const float decay = s.decay, b1 = s.beta1, omb1 = s.one_minus_beta1, b2 = s.beta2,
              omb2 = s.one_minus_beta2, step_size = s.step_size, ibc2 = s.inv_bc2_sqrt,
              eps = s.eps, damping = s.damping, fs = s.fisher_scale, lr = s.lr;
  (void)b1;
  (void)lr;
  float pen = 0.0f;
#pragma omp simd reduction(+ : pen)
  for (int64_t i = begin; i < end; ++i) {
    const float gi = load_f(g, i);
    if constexpr (FISH) f[i] += fs * (gi * gi);
    const float pi = p[i];
    float gp = gi;
    if constexpr (ANCH) {
      const float d = pi - a[i];
      const float kd = load_f(k, i) * d;
      if constexpr (!DEC) gp += kd;
      if constexpr (PEN) pen += kd * d;
    }
    if constexpr (EXTRA) gp += e[i];
    gp *= damping;
    const float mo = m[i];
    const float mi = mo + omb1 * (gp - mo);  // torch lerp_ (weight < 0.5 branch)
    const float vi = b2 * v[i] + omb2 * (gp * gp);
    m[i] = mi;
    v[i] = vi;
    if constexpr (DEC) {
      const float pn = pi * decay - step_size * mi / (std::sqrt(vi) * ibc2 + eps);
      const float pull = std::fmin(lr * load_f(k, i), 1.0f);  // never past the anchor
      p[i] = pn - pull * (pn - a[i]);
    } else {
      p[i] = pi * decay - step_size * mi / (std::sqrt(vi) * ibc2 + eps);
    }
  }
  return static_cast<double>(pen);
}

using KFn = double (*)(const TensorPtrs&, const Scalars&, int64_t, int64_t);

template <typename GT, typename KT, bool ANCH, bool EXTRA, bool FISH, bool PEN, bool DEC>
double k_base(const TensorPtrs& t, const Scalars& s, int64_t b, int64_t e) {
  return body<GT, KT, ANCH, EXTRA, FISH, PEN, DEC>(t, s, b, e);
}

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define LADDER_HAVE_AVX2_CLONE 1
template <typename GT, typename KT, bool ANCH, bool EXTRA, bool FISH, bool PEN, bool DEC>
__attribute__((target("avx2,fma"))) double k_avx2(const TensorPtrs& t, const Scalars& s,
                                                  int64_t b, int64_t e) {
  return body<GT, KT, ANCH, EXTRA, FISH, PEN, DEC>(t, s, b, e);
}
#else
#define LADDER_HAVE_AVX2_CLONE 0
#endif

template <bool AVX, typename GT, typename KT, bool ANCH, bool EXTRA, bool FISH, bool PEN, bool DEC>
KFn get_fn() {
#if LADDER_HAVE_AVX2_CLONE
  if constexpr (AVX) return &k_avx2<GT, KT, ANCH, EXTRA, FISH, PEN, DEC>;
#endif
  return &k_base<GT, KT, ANCH, EXTRA, FISH, PEN, DEC>;
}

template <bool AVX, typename GT, typename KT, bool ANCH, bool EXTRA, bool FISH, bool PEN>
KFn pick_dec(bool dec) {
  return dec ? get_fn<AVX, GT, KT, ANCH, EXTRA, FISH, PEN, true>()
             : get_fn<AVX, GT, KT, ANCH, EXTRA, FISH, PEN, false>();
}

template <bool AVX, typename GT, typename KT, bool ANCH, bool EXTRA, bool FISH>
KFn pick_pen(bool pen, bool dec) {
  if constexpr (!ANCH) {
    return get_fn<AVX, GT, KT, ANCH, EXTRA, FISH, false, false>();  // no anchor: nothing to pull to
  } else {
    return pen ? pick_dec<AVX, GT, KT, ANCH, EXTRA, FISH, true>(dec)
               : pick_dec<AVX, GT, KT, ANCH, EXTRA, FISH, false>(dec);
  }
}
template <bool AVX, typename GT, typename KT, bool ANCH, bool EXTRA>
KFn pick_fish(bool fish, bool pen, bool dec) {
  return fish ? pick_pen<AVX, GT, KT, ANCH, EXTRA, true>(pen, dec)
              : pick_pen<AVX, GT, KT, ANCH, EXTRA, false>(pen, dec);
}
template <bool AVX, typename GT, typename KT, bool ANCH>
KFn pick_extra(bool extra, bool fish, bool pen, bool dec) {
  return extra ? pick_fish<AVX, GT, KT, ANCH, true>(fish, pen, dec)
               : pick_fish<AVX, GT, KT, ANCH, false>(fish, pen, dec);
}
template <bool AVX, typename GT>
KFn pick_anch(bool anch, bool kbf, bool extra, bool fish, bool pen, bool dec) {
  if (!anch) return pick_extra<AVX, GT, float, false>(extra, fish, pen, dec);
  return kbf ? pick_extra<AVX, GT, uint16_t, true>(extra, fish, pen, dec)
             : pick_extra<AVX, GT, float, true>(extra, fish, pen, dec);
}
template <bool AVX>
KFn pick(bool gbf, bool anch, bool kbf, bool extra, bool fish, bool pen, bool dec) {
  return gbf ? pick_anch<AVX, uint16_t>(anch, kbf, extra, fish, pen, dec)
             : pick_anch<AVX, float>(anch, kbf, extra, fish, pen, dec);
}

static bool cpu_has_avx2() {
#if LADDER_HAVE_AVX2_CLONE
  static const bool ok = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return ok;
#else
  return false;
#endif
}

constexpr int64_t kChunk = 1 << 15;        // 32K elements: 128 KiB per fp32 stream
constexpr int64_t kParallelMin = 1 << 18;  // below this, one thread

struct Work {
  int32_t tensor;
  int64_t begin, end;
};

static const float* opt_f32(const c10::List<std::optional<at::Tensor>>& l, size_t i) {
  if (l.size() == 0) return nullptr;
  std::optional<at::Tensor> t = l.get(i);
  return t.has_value() ? t->data_ptr<float>() : nullptr;
}

void check_same(const at::Tensor& t, const at::Tensor& p, const char* name, size_t i,
                bool allow_bf16) {
  TORCH_CHECK(t.device().is_cpu(), name, "[", i, "] must be a CPU tensor");
  TORCH_CHECK(t.numel() == p.numel(), name, "[", i, "] has ", t.numel(),
              " elements, expected ", p.numel());
  TORCH_CHECK(t.is_contiguous(), name, "[", i, "] must be contiguous");
  TORCH_CHECK(t.scalar_type() == at::kFloat || (allow_bf16 && t.scalar_type() == at::kBFloat16),
              name, "[", i, "] has dtype ", t.scalar_type());
}

void fused_adamw_multi_(at::TensorList params, at::TensorList grads, at::TensorList exp_avgs,
                        at::TensorList exp_avg_sqs,
                        const c10::List<std::optional<at::Tensor>>& anchors,
                        const c10::List<std::optional<at::Tensor>>& kappas,
                        const c10::List<std::optional<at::Tensor>>& extra_grads,
                        const c10::List<std::optional<at::Tensor>>& fishers,
                        const std::optional<at::Tensor>& penalty_out, double lr, double beta1,
                        double beta2, double eps, double weight_decay, double step,
                        double damping, double fisher_scale, bool decoupled) {
  const size_t n = params.size();
  TORCH_CHECK(grads.size() == n && exp_avgs.size() == n && exp_avg_sqs.size() == n,
              "fused_adamw_multi_: list lengths differ");
  TORCH_CHECK(anchors.size() == 0 || anchors.size() == n, "anchors: wrong length");
  TORCH_CHECK(kappas.size() == anchors.size(), "kappas: must match anchors' length");
  TORCH_CHECK(extra_grads.size() == 0 || extra_grads.size() == n, "extra_grads: wrong length");
  TORCH_CHECK(fishers.size() == 0 || fishers.size() == n, "fishers: wrong length");
  TORCH_CHECK(step >= 1.0, "step must be >= 1, got ", step);
  const bool want_pen = penalty_out.has_value();
  if (want_pen) {
    TORCH_CHECK(penalty_out->scalar_type() == at::kFloat && penalty_out->numel() == 1 &&
                    penalty_out->device().is_cpu(),
                "penalty_out must be a 1-element float32 CPU tensor");
  }

  Scalars s;
  s.decay = static_cast<float>(1.0 - lr * weight_decay);
  s.beta1 = static_cast<float>(beta1);
  s.one_minus_beta1 = static_cast<float>(1.0 - beta1);
  s.beta2 = static_cast<float>(beta2);
  s.one_minus_beta2 = static_cast<float>(1.0 - beta2);
  const double bc1 = 1.0 - std::pow(beta1, step);
  const double bc2 = 1.0 - std::pow(beta2, step);
  s.step_size = static_cast<float>(lr / bc1);
  s.inv_bc2_sqrt = static_cast<float>(1.0 / std::sqrt(bc2));
  s.eps = static_cast<float>(eps);
  s.damping = static_cast<float>(damping);
  s.fisher_scale = static_cast<float>(fisher_scale);
  s.lr = static_cast<float>(lr);

  const bool avx2 = cpu_has_avx2();
  std::vector<TensorPtrs> ptrs(n);
  std::vector<KFn> fns(n);
  std::vector<Work> work;
  int64_t total = 0;
  for (size_t i = 0; i < n; ++i) {
    const at::Tensor& p = params[i];
    const int64_t numel = p.numel();
    TORCH_CHECK(p.device().is_cpu() && p.scalar_type() == at::kFloat && p.is_contiguous(),
                "params[", i, "] must be a contiguous float32 CPU tensor");
    check_same(grads[i], p, "grads", i, true);
    check_same(exp_avgs[i], p, "exp_avgs", i, false);
    check_same(exp_avg_sqs[i], p, "exp_avg_sqs", i, false);
    TensorPtrs& t = ptrs[i];
    t.p = p.data_ptr<float>();
    t.g = grads[i].data_ptr();
    t.m = exp_avgs[i].data_ptr<float>();
    t.v = exp_avg_sqs[i].data_ptr<float>();
    t.a = nullptr;
    t.k = nullptr;
    bool kbf = false;
    if (anchors.size() != 0) {
      std::optional<at::Tensor> a = anchors.get(i);
      std::optional<at::Tensor> k = kappas.get(i);
      TORCH_CHECK(a.has_value() == k.has_value(), "anchors[", i, "] and kappas[", i,
                  "] must be given together");
      if (a.has_value()) {
        check_same(*a, p, "anchors", i, false);
        check_same(*k, p, "kappas", i, true);
        t.a = a->data_ptr<float>();
        t.k = k->data_ptr();
        kbf = k->scalar_type() == at::kBFloat16;
      }
    }
    if (extra_grads.size() != 0 && extra_grads.get(i).has_value())
      check_same(*extra_grads.get(i), p, "extra_grads", i, false);
    if (fishers.size() != 0 && fishers.get(i).has_value())
      check_same(*fishers.get(i), p, "fishers", i, false);
    t.e = opt_f32(extra_grads, i);
    t.f = const_cast<float*>(opt_f32(fishers, i));
    const bool gbf = grads[i].scalar_type() == at::kBFloat16;
    const bool anch = t.a != nullptr;
    fns[i] = avx2 ? pick<true>(gbf, anch, kbf, t.e != nullptr, t.f != nullptr, anch && want_pen, decoupled)
                  : pick<false>(gbf, anch, kbf, t.e != nullptr, t.f != nullptr, anch && want_pen, decoupled);
    for (int64_t b = 0; b < numel; b += kChunk)
      work.push_back({static_cast<int32_t>(i), b, std::min(numel, b + kChunk)});
    total += numel;
  }
  const int64_t nwork = static_cast<int64_t>(work.size());
  if (nwork == 0) return;
  std::vector<double> partial(want_pen ? nwork : 0, 0.0);
  double* part = want_pen ? partial.data() : nullptr;

  int nthreads = 1;
#ifdef _OPENMP
  nthreads = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), nwork)));
  // Waking the second thread costs microseconds on an idle machine but up to a scheduler
  // slice (~10 ms measured) when the cores are shared: only go parallel for >= 256K elements.
  if (total < kParallelMin) nthreads = 1;
#pragma omp parallel for schedule(dynamic, 2) num_threads(nthreads)
#endif
  for (int64_t w = 0; w < nwork; ++w) {
    const Work& wk = work[w];
    const double pen = fns[wk.tensor](ptrs[wk.tensor], s, wk.begin, wk.end);
    if (part) part[w] = pen;
  }
  (void)nthreads;

  if (want_pen) {
    double acc = 0.0;  // fixed order: deterministic for any thread count
    for (int64_t w = 0; w < nwork; ++w) acc += part[w];
    float* out = penalty_out->data_ptr<float>();
    out[0] += static_cast<float>(0.5 * acc);
  }
}

bool has_avx2_path() { return cpu_has_avx2(); }

}  // namespace

TORCH_LIBRARY(ladder_kernels, m) {
  m.def(
      "fused_adamw_multi_(Tensor(a!)[] params, Tensor[] grads, Tensor(b!)[] exp_avgs, "
      "Tensor(c!)[] exp_avg_sqs, Tensor?[] anchors, Tensor?[] kappas, Tensor?[] extra_grads, "
      "Tensor(d!)?[] fishers, Tensor(e!)? penalty_out, float lr, float beta1, float beta2, "
      "float eps, float weight_decay, float step, float damping, float fisher_scale, "
      "bool decoupled=False) -> ()");
  m.def("simd_path() -> str", []() -> std::string { return has_avx2_path() ? "avx2+fma" : "baseline"; });
}

TORCH_LIBRARY_IMPL(ladder_kernels, CPU, m) {
  m.impl("fused_adamw_multi_", &fused_adamw_multi_);
}
