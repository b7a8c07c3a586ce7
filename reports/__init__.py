"""encbench reports: results store -> Pareto plots, tables and the HTML/markdown report (not yet implemented)."""
