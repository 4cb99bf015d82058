"""tenexa.provision against a local HTTP server that honours Range, can cut a transfer and counts requests."""

from __future__ import annotations

import hashlib
import json
import os
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tenexa import manifest, provision
from tenexa.config import REPO_ROOT
from tenexa.manifest import ModelEntry
from tenexa.provision import Downloader, ProvisionError


class FileServer:
    """Serves ``files`` (path -> bytes); ``cut_once[path] = n`` drops the first full GET of path after n bytes."""

    def __init__(self, files: dict[str, bytes], *, delay: float = 0.0):
        self.files = files
        self.delay = delay
        self.cut_once: dict[str, int] = {}
        self.requests: list[tuple[str, dict[str, str]]] = []
        self.active = 0
        self.max_active = 0
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # keep pytest output clean
                pass

            def do_GET(self):
                with server._lock:
                    server.requests.append((self.path, dict(self.headers)))
                    server.active += 1
                    server.max_active = max(server.max_active, server.active)
                try:
                    self._serve()
                finally:
                    with server._lock:
                        server.active -= 1

            def _serve(self):
                body = server.files.get(self.path)
                if body is None:
                    self.send_response(404)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                start = 0
                match = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range", ""))
                if match:
                    start = int(match.group(1))
                    if start >= len(body):
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(body)}")
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
                else:
                    self.send_response(200)
                self.send_header("Content-Length", str(len(body) - start))
                self.end_headers()
                time.sleep(server.delay)
                cut = server.cut_once.pop(self.path, None) if not match else None
                if cut is not None:
                    self.wfile.write(body[start:cut])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(body[start:])

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    files = {
        f"/m/{name}": os.urandom(size) for name, size in [("a.bin", 1_000_000), ("b.bin", 200_000), ("c.bin", 150_000), ("d.bin", 100_000)]
    }
    srv = FileServer(files)
    yield srv
    srv.close()


def entry(srv: FileServer, name: str, folder: str = "diffusion_models", *, size: bool = True, sha: bool = True) -> ModelEntry:
    body = srv.files.get(f"/m/{name}", b"")
    return ModelEntry(
        name=name.split(".")[0],
        folder=folder,
        file=name,
        url=f"{srv.url}/m/{name}",
        size=len(body) if size else None,
        sha256=hashlib.sha256(body).hexdigest() if sha else None,
        workflows=("wan22_i2v",),
    )


def fast() -> Downloader:
    return Downloader(backoff=0.0, retries=2, progress_every=0.0)


def final_path(root: Path, e: ModelEntry) -> Path:
    return root / "models" / e.folder / e.file


def test_downloads_several_files_at_once(server, tmp_path):
    server.delay = 0.4
    entries = [entry(server, n) for n in ("a.bin", "b.bin", "c.bin", "d.bin")]
    t0 = time.monotonic()
    report = provision.provision(entries, dest_root=tmp_path, workers=4, downloader=fast())
    elapsed = time.monotonic() - t0
    assert [o.status for o in report.outcomes] == ["downloaded"] * 4
    assert server.max_active >= 3, "downloads did not overlap"
    assert elapsed < 4 * server.delay, f"took {elapsed:.2f} s, no faster than one at a time"
    for e in entries:
        assert final_path(tmp_path, e).read_bytes() == server.files[f"/m/{e.file}"]
    assert not list(tmp_path.rglob("*.part"))


def test_transfer_cut_half_way_resumes_with_range(server, tmp_path):
    e = entry(server, "a.bin")
    half = e.size // 2
    server.cut_once["/m/a.bin"] = half
    report = provision.provision([e], dest_root=tmp_path, downloader=fast())
    assert report.outcomes[0].status == "downloaded", report.outcomes[0].error
    assert final_path(tmp_path, e).read_bytes() == server.files["/m/a.bin"]
    first, second = (h.get("Range") for _, h in server.requests)
    assert first is None
    resumed_at = int(re.fullmatch(r"bytes=(\d+)-", second).group(1))
    assert 0 < resumed_at <= half, "resume must start from what reached the disk, not from zero"


