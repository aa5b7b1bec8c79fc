"""Speed of the Ethostral backend at full Voxtral-Mini-3B size on a GPU, random weights.

    python -m benchmarks.ethostral_gpu --dir /tmp/ethostral-full
        [--variants active named merged] [--batches 1 4 8 16 32] [--short-batches 8 16 32]
        [--named-batches 8 32] [--tokens 128] [--replicas 2] [--replica-calls 2]
        [--out results.json]

No hub is needed: a Voxtral with Voxtral-Mini-3B-2507's architecture (transformers'
``VoxtralConfig`` defaults: a 32-layer Whisper-large encoder and a 30-layer, 3072-wide
Llama with a 131k vocabulary) is built with random bf16 weights, together with a random
LoRA adapter (r 16 on every projection of the language model) and a tekken tokenizer
of the same vocabulary size, and saved to ``--dir``. Random weights write nonsense but
cost what the real ones cost: every generation is made to write exactly ``--tokens``
tokens (no end-of-text), so the figures are per token written. ``EthostralAsr`` then
loads them as production does (``ETHOSTRAL_ETHOSTRAL__BASE_MODEL`` and ``__ADAPTER``
pointing at the directories) and transcribes batches of 30 s and 10 s windows through
``transcribe_segments``: with the adapter kept apart and active (the default for a
batch of one adapter), kept apart and named per segment (a batch of mixed adapters),
and merged (see ``run_variant``). ``--replicas N`` then runs N such processes on the
one GPU at once, as fractional-GPU Serve replicas would, and gives their summed rate.
"""

from __future__ import annotations

import argparse
import base64
import json
import multiprocessing as mp
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

SAMPLE_RATE = 16_000
NUM_SPECIAL = 1000  # the released tekken's special tokens
VOCAB = 131_072
AUDIO_TOKEN_ID, BEGIN_AUDIO_ID, TRANSCRIBE_ID = 24, 25, 34


