"""int8 dynamic quantisation of the encoder against fp32: speed, retrieval quality (nDCG@10, R@100), memory.

Run by hand (not in CI). The document vectors of each backend are cached under
``--cache`` (default /tmp/rr-quant), so only the first run embeds the corpora
(fp32, all five collections: ~15 minutes on 2 busy cores; run it once, niced)::

    nice -n 5 python bench/quantization.py vectors                      # fp32 document vectors, cached
    nice -n 5 python bench/quantization.py quality --int8-documents cranfield,cisi,cacm \\
        --json docs/benchmarks-2026-12-01/quantization-quality.json
    nice -n 5 python bench/quantization.py speed --json docs/benchmarks-2026-12-01/quantization-speed.json
    python bench/quantization.py memory --json docs/benchmarks-2026-12-01/quantization-memory.json
    nice -n 5 python bench/quantization.py variants --json docs/benchmarks-2026-12-01/quantization-variants.json

quality: base-encoder dense search (exact inner product over every document of
the collection, title + text at 256 tokens; judged test queries at 64 tokens),
scored with ir-measures, for (a) fp32 queries over fp32 document vectors (the
baseline), (b) int8 queries over fp32 document vectors (an int8 server on an
index built at fp32), (c) int8 queries over int8 document vectors (indexing
at int8) on the ``--int8-documents`` collections. Each int8 figure sits next to
its fp32 baseline from the same run, with the mean query cosine int8 vs fp32
and a paired randomisation test over the queries (p of "the mean nDCG@10
difference is 0").

speed: the same texts embedded by both backends in alternating order per
repeat (so load from other processes falls on both alike), rows/s from the
median: 32 judged test queries (64 tokens) in one call and one at a time,
and 32 scifact abstracts (256 tokens), each base only and with a random LoRA
adapter (rank 8 on the attention and dense layers, like a trained expert's).

variants: the int8 recipes tried (per-tensor or per-channel weights, which
layers stay fp32), by cosine to fp32 on 48 abstracts and 64 queries.

memory: each backend loaded in a fresh subprocess; RSS after loading and
after embedding, minus the RSS of the same process before the model loads.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.harness import (  # noqa: E402
    COLLECTIONS,
    LoadMeter,
    argument_parser,
    current_rss_mib,
    hiwater_rss_mib,
    judged_test_queries,
    table,
    write_json,
)

DOC_LENGTH, QUERY_LENGTH = 256, 64


# ---------------------------------------------------------------------- vectors
def documents(datasets: Path, name: str) -> tuple[list[str], list[str]]:
    """(ids, passages) of one collection's corpus, in file order."""
    from index import Document, read_corpus

    ids, passages = [], []
    for _, item in read_corpus(datasets / name / "corpus.jsonl"):
        if isinstance(item, Document):
            ids.append(item.id)
            passages.append(item.passage())
    return ids, passages


def document_vectors(encoder: Any, datasets: Path, name: str, cache: Path) -> tuple[list[str], np.ndarray]:
    """(ids, (n, dim) vectors) of one corpus embedded by ``encoder``, read from or written to ``cache``."""
    from index import corpus_fingerprint

    key = f"{name}-{encoder.backend}-{encoder.fingerprint[:12]}-{corpus_fingerprint(datasets / name / 'corpus.jsonl')[:12]}"
    path = cache / f"{key}.npz"
    if path.exists():
        stored = np.load(path)
        return [str(i) for i in stored["ids"]], stored["vectors"]
    ids, passages = documents(datasets, name)
    started = time.perf_counter()
    vectors = encoder.embed(passages, max_length=DOC_LENGTH)
    print(
        f"  embedded {len(ids)} {name} documents ({encoder.backend}) in {time.perf_counter() - started:.0f}s",
        flush=True,
    )
    cache.mkdir(parents=True, exist_ok=True)
    tmp = cache / f"{key}.tmp.npz"
    np.savez(tmp, ids=np.asarray(ids), vectors=vectors)
    tmp.replace(path)
    return ids, vectors


