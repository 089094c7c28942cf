#!/usr/bin/env python
"""
Install detectron2 as a pure-Python package where GitHub is unreachable.

If a detectron2 >= 0.6 is already importable, nothing is done. Otherwise the registry package
``pb1-detectron2==0.6`` (a source distribution whose Python files are FAIR's detectron2 v0.6 release)
is downloaded from the package index, checked against its known SHA-256, patched so that it installs and
imports on current PyTorch / NumPy / Pillow / setuptools / Python, and installed with pip.

Every patch names the file and the exact number of occurrences it expects, so a changed source fails
loudly instead of half-patching. Mask2Former needs none of detectron2's compiled ops; the patched package
raises a clear error only if one of them is actually called.

Usage: python tools/install_detectron2.py [--force] [--workdir DIR] [--wheel-dir DIR]

With --wheel-dir, a pure-Python wheel is built into DIR instead of installing (for machines without network).
"""
import argparse
import hashlib
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import urllib.request

PACKAGE = "pb1-detectron2"
VERSION = "0.6"
SDIST = f"{PACKAGE}-{VERSION}.tar.gz"
SHA256 = "5d2e9e51e523ec72f6a31cca04b0a515492e9514b773a3d134cedc0677170b29"
DEFAULT_INDEX = "https://pypi.org/simple"

_MISSING_C = '''try:
    from detectron2 import _C
except ImportError:  # pure-Python install: the compiled ops are unavailable
    from detectron2.utils.compiled_ops import MissingCompiledOps

    _C = MissingCompiledOps()
'''

_COMPILED_OPS_MODULE = '''"""Stand-in for detectron2's C++/CUDA extension in a pure-Python install."""


class MissingCompiledOps:
    """Raises a clear error when a compiled op is used without the extension."""

    def __getattr__(self, name):
        raise RuntimeError(
            f"detectron2 was installed without its compiled extension, so '_C.{name}' is unavailable. "
            "Install detectron2 from source (https://github.com/facebookresearch/detectron2) to use "
            "rotated boxes, deformable convolution or the fast COCO evaluator."
        )
'''

