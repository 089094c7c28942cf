"""The deformable-attention kernels (C++ on the CPU, Triton) against the pure-PyTorch op, and the dispatch.

The C++ tests skip only when no C++ compiler is on PATH (then the build cannot run); any other build failure
fails them. The Triton kernel runs on CUDA when there is one, else through Triton's interpreter on the CPU
(TRITON_INTERPRET=1, in a subprocess because Triton reads it at import).
"""
import importlib
import logging
import os
import shutil
import subprocess
import sys

import pytest
import torch

from mask2former.modeling.pixel_decoder.deformable_attention import MSDeformAttn
from mask2former.ops import ms_deform_attn, ms_deform_attn_pytorch, resolve_impl

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TESTS = os.path.dirname(os.path.abspath(__file__))
dispatch_module = importlib.import_module("mask2former.ops.ms_deform_attn")  # the package exports its function


def require_cpp():
    compiler = os.environ.get("CXX", "c++")
    if shutil.which(compiler) is None:
        pytest.skip(f"no C++ compiler ('{compiler}' is not on PATH): the C++ deformable-attention kernel cannot "
                    "be built here; the pure-PyTorch op is used")
    from mask2former.ops.ms_deform_attn_cpp import cpp_unavailable

    reason = cpp_unavailable()
    assert reason is None, f"a compiler is present but the C++ kernel did not build: {reason}"


def make_inputs(N, M, D, Lq, P, shapes, dtype=torch.float64, seed=0):
    """Random inputs with sampling locations inside, outside, on the border and on pixel centres."""
    g = torch.Generator().manual_seed(seed)
    spatial_shapes = torch.as_tensor(shapes, dtype=torch.long)
    S, L = int(spatial_shapes.prod(1).sum()), len(shapes)
    value = torch.randn(N, S, M, D, generator=g, dtype=torch.float64)
    loc = torch.rand(N, Lq, M, L, P, 2, generator=g, dtype=torch.float64) * 1.6 - 0.3
    flat = loc.view(-1, 2)
    # Exactly on the map's border (x or y = 0 or 1) and far outside, for a few points.
    flat[0::7, 0] = 0.0
    flat[1::7, 1] = 1.0
    flat[2::7] = torch.tensor([1.0, 0.0], dtype=torch.float64)
    flat[3::11] = torch.tensor([-2.0, 3.0], dtype=torch.float64)
    weights = torch.rand(N, Lq, M, L, P, generator=g, dtype=torch.float64)
    weights = weights / weights.sum((-1, -2), keepdim=True)
    return [t.to(dtype) for t in (value, loc, weights)], spatial_shapes


CASES = [
    # N, M, D, Lq, P, spatial shapes: odd sizes, 1 to 4 levels, head widths with and without a compiled
    # specialisation (16, 32, 64 have one), one (batch, head) slice (the value gradient in per-chunk buffers).
    (2, 8, 32, 37, 4, [(9, 7), (5, 4), (3, 2)]),
    (1, 1, 5, 23, 3, [(7, 5)]),
    (3, 2, 16, 11, 2, [(6, 8), (3, 4)]),
    (2, 3, 7, 13, 1, [(5, 9), (3, 5), (2, 3), (1, 1)]),
    (1, 4, 64, 19, 4, [(11, 6), (6, 3), (3, 2)]),
]


