"""Search by text, sound or picture over stored audio embeddings: the exact search (:mod:`.exact`), the FAISS
vector index beyond :data:`~.exact.EXACT_MAX_ROWS` rows (:mod:`.vindex`) and the queries (:mod:`.query`). The
archive's folders (:mod:`audioclip.archive.search`) and the monitor's database (:mod:`audioclip.monitor.index`)
are searched with them: one implementation for ``audioclip-search`` and the web page.
"""
