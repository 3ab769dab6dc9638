"""digitlab: train, evaluate, explain, export and serve handwritten-digit recognizers."""

__version__ = "0.1.0"
