"""`tuneless compress` on language models: a Hugging Face folder in, a folder that plain
transformers loads out (per-layer sizes through the shipped modeling file), with identical
logits in a process where tuneless cannot even be imported."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from tests.llm.test_adapter_contract import FAMILIES, _config
from tuneless.cli import main

IDS = torch.randint(0, 90, (1, 16), generator=torch.Generator().manual_seed(0))

LOAD_WITHOUT_TUNELESS = r"""
import sys
sys.modules["tuneless"] = None  # any `import tuneless` now fails
import torch
from transformers import AutoModelForCausalLM
folder, ids, out, trust = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4] == "1"
model = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=trust).eval()
with torch.no_grad():
    torch.save(model(input_ids=torch.load(ids)).logits, out)
"""


# the same, for many folders in one process (one start-up of torch and transformers instead
# of one per folder); each folder's failure is written beside its logits, not raised
LOAD_MANY_WITHOUT_TUNELESS = r"""
import sys, traceback
sys.modules["tuneless"] = None  # any `import tuneless` now fails
import torch
from transformers import AutoModelForCausalLM
ids = torch.load(sys.argv[1])
for folder, out in zip(sys.argv[2::2], sys.argv[3::2]):
    try:
        model = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True).eval()
        with torch.no_grad():
            torch.save(model(input_ids=ids).logits, out)
    except Exception:
        open(out + ".err", "w").write(traceback.format_exc())
