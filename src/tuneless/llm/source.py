"""Where a language model given on the command line comes from: the packaged SmolLM2
("smollm2"), a .gguf file, a Hugging Face model folder, or a Hub repository id
("org/name" that is not a local path, or "hf:org/name"), downloaded with huggingface_hub.
One loader for compress, eval, generate and inspect. A Hub id of an image classifier
downloads the same way and then goes the CNN way (local_source, tuneless.hf_vision)."""

from __future__ import annotations

import re
from pathlib import Path

from tuneless.errors import TunelessError

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_FILE_SUFFIXES = {".pt", ".pth", ".bin", ".safetensors", ".gguf", ".onnx", ".pt2", ".json"}
# what a causal LM folder needs; weights in safetensors only (a .bin is a pickle: it can run code)
_TOKENIZER_FILES = ("tokenizer*", "*.model", "vocab.*", "merges.txt", "*.tiktoken")
HUB_FILES = ["*.json", "*.safetensors", "tokenizer*", "*.model", "*.txt", "*.tiktoken"]


def hub_id(spec: str) -> str | None:
    """The Hub repository a MODEL argument names, or None for a local path or a name."""
    if spec.startswith("hf:"):
        repo = spec[3:]
        if not _HUB_ID.match(repo):
            raise TunelessError(f"{spec!r}: a Hub model is hf:ORG/NAME")
        return repo
    path = Path(spec)
    if path.exists() or path.suffix.lower() in _FILE_SUFFIXES:
        return None
    return spec if _HUB_ID.match(spec) else None


def is_llm_source(spec: str) -> bool:
    """A Hugging Face model folder (not an image classifier's: tuneless.hf_vision), a GGUF
    file, a Hub id, or the packaged SmolLM2."""
    if spec == "smollm2" or hub_id(spec) is not None:
        return True
    path = Path(spec)
    if path.is_dir():
        from tuneless.hf_vision import is_image_classifier_folder

        return (path / "config.json").is_file() and not is_image_classifier_folder(path)
    if path.suffix == ".gguf":
        return True
    try:
        with open(path, "rb") as fh:
            return fh.read(4) == b"GGUF"
    except OSError:
        return False


def download(repo: str) -> Path:
    """A local snapshot of a Hub repository (config, safetensors weights, tokenizer files);
    a one-line error when it cannot be fetched (offline, unknown or gated repository)."""
    try:
        from huggingface_hub import snapshot_download
    except ImportError as exc:
        from tuneless.cli import missing_dependency

        raise TunelessError(missing_dependency("huggingface_hub")) from exc
    try:
        folder = Path(snapshot_download(repo, allow_patterns=HUB_FILES))
    except Exception as exc:  # network, authorisation and not-found errors alike
        reason = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else ""
        raise TunelessError(f"cannot download {repo!r} from the Hugging Face Hub "
                            f"({type(exc).__name__}{': ' + reason if reason else ''}); "
                            "offline? download it where the network allows and pass the "
                            "folder") from exc
    if not (folder / "config.json").is_file():
        raise TunelessError(f"Hub repository {repo!r} has no config.json: not a transformers "
                            "model")
    if not any(folder.glob("*.safetensors")):
        raise TunelessError(f"Hub repository {repo!r} has no .safetensors weights (pickled "
                            ".bin weights can run code and are not downloaded)")
    return folder


def local_source(spec: str) -> str:
    """MODEL with a Hub id replaced by its downloaded folder (a language model or an image
    classifier: the folder's config.json then says which), a Hugging Face folder's
    .safetensors weights file by that folder, anything else unchanged."""
    repo = hub_id(spec)
    if repo is not None:
        return str(download(repo))
    path = Path(spec)
    if path.suffix == ".safetensors" and path.is_file() and (path.parent / "config.json").is_file():
        return str(path.parent)
    return spec


def load_llm(spec: str, *, trust_code: bool = False, device: str = "cpu",
             need_tokenizer: bool = False):
    """(model, tokenizer or None) of a language model named on the command line."""
    import transformers  # noqa: F401  (every source needs it: a missing one is named first)

    from tuneless.llm.gguf import load_gguf, load_smollm2
    from tuneless.llm.save import load_folded

    repo = hub_id(spec)
    path = download(repo) if repo is not None else Path(spec)
    if spec == "smollm2":
        model, tok = load_smollm2()
    elif path.is_dir():
        if not (path / "config.json").is_file():
            raise TunelessError(f"{spec}: a model folder needs a config.json")
        tok = _tokenizer(path, trust_code)  # first: a missing one is named before any loading
        if need_tokenizer and tok is None:
            raise TunelessError(f"no tokenizer in {spec} (save it beside the model)")
        model = load_folded(path, trust_code=trust_code)
    elif path.is_file() and is_llm_source(str(path)):
        model, tok = load_gguf(path)
    else:
        raise TunelessError(f"model {spec!r} is neither 'smollm2', a .gguf file, a model "
                            "folder nor a Hub id (ORG/NAME)")
    if need_tokenizer and tok is None:
        raise TunelessError(f"no tokenizer in {spec} (save it beside the model)")
    return model.to(device), tok


def _tokenizer(folder: Path, trust_code: bool):
    from transformers import AutoTokenizer

    from tuneless.llm.hf import quiet_config_validation

    if not any(any(folder.glob(pattern)) for pattern in _TOKENIZER_FILES):
        return None  # transformers would build an empty tokenizer from config.json alone
    try:
        with quiet_config_validation():  # it reads config.json too
            return AutoTokenizer.from_pretrained(str(folder), trust_remote_code=trust_code)
    except (OSError, ValueError, KeyError):
        return None  # weights without tokenizer files: still foldable (self repair uses config)
