"""Loading weights cannot run code: crafted pickles (.pkl through the restricted unpickler, .pth through
torch.load(weights_only=True)) are refused and nothing they ask for runs; real weight files still load."""
import collections
import os
import pickle

import numpy as np
import pytest
import torch
from torch import nn

from mask2former.utils.safe_load import UnsafeCheckpointError, load_pickle, load_torch
from mask2former.utils.weights import WeightsCheckpointer


class _WritesAFile:
    """Unpickling this calls os.system, which would create ``marker``."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


class _Executes:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return exec, (f"open({str(self.marker)!r}, 'w').write('ran')",)


@pytest.mark.parametrize("payload", [_WritesAFile, _Executes])
@pytest.mark.parametrize("protocol", [2, pickle.HIGHEST_PROTOCOL])
def test_crafted_pkl_is_refused_and_nothing_runs(tmp_path, payload, protocol):
    marker = tmp_path / "ran"
    path = tmp_path / "model_final.pkl"
    with open(path, "wb") as f:
        pickle.dump({"model": {"w": np.zeros(2), "x": payload(marker)}, "__author__": "someone"}, f, protocol)
    with pytest.raises(UnsafeCheckpointError) as err:
        WeightsCheckpointer(nn.Linear(2, 2)).load(str(path))
    assert str(path) in str(err.value) and ("system" in str(err.value) or "exec" in str(err.value))
    assert not marker.exists()


@pytest.mark.parametrize("payload", [_WritesAFile, _Executes])
def test_crafted_pth_is_refused_and_nothing_runs(tmp_path, payload):
    marker = tmp_path / "ran"
    path = tmp_path / "model_final.pth"
    torch.save({"model": {"weight": torch.zeros(2, 2)}, "extra": payload(marker)}, path)
    with pytest.raises(UnsafeCheckpointError) as err:
        WeightsCheckpointer(nn.Linear(2, 2)).load(str(path))
    assert str(path) in str(err.value) and "weights_only=False" in str(err.value)
    assert not marker.exists()


def test_model_zoo_pkl_with_numpy_arrays_loads(tmp_path):
    """detectron2's model-zoo format: {"model": name -> numpy array, "__author__"}, numpy scalars and
    OrderedDicts included, as Python 3 and protocol-2 pickles."""
    model = nn.Linear(3, 2)
    weights = collections.OrderedDict(weight=np.arange(6, dtype=np.float32).reshape(2, 3),
                                      bias=np.array([1.5, -2.0], dtype=np.float64))
    for protocol in (2, pickle.HIGHEST_PROTOCOL):
        path = tmp_path / f"model_{protocol}.pkl"
        with open(path, "wb") as f:
            pickle.dump({"model": weights, "__author__": "zoo", "iteration": np.int64(7), "lr": np.float32(0.1)},
                        f, protocol)
        data = load_pickle(str(path))
        assert data["iteration"] == 7 and isinstance(data["model"], collections.OrderedDict)
        WeightsCheckpointer(model).load(str(path))
        assert torch.equal(model.weight, torch.arange(6.0).view(2, 3))
        assert torch.equal(model.bias, torch.tensor([1.5, -2.0]))


def test_plain_array_dict_pkl_uses_name_matching(tmp_path):
    """A plain {name: array} .pkl (converted backbones) goes through detectron2's name heuristics."""
    model = nn.Sequential(nn.Linear(3, 2))
    path = tmp_path / "backbone.pkl"
    with open(path, "wb") as f:
        pickle.dump({"0.weight": np.ones((2, 3), np.float32), "0.bias": np.zeros(2, np.float32)}, f)
    WeightsCheckpointer(model).load(str(path))
    assert torch.equal(model[0].weight, torch.ones(2, 3))


def test_pth_checkpoint_with_optimizer_state_loads(tmp_path):
    model = nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(model.parameters())
    model(torch.ones(1, 3)).sum().backward()
    optimizer.step()
    path = tmp_path / "model.pth"
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "iteration": 3}, path)
    loaded = load_torch(str(path))
    assert loaded["iteration"] == 3 and torch.equal(loaded["model"]["weight"], model.weight.detach())


def test_no_other_unrestricted_loading_in_the_code():
    """Only mask2former/utils/safe_load.py unpickles; every torch.load passes weights_only=True."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    offenders = []
    for folder in ("mask2former", "tools", "demo", "datasets", "train_net.py"):
        path = os.path.join(root, folder)
        files = [path] if path.endswith(".py") else [
            os.path.join(d, f) for d, _, fs in os.walk(path) for f in fs if f.endswith(".py")]
        for file in files:
            if file.endswith(os.path.join("utils", "safe_load.py")):
                continue
            for number, line in enumerate(open(file), 1):
                if "pickle.load" in line or "pickle.Unpickler" in line or (
                        "torch.load(" in line and "weights_only=True" not in line):
                    offenders.append(f"{os.path.relpath(file, root)}:{number}: {line.strip()}")
    assert not offenders, "\n".join(offenders)
