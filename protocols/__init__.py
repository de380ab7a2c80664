"""qbench wire protocol: message types (``messages``), framing (``codec``) and ``version``.

Depends on nothing of qbench. The package imports none of its modules itself: ``messages`` needs
only the standard library, so an agent can start its worker zygotes before numpy has loaded.
"""
