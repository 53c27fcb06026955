"""The shipped benchmarks, one module each: its registry entry, offline loader, renderer and report label.

Importing a module registers its benchmark (``register_benchmark``); the order below is the registry's order,
which is the default ``benchmarks`` of ``coloc eval`` and of a study, and the report's column order. Adding a
benchmark is a module here, its task template under ``tasks/`` (an lm-eval one), its test, and its name in
``MODULES``
(CONTRIBUTING.md walks through it).
"""

import importlib

#: Module names, in registry order; a new benchmark appends its module's name here.
MODULES = ("mmlu", "gpqa", "humanevalplus", "math", "mgsm", "arc_challenge")

for _m in MODULES:
    importlib.import_module(f"{__name__}.{_m}")
