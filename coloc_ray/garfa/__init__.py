"""GARFA: GQA-aware RoPE frequency adaptation (METHOD 5).

``core`` is the pure-torch math, ``patch`` the reversible HF attention patch, ``io`` save/load.

>>> scalers = apply_garfa(model, layers=[0, 3])   # rho [2, G] = 0: logits unchanged
>>> save_garfa(scalers, adapter_dir, model_info(model)); remove_garfa(model)
>>> load_garfa(model, adapter_dir)                 # re-applies and loads rho
"""

from coloc_ray.garfa.core import GARFA_C, GarfaScalers, key_cos_sin, key_inv_freq, rotate_keys
from coloc_ray.garfa.io import load_garfa, read_garfa, save_garfa
from coloc_ray.garfa.patch import apply_garfa, get_garfa, register_garfa_family, remove_garfa

__all__ = [
    "GARFA_C", "GarfaScalers", "apply_garfa", "get_garfa", "key_cos_sin", "key_inv_freq", "load_garfa",
    "read_garfa", "register_garfa_family", "remove_garfa", "rotate_keys", "save_garfa",
]
