"""Media for the search page without Ray (serve_app/media.py): only files inside the collection root are read,
images come back as stored (or as PNG), videos as a poster frame. Over HTTP: tests/test_serve_app.py."""

import io
import os

import numpy as np
import pytest
from media_fixtures import frame_level, make_image_bytes, make_mp4_bytes, make_png_bytes, random_bytes, write_file
from PIL import Image

from fastslow import storage
from serve_app.media import (POSTER_SIZE, MediaReader, MediaRefused, image_for_browser, local_path_inside,
                             poster_frame, s3_uri_inside)


@pytest.fixture
def tree(tmp_path):
    """A collection under tmp/coll, a file beside it (tmp/coll-other) and one outside it (tmp/outside)."""
    coll = tmp_path / "coll"
    write_file(coll / "a" / "red.png", make_png_bytes(20, 10, (200, 30, 30)))
    write_file(tmp_path / "coll-other" / "x.png", make_png_bytes())
    write_file(tmp_path / "outside" / "secret.png", make_png_bytes(8, 8, (1, 2, 3)))
    os.symlink(tmp_path / "outside" / "secret.png", coll / "a" / "link-out.png")
    os.symlink(coll / "a" / "red.png", coll / "link-in.png")
    os.symlink(tmp_path / "outside", coll / "dir-out")
    return coll


def test_local_paths_must_resolve_inside_the_collection(tree):
    root = str(tree)
    assert local_path_inside(str(tree / "a" / "red.png"), root) == str(tree / "a" / "red.png")
    assert local_path_inside(str(tree / "link-in.png"), root) == str(tree / "a" / "red.png")
    assert local_path_inside(root + "/a/../a/red.png", root) == str(tree / "a" / "red.png")
    refused = [str(tree / "a" / "link-out.png"), str(tree / "dir-out" / "secret.png"), root + "/../outside/secret.png",
               root + "/a/../../coll-other/x.png", str(tree.parent / "coll-other" / "x.png"), "/etc/passwd",
               "a/red.png", "../coll/a/red.png", root, root + "/"]
    for uri in refused:
        with pytest.raises(MediaRefused):
            local_path_inside(uri, root)
    # A symlinked collection root is the folder it names.
    os.symlink(tree, tree.parent / "coll-link")
    assert local_path_inside(str(tree / "a" / "red.png"), str(tree.parent / "coll-link")) == str(tree / "a" / "red.png")


def test_s3_uris_must_be_under_the_collection_prefix():
    assert s3_uri_inside("s3://bkt/photos/a/b.jpg", "s3://bkt/photos") == "s3://bkt/photos/a/b.jpg"
    assert s3_uri_inside("s3://bkt/photos/a/b.jpg", "s3://bkt/photos/") == "s3://bkt/photos/a/b.jpg"
    for uri in ("s3://bkt/photos2/b.jpg", "s3://other/photos/b.jpg", "s3://bkt/photos/../private/b.jpg",
                "s3://bkt/photos/./b.jpg", "s3://bkt/photos"):
        with pytest.raises(MediaRefused):
            s3_uri_inside(uri, "s3://bkt/photos")


def test_reader_serves_images_and_refuses_what_is_outside_or_unreadable(tree):
    reader, root = MediaReader(), str(tree)
    data, kind = reader.get({"uri": str(tree / "a" / "red.png"), "media": "image"}, root)
    assert kind == "image/png" and data == (tree / "a" / "red.png").read_bytes()
    bmp = write_file(tree / "b.bmp", make_image_bytes(6, 4, (10, 120, 240), "BMP"))
    data, kind = reader.get({"uri": bmp, "media": "image"}, root)
    assert kind == "image/png"
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(data))), np.asarray(Image.open(bmp).convert("RGB")))
    assert reader.get({"uri": str(tree / "link-in.png"), "media": "image"}, root)[1] == "image/png"
    write_file(tree / "junk.png", random_bytes(300))
    os.mkfifo(tree / "fifo.png")
    cases = [({"uri": str(tree / "a" / "link-out.png"), "media": "image"}, root, "outside"),
             ({"uri": str(tree / "missing.png"), "media": "image"}, root, "missing"),
             ({"uri": str(tree / "junk.png"), "media": "image"}, root, "not a readable image"),
             ({"uri": str(tree / "fifo.png"), "media": "image"}, root, "not a file"),
             ({"uri": str(tree / "a" / "red.png"), "media": "image"}, None, "no collection root"),
             ({"uri": str(tree / "a" / "red.png"), "media": "image"}, "s3://bkt/coll", "outside"),
             ({"uri": str(tree / "a" / "red.png"), "media": "audio"}, root, "unknown media type")]
    for item, where, needle in cases:
        with pytest.raises(MediaRefused, match=needle):
            reader.get(item, where)


def test_video_poster_is_the_middle_frame_as_jpeg_and_is_cached(tree):
    video = write_file(tree / "clips" / "c.mp4", make_mp4_bytes(num_frames=16, width=48, height=32))
    reader = MediaReader(capacity=1)
    data, kind = reader.get({"uri": video, "media": "video"}, str(tree))
    img = Image.open(io.BytesIO(data))
    assert kind == "image/jpeg" and img.format == "JPEG" and img.size == (POSTER_SIZE, POSTER_SIZE)
    assert abs(float(np.asarray(img).mean()) - frame_level(8)) < 4  # frame 8 of 16, not the first (16)
    assert reader.get({"uri": video, "media": None}, str(tree))[0] is data  # from the cache, media from the name
    assert len(reader.cache) == 1
    with pytest.raises(MediaRefused, match="video does not decode"):
        poster_frame(random_bytes(500))
    # A rewritten file is decoded again, not answered from the cache.
    write_file(video, make_mp4_bytes(num_frames=4, width=48, height=32))
    again = reader.get({"uri": video, "media": "video"}, str(tree))[0]
    assert again != data and len(reader.cache) == 1


def test_reader_reads_s3_through_storage(s3_bucket):
    storage.write_bytes(f"{s3_bucket}/coll/x.png", make_png_bytes(5, 5))
    storage.write_bytes(f"{s3_bucket}/other/y.png", make_png_bytes(5, 5))
    reader = MediaReader()
    assert reader.get({"uri": f"{s3_bucket}/coll/x.png", "media": "image"}, f"{s3_bucket}/coll") == (
        make_png_bytes(5, 5), "image/png")
    with pytest.raises(MediaRefused, match="outside"):
        reader.get({"uri": f"{s3_bucket}/other/y.png", "media": "image"}, f"{s3_bucket}/coll")
    with pytest.raises(MediaRefused, match="missing"):
        reader.get({"uri": f"{s3_bucket}/coll/none.png", "media": "image"}, f"{s3_bucket}/coll")
    with pytest.raises(MediaRefused, match="outside"):
        reader.get({"uri": "/etc/passwd", "media": "image"}, f"{s3_bucket}/coll")


def test_browser_formats_pass_through():
    for fmt, kind in (("JPEG", "image/jpeg"), ("PNG", "image/png"), ("GIF", "image/gif"), ("WEBP", "image/webp")):
        data = make_image_bytes(8, 8, (1, 2, 3), fmt)
        assert image_for_browser(data) == (data, kind)
