"""Build script.

Metadata lives in pyproject.toml. The native preprocessing extension in ``csrc/`` arrives with the
video issue; until then there is nothing to compile and this file only exists so that
``pip install --no-build-isolation -e .`` works with the build knobs that will be added here
(``TIMESFORMER_NO_EXT=1`` will skip the native build).
"""

from setuptools import setup

setup()
