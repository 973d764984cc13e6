"""Text prompts encoded once per replica: a batch job sends the same prompt ("red bus") with
thousands of images, and SAM3's text encoder is a transformer of its own.

The features are what `Sam3Model.get_text_features` returns for one prompt (the projected
per-token features and the attention mask), kept in a bounded LRU keyed by the prompt text and
handed to the detector as `text_embeds`.  Each missing prompt is encoded alone, as an in-process
call with that one prompt encodes it, so a cached prompt gives the same result as a fresh one.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import torch
from transformers.modeling_outputs import BaseModelOutputWithPooling


@dataclass
class TextFeatures:
    """Features of a batch of prompts, ready for the detector's forward pass."""

    embeds: BaseModelOutputWithPooling  # pooler_output: (B, tokens, hidden)
    attention_mask: torch.Tensor  # (B, tokens)


class TextFeatureCache:
    def __init__(self, detector, processor, entries: int):
        self.detector = detector
        self.processor = processor
        self.entries = entries
        self._kept: OrderedDict[str, tuple[torch.Tensor, torch.Tensor]] = OrderedDict()
        self.hits = 0
        self.misses = 0

    @torch.inference_mode()
    def features(self, texts: list[str], device: torch.device) -> TextFeatures:
        rows = [self._features(text, device) for text in texts]
        return TextFeatures(
            BaseModelOutputWithPooling(pooler_output=torch.cat([r[0] for r in rows])), torch.cat([r[1] for r in rows])
        )

    def _features(self, text: str, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        kept = self._kept.get(text)
        if kept is not None:
            self.hits += 1
            self._kept.move_to_end(text)
            return kept
        self.misses += 1
        tokens = self.processor(text=[text], return_tensors="pt").to(device)
        encoded = self.detector.get_text_features(
            input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"]
        )
        kept = (encoded.pooler_output, tokens["attention_mask"])
        if self.entries:
            self._kept[text] = kept
            if len(self._kept) > self.entries:
                self._kept.popitem(last=False)
        return kept

    def describe(self) -> dict:
        return {"entries": len(self._kept), "capacity": self.entries, "hits": self.hits, "misses": self.misses}
