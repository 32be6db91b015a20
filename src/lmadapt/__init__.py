"""lmadapt: adapt a pretrained language model to a domain and to a task."""

__version__ = "0.1.0"
