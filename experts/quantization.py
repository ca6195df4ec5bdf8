"""Encoder backends: how the base model's linear layers compute (fp32, or int8 dynamic quantisation).

- ``torch``: the model as loaded (fp32).
- ``int8``: PyTorch dynamic quantisation of the linear layers, weights int8
  per output channel, activations quantised per pass (fbgemm/x86 kernels,
  int32 accumulation, fp32 output), **except the feed-forward output
  projections** (``encoder.layer.N.output.dense``, 1536 -> 384 in MiniLM),
  which stay fp32: their input, the GELU activations, has outliers that one
  activation scale per tensor cannot hold, and quantising them is what costs
  most of the accuracy.
- ``int8-full``: every linear layer int8 (faster, less exact).

Embeddings, layer norms, softmax and pooling stay fp32 in both. Measured in
docs/benchmarks.md, section 9 (speed, nDCG@10 before and after, memory); the
recipe itself (per channel, FFN output kept) comes from ``bench/quantization.py
variants``: per-tensor weights gave a query cosine to fp32 of only ~0.94.

What stays true under an int8 backend:

- the **fingerprint** is taken from the fp32 weights before quantising
  (:class:`~experts.encoder.Encoder` does it in that order), so manifests,
  adapters and indexes built at fp32 are recognised, and vectors from either
  backend are searched in the same index;
- **LoRA adapters** still work: the quantised layers keep their module names,
  ``in_features`` and ``out_features``, so :class:`~experts.lora.LoraLayers`
  hooks them as before; the hook adds ``x @ A.T @ B.T`` in fp32 to the int8
  layer's fp32 output (adapters are a few MB and stay fp32);
- **training** is unaffected: it reloads the fp32 weights (checked against the
  fingerprint, experts/train.py), so adapters are trained at fp32 whatever the
  backend; only the frozen document vectors it scores against come from the
  serving encoder.
- a row's vector depends slightly on the rest of its pass: the activation
  scale is one per tensor, i.e. per batch (fp32 rows agree to 1e-5 however
  they are batched; int8 rows to a cosine of ~0.99).

``torch.ao.quantization`` is deprecated in favour of torchao (not a dependency
here); its dynamic quantisation still runs in torch 2.13, and its deprecation
warnings are silenced only around the one call that raises them.
"""

from __future__ import annotations

import logging
import re
import warnings
from typing import Literal, get_args

import torch

logger = logging.getLogger(__name__)

Backend = Literal["torch", "int8", "int8-full"]
#: Valid backend names, in the order error messages list them.
BACKENDS: tuple[str, ...] = get_args(Backend)

#: Linear layers the ``int8`` backend keeps fp32: BERT's feed-forward output projections.
FP32_LAYERS = re.compile(r"(^|\.)layer\.\d+\.output\.dense$")


def check_backend(backend: str, *, device: str = "cpu") -> Backend:
    """Return ``backend`` if it is valid for ``device``; raise ``ValueError`` naming the valid ones.

    >>> check_backend("int8")
    'int8'
    """
    if backend not in BACKENDS:
        raise ValueError(f"Invalid encoder backend {backend!r}. Valid backends are: {', '.join(map(repr, BACKENDS))}")
    if backend != "torch" and not str(device).startswith("cpu"):
        raise ValueError(
            f"encoder backend {backend!r} runs on the CPU only, not on device {device!r}; use 'torch' there"
        )
    return backend  # type: ignore[return-value]


def apply_backend(model: torch.nn.Module, backend: Backend) -> torch.nn.Module:
    """The model computing as ``backend`` says; ``torch`` returns it unchanged, ``int8`` quantises it in place."""
    if backend == "torch":
        return model
    if backend == "int8":
        return quantize_int8(model, keep_fp32=FP32_LAYERS)
    if backend == "int8-full":
        return quantize_int8(model, keep_fp32=None)
    raise ValueError(f"Invalid encoder backend {backend!r}. Valid backends are: {', '.join(map(repr, BACKENDS))}")


def quantize_int8(
    model: torch.nn.Module, *, keep_fp32: re.Pattern[str] | None = FP32_LAYERS, per_channel: bool = True
) -> torch.nn.Module:
    """Replace the ``nn.Linear`` layers of ``model`` (in place) by dynamically quantised int8 ones; returns ``model``.

    Layers whose qualified name matches ``keep_fp32`` stay as they are.
    ``per_channel=False`` gives one weight scale per layer (PyTorch's default,
    measured much less exact on MiniLM). Call it before any LoRA hook is
    registered: hooks belong to the module objects this replaces. The model
    must be on the CPU and in eval mode.
    """
    from torch.ao.quantization import default_dynamic_qconfig, per_channel_dynamic_qconfig, quantize_dynamic

    if any(p.device.type != "cpu" for p in model.parameters()):
        raise ValueError("int8 dynamic quantisation needs the model on the CPU")
    if "x86" in torch.backends.quantized.supported_engines:
        torch.backends.quantized.engine = "x86"  # fbgemm + onednn; the default on x86 builds, set for clarity
    with warnings.catch_warnings():
        # torch.ao.quantization's deprecation notice (torchao is its successor) and the
        # quantized-tensor-creation notice: both raised by this call only.
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torch\.ao\..*")
        warnings.filterwarnings("ignore", message=r".*torch\.ao\.quantization is deprecated.*")
        warnings.filterwarnings("ignore", message=r".*quantized tensor creation functions.*")
        qconfig = per_channel_dynamic_qconfig if per_channel else default_dynamic_qconfig
        spec = {
            name: qconfig
            for name, module in model.named_modules()
            if isinstance(module, torch.nn.Linear) and not (keep_fp32 is not None and keep_fp32.search(name))
        }
        quantized = quantize_dynamic(model, spec, dtype=torch.qint8, inplace=True)
    kept = sum(1 for module in quantized.modules() if isinstance(module, torch.nn.Linear))
    logger.info("quantised %d linear layers to int8 (dynamic), kept %d fp32", len(spec), kept)
    return quantized


def is_quantized(model: torch.nn.Module) -> bool:
    """Whether any layer of ``model`` is a dynamically quantised int8 linear layer."""
    return any(_is_dynamic_int8(module) for module in model.modules())


def _is_dynamic_int8(module: torch.nn.Module) -> bool:
    from torch.ao.nn.quantized.dynamic import Linear as DynamicLinear

    return isinstance(module, DynamicLinear)
