"""
Property-based fuzzing (hypothesis) of the dataset mappers, the image reader and the COCO-format JSON readers.

Every generated input must be handled correctly (labels as annotated, masks and images of the stated size) or
rejected with a named error (BadDatasetItemError / ValueError naming the file and the problem); never an
unhandled exception, never a silently wrong label. The number of cases tried is printed at the end of the run
(and kept in pytest's cache under "reliability/fuzz_cases").
"""
import collections
import functools
import io
import json
import math
import os
import tempfile

import numpy as np
import pycocotools.mask as mask_util
import pytest
from PIL import Image
from detectron2.structures import polygons_to_bitmask

pytest.importorskip("hypothesis", reason="fuzzing needs hypothesis: pip install -e .[test]")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from mask2former.data.dataset_mappers import BadDatasetItemError, build_dataset_mapper  # noqa: E402
from mask2former.data.dataset_mappers.checks import read_image  # noqa: E402
from mask2former.data.datasets.loading import load_panoptic_json  # noqa: E402
from mask2former.data.datasets.ytvis import load_ytvis_json  # noqa: E402
from test_dataset_mappers import NUM_CLASSES, make_cfg  # noqa: E402

H, W = 24, 32
CASES = collections.Counter()
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
WORK = tempfile.mkdtemp(prefix="m2f-fuzz-")  # one folder for the module (hypothesis forbids function fixtures)


@pytest.fixture(scope="module", autouse=True)
def report(request):
    yield
    if getattr(request.config, "cache", None) is not None:  # absent with -p no:cacheprovider
        request.config.cache.set("reliability/fuzz_cases", dict(CASES))
    request.config.fuzz_cases = dict(CASES)  # printed in the terminal summary (tests/conftest.py)


def _image_file(h=H, w=W):
    path = os.path.join(WORK, f"image_{h}x{w}.png")
    if not os.path.exists(path):
        Image.fromarray(np.random.default_rng(0).integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path)
    return path


# ------------------------------------------------------------------------------------------ instance mapper
# mostly valid values, so that accepted items (whose labels and masks are checked) are common too
inside = st.floats(-10, 50, allow_nan=False)
coordinate = st.one_of(inside, inside, inside, inside, inside, inside, st.sampled_from([math.nan, math.inf]))
polygon = st.one_of(st.lists(coordinate, min_size=6, max_size=14), st.lists(coordinate, max_size=5))
rle_size = st.one_of(st.just([H, W]), st.just([H, W]), st.lists(st.integers(-2, 40), min_size=0, max_size=3))


@st.composite
def segmentation(draw):
    kind = draw(st.sampled_from(["polygons", "polygons", "rle", "rle_bytes", "uncompressed", "junk", "empty"]))
    if kind == "polygons":
        return draw(st.lists(polygon, min_size=1, max_size=3))
    if kind == "empty":
        return []
    if kind in ("rle", "rle_bytes", "uncompressed"):
        mask = draw(st.integers(0, 2**20)).to_bytes(3, "little")
        m = np.zeros((H, W), np.uint8)
        y, x = mask[0] % H, mask[1] % W
        m[y:y + 1 + mask[2] % 8, x:x + 1 + mask[2] % 8] = 1
        size = draw(rle_size)
        if kind == "uncompressed":  # run lengths in column-major order, starting with zeros
            flat = m.flatten(order="F")
            runs, cur, n = [], 0, 0
            for v in flat:
                if v != cur:
                    runs.append(n)
                    cur, n = v, 0
                n += 1
            runs.append(n)
            return {"size": size, "counts": draw(st.one_of(st.just(runs), st.lists(st.integers(-3, 900))))}
        counts = mask_util.encode(np.asfortranarray(m))["counts"]
        if draw(st.booleans()):
            counts = counts[: draw(st.integers(0, len(counts)))]  # truncated
        return {"size": size, "counts": counts if kind == "rle_bytes" else counts.decode("ascii", "replace")}
    return draw(st.one_of(st.none(), st.integers(), st.text(max_size=5), st.dictionaries(st.text(max_size=3),
                                                                                        st.integers(), max_size=2)))


@st.composite
def valid_segmentation(draw):
    if draw(st.booleans()):
        return [draw(st.lists(inside, min_size=6, max_size=12).filter(lambda p: len(p) % 2 == 0))]
    m = np.zeros((H, W), np.uint8)
    y, x, s = draw(st.integers(0, H - 1)), draw(st.integers(0, W - 1)), draw(st.integers(0, 8))
    m[y:y + s, x:x + s] = 1
    return {"size": [H, W], "counts": mask_util.encode(np.asfortranarray(m))["counts"].decode("ascii")}


valid_annotation = st.fixed_dictionaries({"category_id": st.integers(0, NUM_CLASSES - 1),
                                          "segmentation": valid_segmentation(), "iscrowd": st.just(0)})
