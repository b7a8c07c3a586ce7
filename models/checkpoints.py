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
  first turned into detectron2's (``transformers_to_d2``), so that the same inference and strict
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
    (r"^sem_seg_head\.pixel_decoder\.input_proj\.(\d)\.([01])\.(weight|bias)$",
     r"pixel_decoder.transformer.input_proj.\1.\2.\3"),
    (r"^sem_seg_head\.pixel_decoder\.transformer\.level_embed$", r"pixel_decoder.transformer.level_embed"),
    (r"^sem_seg_head\.pixel_decoder\.transformer\.encoder\.layers\.(\d+)\.(.*)$",
     r"pixel_decoder.transformer.layers.\1.\2"),
    (r"^sem_seg_head\.pixel_decoder\.transformer\.encoder\.token_excite\.ops\.(weight|bias)$",
     r"pixel_decoder.transformer.trc.linear.\1"),
    (r"^sem_seg_head\.pixel_decoder\.adapter_1\.weight$", r"pixel_decoder.pixel_embedding.lateral_conv.0.weight"),
    (r"^sem_seg_head\.pixel_decoder\.adapter_1\.norm\.(weight|bias)$",
     r"pixel_decoder.pixel_embedding.lateral_conv.1.\1"),
    (r"^sem_seg_head\.pixel_decoder\.layer_1\.weight$", r"pixel_decoder.pixel_embedding.output_conv.0.weight"),
    (r"^sem_seg_head\.pixel_decoder\.layer_1\.norm\.(weight|bias)$",
     r"pixel_decoder.pixel_embedding.output_conv.1.\1"),
    (r"^sem_seg_head\.pixel_decoder\.mask_features\.(weight|bias)$", r"pixel_decoder.pixel_embedding.mask_features.\1"),
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
    for pattern, repl in RULES:
        if re.match(pattern, name):
            return [(re.sub(pattern, repl, name), value)]
    return None


