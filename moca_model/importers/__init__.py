"""`train_moca.py import`: public face-video datasets a user has downloaded -> our manifest (the format
`train_moca.py cache` reads, see moca_model/training/cache.py), with trimmed clips, face-mask videos and
reference face crops that honour the dataset's own boxes and masks.

    python train_moca.py import --format opens2v --json Jsons/part1.json --videos videos/part1 \
        [--clusters Jsons/cross_video_pairs/cluster_videos.json --pairs cross_pairs/] --out data/opens2v
    python train_moca.py import --format consisid --list total_train_data.txt --out data/consisid
    python train_moca.py cache --manifest data/opens2v/manifest.jsonl --out cache/opens2v ...

One module per layout (`opens2v`, `consisid`); `common` writes the files. Nothing is downloaded.
"""
from __future__ import annotations

import argparse

FORMATS = ("opens2v", "consisid")


def main(argv) -> int:
    from . import consisid, opens2v
    from .common import DatasetLayoutError, ManifestWriter
    p = argparse.ArgumentParser(prog="train_moca.py import", description=__doc__.split("\n")[0])
    p.add_argument("--format", required=True, choices=FORMATS, help="the dataset's layout")
    p.add_argument("--out", required=True, help="folder for manifest.jsonl, clips/, masks/, refs/, import_report.json")
    p.add_argument("--max-frames", type=int, default=0, help="at most this many source frames per clip (0 = the "
                   "whole face segment; cache then takes --frames of them at --fps)")
    p.add_argument("--refs", type=int, default=1, help="reference face crops per clip")
    p.add_argument("--ref-margin", type=float, default=0.5, help="margin around the face box in the reference "
                   "crop, as a fraction of the box's longer side on each side")
    p.add_argument("--limit", type=int, default=0, help="import only the first N clips (0 = all)")
    p.add_argument("--overwrite", action="store_true", help="rewrite clips that an earlier run already wrote")
    opens2v.add_arguments(p)
    consisid.add_arguments(p)
    a = p.parse_args(argv)
    try:
        importer = (opens2v if a.format == "opens2v" else consisid).from_args(a)
    except DatasetLayoutError as e:
        p.error(str(e))
    report = importer.run(ManifestWriter(a.out, a.ref_margin, a.overwrite), a.limit)
    print(f"[moca-import] {report['clips']} clips of {report['identities']} identities -> {a.out}/manifest.jsonl; "
          f"{report['skipped']} skipped (see import_report.json); references {report['references']}, "
          f"masks {report['masks']}")
    return 0
