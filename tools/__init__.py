"""Scripts around the core files: synthetic data (synth.py), the appendix-E analyses of the byproducts
(analyses.py) and figures of training runs (plot.py). Each runs as `python tools/<name>.py ...` and imports
as `from tools import synth` from the repository root."""
