"""encbench reports: read the results store (``bench.store``) and build Pareto plots, tables and the
HTML/markdown report (``python -m reports``)."""
