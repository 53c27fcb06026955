"""coloc-ray: sensitivity / RoPE-influence co-localization studies for GQA transformers, on Ray.

The study spine lives in :mod:`coloc_ray.ablation.spine`; stages are folders named for them
(``probes/``, ``analysis/``, ``finetune/``, ``evaluation/``, ``ablation/``, ``tracking/``).
Heavy imports are lazy: importing this package pulls in neither torch nor Ray.
"""

__version__ = "0.1.0"


def load_adapted(model, path):
    """Restore a saved LS-LoRA + GARFA adapter onto ``model`` (see :mod:`coloc_ray.finetune.adapter`)."""
    from coloc_ray.finetune.adapter import load_adapted as _load

    return _load(model, path)


__all__ = ["__version__", "load_adapted"]
