"""What can run a bundle's halves, named once for the services' settings and for :mod:`models.onnx_runtime`.

``torch``: the training and reference runtime; ``onnx``: ONNX Runtime (the bundle must carry the ``.onnx``
file); ``auto``: ONNX Runtime where the bundle carries the file, else torch. This module imports nothing,
so the settings of the gateway and the workers can name the runtimes without importing torch.
"""
RUNTIMES = ("auto", "onnx", "torch")