fuzzed_annotation = st.fixed_dictionaries(
    {
        "category_id": st.one_of(st.integers(0, NUM_CLASSES - 1), st.integers(0, NUM_CLASSES - 1),
                                 st.integers(-3, NUM_CLASSES + 3), st.floats(allow_nan=True), st.none(), st.booleans()),
        "segmentation": segmentation(),
        "bbox": st.lists(st.one_of(st.floats(-1e6, 1e6), st.just(math.nan)), min_size=0, max_size=5),
        "bbox_mode": st.just(1),
        "iscrowd": st.sampled_from([0, 0, 0, 1, True, "0", None, 2]),
    }
)
annotation = st.one_of(valid_annotation, valid_annotation, fuzzed_annotation, st.sampled_from([None, "a", 3]))


def _expected_mask(segm):
    if isinstance(segm, list):
        return polygons_to_bitmask([np.asarray(p, dtype=np.float64) for p in segm], H, W)
    if isinstance(segm["counts"], list):
        return mask_util.decode(mask_util.frPyObjects(segm, H, W)).astype(bool)
    return mask_util.decode(dict(segm, counts=segm["counts"] if isinstance(segm["counts"], bytes)
                                 else segm["counts"].encode())).astype(bool)


@FUZZ
@given(st.lists(annotation, max_size=3))
def test_instance_mapper_on_fuzzed_annotations(annotations):
    CASES["instance mapper"] += 1
    mapper = build_dataset_mapper(make_cfg("mask_former_instance", **{"MIN_SIZE_TRAIN": (H,)}), is_train=True)
    item = {"file_name": _image_file(), "height": H, "width": W, "annotations": annotations}
    try:
        out = mapper(item)
    except BadDatasetItemError as e:
        assert _image_file() in str(e)
        CASES["instance mapper: named error"] += 1
        return
    # accepted: dicts with iscrowd 0 / 1 only (a truthy "0" must not drop an instance as a crowd region), and one
    # output instance per non-crowd annotation with a non-empty mask, same class, same mask
    assert all(isinstance(a, dict) and a["iscrowd"] in (0, 1) for a in annotations)
    expected = []
    for a in annotations:
        if a["iscrowd"]:
            continue
        mask = _expected_mask(a["segmentation"])
        if mask.any():
            expected.append((a["category_id"], mask))
    instances = out["instances"]
    assert instances.gt_classes.tolist() == [c for c, _ in expected]
    assert all(0 <= c < NUM_CLASSES for c in instances.gt_classes.tolist())
    for got, (_, mask) in zip(instances.gt_masks.numpy(), expected):
        assert np.array_equal(got, mask)


# ------------------------------------------------------------------------------------------ images
def _encode(kind, h, w, exif_orientation):
    rng = np.random.default_rng(h * 7 + w)
    if kind == "gray":
        image = Image.fromarray(rng.integers(0, 256, (h, w), dtype=np.uint8), "L")
    elif kind == "rgba":
        image = Image.fromarray(rng.integers(0, 256, (h, w, 4), dtype=np.uint8), "RGBA")
    elif kind == "16bit":
        image = Image.fromarray(rng.integers(0, 65536, (h, w), dtype=np.uint16))
    elif kind == "palette":
        image = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).convert("P")
    else:
        image = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
    buffer = io.BytesIO()
    if exif_orientation:
        exif = Image.Exif()
        exif[0x0112] = exif_orientation
        image.convert("RGB").save(buffer, format="JPEG", exif=exif.tobytes())
    else:
        image.save(buffer, format="PNG")
    return buffer.getvalue()


@settings(max_examples=60, deadline=None)
@given(kind=st.sampled_from(["rgb", "gray", "rgba", "16bit", "palette"]),
       h=st.one_of(st.just(1), st.integers(1, 40)), w=st.one_of(st.just(1), st.integers(1, 40), st.just(10000)),
       orientation=st.sampled_from([0, 0, 1, 3, 6, 8]), cut=st.sampled_from([None, None, None, 0.5, 0.0]))
