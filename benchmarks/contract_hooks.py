"""Schemathesis hooks of the contract check, registered for every schema of the process.

``schemathesis.toml`` names this module, so ``schemathesis run`` from the repository root
(and ``python -m benchmarks.contract``) loads it; tests register the same hooks on their
own schema instead (``benchmarks.contract.register``).
"""

from __future__ import annotations

import schemathesis

from benchmarks.contract import register, speech_from_env

register(schemathesis.hook, speech_from_env())
