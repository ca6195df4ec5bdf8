"""PEFT LoRA adapters on disk: checking that one fits a base model, reading its weights, making a new one.

Adapters are stored in PEFT's own ``save_pretrained`` layout, so an adapter
trained with plain PEFT anywhere else can be dropped into an expert directory.
Serving reads them with :func:`read_lora_weights` (plain tensors, applied by
``experts.lora``) rather than through ``PeftModel``, whose per-pass bookkeeping
grows with the number of adapters loaded (docs/benchmarks.md, section 6).
"""

from __future__ import annotations

import json
import logging
import math
import re
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

from experts.errors import AdapterMismatchError, MissingFileError

logger = logging.getLogger(__name__)

#: File names fixed by PEFT's ``save_pretrained``.
ADAPTER_CONFIG_FILE = "adapter_config.json"
ADAPTER_WEIGHTS_FILE = "adapter_model.safetensors"
ADAPTER_WEIGHTS_FILE_LEGACY = "adapter_model.bin"

#: Where LoRA goes by default: every attention projection and dense layer of a
#: BERT-style encoder (the recipe measured in DESIGN.md).
DEFAULT_TARGET_MODULES = ("query", "key", "value", "dense")

_LORA_KEY = re.compile(r"^(?:base_model\.model\.)?(?P<module>.+)\.lora_(?P<which>A|B)(?:\.[^.]+)?\.weight$")

#: LoRA options that change the forward pass beyond ``B @ A * scaling`` on a linear layer;
#: an adapter that sets any of them is refused by :func:`read_lora_weights` rather than served wrong.
_UNSUPPORTED_OPTIONS = (
    "use_dora",
    "lora_bias",
    "fan_in_fan_out",
    "modules_to_save",
    "layer_replication",
    "target_parameters",
    "alora_invocation_tokens",
    "use_qalora",
    "trainable_token_indices",
    "velora_config",
    "monteclora_config",
    "arrow_config",
    "kasa_config",
    "use_bdlora",
)


@dataclass(frozen=True)
class LoraWeights:
    """One plain LoRA adapter as tensors: per target module, ``A`` (r, in) and ``B`` (out, r).

    PEFT's scaling (``lora_alpha / r``, or ``/ sqrt(r)`` with rsLoRA, per
    module where ``alpha_pattern`` says so) is already folded into ``B``, so a
    layer's output gains ``x @ A.T @ B.T``: exactly what PEFT's ``Linear``
    adds in eval mode (dropout is off at inference).
    """

    modules: dict[str, tuple[torch.Tensor, torch.Tensor]]

    @property
    def nbytes(self) -> int:
        return sum(a.numel() * a.element_size() + b.numel() * b.element_size() for a, b in self.modules.values())