# ------------------------------------------------------------------ transformers names -> detectron2 names
HF_BACKBONE = "model.pixel_level_module.encoder."  # a transformers state dict has these names
_PD, _PR = "sem_seg_head.pixel_decoder.", "sem_seg_head.predictor."
_NORM = r"(?:convolution\.weight|normalization\.(.*))"
_E, _D = r"^model\.pixel_level_module\.encoder\.", r"^model\.pixel_level_module\.decoder\."
_T = r"^model\.transformer_module\."
_BLOCK = _E + r"swin\.encoder\.layers\.(\d+)\.blocks\.(\d+)\."
HF_RULES: tuple[tuple[str, str], ...] = (  # (transformers pattern, detectron2 replacement), first match wins
    (_E + r"swin\.embeddings\.patch_embeddings\.projection\.(.*)$",
     r"backbone.patch_embed.proj.\1"),
    (_E + r"swin\.embeddings\.norm\.(.*)$", r"backbone.patch_embed.norm.\1"),
    (_E + r"hidden_states_norms\.stage1\.(.*)$", r"backbone.norm0.\1"),
    (_E + r"hidden_states_norms\.stage2\.(.*)$", r"backbone.norm1.\1"),
    (_E + r"hidden_states_norms\.stage3\.(.*)$", r"backbone.norm2.\1"),
    (_E + r"hidden_states_norms\.stage4\.(.*)$", r"backbone.norm3.\1"),
    (_E + r"swin\.encoder\.layers\.(\d+)\.downsample\.(.*)$",
     r"backbone.layers.\1.downsample.\2"),
    (_BLOCK + r"layernorm_before\.(.*)$",
     r"backbone.layers.\1.blocks.\2.norm1.\3"),
    (_BLOCK + r"layernorm_after\.(.*)$",
     r"backbone.layers.\1.blocks.\2.norm2.\3"),
    (_BLOCK + r"attention\.o_proj\.(.*)$",
     r"backbone.layers.\1.blocks.\2.attn.proj.\3"),
    (_BLOCK + r"attention\.relative_position_bias\.relative_position_bias_table$",
     r"backbone.layers.\1.blocks.\2.attn.relative_position_bias_table"),
    (_BLOCK + r"mlp\.(.*)$",
     r"backbone.layers.\1.blocks.\2.mlp.\3"),
    (_E + r"embedder\.embedder\.convolution\.weight$", r"backbone.stem.conv1.weight"),
    (_E + r"embedder\.embedder\.normalization\.(.*)$", r"backbone.stem.conv1.norm.\1"),
    (_D + r"input_projections\.(.*)$", _PD + r"input_proj.\1"),
    (_D + r"level_embed$", _PD + "transformer.level_embed"),
    (_D + r"encoder\.layers\.(\d+)\.self_attn\.(.*)$",
     _PD + r"transformer.encoder.layers.\1.self_attn.\2"),
    (_D + r"encoder\.layers\.(\d+)\.self_attn_layer_norm\.(.*)$",
     _PD + r"transformer.encoder.layers.\1.norm1.\2"),
    (_D + r"encoder\.layers\.(\d+)\.final_layer_norm\.(.*)$",
     _PD + r"transformer.encoder.layers.\1.norm2.\2"),
    (_D + r"encoder\.layers\.(\d+)\.fc([12])\.(.*)$",
     _PD + r"transformer.encoder.layers.\1.linear\2.\3"),
    (_D + r"(adapter_1|layer_1)\.0\.weight$", _PD + r"\1.weight"),
    (_D + r"(adapter_1|layer_1)\.1\.(.*)$", _PD + r"\1.norm.\2"),
    (_D + r"mask_projection\.(.*)$", _PD + r"mask_features.\1"),
    (_T + r"queries_embedder\.weight$", _PR + "query_embed.weight"),
    (_T + r"queries_features\.weight$", _PR + "query_feat.weight"),
    (_T + r"level_embed\.weight$", _PR + "level_embed.weight"),
    (_T + r"decoder\.layernorm\.(.*)$", _PR + r"decoder_norm.\1"),
    (r"^class_predictor\.(.*)$", _PR + r"class_embed.\1"),
    (_T + r"decoder\.mask_predictor\.mask_embedder\.(\d)\.0\.(.*)$",
     _PR + r"mask_embed.layers.\1.\2"),
    (_T + r"decoder\.layers\.(\d+)\.self_attn\.out_proj\.(.*)$",
     _PR + r"transformer_self_attention_layers.\1.self_attn.out_proj.\2"),
    (_T + r"decoder\.layers\.(\d+)\.self_attn_layer_norm\.(.*)$",
     _PR + r"transformer_self_attention_layers.\1.norm.\2"),
    (_T + r"decoder\.layers\.(\d+)\.cross_attn\.(.*)$",
     _PR + r"transformer_cross_attention_layers.\1.multihead_attn.\2"),
    (_T + r"decoder\.layers\.(\d+)\.cross_attn_layer_norm\.(.*)$",
     _PR + r"transformer_cross_attention_layers.\1.norm.\2"),
    (_T + r"decoder\.layers\.(\d+)\.fc([12])\.(.*)$",
     _PR + r"transformer_ffn_layers.\1.linear\2.\3"),
    (_T + r"decoder\.layers\.(\d+)\.final_layer_norm\.(.*)$",
     _PR + r"transformer_ffn_layers.\1.norm.\2"),
    (r"^criterion\.(.*)$", r"criterion.\1"),
)
HF_RES = (_E + r"encoder\.stages\.(\d)\.layers\.(\d+)\.(?:layer\.(\d)|shortcut)\."
          + _NORM + "$")
# q, k and v projections that detectron2 keeps as one tensor (rows q | k | v): (pattern of q, fused name)
HF_FUSED = ((_BLOCK + r"attention\.q_proj\.(weight|bias)$", r"backbone.layers.\1.blocks.\2.attn.qkv.\3"),
            (_T + r"decoder\.layers\.(\d+)\.self_attn\.q_proj\.(weight|bias)$",
             _PR + r"transformer_self_attention_layers.\1.self_attn.in_proj_\2"))
