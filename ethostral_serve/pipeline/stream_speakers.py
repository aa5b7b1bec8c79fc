"""Speakers of a finished live stream, from a diarization pass over all of its audio.

While a stream runs, each final gets a speaker online (one embedding per utterance,
nearest running centroid), and that label is never changed in the events already sent.
On far-field meetings this under-counts: utterances hold several voices, and one
embedding per utterance cannot tell them apart. When the stream ends, its audio is
diarized as an upload would be, and the stored segments are rebuilt from their words:
each word goes to one speaker (:func:`assign_speakers`, the upload rule), and a final
whose words change speaker is split there.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass

from ethostral_serve.pipeline.compose import to_ms, to_word
from ethostral_serve.pipeline.segments import assign_speakers, rename_speakers
from ethostral_serve.pipeline.types import SpeakerTurn, WordTiming
from ethostral_serve.schema import Segment


@dataclass(frozen=True)
class FinalWords:
    """A stored final and its recognised words on the stream's timeline (seconds)."""

    segment: Segment
    words: Sequence[WordTiming]


def refine_segments(finals: Sequence[FinalWords], turns: Sequence[SpeakerTurn]) -> list[Segment]:
    """The finals' segments with speakers from ``turns`` (a diarization of the stream).

    A final whose words belong to several speakers becomes one segment per run of
    words: the first keeps the final's ``id`` (clients matched it to the ``final``
    event), the others get new ids; the text, words and the final's emotion are carried
    over (the emotion was read from the whole utterance). The first piece starts where
    the final started and the last ends where it ended; in between, pieces meet at
    their words. Speakers are renamed ``s0``, ``s1``, ... in order of first appearance.
    Without turns the segments are returned unchanged.
    """
    if not turns:
        return [f.segment for f in finals]
    every_word = [w for f in finals for w in f.words]
    labels = iter(assign_speakers(every_word, turns))
    pieces: list[tuple[str, Segment]] = []
    for final in finals:
        seg = final.segment
        runs: list[tuple[str, list[WordTiming]]] = []
        for word in final.words:
            speaker = next(labels)
            if not word.text.strip():
                continue  # a blank token decides nothing (and would make an empty piece)
            if runs and runs[-1][0] == speaker:
                runs[-1][1].append(word)
            else:
                runs.append((speaker, [word]))
        if not runs:  # no word to go by: the speaker covering the final, as for a word
            span = WordTiming("", seg.start_ms / 1000, seg.end_ms / 1000)
            pieces.append((assign_speakers([span], turns)[0], seg))
            continue
        for i, (speaker, words) in enumerate(runs):
            start = seg.start_ms if i == 0 else to_ms(words[0].start)
            end = seg.end_ms if i == len(runs) - 1 else to_ms(words[-1].end)
            text = "".join(w.text for w in words).strip()
            pieces.append(
                (
                    speaker,
                    seg.model_copy(
                        update={
                            "id": seg.id if i == 0 else str(uuid.uuid4()),
                            "start_ms": start,
                            "end_ms": max(end, start),
                            "text": text,
                            "words": [to_word(w) for w in words],
                        }
                    ),
                )
            )
    names = rename_speakers([speaker for speaker, _ in pieces])
    return [
        seg.model_copy(update={"speaker": name})
        for name, (_, seg) in zip(names, pieces, strict=True)
    ]