def compare_with_pytorch(fn, case, dtype=torch.float32, atol=1e-5, rtol=1e-5, seed=0):
    N, M, D, Lq, P, shapes = case
    (value, loc, weights), spatial_shapes = make_inputs(N, M, D, Lq, P, shapes, dtype=dtype, seed=seed)
    ref_in = [t.clone().requires_grad_(True) for t in (value, loc, weights)]
    ker_in = [t.clone().requires_grad_(True) for t in (value, loc, weights)]
    ref = ms_deform_attn_pytorch(ref_in[0], spatial_shapes, ref_in[1], ref_in[2])
    out = fn(ker_in[0], spatial_shapes, ker_in[1], ker_in[2])
    assert out.shape == ref.shape == (N, Lq, M * D) and out.dtype == dtype
    torch.testing.assert_close(out, ref, atol=atol, rtol=rtol)
    grad = torch.randn(ref.shape, generator=torch.Generator().manual_seed(seed + 1), dtype=dtype)
    ref.backward(grad)
    out.backward(grad)
    for name, a, b in zip(("value", "sampling_locations", "attention_weights"), ker_in, ref_in):
        torch.testing.assert_close(a.grad, b.grad, atol=atol, rtol=rtol, msg=lambda m: f"grad of {name}: {m}")


def cpp(*args):
    return ms_deform_attn(*args, impl="cpp")


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"N{c[0]}M{c[1]}D{c[2]}L{len(c[5])}")
def test_cpp_matches_pytorch_float32(case):
    require_cpp()
    compare_with_pytorch(cpp, case)


@pytest.mark.parametrize("threads", [1, 2])
def test_cpp_value_gradient_partitions_agree(threads):
    # Two threads on one (batch, head) slice split the queries into private buffers; one thread does not.
    require_cpp()
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        compare_with_pytorch(cpp, CASES[1], seed=3)
    finally:
        torch.set_num_threads(old)


def test_cpp_gradcheck_float64():
    require_cpp()
    (value, loc, weights), shapes = make_inputs(2, 2, 3, 5, 2, [(4, 5), (2, 3)], dtype=torch.float64)
    # Keep the random points off the border and pixel-centre lines (kinks of bilinear interpolation).
    loc = torch.rand(loc.shape, generator=torch.Generator().manual_seed(5), dtype=torch.float64) * 1.2 - 0.1
    inputs = [t.requires_grad_(True) for t in (value, loc, weights)]
    assert torch.autograd.gradcheck(lambda v, l, w: cpp(v, shapes, l, w), inputs, eps=1e-6, atol=1e-6)


def test_cpp_bfloat16_accumulates_in_float32():
    require_cpp()
    N, M, D, Lq, P, shapes = CASES[0]
    (value, loc, weights), spatial_shapes = make_inputs(N, M, D, Lq, P, shapes, dtype=torch.float32)
    value_bf16 = value.bfloat16().requires_grad_(True)
    out = cpp(value_bf16, spatial_shapes, loc, weights)
    assert out.dtype == torch.bfloat16
    # Reference: the same bf16-rounded values in float32; only the output's rounding to bf16 differs.
    value_ref = value_bf16.detach().float().requires_grad_(True)
    ref = ms_deform_attn_pytorch(value_ref, spatial_shapes, loc, weights)
    torch.testing.assert_close(out.float(), ref, atol=1e-2, rtol=1e-2)
    assert (out.float() - ref).abs().max() <= ref.abs().max() * 2 ** -8
    grad = torch.randn(ref.shape)
    out.backward(grad.bfloat16())
    ref.backward(grad.bfloat16().float())
    assert value_bf16.grad.dtype == torch.bfloat16
    torch.testing.assert_close(value_bf16.grad.float(), value_ref.grad, atol=1e-2, rtol=1e-2)


def test_cpp_rejects_mismatched_shapes():
    require_cpp()
    (value, loc, weights), shapes = make_inputs(1, 2, 4, 3, 2, [(4, 4)], dtype=torch.float32)
    with pytest.raises(RuntimeError, match="spatial_shapes hold 16 tokens"):
        cpp(value[:, :15], shapes, loc, weights)


