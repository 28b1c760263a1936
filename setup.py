"""Build script.

Metadata lives in pyproject.toml. This file adds the one thing it cannot say: the native preprocessing
extension ``timesformer._C`` (``csrc/``), which registers ``torch.ops.timesformer_csrc.preprocess_frames``
(C++ for the CPU and FakeTensor/Meta, plus CUDA when torch has it). The extension compiles against the
torch already installed, so torch is not a build requirement: install with
``pip install --no-build-isolation -e .`` (an isolated build environment would download the newest CUDA
torch). Without the extension the package still works, with the pure-torch implementation (same results,
slower).

Build knobs (environment variables, read when pip builds the package):

- ``TIMESFORMER_NO_EXT=1``: build no extension at all (pure Python install).
- ``TIMESFORMER_CUDA=0|1|auto`` (default ``auto``): also compile the CUDA kernel
  (``csrc/preprocess_cuda.cu``). ``auto`` does when torch is a CUDA build and the CUDA toolkit is found
  (``CUDA_HOME``, or ``nvcc`` on the PATH); ``1`` insists (the build fails if it cannot); ``0`` builds the
  CPU op only.
- ``MAX_JOBS``: parallel compile jobs, as for any torch extension.

If torch cannot be imported at build time (e.g. an isolated build), the extension is skipped with a note
rather than failing the install. A missing C++ compiler does fail it: set ``TIMESFORMER_NO_EXT=1`` to
install without the extension.
"""

import os
import sys

from setuptools import setup

ROOT = os.path.dirname(os.path.abspath(__file__))


def _flag(name: str, default: str) -> str:
    return os.environ.get(name, default).strip().lower()


def _extensions():
    """``(ext_modules, cmdclass, options)`` for ``setup``; empty when no extension is built."""
    if _flag("TIMESFORMER_NO_EXT", "0") in ("1", "true", "yes", "on"):
        print("timesformer: TIMESFORMER_NO_EXT is set, not building the native extension")
        return [], {}, {}
    try:
        import torch
        from torch.utils import cpp_extension
    except ImportError as exc:
        print(
            f"timesformer: torch is not importable at build time ({exc}); not building the native extension "
            "(install torch first, then this package with pip install --no-build-isolation)"
        )
        return [], {}, {}

    mode = _flag("TIMESFORMER_CUDA", "auto")
    if mode not in ("0", "1", "auto"):
        raise SystemExit(f"timesformer: TIMESFORMER_CUDA must be 0, 1 or auto, got {mode!r}")
    has_cuda_torch = torch.version.cuda is not None
    has_toolkit = cpp_extension.CUDA_HOME is not None
    if mode == "1" and not (has_cuda_torch and has_toolkit):
        raise SystemExit(
            "timesformer: TIMESFORMER_CUDA=1 needs a CUDA build of torch and the CUDA toolkit; got torch "
            f"{torch.__version__} (CUDA {torch.version.cuda}) and CUDA_HOME={cpp_extension.CUDA_HOME}"
        )
    with_cuda = mode != "0" and has_cuda_torch and has_toolkit

    sources = ["csrc/preprocess.cpp"]
    # at::parallel_for is OpenMP code inlined from the ATen headers: without -fopenmp it runs serially.
    # The library then shares torch's OpenMP runtime (same soname, already loaded).
    if sys.platform == "win32":
        cxx, link = ["/O2", "/openmp"], []
    elif sys.platform == "darwin":  # Apple clang has no OpenMP: the op runs on one thread there
        cxx, link = ["-O3"], []
    else:
        cxx, link = ["-O3", "-g0", "-fopenmp"], ["-fopenmp"]
    kwargs = dict(
        extra_compile_args={"cxx": cxx},
        extra_link_args=link,
        # Rebuild triggers for non-ninja builds, and what an sdist must carry besides the sources.
        depends=["csrc/preprocess.h", "csrc/preprocess_cuda.cu"],
        # The library uses no Python API beyond creating an empty module: one binary for all CPython 3.x.
        py_limited_api=True,
    )
    if with_cuda:
        sources.append("csrc/preprocess_cuda.cu")
        kwargs["extra_compile_args"]["nvcc"] = ["-O3"]
        ext = cpp_extension.CUDAExtension("timesformer._C", sources, **kwargs)
    else:
        ext = cpp_extension.CppExtension("timesformer._C", sources, **kwargs)
    print(f"timesformer: building the native extension ({'CPU + CUDA' if with_cuda else 'CPU'})")
    return (
        [ext],
        {"build_ext": cpp_extension.BuildExtension},
        {"bdist_wheel": {"py_limited_api": "cp310"}},
    )


os.chdir(ROOT)  # the sources are relative paths
ext_modules, cmdclass, options = _extensions()
setup(ext_modules=ext_modules, cmdclass=cmdclass, options=options)