@contextmanager
def quiet_peft() -> Iterator[None]:
    """Silence PEFT's notices that no user of this service can act on.

    A deprecation inside transformers 5 that PEFT triggers when wrapping or
    running a model, and the note that deleting the active adapter activated
    another (the encoder picks the adapter per call, so which is "active" is moot).
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        warnings.filterwarnings("ignore", message=r"Adapter .* was active which is now deleted", category=UserWarning)
        yield


def read_adapter_config(adapter_dir: Path) -> dict[str, Any]:
    """The parsed ``adapter_config.json`` of a PEFT adapter directory."""
    config_path = Path(adapter_dir) / ADAPTER_CONFIG_FILE
    if not config_path.is_file():
        raise MissingFileError(f"{adapter_dir} is not a PEFT adapter: {ADAPTER_CONFIG_FILE} is missing")
    try:
        config = json.loads(config_path.read_text())
    except (OSError, ValueError) as exc:
        raise AdapterMismatchError(f"{config_path} is not valid JSON: {exc}") from exc
    if not isinstance(config, dict):
        raise AdapterMismatchError(f"{config_path} must hold a JSON object")
    peft_type = config.get("peft_type")
    if peft_type != "LORA":
        raise AdapterMismatchError(
            f"adapter {adapter_dir} has peft_type {peft_type!r}; only 'LORA' adapters are supported"
        )
    return config


def adapter_weights_file(adapter_dir: Path) -> Path:
    """The weights file of a PEFT adapter (safetensors preferred, legacy .bin accepted)."""
    for name in (ADAPTER_WEIGHTS_FILE, ADAPTER_WEIGHTS_FILE_LEGACY):
        candidate = Path(adapter_dir) / name
        if candidate.is_file():
            return candidate
    raise MissingFileError(
        f"{adapter_dir} has no adapter weights: expected {ADAPTER_WEIGHTS_FILE} (or {ADAPTER_WEIGHTS_FILE_LEGACY})"
    )


def _read_tensors(weights: Path) -> dict[str, torch.Tensor]:
    if weights.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(weights), device="cpu")
    return torch.load(weights, map_location="cpu", weights_only=True)


def _pattern_value(patterns: dict[str, Any], module: str, default: Any) -> Any:
    """PEFT's ``rank_pattern``/``alpha_pattern`` lookup: the first key matching the module name's tail."""
    for key, value in patterns.items():
        if re.match(rf"(.*\.)?({key})$", module):
            return value
    return default


def read_lora_weights(adapter_dir: Path) -> LoraWeights:
    """The adapter's LoRA matrices, scaling folded in, ready for ``experts.lora.LoraLayers``.

    Refuses (``AdapterMismatchError``, naming the option) an adapter that uses a
    LoRA variant this plain application would not reproduce: DoRA, trained
    biases, extra trainable modules, and the like.
    """
    config = read_adapter_config(adapter_dir)
    used = [key for key in _UNSUPPORTED_OPTIONS if config.get(key)]
    if config.get("bias", "none") != "none":
        used.append(f"bias={config['bias']!r}")
    if used:
        raise AdapterMismatchError(
            f"adapter {adapter_dir} uses {', '.join(used)}; only plain LoRA on linear layers is served "
            "(lora_alpha, r, rank_pattern, alpha_pattern, use_rslora)"
        )
    tensors = _read_tensors(adapter_weights_file(adapter_dir))
    pairs: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in tensors.items():
        match = _LORA_KEY.match(key)
        if match is None:
            raise AdapterMismatchError(
                f"adapter {adapter_dir} holds tensor {key!r}, which plain LoRA on linear layers does not have"
            )
        pairs.setdefault(match["module"], {})[match["which"]] = tensor
    modules: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    for module, pair in pairs.items():
        if set(pair) != {"A", "B"}:
            raise AdapterMismatchError(
                f"adapter {adapter_dir} has lora_{next(iter(pair))} but not its pair for {module!r}"
            )
        a, b = pair["A"].float(), pair["B"].float()
        rank = a.shape[0]
        if a.ndim != 2 or b.ndim != 2 or b.shape[1] != rank:
            raise AdapterMismatchError(
                f"adapter {adapter_dir}: {module!r} has lora_A {tuple(a.shape)} and lora_B {tuple(b.shape)}, not (r, in) and (out, r)"
            )
        alpha = _pattern_value(config.get("alpha_pattern") or {}, module, config.get("lora_alpha", 8))
        scaling = alpha / math.sqrt(rank) if config.get("use_rslora") else alpha / rank
        modules[module] = (a.contiguous(), (b * scaling).contiguous())
    if not modules:
        raise AdapterMismatchError(f"adapter {adapter_dir} holds no LoRA weights")
    return LoraWeights(modules)


def _lora_shapes(weights: Path) -> dict[str, tuple[int, ...]]:
    if weights.suffix == ".safetensors":
        with safe_open(str(weights), framework="pt") as handle:
            return {key: tuple(handle.get_slice(key).get_shape()) for key in handle.keys()}
    state = torch.load(weights, map_location="cpu", weights_only=True)
    return {key: tuple(value.shape) for key, value in state.items()}


def check_adapter_fits(adapter_dir: Path, base: torch.nn.Module, *, base_id: str) -> None:
    """Refuse, with the first mismatch named, an adapter made for another base model.

    PEFT itself would fail deep inside ``load_state_dict`` with a size-mismatch
    dump; this reads only tensor shapes (no weights) and says which module and
    which dimensions disagree.
    """
    read_adapter_config(adapter_dir)
    modules = dict(base.named_modules())
    hidden = getattr(getattr(base, "config", None), "hidden_size", "?")
    for key, shape in _lora_shapes(adapter_weights_file(adapter_dir)).items():
        match = _LORA_KEY.match(key)
        if match is None:
            continue  # bias or modules_to_save tensors: PEFT checks those itself
        module_name = match["module"]
        module = modules.get(module_name)
        if module is None:
            raise AdapterMismatchError(
                f"adapter {adapter_dir} targets module {module_name!r}, which the base encoder "
                f"{base_id!r} does not have; it was made for another architecture"
            )
        in_features = getattr(module, "in_features", None)
        out_features = getattr(module, "out_features", None)
        if in_features is None:
            continue
        expected = in_features if match["which"] == "A" else out_features
        actual = shape[1] if match["which"] == "A" else shape[0]
        if actual != expected:
            raise AdapterMismatchError(
                f"adapter {adapter_dir} was trained for a model where {module_name!r} has "
                f"{'input' if match['which'] == 'A' else 'output'} size {actual}, but in the base encoder "
                f"{base_id!r} (dim {hidden}) it is {expected}"
            )


def new_lora_adapter(
    base_config: Any,
    adapter_dir: Path,
    *,
    rank: int = 8,
    alpha: float = 32,
    dropout: float = 0.1,
    target_modules: Sequence[str] = DEFAULT_TARGET_MODULES,
    base_id: str | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """Write a freshly initialised LoRA adapter (B = 0, so it equals the base) in PEFT format.

    LoRA's initialisation does not depend on the base weights, only on the
    module shapes, so a randomly initialised model built from ``base_config``
    (a transformers config) serves: the loaded encoder is never touched.
    Returns the adapter config as saved.
    """
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModel

    if rank < 1:
        raise ValueError(f"LoRA rank must be >= 1, got {rank}")
    torch.manual_seed(seed)
    base = AutoModel.from_config(base_config)
    config = LoraConfig(
        r=rank,
        lora_alpha=alpha,  # type: ignore[arg-type]  # PEFT annotates it int; a float scales alike
        lora_dropout=dropout,
        target_modules=list(target_modules),
    )
    try:
        with quiet_peft():
            model = get_peft_model(base, config)
    except ValueError as exc:
        names = sorted({name.rsplit(".", 1)[-1] for name, _ in base.named_modules() if name})
        raise AdapterMismatchError(
            f"cannot place LoRA on {list(target_modules)}: {exc}. Module names: {names}"
        ) from exc
    if base_id is not None:
        model.peft_config["default"].base_model_name_or_path = base_id
    # save_embedding_layers=False: PEFT would otherwise look the base id up (on the hub) to
    # see whether the vocabulary changed; LoRA here never touches the embeddings.
    model.save_pretrained(str(adapter_dir), save_embedding_layers=False)
    return read_adapter_config(adapter_dir)
