"""Loading a GGUF file: a missing accelerate (transformers 5 needs it to dequantise) is named
with the extra that installs it, not passed on as transformers' ValueError."""

import importlib.util

import pytest

pytest.importorskip("transformers")

from tuneless.errors import TunelessError  # noqa: E402
from tuneless.llm import gguf  # noqa: E402


def _refusing_loader(tmp_path, monkeypatch, message: str):
    """A .gguf path whose loading raises transformers' ValueError with `message`."""
    import transformers

    def refuse(*_a, **_k):
        raise ValueError(message)

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", refuse)
    path = tmp_path / "m.gguf"
    path.write_bytes(b"GGUF")
    return path


def test_missing_accelerate_names_the_llm_extra(tmp_path, monkeypatch):
    path = _refusing_loader(tmp_path, monkeypatch, "accelerate is required for a GGUF file")
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "accelerate" else real(name, *a))
    with pytest.raises(TunelessError, match=r"accelerate.*pip install 'tuneless\[llm\]'"):
        gguf.load_gguf(path)


def test_other_load_errors_keep_their_message(tmp_path, monkeypatch):
    path = _refusing_loader(tmp_path, monkeypatch, "unsupported architecture xyz")
    with pytest.raises(TunelessError, match="cannot load GGUF m.gguf: unsupported architecture"):
        gguf.load_gguf(path)
