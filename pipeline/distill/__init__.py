"""Distillation of the lightweight SAM student (``crackops embed``, then ``crackops distill``).

``embed`` runs the frozen SAM teacher once over the distillation images and stores its image
embeddings (safetensors shards + ``index.json`` with the teacher's fingerprint); ``distill``
trains the TinyViT student with MSE against those stored embeddings, never running the teacher.
Both do nothing but write a small fixed placeholder when ``model.family`` is not ``sam_lite``.

Import the submodules directly (``pipeline.distill.embed``).
"""
