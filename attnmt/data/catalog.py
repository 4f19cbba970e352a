"""Corpora a user can fetch by name: `attnmt data NAME DIR` writes DIR/NAME/ with the files and SOURCE.md (where
they come from, their licence, their checksums), each file checked against its SHA-256.

    multi30k        German–English image captions (train 29,000, val 1,014, test2016 1,000 pairs)
    tatoeba-kor-eng Korean–English everyday sentences (5,749 pairs; shipped inside attnmt)
    tatoeba-eng-fra English–French everyday sentences (142,787 pairs)
    ko-en-pydocs    Korean–English Python documentation (62,275 / 1,537 / 1,494 pairs; shipped inside attnmt)

A file comes from a URL (a gzip file, or a member of a zip archive), or from inside the installed package. Downloaded
text is cleaned exactly as the corpora were when attnmt's authors fetched them (UTF-8, NFC, no format characters,
Unicode spaces made plain spaces and collapsed, fields stripped; tab separators kept), and the SHA-256 checked is that
of the cleaned file: what a config reads is then byte for byte what attnmt's benchmarks read. Each file is written
to a temporary name and renamed when its checksum is right, so an interrupted or failed fetch leaves no half-written
file, and a second run skips what is already there and right. `mirror` (or ATTNMT_DATA_MIRROR) fetches every URL's
path from another host instead: a local copy, or the tests' HTTP server on 127.0.0.1.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import io
import os
import re
import sys
import tarfile
import unicodedata
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path

from attnmt.config import PACKAGE_ROOT
from attnmt.errors import AttnmtError

MIRROR_VARIABLE = "ATTNMT_DATA_MIRROR"
TIMEOUT_SECONDS = 60
SOURCE_FILE = "SOURCE.md"  # written beside the files: where they come from, their licence, their checksums
SHIPPED = PACKAGE_ROOT / "data" / "shipped"

MULTI30K = "https://github.com/multi30k/dataset/raw/a3d2e0d26b56f3846f66a952536ffed4e401d05a/data/task1/raw/"
ENG_FRA_ZIP = "https://github.com/genimind/seq2seq/raw/4f3f8eb0adde54fcc8b89394336b002e7961244c/fra-eng.zip"


@dataclass(frozen=True)
class DataFile:
    """One file of a corpus: where it comes from, how it is unpacked, and the SHA-256 of the file written."""

    name: str  # the file written in DIR/NAME/
    sha256: str
    url: str | None = None  # None: from the package (`shipped`)
    member: str | None = None  # a zip archive's member; a URL ending in .gz is gunzipped
    shipped: str | None = None  # a path under attnmt/ (a file, or `archive.tar.xz:member`)
    clean: bool = True  # apply the cleaning (text corpora; licence texts are kept as they are)


@dataclass(frozen=True)
class Corpus:
    name: str
    description: str
    licence: str  # what the README written beside the files says about the terms
    files: tuple[DataFile, ...]


def _multi30k(name: str, source: str, sha256: str) -> DataFile:
    return DataFile(name, sha256, url=MULTI30K + source)


def _pydocs(name: str, sha256: str) -> DataFile:
    return DataFile(name, sha256, shipped=f"data/shipped/ko-en-pydocs.tar.xz:ko-en-pydocs/{name}")


CORPORA: dict[str, Corpus] = {corpus.name: corpus for corpus in (
    Corpus("multi30k", "Multi30k task 1, German–English image captions (train, val, test2016): "
                       "github.com/multi30k/dataset at commit a3d2e0d, data/task1/raw",
           "Multi30k (Elliott et al. 2016); the captions extend Flickr30k. Use them under the terms given in the "
           "source repository, and cite the Multi30k paper.",
           (_multi30k("train.de", "train.de.gz", "550c2612c7ae45ed46754e67c3011fde500b1bf88592a376e2ed6126903766f7"),
            _multi30k("train.en", "train.en.gz", "f7cb7c7d411f6039a15de94de8c4d1709fada7b7474791598fd18451ec62427d"),
            _multi30k("val.de", "val.de.gz", "c02c1d05fb89dba12b00503a2744b1105d45fef287501fd701b4fea5b1fca3e5"),
            _multi30k("val.en", "val.en.gz", "1f2a23d992769b5b3d209b0a10dd0b77c08cceb1f20dfb97ed0aafa49d107227"),
            _multi30k("test2016.de", "test_2016_flickr.de.gz",
                      "4be6b5b3236b79c25475c6bb829800a7ce559e9ba7a1f6c2394fe4d40be46d16"),
            _multi30k("test2016.en", "test_2016_flickr.en.gz",
                      "399a4382932c1aadd3ceb9bef1008d388a64c76d4ae4e9d4728c6f4301cac182"))),
    Corpus("tatoeba-kor-eng", "Tatoeba Korean–English sentence pairs (English, Korean, attribution), the "
                              "manythings.org/anki export of 2023-02-20, as shipped with attnmt",
           "CC BY 2.0 FR (Tatoeba, tatoeba.org); attribution of each pair in its third column; terms in "
           "kor-eng_about.txt.",
           (DataFile("kor-eng.tsv", "6c9d8de3e500306997e4083274fb0038ef521651ffb2b7923e4e607a59d09dbc",
                     shipped="demo/kor-eng.tsv"),
            DataFile("kor-eng_about.txt", "14edaa774978b74d57a316ed402880c69af8de5c0087e6705b9eb5557621c65e",
                     shipped="demo/kor-eng_about.txt", clean=False))),
    Corpus("tatoeba-eng-fra", "Tatoeba English–French sentence pairs, the manythings.org/anki export of 2017-09-29 "
                              "(github.com/genimind/seq2seq at commit 4f3f8eb, fra-eng.zip)",
           "CC BY 2.0 FR (Tatoeba, tatoeba.org); terms in eng-fra_about.txt.",
           (DataFile("eng-fra.tsv", "d3618ff6e407865852263742f5d44ffe0b5e0ec8a7838f4f565b88f98c267efc",
                     url=ENG_FRA_ZIP, member="fra.txt"),
            DataFile("eng-fra_about.txt", "359011f5738272138286287b44db215d184823911eb049da2160a6ac6933d6c9",
                     url=ENG_FRA_ZIP, member="_about.txt", clean=False))),
    Corpus("ko-en-pydocs", "Korean–English pairs of the Python documentation (the python-docs-ko translation "
                           "catalogs), split by document; built for attnmt and shipped with it: README.md tells how",
           "Python Software Foundation License Version 2. Copyright © 2001-2024 Python Software Foundation; All "
           "Rights Reserved. Anything that redistributes these files keeps this notice and names the licence.",
           (_pydocs("train.ko", "56c0e0d6368ded20e64972919a4f616b714cc344776fb59d088b6bbd1639a276"),
            _pydocs("train.en", "7d04334f5a6abb91b3abab99ec7f4a90cb17e05394287b23dd963d4c76ac1a7d"),
            _pydocs("dev.ko", "6919243d07fc4a7ec66f5433b5023cb16e1195d558d3c54dc70c2fa04f147b18"),
            _pydocs("dev.en", "bc9d2272ffd159ca16dd605b9490eef2f140c3792266f0faa5324ca3631db55c"),
            _pydocs("test.ko", "bd21d82d829ce8febffecc54e151c3a0553c94d5193878ca7cd9d919d592ab1f"),
            _pydocs("test.en", "3664c2d0e5de406009eeba50d36b31d492a12b5aad97a8c3a48977b5b98d5895"),
            _pydocs("train.documents", "9eb38d6cfae46f77cd1197c4a696fb01db8e092d18f2a7896d96d1f6c4923dc0"),
            _pydocs("dev.documents", "426a539435393de813362f4671de5470517c9d5f22e9b1c9403156e930dfa7df"),
            _pydocs("test.documents", "b8e832cccf8ff23782958e5bf56ac8dd8394410589a8a6493a6b6b6c87f1b00a"),
            DataFile("README.md", "56eb1ed854af08d18f218d80774250b354b9f658f98bf3013064e550960f2003",
                     shipped="data/shipped/ko-en-pydocs.tar.xz:ko-en-pydocs/README.md", clean=False))),
)}

_SPACES = re.compile(r" {2,}")


@functools.cache
def _category_pattern(category: str) -> re.Pattern:
    """A regular expression matching any character of a Unicode general category (e.g. Cf, Zs)."""
    members = "".join(re.escape(chr(c)) for c in range(sys.maxunicode + 1) if unicodedata.category(chr(c)) == category)
    return re.compile(f"[{members}]")


def clean_line(line: str) -> str:
    """One line as the corpora were cleaned: NFC; format characters (category Cf: zero-width space, soft hyphen,
    BOM) removed; no-break, thin and other Unicode spaces (Zs) made plain spaces; per tab-separated field, runs of
    spaces collapsed and the ends stripped."""
    if not line.isascii():
        line = unicodedata.normalize("NFC", line)
        line = _category_pattern("Zs").sub(" ", _category_pattern("Cf").sub("", line))
    return "\t".join(_SPACES.sub(" ", part).strip() for part in line.split("\t"))


def clean_text(data: bytes, origin: str) -> bytes:
    """The cleaned corpus file: strict UTF-8 in, UTF-8 with `\\n` line ends and a final newline out."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise AttnmtError(f"{origin}: not UTF-8 at byte {error.start}; the download is damaged or not the corpus "
                          f"file, try again") from None
    lines = text.replace("\r\n", "\n").split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return "".join(clean_line(line) + "\n" for line in lines).encode("utf-8")


