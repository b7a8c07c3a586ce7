"""The stage names of a segmentor, defined once (no imports: the reporting side reads them too).

``STAGES`` are the top stages in forward order; ``SUB_STAGES`` split one of them; ``ALL_STAGES`` is
every stage and sub-stage in the order the result row lists them. ``Segmentor.stage_modules`` maps
each name to the module that runs it.
"""

STAGES = ("backbone", "pixel_decoder", "transformer_decoder", "postprocess")
SUB_STAGES = {"pixel_decoder": ("pixel_decoder_layers", "pixel_embedding")}
ALL_STAGES = tuple(name for stage in STAGES for name in (stage, *SUB_STAGES.get(stage, ())))
FORWARD_STAGES = STAGES[:-1]  # the network itself, without post-processing
