"""The benchmark table's Fast configs, in a module of their own so that `benchmarks.gpu` (no Ray, no
transformers) runs the same model as `benchmarks.table_runner`. Both are loaded from the presets that
configs/benchmark/table.yaml names for the full size (configs/fast_synth_images.yaml and
fast_synth_videos.yaml, whose comments say why those settings)."""

from benchmarks.table_spec import table_spec

_FULL = table_spec("full")
DEFAULT_FAST = _FULL.image.fast
VIDEO_FAST = _FULL.video.fast
