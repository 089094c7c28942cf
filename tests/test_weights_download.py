"""MODEL.WEIGHTS by URL: a real HTTP server on 127.0.0.1 (started here, serving a checkpoint written here) stands
in for the model zoo. train_net.py --eval-only and demo/demo.py load from it; the file is downloaded once into
detectron2's cache; detectron2:// goes through the same path; a closed port and a missing file give errors
naming the URL or path, the cause and how to pass a local file."""
import functools
import http.server
import logging
import os
import socket
import sys
import threading

import numpy as np
import pytest
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.engine import default_argument_parser
from detectron2.modeling import build_model
from detectron2.utils.file_io import PathManager

from mask2former.data.datasets.register_shapes_world import register_shapes_world
from mask2former.utils.weights import WeightsUnavailableError, check_weights_available, resolve_weights

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)
import train_net  # noqa: E402
from demo import demo as demo_cli  # noqa: E402

CONFIG = os.path.join(ROOT, "configs/shapes_world/maskformer2_R18_panoptic.yaml")
PREFIX = "shapes_world_download"
TINY = [
    "MODEL.DEVICE", "cpu", "INPUT.MIN_SIZE_TEST", "64", "INPUT.MAX_SIZE_TEST", "96",
    "MODEL.SEM_SEG_HEAD.CONVS_DIM", "32", "MODEL.SEM_SEG_HEAD.MASK_DIM", "32",
    "MODEL.SEM_SEG_HEAD.TRANSFORMER_ENC_LAYERS", "1", "MODEL.SEM_SEG_HEAD.DEFORMABLE_TRANSFORMER_ENCODER_N_HEADS", "2",
    "MODEL.MASK_FORMER.HIDDEN_DIM", "32", "MODEL.MASK_FORMER.NHEADS", "2", "MODEL.MASK_FORMER.DIM_FEEDFORWARD", "64",
    "MODEL.MASK_FORMER.NUM_OBJECT_QUERIES", "4", "MODEL.MASK_FORMER.DEC_LAYERS", "2", "TEST.AUG.ENABLED", "False",
]


class _Handler(http.server.SimpleHTTPRequestHandler):
    requests = []

    def do_GET(self):
        type(self).requests.append(self.path)
        super().do_GET()

    def log_message(self, *args):  # quiet console
        pass


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """(base URL, served folder with model_final.pth of a tiny random model, list of requested paths)."""
    folder = tmp_path_factory.mktemp("served")
    torch.manual_seed(0)
    cfg = demo_cli._base_config()
    cfg.merge_from_file(CONFIG)
    cfg.merge_from_list(TINY)
    model = build_model(cfg)
    (folder / "zoo").mkdir()
    DetectionCheckpointer(model, save_dir=str(folder / "zoo")).save("model_final")
    handler = functools.partial(_Handler, directory=str(folder))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", folder, _Handler.requests, model
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture()
def cache(tmp_path, monkeypatch):
    """An empty detectron2 download cache (iopath's HTTP handler also remembers downloads in memory)."""
    monkeypatch.setenv("FVCORE_CACHE", str(tmp_path / "cache"))
    for handler in set(PathManager._path_handlers.values()):
        if hasattr(handler, "cache_map"):
            monkeypatch.setattr(handler, "cache_map", {})
    return tmp_path / "cache"


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_http_url_downloads_once_into_the_cache(server, cache):
    base, folder, requests, _ = server
    url = base + "/zoo/model_final.pth"
    before = len(requests)
    path = resolve_weights(url)
    assert path.startswith(str(cache)) and os.path.isfile(path)
    assert open(path, "rb").read() == (folder / "zoo" / "model_final.pth").read_bytes()
    assert resolve_weights(url) == path
    assert len(requests) == before + 1  # the second call reuses the cached file


def test_detectron2_scheme_goes_through_the_model_zoo_prefix(server, cache, monkeypatch):
    """detectron2://NAME is detectron2's https://dl.fbaipublicfiles.com/detectron2/NAME; the local server
    stands in for that host."""
    base, _, _, _ = server
    handler = next(h for h in PathManager._path_handlers.values() if type(h).__name__ == "Detectron2Handler")
    monkeypatch.setattr(handler, "S3_DETECTRON2_PREFIX", base + "/")
    path = resolve_weights("detectron2://zoo/model_final.pth")
    assert path.startswith(str(cache)) and os.path.isfile(path)


def test_failed_download_names_url_cause_and_local_alternative(cache):
    url = f"http://127.0.0.1:{closed_port()}/zoo/model_final.pkl"
    with pytest.raises(WeightsUnavailableError) as err:
        resolve_weights(url)
    message = str(err.value)
    assert repr(url) in message and "could not download" in message
    assert "refused" in message.lower()  # the cause
    assert "MODEL.WEIGHTS /path/to/file.pkl" in message


def test_missing_file_on_the_server_names_http_status(server, cache):
    base, _, _, _ = server
    with pytest.raises(WeightsUnavailableError, match="404"):
        resolve_weights(base + "/zoo/no_such_file.pkl")


def test_missing_local_file_is_reported_before_training(tmp_path):
    args = default_argument_parser().parse_args(
        ["--config-file", CONFIG, "MODEL.WEIGHTS", str(tmp_path / "nope.pth"), "OUTPUT_DIR", str(tmp_path), *TINY])
    with pytest.raises(WeightsUnavailableError, match="no such file"):
        train_net.main(args)
    assert not os.path.exists(tmp_path / "metrics.json")


def test_train_net_eval_only_loads_weights_by_url(server, cache, tmp_path):
    base, _, _, model = server
    register_shapes_world(str(tmp_path / "data"), prefix=PREFIX, num_train=1, num_val=2, seed=3, min_size=64,
                          max_size=80)
    args = default_argument_parser().parse_args([
        "--config-file", CONFIG, "--eval-only", "MODEL.WEIGHTS", base + "/zoo/model_final.pth",
        "OUTPUT_DIR", str(tmp_path / "out"), "DATASETS.TEST", f"('{PREFIX}_val_panoptic',)",
        "DATASETS.TRAIN", f"('{PREFIX}_train_panoptic',)", *TINY])
    results = train_net.main(args)
    assert {"panoptic_seg", "sem_seg", "segm"} <= set(results)
    assert any(cache.rglob("model_final.pth"))


def test_demo_loads_weights_by_url(server, cache, tmp_path, caplog):
    base, _, _, _ = server
    import cv2

    image = tmp_path / "scene.png"
    cv2.imwrite(str(image), np.full((48, 64, 3), 128, np.uint8))
    caplog.set_level(logging.INFO, logger="demo")
    argv = ["--config-file", CONFIG, "--input", str(image), "--output", str(tmp_path / "out"),
            "--opts", *TINY, "MODEL.WEIGHTS", base + "/zoo/model_final.pth"]
    assert demo_cli.main(argv) == 0
    assert (tmp_path / "out" / "scene.png").is_file() or any((tmp_path / "out").iterdir())

    argv[-1] = f"http://127.0.0.1:{closed_port()}/model_final.pth"
    assert demo_cli.main(argv) == 2
    assert "could not download" in "\n".join(r.getMessage() for r in caplog.records)


def test_check_weights_downloads_before_the_model_is_built(server, cache):
    base, _, _, _ = server
    cfg = demo_cli._base_config()
    cfg.MODEL.WEIGHTS = base + "/zoo/model_final.pth"
    assert os.path.isfile(check_weights_available(cfg))