def run_vectors(args) -> None:
    from experts import Encoder

    encoder = Encoder(threads=args.threads, backend=args.backend)
    meter = LoadMeter()
    for name in args.collections:
        ids, vectors = document_vectors(encoder, args.datasets, name, args.cache)
        print(f"{name}: {len(ids)} vectors ({args.backend}) in {args.cache}", flush=True)
    print(f"measurement: {meter.stop().line()}")


# ---------------------------------------------------------------------- quality
def score(test: Any, doc_ids: list[str], doc_vectors: np.ndarray, query_vectors: np.ndarray) -> dict[str, Any]:
    """nDCG@10 and R@100 of exact inner-product search, with ir-measures; ``per_query`` nDCG@10 in ``test.ids`` order."""
    import ir_measures
    from ir_measures import R, nDCG

    scores = query_vectors @ doc_vectors.T  # (nq, ndocs)
    top = np.argsort(-scores, axis=1, kind="stable")[:, :100]
    run = {qid: {doc_ids[j]: float(scores[i, j]) for j in top[i]} for i, qid in enumerate(test.ids)}
    result = ir_measures.calc_aggregate([nDCG @ 10, R @ 100], test.qrels, run)
    per_query = {m.query_id: m.value for m in ir_measures.iter_calc([nDCG @ 10], test.qrels, run)}
    return {
        "ndcg10": round(result[nDCG @ 10], 4),
        "recall100": round(result[R @ 100], 4),
        "per_query": np.asarray([per_query.get(qid, 0.0) for qid in test.ids]),
    }


def paired_p(a: np.ndarray, b: np.ndarray, *, rounds: int = 20_000, seed: int = 0) -> float:
    """Two-sided paired randomisation test of mean(b - a) != 0 (random sign flips of the per-query differences)."""
    diff = np.asarray(b) - np.asarray(a)
    if not diff.any():
        return 1.0
    signs = np.random.default_rng(seed).choice([-1.0, 1.0], size=(rounds, len(diff)))
    return float(((np.abs((signs * diff).mean(axis=1)) >= abs(diff.mean()) - 1e-12).sum() + 1) / (rounds + 1))


def _summary(measured: dict[str, Any], baseline: dict[str, Any]) -> dict[str, Any]:
    """A score without its per-query values, plus the points of nDCG@10 against the baseline and the test's p."""
    return {
        "ndcg10": measured["ndcg10"],
        "recall100": measured["recall100"],
        "ndcg10_points": round(100 * (measured["ndcg10"] - baseline["ndcg10"]), 2),
        "changed_queries": int((measured["per_query"] != baseline["per_query"]).sum()),
        "paired_p": round(paired_p(baseline["per_query"], measured["per_query"]), 4),
    }


