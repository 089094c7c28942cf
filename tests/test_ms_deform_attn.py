"""Multi-scale deformable attention: the op against a plain per-point formulation, gradients, the module."""
import pytest
import torch

from mask2former.modeling.pixel_decoder.deformable_attention import MSDeformAttn, sampling_locations
from mask2former.ops import ms_deform_attn


def reference_ms_deform_attn(value, spatial_shapes, sampling_locations, attention_weights):
    """Loop over every query, head, level and point; bilinear interpolation written out by hand.

    A location (x, y) in [0, 1] maps to pixel coordinates (x * W - 0.5, y * H - 0.5) (pixel centres at
    integer + 0.5); corners outside the map contribute zero.
    """
    N, S, M, D = value.shape
    _, Lq, _, L, P, _ = sampling_locations.shape
    out = value.new_zeros(N, Lq, M, D)
    starts = [0]
    for h, w in spatial_shapes.tolist()[:-1]:
        starts.append(starts[-1] + h * w)
    for n in range(N):
        for q in range(Lq):
            for m in range(M):
                for lvl, (h, w) in enumerate(spatial_shapes.tolist()):
                    fmap = value[n, starts[lvl]: starts[lvl] + h * w, m].view(h, w, D)
                    for p in range(P):
                        x = sampling_locations[n, q, m, lvl, p, 0] * w - 0.5
                        y = sampling_locations[n, q, m, lvl, p, 1] * h - 0.5
                        x0, y0 = int(torch.floor(x)), int(torch.floor(y))
                        sample = value.new_zeros(D)
                        for yy, wy in ((y0, y0 + 1 - y), (y0 + 1, y - y0)):
                            for xx, wx in ((x0, x0 + 1 - x), (x0 + 1, x - x0)):
                                if 0 <= yy < h and 0 <= xx < w:
                                    sample = sample + wy * wx * fmap[yy, xx]
                        out[n, q, m] += attention_weights[n, q, m, lvl, p] * sample
    return out.view(N, Lq, M * D)


def random_inputs(dtype=torch.float32, N=2, Lq=5, M=2, D=3, P=2, shapes=((6, 4), (3, 2)), seed=0):
    g = torch.Generator().manual_seed(seed)
    spatial_shapes = torch.as_tensor(shapes, dtype=torch.long)
    S = int(spatial_shapes.prod(1).sum())
    L = len(shapes)
    value = torch.randn(N, S, M, D, generator=g, dtype=dtype)
    # Include locations slightly outside [0, 1] to exercise the zero padding.
    locations = torch.rand(N, Lq, M, L, P, 2, generator=g, dtype=dtype) * 1.2 - 0.1
    weights = torch.rand(N, Lq, M, L, P, generator=g, dtype=dtype)
    weights = weights / weights.sum((-1, -2), keepdim=True)
    return value, spatial_shapes, locations, weights


def test_matches_reference_formulation():
    value, shapes, locations, weights = random_inputs(torch.float64)
    ours = ms_deform_attn(value, shapes, locations, weights)
    ref = reference_ms_deform_attn(value, shapes, locations, weights)
    assert ours.shape == (2, 5, 6)
    torch.testing.assert_close(ours, ref, atol=1e-12, rtol=0)


def test_pixel_centre_returns_the_pixel_value():
    value = torch.arange(12, dtype=torch.float32).view(1, 12, 1, 1)  # one level 3x4
    shapes = torch.as_tensor([[3, 4]])
    # The centre of pixel (row 1, col 2) is at ((2 + 0.5) / 4, (1 + 0.5) / 3).
    loc = torch.tensor([2.5 / 4, 1.5 / 3]).view(1, 1, 1, 1, 1, 2)
    out = ms_deform_attn(value, shapes, loc, torch.ones(1, 1, 1, 1, 1))
    assert out.item() == 6.0
    # Far outside the map every corner is padding.
    out = ms_deform_attn(value, shapes, torch.full_like(loc, 3.0), torch.ones(1, 1, 1, 1, 1))
    assert out.item() == 0.0


