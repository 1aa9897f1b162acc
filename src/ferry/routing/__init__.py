"""Routes files: their schema (``spec``), the pure decision per request (``router``) and shadow traffic.

The transports that apply them live with the other transports: the in-process middleware of
``ferry serve --routes`` in ``ferry.http.routing``, the ``ferry gateway`` server in ``ferry.server.gateway``.
"""
