"""Reading official checkpoint files safely: detectron2 model-zoo ``.pkl`` and ``torch.save`` ``.pth``.

Both formats are pickles, and unpickling runs code. ``.pth`` files are read with
``torch.load(weights_only=True)``; ``.pkl`` files go through ``RestrictedUnpickler``, which builds only
numpy arrays, numpy dtypes and scalars, and plain containers: a pickle that asks for anything else
(``os.system``, ``builtins.eval``, any class) is refused before it runs.

Formats (as detectron2's ``DetectionCheckpointer`` reads them):
- model-zoo ``.pkl``: ``{"model": {name: ndarray}, "__author__": ...}``;
- ImageNet backbone ``.pkl`` (``"blobs"`` or ``"matching_heuristics"``, e.g. ``R-50.pkl``): not a whole
  model, refused;
- ``.pth``: a dict with or without ``"model"``, names with or without a ``module.`` prefix;
- transformers' ``Mask2FormerForUniversalSegmentation`` state dict (``.pth``/``.bin`` from
  ``torch.save(model.state_dict())``, or ``model.safetensors`` from ``save_pretrained``): its names are
  first turned into detectron2's (``models.hf_names``), so that the same inference and strict
  accounting apply.
"""

from __future__ import annotations

import hashlib
import pickle
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch


class CheckpointError(ValueError):
    """A checkpoint that cannot or must not be loaded; the message says why and what to do."""


# (module, name) pairs a model-zoo pickle may reconstruct: numpy arrays, dtypes and scalars, OrderedDict
ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    ("numpy", "ndarray"), ("numpy", "dtype"), ("collections", "OrderedDict"),
}


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that reconstructs only the globals in ``ALLOWED``."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in ALLOWED:
            return super().find_class(module, name)
        raise CheckpointError(f"refused to unpickle {module}.{name}: a model-zoo checkpoint holds only numpy arrays "
                              "and plain containers (this file may run code; load only files you trust)")


