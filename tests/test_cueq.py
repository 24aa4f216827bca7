"""The cuEquivariance backend equals e3nn: coefficients and parameter gradients.

On the CPU cuEquivariance runs its PyTorch reference method ("naive"); with a GPU and the
CUDA operations installed the fused kernel ("uniform_1d") is checked as well.
"""

import copy

import numpy as np
import pytest
import torch

import densitylearn as dl
from densitylearn import graph as G
from densitylearn.cueq import cueq_available
from densitylearn.errors import InputError
from densitylearn.structure import Structure

pytestmark = pytest.mark.skipif(not cueq_available(), reason="cuequivariance_torch not installed")

ETHANOL = ([6, 6, 8, 1, 1, 1, 1, 1, 1],
           [[0.0, 0.0, 0.0], [2.86, 0.0, 0.0], [3.80, 2.43, 0.0], [-0.70, 1.93, 0.0], [-0.70, -0.97, 1.67],
            [-0.70, -0.97, -1.67], [3.55, -0.97, 1.67], [3.55, -0.97, -1.67], [5.60, 2.30, 0.0]])
WATER = ([8, 1, 1], [[0.0, 0.0, 0.22], [0.0, 1.43, -0.89], [0.0, -1.43, -0.89]])


def _batch(pred, device):
    structs = [Structure(numbers=np.array(z), positions=np.array(p, dtype=float), name=f"m{k}")
               for k, (z, p) in enumerate((ETHANOL, WATER))]
    return G.to_device(G.collate([pred._record(s) for s in structs], pred.basis), device)


def _compare(net, batch, method, tol):
    params = [p for p in net.parameters() if p.requires_grad]
    net.set_backend("e3nn")
    a = net(batch)[G.COEFFICIENTS]
    ga = torch.autograd.grad((a * torch.linspace(-1, 1, a.numel(), device=a.device, dtype=a.dtype)).sum(),
                             params, allow_unused=True)
    net.set_backend("cueq", method)
    b = net(batch)[G.COEFFICIENTS]
    gb = torch.autograd.grad((b * torch.linspace(-1, 1, b.numel(), device=b.device, dtype=b.dtype)).sum(),
                             params, allow_unused=True)
    assert net.backend == "cueq"
    assert [layer._cueq[0].method for layer in net.layers] == [method] * len(net.layers)
    scale = float(a.abs().max())
    assert scale > 1e-3
    assert float((a - b).abs().max()) <= tol * scale
    n = 0
    for x, y in zip(ga, gb):
        if x is None:
            assert y is None
            continue
        # cuEquivariance derives its Clebsch-Gordan tables numerically (~1e-10 in float64)
        assert float((x - y).abs().max()) <= 10 * tol * max(float(x.abs().max()), 1e-12)
        n += 1
    assert n > 10


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-8), (torch.float32, 2e-5)])
def test_cueq_reference_method_equals_e3nn(dtype, tol):
    pred = dl.load_model("qm9-dcd", device="cpu")
    net = copy.deepcopy(pred.model).to(dtype)
    _compare(net, _batch(pred, "cpu"), "naive", tol)


@pytest.mark.skipif(not (torch.cuda.is_available() and cueq_available(kernels=True)),
                    reason="needs CUDA and cuequivariance_ops_torch")
@pytest.mark.parametrize("method", ["uniform_1d", "fused_tp"])
@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-8), (torch.float32, 2e-5)])
def test_cueq_cuda_kernels_equal_e3nn(method, dtype, tol):
    pred = dl.load_model("qm9-dcd", device="cuda")
    net = copy.deepcopy(pred.model).to(dtype)
    _compare(net, _batch(pred, "cuda"), method, tol)


def test_backend_switch_keeps_parameters_and_checkpoint_layout(tmp_path):
    pred = dl.load_model("qm9-dcd", device="cpu")
    net = pred.model
    batch = _batch(pred, "cpu")
    with torch.no_grad():
        net(batch)
    keys = list(net.state_dict())
    net.set_backend("cueq", "naive")
    with torch.no_grad():
        net(batch)
    assert list(net.state_dict()) == keys
    with pytest.raises(InputError, match="backend 'tensorflow'"):
        net.set_backend("tensorflow")
    with pytest.raises(InputError, match="'fastest' is not one of"):
        net.set_backend("cueq", "fastest")
        net(batch)
    with pytest.raises(InputError, match="needs the model on a CUDA device"):
        net.set_backend("cueq", "uniform_1d")
        net(batch)
    # the API and the CLI option reach the model
    p2 = dl.load_model("qm9-dcd", device="cpu", backend="cueq")
    assert p2.model.backend == "cueq"
