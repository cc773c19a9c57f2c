"""The GDW step and the Keras model that runs it: the step's settings, the method table, the
weighting arithmetic, the step as pure functions, meta-batch sampling, the backbone split and the
meta scope, the weight net and `GDWModel`. Imports nothing of gdw_tf but `gdw_tf.backend`.
"""
