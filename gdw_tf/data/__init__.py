"""Data: benchmark datasets, the split and the injected noise, your own data, the `tf.data`
pipelines and the automatic trusted set. Imports the layers below it (core, nets), never the runs.
"""
