"""Images on the pages: inline PNG (`data:` URIs), so that a page needs no file beside it."""

import base64
import math

import numpy as np
import tensorflow as tf

THUMBNAIL_PIXELS = 84  # longest side of a thumbnail in the report


def png_data_uri(image):
    """A uint8 image `[H, W]` or `[H, W, C]` as a `data:` URI of a PNG (the report's thumbnails,
    the review page's images)."""
    image = np.asarray(image)
    png = tf.io.encode_png(image[..., None] if image.ndim == 2 else image).numpy()
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def thumbnail(image):
    """A uint8 image scaled by an integer factor (nearest) to at most `THUMBNAIL_PIXELS`, or
    subsampled to it."""
    image = np.asarray(image)
    longest = max(image.shape[:2])
    if longest <= THUMBNAIL_PIXELS:
        factor = max(1, THUMBNAIL_PIXELS // longest)
        return image.repeat(factor, axis=0).repeat(factor, axis=1)
    step = math.ceil(longest / THUMBNAIL_PIXELS)
    return image[::step, ::step]


def is_image_array(x):
    """Whether `x` holds uint8 images `[N, H, W, C]` with 1, 3 or 4 channels."""
    x = np.asarray(x) if not hasattr(x, "dtype") else x
    return x.dtype == np.uint8 and x.ndim == 4 and x.shape[-1] in (1, 3, 4)
