"""Framework adapters: one package per framework (``torch/``, ``keras/``) behind one typed contract.

``protocol.py`` is the contract (``ModelAdapter``), ``common.py`` what both frameworks share, and
``discovery.adapter_for(model)`` picks the adapter from the model's type. Nothing here imports a framework:
each adapter package is imported only for a model of its framework.
"""
