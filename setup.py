"""Builds the native scanners (every processor/native/_*.c becomes processor.native._<name>).
Everything else about the package is in pyproject.toml."""

from pathlib import Path

from setuptools import Extension, setup

NATIVE = Path("processor/native")

setup(ext_modules=[
    Extension(f"processor.native.{source.stem}", [str(source)], depends=[str(h) for h in sorted(NATIVE.glob("*.h"))],
              extra_compile_args=["-O2", "-std=c11", "-Wall", "-Wextra", "-Wno-unused-parameter", "-Wno-missing-field-initializers"])
    for source in sorted(NATIVE.glob("_*.c"))
])
