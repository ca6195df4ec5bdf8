"""The shared encoder, the reranking cross-encoder, LoRA adapters, the expert directory format and adapter training (the only package importing torch)."""

from experts.adapters import (
    DEFAULT_TARGET_MODULES,
    adapter_weights_file,
    check_adapter_fits,
    new_lora_adapter,
    read_adapter_config,
)
from experts.atomic import atomic_save_npy, atomic_write_bytes, fsync_dir, fsync_tree
from experts.base_model import DEFAULT_MODEL_ID, resolve_model, weights_fingerprint
from experts.cross_encoder import CrossEncoder, PairScores
from experts.encoder import Encoder, ExpertChoice
from experts.errors import (
    AdapterMismatchError,
    ChecksumMismatchError,
    ChunkingError,
    ExpertDirError,
    ExpertError,
    MissingFileError,
    ModelLoadError,
    UnknownExpertError,
)
from experts.expert_dir import (
    ADAPTER_DIR,
    MANIFEST_FILE,
    ExpertDir,
    check_base_matches,
    create_expert,
    list_expert_dirs,
    sha256_file,
)
from experts.manifest import (
    AdapterInfo,
    BaseModelInfo,
    IndexSection,
    Manifest,
    PilotsSection,
    RetrievalSection,
    TrainingSection,
    check_expert_name,
)
from experts.pairs import TrainingPair, combine_pairs, pseudo_pairs, supervised_pairs
from experts.quantization import BACKENDS, Backend
from experts.token_windows import DEFAULT_OVERLAP, make_split_fn, split_passages, token_spans
from experts.torch_threads import ThreadChoice
from experts.train import LexicalSearch, NegativeSearch, TrainConfig, TrainingError, TrainReport, train_adapter

__all__ = [
    "ADAPTER_DIR",
    "AdapterInfo",
    "AdapterMismatchError",
    "BACKENDS",
    "Backend",
    "BaseModelInfo",
    "ChecksumMismatchError",
    "ChunkingError",
    "CrossEncoder",
    "DEFAULT_MODEL_ID",
    "DEFAULT_OVERLAP",
    "DEFAULT_TARGET_MODULES",
    "Encoder",
    "ExpertChoice",
    "ExpertDir",
    "ExpertDirError",
    "ExpertError",
    "IndexSection",
    "LexicalSearch",
    "MANIFEST_FILE",
    "Manifest",
    "MissingFileError",
    "ModelLoadError",
    "NegativeSearch",
    "PairScores",
    "PilotsSection",
    "RetrievalSection",
    "ThreadChoice",
    "TrainConfig",
    "TrainReport",
    "TrainingError",
    "TrainingPair",
    "TrainingSection",
    "UnknownExpertError",
    "adapter_weights_file",
    "atomic_save_npy",
    "atomic_write_bytes",
    "check_adapter_fits",
    "check_base_matches",
    "check_expert_name",
    "combine_pairs",
    "create_expert",
    "fsync_dir",
    "fsync_tree",
    "list_expert_dirs",
    "make_split_fn",
    "new_lora_adapter",
    "pseudo_pairs",
    "read_adapter_config",
    "resolve_model",
    "sha256_file",
    "split_passages",
    "supervised_pairs",
    "token_spans",
    "train_adapter",
    "weights_fingerprint",
]
