"""Config keys of Mask2Former, with the official names and defaults.

``add_maskformer2_config`` adds everything the official model-zoo YAML files use on top of detectron2's
defaults (including the few DeepLab keys the official configs rely on), so official config files load
unchanged. ``add_maskformer2_video_config`` adds the video keys.
"""
from detectron2.config import CfgNode as CN


def _add_deeplab_keys(cfg):
    """The keys of detectron2's DeepLab project that the official configs use.

    Added here rather than through ``detectron2.projects.deeplab`` so that any detectron2 >= 0.6 works,
    whether or not it ships the projects package.
    """
    if "SINGLE_CATEGORY_MAX_AREA" not in cfg.INPUT.CROP:
        cfg.INPUT.CROP.SINGLE_CATEGORY_MAX_AREA = 1.0
    if "POLY_LR_POWER" not in cfg.SOLVER:
        cfg.SOLVER.POLY_LR_POWER = 0.9
        cfg.SOLVER.POLY_LR_CONSTANT_ENDING = 0.0
    if "STEM_TYPE" not in cfg.MODEL.RESNETS:
        cfg.MODEL.RESNETS.RES4_DILATION = 1
        cfg.MODEL.RESNETS.RES5_MULTI_GRID = [1, 2, 4]
        cfg.MODEL.RESNETS.STEM_TYPE = "deeplab"
    head = cfg.MODEL.SEM_SEG_HEAD
    if "ASPP_CHANNELS" not in head:
        head.ASPP_CHANNELS = 256
        head.ASPP_DILATIONS = [6, 12, 18]
        head.ASPP_DROPOUT = 0.1
        head.LOSS_TYPE = "hard_pixel_mining"
        head.PROJECT_CHANNELS = [48]
        head.PROJECT_FEATURES = ["res2"]
        head.USE_DEPTHWISE_SEPARABLE_CONV = False


