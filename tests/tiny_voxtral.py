"""Build a tiny random Voxtral (model, processor, tokenizer) and a LoRA adapter on disk.

No hub access: the tokenizer is a byte-level tekken file written here, the weights are
random. Output text is gibberish; what the tests check is that the real loading and
generation paths run, batch and parse.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path

NUM_SPECIAL = 100
AUDIO_TOKEN_ID = 24  # [AUDIO], as in the released Voxtral tokenizer
BEGIN_AUDIO_ID = 25


def _special_tokens() -> list[dict[str, object]]:
    from mistral_common.tokens.tokenizers.base import SpecialTokens

    named = [t.value for t in SpecialTokens]
    fixed = {
        AUDIO_TOKEN_ID: SpecialTokens.audio.value,
        BEGIN_AUDIO_ID: SpecialTokens.begin_audio.value,
        26: SpecialTokens.transcribe.value,
    }
    rest = iter(t for t in named if t not in fixed.values())
    out = []
    for rank in range(NUM_SPECIAL):
        name = fixed.get(rank) or next(rest, None) or f"<SPECIAL_{rank}>"
        out.append({"rank": rank, "token_str": name, "is_control": True})
    return out


def write_tekken(path: Path) -> Path:
    """A byte-level tekken tokenizer (256 byte tokens + 100 specials) with audio config."""
    vocab = [
        {"rank": b, "token_bytes": base64.b64encode(bytes([b])).decode(), "token_str": None}
        for b in range(256)
    ]
    data = {
        "config": {
            "pattern": r"[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+|\s+",
            "num_vocab_tokens": len(vocab),
            "default_vocab_size": len(vocab) + NUM_SPECIAL,
            "default_num_special_tokens": NUM_SPECIAL,
            "version": "v7",
        },
        "vocab": vocab,
        "special_tokens": _special_tokens(),
        "audio": {
            "sampling_rate": 16000,
            "frame_rate": 12.5,
            "audio_encoding_config": {"num_mel_bins": 128, "hop_length": 160, "window_size": 400},
            "chunk_length_s": 30.0,
        },
    }
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


TAGGED_SCRIPT = "[angry] stop that now [coughs] okay"


def build_tiny_voxtral(root: Path, seed: int = 0, deaf: bool = False) -> Path:
    """Save a random tiny Voxtral with its processor into ``root``; return ``root``.

    ``deaf``: the audio projector's output is zero, so what the model writes does not
    depend on the audio (an adapter can then teach it a fixed transcript).
    """
    import torch
    from transformers import (
        MistralCommonBackend,
        VoxtralConfig,
        VoxtralForConditionalGeneration,
        VoxtralProcessor,
        WhisperFeatureExtractor,
    )

    root.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    config = VoxtralConfig(
        audio_config={
            "model_type": "voxtral_encoder",
            "hidden_size": 64,
            "intermediate_size": 256,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_mel_bins": 128,
            "max_source_positions": 1500,
        },
        text_config={
            "model_type": "llama",
            "vocab_size": 256 + NUM_SPECIAL,
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "head_dim": 16,
        },
        audio_token_id=AUDIO_TOKEN_ID,
    )
    model = VoxtralForConditionalGeneration(config)
    if deaf:
        with torch.no_grad():
            _projector(model).linear_2.weight.zero_()
    model.save_pretrained(root)
    tekken = write_tekken(root / "tekken.json")
    processor = VoxtralProcessor(
        feature_extractor=WhisperFeatureExtractor(feature_size=128),
        tokenizer=MistralCommonBackend(tokenizer_path=str(tekken)),
    )
    processor.save_pretrained(root)
    return root


def build_tiny_adapter(base: Path, root: Path, seed: int = 1) -> Path:
    """A LoRA adapter on the language model's q/v projections, with non-zero weights."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import VoxtralForConditionalGeneration

    torch.manual_seed(seed)
    model = VoxtralForConditionalGeneration.from_pretrained(base)
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=r".*language_model.*\.(q_proj|v_proj)")
    peft_model = get_peft_model(model, lora)
    with torch.no_grad():  # LoRA B starts at zero; make the adapter actually change things
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.normal_(0.0, 0.5)
    peft_model.save_pretrained(root)
    return root


def _projector(model: object) -> object:
    return next(m for n, m in model.named_modules() if n.endswith("multi_modal_projector"))


def build_tagging_adapter(
    base: Path, root: Path, script: str = TAGGED_SCRIPT, seed: int = 3, max_steps: int = 400
) -> Path:
    """A LoRA adapter trained here so that the (deaf) ``base`` writes ``script``, tags
    included, for any audio and language: the Ethostral fine-tune in miniature.

    Teacher forcing on transcription prompts of several languages and audio lengths,
    until the loss is below 0.005 (about 200 steps, 10 s on a CPU core).
    """
    import numpy as np
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoProcessor, VoxtralForConditionalGeneration

    torch.manual_seed(seed)
    processor = AutoProcessor.from_pretrained(base)
    lora = LoraConfig(
        r=8,
        lora_alpha=16,
        target_modules=r".*language_model.*\.(q|k|v|o|gate|up|down)_proj|.*lm_head",
    )
    model = get_peft_model(VoxtralForConditionalGeneration.from_pretrained(base), lora)
    tok = processor.tokenizer
    target = torch.tensor([[*tok.encode(script, add_special_tokens=False), tok.eos_token_id]])
    rng = np.random.default_rng(seed)
    languages = [None, "en", "fr", "es", "pt", "de", "it", "nl", "hi"]
    prompts = [
        processor.apply_transcription_request(
            audio=[rng.normal(0, 0.1, 16000 * (1 + 3 * i)).astype(np.float32)],
            model_id=str(base),
            language=[language],
            sampling_rate=16000,
            format=["WAV"],
            return_tensors="pt",
        )
        for i, language in enumerate(languages)
    ]
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(trainable, lr=3e-3)
    for step in range(max_steps):
        prompt = prompts[step % len(prompts)]
        ids = torch.cat([prompt["input_ids"], target], dim=1)
        labels = ids.clone()
        labels[:, : prompt["input_ids"].shape[1]] = -100  # learn the transcript only
        loss = model(
            input_ids=ids,
            input_features=prompt["input_features"],
            attention_mask=torch.ones_like(ids),
            labels=labels,
        ).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if loss.item() < 0.005:
            break
    else:
        raise RuntimeError(f"the tagging adapter did not learn its script (loss {loss.item():.3g})")
    model.save_pretrained(root)
    return root
