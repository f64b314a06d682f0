"""Serving: ``speech-serve`` (an HTTP API on FastAPI + uvicorn, dynamic batching, a demo page).

- :mod:`speech.serve.app`: the routes (``create_app``) and their validation;
- :mod:`speech.serve.batcher`: concurrent requests within a window share one forward pass;
- :mod:`speech.serve.voices`: registered voices (speaker vectors computed once);
- :mod:`speech.serve.cli`: the command line; ``page.html``: the demo page at ``/``.
"""