def test_part_left_by_an_earlier_run_is_resumed(server, tmp_path):
    e = entry(server, "b.bin")
    part = final_path(tmp_path, e).with_name(e.file + ".part")
    part.parent.mkdir(parents=True)
    part.write_bytes(server.files["/m/b.bin"][:120_000])
    report = provision.provision([e], dest_root=tmp_path, downloader=fast())
    assert report.outcomes[0].status == "downloaded"
    assert server.requests[0][1].get("Range") == "bytes=120000-"
    assert report.outcomes[0].downloaded_bytes == e.size - 120_000
    assert final_path(tmp_path, e).read_bytes() == server.files["/m/b.bin"]


def test_complete_part_without_manifest_size_is_renamed_not_refetched(server, tmp_path):
    e = entry(server, "c.bin", size=False)
    part = final_path(tmp_path, e).with_name(e.file + ".part")
    part.parent.mkdir(parents=True)
    part.write_bytes(server.files["/m/c.bin"])
    report = provision.provision([e], dest_root=tmp_path, downloader=fast())
    assert report.outcomes[0].status == "downloaded"
    assert report.outcomes[0].downloaded_bytes == 0
    assert final_path(tmp_path, e).read_bytes() == server.files["/m/c.bin"]


def test_checksum_mismatch_fails_and_leaves_no_file(server, tmp_path):
    e = entry(server, "c.bin")
    bad = ModelEntry(**{**e.__dict__, "sha256": "0" * 64})
    report = provision.provision([bad], dest_root=tmp_path, downloader=fast())
    outcome = report.outcomes[0]
    assert outcome.status == "failed"
    assert "sha256 mismatch" in outcome.error and "c" in outcome.error and "\n" not in outcome.error
    assert not final_path(tmp_path, e).exists()
    assert not list(tmp_path.rglob("*.part")), "a corrupt .part would be resumed next time"


def test_404_is_one_clear_line_and_exit_1(server, tmp_path, caplog):
    manifest = tmp_path / "models.json"
    missing = {
        "name": "ghost",
        "folder": "vae",
        "file": "ghost.safetensors",
        "url": f"{server.url}/m/ghost.safetensors",
        "size": None,
        "sha256": None,
        "workflows": ["wan22_i2v"],
    }
    manifest.write_text(json.dumps({"models": [missing]}))
    rc = provision.main(["--manifest", str(manifest), "--comfy-root", str(tmp_path / "comfy"), "--volume-root", str(tmp_path / "vol")])
    assert rc == 1
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert any("'ghost'" in m and "HTTP 404" in m and server.url in m for m in errors), errors
    assert len(server.requests) == 1, "a 404 must not be retried"
    assert not (tmp_path / "comfy" / "models" / "vae" / "ghost.safetensors").exists()


def test_file_on_the_volume_is_not_downloaded(server, tmp_path):
    e = entry(server, "d.bin", folder="loras")
    on_volume = final_path(tmp_path / "vol", e)
    on_volume.parent.mkdir(parents=True)
    on_volume.write_bytes(server.files["/m/d.bin"])
    report = provision.provision([e], dest_root=tmp_path / "comfy", search_roots=[tmp_path / "vol"], downloader=fast())
    assert report.outcomes[0].status == "present"
    assert report.outcomes[0].path == on_volume
    assert server.requests == []


def test_file_with_the_wrong_size_is_replaced(server, tmp_path):
    e = entry(server, "d.bin")
    stale = final_path(tmp_path, e)
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"truncated")
    report = provision.provision([e], dest_root=tmp_path, downloader=fast())
    assert report.outcomes[0].status == "downloaded"
    assert stale.read_bytes() == server.files["/m/d.bin"]


def test_manifest_size_disagreeing_with_server_fails_before_downloading(server, tmp_path):
    e = ModelEntry(**{**entry(server, "a.bin").__dict__, "size": 123})
    report = provision.provision([e], dest_root=tmp_path, downloader=fast())
    assert report.outcomes[0].status == "failed"
    assert "size mismatch" in report.outcomes[0].error and "123" in report.outcomes[0].error
    assert not final_path(tmp_path, e).exists()


