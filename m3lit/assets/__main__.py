"""``python -m m3lit.assets OUT_DIR [--seed N]``: generate (or find) the default assets and print their paths."""

from __future__ import annotations

import argparse
import time

from m3lit.assets import ensure_default_assets


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m m3lit.assets", description=__doc__)
    parser.add_argument("out_dir", help="cache folder; the assets go into a versioned sub-folder")
    parser.add_argument("--seed", type=int, default=0, help="generator seed (default 0)")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    assets = ensure_default_assets(args.out_dir, seed=args.seed)
    print(f"root:          {assets.root}")
    print(f"train_dir:     {assets.train_dir}")
    print(f"dev_dir:       {assets.dev_dir}")
    print(f"tokenizer_dir: {assets.tokenizer_dir}")
    print(f"seconds:       {time.perf_counter() - start:.2f}")


if __name__ == "__main__":
    main()
