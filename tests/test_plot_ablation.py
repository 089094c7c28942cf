"""tools/plot_ablation.py: variants' runs plotted against the share of their time budget."""
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOOL = os.path.join(ROOT, "tools", "plot_ablation.py")


def _run_folder(path, max_iter, final):
    os.makedirs(path)
    with open(os.path.join(path, "config.yaml"), "w") as f:
        f.write(f"SOLVER:\n  MAX_ITER: {max_iter}\n")
    with open(os.path.join(path, "metrics.json"), "w") as f:
        for it in range(19, max_iter, 20):
            f.write(json.dumps({"iteration": it, "loss_ce": 3.0 - it / max_iter, "loss_dice": 2.0}) + "\n")
        f.write(json.dumps({"iteration": max_iter, "panoptic_seg/PQ": final, "panoptic_seg/PQ_th": 0.0,
                            "segm/AP": final / 10}) + "\n")
    return str(path)


def test_writes_a_png_for_variants_of_different_lengths(tmp_path):
    a = _run_folder(tmp_path / "a_s1", 100, 30.0)
    b1, b2 = _run_folder(tmp_path / "b_s1", 60, 20.0), _run_folder(tmp_path / "b_s2", 60, 22.0)
    out = tmp_path / "plot.png"
    subprocess.run([sys.executable, TOOL, "-o", str(out), "--variant", "a", a, "--variant", "b", b1, b2],
                   check=True, capture_output=True)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_names_the_folder_without_metrics(tmp_path):
    os.makedirs(tmp_path / "empty")
    r = subprocess.run([sys.executable, TOOL, "-o", str(tmp_path / "p.png"), "--variant", "a",
                        str(tmp_path / "empty")], capture_output=True, text=True)
    assert r.returncode != 0 and "empty: no metrics.json" in r.stderr
    r = subprocess.run([sys.executable, TOOL, "-o", str(tmp_path / "p.png"), "--variant", "a"],
                       capture_output=True, text=True)
    assert r.returncode != 0 and "--variant a: give the output folder" in r.stderr
