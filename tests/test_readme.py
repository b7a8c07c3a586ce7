"""The README's Python snippet runs as written and gives the outputs it describes."""

from __future__ import annotations

import re

from bench.sweep import REPO


def test_the_readme_python_snippet_runs(capsys):
    readme = (REPO / "README.md").read_text()
    snippet = re.search(r"one creation API.*?```python\n(.*?)```", readme, re.S).group(1)
    scope: dict = {}
    exec(compile(snippet, "README.md", "exec"), scope)
    results, raw = scope["results"], scope["raw"]
    assert len(results) == 1 and set(results[0]) == {"sem_seg", "panoptic_seg", "instances"}
    assert results[0]["sem_seg"].shape == (19, 256, 512)  # Cityscapes: 19 classes, at the input size
    assert raw["pred_logits"].shape == (1, 100, 20) and raw["pred_masks"].shape == (1, 100, 64, 128)
    assert isinstance(raw["aux_outputs"], list) and not raw["pred_masks"].requires_grad  # under no_grad
    assert "torch.Size([19, 256, 512]) torch.Size([1, 100, 64, 128])" in capsys.readouterr().out
