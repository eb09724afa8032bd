#!/usr/bin/env python3
"""Writes an OCI image archive (for `ctr images import`) from files on disk, without a container
engine: one uncompressed layer, a config, a manifest, an index naming the image.

    oci.py OUT.tar NAME:TAG --entrypoint /pause --file /pause=./pause [--file /dst=src ...] [--env K=V ...]
"""

import argparse
import hashlib
import io
import json
import tarfile
from pathlib import Path


def blob(data):
    return "sha256:" + hashlib.sha256(data).hexdigest(), data


def layer(files):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as t:
        dirs = set()
        for dst, src in files:
            parts = Path(dst.lstrip("/")).parts
            for i in range(1, len(parts)):
                d = "/".join(parts[:i])
                if d not in dirs:
                    dirs.add(d)
                    info = tarfile.TarInfo(d)
                    info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, 0
                    t.addfile(info)
            src = Path(src)
            if src.is_dir():
                for p in sorted(src.rglob("*")):
                    rel = "/".join(parts) + "/" + str(p.relative_to(src))
                    info = t.gettarinfo(str(p), rel)
                    info.mtime, info.uid, info.gid, info.uname, info.gname = 0, 0, 0, "", ""
                    t.addfile(info, p.open("rb") if p.is_file() else None)
                continue
            with src.open("rb") as f:
                # From the open file: a symlink on the host becomes the file it points to.
                info = t.gettarinfo(arcname="/".join(parts), fileobj=f)
                info.mtime, info.uid, info.gid, info.uname, info.gname = 0, 0, 0, "", ""
                t.addfile(info, f)
    return buf.getvalue()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("name")
    ap.add_argument("--entrypoint", nargs="+", required=True)
    ap.add_argument("--file", action="append", default=[], help="DST=SRC (a file or a directory)")
    ap.add_argument("--env", action="append", default=[])
    ap.add_argument("--user", default="65532:65532")
    args = ap.parse_args()
    files = [f.split("=", 1) for f in args.file]
    ldigest, ldata = blob(layer(files))
    config = {
        "architecture": "amd64",
        "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": [ldigest]},
        "config": {"Entrypoint": args.entrypoint, "Env": ["PATH=/usr/local/bin:/bin", *args.env], "User": args.user},
    }
    cdigest, cdata = blob(json.dumps(config, sort_keys=True).encode())
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cdigest, "size": len(cdata)},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": ldigest, "size": len(ldata)}],
    }
    mdigest, mdata = blob(json.dumps(manifest, sort_keys=True).encode())
    index = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [
            {
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": mdigest,
                "size": len(mdata),
                "platform": {"architecture": "amd64", "os": "linux"},
                "annotations": {
                    "io.containerd.image.name": args.name,
                    "org.opencontainers.image.ref.name": args.name.rsplit(":", 1)[-1],
                },
            }
        ],
    }
    with tarfile.open(args.out, "w") as t:

        def put(name, data):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))

        put("oci-layout", b'{"imageLayoutVersion": "1.0.0"}')
        put("index.json", json.dumps(index).encode())
        for d, data in ((ldigest, ldata), (cdigest, cdata), (mdigest, mdata)):
            put("blobs/sha256/" + d.split(":")[1], data)
    print(f"{args.name} {mdigest} ({len(ldata)} bytes of layer)")


if __name__ == "__main__":
    main()