def test_image_reader_on_odd_images(kind, h, w, orientation, cut):
    CASES["image reader"] += 1
    data = _encode(kind, h, w, orientation)
    if cut is not None:
        data = data[: int(len(data) * cut)]
    path = os.path.join(WORK, "odd_image")
    with open(path, "wb") as f:
        f.write(data)
    rotated = orientation in (6, 8)
    expected_hw = (w, h) if rotated else (h, w)
    try:
        image = read_image(path, "RGB", expected_hw)
    except BadDatasetItemError as e:
        assert path in str(e)
        assert cut is not None, f"a valid {kind} image was rejected: {e}"
        CASES["image reader: named error"] += 1
        return
    assert image.dtype == np.uint8 and image.shape == (*expected_hw, 3)
    if kind == "16bit" and not orientation:  # scaled to 8 bits, not clipped at 255
        raw = np.asarray(Image.open(io.BytesIO(data)), dtype=np.uint16)
        assert np.array_equal(image[:, :, 0], ((raw.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8))


# ------------------------------------------------------------------------------------------ COCO-format JSON
category = st.fixed_dictionaries({"id": st.integers(-2, 6), "name": st.text(max_size=3),
                                  "isthing": st.sampled_from([0, 1])})
segment_info = st.fixed_dictionaries({"id": st.integers(-1, 5), "category_id": st.integers(-3, 8),
                                      "iscrowd": st.sampled_from([0, 1])})
maybe = st.sampled_from(["keep", "keep", "keep", "drop", "wrong type"])


def _mutate(draw, obj, key, wrong):
    action = draw(maybe)
    if action == "drop":
        obj.pop(key, None)
    elif action == "wrong type":
        obj[key] = wrong


@st.composite
def panoptic_json(draw):
    annotations = []
    for i in range(draw(st.integers(0, 3))):
        ann = {"image_id": i, "file_name": f"{i}.png", "segments_info": draw(st.lists(segment_info, max_size=3))}
        _mutate(draw, ann, draw(st.sampled_from(["image_id", "file_name", "segments_info"])), draw(st.integers()))
        annotations.append(ann)
    data = {"images": [{"id": i, "file_name": f"{i}.jpg", "height": H, "width": W} for i in range(3)],
            "annotations": annotations, "categories": draw(st.lists(category, max_size=4))}
    _mutate(draw, data, draw(st.sampled_from(["images", "annotations", "categories"])), draw(st.integers()))
    return data


@FUZZ
@given(panoptic_json())
def test_panoptic_json_reader_on_fuzzed_json(data):
    CASES["panoptic JSON"] += 1
    json_file = os.path.join(WORK, "panoptic.json")
    with open(json_file, "w") as f:
        json.dump(data, f)
    hints = {"json": "", "images": "", "panoptic": "", "sem_seg": ""}
    try:
        dicts = load_panoptic_json(json_file, WORK, WORK, hints=hints)
    except ValueError as e:
        assert json_file in str(e), str(e)
        CASES["panoptic JSON: named error"] += 1
        return
    ids = [c["id"] for c in data["categories"]]
    assert len(set(ids)) == len(ids), "duplicate category ids were accepted: their segments' labels are ambiguous"
    order = sorted(data["categories"], key=lambda c: c["id"])  # contiguous ids follow the dataset ids
    for record, ann in zip(dicts, data["annotations"]):
        assert len(record["segments_info"]) == len(ann["segments_info"])
        for seg, raw in zip(record["segments_info"], ann["segments_info"]):
            index = [c["id"] for c in order].index(raw["category_id"])
            assert seg["category_id"] == index and seg["isthing"] == bool(order[index]["isthing"])


@st.composite
def ytvis_json(draw):
    videos = [{"id": i + 1, "length": 2, "height": H, "width": W, "file_names": [f"v{i}/0.jpg", f"v{i}/1.jpg"]}
              for i in range(draw(st.integers(0, 2)))]
    for v in videos:
        _mutate(draw, v, draw(st.sampled_from(["length", "file_names", "height"])), draw(st.text(max_size=2)))
    annotations = []
    for j in range(draw(st.integers(0, 3))):
        segm = [draw(st.one_of(st.none(), segmentation())) for _ in range(2)]
        segm = [dict(x, counts=x["counts"].decode("ascii")) if isinstance(x, dict) and isinstance(x.get("counts"), bytes)
                else x for x in segm]  # JSON has no bytes
        ann = {"id": j + 1, "video_id": draw(st.integers(0, 3)), "category_id": draw(st.integers(-1, 4)),
               "iscrowd": 0, "segmentations": segm}
        _mutate(draw, ann, draw(st.sampled_from(["video_id", "category_id", "segmentations"])), draw(st.integers()))
        annotations.append(ann)
    data = {"videos": videos, "annotations": annotations,
            "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}, {"id": 3, "name": "c"}]}
    _mutate(draw, data, draw(st.sampled_from(["videos", "annotations", "categories"])), draw(st.integers()))
    return data


@FUZZ
@given(ytvis_json())
def test_ytvis_json_reader_on_fuzzed_json(data):
    CASES["YTVIS JSON"] += 1
    json_file = os.path.join(WORK, "ytvis.json")
    with open(json_file, "w") as f:
        json.dump(data, f)
    try:
        dicts = load_ytvis_json(json_file, WORK)
    except (ValueError, BadDatasetItemError) as e:
        assert json_file in str(e), str(e)
        CASES["YTVIS JSON: named error"] += 1
        return
    for record in dicts:
        assert len(record["file_names"]) == record["length"]
        for frame in record.get("annotations", []):  # no annotations at all: a test split
            for obj in frame:
                assert 0 <= obj["category_id"] < 3


# ------------------------------------------------------------------------------------------ semantic mapper
label_value = st.one_of(st.integers(0, NUM_CLASSES - 1), st.integers(0, NUM_CLASSES - 1), st.just(255),
                        st.integers(NUM_CLASSES, 254))
# PIL modes of label files: one class id per pixel (8-bit, palette indices, 16- and 32-bit integers, 1-bit), or
# kinds that hold no class ids (float, several channels)
LABEL_MODES = ["L", "L", "L", "P", "I;16", "I", "1", "F", "LA", "RGB"]
INTEGER_LABEL_MODES = ("L", "P", "I;16", "I", "1")


def _label_image(label, mode, wide_value):
    """``label`` (H, W) uint8 ids as a PIL image of ``mode``; 16/32-bit maps may hold ``wide_value`` too."""
    if mode in ("I;16", "I"):
        wide = label.astype(np.int32)
        if wide_value is not None:
            wide[0, 0] = wide_value
        return Image.fromarray(wide.astype(np.uint16)) if mode == "I;16" else Image.fromarray(wide, "I")
    if mode == "1":
        return Image.fromarray(label != 0)
    if mode == "F":
        return Image.fromarray(label.astype(np.float32))
    if mode == "LA":
        return Image.fromarray(np.dstack([label, label]), "LA")
    if mode == "RGB":
        return Image.fromarray(np.dstack([label] * 3))
    return Image.fromarray(label).convert(mode) if mode == "P" else Image.fromarray(label)


@FUZZ
@given(values=st.lists(label_value, min_size=1, max_size=4), seed=st.integers(0, 2**16),
       shape=st.sampled_from([(H, W)] * 5 + [(W, H), (H + 1, W), (1, 1)]), mode=st.sampled_from(LABEL_MODES),
       wide_value=st.sampled_from([None, None, None, 300, 65535, -1, 2**24 + 1]),
       cut=st.sampled_from([None] * 6 + [0.5, 0.0]))
def test_semantic_mapper_on_fuzzed_label_maps(values, seed, shape, mode, wide_value, cut):
    CASES["semantic mapper"] += 1
    label = np.asarray(values, dtype=np.uint8)[np.random.default_rng(seed).integers(0, len(values), shape)]
    if mode == "I;16" and wide_value is not None and wide_value < 0:
        wide_value = None  # no negative 16-bit values
    image = _label_image(label, mode, wide_value)
    path = os.path.join(WORK, f"label_{seed}_{shape[0]}x{shape[1]}.{'png' if mode not in ('I', 'F') else 'tif'}")
    image.save(path)
    if cut is not None:
        with open(path, "rb") as f:
            data = f.read()
        with open(path, "wb") as f:
            f.write(data[: int(len(data) * cut)])
    expected = np.asarray(image).astype(np.int64) if mode in INTEGER_LABEL_MODES else None
    mapper = build_dataset_mapper(make_cfg("mask_former_semantic", **{"MIN_SIZE_TRAIN": (H,)}), is_train=True)
    item = {"file_name": _image_file(), "height": H, "width": W, "sem_seg_file_name": path}
    try:
        out = mapper(item)
    except BadDatasetItemError as e:
        assert path in str(e), str(e)
        valid = (cut is None and expected is not None and shape == (H, W)
                 and all(0 <= v < NUM_CLASSES or v == 255 for v in np.unique(expected)))
        assert not valid, f"a valid {mode} {shape} label map was refused: {e}"
        CASES["semantic mapper: named error"] += 1
        return
    # accepted: an integer label map as written, one instance per class present (ignore excluded)
    assert cut is None and expected is not None and shape == (H, W), f"accepted a {mode} {shape} label map"
    assert np.array_equal(out["sem_seg"].numpy(), expected)
    present = [int(v) for v in np.unique(expected) if v != 255]
    assert all(0 <= c < NUM_CLASSES for c in present)
    assert out["instances"].gt_classes.tolist() == present
    for c, mask in zip(present, out["instances"].gt_masks.numpy()):
        assert np.array_equal(mask, expected == c)


# ------------------------------------------------------------------------------------------ SAM mask reader
@st.composite
def sam_segmentation(draw):
    """A SAM automatic-generator 'segmentation': a binary array or a COCO RLE, often valid, sometimes not."""
    seed = draw(st.integers(0, 2**16))
    shape = draw(st.sampled_from([(H, W), (H, W), (H, W), (W, H), (H, W + 1)]))
    mask = np.random.default_rng(seed).random(shape) < draw(st.sampled_from([0.0, 0.3, 0.7]))
    kind = draw(st.sampled_from(["array", "list", "rle", "rle_uncompressed", "rle_bad_counts", "rle_no_size",
                                 "values", "ragged"]))
    if kind == "array":
        return mask
    if kind == "list":
        return mask.astype(int).tolist()
    if kind == "values":
        return mask.astype(np.uint8) * 3
    if kind == "ragged":
        return [[0, 1], [1]]
    rle = mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))
    if kind == "rle":
        return {"size": list(rle["size"]), "counts": rle["counts"].decode()}
    if kind == "rle_uncompressed":
        flat = mask.flatten(order="F").astype(int)
        runs, current, n = [], 0, 0
        for v in flat:
            if v != current:
                runs.append(n)
                current, n = v, 0
            n += 1
        runs.append(n)
        return {"size": list(shape), "counts": runs}
    if kind == "rle_bad_counts":
        return {"size": list(rle["size"]), "counts": draw(st.text("0123456789:;<=>?@ABCDEFGHIJKL", max_size=8))}
    return {"counts": rle["counts"].decode()}