def run_quality(args) -> None:
    from app.offline.evaluation import read_test_set
    from experts import Encoder

    fp32 = Encoder(threads=args.threads)
    quantized = {backend: Encoder(threads=args.threads, backend=backend) for backend in args.backends}
    int8_docs = [c for c in args.int8_documents.split(",") if c]
    meter = LoadMeter()
    results: dict[str, dict[str, Any]] = {}
    rows = []
    for name in args.collections:
        test = read_test_set(args.datasets, name)
        ids, fp32_docs = document_vectors(fp32, args.datasets, name, args.cache)
        q32 = fp32.embed(test.texts, max_length=QUERY_LENGTH)
        base = score(test, ids, fp32_docs, q32)
        row: dict[str, Any] = {
            "queries": len(test.ids),
            "documents": len(ids),
            "fp32": {"ndcg10": base["ndcg10"], "recall100": base["recall100"]},
        }
        for backend, encoder in quantized.items():
            q8 = encoder.embed(test.texts, max_length=QUERY_LENGTH)
            cos = (q32 * q8).sum(1)
            entry: dict[str, Any] = {
                "queries_over_fp32_documents": _summary(score(test, ids, fp32_docs, q8), base),
                "query_cosine_mean": round(float(cos.mean()), 4),
                "query_cosine_min": round(float(cos.min()), 4),
            }
            if name in int8_docs:
                ids8, docs8 = document_vectors(encoder, args.datasets, name, args.cache)
                if ids8 != ids:
                    raise RuntimeError(f"{name}: cached {backend} document ids differ from the fp32 ones")
                cos_d = (fp32_docs * docs8).sum(1)
                entry["queries_over_own_documents"] = _summary(score(test, ids, docs8, q8), base)
                entry["document_cosine_mean"] = round(float(cos_d.mean()), 4)
                entry["document_cosine_min"] = round(float(cos_d.min()), 4)
            row[backend] = entry
            both = entry.get("queries_over_own_documents", {})
            over32 = entry["queries_over_fp32_documents"]
            rows.append(
                [
                    f"{name} {backend}",
                    row["fp32"]["ndcg10"],
                    over32["ndcg10"],
                    both.get("ndcg10", float("nan")),
                    over32["ndcg10_points"],
                    over32["paired_p"],
                    both.get("ndcg10_points", float("nan")),
                    both.get("paired_p", float("nan")),
                    row["fp32"]["recall100"],
                    over32["recall100"],
                    both.get("recall100", float("nan")),
                    entry["query_cosine_mean"],
                    entry.get("document_cosine_mean", float("nan")),
                ]
            )
        results[name] = row
        print(f"{name}: {json.dumps(row)}", flush=True)
    for backend in quantized:  # the five collections' mean, as rr eval reports it
        points = [results[c][backend]["queries_over_fp32_documents"]["ndcg10_points"] for c in results]
        print(
            f"{backend}: int8 queries over fp32 documents, mean {np.mean(points):+.2f} points of nDCG@10 over {len(points)}"
        )
    load = meter.stop()
    headers = [
        "collection backend",
        "nDCG fp32",
        "int8 q",
        "int8 q+d",
        "pts q",
        "p",
        "pts q+d",
        "p",
        "R@100 fp32",
        "int8 q",
        "int8 q+d",
        "cos q",
        "cos d",
    ]
    print(table(headers, rows))
    print(f"\nmeasurement: {load.line()}")
    write_json(args.json, {"threads": args.threads, "results": results, "load": load.__dict__})


# ---------------------------------------------------------------------- speed
def random_adapter(encoder: Any, name: str, seed: int = 0) -> None:
    """Attach a random rank-8 LoRA (attention + dense layers, like a trained expert's) under ``name``."""
    import torch

    from experts.adapters import LoraWeights

    generator = torch.Generator().manual_seed(seed)
    modules = {}
    for module_name, module in encoder.base_module.named_modules():
        if module_name.split(".")[-1] in {"query", "key", "value", "dense"} and hasattr(module, "in_features"):
            a = torch.randn(8, module.in_features, generator=generator) * 0.02
            b = torch.randn(module.out_features, 8, generator=generator) * 0.02
            modules[module_name] = (a, b * 4.0)  # alpha / rank = 32 / 8, folded into B as read_lora_weights does
    encoder._lora.add(name, LoraWeights(modules=modules))


