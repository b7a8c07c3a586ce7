"""encbench measurement: one job = one config -> one result row (FLOPs, latency, memory, energy, profile).

Bench knows nothing of model internals beyond the stage names the segmentor exposes
(``models.segmentor.STAGES`` and ``Segmentor.stage_modules``).
"""

import os

# The profiler (per-layer traces, gpu_busy_ms) may run after a CUDA-graph capture in the same process;
# CUPTI's teardown between profiler sessions can then crash. Keep CUPTI alive (set before any profiling).
os.environ.setdefault("TEARDOWN_CUPTI", "0")
