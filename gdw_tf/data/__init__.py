"""Data: benchmark datasets, the split and the injected noise, your own data (in memory or image
files streamed from disk), the `tf.data` pipelines and reviewed labels. Imports from
`gdw_tf.backend`, `core` and `nets` only, and takes plain arguments (`own_data.OwnDataOptions`),
never a run's `Config`: docs/DATA.md.
"""
