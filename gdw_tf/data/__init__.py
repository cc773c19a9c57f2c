"""Data: benchmark datasets, the split and the injected noise, your own data (in memory or image
files streamed from disk), the `tf.data` pipelines, the automatic trusted set and reviewed labels.
Imports from `gdw_tf.backend`, `core` and `nets` only.
"""
