"""The heavy libraries imported once, under a lock, before threads use them.

transformers resolves its names lazily and its modules import each other in cycles. Two threads
importing it for the first time at once (the GUI inspecting a model while the Compare page loads
one) can see a half-initialised module: "cannot import name 'AutoTokenizer' from
'transformers'". Doing the first import in one thread at a time avoids that.
"""

from __future__ import annotations

import threading

_LOCK = threading.Lock()
_DONE = False


def import_ml_stack() -> None:
    """Import torch, transformers (the names the engine uses) and peft once; thread-safe."""
    global _DONE
    if _DONE:
        return
    with _LOCK:
        if _DONE:
            return
        import torch  # noqa: F401
        from transformers import (  # noqa: F401
            AutoConfig,
            AutoModelForCausalLM,
            AutoTokenizer,
            BitsAndBytesConfig,
        )

        try:
            import peft  # noqa: F401
        except ImportError:  # the engine reports a missing peft where it needs it
            pass
        _DONE = True
