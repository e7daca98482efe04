"""Images in, safe loading of pickles and checkpoints, feature files."""
from glocal.io.images import (
    DEFAULT_MAX_SIDE,
    ImageReadError,
    LoadedImage,
    list_images,
    load_image,
    read_image_size,
)

__all__ = ["DEFAULT_MAX_SIDE", "ImageReadError", "LoadedImage", "list_images", "load_image", "read_image_size"]
