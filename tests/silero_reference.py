"""silero-vad's own package, imported only by tests as the reference for our VAD."""

from __future__ import annotations

from types import ModuleType


def import_silero_vad() -> ModuleType:
    """Import ``silero_vad`` without letting it pin torch to one thread process-wide."""
    import torch

    threads = torch.get_num_threads()
    try:
        import silero_vad
    finally:
        torch.set_num_threads(threads)
    return silero_vad
