"""Builds the native scanners (every processor/native/_*.c becomes processor.native._<name>) and maps the
repository's collector-config/ into the wheel as the package data directory processor/collector_config (the
templates and default rule files commands read at run time; see processor/assets.py).
Everything else about the package is in pyproject.toml."""

from pathlib import Path

from setuptools import Extension, find_packages, setup

NATIVE = Path("processor/native")

setup(
    packages=[*find_packages(include=["processor*", "recommender*", "dashboards*"]), "processor.collector_config"],
    package_dir={"processor.collector_config": "collector-config"},
    # optional: a machine without a C compiler still installs; the hop then runs its pure-Python paths and says
    # so loudly at start (processor/native/__init__.py).
    ext_modules=[
        Extension(f"processor.native.{source.stem}", [str(source)], depends=[str(h) for h in sorted(NATIVE.glob("*.h"))],
                  optional=True,
                  extra_compile_args=["-O2", "-std=c11", "-Wall", "-Wextra", "-Wno-unused-parameter",
                                      "-Wno-missing-field-initializers"])
        for source in sorted(NATIVE.glob("_*.c"))
    ],
)
