"""`attnmt data NAME DIR`: the catalog's checksums are those of the corpora attnmt's benchmarks read
(../shared/data), and fetching works end to end against an HTTP server on 127.0.0.1 that serves what the real hosts
serve (gzip files, a zip archive) built from those corpora, with the real catalog entries. No internet is used."""

from __future__ import annotations

import gzip
import hashlib
import http.server
import io
import threading
import zipfile
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from attnmt.cli import main
from attnmt.data.catalog import CORPORA, SOURCE_FILE, clean_line, clean_text, fetch
from attnmt.errors import AttnmtError

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
SHARED_FOLDER = {"multi30k": "multi30k", "tatoeba-kor-eng": "tatoeba", "tatoeba-eng-fra": "tatoeba",
                 "ko-en-pydocs": "ko-en-pydocs"}


def shared_file(corpus: str, name: str) -> Path:
    return SHARED / SHARED_FOLDER[corpus] / name


def test_every_catalog_checksum_is_that_of_the_shared_corpus():
    for corpus in CORPORA.values():
        for file in corpus.files:
            path = shared_file(corpus.name, file.name)
            assert hashlib.sha256(path.read_bytes()).hexdigest() == file.sha256, (corpus.name, file.name)


def test_cleaning():
    assert clean_line("a\u00a0 b\u200b c\t  x  \u2009y ") == "a b c\tx y"
    assert clean_line("e\u0301") == "\u00e9"  # NFC
    assert clean_text(b"a  b\r\nc\n", "x") == b"a b\nc\n"
    with pytest.raises(AttnmtError, match="not UTF-8 at byte 1"):
        clean_text(b"a\xff", "x")


class Host:
    """What the real hosts serve, built from the shared corpora: each URL path → bytes."""

    def __init__(self, dirty: bool = False) -> None:
        self.files: dict[str, bytes] = {}
        for name in ("multi30k", "tatoeba-eng-fra"):
            for file in CORPORA[name].files:
                content = shared_file(name, file.name).read_bytes()
                if dirty and file.clean:  # what the cleaning removes: no-break spaces, double spaces, CRLF
                    content = content.replace(b" ", b"\xc2\xa0 ", 50).replace(b"\n", b"\r\n", 50)
                path = urlsplit(file.url).path
                if file.member is None:
                    self.files[path] = gzip.compress(content, compresslevel=1)
                else:
                    members = self.files.setdefault(path, {})
                    members[file.member] = content
        for path, value in list(self.files.items()):
            if isinstance(value, dict):
                buffer = io.BytesIO()
                with zipfile.ZipFile(buffer, "w") as archive:
                    for member, content in value.items():
                        archive.writestr(member, content)
                self.files[path] = buffer.getvalue()
        self.requests: list[str] = []


@pytest.fixture
def serve(request):
    """Start an HTTP server on 127.0.0.1 serving a `Host`; yields a function Host → mirror URL."""
    servers = []

    def start(host: Host) -> str:
        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 (the http.server name)
                host.requests.append(self.path)
                body = host.files.get(self.path)
                self.send_response(200 if body is not None else 404)
                self.send_header("content-length", str(len(body or b"")))
                self.end_headers()
                self.wfile.write(body or b"")

            def log_message(self, *args):
                pass

        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}"

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize("dirty", [False, True], ids=["as-cleaned", "raw-with-unicode-spaces-and-crlf"])
def test_fetch_multi30k_and_eng_fra_from_a_local_host(tmp_path, serve, dirty):
    host = Host(dirty)
    mirror = serve(host)
    for name in ("multi30k", "tatoeba-eng-fra"):
        folder = fetch(name, tmp_path, mirror=mirror, say=lambda _: None)
        for file in CORPORA[name].files:
            assert (folder / file.name).read_bytes() == shared_file(name, file.name).read_bytes()
        assert CORPORA[name].licence in (folder / SOURCE_FILE).read_text(encoding="utf-8")
        assert not list(folder.glob(".*.part"))
    assert host.requests.count(urlsplit(CORPORA["tatoeba-eng-fra"].files[0].url).path) == 1  # one zip, one fetch
    host.requests.clear()
    fetch("multi30k", tmp_path, mirror=mirror, say=lambda _: None)  # everything already there and right
    assert host.requests == []


def test_a_damaged_download_writes_nothing_and_names_the_file(tmp_path, serve):
    host = Host()
    first = CORPORA["multi30k"].files[0]
    path = urlsplit(first.url).path
    host.files[path] = gzip.compress(gzip.decompress(host.files[path]).replace(b"Zwei", b"Drei", 1))
    mirror = serve(host)
    with pytest.raises(AttnmtError, match=rf"{first.name} from .*: SHA-256 [0-9a-f]+ is not the expected "
                                          rf"{first.sha256}"):
        fetch("multi30k", tmp_path, mirror=mirror, say=lambda _: None)
    assert not (tmp_path / "multi30k" / first.name).exists() and not list((tmp_path / "multi30k").glob(".*"))
    host.files[path] = b"not gzip at all"
    with pytest.raises(AttnmtError, match="cannot be unpacked"):
        fetch("multi30k", tmp_path, mirror=mirror, say=lambda _: None)
    del host.files[path]
    with pytest.raises(AttnmtError, match="cannot download .*HTTP 404 Not Found"):
        fetch("multi30k", tmp_path, mirror=mirror, say=lambda _: None)


def test_a_wrong_file_already_there_is_replaced(tmp_path):
    folder = tmp_path / "tatoeba-kor-eng"
    folder.mkdir()
    (folder / "kor-eng.tsv").write_text("stale\n", encoding="utf-8")
    fetch("tatoeba-kor-eng", tmp_path, say=lambda _: None)
    assert (folder / "kor-eng.tsv").read_bytes() == shared_file("tatoeba-kor-eng", "kor-eng.tsv").read_bytes()


def test_cli_fetches_the_shipped_docs_corpus_with_its_licence(capsys, tmp_path):
    assert main(["data", "ko-en-pydocs", str(tmp_path)]) == 0
    folder = tmp_path / "ko-en-pydocs"
    for file in CORPORA["ko-en-pydocs"].files:
        assert (folder / file.name).read_bytes() == shared_file("ko-en-pydocs", file.name).read_bytes()
    assert "Python Software Foundation" in (folder / "README.md").read_text(encoding="utf-8")
    assert "Python Software Foundation" in (folder / SOURCE_FILE).read_text(encoding="utf-8")
    assert "SHA-256 checked" in capsys.readouterr().out


def test_cli_lists_the_corpora_and_refuses_unknown_names(capsys, tmp_path):
    assert main(["data"]) == 0
    listing = capsys.readouterr().out
    assert all(name in listing for name in CORPORA)
    assert main(["data", "wmt14", str(tmp_path)]) == 2
    assert "unknown corpus 'wmt14'; choose one of multi30k" in capsys.readouterr().err
    assert not (tmp_path / "wmt14").exists()


def test_a_bad_mirror_or_an_unwritable_file_is_an_error_not_a_traceback(tmp_path):
    with pytest.raises(AttnmtError, match="cannot download not-a-url/.*run the command again"):
        fetch("multi30k", tmp_path, mirror="not-a-url", say=lambda _: None)
    (tmp_path / "tatoeba-kor-eng" / "kor-eng.tsv").mkdir(parents=True)  # a folder where the file goes
    with pytest.raises(AttnmtError, match=r"cannot write .*kor-eng\.tsv"):
        fetch("tatoeba-kor-eng", tmp_path, say=lambda _: None)
    assert not list((tmp_path / "tatoeba-kor-eng").glob(".*.part"))
