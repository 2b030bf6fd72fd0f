"""rlhf-exp: a config-driven experiment framework for the whole RLHF life cycle."""
__version__ = "0.1.0"
