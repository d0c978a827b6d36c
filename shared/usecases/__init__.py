"""Use cases: the logic behind each function, on small Protocols (``shared.dal`` implements them).

* :func:`shared.usecases.select_due.select_due` -- tick → due messages (select);
* :func:`shared.usecases.fanout.fanout` -- due message → Cloud Tasks (fanout).

Both have the entry-point wrapper's signature ``use_case(payload, message)`` and take an optional
keyword-only ``deps`` so tests inject fakes; without it the real, lazily built dependencies are
used.
"""

from __future__ import annotations