def test_not_enough_disk_space_fails_without_downloading(server, tmp_path, monkeypatch):
    monkeypatch.setattr(provision, "_free_bytes", lambda path: 10)
    report = provision.provision([entry(server, "a.bin")], dest_root=tmp_path, downloader=fast())
    assert report.outcomes[0].status == "failed" and "free" in report.outcomes[0].error
    assert server.requests == []


def test_hf_token_goes_only_to_hugging_face_hosts(server, tmp_path):
    assert provision.auth_headers("https://huggingface.co/a/b/resolve/main/x", "t") == {"Authorization": "Bearer t"}
    assert provision.auth_headers("https://cdn-lfs.huggingface.co/x", "t") == {"Authorization": "Bearer t"}
    assert provision.auth_headers("https://hf.co/a/b", "t") == {"Authorization": "Bearer t"}
    assert provision.auth_headers("https://evilhuggingface.co/x", "t") == {}
    assert provision.auth_headers("https://huggingface.co.evil.com/x", "t") == {}
    assert provision.auth_headers("https://huggingface.co/x", None) == {}
    provision.provision([entry(server, "b.bin")], dest_root=tmp_path, downloader=Downloader(token="secret", backoff=0))
    assert all("Authorization" not in h for _, h in server.requests)


def test_select_all_none_and_names():
    entries = [ModelEntry("a", "vae", "a", "u", None, None, ()), ModelEntry("b", "vae", "b", "u", None, None, ())]
    assert provision.select(entries, "all") == entries
    assert provision.select(entries, "none") == []
    assert provision.select(entries, " b , a,b") == [entries[1], entries[0]]
    with pytest.raises(ProvisionError, match="unknown entries zz; known: a, b"):
        provision.select(entries, "a,zz")


def test_check_mode_reports_missing_and_present(server, tmp_path):
    manifest = tmp_path / "models.json"
    e = entry(server, "d.bin", folder="vae")
    manifest.write_text(json.dumps({"models": [{**e.__dict__, "workflows": list(e.workflows)}]}))
    args = ["--manifest", str(manifest), "--comfy-root", str(tmp_path), "--volume-root", str(tmp_path / "v"), "--check"]
    assert provision.main(args) == 1
    final_path(tmp_path, e).parent.mkdir(parents=True)
    final_path(tmp_path, e).write_bytes(server.files["/m/d.bin"])
    assert provision.main(args) == 0
    assert server.requests == []
    assert provision.main([*args[:-1], "--models", "nope"]) == 2


def test_manifest_rules_are_tenexa_manifest_rules_but_plain_http_is_allowed(tmp_path):
    path = tmp_path / "m.json"
    good = {
        "name": "x",
        "folder": "vae",
        "file": "x.safetensors",
        "url": "http://127.0.0.1:9/x",
        "size": None,
        "sha256": None,
        "workflows": ["wan22_i2v"],
    }
    path.write_text(json.dumps({"models": [good]}))
    assert provision.load_manifest(path)[0].url == "http://127.0.0.1:9/x"
    for bad, message in ((dict(good, folder="checkpoints"), "folder"), (dict(good, file="../../etc/x"), "plain file name")):
        path.write_text(json.dumps({"models": [bad]}))
        with pytest.raises(ProvisionError, match=message):
            provision.load_manifest(path)


def test_repository_manifest_reads_the_same_as_tenexa_manifest():
    path = REPO_ROOT / "models.json"
    assert provision.load_manifest(path) == list(manifest.load_manifest(path))


# --- files a node pack reads from its own folder (pack_path) ---------------------------------------------

PACK_PATH = "custom_nodes/ComfyUI-Frame-Interpolation/ckpts/rife/rife47.pth"


def _rife_manifest(path: Path, url: str) -> Path:
    raw = {"name": "rife47", "folder": "frame_interpolation", "file": "rife47.pth", "url": url, "size": None, "sha256": None,
           "workflows": [], "optional": True, "pack_path": PACK_PATH}
    path.write_text(json.dumps({"models": [raw]}))
    return path