def _download(url: str, mirror: str | None) -> bytes:
    """The bytes at `url`, or at the same path on `mirror`."""
    if mirror:
        url = mirror.rstrip("/") + urllib.parse.urlsplit(url).path
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT_SECONDS) as response:  # noqa: S310 (https or a mirror)
            data = response.read()
    except urllib.error.HTTPError as error:
        reason = f"HTTP {error.code} {error.reason}"
    except (urllib.error.URLError, OSError, ValueError) as error:  # ValueError: not a URL (a bad --mirror)
        reason = getattr(error, "reason", error)
    else:
        return data
    raise AttnmtError(f"cannot download {url} ({reason}); check the network (or the mirror, {MIRROR_VARIABLE}) and "
                      f"run the command again: files already fetched are kept") from None


def _raw_bytes(file: DataFile, mirror: str | None, downloads: dict) -> bytes:
    """The file's content before cleaning: unpacked from its download (each URL fetched once) or from the package."""
    if file.shipped is not None:
        path, _, member = file.shipped.partition(":")
        if not member:
            return (PACKAGE_ROOT / path).read_bytes()
        if path not in downloads:  # unpack a shipped archive once: {member: bytes}
            with tarfile.open(PACKAGE_ROOT / path, "r:xz") as archive:
                downloads[path] = {m.name: archive.extractfile(m).read() for m in archive.getmembers() if m.isfile()}
        if member not in downloads[path]:
            raise AttnmtError(f"{path} has no file {member}: the attnmt installation is damaged; reinstall it")
        return downloads[path][member]
    if file.url not in downloads:
        downloads[file.url] = _download(file.url, mirror)
    data = downloads[file.url]
    try:
        if file.member is not None:
            with zipfile.ZipFile(io.BytesIO(data)) as archive:
                return archive.read(file.member)
        if file.url.endswith(".gz"):
            return gzip.decompress(data)
    except (zipfile.BadZipFile, KeyError, OSError, EOFError) as error:
        raise AttnmtError(f"{file.url}: the download cannot be unpacked ({error}); try again") from None
    return data


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _write(path: Path, data: bytes) -> None:
    """Write to a temporary file beside `path`, then rename: never a half-written `path`."""
    temporary = path.with_name(f".{path.name}.part")
    try:
        temporary.write_bytes(data)
        os.replace(temporary, path)
    except OSError as error:
        temporary.unlink(missing_ok=True)
        raise AttnmtError(f"cannot write {path} ({error.strerror}); free some space or choose a folder you can "
                          f"write to, and run the command again: files already fetched are kept") from None


