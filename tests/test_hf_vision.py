"""Hugging Face image classifiers (tuneless.hf_vision): tiny random configs of four
families through the engine, the command line and save/load."""

from __future__ import annotations

import json

import pytest
import torch

import tuneless
from tuneless.cli import main
from tuneless.errors import TunelessError
from tuneless.hf_vision import REF, ImageClassifier, build_image_classifier, load_image_classifier

tf = pytest.importorskip("transformers")
X = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def _config(family: str):
    if family == "resnet":  # BatchNorm, projection shortcuts
        return tf.ResNetConfig(embedding_size=16, hidden_sizes=[16, 32, 64, 96],
                               depths=[1, 1, 1, 1], layer_type="basic", num_labels=10)
    if family == "convnext":  # depthwise convs, channels-last LayerNorm, layer scale
        return tf.ConvNextConfig(hidden_sizes=[16, 32, 64, 96], depths=[1, 1, 1, 1],
                                 num_labels=10, image_size=32)
    if family == "vit":  # attention; its MLPs are the reducible groups
        return tf.ViTConfig(image_size=32, patch_size=8, hidden_size=64, num_hidden_layers=2,
                            num_attention_heads=4, intermediate_size=128, num_labels=10)
    if family == "mobilenet_v2":  # int(...) of sizes in its forward
        return tf.MobileNetV2Config(image_size=32, num_labels=10, depth_multiplier=0.5)
    if family == "pp_lcnet":  # its head's output comes back as last_hidden_state, no logits
        return tf.AutoConfig.for_model("pp_lcnet", num_labels=10, scale=0.25)
    if family == "levit":  # BatchNorm1d over flattened tokens, reshaped back (reshape_as)
        return tf.LevitConfig(image_size=32, hidden_sizes=[32, 48, 64],
                              num_attention_heads=[2, 3, 4], depths=[1, 1, 1],
                              key_dim=[8, 8, 8], num_labels=10,
                              architectures=["LevitForImageClassification"])
    if family == "perceiver":  # len(x.shape), np.prod of a shape, nn.Softmax built in forward
        return tf.PerceiverConfig(num_latents=8, d_latents=32, d_model=32, num_blocks=1,
                                  num_self_attends_per_block=1, num_self_attention_heads=2,
                                  num_cross_attention_heads=1, image_size=32, num_labels=10,
                                  architectures=["PerceiverForImageClassificationLearned"])
    raise AssertionError(family)


FAMILIES = ["resnet", "convnext", "vit", "mobilenet_v2", "pp_lcnet", "levit", "perceiver"]


def _hf(family: str):
    torch.manual_seed(0)
    return tf.AutoModelForImageClassification.from_config(_config(family)).eval()


@pytest.mark.parametrize("family", FAMILIES)
def test_every_group_rewritten_whole_changes_nothing_and_a_fold_is_smaller(family):
    model = _hf(family)  # as transformers gives it: keyword input, a ModelOutput back

    def logits(m, x):  # PPLCNet's head output comes back as its first field, not .logits
        out = m(pixel_values=x)
        return out["logits"] if "logits" in out else out[0]

    with torch.no_grad():
        ref = logits(model, X)
        same = tuneless.prune(model, channel_ratio=0.0, example_inputs=X)
        assert torch.allclose(logits(same, X), ref, atol=1e-5)
        small = tuneless.fold(model, sparsity=0.3, example_inputs=X, allocation="uniform")
        out = logits(small, torch.randn(5, 3, 32, 32))  # another batch size
        assert torch.equal(ImageClassifier(model)(X), ref)  # the wrapper's output is the same
    assert ref.shape == (2, 10) and out.shape == (5, 10)
    before = sum(p.numel() for p in model.parameters())
    assert sum(p.numel() for p in small.parameters()) < 0.8 * before


