"""The `fastslow` command line's parser: one function per command, with the defaults taken from where they live
(SearchRequest for k and rerank_k, DecodeConfig for frames, the Serve app's port)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from fastslow.data.decode import DecodeConfig
from fastslow.search.request import IMAGE_WEIGHT, SearchRequest
from fastslow.synth.presets import synth_sizes
from serve_app.config import DEFAULT_PORT

SERVE_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "serve_synth.yaml"

LOCAL_RAY = "local"  # --address local: run as a Ray job, on RAY_ADDRESS (as under `ray job submit`) or a Ray started here


def _add_data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", help="dataset: a Karpathy/VATEX JSON, a folder of them, tar shards, or a CSV/JSONL/Parquet "
                                  "manifest; local path or s3://")
    p.add_argument("--format", default=None, help="karpathy, vatex, webdataset, img2dataset_parquet, manifest, folder, "
                                                  "or auto (default: auto)")
    p.add_argument("--media-root", default=None, help="folder or s3:// prefix holding the images/videos "
                                                      "(default: beside the annotations)")
    p.add_argument("--media", choices=["image", "video"], default=None, help="use only this media type")




def _add_address(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("--address", help=f"Ray cluster to run on ({what}); local paths must then be absolute and "
                                     f"reachable from the cluster, or s3://. `{LOCAL_RAY}`: the same on RAY_ADDRESS or "
                                     "a Ray started here. Default: this machine")


def _synth_parser(sub, common: argparse.ArgumentParser) -> None:
    """The `synth` command's parser."""
    p = sub.add_parser("synth", parents=[common], help="write the synthetic benchmark (Karpathy-format images, VATEX-format videos)",
                       description="Write the synthetic benchmark: two-object scenes whose captions bind colour, shape, "
                                   "size and position, with swapped twins in the same split; videos whose captions "
                                   "name motion direction and event order. Deterministic from --seed.")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--size", choices=sorted(synth_sizes()), default="quick",
                   help="a size of configs/synth.yaml (default quick)")
    p.add_argument("--workers", type=int, default=1, help="processes used to render (output does not depend on it)")
    _add_address(p, "as one Ray task")


def _train_parser(sub, common: argparse.ArgumentParser) -> None:
    """The `train` command's parser."""
    p = sub.add_parser("train", parents=[common], help="train a model (here, or as a Ray Train job with --address)",
                       description="Train a model in this process, or on a Ray cluster with --address. Settings come "
                                   "from --config (YAML) with KEY=VALUE overrides, e.g. train.epochs=5 model.vision.kind=tiny_cnn.",
                       epilog="Splits: data.train_split (default train) and data.val_split (default val; null: no "
                              "validation) name the dataset's splits. A dataset with none (tar shards, a folder, a "
                              "manifest without a split column) needs no split settings: data.val_split is the "
                              "data.val_fraction share of its items (default 0.05; 0: no validation) held out by a "
                              "hash of the id, the same in every run, and data.train_split the rest.")
    p.add_argument("model", choices=["fast", "slow", "distill"],
                   help="fast: the dual encoder; slow: the cross-attention captioner; distill: a Fast student "
                        "taught by a Slow checkpoint (teacher=PATH)")
    p.add_argument("--config", help="YAML config (see configs/)")
    p.add_argument("--out", help="run folder for the checkpoint, config and history (local or s3://)")
    _add_address(p, "as a Ray Train job; workers from job.num_workers, GPUs where the cluster has them")
    _add_data_args(p)


def _index_parser(sub, common: argparse.ArgumentParser) -> None:
    """The `index` command's parser."""
    p = sub.add_parser("index", parents=[common], help="embed a collection and publish a sharded FAISS index version",
                       description="Embed every item with a Fast checkpoint (Ray Data, partition by partition, "
                                   "resumable), build the FAISS shards and move CURRENT to the new version. Settings "
                                   "from --config (configs/index_*.yaml) with KEY=VALUE overrides, e.g. "
                                   "index.shards=4 index.factory=IVF1024,Flat embed.concurrency=4.")
    p.add_argument("--checkpoint", help="the Fast checkpoint that embeds the items (local or s3://)")
    p.add_argument("--root", help="index folder holding versions/ and CURRENT (local or s3://)")
    p.add_argument("--config", help="YAML config (see configs/index_synth_images.yaml)")
    change = p.add_mutually_exclusive_group()
    change.add_argument("--append", action="store_true",
                        help="embed only the items the live version does not hold and publish it with them added "
                             "(a version sharing its shards' files)")
    change.add_argument("--delete", metavar="IDS",
                        help="publish the live version without these items: comma-separated ids, or @FILE with "
                             "one id per line (needs only --root)")
    change.add_argument("--compact", action="store_true",
                        help="rebuild the live version's changed shards whole and publish that (needs only --root)")
    _add_address(p, "as a Ray Data job")
    _add_data_args(p)


