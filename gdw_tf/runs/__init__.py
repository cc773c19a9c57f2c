"""Training runs from a `Config`: the settings and their flags, the run itself, its directory,
callbacks, backups, devices, results and the serving export.
"""