class OnnxBase:
    """The fp32 base model exported to ONNX and run by ONNX Runtime (base passes only: no adapter hooks).

    Batches exactly as :class:`~experts.Encoder` does (sorted by length, the
    same ``batch_size``/``batch_tokens`` buckets), so the ratio is the runtime's.
    Needs ``onnxruntime`` and ``onnx`` (for torch's exporter); not a dependency
    of the service: ``pip install onnxruntime onnx``.
    """

    def __init__(self, encoder: Any, path: Path, *, threads: int) -> None:
        import onnxruntime as ort
        import torch

        self.encoder = encoder
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            model = encoder.base_module

            class Hidden(torch.nn.Module):
                def __init__(self) -> None:
                    super().__init__()
                    self.model = model

                def forward(self, input_ids, attention_mask):
                    return self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state

            sample = encoder._tokenizer(["a query", "a longer query about heat"], padding=True, return_tensors="pt")
            axes = {0: "rows", 1: "tokens"}
            torch.onnx.export(
                Hidden(),
                (sample["input_ids"], sample["attention_mask"]),
                str(path),
                dynamo=False,
                input_names=["input_ids", "attention_mask"],
                output_names=["hidden"],
                opset_version=17,
                dynamic_axes={"input_ids": axes, "attention_mask": axes, "hidden": axes},
            )
            model.eval()  # torch 2.13's TorchScript exporter leaves the model in training mode (dropout on)
        options = ort.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    def embed(self, texts: list[str], *, max_length: int, expert: None = None) -> np.ndarray:
        from experts.encoder import length_buckets

        encoder = self.encoder
        ids = encoder._tokenizer(texts, truncation=True, max_length=max_length, padding=False)["input_ids"]
        order = np.argsort([-len(row) for row in ids], kind="stable")
        out = np.empty((len(texts), encoder.dim), dtype=np.float32)
        for chunk in length_buckets(
            order, [len(ids[i]) for i in order], rows=encoder.batch_size, tokens=encoder.batch_tokens
        ):
            batch = encoder._tokenizer.pad({"input_ids": [ids[i] for i in chunk]}, return_tensors="np")
            mask = batch["attention_mask"].astype(np.int64)
            hidden = self.session.run(None, {"input_ids": batch["input_ids"].astype(np.int64), "attention_mask": mask})[
                0
            ]
            pooled = (hidden * mask[..., None]).sum(1) / mask.sum(1, keepdims=True)
            out[chunk] = pooled / np.linalg.norm(pooled, axis=1, keepdims=True)
        return out


def run_speed(args) -> None:
    from experts import Encoder

    encoders: dict[str, Any] = {"fp32": Encoder(threads=args.threads)}
    encoders.update({backend: Encoder(threads=args.threads, backend=backend) for backend in args.backends})
    if args.onnx:  # exported before any adapter hook exists
        onnx = OnnxBase(encoders["fp32"], args.cache / "onnx" / "minilm-fp32.onnx", threads=args.threads)
        sample = ["boundary layer heat transfer", "a"]
        cosine = (
            onnx.embed(sample, max_length=QUERY_LENGTH) * encoders["fp32"].embed(sample, max_length=QUERY_LENGTH)
        ).sum(1)
        print(f"ONNX Runtime vs torch fp32: cosine >= {cosine.min():.6f}")
    for encoder in encoders.values():
        random_adapter(encoder, "lora")
    if args.onnx:
        encoders["onnx"] = onnx
    queries = [text for _, text in judged_test_queries(args.datasets)]
    _, passages = documents(args.datasets, "scifact")
    rng = np.random.default_rng(0)
    cases = {
        "queries, batch 32": (QUERY_LENGTH, 32, None),
        "queries, batch 1": (QUERY_LENGTH, 32, 1),
        "documents (256 tokens), batch 32": (DOC_LENGTH, 32, None),
    }
    seconds: dict[tuple[str, str, str], list[float]] = {}
    meter = LoadMeter()
    for repeat in range(args.repeats):
        q_texts = [queries[i] for i in rng.choice(len(queries), 32, replace=False)]
        d_texts = [passages[i] for i in rng.choice(len(passages), 32, replace=False)]
        order = list(encoders) if repeat % 2 == 0 else list(reversed(encoders))  # the same texts, alternating order
        for case, (length, n, batch) in cases.items():
            texts = d_texts if length == DOC_LENGTH else q_texts
            for adapter in (None, "lora"):
                for backend in order:
                    if backend == "onnx" and adapter is not None:
                        continue  # adapters are torch hooks: ONNX Runtime serves base passes only
                    encoder = encoders[backend]
                    started = time.perf_counter()
                    if batch == 1:
                        for text in texts:
                            encoder.embed([text], expert=adapter, max_length=length)
                    else:
                        encoder.embed(texts, expert=adapter, max_length=length)
                    seconds.setdefault((case, "base" if adapter is None else "adapter", backend), []).append(
                        (time.perf_counter() - started) / n
                    )
    load = meter.stop()
    rows, figures = [], {}
    compared = [backend for backend in encoders if backend != "fp32"]
    for case in cases:
        for pass_kind in ("base", "adapter"):
            fp32 = 1 / statistics.median(seconds[case, pass_kind, "fp32"])
            entry = {"fp32_rows_per_s": round(fp32, 2)}
            row: list[Any] = [f"{case}, {pass_kind}", fp32]
            for backend in compared:
                if (case, pass_kind, backend) not in seconds:
                    row += [float("nan"), float("nan")]
                    continue
                rate = 1 / statistics.median(seconds[case, pass_kind, backend])
                entry[f"{backend}_rows_per_s"] = round(rate, 2)
                entry[f"{backend}_over_fp32"] = round(rate / fp32, 3)
                row += [rate, rate / fp32]
            figures[f"{case}, {pass_kind}"] = entry
            rows.append(row)
    headers = ["case", "fp32 rows/s"] + [h for b in compared for h in (f"{b} rows/s", f"{b} / fp32")]
    print(table(headers, rows))
    print(f"\nmeasurement: {load.line()}")
    write_json(args.json, {"threads": args.threads, "repeats": args.repeats, "figures": figures, "load": load.__dict__})


