"""Only the C extension: everything else about the package is in pyproject.toml."""

from setuptools import Extension, setup

setup(ext_modules=[Extension("live.media._copier", ["live/media/_copier.c"], extra_compile_args=["-O2"])])
