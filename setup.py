"""Package build hook: plain Python by default; with PGWARDEN_COMPILE=1 the modules listed in
`proxy/native.py` are compiled with mypyc (a C compiler and mypy are then needed), and the manifest
of the sources they were compiled from goes beside them (`proxy/_native.json`)."""

import os
import runpy
import sys

from setuptools import setup

ext_modules = []
if os.environ.get("PGWARDEN_COMPILE") == "1":
    from mypyc.build import mypycify

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    native = runpy.run_path(os.path.join("proxy", "native.py"))
    sources = [name.replace(".", "/") + ".py" for name in native["COMPILED_MODULES"]]
    ext_modules = mypycify(sources, group_name="proxy._native", opt_level="3")
    native["write_manifest"]()

setup(ext_modules=ext_modules)