# ---------------------------------------------------------------------- memory
def _memory_child(backend: str, threads: int | None, datasets: Path) -> dict[str, float]:
    import torch  # noqa: F401  (imported before the baseline reading: the library is not the model)
    import transformers  # noqa: F401

    from experts import Encoder

    before = current_rss_mib()
    encoder = Encoder(threads=threads, backend=backend)
    loaded = current_rss_mib()
    encoder.embed(["a short query about heat transfer"] * 32, max_length=QUERY_LENGTH)
    _, passages = documents(datasets, "scifact")
    encoder.embed(passages[:32], max_length=DOC_LENGTH)
    params = sum(t.numel() * t.element_size() for t in encoder.base_module.state_dict().values() if hasattr(t, "numel"))
    return {
        "rss_before_model_mib": round(before, 1),
        "model_rss_mib": round(loaded - before, 1),
        "after_embedding_rss_mib": round(current_rss_mib() - before, 1),
        "peak_rss_mib": round(hiwater_rss_mib() - before, 1),
        "state_dict_mib": round(params / 2**20, 1),
    }


def run_memory(args) -> None:
    results = {}
    for backend in ("torch", *args.backends):
        command = [sys.executable, __file__, "memory-child", "--backend", backend, "--datasets", str(args.datasets)]
        if args.threads:
            command += ["--threads", str(args.threads)]
        out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
        results[backend] = json.loads(out.strip().splitlines()[-1])
    keys = list(results["torch"])
    print(table(["MiB", *results], [[k, *(r[k] for r in results.values())] for k in keys]))
    write_json(args.json, {"results": results})