def test_cpp_is_one_custom_op_for_export_and_fake_tensors():
    require_cpp()
    from mask2former.ops.ms_deform_attn_cpp import ms_deform_attn_cpu_op
    from mask2former.ops.custom_op import level_start_index

    (value, loc, weights), shapes = make_inputs(1, 2, 4, 6, 2, [(4, 5), (2, 2)], dtype=torch.float32)
    args = (value.requires_grad_(True), shapes, level_start_index(shapes), loc.requires_grad_(True),
            weights.requires_grad_(True))
    # Schema, fake (meta) implementation and autograd registration, as torch.library checks them.
    torch.library.opcheck(ms_deform_attn_cpu_op, args, test_utils=("test_schema", "test_faketensor",
                                                                 "test_autograd_registration"))

    class Attn(torch.nn.Module):
        def forward(self, v, l, w):
            return cpp(v, shapes, l, w)

    program = torch.export.export(Attn(), (value.detach(), loc.detach(), weights.detach()))
    targets = [str(n.target) for n in program.graph.nodes if n.op == "call_function"]
    assert "mask2former.ms_deform_attn_cpu.default" in targets
    assert not any("grid_sampler" in t for t in targets)


def test_layer_with_padding_mask_cpp_equals_pytorch():
    require_cpp()
    torch.manual_seed(0)
    shapes = torch.as_tensor([[5, 7], [3, 4], [2, 2]])
    S = int(shapes.prod(1).sum())
    layers = {impl: MSDeformAttn(d_model=24, n_levels=3, n_heads=3, n_points=2, impl=impl) for impl in ("pytorch", "cpp")}
    # Offsets large enough to reach the padding and beyond the map.
    torch.nn.init.normal_(layers["pytorch"].sampling_offsets.weight, std=2.0)
    layers["cpp"].load_state_dict(layers["pytorch"].state_dict())
    src, query, ref = torch.randn(2, S, 24), torch.randn(2, 9, 24), torch.rand(2, 9, 3, 2)
    mask = torch.zeros(2, S, dtype=torch.bool)
    mask[1, 3:20] = True
    outs, grads = {}, {}
    for impl, layer in layers.items():
        q = query.clone().requires_grad_(True)
        out = layer(q, ref, src, shapes, mask)
        out.pow(2).sum().backward()
        outs[impl] = out
        grads[impl] = [q.grad] + [p.grad for p in layer.parameters()]
    torch.testing.assert_close(outs["cpp"], outs["pytorch"], atol=1e-5, rtol=1e-5)
    for a, b in zip(grads["cpp"], grads["pytorch"]):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


