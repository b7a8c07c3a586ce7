"""encbench measurement: one job = one config -> one result row (FLOPs, latency, memory, energy, profile).

Bench knows nothing of model internals beyond the stage names the segmentor exposes
(``models.segmentor.STAGES`` and ``Segmentor.stage_modules``).
"""
