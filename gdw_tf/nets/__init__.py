"""The backbones: ResNet-32, `small_cnn`, `mlp` and `keras.applications` models. Imports nothing of
gdw_tf.
"""
