"""Operations: what the ``dispatcher`` CLI and the maintenance/sync functions do to live data.

* :mod:`shared.ops.store`: the Firestore ``subscriptions`` collection behind a small interface.
* :mod:`shared.ops.subscriptions`: subscription admin (add, import, pause, resume, validate).
* :mod:`shared.ops.deadletters`: list, show, replay and purge dead letters.
"""
