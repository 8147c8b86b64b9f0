"""OmegaConf resolvers used by the Hydra configs."""
from __future__ import annotations

import os

from omegaconf import OmegaConf

# The Hydra configs: the repository's top-level conf/ folder.
REPO_DIR = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIG_DIR = os.path.join(REPO_DIR, "conf")
DEFAULT_ASSETS_ROOT = os.path.join("~", ".cache", "m3lit", "default_assets")


def default_assets_path(name: str) -> str:
    """Path ``name`` (root, train_dir, dev_dir, tokenizer_dir) of the embedded default assets, generated on first
    use under ``$M3LIT_ASSETS`` (default ``~/.cache/m3lit/default_assets``)."""
    from ..assets import ensure_default_assets

    assets = ensure_default_assets(os.path.expanduser(os.environ.get("M3LIT_ASSETS", DEFAULT_ASSETS_ROOT)))
    if not hasattr(assets, name):
        raise ValueError(f"${{m3lit_assets:{name}}}: unknown asset; expected train_dir, dev_dir, tokenizer_dir, root")
    return str(getattr(assets, name))


def wandb_mode() -> str:
    """W&B mode: ``$WANDB_MODE`` when set, else online with an API key, else offline."""
    if os.environ.get("WANDB_MODE"):
        return os.environ["WANDB_MODE"]
    return "online" if os.environ.get("WANDB_API_KEY") else "offline"


def repo_path(relative: str = "") -> str:
    """``${m3lit_path:sweeps}``: absolute path of ``relative`` under the repository root (where conf/ lives)."""
    return os.path.normpath(os.path.join(REPO_DIR, relative))


def register_resolvers() -> None:
    OmegaConf.register_new_resolver("m3lit_assets", default_assets_path, replace=True)
    OmegaConf.register_new_resolver("m3lit_wandb_mode", wandb_mode, replace=True)
    OmegaConf.register_new_resolver("m3lit_path", repo_path, replace=True)
