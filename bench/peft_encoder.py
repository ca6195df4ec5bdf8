"""The encoder as it was before issue 5's part 2: adapters inside a ``peft.PeftModel``. A baseline only.

``PeftEncoder`` is :class:`experts.Encoder` with PEFT doing the LoRA, exactly as
``experts/encoder.py`` did up to commit 837a7c4: ``disable_adapter()`` around a
base pass, ``set_adapter`` before a one-adapter pass, ``adapter_names`` for a
mixed batch. The benchmarks time it beside the current encoder in the same run,
so every "before/after" ratio in docs/benchmarks.md section 6 compares two
things measured minutes (or milliseconds) apart under the same load.
"""

from __future__ import annotations

from pathlib import Path

import torch

from experts import Encoder, check_adapter_fits
from experts.adapters import quiet_peft

_PEFT_BASE_ROW = "__base__"


class PeftEncoder(Encoder):
    """The PEFT-wrapped encoder (the previous serving path), for before/after timings."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._peft = None

    @property
    def adapters(self) -> tuple[str, ...]:
        return tuple(sorted(self._peft.peft_config)) if self._peft is not None else ()

    def add_adapter(self, name: str, adapter_dir: Path) -> None:
        from peft import PeftModel

        check_adapter_fits(Path(adapter_dir), self._base, base_id=self.model_id)
        with self._lock, quiet_peft():
            if self._peft is None:
                self._peft = PeftModel.from_pretrained(self._base, str(adapter_dir), adapter_name=name)
            else:
                self._peft.load_adapter(str(adapter_dir), adapter_name=name)
            self._peft.eval()

    def remove_adapter(self, name: str) -> None:
        with self._lock, quiet_peft():
            self._require(name)
            if len(self.adapters) == 1:
                self._base = self._peft.unload()
                self._peft = None
            else:
                self._peft.delete_adapter(name)

    def _forward(self, batch: dict[str, torch.Tensor], rows: list[str | None]) -> torch.Tensor:
        names = set(rows)
        with quiet_peft():
            if names == {None}:
                if self._peft is None:
                    return self._base(**batch).last_hidden_state
                with self._peft.disable_adapter():
                    return self._peft(**batch).last_hidden_state
            if len(names) == 1:
                self._peft.set_adapter(rows[0])
                return self._peft(**batch).last_hidden_state
            adapter_names = [_PEFT_BASE_ROW if row is None else row for row in rows]
            return self._peft(**batch, adapter_names=adapter_names).last_hidden_state