# (relative path, regex or literal, replacement, expected count). Literal strings are escaped.
PATCHES = [
    # 1-3: setup.py builds no extension, ships the model-zoo configs, is named detectron2, unpins black.
    ("setup.py", "ext_modules=get_extensions(),", "ext_modules=[],", 1),
    ("setup.py", 'cmdclass={"build_ext": torch.utils.cpp_extension.BuildExtension},', "", 1),
    ("setup.py", 'package_data={"detectron2.model_zoo": get_model_zoo_configs()},',
     'package_data={"detectron2.model_zoo": ["configs/**/*.yaml", "configs/**/*.py"]},', 1),
    ("setup.py", 'name="pb1-detectron2",', 'name="detectron2",', 1),
    ("setup.py", '"black==21.4b2",', '"black",', 1),
    # 4: the compiled extension is optional at import time.
    ("detectron2/layers/deform_conv.py", "from detectron2 import _C\n", _MISSING_C, 1),
    ("detectron2/layers/roi_align_rotated.py", "from detectron2 import _C\n", _MISSING_C, 1),
    ("detectron2/layers/rotated_boxes.py", "from detectron2 import _C\n", _MISSING_C, 1),
    ("detectron2/evaluation/fast_eval_api.py", "from detectron2 import _C\n", _MISSING_C, 1),
    # 5: COCOEvaluator falls back to pycocotools' COCOeval without the compiled evaluator.
    ("detectron2/evaluation/coco_evaluation.py",
     "coco_eval = (COCOeval_opt if use_fast_impl else COCOeval)(coco_gt, coco_dt, iou_type)",
     "if use_fast_impl and isinstance(_C, MissingCompiledOps):\n"
     "        use_fast_impl = False\n"
     "    coco_eval = (COCOeval_opt if use_fast_impl else COCOeval)(coco_gt, coco_dt, iou_type)", 1),
    ("detectron2/evaluation/coco_evaluation.py",
     "from detectron2.evaluation.fast_eval_api import COCOeval_opt\n",
     "from detectron2.evaluation.fast_eval_api import COCOeval_opt, _C\n"
     "from detectron2.utils.compiled_ops import MissingCompiledOps\n", 1),
    # 6: NumPy >= 1.24 removed the aliases of builtins.
    ("detectron2/evaluation/pascal_voc_evaluation.py", re.compile(r"np\.bool\b"), "bool", 2),
    ("detectron2/evaluation/sem_seg_evaluation.py", re.compile(r"np\.int\b"), "int", 2),
    ("detectron2/evaluation/sem_seg_evaluation.py", re.compile(r"np\.float\b"), "float", 5),
    ("detectron2/structures/masks.py", re.compile(r"np\.bool\b"), "bool", 3),
    ("detectron2/data/datasets/pascal_voc.py", re.compile(r"np\.str\b"), "str", 1),
    ("detectron2/data/build.py", re.compile(r"np\.int\b"), "int", 2),
    ("detectron2/utils/visualizer.py", re.compile(r"np\.bool\b"), "bool", 3),
    ("detectron2/utils/video_visualizer.py", re.compile(r"np\.bool\b"), "bool", 1),
    # 7: Pillow 10 removed Image.LINEAR (same value as BILINEAR).
    ("detectron2/data/transforms/transform.py", "Image.LINEAR", "Image.BILINEAR", 1),
    # 8: pkg_resources is gone from current setuptools.
    ("detectron2/model_zoo/model_zoo.py", "import pkg_resources\n", "", 1),
    ("detectron2/model_zoo/model_zoo.py",
     'cfg_file = pkg_resources.resource_filename(\n        "detectron2.model_zoo", os.path.join("configs", config_path)\n    )',
     'cfg_file = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs", config_path)', 1),
    # 9: PyTorch no longer ships caffe2.
    ("detectron2/export/__init__.py", "from .api import *\n",
     "try:\n    from .api import *\nexcept ImportError:  # caffe2 is not part of current PyTorch\n    pass\n", 1),
    # 10: Python 3.11 rejects random.sample() on a set.
    ("detectron2/data/common.py", "self._rng.sample(self._fallback_candidates, k=1)",
     "self._rng.sample(sorted(self._fallback_candidates), k=1)", 1),
    # 11: the LR-scheduler hook must recognise schedulers of PyTorch >= 2.0.
    ("detectron2/engine/hooks.py", "torch.optim.lr_scheduler._LRScheduler",
     "torch.optim.lr_scheduler.LRScheduler", 2),
]


def log(msg):
    print(f"[install_detectron2] {msg}", flush=True)


def fail(step, msg):
    sys.exit(f"[install_detectron2] FAILED at step '{step}': {msg}")


def installed_version():
    """Return the version of an importable detectron2, or None."""
    if importlib.util.find_spec("detectron2") is None:
        return None
    out = subprocess.run([sys.executable, "-c", "import detectron2; print(detectron2.__version__)"],
                         capture_output=True, text=True)
    return out.stdout.strip() if out.returncode == 0 else None


def version_ok(version):
    parts = [int(p) for p in re.findall(r"\d+", version)[:2]]
    return parts >= [0, 6]


def index_url():
    """The package index pip uses (PIP_INDEX_URL or pip's configured index), defaulting to PyPI."""
    url = os.environ.get("PIP_INDEX_URL")
    if not url:
        out = subprocess.run([sys.executable, "-m", "pip", "config", "get", "global.index-url"],
                             capture_output=True, text=True)
        url = out.stdout.strip() if out.returncode == 0 and out.stdout.strip() else DEFAULT_INDEX
    return url.rstrip("/")


