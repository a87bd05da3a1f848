import pytest
import torch

from tests.llm.conftest import tiny_llama
from tuneless.errors import TunelessError
from tuneless.llm import fold_llm, load_folded, save_folded
from tuneless.llm.source import load_llm

X = torch.randint(0, 97, (1, 10), generator=torch.Generator().manual_seed(2))


def test_uniform_fold_round_trips_through_plain_transformers(tmp_path):
    from transformers import AutoModelForCausalLM

    f = fold_llm(tiny_llama(), sparsity=0.3)
    f.save_pretrained(tmp_path / "m")
    back = AutoModelForCausalLM.from_pretrained(tmp_path / "m").eval()  # no tuneless involved
    assert back.config.num_attention_heads == f.config.num_attention_heads
    with torch.no_grad():
        assert torch.equal(back(X).logits, f(X).logits)


def test_per_layer_sizes_round_trip_through_tuneless(tmp_path):
    from transformers import AutoModelForCausalLM

    f = fold_llm(tiny_llama(layers=3), schedule={1: (0.5, 0.5), 2: (0.0, 0.25)})
    save_folded(f, tmp_path / "m")
    back = load_folded(tmp_path / "m")
    assert back.config.tuneless_layer_sizes == [[4, 2, 32], [2, 1, 16], [4, 2, 24]]
    with torch.no_grad():
        assert torch.equal(back(X).logits, f(X).logits)
    with pytest.raises(RuntimeError, match="mismatched_sizes"):  # plain transformers cannot
        AutoModelForCausalLM.from_pretrained(tmp_path / "m")  # rebuild per-layer sizes


def test_loading_per_layer_sizes_prints_no_transformers_warning(tmp_path, capfd):
    """transformers' config validation reads per-layer fields globally and warned on every
    load of a per-layer folder; nothing of ours reads them, so the load is quiet."""
    import logging

    f = fold_llm(tiny_llama(layers=3), schedule={1: (0.5, 0.5), 2: (0.0, 0.25)})
    save_folded(f, tmp_path / "m")
    for load in (load_folded, load_llm):  # the API's loader and the command line's
        logging.Logger.warning_once.cache_clear()  # transformers prints each message once
        capfd.readouterr()
        load(str(tmp_path / "m"))
        assert "per-layer attribute" not in capfd.readouterr().err, load.__name__


def test_save_refuses_existing_folder(tmp_path):
    (tmp_path / "m").mkdir()
    with pytest.raises(TunelessError, match="already exists"):
        save_folded(tiny_llama(), tmp_path / "m")


def test_load_needs_a_model_folder(tmp_path):
    with pytest.raises(TunelessError, match="config.json"):
        load_folded(tmp_path)


def test_folder_with_its_own_code_needs_trust_code(tmp_path):
    """A config's auto_map names Python files in the folder: never run without trust_code."""
    import json

    save_folded(tiny_llama(), tmp_path / "m")
    cfg = json.loads((tmp_path / "m" / "config.json").read_text())
    cfg["auto_map"] = {"AutoConfig": "evil.EvilConfig",
                       "AutoModelForCausalLM": "evil.EvilModel"}
    (tmp_path / "m" / "config.json").write_text(json.dumps(cfg))
    marker = tmp_path / "PWNED"
    (tmp_path / "m" / "evil.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    try:  # transformers either refuses (our one-line error) or uses its own Llama class
        model = load_folded(tmp_path / "m")
        assert type(model).__module__.startswith("transformers.")
    except TunelessError as exc:
        assert "trust_code" in str(exc)
    assert not marker.exists()