@dataclass
class Checkpoint:
    """Named tensors from a checkpoint file, with where they came from."""

    tensors: dict[str, torch.Tensor]
    path: str
    format: str
    sha256: str
    extra: dict[str, Any] = field(default_factory=dict)  # the file's other top-level keys (not tensors)


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def read_checkpoint(path: Path | str) -> Checkpoint:
    """The named tensors of a ``.pkl`` or ``.pth`` checkpoint (``CheckpointError`` for anything else)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    if path.suffix == ".pkl":
        raw, fmt = _read_pkl(path), "detectron2 model zoo (.pkl)"
    elif path.suffix in (".pth", ".pt", ".bin"):
        raw, fmt = _read_pth(path), "torch.save (.pth)"
    elif path.suffix == ".safetensors":
        raw, fmt = _read_safetensors(path), "safetensors"
    else:
        raise CheckpointError(f"unknown checkpoint format {path.suffix!r} ({path}): expected .pkl (detectron2 model "
                              "zoo), .pth (torch.save) or .safetensors (transformers' save_pretrained)")
    state, extra = _state_dict(raw, path)
    tensors = {}
    for name, value in state.items():
        if isinstance(value, np.ndarray):
            value = torch.from_numpy(np.ascontiguousarray(value))
        if not isinstance(value, torch.Tensor):
            raise CheckpointError(f"{path}: {name!r} is a {type(value).__name__}, not a tensor")
        tensors[name] = value
    if tensors and all(k.startswith("module.") for k in tensors):  # saved from DistributedDataParallel
        tensors = {k[len("module."):]: v for k, v in tensors.items()}
    from models.hf_names import HF_BACKBONE, transformers_to_d2

    if any(k.startswith(HF_BACKBONE) for k in tensors):
        tensors, fmt = transformers_to_d2(tensors), f"transformers Mask2FormerForUniversalSegmentation ({fmt})"
    return Checkpoint(tensors, str(path), fmt, sha256(path), extra)


def _read_pkl(path: Path) -> Any:
    with path.open("rb") as f:
        try:
            return RestrictedUnpickler(f, encoding="latin1").load()
        except CheckpointError:
            raise
        except Exception as err:  # noqa: BLE001 - a truncated or foreign file
            raise CheckpointError(f"{path} is not a readable pickle: {type(err).__name__}: {err}") from None


def _read_pth(path: Path) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise CheckpointError(f"refused to load {path} with weights_only=True: {str(err).splitlines()[0]} (a "
                              "checkpoint of weights needs nothing else; load only files you trust)") from None
    except Exception as err:  # noqa: BLE001
        raise CheckpointError(f"{path} is not a readable torch.save file: {type(err).__name__}: {err}") from None


def _read_safetensors(path: Path) -> Any:
    from safetensors.torch import load_file

    try:
        return load_file(path)
    except Exception as err:  # noqa: BLE001
        raise CheckpointError(f"{path} is not a readable safetensors file: {type(err).__name__}: {err}") from None


def _state_dict(raw: Any, path: Path) -> tuple[Mapping[str, Any], dict[str, Any]]:
    """The name -> tensor mapping inside a loaded file, and its other top-level entries."""
    if not isinstance(raw, Mapping):
        raise CheckpointError(f"{path} holds a {type(raw).__name__}, not a dict of weights")
    if "blobs" in raw or raw.get("matching_heuristics"):
        raise CheckpointError(f"{path} is an ImageNet backbone file (as used to initialise training), not a "
                              "whole segmentation model: load a model-zoo checkpoint (e.g. model_final_*.pkl)")
    if "model" in raw and isinstance(raw["model"], Mapping):
        return raw["model"], {k: v for k, v in raw.items() if k != "model" and isinstance(v, str | int | float)}
    return raw, {}


# ------------------------------------------------------------------ detectron2 names -> encbench names
DROPPED = (r"^criterion\.", r"\.relative_position_index$", r"^pixel_(mean|std)$")
ALLOWED_MISSING = (r"^backbone\.model\.swin\.layernorm\.", r"\.num_batches_tracked$")
SWIN_BLOCK = "backbone.model.swin.encoder.layers.{l}.blocks.{b}."
RULES: tuple[tuple[str, str], ...] = (
    (r"^sem_seg_head\.predictor\.(.*)$", r"transformer_decoder.\1"),
    (r"^backbone\.patch_embed\.proj\.(.*)$", r"backbone.model.swin.embeddings.patch_embeddings.projection.\1"),
    (r"^backbone\.patch_embed\.norm\.(.*)$", r"backbone.model.swin.embeddings.norm.\1"),
    (r"^backbone\.layers\.(\d+)\.blocks\.(\d+)\.norm1\.(.*)$",
     r"backbone.model.swin.encoder.layers.\1.blocks.\2.layernorm_before.\3"),
    (r"^backbone\.layers\.(\d+)\.blocks\.(\d+)\.norm2\.(.*)$",
     r"backbone.model.swin.encoder.layers.\1.blocks.\2.layernorm_after.\3"),
    (r"^backbone\.layers\.(\d+)\.blocks\.(\d+)\.attn\.proj\.(.*)$",
     r"backbone.model.swin.encoder.layers.\1.blocks.\2.attention.o_proj.\3"),
    (r"^backbone\.layers\.(\d+)\.blocks\.(\d+)\.attn\.relative_position_bias_table$",
     r"backbone.model.swin.encoder.layers.\1.blocks.\2.attention.relative_position_bias.relative_position_bias_table"),
    (r"^backbone\.layers\.(\d+)\.blocks\.(\d+)\.mlp\.fc([12])\.(.*)$",
     r"backbone.model.swin.encoder.layers.\1.blocks.\2.mlp.fc\3.\4"),
    (r"^backbone\.layers\.(\d+)\.downsample\.(.*)$", r"backbone.model.swin.encoder.layers.\1.downsample.\2"),
    (r"^backbone\.stem\.conv1\.weight$", r"backbone.model.embedder.embedder.convolution.weight"),
    (r"^backbone\.stem\.conv1\.norm\.(.*)$", r"backbone.model.embedder.embedder.normalization.\1"),
)
QKV = r"^backbone\.layers\.(\d+)\.blocks\.(\d+)\.attn\.qkv\.(weight|bias)$"  # split into q, k, v (rows q|k|v)
RES = r"^backbone\.res([2-5])\.(\d+)\.(conv([123])|shortcut)\.(weight|norm\.(.*))$"
SWIN_NORM = r"^backbone\.norm([0-3])\.(.*)$"


def d2_names(name: str, value: torch.Tensor) -> list[tuple[str, torch.Tensor]] | None:
    """The encbench name(s) and tensor(s) for one detectron2 tensor; [] for a known-unused one; None
    when no rule applies."""
    if any(re.search(p, name) for p in DROPPED):
        return []
    m = re.match(QKV, name)
    if m:
        prefix = SWIN_BLOCK.format(l=m.group(1), b=m.group(2)) + "attention."
        return [(f"{prefix}{p}_proj.{m.group(3)}", part) for p, part in zip("qkv", value.chunk(3, dim=0), strict=True)]
    m = re.match(RES, name)
    if m:
        stage, block, kind, conv, tail, norm = m.groups()
        base = f"backbone.model.encoder.stages.{int(stage) - 2}.layers.{block}."
        base += f"layer.{int(conv) - 1}." if conv else "shortcut."
        return [(base + ("convolution.weight" if tail == "weight" else f"normalization.{norm}"), value)]
    m = re.match(SWIN_NORM, name)
    if m:
        return [(f"backbone.model.hidden_states_norms.stage{int(m.group(1)) + 1}.{m.group(2)}", value)]
    for pattern, repl in RULES + encoder_rules():
        if re.match(pattern, name):
            return [(re.sub(pattern, repl, name), value)]
    return None


# ------------------------------------------------------------------ what a checkpoint says about its model
SWIN_BY_DIM = {128: "swin_b", 192: "swin_l"}
CLASSES = {133: "coco", 19: "cityscapes", 150: "ade20k"}  # 150: ADE20K semantic or panoptic (same input preset)


def _count(tensors: Mapping[str, torch.Tensor], pattern: str) -> int:
    return len({m.group(1) for k in tensors for m in [re.match(pattern, k)] if m})


def refuse_unsupported(tensors: Mapping[str, torch.Tensor]) -> None:
    """Checkpoints whose model encbench does not build: a clear ``CheckpointError``."""
    if any(k.startswith("backbone.stem.conv2") for k in tensors):
        raise CheckpointError("a DeepLab stem (backbone.stem.conv2..., e.g. R-103) is not supported: encbench's "
                              "ResNets have the standard 7x7 stem")
    trc = tensors.get("sem_seg_head.pixel_decoder.transformer.encoder.token_excite.ops.weight")
    if trc is not None and trc.ndim == 4:
        raise CheckpointError("a convolutional TRC (token_excite.ops is a Conv2d, IS_EXCITE_CONV True) computes a "
                              "different function from the released Linear TRC; it is not supported")
    if not any(k.startswith("sem_seg_head.") for k in tensors):
        raise CheckpointError("no sem_seg_head.* tensors: this is not a Mask2Former / PRO-SCALE model (a backbone "
                              "alone cannot be evaluated)")


def infer_config(tensors: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """Hydra overrides that build the checkpoint's model: backbone, encoder (with the PRO-SCALE schedule,
    LPE and TRC), queries and classes. What weights cannot say (TRC temperature, residual, the dataset's
    thresholds and test size) is left to the configuration's defaults."""
    refuse_unsupported(tensors)
    out: dict[str, Any] = {}
    if "backbone.patch_embed.proj.weight" in tensors:
        dim = tensors["backbone.patch_embed.proj.weight"].shape[0]
        blocks = _count(tensors, r"^backbone\.layers\.2\.blocks\.(\d+)\.")
        out["backbone"] = SWIN_BY_DIM.get(dim) or ("swin_t" if blocks == 6 else "swin_s")
    elif "backbone.stem.conv1.weight" in tensors:
        blocks = _count(tensors, r"^backbone\.res4\.(\d+)\.")
        if blocks not in (6, 23):
            raise CheckpointError(f"a ResNet with {blocks} res4 blocks: encbench builds R50 (6) and R101 (23)")
        out["backbone"] = "r50" if blocks == 6 else "r101"
    else:
        raise CheckpointError("no backbone tensors recognised (backbone.patch_embed.* for Swin, backbone.stem.* for "
                              "ResNet)")
    out.update(_encoder(tensors))
    queries = tensors["sem_seg_head.predictor.query_feat.weight"].shape[0]
    classes = tensors["sem_seg_head.predictor.class_embed.weight"].shape[0] - 1
    out["backbone.decoder_queries"] = int(queries)
    out["input.num_classes"] = int(classes)
    if classes in CLASSES:
        out["input"] = CLASSES[classes]
    out["decoder.dec_layers"] = _count(tensors, r"^sem_seg_head\.predictor\.transformer_ffn_layers\.(\d+)\.")
    return out