def test_layer_under_bfloat16_autocast_cpp_equals_pytorch():
    # The kernel reads the bf16 values the projection produced; the pure-PyTorch op upcasts them first: the
    # same numbers, accumulated in float32 by both.
    require_cpp()
    torch.manual_seed(1)
    shapes = torch.as_tensor([[6, 6], [3, 3]])
    a = MSDeformAttn(d_model=16, n_levels=2, n_heads=2, n_points=3, impl="pytorch")
    b = MSDeformAttn(d_model=16, n_levels=2, n_heads=2, n_points=3, impl="cpp")
    b.load_state_dict(a.state_dict())
    src, query, ref = torch.randn(2, 45, 16), torch.randn(2, 45, 16), torch.rand(2, 45, 2, 2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out_a, out_b = a(query, ref, src, shapes), b(query, ref, src, shapes)
    torch.testing.assert_close(out_b.float(), out_a.float(), atol=1e-2, rtol=1e-2)


# --- dispatch and fallback -------------------------------------------------------------------------------


def test_env_var_forces_the_pytorch_fallback(monkeypatch, caplog):
    monkeypatch.setenv("MASK2FORMER_DEFORM_ATTN_IMPL", "pytorch")
    monkeypatch.setattr(dispatch_module, "_logged", set())
    value = torch.zeros(1, 4, 1, 2)
    with caplog.at_level(logging.INFO, logger="mask2former.ops.ms_deform_attn"):
        assert resolve_impl("auto", value) == "pytorch"
        resolve_impl("auto", value)
    messages = [r.getMessage() for r in caplog.records]
    assert messages == ["multi-scale deformable attention: using the pytorch implementation "
                        "(MASK2FORMER_DEFORM_ATTN_IMPL=pytorch)"]  # once
    # An explicit config choice is not overridden.
    assert resolve_impl("pytorch", value) == "pytorch"


def test_auto_falls_back_when_the_kernel_cannot_build(monkeypatch, caplog):
    from mask2former.ops import ms_deform_attn_cpp

    monkeypatch.delenv("MASK2FORMER_DEFORM_ATTN_IMPL", raising=False)
    monkeypatch.setattr(dispatch_module, "_logged", set())
    monkeypatch.setattr(ms_deform_attn_cpp, "_state", {"error": "no C++ compiler: 'c++' is not on PATH"})
    (value, loc, weights), shapes = make_inputs(1, 2, 3, 4, 2, [(3, 3)], dtype=torch.float32)
    with caplog.at_level(logging.INFO, logger="mask2former.ops.ms_deform_attn"):
        out = ms_deform_attn(value, shapes, loc, weights)
    torch.testing.assert_close(out, ms_deform_attn_pytorch(value, shapes, loc, weights), atol=0, rtol=0)
    assert "using the pytorch implementation (auto: the cpp kernel is unavailable: no C++ compiler" in caplog.text
    # Asking for the kernel explicitly is an error that names the key and the reason.
    with pytest.raises(RuntimeError, match="DEFORM_ATTN_IMPL=cpp cannot run: no C\\+\\+ compiler"):
        ms_deform_attn(value, shapes, loc, weights, impl="cpp")


def test_bad_impl_names_the_key(monkeypatch):
    value = torch.zeros(1, 4, 1, 2)
    with pytest.raises(ValueError, match="MODEL.SEM_SEG_HEAD.DEFORM_ATTN_IMPL: expected one of"):
        resolve_impl("cuda", value)
    monkeypatch.setenv("MASK2FORMER_DEFORM_ATTN_IMPL", "fast")
    with pytest.raises(ValueError, match="MASK2FORMER_DEFORM_ATTN_IMPL: expected one of"):
        resolve_impl("auto", value)


def test_triton_refuses_cpu_tensors_without_the_interpreter(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(RuntimeError, match="the Triton kernel runs on CUDA"):
        resolve_impl("triton", torch.zeros(1, 4, 1, 2))


# --- Triton ------------------------------------------------------------------------------------------------


def check_triton(device, cases=CASES):
    """The Triton kernel against the pure-PyTorch op (float32 within 1e-5; bf16 and fp16 values)."""
    def triton_on(dev):
        def fn(v, shapes, l, w):
            out = ms_deform_attn(v.to(dev), shapes.to(dev), l.to(dev), w.to(dev), impl="triton")
            return out.cpu()
        return fn

    # Through .to(device) and .cpu() the gradients still reach the CPU leaves.
    for case in cases:
        compare_with_pytorch(triton_on(device), case)
    N, M, D, Lq, P, shapes = cases[0]
    (value, loc, weights), spatial_shapes = make_inputs(N, M, D, Lq, P, shapes, dtype=torch.float32)
    for dtype in (torch.bfloat16, torch.float16):
        low = value.to(dtype)
        out = triton_on(device)(low, spatial_shapes, loc, weights)
        assert out.dtype == dtype
        ref = ms_deform_attn_pytorch(low.float(), spatial_shapes, loc, weights)
        torch.testing.assert_close(out.float(), ref, atol=1e-2, rtol=1e-2)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (the interpreter test covers the CPU)")
def test_triton_on_cuda():
    check_triton("cuda")


def test_triton_in_the_interpreter():
    pytest.importorskip("triton", reason="triton is not installed (it ships with the CUDA build of torch)")
    code = f"import sys; sys.path[:0] = [{TESTS!r}, {REPO!r}]; import test_ms_deform_attn_kernels as t; " \
           "t.check_triton('cpu', [t.CASES[1], t.CASES[3]]); print('ok')"  # the interpreter is slow: small cases
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": REPO + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), proc.stderr[-3000:]