# transformers' saved (hub) Swin names -> the names its modules have at run time (transformers >= 5 renames
# them on load; ``save_pretrained`` writes the saved ones back)
HF_SAVED_SWIN = ((_E + r"embeddings\.", r"model.pixel_level_module.encoder.swin.embeddings."),
                 (_E + r"encoder\.layers\.", r"model.pixel_level_module.encoder.swin.encoder.layers."),
                 (r"\.attention\.self\.query\.", ".attention.q_proj."),
                 (r"\.attention\.self\.key\.", ".attention.k_proj."),
                 (r"\.attention\.self\.value\.", ".attention.v_proj."),
                 (r"\.attention\.self\.relative_position_bias_table$",
                  ".attention.relative_position_bias.relative_position_bias_table"),
                 (r"\.attention\.output\.dense\.", ".attention.o_proj."), (r"\.intermediate\.dense\.", ".mlp.fc1."),
                 (r"(blocks\.\d+)\.output\.dense\.", r"\1.mlp.fc2."))
HF_DROPPED = (r"\.num_batches_tracked$", _E + r"swin\.layernorm\.",
              r"\.relative_position_index$")


def _runtime_name(name: str) -> str:
    if name.startswith(HF_BACKBONE):
        for pattern, repl in HF_SAVED_SWIN:
            name = re.sub(pattern, repl, name)
    return name


def transformers_to_d2(tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """transformers' Mask2Former names (as its modules have them, or as ``save_pretrained`` writes them) ->
    detectron2's, q/k/v fused as detectron2 stores them; a tensor no rule places is a ``CheckpointError``.
    transformers' final Swin norm, which no output uses, is dropped, as are BatchNorm counters."""
    out: dict[str, torch.Tensor] = {}
    rest = {_runtime_name(k): v for k, v in tensors.items() if not any(re.search(p, k) for p in HF_DROPPED)}
    for pattern, fused in HF_FUSED:
        for name in [k for k in rest if re.match(pattern, k)]:
            parts = [rest.pop(name.replace(".q_proj.", f".{p}_proj.")) for p in "qkv"]
            out[re.sub(pattern, fused, name)] = torch.cat(parts)
    for name in list(rest):
        m = re.match(HF_RES, name)
        if m:
            stage, block, conv, norm = m.groups()
            where = f"conv{int(conv) + 1}" if conv else "shortcut"
            leaf = f"norm.{norm}" if norm else "weight"
            out[f"backbone.res{int(stage) + 2}.{block}.{where}.{leaf}"] = rest.pop(name)
            continue
        for pattern, repl in HF_RULES:
            if re.match(pattern, name):
                out[re.sub(pattern, repl, name)] = rest.pop(name)
                break
    if rest:
        raise CheckpointError(f"{len(rest)} transformers tensor(s) match no rule, e.g. {sorted(rest)[:5]}: not a "
                              "Mask2FormerForUniversalSegmentation state dict encbench knows")
    return out


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
    """encoder=... and its knobs from the deformable layers' shapes."""
    prefix = "sem_seg_head.pixel_decoder.transformer.encoder.layers.{}.self_attn.sampling_offsets.weight"
    n = _count(tensors, r"^sem_seg_head\.pixel_decoder\.transformer\.encoder\.layers\.(\d+)\.")
    levels = [tensors[prefix.format(i)].shape[0] // 64 for i in range(n)]  # 8 heads x L levels x 4 points x 2
    trc = "sem_seg_head.pixel_decoder.transformer.encoder.token_excite.ops.weight" in tensors
    lpe = "sem_seg_head.pixel_decoder.layer_1.weight" not in tensors
    if not trc and not lpe and all(v == 3 for v in levels):
        return {"encoder": "m2f", "encoder.num_layers": n}
    if levels != sorted(levels) or not set(levels) <= {1, 2, 3}:
        raise CheckpointError(f"deformable layers over {levels} levels: neither M2F (all 3) nor a PRO-SCALE schedule")
    schedule = [levels.count(k) for k in (1, 2, 3)]
    return {"encoder": "proscale", "encoder.layers": schedule, "encoder.lpe": lpe,
            "encoder.trc": "faithful" if trc else "off"}


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
