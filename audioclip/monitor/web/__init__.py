"""The monitor's web page and HTTP API (``[http] listen`` or ``--http``): FastAPI on uvicorn inside the monitor.

:mod:`.server` runs it on a thread of the monitor, :mod:`.app` builds the application, one module per part of
the API (:mod:`.events`, :mod:`.labels`, :mod:`.search`), :mod:`.live` and :mod:`.watch` feed the live page,
:mod:`.spectrogram` draws what the model sees, :mod:`.auth` checks the token. The pages are the static files in
``static/``. Needs the ``web`` extra (FastAPI, uvicorn, tomlkit, Pillow).
"""
