"""The benchmark table's Fast configs, in a module of their own so that `benchmarks.gpu` (no Ray, no
transformers) runs the same model as `benchmarks.table_runner`."""

from dataclasses import replace

from fastslow.models.config import FastConfig, TextTowerConfig, VisionTowerConfig

# The offline default: pretrained EfficientNet-Lite0 (frozen) with trained heads over the mid-level map's
# positions (global pooling finds the right scene group for only ~75% of captions in the top 20 on quick
# images, too few for re-ranking to catch up), and MiniLM's first two layers fine-tuned. Quick images, Fast
# R@1 / R@10 / ms per caption encoded: all 6 layers frozen 47 / 91 / 1.9; 2 frozen 57 / 94 / 0.5; 2 fine-tuned
# 63 / 98 / 0.5; 1 fine-tuned 61 / 98 / 0.4. A query pays the text tower, so fewer layers keep Fast's share
# of a Fast+Slow query small; but on full images (1,000 near-twin scenes) one layer's top 20 holds the true
# image for 95.9% of captions and two layers' for 97.5%, which is what brings Fast then Slow at K=20 within
# 2 of Slow there (91.3 -> 92.8 against 93.9, same queries).
DEFAULT_FAST = FastConfig(vision=VisionTowerConfig(kind="efficientnet_lite0", image_size=128),
                          text=TextTowerConfig(kind="minilm", layers=2, trainable=True), embed_dim=256,
                          head_hidden=1024,
                          vision_pooling="mid_tokens", token_hidden=512, text_pooling="attention", visual_dropout=0.3)
# Videos keep one layer: Fast then Slow at K=20 already equals Slow on them at both sizes (top-20 recall
# 100%), and the second layer costs about a third more training time.
VIDEO_FAST = replace(DEFAULT_FAST, text=replace(DEFAULT_FAST.text, layers=1))
