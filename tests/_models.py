"""Small models shared by the tests."""

import keras


def small_cnn(input_shape=(8, 8, 3), filters=(6, 8), classes=3, residual=True, synchronized=False):
    bn = {"synchronized": True} if synchronized else {}
    inp = keras.Input(input_shape, name="img")
    x = keras.layers.Conv2D(filters[0], 3, padding="same", name="c1")(inp)
    x = keras.layers.BatchNormalization(name="bn1", **bn)(x)
    x = keras.layers.ReLU(name="r1")(x)
    y = keras.layers.Conv2D(filters[0], 3, padding="same", name="c2")(x)
    y = keras.layers.BatchNormalization(name="bn2", **bn)(y)
    if residual:
        x = keras.layers.Add(name="add")([x, y])
    else:
        x = y
    x = keras.layers.Activation("relu", name="a2")(x)
    x = keras.layers.Conv2D(filters[1], 3, padding="same", name="c3")(x)
    x = keras.layers.BatchNormalization(name="bn3", **bn)(x)
    x = keras.layers.Activation("relu", name="a3")(x)
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    out = keras.layers.Dense(classes, name="fc")(x)
    return keras.Model(inp, out, name="small_cnn")


def randomize_bn(layer, rng, beta_mean=0.0):
    """Random statistics for one BatchNormalization: gamma in [0.5, 1.5],
    variance in [0.5, 2], beta and mean ~ N(beta_mean, 0.5)."""
    ws = []
    for v in layer.weights:
        n = v.shape[0]
        name = v.path.split("/")[-1]
        if "variance" in name:
            ws.append(rng.uniform(0.5, 2.0, n))
        elif "gamma" in name:
            ws.append(rng.uniform(0.5, 1.5, n))
        else:
            ws.append(rng.normal(beta_mean, 0.5, n))
    layer.set_weights([w.astype("float32") for w in ws])
