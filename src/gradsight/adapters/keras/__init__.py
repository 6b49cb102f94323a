"""The Keras 3 adapter, one module per concern; nothing here imports Keras (each module does, when imported).

- ``adapter.py``: ``KerasAdapter``, the ModelAdapter facade (only ``discovery.adapter_for`` imports it)
- ``layers.py``: the model's graph: its input and output, layers by name, input checks, ``structure_key``
- ``scores.py``: reading the output as class scores (a final softmax stepped over, probabilities refused)
- ``gradients.py``: ``score_gradient``, ``predict``, ``layer_gradient``
- ``units.py``: partial models, ``unit_gradients``, ``support_map``
- ``modifiers.py``: guided, deconvnet, linearised and re-initialised copies; ``parameter_blocks``
- ``trace.py``: analytic receptive fields from the layers' configurations
- ``models.py``: named models (``keras:NAME``) and weight files; ``zoo.py``: the seed CNN
- ``backend.py``: importing Keras on TensorFlow, only when needed
"""
