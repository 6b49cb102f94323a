"""``gradsight explore``: a local web page where a student clicks a unit and sees what it sees.

Example:
    >>> import gradsight.explorer
    >>> handle = gradsight.explorer.explore("seed-cnn", open_browser=False, block=False)   # doctest: +SKIP
    gradsight explore: http://127.0.0.1:41235/
    >>> handle.stop()                                                                   # doctest: +SKIP

Pick a model and an image, see the top-5 and the saliency map, the receptive-field table of every layer, and
for any unit its input gradient with its analytic rectangle and measured support. Everything is served from
this package (no CDN), on 127.0.0.1 by default. Needs ``pip install 'gradsight[explore]'``.
"""

from __future__ import annotations

from .server import ExplorerHandle, explore, start

__all__ = ["ExplorerHandle", "explore", "start"]
