"""The Hydra configs of m3lit-train and m3lit-eval, installed as the package ``m3lit.conf``."""
