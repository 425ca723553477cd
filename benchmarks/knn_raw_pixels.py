"""kNN top-1 of raw Fashion-MNIST pixels under the encoder's protocol (cosine, k = 20, weights exp(sim / 0.07),
full train split as the bank, full test split as queries): the bar an encoder's representation must beat.

    python benchmarks/knn_raw_pixels.py
"""
import time

from rcg.data import load_fashion_mnist
from rcg.evaluate import knn_accuracy

if __name__ == "__main__":
    t0 = time.time()
    tr, te = load_fashion_mnist(split="train"), load_fashion_mnist(split="test")
    flat = lambda s: s.images.flatten(1).float() / 255  # noqa: E731
    acc = knn_accuracy(flat(tr), tr.labels, flat(te), te.labels, k=20, temperature=0.07)
    print(f"raw-pixel kNN top-1: {acc:.4f} ({len(tr)} train / {len(te)} test, {time.time() - t0:.0f} s)")