def _serve_parser(sub, common: argparse.ArgumentParser) -> None:
    """The `serve` command's parser."""
    p = sub.add_parser("serve", parents=[common], help="deploy the search app (Ray Serve) and serve until Ctrl-C",
                       description="Deploy the app from its Serve config YAML with this index and these models, wait "
                                   "until every shard and the re-ranker answer, and print the URL. On this machine it "
                                   "serves until Ctrl-C; with --address it deploys to the cluster and returns. With "
                                   "the cluster's dashboard URL (http://HOST:8265, as `ray job submit` takes; from "
                                   "outside the cluster after `ray dashboard ray_cluster.yaml`) a Ray job deploys it "
                                   "with this project's source tree, the code the jobs run, and waits on the cluster.")
    p.add_argument("--index-root", required=True, help="index folder (the one `fastslow index --root` wrote)")
    p.add_argument("--fast", required=True, help="the Fast checkpoint the index was built with")
    p.add_argument("--slow", default="", help="the Slow checkpoint that re-ranks (default: none, Fast order only)")
    p.add_argument("--config", default=str(SERVE_CONFIG), help=f"Serve config YAML (default {SERVE_CONFIG.name})")
    p.add_argument("--port", type=int, default=None, help=f"HTTP port of Serve's proxy, on 127.0.0.1 here or on the "
                                                           f"cluster's head (default: the YAML's, else {DEFAULT_PORT})")
    p.add_argument("--address", help="Ray cluster to deploy to; the app keeps running there. Its dashboard URL "
                                     "(http://HOST:8265): deployed by a Ray job with this project's code, waited on "
                                     "inside the cluster, paths resolved there (FASTSLOW_STORAGE_ROOT for relative "
                                     "ones). A GCS address (HOST:6379, auto, ray://...): joined from here, local "
                                     f"paths made absolute here. `{LOCAL_RAY}`: RAY_ADDRESS or a Ray started here. "
                                     "Default: a Ray on this machine, served until Ctrl-C")
    p.add_argument("--cluster-python", default="python",
                   help="with a dashboard URL as --address: the Python on the cluster's head that runs the deploy job "
                        "(default: python, as ray_cluster.yaml's nodes have it)")


def _search_parser(sub, common: argparse.ArgumentParser) -> None:
    """The `search` command's parser."""
    p = sub.add_parser("search", parents=[common], help="query a running search endpoint from the terminal",
                       description="POST the query to URL/search and print the results with both scores and the "
                                   "answer's per-stage timings. Words, an image (--image) or an indexed item "
                                   "(--like), or words with either; --filter keeps the items passing it.")
    p.add_argument("query", nargs="?", default="", help="the text to search for (optional with --image or --like)")
    p.add_argument("--image", metavar="FILE", help="search with this image (sent base64; the app's "
                                                   "limits.max_image_bytes applies)")
    p.add_argument("--like", metavar="ID", help="search with the vector of this indexed item")
    p.add_argument("--image-weight", type=float, default=IMAGE_WEIGHT,
                   help=f"with words and --image/--like: the image's weight w in (1 - w) * words + w * image "
                        f"(default {IMAGE_WEIGHT})")
    p.add_argument("--filter", metavar="JSON",
                   help='conditions on the items\' fields, e.g. \'{"width": {"gte": 512}}\', or a file holding them '
                        "(GET URL/filters lists the fields)")
    url = f"http://127.0.0.1:{DEFAULT_PORT}"
    p.add_argument("--url", default=url, help=f"the app's base URL (default {url})")
    p.add_argument("-k", "--k", type=int, default=SearchRequest.k, help=f"results to return (default {SearchRequest.k})")
    p.add_argument("--rerank-k", type=int, default=SearchRequest.rerank_k,
                   help=f"Fast candidates Slow re-ranks (default {SearchRequest.rerank_k})")
    p.add_argument("--no-rerank", action="store_true", help="Fast order only")
    p.add_argument("--json", action="store_true", help="print the raw JSON answer")
    p.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for the answer (default 30)")
    p.add_argument("--api-key", default=os.environ.get("FASTSLOW_API_KEY") or None,
                   help="sent as header X-API-Key, for an app that requires one (default: $FASTSLOW_API_KEY)")


