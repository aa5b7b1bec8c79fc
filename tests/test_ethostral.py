"""The Ethostral backend's real loading and generation paths, on a tiny random Voxtral
and LoRA adapter built on disk (the text is gibberish; paths, batching and parsing
are what is checked)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from tiny_voxtral import NUM_SPECIAL, build_tiny_adapter, build_tiny_voxtral

from ethostral_serve.backends.ethostral import EthostralAsr, torch_dtype
from ethostral_serve.backends.ethostral_tags import parse_tags
from ethostral_serve.errors import ModelLoadError
from ethostral_serve.settings import EthostralSettings

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("ethostral")
    base = build_tiny_voxtral(root / "base")
    return base, build_tiny_adapter(base, root / "adapter")


def _settings(base: Path, adapter: Path | None = None, **extra) -> EthostralSettings:
    return EthostralSettings(
        base_model=str(base),
        adapter=None if adapter is None else str(adapter),
        max_new_tokens=12,
        **extra,
    )


def _segments() -> list[np.ndarray]:
    rng = np.random.default_rng(7)
    return [rng.normal(0, 0.1, 16000 * s).astype(np.float32) for s in (1, 3, 2)]


def test_a_batch_gives_what_each_segment_gives_alone(tiny) -> None:
    base, adapter = tiny
    model = EthostralAsr(_settings(base, adapter))
    segments, languages = _segments(), ["en", None, "fr"]
    batch = model.transcribe_segments(segments, languages)
    pairs = zip(segments, languages, strict=True)
    alone = [model.transcribe_segments([s], [lang])[0] for s, lang in pairs]
    assert [r.raw for r in batch] == [r.raw for r in alone]
    for r in batch:
        assert r.raw  # greedy decoding wrote something
        assert r.text == parse_tags(r.raw).text
        assert len(r.tag_probabilities) == len(r.tagged.tags)
        assert all(0.0 <= p <= 1.0 for p in r.tag_probabilities)
    assert model.transcribe_segments([], []) == []
    with pytest.raises(ValueError, match="one language"):
        model.transcribe_segments(segments, ["en"])
    with pytest.raises(ValueError, match="at most 30 s"):
        model.transcribe_segments([np.zeros(31 * 16000, np.float32)], ["en"])


def test_the_adapter_changes_the_output_and_merging_keeps_it(tiny) -> None:
    base, adapter = tiny
    segments = _segments()
    plain = EthostralAsr(_settings(base)).transcribe_segments(segments, ["en"] * 3)
    tuned = EthostralAsr(_settings(base, adapter)).transcribe_segments(segments, ["en"] * 3)
    merged = EthostralAsr(_settings(base, adapter, merge_adapter=True)).transcribe_segments(
        segments, ["en"] * 3
    )
    assert [r.raw for r in plain] != [r.raw for r in tuned]
    assert [r.raw for r in merged] == [r.raw for r in tuned]


def test_tags_in_the_generated_tokens_become_the_emotion_with_their_probability(tiny) -> None:
    base, _ = tiny
    model = EthostralAsr(_settings(base))
    text = "[sad] hi"
    ids = [b + NUM_SPECIAL for b in text.encode()] + [model.processor.tokenizer.eos_token_id, 5]
    probabilities = np.array([0.5, 0.9, 0.9, 0.9, 0.8, 0.1, 0.3, 0.3, 1.0, 1.0])
    result = model._result(ids, probabilities)
    assert result.raw == text and result.text == "hi"
    assert result.emotion is not None and result.emotion.label == "Sad"
    # the tag's five tokens, "[sad]"; not the space or the words after it
    assert result.emotion.confidence == pytest.approx(0.5 * 0.9**3 * 0.8)


def test_dtype_is_bf16_on_gpu_and_float32_on_cpu_unless_named() -> None:
    import torch

    assert torch_dtype(EthostralSettings(device="cuda")) == torch.bfloat16
    assert torch_dtype(EthostralSettings(device="cpu")) == torch.float32
    assert torch_dtype(EthostralSettings(device="cuda", dtype="float16")) == torch.float16


def test_a_missing_model_is_a_clear_load_error(tmp_path, tiny) -> None:
    with pytest.raises(ModelLoadError, match="could not load Ethostral"):
        EthostralAsr(_settings(tmp_path / "nowhere"))
    base, _ = tiny
    with pytest.raises(ModelLoadError, match="adapter"):
        EthostralAsr(_settings(base, tmp_path / "no-adapter"))


def _angry_and_plain(base: Path, tagging: Path, folder: str) -> EthostralAsr:
    """The tiny base with two named adapters: "angry" (writes the tagged script) and a
    random "plain" one saved to ``folder``; neither loaded yet."""
    plain = build_tiny_adapter(base, base.parent / folder)
    return EthostralAsr(
        EthostralSettings(
            base_model=str(base),
            adapters={"angry": str(tagging), "plain": str(plain)},
            max_new_tokens=48,
        )
    )


def test_named_adapters_share_a_batch_and_load_and_unload_on_demand(tagging_voxtral) -> None:
    from tiny_voxtral import TAGGED_SCRIPT

    from ethostral_serve.errors import UnknownAdapterError

    model = _angry_and_plain(*tagging_voxtral, "plain-adapter")
    assert model.adapters == ("angry", "plain") and model.loaded == set()
    segments, names = _segments(), ["angry", None, "plain"]
    batch = model.transcribe_segments(segments, ["en"] * 3, adapters=names)
    assert model.loaded == {"angry", "plain"}  # loaded by first use
    alone = [
        model.transcribe_segments([s], ["en"], adapters=[n])[0].raw
        for s, n in zip(segments, names, strict=True)
    ]
    assert [r.raw for r in batch] == alone  # each segment got its own adapter
    assert batch[0].raw == TAGGED_SCRIPT and batch[0].emotion.label == "Angry"
    assert TAGGED_SCRIPT not in (batch[1].raw, batch[2].raw)
    bare = batch[1].raw  # no default adapter: the base itself
    model.unload_adapter("angry")
    model.unload_adapter("plain")
    assert model.loaded == set() and not hasattr(model.model, "peft_config")
    assert model.transcribe_segments(segments[1:2], ["en"])[0].raw == bare
    assert model.transcribe_segments(segments[:1], ["en"], adapters=["angry"])[0].raw == (
        TAGGED_SCRIPT
    )
    with pytest.raises(UnknownAdapterError, match="'nope'; available: angry, plain"):
        model.transcribe_segments(segments[:1], ["en"], adapters=["nope"])


def test_a_batch_of_one_adapter_runs_it_active_and_gives_the_mixed_batch_output(
    tagging_voxtral,
) -> None:
    from tiny_voxtral import TAGGED_SCRIPT

    model = _angry_and_plain(*tagging_voxtral, "plain-active")
    segments, en = _segments(), ["en"] * 6
    model.transcribe_segments(segments[:2], en[:2], adapters=["angry", "plain"])  # load both
    calls: list[dict] = []
    generate = model.model.generate  # the peft model stays the same object from here

    def spy(*args, **kwargs):
        calls.append(kwargs)
        return generate(*args, **kwargs)

    model.model.generate = spy
    for name, other in (("plain", "angry"), (None, "plain"), ("angry", None)):
        # the reference: these segments in a mixed batch, each named to peft
        mixed = model.transcribe_segments(segments * 2, en, adapters=[name] * 3 + [other] * 3)
        assert "adapter_names" in calls[-1]
        alone = model.transcribe_segments(segments, en[:3], adapters=[name] * 3)
        assert "adapter_names" not in calls[-1]  # one adapter: made active, not named
        assert [r.raw for r in alone] == [r.raw for r in mixed[:3]]
    assert [r.raw for r in alone] == [TAGGED_SCRIPT] * 3
    assert model.model.active_adapter == "angry"


def test_single_adapter_names_the_one_all_segments_share() -> None:
    from ethostral_serve.backends.ethostral import single_adapter

    assert single_adapter(["a", "a"]) == "a"
    assert single_adapter(["a", "b", "a"]) is None
    assert single_adapter([]) is None


def test_a_default_adapter_serves_requests_that_name_none(tagging_voxtral) -> None:
    from tiny_voxtral import TAGGED_SCRIPT

    base, tagging = tagging_voxtral
    plain = build_tiny_adapter(base, base.parent / "plain-default")
    model = EthostralAsr(
        EthostralSettings(
            base_model=str(base),
            adapter=str(tagging),
            adapters={"plain": str(plain)},
            max_new_tokens=48,
        )
    )
    segment = _segments()[:1]
    assert model.transcribe_segments(segment, ["en"])[0].raw == TAGGED_SCRIPT
    other = model.transcribe_segments(segment, ["en"], adapters=["plain"])[0].raw
    assert other != TAGGED_SCRIPT
    model.unload_adapter("plain")  # the default adapter stays
    assert model.transcribe_segments(segment, ["en"])[0].raw == TAGGED_SCRIPT


def test_adapters_load_and_unload_safely_while_other_threads_generate(tagging_voxtral) -> None:
    from concurrent.futures import ThreadPoolExecutor

    from tiny_voxtral import TAGGED_SCRIPT

    base, tagging = tagging_voxtral
    model = EthostralAsr(
        EthostralSettings(base_model=str(base), adapters={"angry": str(tagging)}, max_new_tokens=40)
    )
    segment = _segments()[:1]
    bare = model.transcribe_segments(segment, ["en"])[0].raw

    def generate(i: int) -> str:
        adapter = "angry" if i % 2 else None
        return model.transcribe_segments(segment, ["en"], adapters=[adapter])[0].raw

    with ThreadPoolExecutor(4) as pool:
        outputs = pool.map(generate, range(24))
        for _ in range(12):  # meanwhile, evict and reload the adapter again and again
            model.unload_adapter("angry")
            model.load_adapter("angry")
        got = list(outputs)
    assert got == [TAGGED_SCRIPT if i % 2 else bare for i in range(24)]


def test_adapter_settings_are_checked() -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="adapter name 'a b'"):
        EthostralSettings(adapters={"a b": "/x"})
    with pytest.raises(ValidationError, match="not 'default'"):
        EthostralSettings(adapters={"default": "/x"})
    with pytest.raises(ValidationError, match="merge_adapter cannot"):
        EthostralSettings(adapter="/a", adapters={"b": "/b"}, merge_adapter=True)


def test_token_probabilities_are_those_of_the_full_scores_and_spans_join_up(tiny) -> None:
    import torch

    base, adapter = tiny
    model = EthostralAsr(_settings(base, adapter))
    inputs = model.processor.apply_transcription_request(
        audio=[a for a in _segments()[:2]],
        model_id=str(base),
        language=["en", "fr"],
        sampling_rate=16000,
        format=["WAV"] * 2,
        return_tensors="pt",
    )
    sequences, chosen = model._generate(inputs, [None, None], 12)
    with torch.inference_mode():  # the same generation, keeping every step's scores
        full = model.model.generate(
            **inputs,
            max_new_tokens=12,
            do_sample=False,
            output_scores=True,
            return_dict_in_generate=True,
        )
    assert torch.equal(sequences, full.sequences)
    written = full.sequences[:, inputs["input_ids"].shape[1] :]
    expected = torch.stack(
        [
            s.float().log_softmax(-1).gather(-1, written[:, t : t + 1])[:, 0]
            for t, s in enumerate(full.scores)
        ],
        dim=1,
    )
    assert torch.allclose(chosen, expected, atol=1e-5)
    # "é" is two byte tokens: the first ends inside the character, the second holds it
    ids = [b + NUM_SPECIAL for b in "aé b".encode()]
    assert model._token_spans(ids) == [(0, 1), (1, 1), (1, 2), (2, 3), (3, 4)]
