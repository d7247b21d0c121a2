"""A translation server: `seq2seq serve --model CKPT`, an HTTP API and a web page.

    limits.py     what a request and a client may ask for, each limit one field (and option)
    batching.py   the Batcher: requests decoded together, the model off the event loop
    app.py        the API's schema, the checks of each request, the routes, `create_app`
    transport.py  the body limit, uvicorn's protocol with the connection guard, `serve`

A batched LSTM step costs little more than a single one, so under load batching
multiplies throughput (bench/SERVE.md).
"""

from importlib import import_module
from typing import Any

from seq2seq.serve.limits import SETTINGS, Batching, Guard, Limits

# Loaded on first use: the CLI builds its options from the limits without FastAPI and torch.
_ELSEWHERE = {"create_app": "app", "serve": "transport", "uvicorn_config": "transport",
              "BodyLimit": "transport", "HostCheck": "app", "Batcher": "batching",
              "QueueFull": "batching", "ClientGone": "batching"}

__all__ = ["SETTINGS", "Batching", "Guard", "Limits", *_ELSEWHERE]


def __getattr__(name: str) -> Any:
    if name not in _ELSEWHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(f"seq2seq.serve.{_ELSEWHERE[name]}"), name)
