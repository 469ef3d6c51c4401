"""An independent IDX reader for tests (LeCun's MNIST format), the oracle for cnnkit's own."""
import gzip

import numpy as np


def read_idx(path) -> np.ndarray:
    """Magic with the dim count in byte 3, then big-endian int32 sizes, then uint8 data."""
    data = gzip.open(path).read()
    ndim = data[3]
    shape = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(data, np.uint8, offset=4 + 4 * ndim).reshape(shape)