def _encoder(tensors: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """encoder=... and its knobs: the first registered pixel decoder that recognises the deformable layers'
    level counts (from their sampling-offset shapes) and the tensor names."""
    from models.encoders import ENCODERS

    prefix = "sem_seg_head.pixel_decoder.transformer.encoder.layers.{}.self_attn.sampling_offsets.weight"
    n = _count(tensors, r"^sem_seg_head\.pixel_decoder\.transformer\.encoder\.layers\.(\d+)\.")
    levels = [tensors[prefix.format(i)].shape[0] // 64 for i in range(n)]  # 8 heads x L levels x 4 points x 2
    for name in ENCODERS.names():
        found = ENCODERS.get(name).from_checkpoint(levels, set(tensors))
        if found is not None:
            return found
    raise CheckpointError(f"deformable layers over {levels} levels: no pixel decoder recognises them (M2F: all 3; "
                          "PRO-SCALE: a schedule over 1, 2, 3)")


def encoder_rules() -> tuple[tuple[str, str], ...]:
    """Every registered pixel decoder's checkpoint name rules (each pixel decoder owns its own)."""
    from models.encoders import ENCODERS

    return tuple(dict.fromkeys(rule for name in ENCODERS.names() for rule in ENCODERS.get(name).checkpoint_rules))


# ------------------------------------------------------------------ strict loading
@dataclass
class LoadReport:
    """What a load did: every checkpoint tensor used or listed as dropped, every model tensor filled or
    listed as allowed to stay at its initial value."""

    path: str
    format: str
    sha256: str
    loaded: int
    dropped: list[str]
    missing: list[str]

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def map_checkpoint(tensors: Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """(encbench name -> tensor, dropped checkpoint names); ``CheckpointError`` names any tensor no rule
    maps and any model tensor that two checkpoint tensors would fill."""
    mapped: dict[str, torch.Tensor] = {}
    source: dict[str, str] = {}
    dropped, unknown = [], []
    for name, value in tensors.items():
        out = d2_names(name, value)
        if out is None:
            unknown.append(name)
            continue
        if not out:
            dropped.append(name)
        for new, v in out:
            if new in mapped:
                raise CheckpointError(f"{new} would be filled twice: from {source[new]} and {name}")
            mapped[new], source[new] = v, name
    if unknown:
        raise CheckpointError(f"{len(unknown)} checkpoint tensor(s) match no detectron2 name rule, e.g. "
                              f"{sorted(unknown)[:5]}: not a Mask2Former / PRO-SCALE checkpoint encbench knows")
    return mapped, sorted(dropped)


def load_weights(model: torch.nn.Module, ckpt: Checkpoint) -> LoadReport:
    """Fill ``model`` from ``ckpt`` strictly: every tensor used exactly once with its shape checked; a
    mismatch names the key and both shapes."""
    mapped, dropped = map_checkpoint(ckpt.tensors)
    state = model.state_dict()
    unexpected = sorted(set(mapped) - set(state))
    shapes = [f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(state[k].shape)}" for k, v in mapped.items()
              if k in state and v.shape != state[k].shape]
    missing = sorted(k for k in set(state) - set(mapped) if not any(re.search(p, k) for p in ALLOWED_MISSING))
    problems = []
    if shapes:
        problems.append(f"{len(shapes)} shape mismatch(es): " + "; ".join(shapes[:5]))
    if unexpected:
        problems.append(f"{len(unexpected)} checkpoint tensor(s) the model does not have: {unexpected[:5]}")
    if missing:
        problems.append(f"{len(missing)} model tensor(s) the checkpoint does not fill: {missing[:5]}")
    if problems:
        raise CheckpointError(f"{ckpt.path} does not fit the configured model ({'; '.join(problems)}); compare the "
                              "inferred configuration with your overrides")
    model.load_state_dict({k: v.to(state[k].dtype) for k, v in mapped.items()}, strict=False)
    left = sorted(set(state) - set(mapped))
    return LoadReport(ckpt.path, ckpt.format, ckpt.sha256, len(mapped), dropped, left)
