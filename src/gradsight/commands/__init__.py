"""The sub-commands of ``gradsight``, each a thin layer over the public API (``cli.py`` assembles them)."""