def _demo_parser(sub, common: argparse.ArgumentParser) -> None:
    """The `demo` command's parser."""
    p = sub.add_parser("demo", parents=[common], help="the whole system on synthetic data: train, index, serve",
                       description="Start a local Ray, write the synthetic corpus, train Fast and Slow and distil, "
                                   "build the index, print the evaluation table, deploy the app and serve the search "
                                   "page until Ctrl-C. A rerun reuses what the work folder already holds.")
    p.add_argument("--workdir", default="runs/demo", help="where the corpus, models and index go (default runs/demo)")
    p.add_argument("--size", default="demo", help="demo (default, ~10 min on 2 cores) or tiny (seconds, for tests); "
                                                  "see configs/demo.yaml")
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"HTTP port on 127.0.0.1 (default {DEFAULT_PORT})")
    p.add_argument("--seed", type=int, default=0, help="seed of the corpus and the training runs (default 0)")
    p.add_argument("--exit-when-ready", action="store_true", help="shut down once set up and checked, do not serve")


def _eval_parser(sub, common: argparse.ArgumentParser) -> None:
    """The `eval` command's parser."""
    p = sub.add_parser("eval", parents=[common], help="text-to-visual retrieval metrics of a checkpoint on a split",
                       description="R@1, R@5, R@10 and median rank: every caption of the split is a query, "
                                   "the split's items are the gallery.")
    p.add_argument("--checkpoint", required=True, help="checkpoint folder (local or s3://)")
    p.add_argument("--split", default="test",
                   help="split to evaluate (default test; 'all' for every item). A dataset with no splits has only "
                        "train and val (the 5%% held out by a hash of the id, data.val_fraction's default)")
    p.add_argument("--num-frames", type=int, default=DecodeConfig.num_frames,
                   help=f"frames sampled per video (default {DecodeConfig.num_frames})")
    p.add_argument("--json", dest="json_out", help="also write the metrics to this file")
    p.add_argument("--rerank", metavar="SLOW_CHECKPOINT", help="re-rank Fast's top K with this Slow checkpoint")
    p.add_argument("--k", type=int, default=SearchRequest.rerank_k,
                   help=f"candidates per query re-ranked by Slow (default {SearchRequest.rerank_k})")
    p.add_argument("--fast-weight", type=float, default=0.0,
                   help="final score = Slow log-likelihood + this x Fast cosine (default 0: the Slow order)")
    _add_address(p, "as one Ray task")
    _add_data_args(p)


def _pretrained_parser(sub, common: argparse.ArgumentParser) -> None:
    """The `pretrained` command's parser."""
    p = sub.add_parser("pretrained", parents=[common], help="make a checkpoint from a pretrained image-text model",
                       description="Turn a pretrained model into a self-contained checkpoint that index, eval and "
                                   "serve load on any node: fast = CLIP, SigLIP or SigLIP 2 used zero-shot (its own "
                                   "projections and preprocessing); slow = BLIP as the re-ranker. The checkpoint "
                                   "holds the weights, the tokenizer and the preprocessing settings, and records "
                                   "where they came from.")
    p.add_argument("kind", choices=["fast", "slow"], help="fast: a dual encoder (CLIP, SigLIP, SigLIP 2); slow: BLIP")
    p.add_argument("--model", required=True, help="a local transformers folder, a hub id (from the local Hugging "
                                                  "Face cache when HF_HUB_OFFLINE is set) or an s3:// prefix")
    p.add_argument("--revision", default=None, help="hub ids only: a branch, tag or commit (default main)")
    p.add_argument("--out", required=True, help="the checkpoint folder to write (local or s3://)")
    p.add_argument("--head", choices=["caption", "itm", "itm+itc"], default="caption",
                   help="slow only: BLIP's score, the caption likelihood (default), its matching head, or both")


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING (default: INFO)")
    common.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser = argparse.ArgumentParser(prog="fastslow", description=__doc__,
                                     epilog="synth, train and index also take KEY=VALUE settings after their options, e.g. "
                                            "`fastslow synth --out d n_test=100`, `fastslow train fast train.epochs=5`. "
                                            "`fastslow COMMAND --help` explains each command's options.",
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    _synth_parser(sub, common)
    _train_parser(sub, common)
    _index_parser(sub, common)
    _serve_parser(sub, common)
    _search_parser(sub, common)
    _demo_parser(sub, common)
    _eval_parser(sub, common)
    _pretrained_parser(sub, common)
    return parser