# ---------------------------------------------------------------------- variants
def run_variants(args) -> None:
    """Which quantisation recipe: cosine to fp32 of 48 scifact abstracts and 64 cranfield queries per variant.

    Also each query embedded alone against the same query in its batch: fp32
    gives 1.0 (to 1e-6); dynamic int8 takes one activation scale per pass.
    """
    import re

    import torch

    from experts import Encoder
    from experts.lora import LoraLayers
    from experts.quantization import FP32_LAYERS, quantize_int8

    _, passages = documents(args.datasets, "scifact")
    texts = passages[:48]
    with open(args.datasets / "cranfield" / "queries.jsonl") as handle:
        queries = [json.loads(line)["text"] for _, line in zip(range(64), handle)]
    reference = Encoder(threads=args.threads)
    ref_d, ref_q = reference.embed(texts, max_length=DOC_LENGTH), reference.embed(queries, max_length=QUERY_LENGTH)
    variants = {
        "every linear, per-tensor weights": dict(keep_fp32=None, per_channel=False),
        "every linear, per-channel (int8-full)": dict(keep_fp32=None),
        "FFN output kept fp32, per-channel (int8)": dict(keep_fp32=FP32_LAYERS),
        "whole FFN kept fp32, per-channel": dict(
            keep_fp32=re.compile(r"intermediate\.dense$|(^|\.)layer\.\d+\.output\.dense$")
        ),
        "attention output kept fp32, per-channel": dict(keep_fp32=re.compile(r"attention\.output\.dense$")),
    }
    rows, figures = [], {}
    for name, options in variants.items():
        encoder = Encoder(threads=args.threads)
        quantize_int8(encoder.base_module, **options)
        encoder._lora = LoraLayers(encoder.base_module)  # the modules were replaced after the encoder was built
        d = encoder.embed(texts, max_length=DOC_LENGTH)
        q = encoder.embed(queries, max_length=QUERY_LENGTH)
        alone = np.vstack([encoder.embed([text], max_length=QUERY_LENGTH) for text in queries])
        cd, cq, ca = (d * ref_d).sum(1), (q * ref_q).sum(1), (q * alone).sum(1)
        int8_layers = sum(
            1 for m in encoder.base_module.modules() if not isinstance(m, torch.nn.Linear) and hasattr(m, "in_features")
        )
        figures[name] = {
            "int8_layers": int8_layers,
            "doc_cos_mean": round(float(cd.mean()), 4),
            "doc_cos_min": round(float(cd.min()), 4),
            "query_cos_mean": round(float(cq.mean()), 4),
            "query_cos_min": round(float(cq.min()), 4),
            "batched_vs_alone_query_cos_mean": round(float(ca.mean()), 4),
            "batched_vs_alone_query_cos_min": round(float(ca.min()), 4),
        }
        rows.append(
            [
                name,
                int8_layers,
                float(cd.mean()),
                float(cd.min()),
                float(cq.mean()),
                float(cq.min()),
                float(ca.mean()),
                float(ca.min()),
            ]
        )
    print(table(["variant", "int8 layers", "doc cos", "min", "query cos", "min", "batched/alone cos", "min"], rows))
    write_json(args.json, {"threads": args.threads, "variants": figures})


# ---------------------------------------------------------------------- profile
def run_loop(args) -> None:
    """What ``profile`` samples: batches of 32 judged test queries (64 tokens), one backend, for ``--seconds``."""
    from experts import Encoder

    encoder = Encoder(threads=args.threads, backend=args.backend)
    queries = [text for _, text in judged_test_queries(args.datasets)]
    encoder.embed(queries[:32], max_length=QUERY_LENGTH)  # warm-up
    rng, passes, deadline = np.random.default_rng(0), 0, time.perf_counter() + args.seconds
    while time.perf_counter() < deadline:
        encoder.embed([queries[i] for i in rng.choice(len(queries), 32, replace=False)], max_length=QUERY_LENGTH)
        passes += 1
    print(f"{passes} calls of 32 queries in {args.seconds:.0f}s", flush=True)


#: (what, pattern searched in the ";"-joined stack), first match wins; py-spy --native frames
#: (the int8 sub-steps by their innermost frame: fbgemm names every GEMM's template after its requantiser).
#: fbgemm's int8 GEMM kernels are generated at run time (asmjit), so they appear as bare addresses.
PROFILE_CATEGORIES: list[tuple[str, str]] = [
    ("tokenizer (encode + pad)", r"tokeniz|Tokenizer|_encode_plus|convert_to_tensors"),
    (
        "int8 linear: activation min/max + quantise",
        r"apply_dynamic.*;[^;]*(FindMinMax|QuantizeAvx2|ChooseQuantizationParams)[^;]*$",
    ),
    ("int8 linear: requantise int32 -> fp32", r"apply_dynamic.*;[^;]*requantize[^;]*$"),
    ("int8 linear: GEMM and packing (fbgemm)", r"apply_dynamic|quantized/dynamic"),
    ("LoRA hooks", r"lora\.py"),
    ("fp32 linear (MKL sgemm)", r"Linear\.forward \(torch/nn/modules/linear\.py"),
    ("attention (sdpa)", r"sdpa|scaled_dot_product|flash_attention"),
    ("GELU", r"GELU|gelu"),
    ("layer norm", r"layer_norm|LayerNorm"),
    ("pooling, normalise, copy out", r"_pool \(|normalize"),
]


