"""PyBlaze: a Keras-like front end (``pyblaze.nn``) over the helios training engine."""
