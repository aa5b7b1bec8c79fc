"""A file's language, pooled from the language rankings of its first ASR windows.

Whisper identifies the language of one window from its encoder output. On clean speech
the first window settles it; on distant, reverberant speech one window can put a wrong
language first: over the first 30 s of a far-field English conversation Whisper base
ranked English 0.32 and Latin 0.30, where later windows gave English 0.56-0.77
(docs/benchmarks.md). So a file's language is decided by a :class:`LanguageVote`: the
probabilities of its first few windows are pooled, each window weighted by its seconds
of audio, and the pooled leader is the language of every window. Identification reads
the encoder output each window's recognition needs anyway, so the vote costs no extra
encoder pass; a window decoded in another language before the vote ended is decoded
again only where that differs.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

# A window's detected languages, most probable first, each with its probability.
LanguageRanking = tuple[tuple[str, float], ...]

RANKING_SIZE = 5  # languages kept per window: the rest hold a few hundredths at most
# Whisper's own bounds of a failed decoding (its compression_ratio_threshold and
# logprob_threshold): text that repeats itself, or that the model barely believes.
MOST_COMPRESSION_RATIO = 2.4
LEAST_AVG_LOGPROB = -1.0
CHECKED_WINDOWS = 3  # an unsure vote's candidates are drafted on its first windows only
# A shorter window is not drafted: a few tokens say nothing of loops or belief (a 0.7 s
# AMI excerpt drafted better in Chinese than in English). Without one, the leader stands.
CHECKED_MIN_S = 5.0
DRAFT_TOKENS_PER_S = 4  # a draft's cap: speech rarely passes ~3 tokens a second; a loop does


def checked_windows(seconds: Sequence[float]) -> list[int]:
    """Which of a vote's windows (their lengths in ``seconds``, in order) an unsure vote's
    candidates are checked on: the first ``CHECKED_WINDOWS`` that last ``CHECKED_MIN_S``
    or more, as indices."""
    return [i for i, s in enumerate(seconds) if s >= CHECKED_MIN_S][:CHECKED_WINDOWS]


def top_languages(ranked: Sequence[tuple[str, float]], size: int = RANKING_SIZE) -> LanguageRanking:
    """The ``size`` most probable languages of a full ranking, as a ranking."""
    ordered = sorted(ranked, key=lambda item: -item[1])
    return tuple((code, float(p)) for code, p in ordered[:size])


@dataclass
class LanguageVote:
    """Pools the language rankings of a file's first ``most_windows`` windows that have
    one; ``most_windows`` 1 is Whisper's own rule, where the first window decides.

    A leader below ``sure`` of the pooled probability is :attr:`unsure`: the model then
    checks how the windows decode in the leader (a draft, or their recognition itself)
    and, where that fails, drafts them in the runner-up of the :meth:`candidates`;
    :func:`checked_language` picks one by how the decodings read.
    """

    most_windows: int = 6
    sure: float = 0.75
    windows: int = 0
    _weights: dict[str, float] = field(default_factory=dict)
    _seconds: float = 0.0

    def __post_init__(self) -> None:
        if self.most_windows < 1:
            raise ValueError("a language vote reads at least one window")

    @property
    def full(self) -> bool:
        """Whether the vote has counted its ``most_windows`` windows."""
        return self.windows >= self.most_windows

    def add(self, ranking: LanguageRanking, seconds: float) -> None:
        """Count one window's ranking, weighted by its ``seconds`` of audio. A window
        without a ranking (too short to identify), or one past ``most_windows``, is not
        counted."""
        if not ranking or self.full:
            return
        weight = max(float(seconds), 1e-3)
        for code, p in ranking:
            self._weights[code] = self._weights.get(code, 0.0) + weight * float(p)
        self._seconds += weight
        self.windows += 1

    def leader(self) -> tuple[str, float] | None:
        """The pooled most probable language and its pooled probability (a tie goes to
        the language counted first); None before any window is counted."""
        if not self._weights:
            return None
        code = max(self._weights, key=lambda c: self._weights[c])
        return code, self._weights[code] / self._seconds

    def probability(self, code: str) -> float:
        """The pooled probability of one language (0 when no window ranked it)."""
        return self._weights.get(code, 0.0) / self._seconds if self._seconds else 0.0

    def candidates(self, size: int = 2) -> list[str]:
        """The ``size`` most probable pooled languages, most probable first."""
        return sorted(self._weights, key=lambda c: -self._weights[c])[:size]

    @property
    def unsure(self) -> bool:
        """Whether the leader holds less than ``sure`` and another language was heard."""
        lead = self.leader()
        return lead is not None and lead[1] < self.sure and len(self._weights) > 1


@dataclass(frozen=True)
class DraftCheck:
    """How a decoding of one window in one language reads: a quick draft, or the
    window's recognition itself, where ``fell_back`` says that its first decoding failed
    this same test and Whisper decoded again with sampling."""

    seconds: float
    avg_logprob: float
    compression_ratio: float
    fell_back: bool = False

    @property
    def failed(self) -> bool:
        """Whisper's test of a failed decoding: a loop, or text it barely believes."""
        return (
            self.fell_back
            or self.compression_ratio > MOST_COMPRESSION_RATIO
            or self.avg_logprob < LEAST_AVG_LOGPROB
        )


def recognised_check(
    seconds: float, parts: Sequence[tuple[float, float, int, float]]
) -> DraftCheck:
    """The :class:`DraftCheck` of a window's recognition from its decoded parts, each
    ``(avg_logprob, compression_ratio, tokens, temperature)`` as Whisper reports them: the
    parts' log-probability weighted by their tokens, their highest compression ratio,
    and whether any part needed a temperature above 0 (its first decoding failed). A
    window with nothing decoded passes."""
    tokens = sum(max(n, 0) for _, _, n, _ in parts)
    if not parts or tokens == 0:
        return DraftCheck(seconds, 0.0, 0.0)
    logprob = sum(lp * max(n, 0) for lp, _, n, _ in parts) / tokens
    ratio = max(r for _, r, _, _ in parts)
    return DraftCheck(seconds, logprob, ratio, any(t > 0 for _, _, _, t in parts))


def compression_ratio(text: str) -> float:
    """UTF-8 bytes over their zlib-compressed bytes, as Whisper measures repetition."""
    data = text.encode("utf-8")
    return len(data) / len(zlib.compress(data)) if data else 0.0


def checked_language(
    candidates: Sequence[str], drafts_in: Callable[[str], Sequence[DraftCheck]]
) -> str:
    """The candidate whose drafts (``drafts_in(language)``) failed over the fewest
    seconds; a tie goes to the one listed first (the more probable). Candidates are
    drafted in order, and none after one whose drafts all passed, which no later one
    could beat. A model made to write the wrong language loops or writes what it does
    not believe: on far-field English that Whisper base heard as Welsh, its Welsh drafts
    repeated themselves where its English ones did not."""
    if not candidates:
        raise ValueError("no candidate language to check")
    best, least = candidates[0], float("inf")
    for language in candidates:
        failed = sum(c.seconds for c in drafts_in(language) if c.failed)
        if failed < least:
            best, least = language, failed
        if least == 0.0:
            break
    return best
