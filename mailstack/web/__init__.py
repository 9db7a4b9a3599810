"""The HTTPS side of `serve` (floor 4): aiohttp inside the one event loop.

`server.py` binds the `listen.https` and `listen.http` listeners; `app.py` builds the
applications (`make_app` for https, `make_http_app` for plain http); `deps.py` is what handlers
get. Nothing below this package imports it; only `mailstack.app` and the CLI do.
"""
