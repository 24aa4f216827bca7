"""Optional cuEquivariance backend for the convolution tensor product of :class:`DensityModel`.

The message of an interaction layer is e3nn's channel-wise ("uvu") tensor product of the
neighbour features with the edge spherical harmonics, weighted per edge by the radial MLP,
then summed over the neighbours of each atom. NVIDIA's cuEquivariance computes the same
product, gather and scatter in one CUDA kernel (``uniform_1d``) when every channel block has
the same width. This module rewrites a layer's product for it:

- the input irreps are cut into blocks of ``u`` channels (``u`` = the greatest common
  divisor of the multiplicities; ``64x0e+32x1o`` -> eight ``8x0e`` and four ``8x1o``).
  A channel-wise product acts on each channel alone, so the cut changes nothing but the
  order of the paths; in e3nn's ``mul_ir`` layout it does not move a single number;
- the radial MLP's weights are permuted from e3nn's instruction order into
  cuEquivariance's path order (:attr:`CueqConvolution.weight_index`), and the summed
  messages back into the layer's (sorted) e3nn order (:attr:`CueqConvolution.out_index`).

The model's parameters, checkpoints and results do not change: the backend is a runtime
switch (:meth:`densitylearn.model.DensityModel.set_backend`), equal to e3nn to rounding
(``tests/test_cueq.py`` checks values and gradients with cuEquivariance's reference PyTorch
method on the CPU, and with the CUDA kernel where a GPU is present). Conventions: both
libraries use the same real spherical-harmonic basis and Clebsch-Gordan coefficients for
O(3), "component" irrep normalisation and "element" path normalisation; the test is what
holds them to it.

Install with ``pip install densitylearn[cueq]`` (the pure-Python parts, enough for the
reference method) plus ``cuequivariance-ops-torch-cu12`` or ``-cu13`` for the CUDA kernels.
"""

from __future__ import annotations

import math
import warnings
from functools import reduce

import torch
from e3nn import o3

from .errors import InputError

#: cuEquivariance methods :class:`CueqConvolution` accepts ("naive": its PyTorch reference
#: implementation, any device; "uniform_1d": the fused CUDA kernel; "fused_tp": CUDA, no
#: fused gather/scatter).
METHODS = ("uniform_1d", "fused_tp", "naive")


def cueq_available(kernels: bool = False) -> bool:
    """Whether cuequivariance_torch imports (and, with ``kernels``, its CUDA operations)."""
    try:
        import cuequivariance  # noqa: F401
        import cuequivariance_torch  # noqa: F401
    except ImportError:
        return False
    if not kernels:
        return True
    try:
        import cuequivariance_ops_torch  # noqa: F401
    except ImportError:
        return False
    return True


def _require():
    if not cueq_available():
        raise InputError("backend 'cueq' needs cuEquivariance: pip install densitylearn[cueq] "
                         "(and cuequivariance-ops-torch-cu12 or -cu13 for the CUDA kernels)")
    import cuequivariance as cue
    import cuequivariance_torch as cuet

    return cue, cuet


