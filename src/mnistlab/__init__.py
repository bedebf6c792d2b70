"""mnistlab: MNIST done properly — canonical data, the classic Keras tutorial's models, fast training,
evaluation and a draw-a-digit page.

Importing the package is cheap on purpose (no torch, no numpy): the CLI's ``--help`` must stay instant.
"""

__version__ = "0.1.0"
