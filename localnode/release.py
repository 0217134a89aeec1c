"""An earlier release of the operator, for the upgrade test: its chart and the images of its commit.

There are no published releases to pull (no registry here), so a release is a commit: its tree is
exported from git, its operator and broker images are built by its own hack/images/build.sh (sharing
buildah's store and the Debian bases with `make images`, so only what differs is built), and they are
imported into the node's containerd under tags of their own (`<version>-<commit>`), beside the images
of the working tree; an image built from the same inputs as the working tree's is that image, under its
tag. Built once per commit, under $TESTENV_DIR/releases/<commit>/.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import tarfile
from dataclasses import dataclass
from pathlib import Path

from localnode.node import Node, images
from testenv.paths import REPO, TESTENV_DIR

RELEASES = TESTENV_DIR / "releases"
# The images a release brings: the operator's (its workers too) and the broker's.
IMAGES = ("mqtt-operator", "mosquitto")
REF_NAME = "org.opencontainers.image.ref.name"


@dataclass(frozen=True)
class Release:
    commit: str
    chart: Path
    refs: dict[str, str]  # image name -> the ref it is imported under

    @property
    def operator_ref(self) -> str:
        return self.refs["mqtt-operator"]

    @property
    def broker_ref(self) -> str:
        return self.refs["mosquitto"]


def _git(*args: str) -> str:
    return subprocess.run(["git", "-C", str(REPO), *args], check=True, capture_output=True, text=True).stdout


def _retagged(archive: Path, ref: str, target: Path) -> None:
    """A copy of an OCI archive whose one image is named `ref` (what `ctr images import` tags it as)."""
    with tarfile.open(archive) as src, tarfile.open(target, "w") as dst:
        for member in src.getmembers():
            data = src.extractfile(member) if member.isfile() else None
            if member.name == "index.json" and data is not None:
                index = json.loads(data.read())
                for manifest in index["manifests"]:
                    manifest.setdefault("annotations", {})[REF_NAME] = ref
                body = json.dumps(index).encode()
                member.size = len(body)
                data = io.BytesIO(body)
            dst.addfile(member, data)


def build(commit: str) -> Release:
    """The release of `commit` (any name git resolves), built unless it was before."""
    sha = _git("rev-parse", "--verify", f"{commit}^{{commit}}").strip()
    home = RELEASES / sha
    done = home / "release.json"
    if not done.exists():
        shutil.rmtree(home, ignore_errors=True)
        source, testenv = home / "source", home / "testenv"
        source.mkdir(parents=True)
        (testenv / "images").mkdir(parents=True)
        archive = subprocess.run(["git", "-C", str(REPO), "archive", sha], check=True, capture_output=True)
        with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tree:
            tree.extractall(source, filter="tar")
        # The working tree's buildah store and the stamps of its Debian bases: the release's build
        # reuses them instead of making the bases again with mmdebstrap.
        (testenv / "buildah").symlink_to(TESTENV_DIR / "buildah")
        for stamp in (TESTENV_DIR / "images").glob(".base-*.inputs"):
            shutil.copy(stamp, testenv / "images" / stamp.name)
        proc = subprocess.run(
            ["bash", str(source / "hack" / "images" / "build.sh"), *IMAGES],
            env={**os.environ, "TESTENV_DIR": str(testenv)},
            capture_output=True,
            text=True,
        )
        if proc.returncode != 0:
            raise RuntimeError(
                f"building the images of {sha[:12]} failed:\n{proc.stdout[-3000:]}{proc.stderr[-3000:]}"
            )
        built = json.loads((testenv / "images" / "images.json").read_text())
        recorded = {}
        for name in IMAGES:
            ref = f"{built[name]['ref']}-{sha[:7]}"
            _retagged(Path(built[name]["archive"]), ref, home / f"{name}.tar")
            recorded[name] = {"ref": ref, "inputs": built[name]["inputs"]}
        shutil.rmtree(testenv / "images")  # the archives as built; the retagged copies are kept
        done.write_text(json.dumps({"commit": sha, "images": recorded}, indent=2))
    current = images()
    refs = {}
    for name, image in json.loads(done.read_text())["images"].items():
        # Built from the same inputs as the working tree's: the same image, under the working tree's
        # tag, as a release that did not change an image keeps its tag.
        same = image["inputs"] == current[name]["inputs"]
        refs[name] = current[name]["ref"] if same else image["ref"]
    return Release(sha, home / "source" / "charts" / "mqtt-operator", refs)


def import_images(node: Node, release: Release) -> None:
    """The release's images into the node's containerd, under their own tags."""
    present = set(node.ctr("images", "list", "--quiet").stdout.split())
    for name, ref in release.refs.items():
        if ref not in present and ref.endswith(f"-{release.commit[:7]}"):
            node.ctr("images", "import", str(RELEASES / release.commit / f"{name}.tar"), timeout=600)
