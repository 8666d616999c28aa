"""The entry points, above every domain: the ``careloop`` command (one module per command group),
``careloop up`` (the supervisor), ``careloop doctor``.

They sit in their own package so that the foundation (``careloop``: settings, database, accounts,
queues) imports nothing but libraries, and the domains (serving, feedback, trainer, bot) import
neither this package nor each other against the arrows the architecture test checks.
"""