"""


def _tiny_folder(path, hidden=64, heads=4, kv=2, layers=4):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(
        vocab_size=97, hidden_size=hidden, intermediate_size=48, num_hidden_layers=layers,
        num_attention_heads=heads, num_key_value_heads=kv, max_position_embeddings=64,
        bos_token_id=1, eos_token_id=2)).eval()
    model.save_pretrained(path)
    return model


def _logits_without_tuneless(folder, tmp_path, trust: bool):
    torch.save(IDS, tmp_path / "ids.pt")
    subprocess.run([sys.executable, "-c", LOAD_WITHOUT_TUNELESS, str(folder),
                    str(tmp_path / "ids.pt"), str(tmp_path / "logits.pt"), "1" if trust else "0"],
                   check=True, capture_output=True, cwd=tmp_path)
    return torch.load(tmp_path / "logits.pt")


def _logits(folder):
    from tuneless.llm import load_folded

    with torch.no_grad():
        return load_folded(folder)(input_ids=IDS).logits


def test_uniform_fold_loads_in_plain_transformers_without_tuneless(tmp_path, capsys):
    _tiny_folder(tmp_path / "dense")
    out = tmp_path / "small"
    assert main(["compress", str(tmp_path / "dense"), "--method", "fold", "--sparsity", "0.3",
                 "--option", "repair=none", "-o", str(out)]) == 0
    text = capsys.readouterr().out
    assert "removed" in text and "loads with AutoModelForCausalLM.from_pretrained" in text
    assert not (out / "modeling_tuneless.py").exists()
    assert torch.equal(_logits_without_tuneless(out, tmp_path, trust=False), _logits(out))


def test_quiet_silences_the_hugging_face_bars_too(tmp_path, capsys):
    from transformers.utils import logging as hf_logging

    _tiny_folder(tmp_path / "dense")
    hf_logging.enable_progress_bar()
    capsys.readouterr()  # the dense folder's own writing
    assert main(["--quiet", "compress", str(tmp_path / "dense"), "--method", "fold",
                 "--sparsity", "0.3", "--option", "repair=none", "-o",
                 str(tmp_path / "small")]) == 0
    err = capsys.readouterr().err
    assert "Loading weights" not in err and "Writing model shards" not in err, err
    assert hf_logging.is_progress_bar_enabled()  # put back after the command


def test_per_layer_sizes_load_with_the_shipped_modeling_file(tmp_path):
    _tiny_folder(tmp_path / "dense")
    out = tmp_path / "small"
    schedule = json.dumps({"1": [0.0, 0.5], "2": [0.5, 0.25]})
    assert main(["compress", str(tmp_path / "dense"), "--method", "fold-naive", "--sparsity",
                 "0.2", "--option", f"schedule={schedule}", "-o", str(out)]) == 1  # both given
    assert main(["compress", str(tmp_path / "dense"), "--method", "fold-naive",
                 "--sparsity", "0", "--option", "schedule=paper-mlp", "-o", str(out)]) == 1
    from tuneless.llm import fold_llm, load_folded, save_folded

    small = fold_llm(load_folded(tmp_path / "dense"),
                     schedule={1: (0.0, 0.5), 2: (0.5, 0.25)})
    save_folded(small, out)
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["tuneless_layer_sizes"][1] == [4, 2, 24] and "auto_map" in cfg
    # transformers' own per-layer record, for a loader that builds such layers natively
    assert cfg["per_layer_config"]["2"] == {"num_attention_heads": 2, "num_key_value_heads": 1,
                                            "intermediate_size": 36}
    ours = _logits(out)
    with torch.no_grad():
        assert torch.allclose(ours, small(input_ids=IDS).logits, atol=1e-6)
    assert torch.equal(_logits_without_tuneless(out, tmp_path, trust=True), ours)


def test_baselines_through_the_cli(tmp_path, capsys):
    _tiny_folder(tmp_path / "dense")
    assert main(["compress", str(tmp_path / "dense"), "--method", "magnitude", "--sparsity",
                 "0.3", "-o", str(tmp_path / "small")]) == 0
    assert torch.isfinite(_logits(tmp_path / "small")).all()
    # structured OBS, data-free on the model's own samples (BOS from the config)
    assert main(["compress", str(tmp_path / "dense"), "--method", "obs", "--sparsity", "0.3",
                 "--option", "calib_samples=2", "--option", "calib_len=8",
                 "-o", str(tmp_path / "obs")]) == 0
    assert torch.isfinite(_logits(tmp_path / "obs")).all()
    capsys.readouterr()
    # factored projections would be a folder nothing can load: refused, nothing written
    assert main(["compress", str(tmp_path / "dense"), "--method", "svd", "--sparsity", "0.3",
                 "-o", str(tmp_path / "svd")]) == 1
    assert "no transformers class can load" in capsys.readouterr().err
    assert not (tmp_path / "svd").exists()


def test_llm_cli_errors_are_one_line(tmp_path, capsys):
    _tiny_folder(tmp_path / "dense")
    capsys.readouterr()
    for extra, message in ((["--method", "prune-l1"], "does not apply to language models"),
                           (["--method", "fold", "--channel-ratio", "0.5"], "take --sparsity"),
                           (["--method", "fold", "--device", "cuda:3"], "no CUDA device")):
        argv = ["compress", str(tmp_path / "dense"), "-o", str(tmp_path / "x")] + extra
        if "--channel-ratio" not in extra:
            argv += ["--sparsity", "0.2"]
        assert main(argv) == 1
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1


def test_head_count_that_does_not_divide_hidden_size_saves_and_loads(tmp_path):
    # 8 -> 6 heads at hidden 256: transformers refuses such a config (hidden % heads), so
    # the sizes go the per-layer way and the shipped modeling file rebuilds them
    _tiny_folder(tmp_path / "dense", hidden=256, heads=8, kv=8, layers=2)
    out = tmp_path / "small"
    assert main(["compress", str(tmp_path / "dense"), "--method", "fold-naive", "--sparsity",
                 "0.2", "--option", "head_ratio=0.25", "-o", str(out)]) == 0
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["num_attention_heads"] == 8 and cfg["tuneless_layer_sizes"][0][0] == 6
    assert torch.equal(_logits_without_tuneless(out, tmp_path, trust=True), _logits(out))


def test_broken_language_model_inputs_are_one_line(tmp_path, capsys):
    (tmp_path / "m.gguf").write_bytes(b"GGUF" + bytes(60))
    (tmp_path / "hf").mkdir()
    (tmp_path / "hf" / "config.json").write_text('{"model_type": "llama"}')
    for src, message in ((tmp_path / "m.gguf", "cannot load GGUF"),
                         (tmp_path / "hf", "hf")):
        argv = ["compress", str(src), "--method", "fold", "--sparsity", "0.2", "-o",
                str(tmp_path / "out")]
        assert main(argv) == 1
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1, err
        assert not (tmp_path / "out").exists()


def test_output_folder_has_ordinary_permissions(tmp_path):
    import os
    import stat

    _tiny_folder(tmp_path / "dense")
    out = tmp_path / "small"
    assert main(["compress", str(tmp_path / "dense"), "--method", "fold-naive", "--sparsity",
                 "0.3", "-o", str(out)]) == 0
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(out.stat().st_mode) == 0o777 & ~umask
    for f in out.iterdir():
        assert stat.S_IMODE(f.stat().st_mode) == 0o666 & ~umask, f.name


CLI_FAMILIES = [f for f in FAMILIES if f != "llama"]  # llama: above


@pytest.fixture(scope="module")
def every_family_folded(tmp_path_factory):
    """{family: (folder, its logits loaded without tuneless) or the exception}: each tiny
    random model's default fold written by the CLI, then every folder loaded in ONE process
    where tuneless cannot be imported."""
    root = tmp_path_factory.mktemp("families")
    done: dict = {}
    for family in CLI_FAMILIES:
        try:
            cfg, cls = _config(family, layers=8)
            torch.manual_seed(0)
            cls(cfg).eval().save_pretrained(root / f"dense_{family}")
            out = root / f"small_{family}"  # a name of its own: its shipped modeling module
            code = main(["compress", str(root / f"dense_{family}"), "--method", "fold",
                         "--sparsity", "0.1", "--option", "calib_samples=4", "--option",
                         "calib_len=16", "-o", str(out)])
            done[family] = out if code == 0 else AssertionError(f"compress exited {code}")
        except Exception as exc:  # noqa: BLE001 — reported by that family's own test
            done[family] = exc
    torch.save(IDS, root / "ids.pt")
    pairs = [a for f, out in done.items() if not isinstance(out, Exception)
             for a in (str(out), str(root / f"logits_{f}.pt"))]
    subprocess.run([sys.executable, "-c", LOAD_MANY_WITHOUT_TUNELESS, str(root / "ids.pt"),
                    *pairs], check=True, capture_output=True, cwd=root)
    return root, done


@pytest.mark.parametrize("family", CLI_FAMILIES)
def test_every_family_through_the_cli_loads_without_tuneless(family, every_family_folded):
    """The default fold (per-layer sizes) of each family's tiny random model, written by the
    CLI, loads in plain transformers with the shipped modeling file: identical logits."""
    root, done = every_family_folded
    out = done[family]
    if isinstance(out, Exception):
        raise out
    err = root / f"logits_{family}.pt.err"
    assert not err.exists(), err.read_text()
    sizes = json.loads((out / "config.json").read_text())["tuneless_layer_sizes"]
    assert len({tuple(s) for s in sizes}) > 1  # per-layer: the paper's MLP schedule
    assert torch.equal(torch.load(root / f"logits_{family}.pt"), _logits(out))


def test_compress_help_names_the_language_model_methods(capsys, monkeypatch):
    from tuneless.commands.compress_llm import LLM_METHODS

    monkeypatch.setenv("COLUMNS", "1000")  # no wrapping inside hyphenated names
    with pytest.raises(SystemExit):
        main(["compress", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "for a language model one of:" in text
    assert all(m in text for m in LLM_METHODS)


def test_a_folder_weights_file_bad_json_and_a_too_short_sample_are_one_line(tmp_path, capsys):
    _tiny_folder(tmp_path / "dense")
    capsys.readouterr()
    weights = tmp_path / "dense" / "model.safetensors"  # its folder holds the config: used
    assert main(["--quiet", "compress", str(weights), "--method", "fold", "--sparsity", "0.3",
                 "--option", "repair=none", "-o", str(tmp_path / "small")]) == 0
    assert (tmp_path / "small" / "config.json").is_file()
    alone = tmp_path / "alone"
    alone.mkdir()
    (alone / "model.safetensors").write_bytes(weights.read_bytes())
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "config.json").write_text("{not json")
    cases = [([str(alone / "model.safetensors")], "weights without their architecture"),
             ([str(bad)], "cannot read"),
             ([str(tmp_path / "dense"), "--option", "calib_len=1"],
              "calib_len must be at least 2, got 1")]
    for model, expected in cases:
        capsys.readouterr()
        code = main(["compress", *model[:1], "--method", "fold", "--sparsity", "0.3",
                     *model[1:], "-o", str(tmp_path / "x")])
        err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()
               and not ln.startswith("Loading")]
        assert code == 1 and len(err) == 1 and expected in err[0], err
    assert not (tmp_path / "x").exists()


def test_stream_folds_layer_by_layer_as_fold_checkpoint_does(tmp_path, capsys, monkeypatch):
    """--stream on (and auto, once the weights pass the memory share) writes what
    fold_checkpoint writes, and the folder loads without tuneless with the same logits."""
    from tuneless.commands import compress_llm
    from tuneless.llm import fold_checkpoint

    _tiny_folder(tmp_path / "dense")
    args = ["--quiet", "compress", str(tmp_path / "dense"), "--method", "fold-naive",
            "--sparsity", "0.2", "--option", "schedule=uniform"]
    assert main([*args, "-o", str(tmp_path / "on"), "--stream", "on"]) == 0
    assert "streamed, one layer in memory" in capsys.readouterr().out
    fold_checkpoint(tmp_path / "dense", tmp_path / "ref", 0.2, schedule="uniform",
                    repair="none", progress=False)
    assert torch.equal(_logits(tmp_path / "on"), _logits(tmp_path / "ref"))
    assert torch.equal(_logits_without_tuneless(tmp_path / "on", tmp_path, trust=False),
                       _logits(tmp_path / "on"))
    monkeypatch.setattr(compress_llm, "STREAM_SHARE_OF_MEMORY", 0.0)
    assert main([*args, "-o", str(tmp_path / "auto")]) == 0
    assert "streamed" in capsys.readouterr().out
    assert main([*args, "-o", str(tmp_path / "off"), "--stream", "off"]) == 0
    assert "streamed" not in capsys.readouterr().out
    assert main([*args, "-o", str(tmp_path / "bad"), "--stream", "on", "--option",
                 "refin=1"]) == 1
    assert "unknown fold-naive (streamed) option(s): refin (did you mean refine?)" in \
        capsys.readouterr().err
    assert main(["compress", str(tmp_path / "dense"), "--method", "magnitude", "--sparsity",
                 "0.2", "-o", str(tmp_path / "mag"), "--stream", "on"]) == 1
    assert "magnitude runs in memory" in capsys.readouterr().err


def test_obs_streams_as_obs_checkpoint_does(tmp_path, capsys):
    from tuneless.llm import obs_checkpoint

    _tiny_folder(tmp_path / "dense")
    assert main(["--quiet", "compress", str(tmp_path / "dense"), "--method", "obs",
                 "--sparsity", "0.2", "--option", "calib_samples=4", "--option", "calib_len=16",
                 "-o", str(tmp_path / "on"), "--stream", "on"]) == 0
    assert "obs (streamed, one layer in memory)" in capsys.readouterr().out
    obs_checkpoint(tmp_path / "dense", tmp_path / "ref", 0.2, calib_samples=4, calib_len=16,
                   progress=False)
    assert torch.equal(_logits(tmp_path / "on"), _logits(tmp_path / "ref"))
