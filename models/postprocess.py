"""Mask2Former inference post-processing (docs/models.md §6.2): semantic, panoptic, instance.

Faithful to upstream ``MaskFormer.forward`` at inference: mask logits are upsampled to the padded
input size, cropped to each image's valid size and resized to its output size
(``sem_seg_postprocess``), then each enabled task runs per image. The panoptic merge keeps
upstream's Python loop over kept queries (it costs latency, not FLOPs).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

TASKS = ("semantic", "panoptic", "instance")


def sem_seg_postprocess(result: torch.Tensor, img_size: tuple[int, int], out_h: int, out_w: int) -> torch.Tensor:
    """Crop (C, H_pad, W_pad) to the valid ``img_size`` and resize bilinearly to (out_h, out_w)."""
    result = result[:, : img_size[0], : img_size[1]].expand(1, -1, -1, -1)
    return F.interpolate(result, size=(out_h, out_w), mode="bilinear", align_corners=False)[0]


class PostProcessor(nn.Module):
    """Per-image inference outputs from (pred_logits, pred_masks); holds no parameters."""

    def __init__(self, num_classes: int, tasks: Sequence[str] = TASKS, thing_ids: Sequence[int] = (),
                 object_mask_threshold: float = 0.8, overlap_threshold: float = 0.8,
                 topk_per_image: int = 100) -> None:
        super().__init__()
        bad = [t for t in tasks if t not in TASKS]
        if bad or not tasks:
            raise ValueError(f"postprocess tasks must be a non-empty subset of {list(TASKS)}, got {list(tasks)}")
        self.num_classes = num_classes
        self.tasks = tuple(tasks)
        self.thing_ids = frozenset(int(i) for i in thing_ids)
        self.object_mask_threshold = object_mask_threshold
        self.overlap_threshold = overlap_threshold
        self.topk_per_image = topk_per_image

    def forward(self, pred_logits: torch.Tensor, pred_masks: torch.Tensor, padded_size: tuple[int, int],
                image_sizes: Sequence[tuple[int, int]],
                output_sizes: Sequence[tuple[int, int]] | None = None) -> list[dict]:
        masks = F.interpolate(pred_masks, size=padded_size, mode="bilinear", align_corners=False)
        output_sizes = image_sizes if output_sizes is None else output_sizes
        results = []
        for cls, mask, size, (h, w) in zip(pred_logits, masks, image_sizes, output_sizes, strict=True):
            mask = sem_seg_postprocess(mask, size, h, w)
            cls = cls.to(mask)
            res: dict = {}
            if "semantic" in self.tasks:
                res["sem_seg"] = self.semantic_inference(cls, mask)
            if "panoptic" in self.tasks:
                res["panoptic_seg"] = self.panoptic_inference(cls, mask)
            if "instance" in self.tasks:
                res["instances"] = self.instance_inference(cls, mask)
            results.append(res)
        return results

    def semantic_inference(self, mask_cls: torch.Tensor, mask_pred: torch.Tensor) -> torch.Tensor:
        """(K, h, w) class scores: einsum of class probabilities (no-object dropped) and mask sigmoids."""
        probs = F.softmax(mask_cls, dim=-1)[..., :-1]
        return torch.einsum("qc,qhw->chw", probs, mask_pred.sigmoid())

    def panoptic_inference(self, mask_cls: torch.Tensor, mask_pred: torch.Tensor) -> tuple[torch.Tensor, list]:
        """(segment-id map int32 (h, w), segments_info), upstream's greedy merge."""
        scores, labels = F.softmax(mask_cls, dim=-1).max(-1)
        mask_pred = mask_pred.sigmoid()
        keep = labels.ne(self.num_classes) & (scores > self.object_mask_threshold)
        cur_scores, cur_classes, cur_masks = scores[keep], labels[keep], mask_pred[keep]
        cur_prob_masks = cur_scores.view(-1, 1, 1) * cur_masks
        h, w = cur_masks.shape[-2:]
        panoptic_seg = torch.zeros((h, w), dtype=torch.int32, device=cur_masks.device)
        segments_info: list[dict] = []
        if cur_masks.shape[0] == 0:
            return panoptic_seg, segments_info
        cur_mask_ids = cur_prob_masks.argmax(0)
        stuff_memory: dict[int, int] = {}
        current_id = 0
        for k in range(cur_classes.shape[0]):
            pred_class = int(cur_classes[k].item())
            isthing = pred_class in self.thing_ids
            mask_area = (cur_mask_ids == k).sum().item()
            original_area = (cur_masks[k] >= 0.5).sum().item()
            mask = (cur_mask_ids == k) & (cur_masks[k] >= 0.5)
            if mask_area > 0 and original_area > 0 and mask.sum().item() > 0:
                if mask_area / original_area < self.overlap_threshold:
                    continue
                if not isthing:
                    if pred_class in stuff_memory:
                        panoptic_seg[mask] = stuff_memory[pred_class]
                        continue
                    stuff_memory[pred_class] = current_id + 1
                current_id += 1
                panoptic_seg[mask] = current_id
                segments_info.append({"id": current_id, "isthing": isthing, "category_id": pred_class})
        return panoptic_seg, segments_info

    def instance_inference(self, mask_cls: torch.Tensor, mask_pred: torch.Tensor) -> dict[str, torch.Tensor]:
        """Top-k (query, class) pairs; binary masks (logit > 0); score x mean mask probability."""
        num_queries = mask_cls.shape[0]
        scores = F.softmax(mask_cls, dim=-1)[:, :-1]
        labels = torch.arange(self.num_classes, device=mask_cls.device).unsqueeze(0).repeat(num_queries, 1)
        k = min(self.topk_per_image, scores.numel())
        scores_per_image, topk = scores.flatten(0, 1).topk(k, sorted=False)
        labels_per_image = labels.flatten(0, 1)[topk]
        mask_pred = mask_pred[topk // self.num_classes]
        if "panoptic" in self.tasks:  # panoptic models keep only "thing" classes as instances
            keep = torch.tensor([int(lab) in self.thing_ids for lab in labels_per_image.tolist()],
                                dtype=torch.bool, device=mask_pred.device)
            scores_per_image, labels_per_image, mask_pred = (
                scores_per_image[keep], labels_per_image[keep], mask_pred[keep])
        pred_masks = (mask_pred > 0).float()
        mask_scores = (mask_pred.sigmoid().flatten(1) * pred_masks.flatten(1)).sum(1) / (
            pred_masks.flatten(1).sum(1) + 1e-6)
        return {"pred_masks": pred_masks, "scores": scores_per_image * mask_scores, "pred_classes": labels_per_image}
