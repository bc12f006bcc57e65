"""Integrations with training frameworks (TRL, Hugging Face Trainer, OpenRLHF-style loops).

These are the only modules besides ``inform_fast.modeling`` that import transformers / TRL.
"""
