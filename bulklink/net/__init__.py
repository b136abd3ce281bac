"""The wire: the one HTTP session and classifier, credentials, webhooks, proxies and TLS.

Imports only the leaves (``errors``, ``models``, ``options``, ``urls``, ``redaction``,
``text``) and ``_fs``; aiohttp's exceptions stop here.
"""
