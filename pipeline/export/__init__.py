"""``crackops export``: a trained model as ONNX (FP32 and INT8) for phones and edge boxes.

``onnx_graph`` traces the model into ONNX, ``quantize`` makes the INT8 copy with onnxruntime,
``checks`` compares the exported graphs with PyTorch, ``bundle`` describes the files in
``export.json``, and ``export`` runs the whole sequence into one folder, atomically.
"""