def test_a_folder_compresses_evaluates_and_loads_without_pickle(tmp_path, capsys):
    _hf("resnet").save_pretrained(tmp_path / "dense")
    out = tmp_path / "small.pt"
    assert main(["--quiet", "compress", str(tmp_path / "dense"), "--method", "fold",
                 "--sparsity", "0.3", "--option", "allocation=uniform", "-o", str(out)]) == 0
    capsys.readouterr()
    assert main(["eval", str(out)]) == 0  # no dataset: size, FLOPs, latency
    assert "no test data: size, FLOPs and latency at input 3,224,224" in capsys.readouterr().out
    small = tuneless.load(out)
    assert small.tuneless_arch["ref"] == REF
    from tuneless.modelio import default_input_shape

    assert default_input_shape(small) == (3, 224, 224)  # ResNetConfig's image size
    again = tuneless.fold(load_image_classifier(tmp_path / "dense"),
                          sparsity=0.3, example_inputs=X, allocation="uniform")
    with torch.no_grad():
        assert torch.allclose(small(X), again(X), atol=1e-6)
    assert sum(p.numel() for p in small.parameters()) < sum(
        p.numel() for p in _hf("resnet").parameters())


def test_a_wrapped_model_saves_and_loads_with_its_config(tmp_path):
    model = ImageClassifier(_hf("convnext"))
    small = tuneless.fold(model, sparsity=0.3, example_inputs=X, allocation="uniform")
    tuneless.save(small, tmp_path / "s.pt")
    back = tuneless.load(tmp_path / "s.pt")
    with torch.no_grad():
        assert torch.allclose(back(X), small(X), atol=1e-6)


def test_image_folders_are_not_language_models_and_bad_folders_are_one_line(tmp_path):
    from tuneless.llm.source import is_llm_source
    from tuneless.modelio import load_model

    _hf("vit").save_pretrained(tmp_path / "vit")
    assert not is_llm_source(str(tmp_path / "vit"))
    (tmp_path / "other").mkdir()
    with pytest.raises(TunelessError, match="not a transformers image classifier"):
        load_model(tmp_path / "other")
    config = json.loads((tmp_path / "vit" / "config.json").read_text())
    config["model_type"] = "no-such-family"  # nothing transformers has: refused, not run
    (tmp_path / "vit" / "config.json").write_text(json.dumps(config))
    with pytest.raises(TunelessError, match="cannot load the image classifier"):
        load_model(tmp_path / "vit")
    with pytest.raises(TunelessError, match="needs a transformers config"):
        build_image_classifier({"hidden_size": 3})


@pytest.mark.parametrize("architecture", ["LevitForImageClassification",
                                          "LevitForImageClassificationWithTeacher"])
def test_a_model_type_with_several_classifier_classes_builds_the_one_named(architecture):
    config = _config("levit").to_dict() | {"architectures": [architecture]}
    assert type(build_image_classifier(config).model).__name__ == architecture


def test_classifiers_that_need_more_than_pixels_are_refused_in_one_line():
    from tuneless.hf_vision import check_pixel_classifier

    gpt = tf.ImageGPTConfig(vocab_size=17, n_positions=16, n_embd=8, n_layer=1, n_head=2,
                            num_labels=10)  # classifies colour-cluster token ids
    with pytest.raises(TunelessError, match=r"^ImageGPTForImageClassification needs a text "
                                            r"prompt \(input_ids\)"):
        build_image_classifier(gpt.to_dict())

    class Patches(torch.nn.Module):  # Siglip2's signature: patch sequences and their shapes
        def forward(self, pixel_values=None, pixel_attention_mask=None, spatial_shapes=None):
            return pixel_values

    with pytest.raises(TunelessError, match="patch sequences"):
        check_pixel_classifier(Patches())


def test_a_hub_id_of_an_image_classifier_downloads_then_goes_the_image_way(tmp_path,
                                                                          monkeypatch, capsys):
    """The download is stubbed (no network here): it hands back a local folder, as
    huggingface_hub's cache would."""
    import huggingface_hub

    _hf("mobilenet_v2").save_pretrained(tmp_path / "snapshot")
    asked = []

    def snapshot(repo_id, **_):
        asked.append(repo_id)
        return str(tmp_path / "snapshot")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot)
    out = tmp_path / "small.pt"
    assert main(["--quiet", "compress", "hf:some-org/tiny-mobilenet", "--method", "fold",
                 "--sparsity", "0.3", "--option", "allocation=uniform", "-o", str(out)]) == 0
    assert asked == ["some-org/tiny-mobilenet"]
    assert main(["inspect", "some-org/tiny-mobilenet"]) == 0
    assert "ImageClassifier" in capsys.readouterr().out
    assert main(["eval", "hf:some-org/tiny-mobilenet", str(out)]) == 0
    assert tuneless.load(out).tuneless_arch["ref"] == REF
