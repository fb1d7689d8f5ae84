"""Serve a model over HTTP, with a page that shows the text unmasking live (``unmask serve``).

- :mod:`.requests`: request bodies checked into a GenerationRequest (the CLI's checks and wording).
- :mod:`.batcher`: continuous batching of many requests' sampling runs into shared denoiser calls.
- :mod:`.completions`: the OpenAI-compatible ``/v1/completions``.
- :mod:`.endpoints`: what each endpoint answers (JSON or Server-Sent Events), disconnects included.
- :mod:`.app`: the FastAPI app (:func:`create_app`), :func:`serve` (uvicorn, clean shutdown) and
  :func:`serving` (the same on a thread, for notebooks, tests and benchmarks).
- ``static/index.html``: the page.

See docs/serving.md for the API.
"""

from unmask.serve.app import create_app, serve, serving
from unmask.serve.batcher import Batcher
from unmask.serve.requests import Limits, RequestError

__all__ = ["Batcher", "Limits", "RequestError", "create_app", "serve", "serving"]
