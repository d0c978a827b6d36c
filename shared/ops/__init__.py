"""Operations: what the ``dispatcher`` CLI and the maintenance/sync functions do to live data.

* :mod:`shared.ops.store`: what these use cases need of the ``subscriptions`` collection
  (implemented by :mod:`shared.dal.firestore_store`).
* :mod:`shared.ops.reconcile`: maintenance ``reconcile``, re-creating stuck dispatches' tasks.
* :mod:`shared.ops.subscriptions`: subscription admin (add, import, pause, resume, validate).
* :mod:`shared.ops.deadletters`: list, show, replay and purge dead letters.
"""