class CueqConvolution(torch.nn.Module):
    """Sum over neighbours of the uvu tensor product, computed by cuEquivariance.

    Parameters
    ----------
    irreps_in, irreps_sh : e3nn Irreps
        Node features and edge spherical harmonics of the layer.
    instructions : list of (i_in, i_sh, i_out, "uvu", True)
        The e3nn layer's instructions (``i_out`` into ``irreps_mid``).
    irreps_mid : e3nn Irreps
        The e3nn layer's (sorted) product irreps: the output layout of :meth:`forward`.
    method : str
        See :data:`METHODS`; ``None``: "uniform_1d" on CUDA when the kernels are
        installed, else "naive" (the only one off the GPU).
    device, dtype
        Where the module's index buffers and cuEquivariance's own constants live.

    ``forward(h, sh, weight, neighbour, centre, n_nodes)`` returns
    ``sum_{edges e -> i} TP(h[neighbour[e]], sh[e]; weight[e])`` as an ``(n_nodes,
    irreps_mid.dim)`` tensor, ``weight`` in e3nn's instruction layout.
    """

    def __init__(self, irreps_in, irreps_sh, instructions, irreps_mid, method=None,
                 device=None, dtype=None):
        super().__init__()
        cue, cuet = _require()
        self.requested, self.dtype = method, dtype
        irreps_in, irreps_sh, irreps_mid = o3.Irreps(irreps_in), o3.Irreps(irreps_sh), o3.Irreps(irreps_mid)
        if any(mode != "uvu" for _, _, _, mode, _ in instructions):
            raise InputError("cueq backend: only 'uvu' tensor-product instructions are supported")
        if any(mul != 1 for mul, _ in irreps_sh):
            raise InputError("cueq backend: the edge attributes must have multiplicity 1")
        u = reduce(math.gcd, [mul for mul, _ in irreps_in])
        # blocks of u channels: (index into irreps_in, block number)
        blocks = [(i, b) for i, (mul, _) in enumerate(irreps_in) for b in range(mul // u)]
        split = o3.Irreps([(u, irreps_in[i].ir) for i, _ in blocks])
        # e3nn instruction (i, j, ir_out) -> its output slot k and where its weights start
        wanted, w_start, off = {}, {}, 0
        for i, j, k, _, _ in instructions:
            key = (i, j, str(irreps_mid[k].ir))
            wanted[key], w_start[key] = k, off
            off += irreps_in[i].mul * irreps_sh[j].mul
        out_irs = sorted({str(irreps_mid[k].ir) for k in wanted.values()})
        filter_out = [cue.O3(o3.Irrep(s).l, o3.Irrep(s).p) for s in out_irs]
        on_cuda = device is not None and torch.device(device).type == "cuda"
        if method is None:
            method = "uniform_1d" if on_cuda and cueq_available(kernels=True) else "naive"
        if method not in METHODS:
            raise InputError(f"cueq backend: method {method!r} is not one of {list(METHODS)}")
        if method != "naive" and not on_cuda:
            raise InputError(f"cueq backend: method {method!r} needs the model on a CUDA device")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self.tp = cuet.ChannelWiseTensorProduct(
                cue.Irreps("O3", str(split)), cue.Irreps("O3", str(irreps_sh)), filter_out,
                layout=cue.mul_ir, shared_weights=False, internal_weights=False,
                method=method, device=device, dtype=dtype,
                # compute in the model's precision (fused_tp would default to float32)
                math_dtype=dtype if dtype in (torch.float32, torch.float64) else None,
                # the layout transposes pick their CUDA kernel whenever one is installed
                # and a GPU exists, even for CPU tensors: PyTorch's version off the GPU
                use_fallback=None if on_cuda else True)
        self.method = getattr(self.tp.f, "method", self.tp.method)  # what runs, after any fallback

        # cuEquivariance's outputs (and weights) come sorted by irrep, paths of one irrep in
        # the order (block, sh irrep, ir_out); match each to its e3nn instruction and block
        paths = []  # (ir_out string, e3nn instruction key, block b) in enumeration order
        for (i, b), (_, ir_in) in zip(blocks, split):
            for j, (_, ir_sh) in enumerate(irreps_sh):
                for ir_out in ir_in * ir_sh:
                    if str(ir_out) in out_irs:
                        paths.append((str(ir_out), (i, j, str(ir_out)), b))
        mid_slices = irreps_mid.slices()
        w_index, out_index = [], []
        used = [False] * len(paths)
        for mul, ir in self.tp.irreps_out:
            n = next(n for n, p in enumerate(paths) if not used[n] and p[0] == str(ir))
            used[n] = True
            _, key, b = paths[n]
            if key not in wanted:
                raise InputError("cueq backend: the layer's paths do not match cuEquivariance's")
            w_index.extend(range(w_start[key] + b * u, w_start[key] + (b + 1) * u))
            k = wanted[key]
            start = mid_slices[k].start + b * u * ir.dim
            out_index.extend(range(start, start + u * ir.dim))
        if not all(used) or len(w_index) != self.tp.weight_numel:
            raise InputError("cueq backend: the layer's paths do not match cuEquivariance's")
        # out_index[c] = e3nn column of cuEquivariance column c; forward needs the inverse
        inverse = torch.empty(len(out_index), dtype=torch.long)
        inverse[torch.tensor(out_index)] = torch.arange(len(out_index))
        if len(out_index) != irreps_mid.dim:
            raise InputError("cueq backend: the product does not fill the layer's irreps")
        self.register_buffer("weight_index", torch.tensor(w_index, dtype=torch.long, device=device),
                             persistent=False)
        self.register_buffer("out_index", inverse.to(device), persistent=False)

    def forward(self, h, sh, weight, neighbour, centre, n_nodes: int):
        w = weight.index_select(1, self.weight_index)
        if self.method == "uniform_1d":
            out = self.tp(h, sh, w, indices_1=neighbour, indices_out=centre, size_out=n_nodes)
        else:
            m = self.tp(h[neighbour], sh, w)
            out = torch.zeros(n_nodes, m.shape[1], dtype=m.dtype, device=m.device).index_add_(0, centre, m)
        return out.index_select(1, self.out_index)
