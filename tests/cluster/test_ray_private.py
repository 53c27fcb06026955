"""``ray._private`` is used only where Ray has no public API, each use isolated in one named helper (issue 13.5e).

A new ``ray._private`` import elsewhere fails here: use the public API, or add a helper with a comment saying why
no public API exists and list it below.
"""

import ast
from pathlib import Path

import coloc_ray

ALLOWED = {
    # RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER is read only at import; nothing public changes it afterwards
    ("coloc_ray/raycluster.py", "_loopback_even_if_imported_early"),
    # no public API packs or lists a job's working_dir (submit_job packs and uploads in one step)
    ("coloc_ray/ablation/submit.py", "_ray_pack"),
    # no public hook for the worker output Ray forwards to the driver (log_to_driver is all or nothing)
    ("coloc_ray/ablation/console.py", "route_ray_worker_output"),
}


def _private_imports(path: Path) -> set[str]:
    """Names of the functions (``<module>`` for top level) that import from ``ray._private`` in ``path``."""
    hits = set()

    def visit(node, where: str) -> None:
        mods = ([a.name for a in node.names] if isinstance(node, ast.Import)
                else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
        if any(m == "ray._private" or m.startswith("ray._private.") for m in mods):
            hits.add(where)
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            where = node.name
        for child in ast.iter_child_nodes(node):
            visit(child, where)

    visit(ast.parse(path.read_text()), "<module>")
    return hits


def test_ray_private_only_in_the_named_helpers():
    root = Path(coloc_ray.__file__).parent
    found = {(path.relative_to(root.parent).as_posix(), fn) for path in root.rglob("*.py")
             for fn in _private_imports(path)}
    assert found == ALLOWED


def test_loopback_switch_set_after_ray_was_imported(monkeypatch):
    from ray._private import ray_constants

    from coloc_ray.raycluster import _loopback_even_if_imported_early

    monkeypatch.setattr(ray_constants, "ENABLE_RAY_CLUSTER", True)  # ray imported before the env var was set
    monkeypatch.setenv("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "1")
    _loopback_even_if_imported_early()
    assert ray_constants.ENABLE_RAY_CLUSTER is True  # not asked for: left alone
    monkeypatch.setenv("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    _loopback_even_if_imported_early()
    assert ray_constants.ENABLE_RAY_CLUSTER is False