def add_maskformer2_config(cfg):
    """Add the Mask2Former keys (official names and defaults) to a detectron2 config, in place."""
    _add_deeplab_keys(cfg)

    # data
    cfg.INPUT.DATASET_MAPPER_NAME = "mask_former_semantic"
    cfg.INPUT.COLOR_AUG_SSD = False
    cfg.INPUT.SIZE_DIVISIBILITY = -1
    # large-scale jitter (LSJ) mappers
    cfg.INPUT.IMAGE_SIZE = 1024
    cfg.INPUT.MIN_SCALE = 0.1
    cfg.INPUT.MAX_SCALE = 2.0
    # Ours: skip dataset items that cannot be read (missing/corrupt image, invalid polygon or RLE, unknown
    # category id, size mismatch) with a counted warning instead of stopping training.
    cfg.DATALOADER.SKIP_BAD_ITEMS = False
    # Ours: a training batch that takes longer than this many seconds to load stops the run with an error
    # naming the rank and iteration and the stacks of all threads (mask2former/engine/watchdog.py; an integer,
    # 0 = off).
    cfg.DATALOADER.TIMEOUT = 0
    # Ours: datasets in a standard format to register before the datasets are used, as strings
    # "KIND NAME key=value ..." (KIND: coco_panoptic, coco_instance, sem_seg); see
    # mask2former/data/datasets/register_folder.py and docs/CUSTOM_DATA.md.
    cfg.DATASETS.REGISTER = []

    # solver
    cfg.SOLVER.WEIGHT_DECAY_EMBED = 0.0
    cfg.SOLVER.OPTIMIZER = "ADAMW"
    cfg.SOLVER.BACKBONE_MULTIPLIER = 0.1
    # Ours: SOLVER.AMP.ENABLED on the CPU means bfloat16 autocast. "auto": only on CPUs with bfloat16
    # instructions (AVX512-BF16 or AMX); elsewhere PyTorch's bfloat16 kernels are about 10x slower than float32
    # (docs/PERFORMANCE.md, "bfloat16 on CPUs without bfloat16 instructions"), so training runs in float32.
    # "always": bfloat16 autocast on any CPU.
    cfg.SOLVER.AMP.CPU_BFLOAT16 = "auto"

    # model
    cfg.MODEL.MASK_FORMER = CN()
    mf = cfg.MODEL.MASK_FORMER
    mf.DEEP_SUPERVISION = True
    mf.NO_OBJECT_WEIGHT = 0.1
    mf.CLASS_WEIGHT = 1.0
    mf.DICE_WEIGHT = 1.0
    mf.MASK_WEIGHT = 20.0
    # Ours (not in the official code): weight of an auxiliary per-pixel cross-entropy over the K classes, from a
    # 1x1 convolution on the mask features, used only in training (0 = off: no extra parameters, as official).
    mf.AUX_SEM_SEG_WEIGHT = 0.0
    # Ours: training switches for a faster start from scratch (docs/RESULTS.md, "Fast-start training switches"),
    # all off (as official). They change training only; inference uses the NUM_OBJECT_QUERIES matching queries.
    # - query selection (two-stage, as in Mask DINO): the initial queries are the top-scoring memory tokens of
    #   the pixel decoder, their predicted masks the first attention masks (needs DEEP_SUPERVISION);
    mf.QUERY_SELECTION = False
    # - denoising queries (DN-DETR, Mask DINO): NUM_GROUPS copies of the ground truth with labels replaced at
    #   rate LABEL_NOISE and masks moved / rescaled by up to MASK_NOISE of their box, each trained to
    #   reconstruct its own target (0 groups = off);
    mf.DN = CN()
    mf.DN.NUM_GROUPS = 0
    mf.DN.LABEL_NOISE = 0.2
    mf.DN.MASK_NOISE = 0.4
    # - one-to-many matching (H-DETR): NUM_QUERIES extra queries matched to the ground truth repeated K times,
    #   their losses weighted by WEIGHT (0 queries = off).
    mf.ONE_TO_MANY = CN()
    mf.ONE_TO_MANY.NUM_QUERIES = 0
    mf.ONE_TO_MANY.K = 6
    mf.ONE_TO_MANY.WEIGHT = 1.0
    # Ours: a small CNN classifying square image crops around each mask's box into the thing classes, trained
    # on the ground-truth boxes with loss weight WEIGHT (0 = off: no extra parameters, as official); at inference
    # it refines each query's distribution over the thing classes (mask2former/modeling/heads/crop_classifier.py,
    # docs/RESULTS.md, "Classes from box crops"). Crops of SIZE pixels, the box's longer side grown by CONTEXT,
    # at most MAX_CROPS per training batch; WIDTHS are the channels of its three stages.
    mf.CROP_CLASSIFIER = CN()
    mf.CROP_CLASSIFIER.WEIGHT = 0.0
    mf.CROP_CLASSIFIER.SIZE = 32
    mf.CROP_CLASSIFIER.WIDTHS = [32, 64, 128]
    mf.CROP_CLASSIFIER.CONTEXT = 0.15
    mf.CROP_CLASSIFIER.MAX_CROPS = 64
    mf.NHEADS = 8
    mf.DROPOUT = 0.1
    mf.DIM_FEEDFORWARD = 2048
    mf.ENC_LAYERS = 0
    mf.DEC_LAYERS = 6
    mf.PRE_NORM = False
    mf.HIDDEN_DIM = 256
    mf.NUM_OBJECT_QUERIES = 100
    mf.TRANSFORMER_IN_FEATURE = "res5"
    mf.ENFORCE_INPUT_PROJ = False
    mf.SIZE_DIVISIBILITY = 32
    mf.TRANSFORMER_DECODER_NAME = "MultiScaleMaskedTransformerDecoder"
    mf.TRAIN_NUM_POINTS = 112 * 112
    mf.OVERSAMPLE_RATIO = 3.0
    mf.IMPORTANCE_SAMPLE_RATIO = 0.75

    mf.TEST = CN()
    mf.TEST.SEMANTIC_ON = True
    mf.TEST.INSTANCE_ON = False
    mf.TEST.PANOPTIC_ON = False
    mf.TEST.OBJECT_MASK_THRESHOLD = 0.0
    mf.TEST.OVERLAP_THRESHOLD = 0.0
    mf.TEST.SEM_SEG_POSTPROCESSING_BEFORE_INFERENCE = False
    # Ours (not in the official code): instance inference keeps the top TEST.DETECTIONS_PER_IMAGE
    # predictions and, in addition, drops those scoring below this threshold (0 keeps all).
    mf.TEST.INSTANCE_SCORE_THRESH = 0.0
    # Ours: per-class mask non-maximum suppression of the instance predictions: a detection is dropped if its
    # mask IoU with a higher-scoring one of the same class exceeds this (1.0 = no suppression, as official).
    mf.TEST.INSTANCE_NMS_THRESH = 1.0
    # Ours: test-time augmentation also predicts instances: the queries of all augmented inputs are grouped
    # into objects, at most one per augmented input, whose binary masks overlap by more than this IoU, and
    # averaged (mask2former/engine/tta.py, fuse_query_predictions).
    cfg.TEST.AUG.INSTANCE_GROUP_IOU = 0.5

    head = cfg.MODEL.SEM_SEG_HEAD
    head.MASK_DIM = 256
    head.TRANSFORMER_ENC_LAYERS = 0
    head.PIXEL_DECODER_NAME = "BasePixelDecoder"
    head.DEFORMABLE_TRANSFORMER_ENCODER_IN_FEATURES = ["res3", "res4", "res5"]
    head.DEFORMABLE_TRANSFORMER_ENCODER_N_POINTS = 4
    head.DEFORMABLE_TRANSFORMER_ENCODER_N_HEADS = 8
    # Ours: the deformable-attention implementation (mask2former/ops/ms_deform_attn.py): "auto" (the C++
    # kernel on the CPU, the Triton kernel on CUDA, the pure-PyTorch op where they cannot run; the
    # environment variable MASK2FORMER_DEFORM_ATTN_IMPL overrides "auto"), "pytorch", "cpp" or "triton".
    head.DEFORM_ATTN_IMPL = "auto"

    # Swin Transformer backbone
    cfg.MODEL.SWIN = CN()
    sw = cfg.MODEL.SWIN
    sw.PRETRAIN_IMG_SIZE = 224
    sw.PATCH_SIZE = 4
    sw.EMBED_DIM = 96
    sw.DEPTHS = [2, 2, 6, 2]
    sw.NUM_HEADS = [3, 6, 12, 24]
    sw.WINDOW_SIZE = 7
    sw.MLP_RATIO = 4.0
    sw.QKV_BIAS = True
    sw.QK_SCALE = None
    sw.DROP_RATE = 0.0
    sw.ATTN_DROP_RATE = 0.0
    sw.DROP_PATH_RATE = 0.3
    sw.APE = False
    sw.PATCH_NORM = True
    sw.OUT_FEATURES = ["res2", "res3", "res4", "res5"]
    sw.USE_CHECKPOINT = False

    # DAT backbone (Vision Transformer with Deformable Attention, v1): the official constructor's arguments,
    # defaults of the official DAT-T (configs/dat_tiny.yaml of the DAT repository).
    cfg.MODEL.DAT = CN()
    dat = cfg.MODEL.DAT
    dat.PRETRAIN_IMG_SIZE = 224  # sets the rpe_table / attn_mask sizes of the pre-trained checkpoint
    dat.PATCH_SIZE = 4
    dat.EXPANSION = 4
    dat.DIM_STEM = 96
    dat.DIMS = [96, 192, 384, 768]
    dat.DEPTHS = [2, 2, 6, 2]
    dat.HEADS = [3, 6, 12, 24]
    dat.WINDOW_SIZES = [7, 7, 7, 7]
    dat.STAGE_SPEC = [["L", "S"], ["L", "S"], ["L", "D", "L", "D", "L", "D"], ["L", "D"]]
    dat.GROUPS = [-1, -1, 3, 6]
    dat.USE_PES = [False, False, True, True]
    dat.DWC_PES = [False, False, False, False]
    dat.FIXED_PES = [False, False, False, False]
    dat.NO_OFFS = [False, False, False, False]
    dat.STRIDES = [-1, -1, 1, 1]
    dat.SR_RATIOS = [-1, -1, -1, -1]
    dat.OFFSET_RANGE_FACTOR = [-1, -1, 2, 2]
    dat.NS_PER_PTS = [4, 4, 4, 4]
    dat.USE_DWC_MLPS = [False, False, False, False]
    dat.USE_CONV_PATCHES = False
    dat.DROP_RATE = 0.0
    dat.ATTN_DROP_RATE = 0.0
    dat.DROP_PATH_RATE = 0.2
    dat.OUT_FEATURES = ["res2", "res3", "res4", "res5"]
    dat.USE_CHECKPOINT = False

    _add_mask_classifier_config(cfg)


