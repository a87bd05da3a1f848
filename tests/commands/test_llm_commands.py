"""The language-model commands beside compress: generate, inspect, and models named by a
Hugging Face Hub id (the download stubbed: no network here)."""

from __future__ import annotations

import pytest
import torch

from tests.commands.test_compress_llm import _tiny_folder
from tuneless.cli import main


def _with_tokenizer(folder):
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, **{chr(i): i - 30 for i in range(33, 127)}}
    tok = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>")),
        bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    tok.save_pretrained(folder)
    return tok


def test_generate_continues_a_prompt_greedily(tmp_path, capsys):
    model = _tiny_folder(tmp_path / "m")
    tok = _with_tokenizer(tmp_path / "m")
    assert main(["generate", str(tmp_path / "m"), "abc", "--max-new-tokens", "5"]) == 0
    text = capsys.readouterr().out.strip()
    ids = tok("abc", return_tensors="pt")
    with torch.no_grad():
        want = model.generate(**ids, max_new_tokens=5, do_sample=False, pad_token_id=2)
    assert text == tok.decode(want[0], skip_special_tokens=True)


def test_generate_errors_are_one_line(tmp_path, capsys):
    _tiny_folder(tmp_path / "m")  # no tokenizer saved
    capsys.readouterr()
    for argv, message in ((["generate", str(tmp_path / "m"), "abc"], "no tokenizer"),
                          (["generate", str(tmp_path / "m"), "abc", "--max-new-tokens", "0"],
                           "at least 1"),
                          (["generate", str(tmp_path / "nothing.pt"), "abc"], "neither")):
        assert main(argv) == 1
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1, err


def test_inspect_shows_per_layer_sizes_of_a_language_model(tmp_path, capsys):
    _tiny_folder(tmp_path / "dense")
    assert main(["compress", str(tmp_path / "dense"), "--method", "fold-naive", "--sparsity",
                 "0.2", "-o", str(tmp_path / "small")]) == 0
    capsys.readouterr()
    assert main(["inspect", str(tmp_path / "small")]) == 0
    out = capsys.readouterr().out
    assert "LlamaForCausalLM (family llama)" in out and "MLP channels" in out
    rows = [line.split() for line in out.splitlines() if line.strip()[:1].isdigit()]
    assert len(rows) == 4 and any(int(r[4]) < 48 for r in rows)  # folded MLPs


def test_inspect_reads_gpt2_conv1d_and_says_its_heads_stay(tmp_path, capsys):
    from tests.llm.test_adapter_contract import _config

    cfg, cls = _config("gpt2", layers=2)
    torch.manual_seed(0)
    cls(cfg).eval().save_pretrained(tmp_path / "gpt2")
    capsys.readouterr()
    assert main(["inspect", str(tmp_path / "gpt2")]) == 0
    out = capsys.readouterr().out
    rows = [line.split() for line in out.splitlines() if line.strip()[:1].isdigit()]
    assert [r[1:5] for r in rows] == [["4", "4", "16", "256"]] * 2
    assert "input rows merge" in out and "heads stay" in out and "kv groups" not in out


def test_hub_id_downloads_then_compresses(tmp_path, monkeypatch, capsys):
    import huggingface_hub

    _tiny_folder(tmp_path / "snapshot")
    asked = {}

    def fake_download(repo_id, allow_patterns=None, **_):
        asked.update(repo=repo_id, patterns=allow_patterns)
        return str(tmp_path / "snapshot")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_download)
    monkeypatch.chdir(tmp_path)
    assert main(["compress", "some-org/tiny-llama", "--method", "fold-naive", "--sparsity",
                 "0.2", "-o", str(tmp_path / "out")]) == 0
    assert asked["repo"] == "some-org/tiny-llama"
    assert "*.safetensors" in asked["patterns"] and "*.bin" not in asked["patterns"]
    assert (tmp_path / "out" / "config.json").is_file()


def test_hub_id_offline_is_one_line(tmp_path, monkeypatch, capsys):
    import huggingface_hub

    def offline(repo_id, **_):
        raise OSError("We couldn't connect to 'https://huggingface.co' to load the files")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", offline)
    monkeypatch.chdir(tmp_path)
    assert main(["compress", "hf:some-org/tiny-llama", "--method", "fold", "--sparsity", "0.2",
                 "-o", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err.strip()
    assert "cannot download 'some-org/tiny-llama'" in err and "offline?" in err
    assert len(err.splitlines()) == 1 and not (tmp_path / "out").exists()


@pytest.mark.parametrize("spec, repo", [("org/name", "org/name"), ("hf:org/name", "org/name"),
                                        ("models/x.pt", None), ("smollm2", None),
                                        ("a/b/c", None)])
def test_what_counts_as_a_hub_id(spec, repo, tmp_path, monkeypatch):
    from tuneless.llm.source import hub_id

    monkeypatch.chdir(tmp_path)
    assert hub_id(spec) == repo
    (tmp_path / "org").mkdir()
    (tmp_path / "org" / "name").mkdir()
    assert hub_id("org/name") is None  # a local folder wins