def write_tekken(path: Path, vocab_size: int = VOCAB) -> Path:
    """A tekken tokenizer of ``vocab_size`` tokens: the specials, the 256 bytes, then
    distinct two- and four-byte tokens (enough to decode any id the model writes)."""
    from mistral_common.tokens.tokenizers.base import SpecialTokens

    fixed = {
        AUDIO_TOKEN_ID: SpecialTokens.audio.value,
        BEGIN_AUDIO_ID: SpecialTokens.begin_audio.value,
        TRANSCRIBE_ID: SpecialTokens.transcribe.value,
    }
    rest = iter(t.value for t in SpecialTokens if t.value not in fixed.values())
    specials = [
        {
            "rank": r,
            "token_str": fixed.get(r) or next(rest, None) or f"<SPECIAL_{r}>",
            "is_control": True,
        }
        for r in range(NUM_SPECIAL)
    ]
    n = vocab_size - NUM_SPECIAL
    pieces = [bytes([b]) for b in range(256)]
    pieces += [bytes([a, b]) for a in range(256) for b in range(256)][: max(0, n - len(pieces))]
    k = 0
    while len(pieces) < n:
        pieces.append(bytes([k // 65536 % 256, k // 256 % 256, k % 256, 0]))
        k += 1
    vocab = [
        {"rank": i, "token_bytes": base64.b64encode(p).decode(), "token_str": None}
        for i, p in enumerate(pieces[:n])
    ]
    data = {
        "config": {
            "pattern": r"[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+|\s+",
            "num_vocab_tokens": n,
            "default_vocab_size": vocab_size,
            "default_num_special_tokens": NUM_SPECIAL,
            "version": "v7",
        },
        "vocab": vocab,
        "special_tokens": specials,
        "audio": {
            "sampling_rate": SAMPLE_RATE,
            "frame_rate": 12.5,
            "audio_encoding_config": {"num_mel_bins": 128, "hop_length": 160, "window_size": 400},
            "chunk_length_s": 30.0,
        },
    }
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


def _tokenizer_class() -> Any:
    import transformers

    return (
        getattr(transformers, "MistralCommonBackend", None) or transformers.MistralCommonTokenizer
    )


def build(root: Path, tiny: bool = False) -> tuple[Path, Path]:
    """Save a random full-size Voxtral with its processor to ``root/voxtral`` and a
    random LoRA adapter to ``root/adapter`` (``tiny``: a small model, to try the script)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import (
        VoxtralConfig,
        VoxtralForConditionalGeneration,
        VoxtralProcessor,
        WhisperFeatureExtractor,
    )

    base, adapter = root / "voxtral", root / "adapter"
    base.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    small: dict[str, Any] = {}
    if tiny:
        small = {
            "audio_config": {
                "model_type": "voxtral_encoder",
                "hidden_size": 64,
                "intermediate_size": 256,
                "num_hidden_layers": 2,
                "num_attention_heads": 4,
                "num_mel_bins": 128,
            },
            "text_config": {
                "model_type": "llama",
                "vocab_size": VOCAB,
                "hidden_size": 64,
                "intermediate_size": 128,
                "num_hidden_layers": 2,
                "num_attention_heads": 4,
                "num_key_value_heads": 2,
                "head_dim": 16,
            },
        }
    config = VoxtralConfig(audio_token_id=AUDIO_TOKEN_ID, **small)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.set_default_dtype(torch.bfloat16)
    with torch.device(device):
        model = VoxtralForConditionalGeneration(config)
    torch.set_default_dtype(torch.float32)
    model.generation_config.eos_token_id = None  # write --tokens tokens, always
    model.generation_config.pad_token_id = 11
    model.save_pretrained(base)
    tekken = write_tekken(base / "tekken.json")
    processor = VoxtralProcessor(
        feature_extractor=WhisperFeatureExtractor(feature_size=128),
        tokenizer=_tokenizer_class()(tokenizer_path=str(tekken)),
    )
    processor.save_pretrained(base)
    lora = LoraConfig(
        r=16, lora_alpha=32, target_modules=r".*language_model.*\.(q|k|v|o|gate|up|down)_proj"
    )
    peft_model = get_peft_model(model, lora)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.normal_(0.0, 0.01)
    peft_model.save_pretrained(adapter)
    del model, peft_model
    if device == "cuda":
        torch.cuda.empty_cache()
    return base, adapter


def load(base: Path, adapter: Path, merge: bool) -> tuple[Any, float]:
    """``EthostralAsr`` as production loads it; and the seconds it took."""
    import torch

    from ethostral_serve.backends.ethostral import EthostralAsr
    from ethostral_serve.settings import EthostralSettings

    device = "cuda" if torch.cuda.is_available() else "cpu"
    settings = EthostralSettings(
        base_model=str(base), adapter=str(adapter), merge_adapter=merge, device=device
    )
    t0 = time.perf_counter()
    asr = EthostralAsr(settings)
    if device == "cuda":
        torch.cuda.synchronize()
    return asr, time.perf_counter() - t0


def windows(count: int, seconds: float, seed: int = 0) -> list[np.ndarray]:
    """Noise-like audio windows (the content does not change the cost)."""
    rng = np.random.default_rng(seed)
    return [
        (0.1 * rng.standard_normal(round(seconds * SAMPLE_RATE))).astype(np.float32)
        for _ in range(count)
    ]


def time_batches(
    asr: Any, batches: list[int], tokens: int, seconds: float, repeat: int = 2
) -> list[dict[str, float]]:
    """Each batch size: median seconds of ``transcribe_segments`` over ``repeat`` timed
    calls after one warm-up, with tokens written checked."""
    import torch

    rows = []
    for batch in batches:
        audio = windows(batch, seconds)
        langs: list[str | None] = ["en"] * batch
        asr.transcribe_segments(audio, langs, max_new_tokens=tokens)  # warm-up
        times = []
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        for _ in range(repeat):
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            results = asr.transcribe_segments(audio, langs, max_new_tokens=tokens)
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
        written = min(len(r.token_probabilities) for r in results)
        s = float(np.median(times))
        peak = torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else 0.0
        rows.append(
            {
                "batch": batch,
                "window_s": seconds,
                "tokens": written,
                "call_s": s,
                "windows_per_s": batch / s,
                "tokens_per_s": batch * written / s,
                "audio_x_real_time": batch * seconds / s,
                "ms_per_step": 1000 * s / max(written, 1),
                "peak_gib": peak,
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    return rows


def _replica(
    base: str, adapter: str, batch: int, tokens: int, calls: int, start: Any, out: Any
) -> None:
    asr, _ = load(Path(base), Path(adapter), merge=False)
    audio = windows(batch, 30.0)
    asr.transcribe_segments(audio, ["en"] * batch, max_new_tokens=tokens)
    start.wait()
    t0 = time.perf_counter()
    for _ in range(calls):
        asr.transcribe_segments(audio, ["en"] * batch, max_new_tokens=tokens)
    out.put(time.perf_counter() - t0)


def replicas(
    base: Path, adapter: Path, count: int, batch: int, tokens: int, calls: int = 2
) -> dict[str, float]:
    """``count`` processes, each its own loaded model on the one GPU, running ``calls``
    batches of ``batch`` 30 s windows at the same moment: summed windows per second."""
    ctx = mp.get_context("spawn")
    start, out = ctx.Barrier(count), ctx.Queue()
    procs = [
        ctx.Process(
            target=_replica, args=(str(base), str(adapter), batch, tokens, calls, start, out)
        )
        for _ in range(count)
    ]
    for p in procs:
        p.start()
    spans = [out.get(timeout=600) for _ in procs]
    for p in procs:
        p.join()
    windows_per_s = sum(batch * calls / s for s in spans)
    row = {
        "replicas": count,
        "batch": batch,
        "tokens": tokens,
        "slowest_s": max(spans),
        "windows_per_s": windows_per_s,
        "audio_x_real_time": 30.0 * windows_per_s,
    }
    print(json.dumps(row), flush=True)
    return row


VARIANTS = ("active", "named", "merged", "merged-static")


def run_variant(
    base: Path, adapter: Path, variant: str, args: argparse.Namespace
) -> dict[str, Any]:
    """Load the model as ``variant`` says and time its batches.

    ``active``: the adapter kept apart and simply active (what a batch of one adapter
    runs); ``named``: kept apart with each segment's adapter named to peft
    (``adapter_names``, what a batch of mixed adapters runs), forced here on batches of
    one adapter to weigh the two; ``merged``: merged into the base; ``merged-static``:
    merged, generating with transformers' static key-value cache, with which
    ``generate`` compiles the decoding step (the first call of each batch shape
    compiles, and is the warm-up).
    """
    import torch

    from ethostral_serve.backends import ethostral

    asr, load_s = load(base, adapter, merge=variant.startswith("merged"))
    if variant == "merged-static":
        asr.model.generation_config.cache_implementation = "static"
    params = sum(p.numel() for p in asr.model.parameters())
    print(f"{variant}: loaded in {load_s:.1f} s, {params / 1e9:.2f} B parameters", flush=True)
    single = ethostral.single_adapter
    if variant == "named":
        ethostral.single_adapter = lambda names: None  # type: ignore[assignment]
    try:
        long_batches = args.named_batches if variant == "named" else args.batches
        short_batches = [] if variant == "named" else args.short_batches
        rows = time_batches(asr, long_batches, args.tokens, 30.0)
        rows += time_batches(asr, short_batches, args.tokens, 10.0)
    finally:
        ethostral.single_adapter = single
    del asr
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return {"load_s": load_s, "parameters": params, "rows": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--dir", type=Path, required=True)
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS))
    parser.add_argument("--batches", type=int, nargs="*", default=[1, 4, 8, 16, 32])
    parser.add_argument("--short-batches", type=int, nargs="*", default=[8, 16, 32])
    parser.add_argument("--named-batches", type=int, nargs="*", default=[8, 32])
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--replicas", type=int, nargs="*", default=[])
    parser.add_argument("--replica-calls", type=int, default=2, help="batches per replica")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--tiny", action="store_true", help="a small model: try the script")
    args = parser.parse_args()

    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    print(f"device: {gpu}; torch {torch.__version__}", flush=True)
    t0 = time.perf_counter()
    base, adapter = build(args.dir, tiny=args.tiny)
    report: dict[str, Any] = {"device": gpu, "build_s": time.perf_counter() - t0}
    for variant in args.variants:
        report[variant] = run_variant(base, adapter, variant, args)
        if args.out is not None:  # what is done so far, in case the run is cut short
            args.out.write_text(json.dumps(report, indent=1), encoding="utf-8")
    report["replicas"] = [
        replicas(base, adapter, n, 8, args.tokens, args.replica_calls) for n in args.replicas
    ]
    if args.out is not None:
        args.out.write_text(json.dumps(report, indent=1), encoding="utf-8")
    json.dump(report, sys.stdout, indent=1)


if __name__ == "__main__":
    main()
