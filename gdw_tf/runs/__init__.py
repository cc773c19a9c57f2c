"""Training runs from a `Config`: the settings and their flags, the run itself, its directory (the
one owner of its files), callbacks, backups, devices, results and the serving export. The
programs (`gdw_tf.train`, `export`, `bench`) sit on top of it.
"""
