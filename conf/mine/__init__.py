"""The Hydra config of m3lit-mine (a root of its own: its ``data`` key is a file, not the training ``data`` group)."""
