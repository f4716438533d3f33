"""The wire protocol and the client: one definition, the backend's ``hhmr.protocol``.

The extension zip carries verbatim copies in ``vendor/`` (written by tools/build_extension.py);
a development checkout falls back to the ``hhmr`` package, which these two modules import
without torch.
"""

from __future__ import annotations

try:
    from .vendor import client, protocol
except ImportError:  # running from the repository: use the backend's own modules
    from hhmr import client, protocol  # type: ignore[no-redef]

__all__ = ["client", "protocol"]
