"""MATH scored beside boxed exact match by lm-eval's own equivalence checks (``minerva_math``), imported, not copied.

The headline MATH metric stays METHOD 8's exact match of the normalised final ``\\boxed{}`` answer ("boxed EM",
``tasks/utils.math_process_results``). Two columns are added per item, and a score with its CI per benchmark:

- ``equiv``: ``lm_eval.tasks.minerva_math.utils.is_equiv(boxed answer, gold answer)``, sympy's
  ``parse_latex`` + ``simplify(a - b) == 0`` on the same two strings EM compares (``\\frac{1}{2}`` = ``0.5``,
  ``2\\sqrt{2}`` = ``\\sqrt{8}``).
- ``math_verify``: the ``math_verify`` metric of lm-eval's ``minerva_math.utils.process_results`` (Math-Verify's
  ``verify(parse(solution), parse(generation))``), i.e. what ``--source hub`` reports as ``math_verify``.

Both need lm-eval's math extra (sympy, ``antlr4-python3-runtime==4.11``, ``math-verify``): ``pip install
'coloc-ray[math]'`` (part of the eval and dev installs). Without it the columns are None and a warning says why.
lm-eval's checks time out through ``signal.alarm``, which only the main thread may use (elsewhere ``is_equiv``
silently returns False and Math-Verify raises), so off the main thread (a Ray Tune function trial) they run in
one spawned child process.
"""

from __future__ import annotations

import logging
import threading

log = logging.getLogger(__name__)

# eval.json labels of the per-item metrics this module adds (the headline's label is in the registry).
METRICS = {
    "equiv": "boxed answer sympy-equivalent to the gold answer (lm-eval minerva_math is_equiv)",
    "math_verify": "Math-Verify of the generation against the gold solution (lm-eval minerva_math math_verify)",
}
INSTALL_HINT = "pip install 'coloc-ray[math]' (lm-eval[math]: sympy, antlr4-python3-runtime==4.11, math-verify)"


def missing_extra() -> str | None:
    """Why lm-eval's minerva_math checks cannot be imported here, or None when they can."""
    try:
        import lm_eval.tasks.minerva_math.utils  # noqa: F401  (raises when its math extra is absent)
    except (ImportError, AssertionError) as e:
        return f"{type(e).__name__}: {str(e).splitlines()[0][:160]}"
    return None


def score_here(cases: list[dict]) -> list[dict]:
    """``[{equiv, math_verify}]`` for ``cases`` = ``[{answer, solution, generation, prediction}]`` (main thread).

    ``answer`` is the gold normalised answer, ``solution`` the gold solution text (None: no math_verify),
    ``generation`` the model's text, ``prediction`` its normalised boxed answer (what EM compared).
    """
    from lm_eval.tasks.minerva_math.utils import is_equiv, process_results

    out = []
    for c in cases:
        pred = c["prediction"]
        equiv = bool(pred) and pred != "[invalidanswer]" and bool(is_equiv(pred, c["answer"]))
        mv = None
        if c.get("solution") is not None:
            doc = {"answer": c["answer"], "solution": c["solution"]}
            mv = bool(process_results(doc, [c["generation"] or ""])["math_verify"])
        out.append({"equiv": equiv, "math_verify": mv})
    return out


def score(cases: list[dict]) -> list[dict]:
    """:func:`score_here` where lm-eval's timeouts work: here on the main thread, else in a spawned child.

    Returns all-None columns, with one WARNING naming the fix, when lm-eval's math extra is not installed.
    """
    if not cases:
        return []
    why = missing_extra()
    if why is not None:
        log.warning("MATH equivalence (equiv, math_verify) not scored: lm-eval's minerva_math checks need its "
                    "math extra (%s); install it with %s", why, INSTALL_HINT)
        return [{"equiv": None, "math_verify": None} for _ in cases]
    if threading.current_thread() is threading.main_thread():
        return score_here(cases)
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(1, mp_context=mp.get_context("spawn")) as pool:
        return pool.submit(score_here, cases).result()
