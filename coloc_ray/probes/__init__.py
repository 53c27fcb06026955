"""Layer probes (METHOD 1 and 2): correctness-differential sensitivity and RoPE influence.

>>> from coloc_ray.probes import run_sensitivity, run_rope_influence
>>> sens = run_sensitivity("tiny-gqa", num_workers=0)      # in-process; None = on Ray
>>> rope = run_rope_influence("tiny-gqa", num_texts=2, max_len=128, num_workers=0)

The API is imported lazily so that validating a pairs file (``probes.pairs``) needs no torch.
"""

__all__ = ["run_rope_influence", "run_sensitivity"]


def __getattr__(name):
    if name in __all__:
        from coloc_ray.probes import api

        return getattr(api, name)
    raise AttributeError(f"module 'coloc_ray.probes' has no attribute {name!r}")
