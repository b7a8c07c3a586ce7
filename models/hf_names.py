"""transformers' ``Mask2FormerForUniversalSegmentation`` names -> detectron2's (the official checkpoints'),
so that a transformers state dict goes through the same configuration inference and strict loading as
an official ``.pkl``/``.pth`` (``models.checkpoints``). Both spellings are read: the modules' runtime
names, and the saved Swin names that ``save_pretrained`` writes.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import torch

from models.checkpoints import CheckpointError

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