def fetch(name: str, directory: str | Path, mirror: str | None = None, corpus: Corpus | None = None,
          say=print) -> Path:
    """Fetch corpus `name` into DIRECTORY/NAME/, checking every file's SHA-256; returns that folder.

    Files already there with the right checksum are kept; a wrong one is replaced. A checksum that does not match
    after download is an `AttnmtError` naming the file (nothing of it is written). `corpus` replaces the catalog's
    entry (the tests use corpora of small files)."""
    if corpus is None:
        if name not in CORPORA:
            raise AttnmtError(f"unknown corpus {name!r}; choose one of {', '.join(CORPORA)}")
        corpus = CORPORA[name]
    mirror = mirror or os.environ.get(MIRROR_VARIABLE) or None
    folder = Path(directory) / corpus.name
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise AttnmtError(f"cannot create {folder} ({error.strerror}); choose a folder you can write to") from None
    downloads: dict = {}  # URL → its bytes; shipped archive → {member: bytes}
    for file in corpus.files:
        target = folder / file.name
        if target.is_file() and os.access(target, os.R_OK) and _sha256(target.read_bytes()) == file.sha256:
            say(f"  {target}: already there, checksum right")
            continue
        origin = file.url or f"attnmt's {file.shipped}"
        data = _raw_bytes(file, mirror, downloads)
        if file.clean:
            data = clean_text(data, origin)
        if _sha256(data) != file.sha256:
            raise AttnmtError(f"{file.name} from {origin}: SHA-256 {_sha256(data)} is not the expected "
                              f"{file.sha256}; the source has changed or the download is damaged. Nothing was "
                              f"written for this file; try again, or report it")
        _write(target, data)
        say(f"  {target}: written, SHA-256 checked")
    _write(folder / SOURCE_FILE, (f"# {corpus.name}\n\n{corpus.description}.\n\nLicence: {corpus.licence}\n\n"
                                  f"Fetched by `attnmt data {corpus.name}`; SHA-256 of each file:\n\n"
                                  + "".join(f"- `{f.name}` {f.sha256}\n" for f in corpus.files)).encode("utf-8"))
    return folder
