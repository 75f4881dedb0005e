"""Integrations with other libraries' model formats.

Each integration imports its library only when called, so importing shrinkage never
needs them: ``shrinkage.integrations.huggingface`` (transformers' ``save_pretrained`` /
``from_pretrained`` for compacted models).
"""
