"""Trainers for brt_keras: ``python -m trainers.train|evaluate|export|generate``.

See trainers/README.md. Importing this package does not import Keras, so each
binary can select the backend (``--backend``) before Keras is loaded.
"""