def _add_mask_classifier_config(cfg):
    """Ours: the MaskClassifier meta-architecture (classes for given class-agnostic masks, e.g. SAM's) and
    its training mapper "mask_classifier" (docs/MASK_CLASSIFIER.md)."""
    cfg.MODEL.MASK_CLASSIFIER = CN()
    mc = cfg.MODEL.MASK_CLASSIFIER
    # False: only the class branch (decoder norm + class head) and the query initialisation train, on top of a
    # trained MaskFormer checkpoint; True: every parameter trains.
    mc.TRAIN_ALL = False
    # Weight of the "no object" class in the cross-entropy over the prompts (the others weigh 1).
    mc.NO_OBJECT_WEIGHT = 1.0
    # Cross-entropy on every decoder layer's class logits, not only the last.
    mc.DEEP_SUPERVISION = True
    # Also return the decoder's mask prediction for every given mask ("refined_masks").
    mc.REFINE_MASKS = False

    cfg.INPUT.MASK_PROMPTS = CN()
    mp = cfg.INPUT.MASK_PROMPTS
    # The mapper that reads the dataset's ground truth (any instance or panoptic mapper).
    mp.SOURCE_MAPPER_NAME = "mask_former_panoptic"
    # Probability that a ground-truth mask is given unchanged; otherwise one perturbation is drawn from
    # PERTURBATIONS (dilate, erode, noisy_boundary, partial, part, merge).
    mp.CLEAN_PROB = 0.3
    mp.PERTURBATIONS = ["dilate", "erode", "noisy_boundary", "partial", "part", "merge"]
    # Negative prompts per image: background fragments and random blobs.
    mp.NUM_NEGATIVES = 4
    # At most this many prompts per training image (ground-truth ones first, chosen at random).
    mp.MAX_PROMPTS = 48
    # A prompt takes the class of the segment covering the largest part of it if that segment covers at
    # least MIN_PURITY of the prompt and, for a thing, the prompt covers at least MIN_COVERAGE of the thing;
    # otherwise it is "no object".
    mp.MIN_PURITY = 0.5
    mp.MIN_COVERAGE = 0.3


def add_maskformer2_video_config(cfg):
    """Add the video keys (official names and defaults). Call after ``add_maskformer2_config``."""
    cfg.INPUT.SAMPLING_FRAME_NUM = 2
    cfg.INPUT.SAMPLING_FRAME_RANGE = 20
    cfg.INPUT.SAMPLING_FRAME_SHUFFLE = False
    cfg.INPUT.AUGMENTATIONS = []  # "brightness", "contrast", "saturation", "rotation"

    # Ours (not in the official code):
    # - instances kept per video (the official code hard-codes 10);
    cfg.MODEL.MASK_FORMER.TEST.DETECTIONS_PER_VIDEO = 10
    # - videos longer than CLIP_LENGTH frames are segmented in clips of CLIP_LENGTH frames overlapping by
    #   CLIP_OVERLAP frames, whose instances are associated by mask IoU on the shared frames, so that memory
    #   is bounded by the clip length (0: the whole video in one pass, as the official code does).
    cfg.MODEL.MASK_FORMER.TEST.CLIP_LENGTH = 0
    cfg.MODEL.MASK_FORMER.TEST.CLIP_OVERLAP = 2
