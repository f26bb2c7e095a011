"""The ``crackops`` command line, the top layer: it calls the library (``pipeline``), the sweeps
(``search``) and the registry (``registry``), and nothing imports it.

Outside ``pipeline`` so that the package shipped as the MLflow model's code holds no command line.
"""
