"""Triton kernels of multi-scale deformable attention (imported only when they run; see ms_deform_attn_triton.py).

Triton resolves the helpers a kernel calls among its module's globals, so the kernels live at module level here.
"""
import triton
import triton.language as tl


@triton.jit
def _corner(value_ptr, base, start, xx, yy, H, W, inside, row, d, dmask):
    """Offsets and validity of one corner for a block of queries; (BLOCK_Q, BLOCK_D) value tile."""
    ok = inside & (xx >= 0) & (xx < W) & (yy >= 0) & (yy < H)
    token = start + yy.to(tl.int64) * W + xx.to(tl.int64)
    offs = base + token * row
    ptrs = offs[:, None] + d[None, :]
    mask = ok[:, None] & dmask[None, :]
    v = tl.load(value_ptr + ptrs, mask=mask, other=0.0).to(tl.float32)
    return ptrs, mask, ok, v


@triton.jit
def _forward_kernel(value_ptr, shapes_ptr, starts_ptr, loc_ptr, attn_ptr, out_ptr, S, Lq,
                    M: tl.constexpr, D: tl.constexpr, L: tl.constexpr, P: tl.constexpr,
                    BLOCK_Q: tl.constexpr, BLOCK_D: tl.constexpr):
    pid_q = tl.program_id(0)
    nm = tl.program_id(1)
    n = nm // M
    m = nm % M
    q = pid_q * BLOCK_Q + tl.arange(0, BLOCK_Q)
    qmask = q < Lq
    d = tl.arange(0, BLOCK_D)
    dmask = d < D
    nqm = (n * Lq + q).to(tl.int64) * M + m  # (BLOCK_Q,) row of (N, Lq, M)
    base = n.to(tl.int64) * S * M * D + m * D
    row = M * D
    acc = tl.zeros((BLOCK_Q, BLOCK_D), dtype=tl.float32)
    for lvl in tl.static_range(L):
        H = tl.load(shapes_ptr + 2 * lvl)
        W = tl.load(shapes_ptr + 2 * lvl + 1)
        start = tl.load(starts_ptr + lvl)
        for p in tl.static_range(P):
            i = lvl * P + p
            lx = tl.load(loc_ptr + (nqm * (L * P) + i) * 2, mask=qmask, other=-2.0)
            ly = tl.load(loc_ptr + (nqm * (L * P) + i) * 2 + 1, mask=qmask, other=-2.0)
            a = tl.load(attn_ptr + nqm * (L * P) + i, mask=qmask, other=0.0)
            x = lx * W - 0.5
            y = ly * H - 0.5
            inside = qmask & (x > -1.0) & (y > -1.0) & (x < W) & (y < H)
            x = tl.where(inside, x, 0.0)
            y = tl.where(inside, y, 0.0)
            fx = tl.floor(x)
            fy = tl.floor(y)
            fracx = x - fx
            fracy = y - fy
            x0 = fx.to(tl.int32)
            y0 = fy.to(tl.int32)
            _, _, _, v00 = _corner(value_ptr, base, start, x0, y0, H, W, inside, row, d, dmask)
            _, _, _, v01 = _corner(value_ptr, base, start, x0 + 1, y0, H, W, inside, row, d, dmask)
            _, _, _, v10 = _corner(value_ptr, base, start, x0, y0 + 1, H, W, inside, row, d, dmask)
            _, _, _, v11 = _corner(value_ptr, base, start, x0 + 1, y0 + 1, H, W, inside, row, d, dmask)
            w00 = (1 - fracy) * (1 - fracx)
            w01 = (1 - fracy) * fracx
            w10 = fracy * (1 - fracx)
            w11 = fracy * fracx
            sample = w00[:, None] * v00 + w01[:, None] * v01 + w10[:, None] * v10 + w11[:, None] * v11
            acc += a[:, None] * sample
    out_ptrs = nqm[:, None] * D + d[None, :]
    tl.store(out_ptr + out_ptrs, acc.to(out_ptr.dtype.element_ty), mask=qmask[:, None] & dmask[None, :])


