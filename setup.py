"""Only the C extension: everything else about the package is in pyproject.toml."""

from setuptools import Extension, setup

setup(ext_modules=[Extension("live.media._rtp_protect", ["live/media/_rtp_protect.c"], extra_compile_args=["-O2"])])
