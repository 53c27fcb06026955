"""Offline lm-eval task templates (``*.yaml``, filled in at run time by ``offline.py``) and their ``utils.py``."""