def summarise_profile(raw: Path) -> dict[str, float]:
    """Share of samples per :data:`PROFILE_CATEGORIES` entry (rest: 'other (Python, interpreter)')."""
    import re
    from collections import Counter

    counts: Counter[str] = Counter()
    for line in raw.read_text().splitlines():
        stack, _, number = line.rpartition(" ")
        if not stack or not number.isdigit():
            continue
        if not re.search(r"embed \(experts/encoder\.py", stack):
            continue  # start-up: imports, loading and quantising the model
        what = next(
            (name for name, pattern in PROFILE_CATEGORIES if re.search(pattern, stack)),
            "other (module calls, embeddings, Python)",
        )
        counts[what] += int(number)
    total = sum(counts.values()) or 1
    return {name: round(count / total, 3) for name, count in counts.most_common()}


def run_profile(args) -> None:
    """py-spy (``--native``) on one ``loop`` child; the raw stacks (~2 MB) go under ``--cache``, the shares to ``--json``."""
    out = args.cache / f"profile-{args.backend}-queries.txt"
    out.parent.mkdir(parents=True, exist_ok=True)
    child = [
        sys.executable,
        __file__,
        "loop",
        "--backend",
        args.backend,
        "--seconds",
        str(args.seconds),
        "--threads",
        str(args.threads),
        "--datasets",
        str(args.datasets),
    ]
    py_spy = Path(sys.executable).with_name("py-spy")
    command = [str(py_spy), "record", "--native", "--format", "raw", "--rate", "50", "-o", str(out), "--", *child]
    subprocess.run(command, check=True)
    shares = summarise_profile(out)
    print(table(["where (share of samples in the loop)", "share"], [[k, v] for k, v in shares.items()]))
    write_json(args.json, {"backend": args.backend, "raw": str(out), "shares": shares})


def main() -> None:
    parser = argument_parser(__doc__)
    parser.add_argument(
        "part", choices=["vectors", "quality", "speed", "memory", "variants", "profile", "loop", "memory-child"]
    )
    parser.add_argument("--collections", default=",".join(COLLECTIONS), help="comma-separated")
    parser.add_argument("--int8-documents", default="", help="collections whose documents are also embedded at int8")
    parser.add_argument(
        "--backends", default="int8,int8-full", help="quality / speed: the int8 backends compared with fp32"
    )
    parser.add_argument("--backend", default="torch", help="vectors / memory-child: the backend")
    parser.add_argument("--cache", type=Path, default=Path("/tmp/rr-quant"))
    parser.add_argument(
        "--threads", type=int, default=1, help="torch intra-op threads (the service's default on 2 cores)"
    )
    parser.add_argument("--repeats", type=int, default=6)
    parser.add_argument("--onnx", action="store_true", help="speed: also ONNX Runtime fp32 on the base passes")
    parser.add_argument("--seconds", type=float, default=20.0, help="profile: how long the sampled loop runs")
    parser.add_argument("--json", type=Path, default=None, help="also write every figure as JSON here")
    args = parser.parse_args()
    args.collections = [c for c in args.collections.split(",") if c]
    args.backends = [b for b in args.backends.split(",") if b]
    if args.part == "memory-child":
        print(json.dumps(_memory_child(args.backend, args.threads, args.datasets)))
        return
    {
        "vectors": run_vectors,
        "quality": run_quality,
        "speed": run_speed,
        "memory": run_memory,
        "variants": run_variants,
        "profile": run_profile,
        "loop": run_loop,
    }[args.part](args)


if __name__ == "__main__":
    main()
