"""Accuracy: metric engines that equal the official evaluators (panoptic quality, mIoU, mask AP)."""
