import json
import os
import tempfile
from pathlib import Path

import pytest

os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# The embedded default's generated assets (synthetic corpus + tokenizer), shared by the whole test session.
os.environ.setdefault("M3LIT_ASSETS", os.path.join(tempfile.gettempdir(), "m3lit-test-assets"))

FIXTURES = Path(__file__).parent / "fixtures"
TINY_M3 = FIXTURES / "tiny_m3"


@pytest.fixture(scope="session")
def reference() -> dict:
    """FlagEmbedding 1.4.2 outputs on the tiny BGE-M3 checkpoint (see fixtures/README.md)."""
    with open(FIXTURES / "flagref_reference_outputs.json") as f:
        return json.load(f)


@pytest.fixture(scope="session")
def tiny_m3_dir() -> str:
    return str(TINY_M3)


@pytest.fixture(scope="session")
def tokenizer(tiny_m3_dir):
    """The tiny BGE-M3 checkpoint's tokenizer (133 tokens)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_m3_dir)