def test_gradcheck_float64():
    value, shapes, locations, weights = random_inputs(torch.float64, N=1, Lq=2, M=2, D=2, P=2)
    # Random locations fall on a pixel-centre line (a kink of bilinear interpolation) with probability 0.
    value.requires_grad_(True)
    locations.requires_grad_(True)
    weights.requires_grad_(True)
    assert torch.autograd.gradcheck(
        lambda v, loc, w: ms_deform_attn(v, shapes, loc, w), (value, locations, weights), eps=1e-6, atol=1e-5)


def test_module_shapes_init_and_padding_mask():
    torch.manual_seed(0)
    attn = MSDeformAttn(d_model=16, n_levels=2, n_heads=4, n_points=3)
    # Initial offsets: head h points along angle 2*pi*h/4, point p at distance p+1.
    bias = attn.sampling_offsets.bias.view(4, 2, 3, 2)
    torch.testing.assert_close(bias[0, 0, :, 0], torch.tensor([1.0, 2.0, 3.0]))
    torch.testing.assert_close(bias[1, 1, :, 1], torch.tensor([1.0, 2.0, 3.0]))
    shapes = torch.as_tensor([[4, 4], [2, 2]])
    src = torch.randn(2, 20, 16)
    query = torch.randn(2, 7, 16)
    ref = torch.rand(2, 7, 2, 2)
    out = attn(query, ref, src, shapes)
    assert out.shape == (2, 7, 16)
    # Masking every input token leaves only the output projection's bias.
    mask = torch.ones(2, 20, dtype=torch.bool)
    out = attn(query, ref, src, shapes, mask)
    torch.testing.assert_close(out, attn.output_proj.bias.expand(2, 7, 16))


def test_module_runs_in_fp32_under_autocast():
    attn = MSDeformAttn(d_model=16, n_levels=1, n_heads=2, n_points=2)
    shapes = torch.as_tensor([[4, 4]])
    src, query, ref = torch.randn(1, 16, 16), torch.randn(1, 5, 16), torch.rand(1, 5, 1, 2)
    expected = attn(query, ref, src, shapes)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = attn(query, ref, src, shapes)
    assert torch.isfinite(out).all()
    # Only the linear projections run in bf16; the sampling itself stays fp32.
    assert (out.float() - expected).abs().max() < 0.1


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_the_reference_with_gradients():
    # The same op on the GPU (grid_sample's CUDA kernels, the layouts the op builds there), in float64: values
    # against the hand-written reference, gradients against the CPU's.
    value, shapes, locations, weights = random_inputs(torch.float64, N=2, Lq=7, M=2, D=3, P=3)
    ref = reference_ms_deform_attn(value, shapes, locations, weights)
    inputs_cpu = [t.clone().requires_grad_(True) for t in (value, locations, weights)]
    inputs_gpu = [t.cuda().requires_grad_(True) for t in (value, locations, weights)]
    out_cpu = ms_deform_attn(inputs_cpu[0], shapes, inputs_cpu[1], inputs_cpu[2])
    out_gpu = ms_deform_attn(inputs_gpu[0], shapes.cuda(), inputs_gpu[1], inputs_gpu[2])
    torch.testing.assert_close(out_gpu.cpu(), ref, atol=1e-12, rtol=0)
    grad = torch.randn(out_cpu.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    out_cpu.backward(grad)
    out_gpu.backward(grad.cuda())
    for cpu, gpu in zip(inputs_cpu, inputs_gpu):
        torch.testing.assert_close(gpu.grad.cpu(), cpu.grad, atol=1e-12, rtol=0)


@pytest.mark.parametrize("n, lq, m, levels, points", [(1, 37, 8, 3, 4), (2, 11, 3, 1, 5), (3, 5, 4, 4, 2)])
def test_sampling_locations_are_the_broadcast_formula_bit_for_bit(n, lq, m, levels, points):
    g = torch.Generator().manual_seed(n * 100 + levels)
    reference = torch.rand(n, lq, levels, 2, generator=g)
    offsets = torch.randn(n, lq, m, levels, points, 2, generator=g) * 5
    shapes = torch.tensor([[7 + 3 * i, 9 + 2 * i] for i in range(levels)])
    expected = reference[:, :, None, :, None, :] + offsets / shapes.flip(-1).float()[None, None, None, :, None, :]
    assert torch.equal(sampling_locations(reference, offsets, shapes), expected)