@FUZZ
@given(st.lists(sam_segmentation(), min_size=1, max_size=4), st.booleans())
def test_sam_mask_reader_on_fuzzed_records(segmentations, skip_bad):
    from mask2former.data.sam_masks import MaskInputError, read_given_masks

    CASES["SAM masks"] += 1
    records = [{"segmentation": s, "id": 100 + i, "predicted_iou": 0.9} for i, s in enumerate(segmentations)]
    try:
        given = read_given_masks(records, (H, W), source="fuzz.json", skip_bad=skip_bad)
    except MaskInputError as e:
        assert not skip_bad and "fuzz.json" in str(e) and e.index is not None and 0 <= e.index < len(records)
        CASES["SAM masks: named error"] += 1
        return
    # accepted masks keep their input order and ids, and match what was given; skipped ones are all accounted for
    assert given.indices == sorted(given.indices)
    assert given.ids == [100 + i for i in given.indices]
    assert sorted(given.indices + [i for i, _, _ in given.skipped]) == list(range(len(records)))
    for i, mask in zip(given.indices, given.masks):
        seg = segmentations[i]
        if isinstance(seg, dict):
            expected = _expected_mask(dict(seg, counts=seg["counts"]))
        else:
            expected = np.asarray(seg).astype(bool)
        assert mask.shape == (H, W) and mask.any() and np.array_equal(mask, expected)


