"""fvcore's model analysis, imported once for the package: FLOP counting and precise BatchNorm statistics.

``fvcore.nn`` scripts a loss with ``torch.jit.script`` when it is imported, which torch now deprecates with a
``FutureWarning``. The warning is about fvcore's code, not ours or the user's, and would otherwise open the output
of every command that counts FLOPs or trains a proxy, so it is silenced for this import only.
"""

from __future__ import annotations

import warnings

with warnings.catch_warnings():
    warnings.filterwarnings("ignore", r"`torch\.jit\.script` is deprecated", FutureWarning)
    from fvcore.nn import FlopCountAnalysis, update_bn_stats
    from fvcore.nn.jit_handles import get_shape

__all__ = ["FlopCountAnalysis", "get_shape", "update_bn_stats"]
