"""A small CNN trained here in seconds on shapes drawn with Pillow (for wire fidelity)."""

from __future__ import annotations

from typing import Any

import numpy as np

SIZE = 32
CLASSES = ("circle", "square", "triangle")


def draw_shapes(count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``count`` RGB images (uint8, SIZE x SIZE x 3) of one filled shape each, and labels."""
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    images = np.empty((count, SIZE, SIZE, 3), np.uint8)
    labels = rng.integers(0, len(CLASSES), count)
    for i, label in enumerate(labels):
        background = tuple(int(v) for v in rng.integers(0, 100, 3))
        colour = tuple(int(v) for v in rng.integers(130, 256, 3))
        image = Image.new("RGB", (SIZE, SIZE), background)
        draw = ImageDraw.Draw(image)
        r = int(rng.integers(7, 13))
        cx, cy = (int(v) for v in rng.integers(r + 1, SIZE - r - 1, 2))
        if label == 0:
            draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=colour)
        elif label == 1:
            draw.rectangle((cx - r, cy - r, cx + r, cy + r), fill=colour)
        else:
            draw.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=colour)
        noise = rng.integers(-12, 13, (SIZE, SIZE, 3))
        images[i] = np.clip(np.asarray(image, np.int16) + noise, 0, 255).astype(np.uint8)
    return images, labels


def train_shape_cnn(seed: int = 0, samples: int = 2000, epochs: int = 5) -> tuple[Any, float]:
    """A functional CNN reading 0..255 pixels; returns it and its held-out accuracy."""
    import keras
    from keras import layers

    keras.utils.set_random_seed(seed)
    x, y = draw_shapes(samples, seed)
    x_test, y_test = draw_shapes(600, seed + 1)
    inputs = keras.Input((SIZE, SIZE, 3), name="pixels")
    h = layers.Rescaling(1 / 255, name="scale")(inputs)
    h = layers.Conv2D(16, 3, padding="same", activation="relu", name="conv1")(h)
    h = layers.MaxPooling2D(name="pool1")(h)
    h = layers.Conv2D(32, 3, padding="same", activation="relu", name="conv2")(h)
    h = layers.MaxPooling2D(name="pool2")(h)
    h = layers.Conv2D(32, 3, padding="same", activation="relu", name="conv3")(h)
    h = layers.GlobalAveragePooling2D(name="gap")(h)
    outputs = layers.Dense(len(CLASSES), name="logits")(h)
    model = keras.Model(inputs, outputs, name="shape_cnn")
    model.compile(optimizer=keras.optimizers.Adam(3e-3),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    model.fit(x, y, batch_size=64, epochs=epochs, verbose=0)
    accuracy = float(np.mean(model.predict(x_test, verbose=0).argmax(1) == y_test))
    return model, accuracy
