"""Command-line entry points (``m3lit-train``, ``m3lit-eval``, ``m3lit-encode``, ``m3lit-compare``) and the
OmegaConf resolvers their Hydra configs use."""
