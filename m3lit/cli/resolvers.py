"""Where the packaged Hydra configs live, and the OmegaConf resolvers they use.

The configs are the repository's top-level ``conf/`` and ``sweeps/`` folders, installed as the packages
``m3lit.conf`` and ``m3lit.sweeps`` (a wheel carries them inside ``m3lit/``; an editable install maps them to the
checkout's folders), so every entry point finds them through ``importlib`` whatever the working directory.
"""
from __future__ import annotations

import importlib.util
import os
import secrets

from omegaconf import OmegaConf

CONFIG_PACKAGE = "m3lit.conf"
SWEEPS_PACKAGE = "m3lit.sweeps"
# Hydra's ``config_path`` for every entry point (a package, not a path relative to a module or the cwd).
CONFIG_PATH = f"pkg://{CONFIG_PACKAGE}"
DEFAULT_ASSETS_ROOT = os.path.join("~", ".cache", "m3lit", "default_assets")
DATA_ENV = "M3LIT_DATA"
# One id per launched process: output folders are ``<time>-<RUN_ID>``, so two runs started in the same second never
# share one (DDP ranks receive rank 0's resolved folder from Lightning's launcher).
RUN_ID = secrets.token_hex(4)


def package_dir(package: str) -> str:
    """File-system folder of an installed package (the checkout's folder in an editable install)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(f"{package}: the packaged configs are missing; reinstall m3lit")
    return os.path.abspath(list(spec.submodule_search_locations)[0])


CONFIG_DIR = package_dir(CONFIG_PACKAGE)
SWEEPS_DIR = package_dir(SWEEPS_PACKAGE)


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


def data_path(relative: str = "") -> str:
    """``${m3lit_data:debdesc}``: a folder of the real-data collection (debdesc, manlong, bm25_dev.json, …).

    Its root is ``$M3LIT_DATA`` when set; else ``shared/data`` beside a source checkout that holds the configs
    (``<checkout>/../shared/data``); else ``../shared/data`` from the working directory."""
    root = os.environ.get(DATA_ENV)
    if not root:
        checkout = os.path.dirname(CONFIG_DIR)
        beside = os.path.join(checkout, "..", "shared", "data")
        is_checkout = os.path.isfile(os.path.join(checkout, "pyproject.toml"))
        root = beside if is_checkout and os.path.isdir(beside) else os.path.join("..", "shared", "data")
    return os.path.abspath(os.path.join(os.path.expanduser(root), relative))


def run_id() -> str:
    """``${m3lit_run_id:}``: this process's random 8-hex-digit run id."""
    return RUN_ID


def register_resolvers() -> None:
    OmegaConf.register_new_resolver("m3lit_run_id", run_id, replace=True)
    OmegaConf.register_new_resolver("m3lit_assets", default_assets_path, replace=True)
    OmegaConf.register_new_resolver("m3lit_wandb_mode", wandb_mode, replace=True)
    OmegaConf.register_new_resolver("m3lit_data", data_path, replace=True)


def check_known_keys(cfg, config_file: str, prog: str) -> None:
    """Reject keys that ``config_file`` (a primary config) does not define, also those added with Hydra's ``+key=``."""
    known = set(OmegaConf.load(config_file)) - {"defaults"}
    unknown = sorted(set(cfg) - known - {"hydra"})
    if unknown:
        raise ValueError(f"{prog}: unknown key(s) {unknown}; known keys: {sorted(known)}")
