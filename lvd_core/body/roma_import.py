"""roma (rotation maths, which anny imports) without importing torch._dynamo, which costs ~1.5 s of CPU per process.

At import, roma wraps two functions in `torch._dynamo.disable`; the wrapped versions run only under
torch.compile, which LVD never uses. So while roma is imported, `torch._dynamo` is a stand-in whose `disable`
returns the function as is; the real module stays importable (and is imported) whenever something asks for it.
"""

from __future__ import annotations

import sys
import types

import torch


def import_roma() -> types.ModuleType:
    """The roma module, imported with the torch._dynamo stand-in when neither is imported yet."""
    if "roma" in sys.modules or "torch._dynamo" in sys.modules:
        import roma

        return roma
    stand_in = types.SimpleNamespace(disable=lambda function=None, *args, **kwargs: function)
    torch._dynamo = stand_in
    try:
        import roma
    finally:
        if torch.__dict__.get("_dynamo") is stand_in:
            del torch._dynamo
    return roma