def _layout(tmp_path: Path, *, pack: bool = True, on_volume: bool = True) -> tuple[Path, Path]:
    comfy, volume = tmp_path / "comfy", tmp_path / "vol"
    if pack:
        (comfy / "custom_nodes" / "ComfyUI-Frame-Interpolation").mkdir(parents=True)
    if on_volume:
        (volume / "models" / "frame_interpolation").mkdir(parents=True)
        (volume / "models" / "frame_interpolation" / "rife47.pth").write_bytes(b"rife weights")
    return comfy, volume


def test_link_only_links_a_volume_checkpoint_into_the_interpolation_pack(tmp_path):
    comfy, volume = _layout(tmp_path)
    manifest_path = _rife_manifest(tmp_path / "models.json", "https://example.invalid/rife47.pth")
    args = ["--manifest", str(manifest_path), "--comfy-root", str(comfy), "--volume-root", str(volume), "--link-only"]
    assert provision.main(args) == 0
    target = comfy / PACK_PATH
    assert target.is_symlink() and target.read_bytes() == b"rife weights"
    assert provision.main(args) == 0 and target.read_bytes() == b"rife weights", "a second run keeps the link"
    # the volume copy goes away: the stale link is removed, so the worker sees no checkpoint (and falls back)
    (volume / "models" / "frame_interpolation" / "rife47.pth").unlink()
    assert provision.main(args) == 0
    assert not target.is_symlink() and not target.exists()


def test_models_none_still_links_pack_files(tmp_path):
    comfy, volume = _layout(tmp_path)
    manifest_path = _rife_manifest(tmp_path / "models.json", "https://example.invalid/rife47.pth")
    assert provision.main(["--manifest", str(manifest_path), "--comfy-root", str(comfy), "--volume-root", str(volume),
                           "--models", "none"]) == 0
    assert (comfy / PACK_PATH).read_bytes() == b"rife weights"


def test_pack_file_is_not_linked_without_the_pack_and_a_real_file_is_kept(tmp_path):
    comfy, volume = _layout(tmp_path, pack=False)
    entries = provision.load_manifest(_rife_manifest(tmp_path / "models.json", "https://example.invalid/rife47.pth"))
    assert provision.link_pack_files(entries, comfy_root=comfy, search_roots=[comfy, volume]) == []
    assert not (comfy / "custom_nodes").exists()
    real = comfy / PACK_PATH
    real.parent.mkdir(parents=True)
    real.write_bytes(b"put there by hand")
    assert provision.link_pack_files(entries, comfy_root=comfy, search_roots=[comfy, volume]) == []
    assert real.read_bytes() == b"put there by hand" and not real.is_symlink()


def test_optional_model_that_fails_to_download_does_not_fail_provisioning(server, tmp_path, caplog):
    comfy, volume = _layout(tmp_path, on_volume=False)
    manifest_path = _rife_manifest(tmp_path / "models.json", f"{server.url}/m/rife47.pth")  # 404
    rc = provision.main(["--manifest", str(manifest_path), "--comfy-root", str(comfy), "--volume-root", str(volume)])
    assert rc == 0
    assert any("optional model rife47 not provisioned" in r.getMessage() for r in caplog.records if r.levelname == "WARNING")
    assert not (comfy / PACK_PATH).exists()


def test_downloaded_pack_file_is_linked(server, tmp_path):
    comfy, volume = _layout(tmp_path, on_volume=False)
    server.files["/m/rife47.pth"] = b"downloaded rife"
    manifest_path = _rife_manifest(tmp_path / "models.json", f"{server.url}/m/rife47.pth")
    assert provision.main(["--manifest", str(manifest_path), "--comfy-root", str(comfy), "--volume-root", str(volume)]) == 0
    assert (comfy / "models" / "frame_interpolation" / "rife47.pth").read_bytes() == b"downloaded rife"
    assert (comfy / PACK_PATH).is_symlink() and (comfy / PACK_PATH).read_bytes() == b"downloaded rife"
