"""Hydra sweep and scheme groups (``+sweep=NAME``, ``+scheme=NAME``) and W&B sweep files, installed as the
package ``m3lit.sweeps`` and on m3lit-train's config search path."""
