"""The benchmark suite: ``python -m bench`` (or ``timesformer bench``); see ``bench/suite.py``."""
