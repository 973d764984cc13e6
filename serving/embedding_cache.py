"""Image embeddings kept on a SAM3 replica so that every point/box prompt after the first on an
image skips the vision encoder (interactive annotation clicks many times on one image).

Storage and routing are Ray Serve's model multiplexing, keyed by the image's content: the
ingress sends each points request with `multiplexed_model_id=image_key(image)`, Serve's router
prefers the replica that already holds that key, and `@serve.multiplexed` keeps at most
`capacity` keys per replica, dropping the least recently used.  Each item carries its key too, and
the embedding is looked up by the item's own key, not by `serve.get_multiplexed_model_id()`: a
batch holding several images gets each one's embedding whether or not Serve splits batches by
model id (Ray releases before 2.54 did not).
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from ray import serve

from serving.metrics import image_encodings
from serving.predictor import ImageEmbedding, ModelImage, PointsItem, Sam3Predictor, model_image

MIB = 2**20


def image_key(image: ModelImage) -> str:
    """The hash of the resized pixels: exactly what the encoder sees (EXIF orientation applied), so
    a photo sent once as its file and once re-encoded as PNG shares one entry."""
    digest = hashlib.blake2b(str(image.pixels.shape).encode(), digest_size=16)
    digest.update(np.ascontiguousarray(image.pixels).data)
    return digest.hexdigest()


def capacity(cache_mb: float, embedding_bytes: int) -> int:
    """Images that fit in `cache_mb`; at least one whenever the cache is on at all."""
    return max(1, int(cache_mb * MIB // embedding_bytes)) if cache_mb > 0 else 0


@dataclass
class _Entry:
    embedding: ImageEmbedding | None = None


class EmbeddingCache:
    def __init__(self, predictor: Sam3Predictor, cache_mb: float):
        self.predictor = predictor
        self.images_encoded = 0
        self.encodings = image_encodings()
        # The size of one embedding depends on the checkpoint's feature maps and on the dtype, so
        # it is measured on the loaded model (the processor resizes every image to one size).
        (probe,) = predictor.embed([model_image(np.zeros((8, 8, 3), np.uint8), predictor.m.tracker_processor)])
        self.embedding_bytes = sum(t.numel() * t.element_size() for t in probe)
        self.capacity = capacity(cache_mb, self.embedding_bytes)

        # The loader only receives the key, so it makes an empty entry that the first batch for
        # that key fills with the image it carries.  A closure, not a method: Serve stores its
        # LRU on the decorated function object.
        async def new_entry(key: str) -> _Entry:
            return _Entry()

        self._entry = serve.multiplexed(max_num_models_per_replica=self.capacity)(new_entry) if self.capacity else None

    async def embeddings(self, items: Sequence[PointsItem]) -> list[ImageEmbedding]:
        """Each item's image embedding; an image with a key (the cache is on) is encoded at most
        once while it stays cached, however many items of the batch share it."""
        if not self._entry:
            return await self._encode([it.image for it in items])
        by_key: dict[str, ImageEmbedding] = {}
        for item in items:
            if item.image_key and item.image_key not in by_key:
                by_key[item.image_key] = await self._cached(item)
        return [by_key[it.image_key] if it.image_key else (await self._encode([it.image]))[0] for it in items]

    async def _cached(self, item: PointsItem) -> ImageEmbedding:
        assert self._entry is not None
        entry = await self._entry(item.image_key)
        if entry.embedding is None:
            # Encoded alone: the kept tensors are views of a batch of one, so they hold exactly
            # `embedding_bytes`.  Two batches never fill one entry at once: Serve runs a replica's
            # batches one at a time (max_concurrent_batches=1), and the pieces it may split one
            # batch into hold different keys.
            (entry.embedding,) = await self._encode([item.image])
        return entry.embedding

    async def _encode(self, images: list[ModelImage]) -> list[ImageEmbedding]:
        self.images_encoded += len(images)
        self.encodings.inc(len(images))
        return await asyncio.to_thread(self.predictor.embed, images)

    def describe(self) -> dict:
        return {
            "capacity": self.capacity,
            "embedding_bytes": self.embedding_bytes,
            "images_encoded": self.images_encoded,
        }