def download(dest_dir):
    """Download the sdist from the index's JSON simple API (PEP 691) and verify its hash.

    ``pip download`` cannot be used: pip refuses the sdist's metadata, which declares a direct-URL
    dependency (panopticapi from GitHub) in an optional extra.
    """
    path = os.path.join(dest_dir, SDIST)
    if not os.path.exists(path):
        page = f"{index_url()}/{PACKAGE}/"
        log(f"looking up {SDIST} at {page}")
        req = urllib.request.Request(page, headers={"Accept": "application/vnd.pypi.simple.v1+json"})
        try:
            with urllib.request.urlopen(req, timeout=60) as resp:
                files = json.load(resp)["files"]
        except Exception as e:  # noqa: BLE001 - report any network/format failure with the URL
            fail("download", f"could not read the package index page {page}: {e}")
        urls = [f["url"] for f in files if f["filename"] == SDIST]
        if not urls:
            fail("download", f"{SDIST} is not listed at {page}")
        url = urllib.parse.urljoin(page, urls[0])
        log(f"downloading {url}")
        tmp = path + ".part"
        with urllib.request.urlopen(url, timeout=300) as resp, open(tmp, "wb") as f:
            shutil.copyfileobj(resp, f)
        os.replace(tmp, path)
    digest = hashlib.sha256(open(path, "rb").read()).hexdigest()
    if digest != SHA256:
        fail("verify", f"{path} has SHA-256 {digest}, expected {SHA256}; delete it and retry")
    return path


def apply_patches(src):
    with open(os.path.join(src, "detectron2/utils/compiled_ops.py"), "w") as f:
        f.write(_COMPILED_OPS_MODULE)
    for rel, pattern, repl, expected in PATCHES:
        path = os.path.join(src, rel)
        text = open(path).read()
        if isinstance(pattern, str):
            pattern = re.compile(re.escape(pattern))
        count = len(pattern.findall(text))
        if count != expected:
            fail("patch", f"{rel}: expected {expected} occurrence(s) of {pattern.pattern!r}, found {count}")
        text = pattern.sub(lambda m: repl, text)
        open(path, "w").write(text)
    log(f"applied {len(PATCHES)} patches")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--force", action="store_true", help="reinstall even if detectron2 is importable")
    parser.add_argument("--workdir", default=None, help="where to keep the downloaded sdist (default: a temp dir)")
    parser.add_argument("--wheel-dir", default=None, help="build a wheel into this folder instead of installing")
    args = parser.parse_args()

    version = installed_version()
    if version and not args.force and not args.wheel_dir:
        if version_ok(version):
            log(f"detectron2 {version} is already importable; nothing to do")
            return
        fail("check", f"detectron2 {version} is installed but >= 0.6 is required; uninstall it or pass --force")

    # Temporary folders made here are removed when done, also on failure; a --workdir of the user's is kept.
    workdir = args.workdir or tempfile.mkdtemp(prefix="d2-install-")
    temporary = [] if args.workdir else [workdir]
    try:
        os.makedirs(workdir, exist_ok=True)
        sdist = download(workdir)
        build = tempfile.mkdtemp(prefix="d2-src-")
        temporary.append(build)
        with tarfile.open(sdist) as tar:
            tar.extractall(build, filter="data")
        src = os.path.join(build, f"{PACKAGE}-{VERSION}")
        apply_patches(src)
        if args.wheel_dir:
            cmd = [sys.executable, "-m", "pip", "wheel", "--no-build-isolation", "--no-deps", "-q", "-w",
                   args.wheel_dir, src]
            if subprocess.run(cmd).returncode != 0:
                fail("pip wheel", " ".join(cmd))
            log(f"wheel written to {args.wheel_dir}")
            return
        log("installing with pip (pure Python, no compiled extension)")
        cmd = [sys.executable, "-m", "pip", "install", "--no-build-isolation", "--no-deps", "-q", src]
        if subprocess.run(cmd).returncode != 0:
            fail("pip install", " ".join(cmd))
    finally:
        for folder in temporary:
            shutil.rmtree(folder, ignore_errors=True)
    version = installed_version()
    if not version:
        fail("import check", "detectron2 does not import after installation")
    log(f"detectron2 {version} installed")


if __name__ == "__main__":
    main()