@triton.jit
def _backward_kernel(value_ptr, shapes_ptr, starts_ptr, loc_ptr, attn_ptr, grad_out_ptr, grad_value_ptr,
                     grad_loc_ptr, grad_attn_ptr, S, Lq, M: tl.constexpr, D: tl.constexpr, L: tl.constexpr,
                     P: tl.constexpr, BLOCK_Q: tl.constexpr, BLOCK_D: tl.constexpr):
    pid_q = tl.program_id(0)
    nm = tl.program_id(1)
    n = nm // M
    m = nm % M
    q = pid_q * BLOCK_Q + tl.arange(0, BLOCK_Q)
    qmask = q < Lq
    d = tl.arange(0, BLOCK_D)
    dmask = d < D
    nqm = (n * Lq + q).to(tl.int64) * M + m
    base = n.to(tl.int64) * S * M * D + m * D
    row = M * D
    g = tl.load(grad_out_ptr + nqm[:, None] * D + d[None, :], mask=qmask[:, None] & dmask[None, :],
                other=0.0).to(tl.float32)
    for lvl in tl.static_range(L):
        H = tl.load(shapes_ptr + 2 * lvl)
        W = tl.load(shapes_ptr + 2 * lvl + 1)
        start = tl.load(starts_ptr + lvl)
        for p in tl.static_range(P):
            i = lvl * P + p
            lx = tl.load(loc_ptr + (nqm * (L * P) + i) * 2, mask=qmask, other=-2.0)
            ly = tl.load(loc_ptr + (nqm * (L * P) + i) * 2 + 1, mask=qmask, other=-2.0)
            a = tl.load(attn_ptr + nqm * (L * P) + i, mask=qmask, other=0.0)
            x = lx * W - 0.5
            y = ly * H - 0.5
            inside = qmask & (x > -1.0) & (y > -1.0) & (x < W) & (y < H)
            x = tl.where(inside, x, 0.0)
            y = tl.where(inside, y, 0.0)
            fx = tl.floor(x)
            fy = tl.floor(y)
            fracx = x - fx
            fracy = y - fy
            hx = 1 - fracx
            hy = 1 - fracy
            x0 = fx.to(tl.int32)
            y0 = fy.to(tl.int32)
            p00, k00, _, v00 = _corner(value_ptr, base, start, x0, y0, H, W, inside, row, d, dmask)
            p01, k01, _, v01 = _corner(value_ptr, base, start, x0 + 1, y0, H, W, inside, row, d, dmask)
            p10, k10, _, v10 = _corner(value_ptr, base, start, x0, y0 + 1, H, W, inside, row, d, dmask)
            p11, k11, _, v11 = _corner(value_ptr, base, start, x0 + 1, y0 + 1, H, W, inside, row, d, dmask)
            dot00 = tl.sum(g * v00, axis=1)
            dot01 = tl.sum(g * v01, axis=1)
            dot10 = tl.sum(g * v10, axis=1)
            dot11 = tl.sum(g * v11, axis=1)
            gw = hy * hx * dot00 + hy * fracx * dot01 + fracy * hx * dot10 + fracy * fracx * dot11
            gx = (hy * (dot01 - dot00) + fracy * (dot11 - dot10)) * a * W
            gy = (hx * (dot10 - dot00) + fracx * (dot11 - dot01)) * a * H
            tl.store(grad_attn_ptr + nqm * (L * P) + i, gw, mask=qmask)
            tl.store(grad_loc_ptr + (nqm * (L * P) + i) * 2, gx, mask=qmask)
            tl.store(grad_loc_ptr + (nqm * (L * P) + i) * 2 + 1, gy, mask=qmask)
            tl.atomic_add(grad_value_ptr + p00, (a * hy * hx)[:, None] * g, mask=k00)
            tl.atomic_add(grad_value_ptr + p01, (a * hy * fracx)[:, None] * g, mask=k01)
            tl.atomic_add(grad_value_ptr + p10, (a * fracy * hx)[:, None] * g, mask=k10)
            tl.atomic_add(grad_value_ptr + p11, (a * fracy * fracx)[:, None] * g, mask=k11)
