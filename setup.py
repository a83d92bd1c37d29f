"""Packaging hook: a wheel carries the method and dataset registries (methods/, datasets/ *.toml) inside the
package as peftbench/registry/, so a regular install finds them (see peftbench/paths.py). Everything else is in
pyproject.toml."""

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = Path(__file__).resolve().parent


class BuildPyWithRegistry(build_py):
    def run(self) -> None:
        super().run()
        target = Path(self.build_lib) / "peftbench" / "registry"
        for folder, pattern in (("methods", "**/*.toml"), ("datasets", "*.toml")):
            for source in sorted((HERE / folder).glob(pattern)):
                dest = target / folder / source.relative_to(HERE / folder)
                dest.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(source, dest)


setup(cmdclass={"build_py": BuildPyWithRegistry})