# ------------------------------------------------------------------------------------------ panoptic mapper
# mostly valid values (one bad value in 8), so that accepted items are common too
segment_id = st.one_of(*[st.integers(1, 4)] * 7, st.sampled_from([0, -3, True, "2"]))
category = st.one_of(*[st.integers(0, NUM_CLASSES - 1)] * 7, st.sampled_from([NUM_CLASSES, -1, None]))
segment = st.one_of(*[st.fixed_dictionaries({"id": segment_id, "category_id": category},
                                             optional={"iscrowd": st.sampled_from([0, 1] * 7 + ["0", None])})] * 15,
                    st.sampled_from([None, "segment"]))


@functools.lru_cache(maxsize=None)
def _panoptic_mapper():
    return build_dataset_mapper(make_cfg("mask_former_panoptic", **{"MIN_SIZE_TRAIN": (H,)}), is_train=True)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(segments=st.lists(segment, max_size=4), seed=st.integers(0, 2**16),
       shape=st.sampled_from([(H, W), (H, W), (H, W), (W, H)]))
def test_panoptic_mapper_on_fuzzed_segments(segments, seed, shape):
    CASES["panoptic mapper"] += 1
    ids = np.random.default_rng(seed).integers(0, 5, shape)  # segment ids 1..4 drawn, 0 = void
    rgb = np.stack([ids % 256, ids // 256 % 256, ids // 256 ** 2], axis=-1).astype(np.uint8)
    path = os.path.join(WORK, f"pan_{seed}_{shape[0]}x{shape[1]}.png")
    Image.fromarray(rgb).save(path)
    mapper = _panoptic_mapper()
    item = {"file_name": _image_file(), "height": H, "width": W, "pan_seg_file_name": path,
            "segments_info": [dict(s) if isinstance(s, dict) else s for s in segments]}
    try:
        out = mapper(item)
    except BadDatasetItemError as e:
        assert _image_file() in str(e)
        valid = all(isinstance(s, dict) and isinstance(s["id"], int) and not isinstance(s["id"], bool) and s["id"] > 0
                    and isinstance(s["category_id"], int) and 0 <= s["category_id"] < NUM_CLASSES
                    and s.get("iscrowd", 0) in (0, 1) for s in segments)
        assert shape != (H, W) or not valid, f"a valid item was refused: {e}"
        CASES["panoptic mapper: named error"] += 1
        return
    # accepted: one instance per non-crowd segment whose id is in the PNG, with its class and its pixels
    assert shape == (H, W) and all(isinstance(s, dict) and s.get("iscrowd", 0) in (0, 1) for s in segments)
    expected = [(s["category_id"], ids == s["id"]) for s in segments
                if not s.get("iscrowd", 0) and (ids == s["id"]).any()]
    instances = out["instances"]
    assert instances.gt_classes.tolist() == [c for c, _ in expected]
    for got, (_, mask) in zip(instances.gt_masks.numpy(), expected):
        assert np.array_equal(got, mask)


# ------------------------------------------------------------------------------------------ video (YouTube-VIS) mapper
FRAMES = 3  # frames per video; the training clip takes all of them, in order


@functools.lru_cache(maxsize=None)
def _video_mapper():
    from video_testing import tiny_video_cfg

    cfg = tiny_video_cfg("INPUT.DATASET_MAPPER_NAME", "ytvis", "MODEL.SEM_SEG_HEAD.NUM_CLASSES", NUM_CLASSES,
                         "INPUT.SAMPLING_FRAME_NUM", FRAMES, "INPUT.SAMPLING_FRAME_RANGE", 20,
                         "INPUT.MIN_SIZE_TRAIN", f"({H},)", "INPUT.MAX_SIZE_TRAIN", 1000,
                         "INPUT.MIN_SIZE_TRAIN_SAMPLING", "choice_by_clip", "INPUT.RANDOM_FLIP", "none",
                         "INPUT.CROP.ENABLED", False)
    return build_dataset_mapper(cfg, is_train=True)


@st.composite
def frame_object(draw, inst_id, class_of):
    """One frame's annotation of instance ``inst_id``: valid (class ``class_of[inst_id]``) five times in six,
    else with one field made wrong, missing or junk (bboxes are anywhere, NaN included: the mapper ignores them)."""
    obj = {"id": inst_id, "category_id": class_of[inst_id], "iscrowd": draw(st.sampled_from([0, 0, 0, 0, 0, 1])),
           "segmentation": draw(valid_segmentation()), "bbox_mode": 1,
           "bbox": draw(st.lists(st.one_of(st.floats(-1e4, 1e4), st.just(math.nan)), min_size=4, max_size=4))}
    if draw(st.integers(0, 5)):
        return obj
    flaw = draw(st.sampled_from(["id", "category_id", "iscrowd", "segmentation", "missing key", "junk"]))
    if flaw == "id":
        obj["id"] = draw(st.sampled_from([None, str(inst_id), [inst_id], True, float(inst_id)]))
    elif flaw == "category_id":
        obj["category_id"] = draw(st.sampled_from([NUM_CLASSES, -1, None, 1.5, True, "1",
                                                   (class_of[inst_id] + 1) % NUM_CLASSES]))
    elif flaw == "iscrowd":
        obj["iscrowd"] = draw(st.sampled_from(["0", None, 2, -1, 0.5]))
    elif flaw == "segmentation":
        obj["segmentation"] = draw(segmentation())
    elif flaw == "missing key":
        obj.pop(draw(st.sampled_from(["id", "category_id", "segmentation"])))
    else:
        return draw(st.sampled_from([None, "object", 3, [obj]]))
    return obj


@st.composite
def video_item(draw):
    """A 3-frame video dict as the YouTube-VIS loader gives, with instances 1..4 in some frames, often with a
    flaw: an annotation's field (see frame_object), a missing frame file or one of another size, an instance
    twice in a frame, fewer per-frame lists than frames, or a frame's list that is not a list."""
    class_of = dict(enumerate(draw(st.lists(st.integers(0, NUM_CLASSES - 1), min_size=4, max_size=4)), start=1))
    frames = [[draw(frame_object(i, class_of)) for i in sorted(draw(st.sets(st.integers(1, 4), max_size=3)))]
              for _ in range(FRAMES)]
    files = [_image_file() for _ in range(FRAMES)]
    t = draw(st.integers(0, FRAMES - 1))
    flaw = draw(st.sampled_from(["none"] * 6 + ["missing frame", "frame of another size", "instance twice",
                                                "fewer frame lists", "frame list not a list"]))
    if flaw == "missing frame":
        files[t] = os.path.join(WORK, "no_such_frame.jpg")
    elif flaw == "frame of another size":
        files[t] = _image_file(H + 2, W)
    elif flaw == "instance twice":
        frames[t] = frames[t] + [dict(o) for o in frames[t][:1] if isinstance(o, dict)]
    elif flaw == "fewer frame lists":
        frames = frames[:t]
    elif flaw == "frame list not a list":
        frames[t] = draw(st.sampled_from([None, {"id": 1}, 7]))
    return {"file_names": files, "height": H, "width": W, "length": FRAMES, "video_id": 5, "annotations": frames}


def _is_int(x):
    return isinstance(x, int) and not isinstance(x, bool)


def _video_problem(item):
    """None if the mapper must accept ``item``, else what is wrong with it (for the message)."""
    if any(not os.path.exists(f) for f in item["file_names"]) or _image_file(H + 2, W) in item["file_names"]:
        return "a frame file"
    frames = item["annotations"]
    if len(frames) != FRAMES or not all(isinstance(f, list) for f in frames):
        return "the per-frame lists"
    classes = {}
    for frame in frames:
        seen = set()
        for obj in frame:
            if not isinstance(obj, dict) or obj.get("iscrowd", 0) not in (0, 1):
                return "an object or its iscrowd"
            if obj.get("iscrowd", 0):
                continue
            if not _is_int(obj.get("id")) or obj["id"] in seen:
                return "an instance id"
            seen.add(obj["id"])
            if not _is_int(obj.get("category_id")) or not 0 <= obj["category_id"] < NUM_CLASSES:
                return "a category_id"
            if classes.setdefault(obj["id"], obj["category_id"]) != obj["category_id"]:
                return "a category_id that changes"
            if "segmentation" not in obj or not _segmentation_is_valid(obj["segmentation"]):
                return "a segmentation"
    return None


def _rle_string_runs(counts: bytes):
    """The run lengths of a COCO compressed RLE string (pycocotools' rleToString format: each value in 5-bit
    groups, least significant first, offset by 48, bit 0x20 = more groups follow, sign bit 0x10 in the last
    group; from the fourth value on, the value two before is added). None if it is not such a string."""
    runs, groups = [], []
    for byte in counts:
        c = byte - 48
        if not 0 <= c < 64:
            return None
        groups.append(c)
        if c & 0x20:
            continue
        value = sum((g & 0x1F) << (5 * k) for k, g in enumerate(groups))
        if c & 0x10:
            value -= 1 << (5 * len(groups))
        runs.append(value + (runs[-2] if len(runs) > 2 else 0))
        groups = []
    return None if groups else runs


def _segmentation_is_valid(segm):
    """Polygons of >= 3 finite points, or an RLE of the image's size whose runs are >= 0 and cover it."""
    if isinstance(segm, list):
        return bool(segm) and all(isinstance(p, list) and len(p) >= 6 and len(p) % 2 == 0
                                  and all(math.isfinite(v) for v in p) for p in segm)
    if not isinstance(segm, dict) or segm.get("size") != [H, W] or "counts" not in segm:
        return False
    counts = segm["counts"]
    if isinstance(counts, str):
        if not counts.isascii():
            return False
        counts = _rle_string_runs(counts.encode("ascii"))
    elif isinstance(counts, bytes):
        counts = _rle_string_runs(counts)
    return (isinstance(counts, list) and all(_is_int(c) and c >= 0 for c in counts) and sum(counts) == H * W)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(video_item())
def test_video_mapper_on_fuzzed_clips(item):
    CASES["video mapper"] += 1
    problem = _video_problem(item)
    try:
        out = _video_mapper()(item)
    except BadDatasetItemError as e:
        assert any(f in str(e) for f in item["file_names"]) or "video 5" in str(e), str(e)
        assert problem is not None, f"a valid clip was refused: {e}"
        CASES["video mapper: named error"] += 1
        return
    assert problem is None, f"a clip with a bad {problem} was accepted"
    # accepted: every non-crowd instance of the clip, sorted by id, in every frame: its class, its mask where
    # it is annotated (the boxes come from the masks, whatever the annotation's bbox says), id -1 where absent
    assert out["frame_idx"] == list(range(FRAMES))
    objects = [{o["id"]: o for o in frame if not o.get("iscrowd", 0)} for frame in item["annotations"]]
    ids = sorted({i for frame in objects for i in frame})
    classes = {i: o["category_id"] for frame in objects for i, o in frame.items()}
    for frame, instances in zip(objects, out["instances"]):
        assert instances.gt_classes.tolist() == [classes[i] for i in ids]
        for n, inst_id in enumerate(ids):
            mask = _expected_mask(frame[inst_id]["segmentation"]) if inst_id in frame else np.zeros((H, W), bool)
            assert np.array_equal(instances.gt_masks[n].numpy(), mask)
            assert instances.gt_ids[n].item() == (inst_id if mask.any() else -1)
            ys, xs = np.nonzero(mask)
            box = [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1] if mask.any() else [0, 0, 0, 0]
            assert instances.gt_boxes.tensor[n].tolist() == [float(v) for v in box]


# ------------------------------------------------------------------------------------------ COCO instance JSON
def _coco_annotation(draw, ann_id, num_images):
    return {"id": ann_id, "image_id": draw(st.integers(1, num_images)), "category_id": draw(st.sampled_from([1, 2, 5])),
            "iscrowd": draw(st.sampled_from([0, 0, 0, 1])), "bbox": [1.0, 2.0, 3.0, 4.0], "area": 12.0,
            "segmentation": draw(st.one_of(
                st.lists(st.lists(st.floats(0, 30, allow_nan=False), min_size=2, max_size=10), max_size=2),
                st.just({"size": [H, W], "counts": [H * W]}),
                st.just({"size": [H, W], "counts": "Ph0"}), st.just([]), st.none()))}


def _break(draw, data):
    """Make one field of a COCO instance JSON wrong: missing, of another type, or pointing at nothing."""
    if not data["annotations"]:  # something for the annotation flaws to change
        data["annotations"].append(_coco_annotation(draw, 99, len(data["images"])))
    anns, images, cats = data["annotations"], data["images"], data["categories"]
    flaw = draw(st.sampled_from([
        "top-level key", "top-level type", "image key", "image field type", "repeated image id",
        "annotation key", "unknown image id", "unknown category id", "category id type", "repeated category id",
        "repeated annotation id", "iscrowd", "bbox", "polygon type", "rle size", "rle counts", "segmentation type",
        "category key", "annotation not an object", "keypoints"]))
    if flaw == "top-level key":
        data.pop(draw(st.sampled_from(["images", "categories"])))
    elif flaw == "top-level type":
        data[draw(st.sampled_from(["images", "annotations", "categories"]))] = draw(st.sampled_from([{}, 3, "x"]))
    elif flaw == "image key":
        images[0].pop(draw(st.sampled_from(["id", "file_name", "height", "width"])), None)
    elif flaw == "image field type":
        images[0][draw(st.sampled_from(["id", "file_name", "height", "width"]))] = draw(st.sampled_from([None, 1.5,
                                                                                                         [1], -3]))
    elif flaw == "repeated image id":
        data["images"] = images + [dict(images[0], file_name="again.jpg")]
    elif flaw == "annotation key":
        anns[0].pop(draw(st.sampled_from(["id", "image_id", "category_id"])), None)
    elif flaw == "unknown image id":
        anns[0]["image_id"] = draw(st.sampled_from([0, 99, "1", None]))
    elif flaw == "unknown category id":
        anns[0]["category_id"] = draw(st.sampled_from([0, 3, -1, 99]))
    elif flaw == "category id type":
        anns[0]["category_id"] = draw(st.sampled_from(["1", 1.0, None, True, [1]]))
    elif flaw == "repeated category id":
        data["categories"] = cats + [dict(cats[0], name="twin")]
    elif flaw == "repeated annotation id":
        anns.append(dict(anns[0]))
    elif flaw == "iscrowd":
        anns[0]["iscrowd"] = draw(st.sampled_from(["0", 2, None, 0.5]))
    elif flaw == "bbox":
        anns[0]["bbox"] = draw(st.sampled_from([[], [1, 2, 3], "1 2 3 4", None, [1, 2, "3", 4]]))
    elif flaw == "polygon type":
        anns[0]["segmentation"] = draw(st.sampled_from([[1.0, 2.0, 3.0, 4.0, 5.0, 6.0], [["1", 2, 3, 4, 5, 6]],
                                                        [None]]))
    elif flaw == "rle size":
        anns[0]["segmentation"] = {"size": draw(st.sampled_from([None, [H], [H, "W"], [0, W]])), "counts": [H * W]}
    elif flaw == "rle counts":
        anns[0]["segmentation"] = {"size": [H, W], "counts": draw(st.sampled_from([None, 5, [-1, H * W], [1.5]]))}
    elif flaw == "segmentation type":
        anns[0]["segmentation"] = draw(st.sampled_from([5, "polygon", True]))
    elif flaw == "category key":
        cats[0].pop(draw(st.sampled_from(["id", "name"])))
    elif flaw == "annotation not an object":
        anns.append(draw(st.sampled_from([None, 3, "annotation"])))
    else:
        anns[0]["keypoints"] = draw(st.sampled_from([[1, 2], "1 2 2", [1, "2", 2]]))
    return flaw


@st.composite
def coco_instance_json(draw):
    num_images = draw(st.integers(1, 3))
    data = {"images": [{"id": i, "file_name": f"{i}.jpg", "height": H, "width": W} for i in range(1, num_images + 1)],
            "annotations": [_coco_annotation(draw, 100 + j, num_images) for j in range(draw(st.integers(0, 4)))],
            "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}, {"id": 5, "name": "c"}]}
    for ann in data["annotations"]:
        if draw(st.integers(0, 4)) == 0:
            ann["keypoints"] = [3, 4, 2, 5, 6, 1]
    draw(st.permutations(data["images"]))  # order in the file is free
    flaw = draw(st.sampled_from([None, None, None]) | st.just("flaw"))
    if flaw:
        flaw = _break(draw, data)
    return data, flaw


@FUZZ
@given(coco_instance_json(), st.booleans())
def test_coco_instance_json_reader_on_fuzzed_json(case, with_name):
    from detectron2.data import MetadataCatalog
    from detectron2.data.datasets import load_coco_json

    from mask2former.data.datasets.coco_instances import load_coco_instance_json

    data, flaw = case
    CASES["COCO instance JSON"] += 1
    json_file = os.path.join(WORK, "instances.json")
    with open(json_file, "w") as f:
        json.dump(data, f)
    name = f"m2f_fuzz_coco_{CASES['COCO instance JSON']}" if with_name else None
    try:
        dicts = load_coco_instance_json(json_file, WORK, name)
    except ValueError as e:
        assert json_file in str(e), str(e)
        assert flaw is not None, f"a well-formed JSON was refused: {e}"
        CASES["COCO instance JSON: named error"] += 1
        return
    assert flaw is None, f"a JSON with a bad {flaw} was accepted"
    # accepted: exactly what detectron2's reader gives (dicts and metadata)
    reference = load_coco_json(json_file, WORK, f"{name}_d2" if with_name else None)
    assert dicts == reference
    if with_name:
        for key in ("thing_classes", "thing_dataset_id_to_contiguous_id"):
            assert MetadataCatalog.get(name).get(key) == MetadataCatalog.get(f"{name}_d2").get(key)


def test_coco_instance_registrations_use_the_checked_reader(tmp_path):
    from detectron2.data import DatasetCatalog, MetadataCatalog

    from mask2former.data.datasets.coco_instances import load_coco_instance_json
    from mask2former.data.datasets.register_folder import register_coco_instance_folder

    for name in ("coco_2017_train", "coco_2017_val", "coco_2017_test", "keypoints_coco_2017_val"):  # detectron2's
        loader, meta = DatasetCatalog[name], MetadataCatalog.get(name)
        assert loader.func is load_coco_instance_json and loader.args == (meta.json_file, meta.image_root, name)
    data = {"images": [{"id": 1, "file_name": "a.jpg", "height": H, "width": W}],
            "annotations": [{"id": 7, "image_id": 2, "category_id": 1, "segmentation": [], "bbox": [0, 0, 1, 1]}],
            "categories": [{"id": 1, "name": "a"}]}
    (tmp_path / "instances.json").write_text(json.dumps(data))
    register_coco_instance_folder("m2f_fuzz_coco_folder", str(tmp_path), str(tmp_path / "instances.json"))
    with pytest.raises(ValueError, match=r"instances.json': annotations\[0\] \(id 7\) image_id 2 is not in 'images'"):
        DatasetCatalog.get("m2f_fuzz_coco_folder")  # detectron2's reader drops such annotations with a warning
