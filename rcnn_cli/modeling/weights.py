"""Whole-detector weights (``model.weights``): read a source, classify every tensor, map classes.

Every tensor of the source is *loaded* (same name and shape), *class-dependent* (the class axis
of the box/mask predictors, cascade stage predictors, R-CNN/SPPNet class heads), an
*architecture mismatch* (any other shape difference) or *missing / unexpected*. Mismatches and
missing/unexpected keys stop the run with the config key to change, unless they lie under a
prefix of ``model.weights_partial``. Class-dependent tensors keep, for each of the user's
classes matched in the source (by name, synonym, ``model.class_map``, or by COCO category id on
``dataset=coco``), that class's rows; the other classes keep the fresh head's initialisation
(the recipe of torchvision's fine-tuning tutorial: a new predictor for your classes).
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path

from torch import Tensor, nn
from torchvision.models import get_weight
from torchvision.models._meta import _COCO_CATEGORIES

from rcnn_cli.data.voc import VOC_CLASSES
from rcnn_cli.errors import ConfigError
from rcnn_cli.io import FORMAT, is_export, load_export, load_file, sha256
from rcnn_cli.modeling.download import fetch_weights
from rcnn_cli.modeling.load_report import LoadReport

log = logging.getLogger("rcnn_cli")

BACKGROUND = "__background__"
# VOC's names for COCO's classes (matching is case-insensitive)
SYNONYMS = {"aeroplane": "airplane", "motorbike": "motorcycle", "sofa": "couch",
            "tvmonitor": "tv", "diningtable": "dining table", "pottedplant": "potted plant"}
# model.weights=DEFAULT: torchvision's builder default for (model, backbone)
DEFAULTS = {("faster", "r50_fpn"): "FasterRCNN_ResNet50_FPN_Weights.DEFAULT",
            ("mask", "r50_fpn"): "MaskRCNN_ResNet50_FPN_Weights.DEFAULT",
            ("faster", "mobilenet_v3_fpn"): "FasterRCNN_MobileNet_V3_Large_FPN_Weights.DEFAULT"}
# torchvision weights whose builder sets BatchNorm eps to 0.0 (``overwrite_eps``)
EPS_ZERO = ("FasterRCNN_ResNet50_FPN_Weights.COCO_V1", "MaskRCNN_ResNet50_FPN_Weights.COCO_V1")
# (key pattern, rows per class, whether row 0 is background); bbox_pred with 4 rows is
# class-agnostic (cascade stages) and so not class-dependent
CLASS_TENSORS = [(re.compile(r"^roi_heads\.(.+\.)?cls_score\.(weight|bias)$"), 1, True),
                 (re.compile(r"^roi_heads\.(.+\.)?bbox_pred\.(weight|bias)$"), 4, True),
                 (re.compile(r"^roi_heads\.(.+\.)?mask_fcn_logits\.(weight|bias)$"), 1, True),
                 (re.compile(r"^roi_heads\.(svm_weight|svm_bias|ridge_weight)$"), 1, False)]


@dataclass
class Source:
    """A read source: its state dict, and per class row (row 0 = background) name and id."""

    spec: str
    kind: str
    state: dict[str, Tensor]
    names: list[str] | None = None
    ids: list[int | None] | None = None
    path: Path | None = None


def class_rule(key: str, own: Tensor) -> tuple[int, bool] | None:
    """(rows per class, has background) when ``key`` is a class-dependent tensor."""
    for pattern, rows, background in CLASS_TENSORS:
        if pattern.search(key) and not (rows == 4 and own.shape[0] == 4):
            return rows, background
    return None


def read_source(spec: str, model_name: str, backbone_name: str, class_names=None,
                trust: bool = False) -> Source:
    """``model.weights``: DEFAULT, a torchvision weights name, a state-dict file, an rcnn-cli
    checkpoint / run directory / export. Every read is ``weights_only`` (``rcnn_cli.io``)."""
    if spec == "DEFAULT":
        if (model_name, backbone_name) not in DEFAULTS:
            have = ", ".join(f"model={m} backbone={b}" for m, b in DEFAULTS)
            raise ConfigError(f"model.weights=DEFAULT: torchvision has no COCO weights for "
                              f"model={model_name} backbone={backbone_name} (it has: {have})")
        spec = DEFAULTS[(model_name, backbone_name)]
    path = Path(spec).expanduser()
    if path.is_dir() and (path / "checkpoints" / "last.pt").is_file():
        path = path / "checkpoints" / "last.pt"  # a run directory
    if is_export(path):
        ckpt = load_export(path)
        return rcnn_cli_source(spec, "rcnn-cli export", ckpt,
                               path / "model.safetensors" if path.is_dir() else path)
    if path.is_file():
        obj = load_file(path, trust)
        if obj.get("format") == FORMAT:
            return rcnn_cli_source(spec, "rcnn-cli checkpoint", obj, path)
        names, ids = named_classes(class_names)
        return Source(spec, "state dict", tensors(obj, path), names, ids, path)
    if path.exists() or spec.endswith((".pt", ".pth")) or "/" in spec:
        raise ConfigError(f"model.weights={spec}: no checkpoint, export or state-dict file there")
    try:
        enum = get_weight(spec)
    except (ValueError, KeyError, AttributeError) as e:
        raise ConfigError(f"model.weights={spec!r} is neither a file, a run directory nor a "
                          "torchvision weights name (e.g. FasterRCNN_ResNet50_FPN_Weights."
                          "COCO_V1, or DEFAULT)") from e
    file = fetch_weights(enum, "model.weights")
    names = list(enum.meta.get("categories") or [])
    ids = list(range(len(names))) if names == list(_COCO_CATEGORIES) else None
    return Source(str(enum), "torchvision weights", tensors(load_file(file, trust), file),
                  names or None, ids, file)


def rcnn_cli_source(spec: str, kind: str, ckpt: dict, path: Path) -> Source:
    classes = [BACKGROUND, *ckpt["classes"]]
    ids = [None, *[int(c) for c in ckpt.get("category_ids") or []]]
    return Source(spec, kind, ckpt["model"], classes, ids if len(ids) == len(classes) else None,
                  path)


def tensors(obj: dict, path: Path) -> dict[str, Tensor]:
    if not obj or not all(isinstance(v, Tensor) for v in obj.values()):
        raise ConfigError(f"model.weights={path}: not a state dict of tensors")
    return obj


def named_classes(class_names) -> tuple[list[str] | None, list[int | None] | None]:
    """``model.weights_class_names``: coco (torchvision's 91 rows, indexed by category id),
    voc (20 classes + background), a list of names (without background), or null."""
    if class_names is None:
        return None, None
    if class_names == "coco":
        return list(_COCO_CATEGORIES), list(range(len(_COCO_CATEGORIES)))
    if class_names == "voc":
        return [BACKGROUND, *VOC_CLASSES], None
    if isinstance(class_names, str) or not all(isinstance(n, str) for n in class_names):
        raise ConfigError(f"model.weights_class_names={class_names}: use coco, voc or a list "
                          "of class names (without background)")
    return [BACKGROUND, *class_names], None


def canonical(name: str) -> str:
    name = name.strip().lower()
    return SYNONYMS.get(name, name)


def match_classes(classes: list[str], category_ids: list[int] | None, source: Source,
                  class_map: dict, by_id: bool) -> list[int | None]:
    """Source row for each of our rows (row 0 = background -> 0), None where unmatched."""
    if source.names is None:
        raise ConfigError(f"model.weights={source.spec}: the file does not name its classes; "
                          "set model.weights_class_names=coco|voc|[...] or "
                          "model.weights_classes=reinit")
    unknown = sorted(set(class_map) - set(classes))
    if unknown:
        raise ConfigError(f"model.class_map names {unknown}, which are not classes of the "
                          f"dataset {classes}")
    rows_by_name: dict[str, int] = {}
    for row, name in enumerate(source.names):
        rows_by_name.setdefault(canonical(name), row)
    rows: list[int | None] = [0]
    for i, cls in enumerate(classes):
        if cls in class_map:
            theirs = canonical(str(class_map[cls]))
            if theirs not in rows_by_name:
                raise ConfigError(f"model.class_map: {cls}: {class_map[cls]} is not a class of "
                                  f"{source.spec} ({', '.join(source.names[1:11])}, ...)")
            rows.append(rows_by_name[theirs])
        elif by_id:
            rows.append(source.ids.index(category_ids[i])
                        if category_ids[i] in source.ids else None)
        else:
            rows.append(rows_by_name.get(canonical(cls)))
    return rows


def same_id_space(classes, category_ids, source: Source) -> bool:
    """Whether the dataset's category ids are the source's (COCO itself, or a dataset from
    the same files): every id the source knows names the same class there. A COCO-format
    dataset of other classes (ids 1, 2, ... of its own) is matched by name instead."""
    if source.ids is None or category_ids is None:
        return False
    known = [(c, i) for c, i in zip(classes, category_ids) if i in source.ids]
    return bool(known) and all(canonical(source.names[source.ids.index(i)]) == canonical(c)
                               for c, i in known)


def map_rows(own: Tensor, src: Tensor, rows: list[int | None], per_class: int,
             background: bool) -> Tensor:
    """``own`` with the rows of matched classes copied from ``src``."""
    out = own.clone()
    targets = rows if background else rows[1:]
    for t, s in enumerate(targets):
        if s is None:
            continue
        s = s if background else s - 1
        out[t * per_class:(t + 1) * per_class] = src[s * per_class:(s + 1) * per_class]
    return out


def under(key: str, prefixes) -> bool:
    return any(key == p or key.startswith(p.rstrip(".") + ".") for p in prefixes)


def classify(own: dict[str, Tensor], state: dict[str, Tensor], partial) -> dict[str, list]:
    """Keys by category: loaded, class, mismatch, missing, unexpected, skipped (allowed)."""
    out: dict[str, list] = {k: [] for k in ("loaded", "class", "mismatch", "missing",
                                             "unexpected", "skipped", "fresh")}
    for k, v in state.items():
        if k.endswith("num_batches_tracked"):
            continue
        if k not in own:
            out["skipped" if under(k, partial) else "unexpected"].append(k)
        elif class_rule(k, own[k]) is not None:
            out["class"].append(k)
        elif own[k].shape == v.shape:
            out["loaded"].append(k)
        else:
            out["skipped" if under(k, partial) else "mismatch"].append(k)
    for k in own:
        if k not in state and not k.endswith("num_batches_tracked"):
            out["fresh" if under(k, partial) else "missing"].append(k)
    out["fresh"] += [k for k in out["skipped"] if k in own]
    return out


def check_architecture(model: nn.Module, source: Source, cfg) -> dict[str, list]:
    """Classify ``source`` against ``model``; an architecture difference is a ConfigError."""
    own = model.state_dict()
    found = classify(own, source.state, list(cfg.model.weights_partial))
    if found["mismatch"] or found["missing"] or found["unexpected"]:
        raise ConfigError(f"model.weights={source.spec}: "
                          f"{explain(own, source.state, found, cfg)}")
    return found


def load_pretrained(model: nn.Module, cfg, classes: list[str] | None = None,
                    category_ids: list[int] | None = None) -> LoadReport:
    """Load ``cfg.model.weights`` into ``model`` (built for ``classes``); returns the report."""
    source = read_cached(cfg)
    found = check_architecture(model, source, cfg)
    own = model.state_dict()
    new = {k: source.state[k] for k in found["loaded"]}
    report = LoadReport(source.spec, source.kind, str(source.path) if source.path else None,
                        sha256(source.path) if source.path else None,
                        loaded=found["loaded"], skipped=found["skipped"])
    report.reinitialised += found["fresh"]
    if found["class"]:
        rows = class_rows(model, source, found["class"], cfg, classes, category_ids)
        if rows is not None and classes is not None:
            report.class_map = [{"class": c, "source_row": r,
                                 "source_class": None if r is None else source.names[r]}
                                for c, r in zip(["__background__", *classes], rows)]
        for k in found["class"]:
            per_class, background = class_rule(k, own[k])
            if rows is None or not any(r is not None for r in (rows if background else rows[1:])):
                report.reinitialised.append(k)
                continue
            new[k] = map_rows(own[k], source.state[k], rows, per_class, background)
            report.mapped.append(k)
    model.load_state_dict({**own, **new}, strict=True)
    report.params = {name: sum(own[k].numel() for k in keys if k in own) for name, keys in
                     (("loaded", report.loaded), ("mapped", report.mapped),
                      ("reinitialised", report.reinitialised))}
    report.params["skipped"] = sum(source.state[k].numel() for k in report.skipped)
    warn_eps(source, cfg)
    return report


def class_rows(model, source: Source, keys: list[str], cfg, classes, category_ids):
    """Our-row -> source-row map for class-dependent tensors, or None for ``reinit``."""
    m = cfg.model
    if getattr(m.weights_classes, "value", m.weights_classes) == "reinit":
        return None
    own = model.state_dict()
    if classes is None:
        if all(own[k].shape == source.state[k].shape for k in keys):  # as they are
            per_class, background = class_rule(keys[0], own[keys[0]])
            return list(range(own[keys[0]].shape[0] // per_class + (0 if background else 1)))
        raise ConfigError(f"model.weights={source.spec}: its classes differ from the model's; "
                          "class mapping needs the dataset's classes (the joint trainer), or "
                          "use model.weights_classes=reinit")
    by_id = cfg.dataset.name == "coco" and same_id_space(classes, category_ids, source)
    rows = match_classes(list(classes), category_ids, source, dict(m.class_map), by_id)
    k = keys[0]
    per_class, background = class_rule(k, own[k])
    width = source.state[k].shape[0] // per_class + (0 if background else 1)
    if width != len(source.names):
        raise ConfigError(f"model.weights={source.spec}: {k} has {width} class rows, the "
                          f"source names {len(source.names)} classes (with background); "
                          "fix model.weights_class_names")
    return rows


_CACHE: dict[tuple, Source] = {}


def read_cached(cfg) -> Source:
    """``read_source`` for ``cfg``, reusing the last read (the start-up check reads it first)."""
    m = cfg.model
    names = m.weights_class_names
    names = list(names) if names is not None and not isinstance(names, str) else names
    key = (m.weights, m.name, cfg.backbone.name, str(names), bool(cfg.get("ckpt_trust", False)))
    path = Path(str(m.weights)).expanduser()
    key += (path.stat().st_mtime_ns if path.is_file() else None,)
    if key not in _CACHE:
        _CACHE.clear()
        _CACHE[key] = read_source(m.weights, m.name, cfg.backbone.name, names, key[4])
    return _CACHE[key]


def trunk_of(state: dict) -> str | None:
    """The ``backbone=`` option that builds the trunk of a state dict, when recognisable."""
    keys = set(state)
    if any(k.startswith("backbone.body.features.") for k in keys):
        return "mobilenet_v3_fpn"
    blocks = {k.split(".")[3] for k in keys if k.startswith("backbone.body.layer3.")}
    if not blocks:
        return None
    bottleneck = "backbone.body.layer1.0.conv3.weight" in keys
    depth = {(True, 6): "r50", (True, 23): "r101", (False, 2): "r18"}.get(
        (bottleneck, len(blocks)))
    if depth is None:
        return None
    return f"{depth}_fpn" if any(k.startswith("backbone.fpn.") for k in keys) else f"{depth}_c4"


TRUNKS = {"r18": "ResNet-18 basic blocks", "r50": "ResNet-50 bottlenecks",
          "r101": "ResNet-101 bottlenecks", "mobilenet": "MobileNetV3-Large blocks"}


def explain(own: dict, state: dict, found: dict, cfg) -> str:
    """One line: the first difference and the config key that changes it."""
    theirs, mine = trunk_of(state), cfg.backbone.name
    if theirs is not None and theirs != mine and trunk_of(own) != theirs:
        return (f"the weights hold {TRUNKS[theirs.split('_')[0]]} ({theirs}); backbone={mine} "
                f"builds {TRUNKS.get(mine.split('_')[0], 'another trunk')}: use "
                f"backbone={theirs}")
    hints = []
    for k in found["mismatch"]:
        a, b = tuple(own[k].shape), tuple(state[k].shape)
        if k.startswith("backbone.fpn."):
            hints.append(f"backbone.fpn_channels is {a[0]}, the weights have {b[0]}")
        elif re.search(r"box_head\.fc[67]\.weight$", k) and a[0] != b[0]:
            hints.append(f"model.box_head.representation_size is {a[0]}, the weights have "
                         f"{b[0]}")
        elif k.endswith("box_head.fc6.weight"):
            hints.append(f"{k} takes {a[1]} inputs, the weights {b[1]}: check pooler."
                         "output_size and backbone.fpn_channels")
        elif k.startswith("rpn.head.cls_logits"):
            hints.append(f"anchors={cfg.anchors.name} gives {a[0]} anchors per location, the "
                         f"weights have {b[0]}: set anchors.sizes / anchors.aspect_ratios")
        elif "mask_head" in k:
            hints.append(f"{k} is {a}, the weights have {b}: check model.mask_head.layers")
    missing, unexpected = found["missing"], found["unexpected"]
    if any(k.startswith("roi_heads.mask_") for k in missing):
        hints.append("the weights have no mask branch: use a model without masks, or keep a "
                     "fresh mask head with model.weights_partial=[roi_heads.mask_head,"
                     "roi_heads.mask_predictor]")
    if any(k.startswith("roi_heads.mask_") for k in unexpected):
        hints.append("the weights hold a mask branch: use model=mask, or leave it out with "
                     "model.weights_partial=[roi_heads.mask_head,roi_heads.mask_predictor]")
    if any(k.startswith("roi_heads.stages.") for k in missing):
        hints.append("the weights have no cascade stages: load their backbone and RPN with "
                     "model.weights_partial=[roi_heads]")
    if not hints:
        first = (found["mismatch"] or missing or unexpected)[0]
        detail = (f"{tuple(own[first].shape)} in the model, {tuple(state[first].shape)} in the "
                  "weights" if first in found["mismatch"] else
                  "missing from the weights" if first in missing else "not in the model")
        hints.append(f"{first} is {detail}: change the config that builds it, or allow the "
                     "difference with model.weights_partial=[<key prefix>]")
    n = len(found["mismatch"]) + len(missing) + len(unexpected)
    return f"{hints[0]} ({n} tensor(s) differ: {', '.join((found['mismatch'] + missing + unexpected)[:3])}, ...)"


def warn_eps(source: Source, cfg) -> None:
    if source.spec in EPS_ZERO and cfg.backbone.norm_eps != 0.0:
        log.warning("model.weights=%s was trained with BatchNorm eps 0.0 (torchvision sets it "
                    "so); backbone.norm_eps=%g changes its outputs: set backbone.norm_eps=0.0",
                    source.spec, cfg.backbone.norm_eps)


def without_pretrained(cfg, trunk: bool = True):
    """A copy of ``cfg`` that builds the same architecture without ``model.weights`` and, with
    ``trunk``, without ``backbone.weights`` and fc layers from the classifier either."""
    from omegaconf import OmegaConf, open_dict

    cfg = cfg.copy() if OmegaConf.is_config(cfg) else cfg
    with open_dict(cfg):
        cfg.model.weights = None
        if trunk:
            cfg.backbone.weights = None
            if "fast_rcnn" in cfg.model:
                cfg.model.fast_rcnn.fc_init = "random"
    return cfg
